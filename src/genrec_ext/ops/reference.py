"""Pure-PyTorch references: plain, obviously right, never fast. Every kernel is tested against these."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def token_merge(
    sid_tokens: Tensor, embedding: Tensor, weight: Tensor, bias: Tensor | None = None, pad_id: int = 0
) -> Tensor:
    """Paper eq. (5): ``Linear(Concat(e(s_1), ..., e(s_L)))`` per history item; pads are zeros."""
    is_pad = sid_tokens == pad_id
    looked_up = embedding[sid_tokens.masked_fill(is_pad, 0)]  # [B, N, L, d]
    looked_up = torch.where(is_pad.unsqueeze(-1), torch.zeros((), dtype=embedding.dtype), looked_up)
    merged = F.linear(looked_up.flatten(2), weight, bias)  # [B, N, d_out]
    return torch.where(is_pad.all(-1, keepdim=True), torch.zeros((), dtype=merged.dtype), merged)


def rq_assign(
    x: Tensor, codebooks: Tensor, level_sizes: list[int] | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Residual quantisation by brute force: explicit ``||r - c||^2`` for every centroid, ``argmin`` (which
    returns the first, i.e. lowest, index on ties), subtract, next level. Computed in float64."""
    residual = x.double()
    codes = []
    for level, codebook in enumerate(codebooks.double()):
        if level_sizes is not None:
            codebook = codebook[: level_sizes[level]]
        distances = (residual[:, None, :] - codebook[None, :, :]).pow(2).sum(-1)  # [N, K]
        code = distances.argmin(1)
        codes.append(code)
        residual = residual - codebook[code]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    codes_t = torch.stack(codes, 1) if codes else torch.empty(x.shape[0], 0, dtype=torch.int64)
    return codes_t, residual.to(x.dtype), residual.pow(2).sum(1).to(acc)
