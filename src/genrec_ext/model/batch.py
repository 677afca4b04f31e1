"""The model's batch type: what SFT, RL and decoding feed a GenRecModel (built by ``genrec_ext.train``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor


@dataclass
class SFTBatch:
    """Right-padded token tensors (int64). ``history[b, :history_len[b]]`` are the L tokens of each history
    item, oldest first; ``target[b, :target_len[b]]`` the tokens to predict (``<eos>`` included in page mode)."""

    history: Tensor  # [B, N, L], PAD beyond history_len
    history_len: Tensor  # [B]
    target: Tensor  # [B, T], PAD beyond target_len
    target_len: Tensor  # [B]

    def to(self, device) -> SFTBatch:
        return SFTBatch(*(getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)))

    def __len__(self) -> int:
        return self.history.shape[0]

    @property
    def num_target_tokens(self) -> int:
        """Supervised tokens (the loss averages over them); read on the CPU tensors, no device sync."""
        return int(self.target_len.sum())


@dataclass
class PackedSFTBatch:
    """Shared-prefix packed rows (``genrec_ext.train.packing``): every row holds ONE history, the longest of the
    samples packed into it, and each sample is a block (``<sep>``, its target tokens) that attends to ``<bos>``,
    the first ``prefix_len`` history items of its row (its own history, a prefix of the row's) and itself, with
    position ids continuing from its prefix as if it were alone: the same loss and gradients as the samples laid
    out one per row (up to float summation order), with the history encoded once. Blocks are listed flat, each
    naming its row, so no row is padded to another's number of blocks (``genrec_ext.model.packed_attention``)."""

    history: Tensor  # [R, N, L] each row's history tokens, PAD beyond history_len
    history_len: Tensor  # [R]
    blocks: Tensor  # [K, W] each block's tokens (<sep> then the target), PAD beyond block_len
    block_len: Tensor  # [K] 1 + the target's length
    block_row: Tensor  # [K] the row whose history the block reads
    prefix_len: Tensor  # [K] history items the block's sample sees

    def to(self, device) -> PackedSFTBatch:
        return PackedSFTBatch(*(getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)))

    def __len__(self) -> int:
        return self.history.shape[0]

    @property
    def num_examples(self) -> int:
        return self.blocks.shape[0]

    @property
    def num_target_tokens(self) -> int:
        """Supervised tokens: every block position but its <sep>; read on the CPU tensors, no device sync."""
        return int(self.block_len.sum()) - self.num_examples


def padded_rows(rows: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Ragged int rows as one right-padded int64 matrix ``[B, max(1, longest)]`` (-1 padding) and the lengths."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    out = np.full((len(rows), max(1, int(lengths.max()) if len(lengths) else 1)), -1, dtype=np.int64)
    if lengths.sum():
        at = np.repeat(np.arange(len(rows)), lengths)
        cols = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out[at, cols] = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows])
    return out, lengths


def history_prompts(histories: Sequence[np.ndarray], item_tokens: np.ndarray, pad: int = 0
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """The model's prompt input for a batch of histories (catalogue item indices, oldest first, already capped):
    ``history`` tokens ``[B, N, L]`` (``pad`` beyond each length), ``history_len [B]`` and the item indices
    ``[B, N]`` (-1 beyond each length); ``item_tokens [I, L]`` holds every item's SID tokens. An empty history is
    a prompt of ``<bos> <sep>`` alone."""
    items, lengths = padded_rows(histories)
    tokens = np.asarray(item_tokens)[np.maximum(items, 0)]
    tokens[items < 0] = pad
    return torch.from_numpy(tokens), torch.from_numpy(lengths), torch.from_numpy(items)
