"""The token vocabulary of DESIGN.md: four specials, then one block of K_l tokens per SID level."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import Tensor

SPECIALS = ("<pad>", "<bos>", "<eos>", "<sep>")
PAD, BOS, EOS, SEP = range(len(SPECIALS))


@dataclass(frozen=True)
class SIDVocab:
    """Token ids for SIDs: level l's code c is token ``offsets[l] + c``; decoding at depth l scores only
    that block, ``range(offsets[l], offsets[l] + level_sizes[l])``."""

    level_sizes: tuple[int, ...]

    def __post_init__(self) -> None:  # a list (e.g. SIDTable.level_sizes) would never compare equal to a tuple
        object.__setattr__(self, "level_sizes", tuple(int(k) for k in self.level_sizes))

    @cached_property  # read at every level of every beam search
    def offsets(self) -> tuple[int, ...]:
        starts = np.cumsum([len(SPECIALS), *self.level_sizes[:-1]])
        return tuple(int(s) for s in starts)

    @property
    def size(self) -> int:
        return len(SPECIALS) + sum(self.level_sizes)

    @property
    def levels(self) -> int:
        return len(self.level_sizes)

    def tokens(self, sids: Tensor | np.ndarray) -> Tensor:
        """``[..., L]`` SID codes -> ``[..., L]`` int64 token ids (codes are range-checked)."""
        codes = torch.as_tensor(sids, dtype=torch.int64)
        if codes.shape[-1] != self.levels:
            raise ValueError(f"SIDs have {codes.shape[-1]} levels, the vocabulary {self.levels}")
        sizes = torch.tensor(self.level_sizes, device=codes.device)
        bad = (codes < 0) | (codes >= sizes)
        if bad.any():
            where = tuple(int(i) for i in torch.nonzero(bad)[0])
            raise ValueError(f"SID code {int(codes[where])} at {where} is outside [0, {int(sizes[where[-1]])}) "
                             f"for level {where[-1]}")
        return codes + torch.tensor(self.offsets, device=codes.device)

    def codes(self, tokens: Tensor) -> Tensor:
        """Inverse of :meth:`tokens` for ``[..., L]`` token ids."""
        tokens = torch.as_tensor(tokens, dtype=torch.int64)
        return tokens - torch.tensor(self.offsets, device=tokens.device)
