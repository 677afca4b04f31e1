"""Shared-prefix packed SFT: every sample of a user whose history is a prefix of another's shares one copy of it.

Why: each SFT example re-encodes its user's whole history, so a user with n samples costs O(n^2) prompt
positions where O(n) would do (the samples of a user's pages or sequence positions have growing histories, and
the point-wise examples of one page share theirs entirely). A packed row is ``<bos>``, the longest history of
its samples once, then each sample's block (``<sep>``, its target tokens) attending only to its own history
prefix and to itself, with position ids continuing from that prefix as if it were alone
(:class:`genrec_ext.model.PackedSFTBatch`): the loss and gradients of the samples laid out one per row, up to
float summation order. A capped history (``max_history``) slides once a user has more items than the cap; a
window that starts later is no prefix of the earlier ones, so it begins a new row. Rows are cut at
``pack_tokens`` positions.

``history_stride`` (opt-in; the one approximation): a sliding window shares nothing, so a user with long
histories gains little from exact packing (page logs whose histories reach the cap: 1.27x fewer positions).
With a stride S, a history cut by the cap starts at the next multiple of S in the user's click stream instead
of exactly ``max_history`` items back, so every sample whose window starts in the same stride cell shares one
row: each sees its most recent ``max_history - S + 1`` to ``max_history`` items (serving still sees
``max_history``), the way SASRec trains every position of a sequence cut to its cap. Histories shorter than the cap are unchanged.
Measured on heavy users' page logs: 1.8x fewer positions, but test NDCG@10 0.009-0.020 lower than unpacked on every
seed (benchmarks/results/sft_packing_cpu.md), hence off by default.

Batches: :class:`genrec_ext.train.sampling.PackedBatchPlan` (a step = a random set of rows holding about
``global_batch_size`` examples, cut into length-sorted micro-batches; a pure function of ``(seed, epoch)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..model.batch import PackedSFTBatch, padded_rows
from ..sid.vocab import PAD, SEP
from .batching import SFTDataset

@dataclass(frozen=True)
class PackPlan:
    """Which examples share which packed row. Members of row ``p`` are ``members[offsets[p]:offsets[p + 1]]``."""

    members: np.ndarray  # int64 [M] example indices, grouped by row
    offsets: np.ndarray  # int64 [P + 1]
    base: np.ndarray  # int64 [P] the example whose history is the row's (its members' longest)
    prefix: np.ndarray  # int64 [M] history items each member sees
    lengths: np.ndarray  # int64 [P] positions of each row: <bos> + history vectors + blocks
    unpacked_lengths: np.ndarray  # int64 [M] positions each member takes laid out alone (<bos>, history, <sep>, target)
    block_lengths: np.ndarray  # int64 [M] positions of each member's block (<sep> + target)
    units_per_item: int = 1  # prompt vectors per history item

    def row_shapes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row: prompt positions (``<bos>`` + history vectors), blocks, and its widest block: what a
        micro-batch of rows is padded by (``GenRecModel.packed_layout`` pads prompts and blocks to the widest)."""
        starts = self.offsets[:-1]
        prompt = 1 + np.maximum.reduceat(self.prefix, starts) * self.units_per_item
        return prompt, np.diff(self.offsets), np.maximum.reduceat(self.block_lengths, starts)

    def history_len(self, p: int) -> int:
        """History items of row ``p`` (its longest member's)."""
        return int(self.prefix[self.offsets[p]:self.offsets[p + 1]].max())

    def __len__(self) -> int:
        return len(self.base)

    @property
    def num_examples(self) -> int:
        return len(self.members)


def target_lengths(dataset: SFTDataset) -> np.ndarray:
    """Target tokens of every example, without building any."""
    levels = dataset.vocab.levels
    if dataset.objective == "point":
        return np.full(len(dataset), levels, dtype=np.int64)
    pages = dataset.samples.target.end - dataset.samples.target.start
    return pages[dataset.example_sample] * levels + 1  # + <eos>


def plan_packs(dataset: SFTDataset, *, units_per_item: int = 1, pack_tokens: int = 1024,
               pack_members: int | None = None, history_stride: int | None = None) -> PackPlan:
    """Group ``dataset``'s examples into packed rows (module docstring). ``units_per_item``: prompt vectors per
    history item (1 with the Token Merger, L without); ``pack_members``: samples per row at most (None: no cap);
    ``history_stride``: where a capped history may start (None: exactly ``max_history`` items back)."""
    if pack_tokens < 2:
        raise ValueError(f"pack_tokens must be >= 2, got {pack_tokens}")
    if pack_members is not None and pack_members < 1:
        raise ValueError(f"pack_members must be >= 1 (or None), got {pack_members}")
    cap_members = pack_members or len(dataset) + 1
    samples, cap = dataset.samples, dataset.max_history
    if history_stride is not None and not (cap is not None and 1 <= history_stride <= cap):
        raise ValueError(f"history_stride must be in [1, max_history={cap}], got {history_stride}"
                         if cap is not None else "history_stride needs a dataset with max_history set")
    sample = dataset.example_sample
    full_len = (samples.history.end - samples.history.start)[sample]
    capped_len = np.minimum(full_len, cap) if cap is not None else full_len
    hist_start = samples.history.start[sample] + (full_len - capped_len)  # the capped window, in the value pool
    hist_len = capped_len
    if history_stride is not None:
        # A user's click stream is contiguous in the value pool and starts at the earliest window of the user's
        # samples; a window cut by the cap moves to the next point of a stride grid laid from that start.
        user = samples.user[sample]
        stream_start = np.full(int(user.max()) + 1 if len(user) else 0, np.iinfo(np.int64).max)
        np.minimum.at(stream_start, user, hist_start)
        stream_start = stream_start[user]
        end = hist_start + capped_len
        cut = end - cap > stream_start
        grid = stream_start + -(-(end - cap - stream_start) // history_stride) * history_stride
        hist_start = np.where(cut, grid, hist_start)
        hist_len = end - hist_start
    values = samples.history.values
    blocks = 1 + target_lengths(dataset)  # <sep> + target
    # a user's examples by history start, then length: a prefix chain is then a run of consecutive examples
    order = np.lexsort((np.arange(len(sample)), hist_len, hist_start, samples.user[sample]))
    user = samples.user[sample][order]

    members, offsets, base, prefix, lengths = [], [0], [], [], []
    row_hist = None  # (start, length) of the open row's history in the value pool
    row_len = row_members = 0
    for pos, i in enumerate(order):
        start, n = int(hist_start[i]), int(hist_len[i])
        opened = row_hist is not None and user[pos] == user[pos - 1]
        if opened:
            b_start, b_len = row_hist
            # sorted by length within the user: this history is at least as long as the row's
            opened = np.array_equal(values[start:start + b_len], values[b_start:b_start + b_len])
            grown = row_len + (n - b_len) * units_per_item + blocks[i]
            opened = opened and grown <= pack_tokens and row_members < cap_members
        if opened:
            row_len, row_members = grown, row_members + 1
            if n > row_hist[1]:
                row_hist = (start, n)
                base[-1] = i
        else:
            if row_hist is not None:
                offsets.append(len(members))
                lengths.append(row_len)
            row_hist, row_len, row_members = (start, n), 1 + n * units_per_item + int(blocks[i]), 1
            base.append(i)
        members.append(i)
        prefix.append(n)
    if row_hist is not None:
        offsets.append(len(members))
        lengths.append(row_len)
    members_a = np.asarray(members, dtype=np.int64)
    return PackPlan(members_a, np.asarray(offsets, dtype=np.int64), np.asarray(base, dtype=np.int64),
                    np.asarray(prefix, dtype=np.int64), np.asarray(lengths, dtype=np.int64),
                    (2 + capped_len * units_per_item + blocks - 1)[members_a], blocks[members_a], units_per_item)


class PackedSFTDataset(torch.utils.data.Dataset):
    """The rows of a :class:`PackPlan` over an :class:`SFTDataset`: ``dataset[p]`` -> (the row's history tokens
    ``[n, L]``, ``[(prefix, target tokens), ...]`` per member)."""

    def __init__(self, dataset: SFTDataset, plan: PackPlan) -> None:
        self.dataset, self.plan, self.vocab = dataset, plan, dataset.vocab

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, p: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
        plan = self.plan
        history = self.dataset.history_tokens(int(plan.base[p]))
        history = history[len(history) - plan.history_len(p):]  # with a history stride: the window's recent part
        lo, hi = int(plan.offsets[p]), int(plan.offsets[p + 1])
        blocks = [(int(plan.prefix[m]), self.dataset.target_tokens(int(plan.members[m]))) for m in range(lo, hi)]
        return history, blocks


def collate_packed(rows: list[tuple[np.ndarray, list[tuple[int, np.ndarray]]]]) -> PackedSFTBatch | None:
    """Packed rows as one batch: the rows' histories, and all their blocks listed flat; None for no rows (a rank's
    share of a step may leave a micro-batch empty)."""
    if not rows:
        return None
    levels = rows[0][0].shape[1] if rows[0][0].ndim == 2 else 1
    history = np.full((len(rows), max(1, max(len(h) for h, _ in rows)), levels), PAD, dtype=np.int64)
    for r, (h, _) in enumerate(rows):
        history[r, : len(h)] = h
    members = [(r, p, y) for r, (_, blocks) in enumerate(rows) for p, y in blocks]
    blocks, block_len = padded_rows([np.concatenate([[SEP], y]) for _, _, y in members])
    blocks[blocks < 0] = PAD
    return PackedSFTBatch(torch.from_numpy(history), torch.tensor([len(h) for h, _ in rows]),
                          torch.from_numpy(blocks), torch.from_numpy(block_len),
                          torch.tensor([r for r, _, _ in members]), torch.tensor([p for _, p, _ in members]))
