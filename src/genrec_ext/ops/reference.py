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
