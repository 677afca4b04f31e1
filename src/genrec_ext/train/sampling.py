"""Which examples each optimiser step sees: a pure function of ``(seed, step)``, so a resumed run consumes exactly
the batches of the uninterrupted one and any world size / accumulation split of a global batch sees the same examples.

:class:`BatchPlan` / :class:`StepBatchSampler`: one example per row, ``global_batch_size`` examples per step, in
order from a permutation seeded by ``(seed, epoch)``. :class:`PackedBatchPlan` / :class:`PackedStepSampler`: the
packed rows of :mod:`.packing` in token-budget, length-aware micro-batches (about ``global_batch_size`` examples
per step on average)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from .packing import PackPlan

#: rows per sorting window, in expected micro-batches: larger = less padding, less randomness across lengths
_SORT_WINDOW_BATCHES = 32


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
    """Token-budget micro-batches of packed rows, ``world_size x grad_accum`` of them per optimiser step (module
    docstring). Mirrors :class:`BatchPlan`'s fields where they have a meaning."""

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
