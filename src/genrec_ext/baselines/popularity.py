"""Non-learned rows of every table: MostPop (the floor a personal model must clear) and, on synthetic data, the
Oracle that ranks by the generator's true probability of each item being a positive of the request (the
ceiling: how much personalisation there is to learn)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..data import PageSamples
from .base import FitReport, Recommendations, Recommender, Task, timed_fit


def top_k_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest entries of each row, best first; ties go to the lower index."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else np.tile(
        np.arange(scores.shape[1]), (len(scores), 1))
    # order the k by (score desc, index asc)
    picked = np.take_along_axis(scores, part, 1)
    order = np.lexsort((part, -picked), axis=1)
    return np.take_along_axis(part, order, 1)


def pad_columns(items: np.ndarray, k: int) -> np.ndarray:
    """``items [Q, k']`` widened to ``k`` columns with -1 (a catalogue smaller than K)."""
    if items.shape[1] >= k:
        return items[:, :k]
    return np.concatenate([items, np.full((len(items), k - items.shape[1]), -1, np.int64)], 1)


class MostPop(Recommender):
    """The same list for everyone: items by positives in the training split (ties: lower index first)."""

    name = "mostpop"

    def __init__(self, config: dict | None = None, **overrides) -> None:
        _no_settings(self.name, {**(config or {}), **overrides})
        self.ranking: np.ndarray | None = None

    def fit(self, task: Task, *, out_dir=None, progress: bool = True) -> FitReport:
        def fit():
            self.ranking = np.lexsort((np.arange(len(task.popularity)), -task.popularity))
            return {}
        return timed_fit(fit)

    def recommend(self, task: Task, samples: PageSamples, k: int, *, constrained: bool = True,
                  progress: bool = True) -> Recommendations:
        if self.ranking is None:
            raise RuntimeError("MostPop.recommend before fit")
        top = pad_columns(self.ranking[None, :k].astype(np.int64), k)
        return Recommendations(np.repeat(top, len(samples), 0))

    def prompt_length(self, samples: PageSamples) -> float:
        return 0.0

    def _save_state(self, directory: Path) -> None:
        np.save(directory / "ranking.npy", self.ranking)

    def _load_state(self, directory: Path, task: Task) -> None:
        self.ranking = np.load(directory / "ranking.npy")


class Oracle(Recommender):
    """Ranks items by the synthetic generator's true probability of being a positive of the request.

    That is: exposed on the query's page and then clicked. Only defined on synthetic data; nothing to fit."""

    name = "oracle"

    def __init__(self, config: dict | None = None, **overrides) -> None:
        _no_settings(self.name, {**(config or {}), **overrides})
        self.chunk = 1024  # requests scored at once

    def fit(self, task: Task, *, out_dir=None, progress: bool = True) -> FitReport:
        _world(task)
        return FitReport(0.0)

    def recommend(self, task: Task, samples: PageSamples, k: int, *, constrained: bool = True,
                  progress: bool = True) -> Recommendations:
        world = _world(task)
        requests = samples.request_ids[samples.request] if samples.request_ids is not None else samples.request
        out = []
        for start in tqdm(range(0, len(samples), self.chunk), desc="oracle", unit="chunk", disable=not progress,
                          leave=False):
            scores = world.positive_probability(requests[start:start + self.chunk])
            out.append(pad_columns(top_k_rows(scores, k).astype(np.int64), k))
        items = np.concatenate(out) if out else np.zeros((0, k), np.int64)
        return Recommendations(items)

    def prompt_length(self, samples: PageSamples) -> float:
        return 0.0


def _no_settings(name: str, settings: dict) -> None:
    if settings:
        raise ValueError(f"{name} has no settings, got {sorted(settings)}")


def _world(task: Task):
    if task.world is None or not hasattr(task.world, "positive_probability"):
        raise ValueError("the Oracle needs the synthetic generator's truth: it exists only for synthetic data")
    return task.world
