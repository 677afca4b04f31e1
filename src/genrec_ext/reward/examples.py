"""Labelled (history, candidate) examples for the reward model, grouped by page, and their padded batches.

* Page logs (exposures known): a page's candidates are its exposed items; clicked or ordered = 1, exposed and
  not clicked = 0 (``negatives="exposures"``).
* Sequence data (LC-Rec JSON: every target is a positive): each positive comes with ``num_negatives`` items drawn
  uniformly from the rest of the catalogue (never the positive itself), seeded (``negatives="sampled"``).
  Training draws fresh negatives every epoch (``SeedSequence([seed, epoch])``, so a resumed run sees the same
  ones); validation and test draw them once with their own seeds.

``negatives="auto"`` picks ``"exposures"`` when the samples hold any exposed-only item, else ``"sampled"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ..data import CLICK, PageSamples

Negatives = Literal["auto", "exposures", "sampled"]


def resolve_negatives(samples: PageSamples, negatives: Negatives) -> Literal["exposures", "sampled"]:
    if negatives not in ("auto", "exposures", "sampled"):
        raise ValueError(f"negatives must be 'auto', 'exposures' or 'sampled', got {negatives!r}")
    if negatives != "auto":
        return negatives
    _, actions = samples.target_actions.to_csr()
    return "exposures" if bool((actions < CLICK).any()) else "sampled"


@dataclass(frozen=True, eq=False)
class Examples:
    """Candidates and labels per sample: sample ``i``'s candidates are ``items[offsets[i]:offsets[i+1]]``."""

    samples: PageSamples
    offsets: np.ndarray  # int64 [S + 1]
    items: np.ndarray  # int64 catalogue indices
    labels: np.ndarray  # float32 0/1

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def positives(self) -> int:
        return int(self.labels.sum())


def build_examples(samples: PageSamples, mode: Literal["exposures", "sampled"], *, num_negatives: int = 4,
                   seed: int | tuple[int, ...] = 0) -> Examples:
    """Examples of ``samples`` (see the module docstring); ``seed`` only matters for sampled negatives.

    Samples without any candidate (sampled mode: no positive) keep an empty candidate list."""
    if mode == "exposures":
        off, items = samples.target.to_csr()
        _, actions = samples.target_actions.to_csr()
        return Examples(samples, off, items.astype(np.int64), (actions >= CLICK).astype(np.float32))
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
    pos_off, pos = samples.positives.to_csr()
    n_pos = np.diff(pos_off)
    I = samples.num_items
    if I < 2:
        raise ValueError("sampled negatives need a catalogue of at least 2 items")
    rng = np.random.default_rng(np.random.SeedSequence(seed if isinstance(seed, tuple) else (seed,)))
    neg = rng.integers(I - 1, size=(len(pos), num_negatives))
    neg += neg >= pos[:, None]  # uniform over the catalogue without the positive
    per = n_pos * (1 + num_negatives)
    off = np.zeros(len(samples) + 1, dtype=np.int64)
    np.cumsum(per, out=off[1:])
    # within a sample: its positives first, then all their negatives
    row = np.repeat(np.arange(len(samples)), n_pos)
    start = off[:-1][row]
    rank = np.arange(len(pos)) - pos_off[:-1][row]
    items = np.empty(int(off[-1]), dtype=np.int64)
    labels = np.zeros(int(off[-1]), dtype=np.float32)
    items[start + rank] = pos
    labels[start + rank] = 1.0
    neg_start = start + n_pos[row] + rank * num_negatives
    items[(neg_start[:, None] + np.arange(num_negatives)).ravel()] = neg.ravel()
    return Examples(samples, off, items, labels)


def pad_rows(offsets: np.ndarray, values: np.ndarray, fill: float = -1, dtype=np.int64) -> np.ndarray:
    """CSR rows as a left-aligned ``[n, max_len]`` array padded with ``fill`` (at least one column)."""
    lengths = np.diff(offsets)
    n = len(lengths)
    out = np.full((n, max(int(lengths.max(initial=0)), 1)), fill, dtype=dtype)
    row = np.repeat(np.arange(n), lengths)
    out[row, np.arange(len(values)) - offsets[:-1][row]] = values
    return out


@dataclass
class RewardBatch:
    """A padded batch: ``history_codes [B, N, L]`` (-1 rows = padding), ``history_mask [B, N]``,
    ``candidate_codes [B, C, L]`` (-1 rows = empty slots), ``candidate_items [B, C]`` (-1 = none), ``labels
    [B, C]`` and ``candidate_mask [B, C]``."""

    history_codes: Tensor
    history_mask: Tensor
    candidate_codes: Tensor
    candidate_items: Tensor
    labels: Tensor
    candidate_mask: Tensor

    def to(self, device) -> RewardBatch:
        return RewardBatch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def make_batch(examples: Examples, index: np.ndarray, item_codes: Tensor) -> RewardBatch:
    """The padded batch of samples ``index`` (item codes ``[I, L]`` from :func:`sid_codes_for`)."""
    h_off, h_items = examples.samples.history.to_csr(index)
    hist = torch.from_numpy(pad_rows(h_off, h_items))
    starts, ends = examples.offsets[index], examples.offsets[np.asarray(index) + 1]
    c_len = ends - starts
    c_off = np.zeros(len(index) + 1, dtype=np.int64)
    np.cumsum(c_len, out=c_off[1:])
    flat = np.repeat(starts - c_off[:-1], c_len) + np.arange(c_off[-1])
    cand = torch.from_numpy(pad_rows(c_off, examples.items[flat]))
    labels = torch.from_numpy(pad_rows(c_off, examples.labels[flat], fill=0.0, dtype=np.float32))

    def codes(items: Tensor) -> Tensor:
        return item_codes[items.clamp(min=0)].masked_fill((items < 0)[..., None], -1)

    return RewardBatch(codes(hist), hist >= 0, codes(cand), cand, labels, cand >= 0)
