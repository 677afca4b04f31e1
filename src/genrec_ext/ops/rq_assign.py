"""genrec::rq_assign — residual-quantisation assignment (paper §2.1).

Per level l, each vector's running residual is assigned to the nearest of the level's first ``K_l``
centroids (squared L2; ties to the lowest index) and that centroid is subtracted. Distance and argmin are
fused tile by tile, so no ``N x K`` distance matrix is ever built.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._nvtx import nvtx_range
from .reference import acc_dtype

_OP = "genrec::rq_assign"


@torch.library.register_fake(_OP)
def _rq_assign_fake(x, codebooks, level_sizes=None):
    torch._check(x.dim() == 2, lambda: f"rq_assign: x must be [N, D], got {tuple(x.shape)}")
    torch._check(codebooks.dim() == 3, lambda: f"rq_assign: codebooks must be [L, K, D], got {tuple(codebooks.shape)}")
    acc = acc_dtype(x.dtype)
    n, levels = x.shape[0], codebooks.shape[0]
    return x.new_empty((n, levels), dtype=torch.int64), x.new_empty(x.shape), x.new_empty((n,), dtype=acc)


def rq_assign(x: Tensor, codebooks: Tensor, level_sizes: Sequence[int] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Assign every row of ``x`` to one centroid per residual level.

    Args:
        x: ``[N, D]`` float32 / bfloat16 / float64 vectors.
        codebooks: ``[L, K, D]`` centroids, same dtype and device as ``x``.
        level_sizes: optional ``L`` ints; level ``l`` uses only its first ``level_sizes[l]`` centroids
            (codebooks of different sizes, padded to ``K``).

    Returns:
        ``(codes, residual, sq_err)``: int64 ``[N, L]`` codes, the final residual ``[N, D]`` (dtype of ``x``)
        and its squared norm ``[N]`` (float32; float64 for float64 input). Work is done in float32 for
        bfloat16 input.
    """
    with nvtx_range(_OP):
        return torch.ops.genrec.rq_assign(x, codebooks, None if level_sizes is None else [int(k) for k in level_sizes])
