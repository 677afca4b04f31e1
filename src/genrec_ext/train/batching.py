"""SFT examples and batches: page samples + SIDs -> token tensors for the GenRec model.

Objectives (paper §2.2):
* ``"page"`` (PW-NTP, eq. 4): the target is the whole page, ordered -> clicked -> exposed, each item as its
  L SID tokens, then ``<eos>``. One example per page sample.
* ``"point"`` (vanilla NTP, the LC-Rec/TIGER way): one example per positive item (D+) of a page, target =
  that item's L SID tokens. Several examples then share one history: the one-to-many ambiguity.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from ..data import ItemCatalog, PageSamples
from ..model.batch import SFTBatch
from ..sid import SIDTable, SIDVocab, catalog_index_of_sids, sid_codes_for  # noqa: F401 (re-exported)
from ..sid.vocab import EOS, PAD

Objective = Literal["page", "point"]


class SFTDataset(torch.utils.data.Dataset):
    """Examples for one objective over page samples. ``dataset[i]`` -> (history tokens [n, L], target tokens)."""

    def __init__(self, samples: PageSamples, codes: np.ndarray, vocab: SIDVocab, objective: Objective = "page",
                 max_history: int | None = None) -> None:
        if objective not in ("page", "point"):
            raise ValueError(f"objective must be 'page' or 'point', got {objective!r}")
        if len(codes) != samples.num_items:
            raise ValueError(f"SID codes cover {len(codes)} items but the samples index {samples.num_items}")
        self.samples, self.vocab, self.objective, self.max_history = samples, vocab, objective, max_history
        self.tokens = vocab.tokens(codes).numpy()  # [I, L] token ids of every item
        if objective == "page":
            lengths = samples.target.end - samples.target.start
            if (lengths == 0).any():
                raise ValueError(f"{int((lengths == 0).sum())} samples have an empty page; build samples without them")
            self.example_sample = np.arange(len(samples))
            self.example_item = None
        else:  # one example per positive item
            counts = samples.positives.end - samples.positives.start
            self.example_sample = np.repeat(np.arange(len(samples)), counts)
            first = np.repeat(samples.positives.start - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
            self.example_item = samples.positives.values[first + np.arange(counts.sum())]

    def __len__(self) -> int:
        return len(self.example_sample)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.history_tokens(i), self.target_tokens(i)

    def history_tokens(self, i: int) -> np.ndarray:
        """Example ``i``'s capped history as SID tokens ``[n, L]``."""
        history = self.samples.history[int(self.example_sample[i])]
        if self.max_history is not None:
            history = history[len(history) - self.max_history:] if len(history) > self.max_history else history
        return self.tokens[history]

    def target_tokens(self, i: int) -> np.ndarray:
        """Example ``i``'s target tokens (page-wise: the page's SIDs then ``<eos>``)."""
        if self.objective == "page":
            return np.concatenate([self.tokens[self.samples.target[int(self.example_sample[i])]].reshape(-1), [EOS]])
        return self.tokens[self.example_item[i]]


def collate(examples: list[tuple[np.ndarray, np.ndarray]]) -> SFTBatch:
    levels = examples[0][0].shape[1] if examples[0][0].ndim == 2 else 1
    n = max(1, max(len(h) for h, _ in examples))
    t = max(len(y) for _, y in examples)
    history = torch.full((len(examples), n, levels), PAD, dtype=torch.int64)
    target = torch.full((len(examples), t), PAD, dtype=torch.int64)
    for b, (h, y) in enumerate(examples):
        history[b, : len(h)] = torch.from_numpy(np.asarray(h, dtype=np.int64))
        target[b, : len(y)] = torch.from_numpy(np.asarray(y, dtype=np.int64))
    return SFTBatch(history, torch.tensor([len(h) for h, _ in examples]), target,
                    torch.tensor([len(y) for _, y in examples]))


def make_sft_dataset(samples: PageSamples, catalog: ItemCatalog, table: SIDTable, objective: Objective = "page",
                     max_history: int | None = None) -> SFTDataset:
    """Examples of ``objective`` for ``samples`` (items are dense indices of ``catalog``)."""
    return SFTDataset(samples, sid_codes_for(catalog, table), SIDVocab(tuple(table.level_sizes)), objective,
                      max_history)
