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
    samples packed into it, then each sample's block (``<sep>``, its target tokens) in its own slot of
    ``block_width`` positions (so attention runs per slot, ``genrec_ext.model.packed_attention``). A block
    attends to ``<bos>``, the first ``prefix_len`` history items (its own history, a prefix of the row's) and
    itself, with position ids continuing from its prefix as if it were alone: the same loss and gradients as the
    samples laid out one per row (up to float summation order), with the history encoded once."""

    history: Tensor  # [R, N, L] the row's history tokens, PAD beyond history_len
    history_len: Tensor  # [R]
    tail: Tensor  # [R, T] block b's tokens (<sep> then the target) in slot [b * block_width, (b + 1) * block_width)
    block: Tensor  # [R, T] the block (0, 1, ...) of the row a tail position belongs to; -1 = padding
    offset: Tensor  # [R, T] position inside its block's slot (0 = the <sep>)
    prefix_len: Tensor  # [R, T] history items the position's sample sees
    num_examples: int = 0  # samples (blocks) in the batch
    block_width: int = 1  # positions per block slot: T is a multiple of it

    def to(self, device) -> PackedSFTBatch:
        tensors = [getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)[:6]]
        return PackedSFTBatch(*tensors, num_examples=self.num_examples, block_width=self.block_width)

    def __len__(self) -> int:
        return self.history.shape[0]

    @property
    def num_target_tokens(self) -> int:
        """Supervised tokens: every tail position but padding and each block's <sep> is a target token."""
        return int(((self.block >= 0) & (self.offset > 0)).sum())


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
