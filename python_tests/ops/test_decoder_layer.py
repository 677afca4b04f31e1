"""genrec::layer_qkv, genrec::layer_out and genrec::rms_norm: CPU (and CUDA, when present) kernels against
the plain-PyTorch references, and against transformers' own Qwen2 modules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from transformers import Qwen2Config
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RMSNorm, Qwen2RotaryEmbedding

from genrec_ext.ops import layer_out, layer_qkv, reference, rms_norm

from ..conftest import requires_cuda, to_cuda

TOL = {torch.float64: 1e-12, torch.float32: 3e-5, torch.bfloat16: 3e-2, torch.float16: 3e-3}
EPS = 1e-6


def randn(g, *shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def qkv_inputs(rows=12, hidden=32, heads=4, kv_heads=2, dim=8, positions=3, bias=True, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    out_dim = (heads + 2 * kv_heads) * dim
    angles = randn(g, positions, dim // 2, dtype=torch.float64)
    return dict(x=randn(g, rows, hidden, dtype=dtype), norm_weight=randn(g, hidden, dtype=dtype), eps=EPS,
                weight=randn(g, out_dim, hidden, dtype=dtype, scale=hidden**-0.5),
                bias=randn(g, out_dim, dtype=dtype) if bias else None,
                cos=angles.cos().repeat(1, 2).to(dtype), sin=angles.sin().repeat(1, 2).to(dtype),
                rotated_heads=heads + kv_heads)


def out_inputs(rows=12, hidden=32, attn=24, inner=40, o_bias=False, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(h=randn(g, rows, hidden, dtype=dtype), attn=randn(g, rows, attn, dtype=dtype),
                o_weight=randn(g, hidden, attn, dtype=dtype, scale=attn**-0.5),
                o_bias=randn(g, hidden, dtype=dtype) if o_bias else None, norm_weight=randn(g, hidden, dtype=dtype),
                eps=EPS, gate_up_weight=randn(g, 2 * inner, hidden, dtype=dtype, scale=hidden**-0.5),
                down_weight=randn(g, hidden, inner, dtype=dtype, scale=inner**-0.5))


def assert_close(got, want, dtype):
    assert got.dtype == want.dtype and got.shape == want.shape
    tol = TOL[dtype]
    scale = max([1.0] + want.abs().flatten().tolist())
    torch.testing.assert_close(got.double(), want.double(), rtol=tol, atol=tol * scale)


@given(st.integers(1, 4), st.integers(0, 6), st.sampled_from([(1, 1), (2, 1), (4, 2), (7, 1)]),
       st.sampled_from([2, 8, 18, 64]), st.sampled_from([1, 17, 64, 96]), st.booleans(), st.integers(0, 2**16))
def test_layer_qkv_matches_the_reference(positions, per_position, heads_kv, dim, hidden, bias, seed):
    heads, kv_heads = heads_kv
    args = qkv_inputs(positions * per_position, hidden, heads, kv_heads, dim, positions, bias, seed=seed)
    assert_close(layer_qkv(**args), reference.layer_qkv(**args), torch.float32)


@given(st.integers(0, 40), st.sampled_from([1, 16, 33, 64]), st.sampled_from([8, 24, 64]),
       st.sampled_from([1, 15, 16, 40, 136]), st.booleans(), st.integers(0, 2**16))
def test_layer_out_matches_the_reference(rows, hidden, attn, inner, o_bias, seed):
    args = out_inputs(rows, hidden, attn, inner, o_bias, seed=seed)
    assert_close(layer_out(**args), reference.layer_out(**args), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_dtypes(dtype):
    args = qkv_inputs(rows=100, hidden=64, heads=7, kv_heads=1, dim=16, positions=2, dtype=dtype)
    assert_close(layer_qkv(**args), reference.layer_qkv(**args), dtype)
    args = out_inputs(rows=100, hidden=64, attn=112, inner=136, o_bias=True, dtype=dtype)
    assert_close(layer_out(**args), reference.layer_out(**args), dtype)
    x, w = args["h"].view(4, 25, 64), args["norm_weight"]
    assert_close(rms_norm(x, w, EPS), reference.rms_norm(x, w, EPS), dtype)


def test_rotating_no_heads_is_the_plain_projection():
    args = {**qkv_inputs(), "rotated_heads": 0}
    want = F.linear(reference.rms_norm(args["x"], args["norm_weight"], EPS), args["weight"], args["bias"])
    assert_close(layer_qkv(**args), want, torch.float32)


def test_strided_inputs():
    args = qkv_inputs(rows=9, hidden=32)
    wide = torch.cat([args["x"], args["x"]], 1)
    strided = {**args, "x": wide[:, ::2], "weight": args["weight"].t().contiguous().t()}
    assert not strided["x"].is_contiguous() and not strided["weight"].is_contiguous()
    assert_close(layer_qkv(**strided), reference.layer_qkv(**strided), torch.float32)
    args = out_inputs(rows=8)
    strided = {**args, "h": torch.cat([args["h"], args["h"]], 1)[:, 1::2],
               "down_weight": args["down_weight"].t().contiguous().t()}
    assert_close(layer_out(**strided), reference.layer_out(**strided), torch.float32)


def test_rms_norm_equals_transformers_and_keeps_the_shape():
    norm = Qwen2RMSNorm(48, eps=EPS)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(-2, 2, 48))
    x = torch.randn(2, 3, 5, 48, generator=torch.Generator().manual_seed(1)) * 30
    with torch.no_grad():
        torch.testing.assert_close(rms_norm(x, norm.weight, EPS), norm(x), rtol=1e-6, atol=1e-5)
        assert rms_norm(x[:0], norm.weight, EPS).shape == (0, 3, 5, 48)


def test_halves_around_sdpa_equal_a_transformers_decoder_layer():
    """A whole Qwen2DecoderLayer (prefill shape, causal) = layer_qkv -> SDPA -> layer_out on its weights."""
    config = Qwen2Config(hidden_size=64, intermediate_size=136, num_attention_heads=4, num_key_value_heads=2,
                         rms_norm_eps=EPS)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    layer, rotary = Qwen2DecoderLayer(config, 0).eval(), Qwen2RotaryEmbedding(config)
    with torch.no_grad():
        for p in layer.parameters():  # non-trivial norms and biases
            p.add_(torch.randn_like(p) * 0.1)
    bsz, seq, hd, attn = 2, 9, 16, layer.self_attn
    x = torch.randn(bsz, seq, 64)
    positions = torch.arange(3, 3 + seq)[None].expand(bsz, -1)
    cos, sin = rotary(x, positions)
    with torch.no_grad():
        want = layer(x, position_embeddings=(cos, sin), attention_mask=None, position_ids=positions)
        want = want[0] if isinstance(want, tuple) else want
        qkv = layer_qkv(x.reshape(-1, 64), layer.input_layernorm.weight, EPS,
                        torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]),
                        torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]),
                        cos.reshape(-1, hd), sin.reshape(-1, hd), 6).view(bsz, seq, 8, hd).transpose(1, 2)
        out = F.scaled_dot_product_attention(qkv[:, :4], qkv[:, 4:6], qkv[:, 6:], is_causal=True, enable_gqa=True)
        got = layer_out(x.reshape(-1, 64), out.transpose(1, 2).reshape(-1, 64), attn.o_proj.weight, None,
                        layer.post_attention_layernorm.weight, EPS,
                        torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight]), layer.mlp.down_proj.weight)
    torch.testing.assert_close(got.view(bsz, seq, 64), want, rtol=1e-5, atol=1e-5)


def test_opcheck():
    torch.library.opcheck(torch.ops.genrec.layer_qkv.default, tuple(qkv_inputs().values()))
    torch.library.opcheck(torch.ops.genrec.layer_qkv.default, tuple(qkv_inputs(bias=False).values()))
    torch.library.opcheck(torch.ops.genrec.layer_out.default, tuple(out_inputs(o_bias=True).values()))
    torch.library.opcheck(torch.ops.genrec.rms_norm.default, (torch.randn(2, 3, 8), torch.randn(8), EPS))


def test_refuses_gradients():
    args = qkv_inputs()
    args["weight"].requires_grad_()
    with pytest.raises(RuntimeError, match="layer_qkv is inference-only"):
        layer_qkv(**args)
    with torch.no_grad():
        layer_qkv(**args)
    with pytest.raises(RuntimeError, match="rms_norm is inference-only"):
        rms_norm(torch.randn(2, 4, requires_grad=True), torch.ones(4), EPS)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: {**a, "x": a["x"][None]}, r"layer_qkv: x must be 2-D \[N, H\]"),
        (lambda a: {**a, "x": a["x"].long()}, r"x must be float32, bfloat16, float16 or float64, got Long"),
        (lambda a: {**a, "norm_weight": a["norm_weight"][:5]}, r"norm_weight must be \[H\] = \[32\]"),
        (lambda a: {**a, "weight": a["weight"][:, :5]}, r"weight must be \[O, 32\], got shape \[64, 5\]"),
        (lambda a: {**a, "bias": a["bias"].double()}, r"bias must have the input's dtype Float, got Double"),
        (lambda a: {**a, "cos": a["cos"][:, :7], "sin": a["sin"][:, :7]}, r"cos must be \[M, D\] .* even D"),
        (lambda a: {**a, "sin": a["sin"][:2]}, r"sin must have cos's shape"),
        (lambda a: {**a, "cos": a["cos"][:1].repeat(5, 1), "sin": a["sin"][:1].repeat(5, 1)},
         r"N = 12 rows must be a multiple of cos's M = 5"),
        (lambda a: {**a, "rotated_heads": 9}, r"rotated_heads = 9 heads of width D = 8 do not fit in the O = 64"),
        (lambda a: {**a, "rotated_heads": 2**62}, r"rotated_heads = 4611686018427387904 heads .* do not fit"),
    ],
)
def test_layer_qkv_bad_input_is_named(change, match):
    with pytest.raises(RuntimeError, match=match):
        layer_qkv(**change(qkv_inputs()))


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: {**a, "attn": a["attn"][:5]}, r"attn must be \[N, A\] with N = 12"),
        (lambda a: {**a, "o_weight": a["o_weight"][:, :3]}, r"o_weight must be \[32, 24\]"),
        (lambda a: {**a, "gate_up_weight": a["gate_up_weight"][:79]}, r"gate_up_weight must be \[2I, H\] with H = 32"),
        (lambda a: {**a, "down_weight": a["down_weight"][:, :39]}, r"down_weight must be \[32, 40\]"),
        (lambda a: {**a, "norm_weight": a["norm_weight"].half()}, r"norm_weight must have the input's dtype"),
    ],
)
def test_layer_out_bad_input_is_named(change, match):
    with pytest.raises(RuntimeError, match=match):
        layer_out(**change(out_inputs()))


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows, positions", [(1, 1), (3200, 64), (777, 7)])
def test_cuda_matches_cpu(dtype, rows, positions):
    for op, ref, args in ((layer_qkv, reference.layer_qkv, qkv_inputs(rows, 96, 7, 1, 64, positions, dtype=dtype)),
                          (layer_out, reference.layer_out, out_inputs(rows, 96, 448, 136, True, dtype=dtype))):
        on_gpu = to_cuda(args)
        assert_close(op(**on_gpu).cpu(), ref(**args), dtype)
    x, w = torch.randn(rows, 96).to(dtype), torch.randn(96).to(dtype)
    assert_close(rms_norm(x.cuda(), w.cuda(), EPS).cpu(), reference.rms_norm(x, w, EPS), dtype)
