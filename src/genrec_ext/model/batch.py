"""The model's batch type: what SFT, RL and decoding feed a GenRecModel (built by ``genrec_ext.train``)."""

from __future__ import annotations

from dataclasses import dataclass, fields

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
