"""genrec::token_merge: CPU (and CUDA, when present) kernels against the pure-PyTorch reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import genrec_ext
from genrec_ext.nn import TokenMerger
from genrec_ext.ops import reference, token_merge

from ..conftest import requires_cuda

OP = torch.ops.genrec.token_merge.default
BACKWARD_OP = torch.ops.genrec.token_merge_backward.default


def make_inputs(B, N, L, V, d, d_out, *, pad_id=0, pad_frac=0.2, bias=True, dtype=torch.float32, seed=0,
                device="cpu"):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (B, N, L), generator=g)
    tokens[torch.rand(B, N, L, generator=g) < pad_frac] = pad_id
    if N > 1:
        tokens[0, -1] = pad_id  # always at least one all-pad row (history padding)
    params = [torch.randn(V, d, generator=g), torch.randn(d_out, L * d, generator=g) / (L * d) ** 0.5]
    params.append(torch.randn(d_out, generator=g) if bias else None)
    params = [None if p is None else p.to(device=device, dtype=dtype).requires_grad_() for p in params]
    return tokens.to(device), *params


def run(fn, tokens, embedding, weight, bias, pad_id, grad_seed=1):
    """Forward + backward with a fixed upstream gradient; returns (out, grad_E, grad_W, grad_b)."""
    for p in (embedding, weight, bias):
        if p is not None:
            p.grad = None
    out = fn(tokens, embedding, weight, bias, pad_id=pad_id)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed)).to(out)
    out.backward(g)
    grads = [None if p is None else p.grad.detach().clone() for p in (embedding, weight, bias)]
    return out.detach(), *grads


def assert_close_all(got, want, **tol):
    for a, b in zip(got, want):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, **tol)


@st.composite
def shapes(draw):
    return dict(
        B=draw(st.integers(1, 3)),
        N=draw(st.integers(0, 40)),
        L=draw(st.integers(1, 4)),
        V=draw(st.integers(1, 60)),  # both sides of the V < B*N strategy switch
        d=draw(st.integers(1, 19)),
        d_out=draw(st.integers(1, 13)),
    )


@given(shape=shapes(), pad=st.sampled_from(["zero", "minus_one", "last"]), bias=st.booleans(),
       pad_frac=st.sampled_from([0.0, 0.3, 1.0]), seed=st.integers(0, 2**16))
def test_matches_reference_fp64(shape, pad, bias, pad_frac, seed):
    pad_id = {"zero": 0, "minus_one": -1, "last": shape["V"] - 1}[pad]
    args = make_inputs(**shape, pad_id=pad_id, pad_frac=pad_frac, bias=bias, dtype=torch.float64, seed=seed)
    assert_close_all(run(token_merge, *args, pad_id), run(reference.token_merge, *args, pad_id), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("B,N,V", [(4, 50, 30), (2, 20, 500)], ids=["projected_table", "gather_gemm"])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_reference_fp32_both_strategies(B, N, V, bias):
    args = make_inputs(B, N, 3, V, 24, 20, bias=bias, seed=3)
    assert_close_all(run(token_merge, *args, 0), run(reference.token_merge, *args, 0), rtol=1e-5, atol=1e-5)


def test_gather_path_spans_several_chunks():
    # The CPU gather path works in ~4 MiB row chunks: 1200 rows x 3 x 700 fp32 is three of them.
    args = make_inputs(1, 1200, 3, 1500, 700, 16, seed=4)
    assert_close_all(run(token_merge, *args, 0), run(reference.token_merge, *args, 0), rtol=1e-4, atol=1e-4)


DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]


@pytest.mark.parametrize("device", DEVICES)
def test_sid_blocks_at_the_end_of_a_large_vocabulary(device):
    # An LLM vocabulary extended with SID tokens: each level uses its own block of 16 ids near the end, so
    # the projected table covers only those rows; one level is entirely padding (an empty span).
    V, K = 3000, 16
    tokens, E, W, b = make_inputs(2, 30, 4, V, 8, 6, seed=13, device=device)
    codes = torch.randint(0, K, (2, 30, 4), generator=torch.Generator().manual_seed(13))
    tokens = (V - 3 * K + K * torch.arange(4) + codes).to(device)
    tokens[..., 3] = 0  # the 4th level is all pad
    tokens[0, :5] = 0
    assert_close_all(run(token_merge, tokens, E, W, b, 0), run(reference.token_merge, tokens, E, W, b, 0),
                     rtol=1e-5, atol=1e-5)


def test_one_token_at_several_levels():
    # Levels may share ids (overlapping spans): gradients from both levels land on one embedding row.
    tokens, E, W, b = make_inputs(3, 20, 3, 6, 5, 7, seed=14)
    tokens[..., 1] = tokens[..., 0]
    assert_close_all(run(token_merge, tokens, E, W, b, 0), run(reference.token_merge, tokens, E, W, b, 0),
                     rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("B,N,V", [(2, 6, 5), (1, 4, 40)], ids=["projected_table", "gather_gemm"])
def test_gradcheck_fp64(B, N, V):
    tokens, E, W, b = make_inputs(B, N, 3, V, 5, 4, dtype=torch.float64, seed=5)
    assert torch.autograd.gradcheck(lambda e, w, bb: token_merge(tokens, e, w, bb, pad_id=0), (E, W, b))


@pytest.mark.parametrize("B,N,V", [(3, 40, 20), (1, 8, 200)], ids=["projected_table", "gather_gemm"])
def test_bf16_error_no_worse_than_eager(B, N, V):
    """flash-attn criterion: |kernel - ref_fp64| <= 2 |eager_bf16 - ref_fp64| + eps, outputs and grads."""
    args64 = make_inputs(B, N, 3, V, 64, 48, dtype=torch.float64, seed=6)
    args16 = make_inputs(B, N, 3, V, 64, 48, dtype=torch.bfloat16, seed=6)
    # Same bf16 values in both: the fp64 truth is computed from the rounded inputs.
    args64 = [args64[0]] + [p.detach().to(torch.bfloat16).double().requires_grad_() for p in args64[1:]]
    truth = run(reference.token_merge, *args64, 0)
    ours = run(token_merge, *args16, 0)
    eager = run(reference.token_merge, *args16, 0)
    for name, t, o, e in zip(["out", "grad_embedding", "grad_weight", "grad_bias"], truth, ours, eager):
        assert o.dtype == torch.bfloat16, name
        err_ours = (o.double() - t).abs().max().item()
        err_eager = (e.double() - t).abs().max().item()
        assert err_ours <= 2 * err_eager + 1e-5 * t.abs().max().item(), (name, err_ours, err_eager)


def test_padding_semantics():
    E = torch.randn(6, 3, requires_grad=True)
    W = torch.randn(4, 6, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    tokens = torch.tensor([[[1, 2], [0, 3], [0, 0]]])  # full item, half-padded item, padding
    out = token_merge(tokens, E, W, b, pad_id=0)
    assert torch.equal(out[0, 2], torch.zeros(4))  # all-pad row: zero, not the bias
    torch.testing.assert_close(out[0, 1], W[:, 3:] @ E[3] + b)  # pad slot contributes nothing
    torch.testing.assert_close(out[0, 0], W @ torch.cat([E[1], E[2]]) + b)
    out.sum().backward()
    assert torch.equal(E.grad[0], torch.zeros(3))  # the pad row of the table gets no gradient
    torch.testing.assert_close(b.grad, torch.full((4,), 2.0))  # only the two live rows feed the bias
    assert torch.equal(E.grad[4:], torch.zeros(2, 3))  # unused tokens: zero gradient


def test_empty_history():
    tokens, E, W, b = make_inputs(2, 0, 3, 10, 4, 5)
    out, gE, gW, gb = run(token_merge, tokens, E, W, b, 0)
    assert out.shape == (2, 0, 5)
    assert not gE.any() and not gW.any() and not gb.any()


def test_backward_is_deterministic_across_thread_counts():
    args = make_inputs(4, 300, 3, 50, 32, 32, seed=7)  # projected table: scatter over 1200 rows
    args_gather = make_inputs(1, 400, 3, 2000, 32, 32, seed=7)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, threads, 1):
            torch.set_num_threads(n)
            results.append(run(token_merge, *args, 0) + run(token_merge, *args_gather, 0))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_non_contiguous_inputs():
    tokens, E, W, b = make_inputs(3, 7, 2, 12, 6, 5, seed=8)
    E, W, b = E.detach(), W.detach(), b.detach()
    W_cols = W.t().contiguous().t()  # same values, column-major
    E_strided = torch.cat([E, E], 1)[:, ::2]  # every other column: a strided view
    tokens_nc = tokens.transpose(0, 1).contiguous().transpose(0, 1)
    assert not (W_cols.is_contiguous() or E_strided.is_contiguous() or tokens_nc.is_contiguous())
    torch.testing.assert_close(token_merge(tokens_nc, E, W_cols, b), reference.token_merge(tokens, E, W, b))
    torch.testing.assert_close(token_merge(tokens, E_strided, W, b),
                               reference.token_merge(tokens, E_strided.contiguous(), W, b))


@pytest.mark.parametrize("B,N,V", [(2, 9, 7), (1, 3, 40)], ids=["projected_table", "gather_gemm"])
def test_opcheck(B, N, V):
    for bias in (True, False):
        tokens, E, W, b = make_inputs(B, N, 3, V, 5, 4, bias=bias, seed=9)
        torch.library.opcheck(OP, (tokens, E, W, b, 0))
        grad = torch.randn(B, N, 4)
        torch.library.opcheck(BACKWARD_OP, (grad, tokens, E.detach(), W.detach(), 0))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    merger = TokenMerger(30, 8, 3, 16)
    tokens = torch.randint(0, 30, (2, 5, 3))
    compiled = torch.compile(merger, fullgraph=True, backend=backend)
    out = compiled(tokens)
    out.square().sum().backward()
    got = [p.grad.clone() for p in merger.parameters()]
    merger.zero_grad()
    want_out = reference.token_merge(tokens, merger.embedding.weight, merger.proj.weight, merger.proj.bias)
    want_out.square().sum().backward()
    torch.testing.assert_close(out, want_out)
    for a, p in zip(got, merger.parameters()):
        torch.testing.assert_close(a, p.grad)


def test_autocast_runs_in_bf16():
    tokens, E, W, b = make_inputs(2, 4, 3, 10, 8, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = token_merge(tokens, E, W, b)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert E.grad.dtype == torch.float32  # gradients flow back to the fp32 parameters


# ---- bad input: the error names the argument and the value ------------------------------------------

def _good():
    return torch.tensor([[[1, 2, 3]]]), torch.randn(10, 4), torch.randn(5, 12), torch.randn(5)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda t, E, W, b: (t.int(), E, W, b), RuntimeError, r"sid_tokens must be int64, got Int"),
        (lambda t, E, W, b: (t[0], E, W, b), RuntimeError, r"sid_tokens must be \[B, N, L\], got shape \[1, 3\]"),
        (lambda t, E, W, b: (t, E.half(), W.half(), b.half()), RuntimeError, r"embedding must be float32, bfloat16 or float64, got Half"),
        (lambda t, E, W, b: (t, E, W.double(), b), RuntimeError, r"weight dtype Double differs from embedding dtype Float"),
        (lambda t, E, W, b: (t, E, W[:, :11], b), RuntimeError, r"weight must be \[d_out, L\*d\] = \[d_out, 12\] \(L=3, d=4\), got shape \[5, 11\]"),
        (lambda t, E, W, b: (t, E, W, b[:4]), RuntimeError, r"bias must be \[d_out\] = \[5\], got shape \[4\]"),
        (lambda t, E, W, b: (t, E, W, b.double()), RuntimeError, r"bias dtype Double differs"),
        (lambda t, E, W, b: (t, E[None], W, b), RuntimeError, r"embedding must be \[V, d\], got shape \[1, 10, 4\]"),
        (lambda t, E, W, b: (t.clone().fill_(10), E, W, b), IndexError, r"sid_tokens\[0, 0, 0\] = 10 is outside \[0, 10\)"),
        (lambda t, E, W, b: (torch.tensor([[[1, 2, 3], [4, -3, 5]]]), E, W, b), IndexError,
         r"sid_tokens\[0, 1, 1\] = -3 is outside \[0, 10\) .* and no pad_id was given"),
    ],
)
def test_bad_input_is_named(change, error, match):
    with pytest.raises(error, match=match):
        token_merge(*change(*_good()))
    with pytest.raises(IndexError, match=r"= -3 is outside \[0, 10\) .* and is not pad_id=7"):
        token_merge(torch.tensor([[[1, 2, 3], [4, -3, 5]]]), *_good()[1:], pad_id=7)


def test_padding_is_explicit_token_0_is_a_real_token_by_default():
    """A drop-in op must not zero someone's real token 0: no pad unless pad_id is given (the op, the module)."""
    tokens, E, W, b = _good()
    tokens = tokens.clone()
    tokens[0, 0] = 0  # an item made of token 0 alone
    plain = token_merge(tokens, E, W, b)
    torch.testing.assert_close(plain, reference.token_merge(tokens, E, W, b))
    assert plain[0, 0].abs().sum() > 0 and torch.allclose(plain[0, 0], F.linear(E[[0, 0, 0]].flatten(), W, b))
    padded = token_merge(tokens, E, W, b, pad_id=0)
    assert torch.equal(padded[0, 0], torch.zeros_like(padded[0, 0]))
    merger = TokenMerger(10, 4, 3, 5)
    assert merger.pad_id is None and "pad_id=None" in repr(merger)


def test_bad_grad_out_is_named():
    t, E, W, _ = _good()
    with pytest.raises(RuntimeError, match=r"grad_out must be \[B, N, d_out\] = \[1, 1, 5\], got shape \[1, 1, 4\]"):
        BACKWARD_OP(torch.randn(1, 1, 4), t, E, W, 0)
    with pytest.raises(IndexError, match=r"sid_tokens\[0, 0, 2\] = 99"):
        BACKWARD_OP(torch.randn(1, 1, 5), torch.tensor([[[1, 2, 99]]]), E, W, 0)


def test_out_of_range_pad_id_is_not_a_token():
    t, E, W, b = _good()
    out = token_merge(torch.tensor([[[-1, -1, -1], [1, -1, 2]]]), E, W, b, pad_id=-1)
    assert torch.equal(out[0, 0], torch.zeros(5))
    torch.testing.assert_close(out[0, 1], W[:, :4] @ E[1] + W[:, 8:] @ E[2] + b)


# ---- module -----------------------------------------------------------------------------------------

def test_token_merger_module():
    merger = TokenMerger(20, 6, 3, 10)
    tokens = torch.randint(1, 20, (2, 4, 3))
    out = merger(tokens)
    assert out.shape == (2, 4, 10)
    torch.testing.assert_close(out, reference.token_merge(tokens, merger.embedding.weight, merger.proj.weight, merger.proj.bias))
    out.sum().backward()
    assert all(p.grad is not None for p in merger.parameters())


def test_token_merger_shares_an_embedding_and_checks_it():
    shared = torch.nn.Embedding(20, 6)
    merger = TokenMerger(20, 6, 3, 10, embedding=shared, bias=False)
    assert merger.embedding is shared and merger.proj.bias is None
    with pytest.raises(ValueError, match=r"shared embedding has shape \(20, 6\), expected .* \(21, 6\)"):
        TokenMerger(21, 6, 3, 10, embedding=shared)
    with pytest.raises(ValueError, match=r"sid_tokens must be \[B, N, 3\], got \(2, 4\)"):
        merger(torch.zeros(2, 4, dtype=torch.long))


def test_extension_is_loaded_from_a_build():
    assert genrec_ext._C.__file__.endswith(".so")
    assert "CPU" in genrec_ext.ops.kernel_devices("token_merge")


# ---- CUDA (skipped without a device) ----------------------------------------------------------------

@requires_cuda
@pytest.mark.parametrize("B,N,V", [(4, 300, 200), (2, 30, 5000)], ids=["projected_table", "gather_gemm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_reference(B, N, V, dtype):
    args = make_inputs(B, N, 3, V, 72, 40, dtype=dtype, device="cuda", seed=10)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    assert_close_all(run(token_merge, *args, 0), run(reference.token_merge, *args, 0), **tol)


@requires_cuda
@pytest.mark.parametrize("B,N,V", [(3, 40, 20), (1, 8, 200)], ids=["projected_table", "gather_gemm"])
def test_cuda_bf16_matches_cpu_criterion(B, N, V):
    args = make_inputs(B, N, 3, V, 64, 48, dtype=torch.bfloat16, seed=11, device="cuda")
    args64 = [args[0]] + [p.detach().double().requires_grad_() for p in args[1:]]
    truth = run(reference.token_merge, *args64, 0)
    ours, eager = run(token_merge, *args, 0), run(reference.token_merge, *args, 0)
    for t, o, e in zip(truth, ours, eager):
        assert (o.double() - t).abs().max() <= 2 * (e.double() - t).abs().max() + 1e-5 * t.abs().max()


@requires_cuda
def test_cuda_opcheck_and_bad_token():
    tokens, E, W, b = make_inputs(2, 9, 3, 7, 5, 4, seed=12, device="cuda")
    torch.library.opcheck(OP, (tokens, E, W, b, 0))
    with pytest.raises(IndexError, match=r"sid_tokens\[0, 0, 0\] = 7 is outside \[0, 7\)"):
        token_merge(torch.full((1, 1, 3), 7, device="cuda"), E, W, b)


@requires_cuda
def test_cuda_backward_is_flagged_nondeterministic():
    tokens, E, W, b = make_inputs(2, 30, 3, 10, 8, 6, device="cuda", seed=15)
    out = token_merge(tokens, E, W, b)
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError, match="token_merge_backward"):
            out.sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)
