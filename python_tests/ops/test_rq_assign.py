"""genrec::rq_assign: CPU (and CUDA, when present) kernel against the brute-force reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from genrec_ext.ops import reference, rq_assign

from ..conftest import requires_cuda

OP = torch.ops.genrec.rq_assign.default


def make(n, d, levels, k, dtype=torch.float64, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    # Shrinking codebooks, as residual levels have: the residual keeps meaningful structure at every level.
    codebooks = torch.randn(levels, k, d, generator=g) * (0.5 ** torch.arange(levels))[:, None, None]
    return x.to(device, dtype), codebooks.to(device, dtype)


def chosen_vs_best(x, codebooks, codes, level_sizes=None):
    """Per level, along the kernel's own residual path (float64): (distance of the chosen centroid,
    smallest distance). Robust to near-ties that float32 rounding may break either way."""
    residual = x.double()
    out = []
    for level, codebook in enumerate(codebooks.double()):
        if level_sizes is not None:
            codebook = codebook[: level_sizes[level]]
        dist = (residual[:, None] - codebook[None]).pow(2).sum(-1)
        out.append((dist.gather(1, codes[:, level : level + 1]).squeeze(1), dist.min(1).values))
        residual = residual - codebook[codes[:, level]]
    return out


@given(n=st.integers(0, 300), d=st.integers(1, 20), levels=st.integers(1, 4), k=st.integers(1, 70),
       seed=st.integers(0, 2**16))
def test_matches_reference_fp64(n, d, levels, k, seed):
    x, codebooks = make(n, d, levels, k, seed=seed)
    codes, residual, sq_err = rq_assign(x, codebooks)
    ref_codes, ref_residual, ref_sq_err = reference.rq_assign(x, codebooks)
    assert codes.shape == (n, levels) and codes.dtype == torch.int64
    assert torch.equal(codes, ref_codes)
    torch.testing.assert_close(residual, ref_residual, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sq_err, ref_sq_err, rtol=1e-12, atol=1e-12)


def test_many_row_blocks_and_centroid_tiles():
    # > 128 rows per CPU task and > 512 centroids per GEMM tile, with ragged remainders.
    x, codebooks = make(1000, 13, 2, 1100, seed=1)
    codes, residual, sq_err = rq_assign(x, codebooks)
    ref = reference.rq_assign(x, codebooks)
    assert torch.equal(codes, ref[0])
    torch.testing.assert_close(residual, ref[1])


@pytest.mark.parametrize("dtype,eps", [(torch.float32, 1e-4), (torch.bfloat16, 1e-2)])
def test_low_precision_picks_a_nearest_centroid(dtype, eps):
    x, codebooks = make(500, 48, 3, 256, dtype=dtype, seed=2)
    codes, residual, sq_err = rq_assign(x, codebooks)
    assert residual.dtype == dtype and sq_err.dtype == torch.float32
    for chosen, best in chosen_vs_best(x, codebooks, codes):
        assert torch.all(chosen <= best + eps * (1 + best.abs()))
    # The returned residual and error follow the chosen codes.
    truth = x.double() - sum(codebooks[l].double()[codes[:, l]] for l in range(3))
    torch.testing.assert_close(residual.double(), truth, rtol=2e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-2)
    torch.testing.assert_close(sq_err.double(), truth.pow(2).sum(1), rtol=1e-3, atol=1e-3)


def test_ties_go_to_the_lowest_index():
    codebook = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [3.0, 3.0]])
    codes, residual, _ = rq_assign(x, codebook[None])
    assert codes[:, 0].tolist() == [0, 1, 0, 0]  # duplicates 2 and 3 never win; equidistant -> 0
    # Many identical centroids spread over several tiles: still the first one.
    x, codebooks = make(300, 8, 1, 1, dtype=torch.float32, seed=3)
    codes, *_ = rq_assign(x, codebooks.expand(1, 1500, 8).contiguous())
    assert torch.all(codes == 0)


def test_edge_shapes():
    x, codebooks = make(7, 1, 2, 1)  # K = 1, D = 1
    codes, residual, sq_err = rq_assign(x, codebooks)
    assert torch.all(codes == 0)
    torch.testing.assert_close(residual, x - codebooks[0, 0] - codebooks[1, 0])
    codes, residual, sq_err = rq_assign(*make(0, 5, 3, 4))  # N = 0
    assert codes.shape == (0, 3) and residual.shape == (0, 5) and sq_err.shape == (0,)


def test_level_sizes_restrict_each_level():
    x, codebooks = make(400, 6, 3, 32, seed=4)
    sizes = [32, 5, 1]
    codes, residual, sq_err = rq_assign(x, codebooks, sizes)
    for level, size in enumerate(sizes):
        assert codes[:, level].max() < size
    ref = reference.rq_assign(x, codebooks, sizes)
    assert torch.equal(codes, ref[0])
    torch.testing.assert_close(sq_err, ref[2])


def test_opcheck():
    for dtype in (torch.float32, torch.float64):
        x, codebooks = make(50, 7, 3, 9, dtype=dtype)
        torch.library.opcheck(OP, (x, codebooks, None))
        torch.library.opcheck(OP, (x, codebooks, [9, 4, 2]))


def test_under_torch_compile():
    torch._dynamo.reset()
    x, codebooks = make(64, 8, 2, 16, dtype=torch.float32)
    compiled = torch.compile(lambda a, b: rq_assign(a, b)[0], fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x, codebooks), rq_assign(x, codebooks)[0])


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.randn(4, 3).half(), torch.randn(2, 5, 3).half()), r"x must be float32, bfloat16 or float64, got Half"),
        ((torch.randn(4), torch.randn(2, 5, 3)), r"x must be \[N, D\], got shape \[4\]"),
        ((torch.randn(4, 3), torch.randn(5, 3)), r"codebooks must be \[L, K, D\], got shape \[5, 3\]"),
        ((torch.randn(4, 3), torch.randn(2, 5, 4)), r"D = 3 \(x's width\), got shape \[2, 5, 4\]"),
        ((torch.randn(4, 3), torch.randn(2, 5, 3).double()), r"codebooks dtype Double differs from x dtype Float"),
        ((torch.randn(4, 3), torch.randn(2, 0, 3)), r"K >= 1 centroids, got shape \[2, 0, 3\]"),
        ((torch.randn(4, 3), torch.randn(2, 5, 3), [5]), r"level_sizes has 1 entries but codebooks have L = 2"),
        ((torch.randn(4, 3), torch.randn(2, 5, 3), [5, 6]), r"level_sizes\[1\] = 6 is outside \[1, K = 5\]"),
        ((torch.randn(4, 3), torch.randn(2, 5, 3), [0, 5]), r"level_sizes\[0\] = 0 is outside"),
    ],
)
def test_bad_input_is_named(args, match):
    with pytest.raises(RuntimeError, match=match):
        rq_assign(*args)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cuda_matches_cpu(dtype):
    x, codebooks = make(3000, 40, 3, 300, dtype=dtype, seed=5, device="cuda")
    codes, residual, sq_err = rq_assign(x, codebooks)
    eps = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 1e-2}[dtype]
    for chosen, best in chosen_vs_best(x.cpu(), codebooks.cpu(), codes.cpu()):
        assert torch.all(chosen <= best + eps * (1 + best.abs()))
    torch.library.opcheck(OP, (x, codebooks, [300, 7, 1]))
