"""SID tuples -> item index for many SIDs at once (decoded beams, RL rollouts), with no Python per SID."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


class SIDLookup:
    """SID tuples -> catalogue item index, ``-1`` for a tuple no item has (or a code that is out of range or
    ``-1``); vectorised with a sorted mixed-radix key and ``searchsorted``, on any device."""

    def __init__(self, item_codes: Tensor | np.ndarray, level_sizes: Sequence[int]) -> None:
        codes = torch.as_tensor(np.asarray(item_codes), dtype=torch.int64)
        if codes.dim() != 2 or codes.shape[1] != len(level_sizes):
            raise ValueError(f"item_codes must be [items, {len(level_sizes)}], got {tuple(codes.shape)}")
        self.level_sizes = torch.tensor([int(k) for k in level_sizes], dtype=torch.int64)
        radix = torch.ones(len(level_sizes), dtype=torch.int64)
        for level in range(len(level_sizes) - 2, -1, -1):
            radix[level] = radix[level + 1] * self.level_sizes[level + 1]
        self.radix = radix
        keys = (codes * radix).sum(-1)
        self.keys, self.items = torch.sort(keys)
        if len(self.keys) > 1 and bool((self.keys[1:] == self.keys[:-1]).any()):
            raise ValueError("item_codes hold duplicate SIDs; a SID must name one item")
        self._copies: dict[torch.device, SIDLookup] = {}  # per other device: no host->device copy per call

    def to(self, device) -> SIDLookup:
        out = object.__new__(SIDLookup)
        out.level_sizes, out.radix, out.keys, out.items = (t.to(device) for t in
                                                            (self.level_sizes, self.radix, self.keys, self.items))
        out._copies = {}
        return out

    def _on(self, device: torch.device) -> SIDLookup:
        if self.keys.device == device:
            return self
        if device not in self._copies:
            self._copies[device] = self.to(device)
        return self._copies[device]

    def __call__(self, codes: Tensor) -> Tensor:
        codes = torch.as_tensor(codes)
        if codes.shape[-1] != len(self.level_sizes):
            raise ValueError(f"SID codes must end in {len(self.level_sizes)} levels, got shape {tuple(codes.shape)}")
        codes = codes.to(torch.int64)
        here = self._on(codes.device)
        ok = ((codes >= 0) & (codes < here.level_sizes)).all(-1)
        key = (codes.clamp(min=0) * here.radix).sum(-1)
        keys, items = here.keys, here.items
        if len(keys) == 0:
            return torch.full(key.shape, -1, dtype=torch.int64, device=codes.device)
        pos = torch.searchsorted(keys, key).clamp(max=len(keys) - 1)
        hit = ok & (keys[pos] == key)
        return torch.where(hit, items[pos], torch.full_like(key, -1))
