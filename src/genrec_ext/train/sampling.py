"""Which examples each optimiser step sees: a pure function of ``(seed, step)``, so a resumed run consumes exactly
the batches of the uninterrupted one and any world size / accumulation split of a global batch sees the same examples.

:class:`BatchPlan` / :class:`StepBatchSampler`: one example per row, ``global_batch_size`` examples per step, in
order from a permutation seeded by ``(seed, epoch)``. :class:`PackedBatchPlan` / :class:`PackedStepSampler`: the
packed rows of :mod:`.packing`, a step a random set of rows holding about ``global_batch_size`` examples, cut into
micro-batches of rows of similar length."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from .packing import PackPlan

@dataclass(frozen=True)
class BatchPlan:
    """How a global batch is cut: ``global_batch_size = world_size * grad_accum * micro_batch_size``."""

    dataset_size: int
    global_batch_size: int
    world_size: int
    grad_accum: int
    steps_per_epoch: int
    total_steps: int

    @property
    def micro_batch_size(self) -> int:
        return self.global_batch_size // (self.world_size * self.grad_accum)

    def locate(self, step: int) -> tuple[int, int]:
        """(epoch, step within it) of optimiser step ``step``."""
        return divmod(step, self.steps_per_epoch)

    def epoch_at(self, step: int) -> float:
        return step / self.steps_per_epoch

    def examples_through(self, step: int) -> int:
        """Examples seen in optimiser steps ``0 .. step - 1``."""
        return step * self.global_batch_size

    @classmethod
    def make(cls, dataset_size: int, *, global_batch_size: int, grad_accum: int, world_size: int,
             max_steps: int | None, epochs: float) -> BatchPlan:
        g, a = global_batch_size, grad_accum
        if g % (world_size * a):
            raise ValueError(f"global_batch_size={g} must be divisible by world_size x grad_accum = "
                             f"{world_size} x {a} = {world_size * a}")
        if dataset_size < g:
            raise ValueError(f"the dataset has {dataset_size} examples, fewer than one global batch "
                             f"(global_batch_size={g})")
        per_epoch = dataset_size // g
        total = max_steps if max_steps is not None else max(1, math.ceil(epochs * per_epoch))
        return cls(dataset_size, g, world_size, a, per_epoch, total)


def epoch_order(dataset_size: int, seed: int, epoch: int) -> np.ndarray:
    """The example order of ``epoch``: a permutation seeded by ``(seed, epoch)`` only."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch])).permutation(dataset_size)


def global_batch_indices(plan: BatchPlan, seed: int, step: int) -> np.ndarray:
    """The dataset indices of optimiser step ``step`` (0-based), in order."""
    epoch, pos = divmod(step, plan.steps_per_epoch)
    g = plan.global_batch_size
    return epoch_order(plan.dataset_size, seed, epoch)[pos * g:(pos + 1) * g]


class StepBatchSampler(torch.utils.data.Sampler[list[int]]):
    """This rank's micro-batches for steps ``start_step .. total_steps - 1``: rank r takes the r-th contiguous
    slice of each global batch and cuts it into ``grad_accum`` micro-batches."""

    def __init__(self, plan: BatchPlan, seed: int, rank: int, start_step: int = 0) -> None:
        self.plan, self.seed, self.rank, self.start_step = plan, seed, rank, start_step

    def __len__(self) -> int:
        return max(0, self.plan.total_steps - self.start_step) * self.plan.grad_accum

    def __iter__(self) -> Iterator[list[int]]:
        plan, m = self.plan, self.plan.micro_batch_size
        per_rank = plan.global_batch_size // plan.world_size
        cached_epoch, order = -1, None
        for step in range(self.start_step, plan.total_steps):
            epoch, pos = divmod(step, plan.steps_per_epoch)
            if epoch != cached_epoch:
                cached_epoch, order = epoch, epoch_order(plan.dataset_size, self.seed, epoch)
            start = pos * plan.global_batch_size + self.rank * per_rank
            mine = order[start:start + per_rank]
            for a in range(plan.grad_accum):
                yield mine[a * m:(a + 1) * m].tolist()


@dataclass(frozen=True)
class PackedBatchPlan:
    """Steps of packed rows: each step a random set of rows holding about ``global_batch_size`` examples (the
    meaning a recipe tuned without packing expects), cut into ``grad_accum`` micro-batches per rank sorted by
    length, up to ``length_splits`` times more where that pads less (a micro-batch is then padded to rows of its own
    length, not to the step's rarest long row; where cutting saves under 10% of the padded positions it is not done,
    since every micro-batch costs a fixed overhead). Why random steps, not length-sorted ones: batches of rows of
    one length (users of one activity level) slowed SFT on Scientific to about half the progress per epoch (training
    loss 2.64 against 2.57 after 3 epochs; 7% lower validation HR@10 after 20), while a random step drawn in this
    way trains like the unpacked loop (benchmarks/results/sft_packing_cpu.md). Mirrors :class:`BatchPlan`'s fields
    where they have a meaning."""

    plan: PackPlan
    length_splits: int
    seed: int
    world_size: int
    grad_accum: int  # micro-batch slots per step on each rank: the caller's grad_accum x length_splits
    global_batch_size: int  # examples per step (a row belongs to the step its first example falls in)
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
        return None  # varies: rows of about equal examples

    @classmethod
    def make(cls, plan: PackPlan, *, global_batch_size: int, grad_accum: int, world_size: int, seed: int,
             max_steps: int | None, epochs: float, length_splits: int = 4) -> PackedBatchPlan:
        if len(plan) == 0:
            raise ValueError("no examples to pack")
        if length_splits < 1:
            raise ValueError(f"length_splits must be >= 1, got {length_splits}")
        probe = cls(plan, length_splits, seed, world_size, grad_accum * length_splits, global_batch_size, 0)
        per_epoch = probe.epoch_steps(0)
        if per_epoch == 0:
            raise ValueError(f"the {plan.num_examples} examples in {len(plan)} packed rows make no whole step of "
                             f"global_batch_size={global_batch_size} with a row for each of {world_size} rank(s)")
        total = max_steps if max_steps is not None else max(1, math.ceil(epochs * per_epoch))
        out = cls(plan, length_splits, seed, world_size, grad_accum * length_splits, global_batch_size, total)
        out._step_examples.update(probe._step_examples)
        out._batches.update(probe._batches)
        return out

    def epoch_steps(self, epoch: int) -> int:
        return len(self._examples_per_step(epoch))

    def micro_batches(self, epoch: int) -> list[np.ndarray]:
        if epoch not in self._batches:
            self._batches.clear()
            self._batches[epoch] = _micro_batches(self.plan, self.global_batch_size, self.world_size,
                                                  self.grad_accum // self.length_splits, self.grad_accum,
                                                  self.seed, epoch)
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


#: cut a rank's share of a step into more micro-batches only where that saves at least this share of its padded
#: positions (each micro-batch costs a fixed overhead; a point-wise step of uniform rows gained nothing from 4)
SPLIT_SAVING = 0.1


def _micro_batches(plan: PackPlan, per_step: int, world_size: int, min_pieces: int, accum: int, seed: int,
                   epoch: int) -> list[np.ndarray]:
    """An epoch's micro-batches of row indices, ``world_size x accum`` per step (rank r's are the r-th ``accum``).

    Rows in a seeded random order; a step = the next rows holding about ``per_step`` examples (a row belongs to
    the step its first example falls in); the step's rows go to the ranks in contiguous shares of about equal
    examples; each share is sorted by length and cut into ``min_pieces`` (the caller's grad_accum) micro-batches
    of about equal examples, or 2x, 4x, ... up to ``accum`` where each doubling still saves ``SPLIT_SAVING`` of
    the padded positions. A share cut into fewer than ``accum`` pieces gets empty micro-batches first (the loop
    skips them; a rank's last micro-batch, which synchronises gradients, holds a row). A step with fewer rows
    than ranks, and a trailing partial step, are dropped. numpy throughout."""
    members, lengths = np.diff(plan.offsets), plan.lengths
    prompt, blocks, block_width = plan.row_shapes()

    def padded(pieces: list[np.ndarray]) -> int:
        return sum(len(c) * int(prompt[c].max()) + int(blocks[c].sum()) * int(block_width[c].max()) for c in pieces)

    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, 0x9AC]))
    order = rng.permutation(len(members))
    first = np.cumsum(members[order]) - members[order]  # examples before each row in this order
    steps = int(members.sum()) // per_step
    bounds = np.searchsorted(first // per_step, np.arange(steps + 1))
    empty = np.zeros(0, dtype=np.int64)
    batches: list[np.ndarray] = []
    for k in range(steps):
        rows = order[bounds[k]:bounds[k + 1]]
        if len(rows) < world_size:
            continue
        for share in _even_cuts(rows, members, world_size):
            share = share[np.argsort(lengths[share], kind="stable")]
            cuts = _even_cuts(share, members, min(min_pieces, len(share)))
            while 2 * len(cuts) <= min(accum, len(share)):
                finer = _even_cuts(share, members, 2 * len(cuts))
                if padded(finer) > (1 - SPLIT_SAVING) * padded(cuts):
                    break
                cuts = finer
            batches += [empty] * (accum - len(cuts)) + cuts
    return batches


def _even_cuts(rows: np.ndarray, members: np.ndarray, parts: int) -> list[np.ndarray]:
    """``rows`` cut in order into ``parts`` (<= len(rows)) non-empty pieces of about equal examples."""
    if parts == 1:
        return [rows]
    want = np.searchsorted(np.cumsum(members[rows]), np.arange(1, parts) * members[rows].sum() / parts) + 1
    cut = np.clip(want, np.arange(1, parts), len(rows) - parts + np.arange(1, parts))  # each piece >= 1 row
    cut = np.maximum.accumulate(cut)
    return np.split(rows, cut)


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
