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

Batches: micro-batches of rows under a token budget (rows x longest row), length-aware (rows of similar length
together, taken from a seeded shuffle in windows, so no batch is padded to a rare long row), their order
shuffled again; one optimiser step = ``world_size x grad_accum`` micro-batches, each rank its contiguous share.
Everything is a pure function of ``(seed, epoch)``, so a resumed run sees exactly the batches of the
uninterrupted one. The default budget makes a step hold about ``global_batch_size`` examples on average, so a
recipe tuned without packing keeps its meaning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..model.batch import PackedSFTBatch
from ..sid.vocab import PAD, SEP
from .batching import SFTDataset

#: rows per sorting window, in expected micro-batches: larger = less padding, less randomness across lengths
_SORT_WINDOW_BATCHES = 32


@dataclass(frozen=True)
class PackPlan:
    """Which examples share which packed row. Members of row ``p`` are ``members[offsets[p]:offsets[p + 1]]``."""

    members: np.ndarray  # int64 [M] example indices, grouped by row
    offsets: np.ndarray  # int64 [P + 1]
    base: np.ndarray  # int64 [P] the example whose history is the row's (its members' longest)
    prefix: np.ndarray  # int64 [M] history items each member sees
    lengths: np.ndarray  # int64 [P] positions of each row: <bos> + history vectors + blocks
    unpacked_lengths: np.ndarray  # int64 [M] positions each member takes laid out alone (<bos>, history, <sep>, target)

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
               pack_members: int | None = None) -> PackPlan:
    """Group ``dataset``'s examples into packed rows (module docstring). ``units_per_item``: prompt vectors per
    history item (1 with the Token Merger, L without); ``pack_members``: samples per row at most (None: no cap)."""
    if pack_tokens < 2:
        raise ValueError(f"pack_tokens must be >= 2, got {pack_tokens}")
    if pack_members is not None and pack_members < 1:
        raise ValueError(f"pack_members must be >= 1 (or None), got {pack_members}")
    cap_members = pack_members or len(dataset) + 1
    samples, cap = dataset.samples, dataset.max_history
    sample = dataset.example_sample
    full_len = (samples.history.end - samples.history.start)[sample]
    hist_len = np.minimum(full_len, cap) if cap is not None else full_len
    hist_start = samples.history.start[sample] + (full_len - hist_len)  # the capped window, in the value pool
    values = samples.history.values
    blocks = 1 + target_lengths(dataset)  # <sep> + target
    # a user's examples by history length: a prefix chain is then a run of consecutive examples
    order = np.lexsort((np.arange(len(sample)), hist_len, samples.user[sample]))
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
                    (2 + hist_len * units_per_item + blocks - 1)[members_a])


class PackedSFTDataset(torch.utils.data.Dataset):
    """The rows of a :class:`PackPlan` over an :class:`SFTDataset`: ``dataset[p]`` -> (the row's history tokens
    ``[n, L]``, ``[(prefix, target tokens), ...]`` per member)."""

    def __init__(self, dataset: SFTDataset, plan: PackPlan) -> None:
        self.dataset, self.plan, self.vocab = dataset, plan, dataset.vocab

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, p: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
        plan = self.plan
        history, _ = self.dataset[int(plan.base[p])]
        lo, hi = int(plan.offsets[p]), int(plan.offsets[p + 1])
        blocks = [(int(plan.prefix[m]), self.dataset[int(plan.members[m])][1]) for m in range(lo, hi)]
        return history, blocks


def collate_packed(rows: list[tuple[np.ndarray, list[tuple[int, np.ndarray]]]]) -> PackedSFTBatch:
    levels = rows[0][0].shape[1] if rows[0][0].ndim == 2 else 1
    n = max(1, max(len(h) for h, _ in rows))
    tails = [np.concatenate([np.concatenate([[SEP], y]) for _, y in blocks]) for _, blocks in rows]
    width = max(len(t) for t in tails)
    history = np.full((len(rows), n, levels), PAD, dtype=np.int64)
    tail = np.full((len(rows), width), PAD, dtype=np.int64)
    block = np.full((len(rows), width), -1, dtype=np.int64)
    offset = np.zeros((len(rows), width), dtype=np.int64)
    prefix = np.zeros((len(rows), width), dtype=np.int64)
    for r, ((h, blocks), t) in enumerate(zip(rows, tails)):
        history[r, : len(h)] = h
        tail[r, : len(t)] = t
        sizes = np.array([1 + len(y) for _, y in blocks])
        ids = np.repeat(np.arange(len(blocks)), sizes)
        block[r, : len(t)] = ids
        offset[r, : len(t)] = np.arange(len(t)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        prefix[r, : len(t)] = np.repeat([p for p, _ in blocks], sizes)
    return PackedSFTBatch(torch.from_numpy(history), torch.tensor([len(h) for h, _ in rows]), torch.from_numpy(tail),
                          torch.from_numpy(block), torch.from_numpy(offset), torch.from_numpy(prefix),
                          num_examples=sum(len(b) for _, b in rows))


# --------------------------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class PackedBatchPlan:
    """Token-budget micro-batches of packed rows, ``world_size x grad_accum`` of them per optimiser step (module
    docstring). Mirrors :class:`genrec_ext.train.sft.BatchPlan`'s fields where they have a meaning."""

    plan: PackPlan
    batch_tokens: int  # padded positions (rows x longest row) per micro-batch at most
    seed: int
    world_size: int
    grad_accum: int
    global_batch_size: int  # the examples per step the budget aims at (on average)
    total_steps: int
    # per epoch, the examples of each of its steps (kept: small), and the newest epoch's micro-batches (one at a
    # time: a sampler walks epochs in order), so that no step re-plans an epoch
    _step_examples: dict[int, np.ndarray] = field(default_factory=dict, init=False, repr=False, compare=False)
    _batches: dict[int, list[np.ndarray]] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def dataset_size(self) -> int:
        return self.plan.num_examples

    @property
    def micros_per_step(self) -> int:
        return self.world_size * self.grad_accum

    @property
    def steps_per_epoch(self) -> int:
        return self.epoch_steps(0)

    @property
    def micro_batch_size(self) -> int | None:
        return None  # varies: rows under a token budget

    @classmethod
    def make(cls, plan: PackPlan, *, global_batch_size: int, grad_accum: int, world_size: int, seed: int,
             max_steps: int | None, epochs: float, batch_tokens: int | None = None) -> PackedBatchPlan:
        if len(plan) == 0:
            raise ValueError("no examples to pack")
        micros = world_size * grad_accum
        if batch_tokens is None:  # about global_batch_size examples per step
            per_example = plan.lengths.sum() / plan.num_examples
            batch_tokens = int(math.ceil(global_batch_size * per_example / micros * 1.1))  # ~10% padding
        batch_tokens = max(batch_tokens, int(plan.lengths.max()))  # every row fits a micro-batch
        probe = cls(plan, batch_tokens, seed, world_size, grad_accum, global_batch_size, 0)
        per_epoch = probe.epoch_steps(0)
        if per_epoch == 0:
            raise ValueError(f"{len(plan)} packed rows make fewer micro-batches than one step needs "
                             f"({micros} = world_size x grad_accum): lower batch_tokens or global_batch_size")
        total = max_steps if max_steps is not None else max(1, math.ceil(epochs * per_epoch))
        out = cls(plan, batch_tokens, seed, world_size, grad_accum, global_batch_size, total)
        out._step_examples.update(probe._step_examples)
        out._batches.update(probe._batches)
        return out

    def epoch_steps(self, epoch: int) -> int:
        return len(self._examples_per_step(epoch))

    def micro_batches(self, epoch: int) -> list[np.ndarray]:
        if epoch not in self._batches:
            self._batches.clear()
            self._batches[epoch] = _micro_batches(self.plan.lengths, self.batch_tokens, self.seed, epoch)
        return self._batches[epoch]

    def locate(self, step: int) -> tuple[int, int]:
        """(epoch, step within it) of optimiser step ``step``."""
        epoch = 0
        while step >= (n := self.epoch_steps(epoch)):
            step -= n
            epoch += 1
        return epoch, step

    def epoch_at(self, step: int) -> float:
        epoch, pos = self.locate(step)
        return epoch + pos / max(1, self.epoch_steps(epoch))

    def examples_through(self, step: int) -> int:
        """Examples seen in optimiser steps ``0 .. step - 1``."""
        epoch, pos = self.locate(step)
        return (sum(int(self._examples_per_step(e).sum()) for e in range(epoch))
                + int(self._examples_per_step(epoch)[:pos].sum()))

    def _examples_per_step(self, epoch: int) -> np.ndarray:
        """Examples of each whole step of ``epoch`` (its length: the epoch's steps), planned once."""
        if epoch not in self._step_examples:
            members = np.diff(self.plan.offsets)
            per_micro = np.array([members[b].sum() for b in self.micro_batches(epoch)], dtype=np.int64)
            steps = len(per_micro) // self.micros_per_step
            self._step_examples[epoch] = per_micro[: steps * self.micros_per_step].reshape(steps, -1).sum(1)
        return self._step_examples[epoch]

    def step_micro_batches(self, step: int) -> list[np.ndarray]:
        epoch, pos = self.locate(step)
        m = self.micros_per_step
        return self.micro_batches(epoch)[pos * m:(pos + 1) * m]


def _micro_batches(lengths: np.ndarray, budget: int, seed: int, epoch: int) -> list[np.ndarray]:
    """An epoch's micro-batches of row indices: a seeded shuffle, sorted by length within windows, cut greedily
    under ``budget`` padded positions, then the batches shuffled (numpy throughout)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, 0x9AC]))
    order = rng.permutation(len(lengths))
    rows_per_batch = max(1, budget // max(1, int(np.median(lengths))))
    window = rows_per_batch * _SORT_WINDOW_BATCHES
    batches: list[np.ndarray] = []
    for w in range(0, len(order), window):
        chunk = order[w:w + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        running_max = np.maximum.accumulate(lengths[chunk])  # rows sorted ascending: the max is the last one
        start = 0
        while start < len(chunk):
            cost = running_max[start:] * np.arange(1, len(chunk) - start + 1)
            stop = start + max(1, int(np.searchsorted(cost, budget, side="right")))
            batches.append(chunk[start:stop])
            start = stop
    return [batches[i] for i in rng.permutation(len(batches))]


class PackedStepSampler(torch.utils.data.Sampler[list[int]]):
    """This rank's micro-batches (row indices) for steps ``start_step .. total_steps - 1``: of each step's
    ``world_size x grad_accum`` micro-batches, rank r takes the r-th contiguous ``grad_accum``."""

    def __init__(self, plan: PackedBatchPlan, rank: int, start_step: int = 0) -> None:
        self.plan, self.rank, self.start_step = plan, rank, start_step

    def __len__(self) -> int:
        return max(0, self.plan.total_steps - self.start_step) * self.plan.grad_accum

    def __iter__(self):
        a = self.plan.grad_accum
        for step in range(self.start_step, self.plan.total_steps):
            for micro in self.plan.step_micro_batches(step)[self.rank * a:(self.rank + 1) * a]:
                yield micro.tolist()
