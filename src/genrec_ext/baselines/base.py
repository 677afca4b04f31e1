"""One harness for every recommender: the task it sees, what it returns, and how it is scored.

A :class:`Task` is one dataset split three ways (train / validation / test) with its item catalogue, and,
where they exist, the SID table (generative recommenders) and the synthetic generator's truth (Oracle). A
:class:`Recommender` is fitted on the task's training split (selecting its model on the validation split,
never the test split) and then returns the top-K items of any split's queries; :func:`evaluate_recommender`
scores those with :mod:`genrec_ext.eval`, so every row of a table is measured the same way.
"""

from __future__ import annotations

import copy
import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from ..data import DEFAULT_MAX_HISTORY, ItemCatalog, PageSamples, Splits
from ..eval import DEFAULT_KS, evaluate
from ..sid import SIDTable

Split = Literal["train", "valid", "test"]
META_FILE = "recommender.json"


@dataclass(eq=False)
class Task:
    """A dataset as every recommender sees it.

    Attributes:
        catalog: the items; recommendations are dense indices into it.
        splits: train / validation / test page samples (leave-one-out for LC-Rec data, last day for logs).
        max_history: the history cap of the samples (item-ID models use it as their sequence length).
        table: the SID table of the catalogue (needed by generative recommenders).
        world: the synthetic generator's output when the data is synthetic (the Oracle reads its truth).
        repage: for sequence data, ``repage(k)`` gives the same splits with training pages of the next ``k``
            items (page-wise targets on sequence data); ``None`` when pages are intrinsic (page logs).
        name: a label for reports.
    """

    catalog: ItemCatalog
    splits: Splits
    max_history: int
    table: SIDTable | None = None
    world: Any = None  # data.SyntheticData
    repage: Callable[[int], Splits] | None = None
    name: str = "data"
    _pages: dict[int, Splits] = field(default_factory=dict, repr=False)

    def split(self, name: Split) -> PageSamples:
        if name not in ("train", "valid", "test"):
            raise ValueError(f"split must be 'train', 'valid' or 'test', got {name!r}")
        return getattr(self.splits, name)

    @cached_property
    def popularity(self) -> np.ndarray:
        """Positives per item in the training split (MostPop's score, the long-tail share's reference)."""
        return self.splits.train.item_popularity()

    def training_pages(self, page_size: int | None) -> PageSamples:
        """The training split, with pages of the next ``page_size`` items on sequence data (``None``: as
        loaded)."""
        if page_size is None or self.repage is None:
            return self.splits.train
        if page_size not in self._pages:
            self._pages[page_size] = self.repage(page_size)
        return self._pages[page_size].train

    def require_table(self, who: str) -> SIDTable:
        if self.table is None:
            raise ValueError(f"{who} decodes semantic IDs: the task needs a SID table (genrec sid build, --sids)")
        return self.table


@dataclass
class Recommendations:
    """Top-K lists of a split: ``items`` int64 ``[Q, K]`` dense item indices, best first, -1 = no item (a SID
    that maps to no item, or a dead beam); ``generated`` bool ``[Q, K]`` marks slots that hold a generated
    SID (``None``: every slot is a real recommendation)."""

    items: np.ndarray
    generated: np.ndarray | None = None


@dataclass
class FitReport:
    """What fitting took and chose: seconds, the selected epoch/step and its validation metrics."""

    seconds: float
    selected: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "selected": self.selected}


class Recommender(ABC):
    """A recommender of the harness. Subclasses set ``name`` and implement :meth:`fit`, :meth:`recommend`,
    :meth:`save` and :meth:`load`; generative ones (``generative = True``) also decode unconstrained."""

    name: ClassVar[str]
    generative: ClassVar[bool] = False

    @abstractmethod
    def fit(self, task: Task, *, out_dir: str | Path | None = None, progress: bool = True) -> FitReport:
        """Train on ``task``'s training split, selecting on its validation split."""

    @abstractmethod
    def recommend(self, task: Task, samples: PageSamples, k: int, *, constrained: bool = True,
                  progress: bool = True) -> Recommendations:
        """The top-``k`` items for every sample's history."""

    def prompt_length(self, samples: PageSamples) -> float:
        """Mean number of input positions per query (history items, or tokens for generative models)."""
        return float(np.minimum(samples.history.lengths, samples.max_history or np.inf).mean()) if len(samples) else 0.0

    def config(self) -> dict[str, Any]:
        """The settings that rebuild this recommender (saved beside its weights)."""
        return {}

    def save(self, directory: str | Path) -> Path:
        """Write the fitted recommender to ``directory`` (its config in ``recommender.json``)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / META_FILE).write_text(json.dumps({"name": self.name, "config": self.config()}, indent=2))
        self._save_state(directory)
        return directory

    def _save_state(self, directory: Path) -> None:
        """Weights or statistics beside ``recommender.json``; nothing by default."""

    def _load_state(self, directory: Path, task: Task) -> None:
        """Inverse of :meth:`_save_state`."""


class EpochSelection:
    """Model selection for an epoch loop: after each validated epoch, :meth:`update` keeps a copy of the weights
    when ``metric`` (higher is better) improved and says whether to stop (``patience`` validations without
    improvement; 0 = never); :meth:`finish` puts the best weights back and returns the fit report's fields."""

    def __init__(self, model, metric: str, patience: int) -> None:
        self.model, self.metric, self.patience = model, metric, patience
        self.best, self.best_epoch, self.best_metrics, self.best_state = -math.inf, 0, {}, None
        self.waited, self.epoch, self.history = 0, 0, []

    def update(self, epoch: int, loss: float, metrics: dict[str, float]) -> bool:
        self.epoch = epoch
        self.history.append({"epoch": epoch, "loss": loss, **metrics})
        if metrics[self.metric] > self.best:
            self.best, self.best_epoch, self.best_metrics, self.waited = metrics[self.metric], epoch, metrics, 0
            self.best_state = copy.deepcopy(self.model.state_dict())
            return False
        self.waited += 1
        return bool(self.patience and self.waited >= self.patience)

    def finish(self) -> dict[str, Any]:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        return {"epoch": self.best_epoch, **{f"valid_{k}": v for k, v in self.best_metrics.items()},
                "epochs_run": self.epoch, "history": self.history}


def timed_fit(fit: Callable[[], dict[str, Any]]) -> FitReport:
    start = time.perf_counter()
    selected = fit() or {}
    return FitReport(time.perf_counter() - start, selected)


def evaluate_recommender(recommender: Recommender, task: Task, split: Split = "test", *,
                         ks: Sequence[int] = DEFAULT_KS, unconstrained: bool | None = None,
                         reward=None, progress: bool = True) -> dict[str, float]:
    """HR@K and NDCG@K of ``recommender`` on ``split`` (pages without positives are skipped and counted),
    the long-tail share against training popularity, and for generative recommenders HaR@K from a second,
    unconstrained decoding (``unconstrained=False`` skips it). With ``reward`` (a
    :class:`genrec_ext.reward.HybridReward`) also R@K: the reward model's best ``r_pref`` among the top K (0 for
    a slot without an item). Metrics come from :func:`genrec_ext.eval.evaluate`."""
    samples = task.split(split)
    k = max(ks)
    recs = recommender.recommend(task, samples, k, progress=progress)
    rewards = None
    if reward is not None:
        from ..eval.run import item_rewards  # the decoder-running half of eval: only when rewards are asked for

        rewards = item_rewards(reward, samples, recs.items, max_history=task.max_history)
    out = evaluate(recs.items, samples.positives, ks=ks, item_popularity=task.popularity, generated=recs.generated,
                   rewards=rewards, on_empty="skip")
    if recommender.generative and unconstrained is not False:
        free = recommender.recommend(task, samples, k, constrained=False, progress=progress)
        free_metrics = evaluate(free.items, samples.positives, ks=ks, generated=free.generated, on_empty="skip")
        out.update({key: v for key, v in free_metrics.items() if key.startswith("HaR@")})
    else:
        out = {key: (float("nan") if key.startswith("HaR@") else v) for key, v in out.items()}
    out["prompt_length"] = recommender.prompt_length(samples)
    return out


def load_task(data: str | Path, *, sids: str | Path | None = None, max_history: int = DEFAULT_MAX_HISTORY, name: str | None = None,
              valid_days: int = 1, progress: bool = False) -> Task:
    """A :class:`Task` from a dataset directory (LC-Rec JSON: leave-one-out; page logs: the last day is the test
    split and the ``valid_days`` before it the validation split that selects models) and an optional SID table
    directory."""
    from ..data import load_lcrec, load_splits

    path = Path(data)
    catalog, splits = load_splits(path, max_history=max_history, page_size=1, valid_days=valid_days,
                                  progress=progress)
    repage = None
    if any(path.glob("*.inter.json")):
        def repage(k: int) -> Splits:
            return load_lcrec(path, page_size=k, max_history=max_history)[1]
    table = SIDTable.load(sids) if sids is not None else None
    return Task(catalog, splits, max_history, table=table, repage=repage, name=name or path.name)
