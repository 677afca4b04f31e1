"""genrec::shared_prefix_attention: CPU (and CUDA, when present) kernel against the einsum reference, and
against plain attention over each beam's full key sequence (the prompt copied per beam)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from genrec_ext.ops import reference, shared_prefix_attention

from ..conftest import requires_cuda, to_cuda

OP = torch.ops.genrec.shared_prefix_attention.default
TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 2e-2, torch.float16: 2e-3}


def make_inputs(batch=2, beams=3, heads=4, kv_heads=2, prefix=7, own=2, dim=16, dtype=torch.float32, seed=0,
                pad=(0, 3)):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    mask = torch.ones(batch, prefix, dtype=torch.bool)
    for b, n in enumerate(pad[:batch]):
        mask[b, : min(n, prefix)] = False  # left padding, as prompts are laid out for generation
    return dict(q=r(batch, beams, heads, dim), prefix_k=r(batch, kv_heads, prefix, dim),
                prefix_v=r(batch, kv_heads, prefix, dim), prefix_mask=mask,
                own_k=r(batch, beams, kv_heads, own, dim), own_v=r(batch, beams, kv_heads, own, dim),
                scale=dim**-0.5)


def assert_matches_reference(args):
    got, want = shared_prefix_attention(**args), reference.shared_prefix_attention(**args)
    assert got.dtype == args["q"].dtype and got.shape == args["q"].shape
    tol = TOL[args["q"].dtype]
    torch.testing.assert_close(got.double(), want.double(), rtol=tol, atol=tol)


@given(st.integers(1, 3), st.integers(1, 5), st.sampled_from([(1, 1), (2, 1), (4, 2), (6, 3)]), st.integers(0, 40),
       st.integers(1, 3), st.sampled_from([1, 5, 16, 24, 33, 64]), st.integers(0, 2**16))
def test_matches_the_reference_on_odd_shapes(batch, beams, heads_kv, prefix, own, dim, seed):
    heads, kv_heads = heads_kv
    args = make_inputs(batch, beams, heads, kv_heads, prefix, own, dim, seed=seed, pad=(0, prefix // 2, prefix))
    assert_matches_reference(args)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_dtypes(dtype):
    assert_matches_reference(make_inputs(dtype=dtype, prefix=40, dim=64))


def test_equals_attention_over_each_beams_full_sequence():
    # What a standard KV cache computes: the prompt copied to every beam, SDPA over [prompt; own tokens].
    args = make_inputs(batch=2, beams=5, heads=4, kv_heads=2, prefix=9, own=3, dim=16, pad=(0, 4))
    b, w, h, d = args["q"].shape
    kvh, p, t = args["prefix_k"].shape[1], args["prefix_k"].shape[2], args["own_k"].shape[3]
    expand = lambda x: x[:, None].expand(b, w, kvh, p, d)  # noqa: E731
    keys = torch.cat([expand(args["prefix_k"]), args["own_k"]], 3).reshape(b * w, kvh, p + t, d)
    values = torch.cat([expand(args["prefix_v"]), args["own_v"]], 3).reshape(b * w, kvh, p + t, d)
    visible = torch.cat([args["prefix_mask"][:, None].expand(b, w, p), torch.ones(b, w, t, dtype=torch.bool)], 2)
    want = F.scaled_dot_product_attention(args["q"].reshape(b * w, h, 1, d), keys, values,
                                          attn_mask=visible.reshape(b * w, 1, 1, p + t), scale=args["scale"],
                                          enable_gqa=True)
    torch.testing.assert_close(shared_prefix_attention(**args), want.reshape(b, w, h, d), rtol=2e-6, atol=2e-6)


def test_fully_padded_prompt_attends_to_own_tokens_only():
    args = make_inputs(pad=(7, 7), own=1)
    out = shared_prefix_attention(**args)
    want = args["own_v"][:, :, :, 0].repeat_interleave(2, dim=2)  # one key: softmax weight 1 on its value
    torch.testing.assert_close(out, want)


def test_strided_inputs_and_a_huge_prompt_padding_value():
    args = make_inputs(prefix=12, dim=24)
    args["q"] = torch.cat([args["q"], args["q"]], -1)[..., :24]  # a non-contiguous view
    args["prefix_k"] = args["prefix_k"].clone()
    args["prefix_k"][1, :, :3] = 1e30  # padded positions must not leak in, whatever they hold
    assert not args["q"].is_contiguous()
    assert_matches_reference(args)
    assert torch.isfinite(shared_prefix_attention(**args)).all()


def test_own_keys_read_in_place_from_a_larger_cache_buffer():
    # How the decoder passes them: slots [:t] of a [2, B, W, kvh, steps, hd] buffer, never copied.
    args = make_inputs(own=2)
    buffer = torch.randn(2, *args["own_k"].shape[:3], 5, args["own_k"].shape[-1])
    buffer[0, :, :, :, :2], buffer[1, :, :, :, :2] = args["own_k"], args["own_v"]
    view = {**args, "own_k": buffer[0, :, :, :, :2], "own_v": buffer[1, :, :, :, :2]}
    assert not view["own_k"].is_contiguous()
    torch.testing.assert_close(shared_prefix_attention(**view), shared_prefix_attention(**args), rtol=0, atol=0)


def test_opcheck_and_compile():
    args = make_inputs()
    torch.library.opcheck(OP, tuple(args.values()))
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: shared_prefix_attention(*a), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*args.values()), shared_prefix_attention(**args))


def test_refuses_gradients():
    args = make_inputs()
    args["q"].requires_grad_()
    with pytest.raises(RuntimeError, match="inference-only"):
        shared_prefix_attention(**args)
    with torch.no_grad():
        shared_prefix_attention(**args)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: {**a, "q": a["q"][0]}, r"q must be \[B, W, Hq, D\]"),
        (lambda a: {**a, "prefix_k": a["prefix_k"][:, :, :, :8]}, r"prefix_k must be \[B, Hkv, P, D\] with B = 2, D = 16"),
        (lambda a: {**a, "prefix_v": a["prefix_v"][:, :, :3]}, r"prefix_v must have prefix_k's shape"),
        (lambda a: {**a, "prefix_mask": a["prefix_mask"].long()}, r"prefix_mask must be bool \[B, P\] = \[2, 7\]"),
        (lambda a: {**a, "own_k": a["own_k"][:, :, :, :0]}, r"own_k must be \[B, W, Hkv, T, D\] = \[2, 3, 2, T >= 1, 16\]"),
        (lambda a: {**a, "own_v": a["own_v"].double()}, r"keys and values must have q's dtype Float"),
        (lambda a: {**a, "q": torch.randn(2, 3, 3, 16)}, r"Hq = 3 query heads are not a multiple of Hkv = 2"),
    ],
)
def test_bad_input_is_named(change, match):
    with pytest.raises(RuntimeError, match=match):
        shared_prefix_attention(**change(make_inputs()))


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dim, prefix", [(16, 7), (64, 300), (128, 33), (256, 5)])
def test_cuda_matches_cpu(dtype, dim, prefix):
    args = make_inputs(batch=3, beams=50, heads=8, kv_heads=2, prefix=prefix, own=2, dim=dim, dtype=dtype,
                       pad=(0, prefix // 3, prefix))
    cuda_args = to_cuda(args)
    tol = TOL[dtype]
    torch.testing.assert_close(shared_prefix_attention(**cuda_args).cpu().double(),
                               reference.shared_prefix_attention(**args).double(), rtol=tol, atol=tol)
