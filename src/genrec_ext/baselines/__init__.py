"""Baselines and the one harness every table row goes through (same splits, metrics and reports).

Typical use::

    from genrec_ext import baselines as B

    task = B.load_task("../shared/data/amazon18-scientific", sids="sids/", max_history=20)
    rec = B.make("sasrec", {"dropout": 0.3})
    print(rec.fit(task).selected)                        # selected on the validation split
    print(B.evaluate_recommender(rec, task, "test"))      # HR@K, NDCG@K, HaR@K (generative), ...
    rec.save("runs/sasrec"); rec = B.load_recommender("runs/sasrec", task)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._io import read_meta
from .base import (
    META_FILE,
    FitReport,
    Recommendations,
    Recommender,
    Task,
    evaluate_recommender,
    load_task,
)
from .generative import GenerativeConfig, GenRec, GenRecNoTM, GenRecNTP, LCRec
from .popularity import MostPop, Oracle
from .sequential import BERT4Rec, SASRec, SequentialConfig
from .tiger import TIGER, TIGERConfig

#: Every recommender of the harness by name (the rows of `genrec experiment table1`).
RECOMMENDERS: dict[str, type[Recommender]] = {cls.name: cls for cls in (
    MostPop, Oracle, SASRec, BERT4Rec, TIGER, GenRec, GenRecNoTM, GenRecNTP, LCRec)}


def make(name: str, settings: dict[str, Any] | None = None) -> Recommender:
    """A recommender by name, with ``settings`` over its defaults (unknown keys are an error naming them)."""
    if name not in RECOMMENDERS:
        raise ValueError(f"unknown recommender {name!r}; known: {', '.join(RECOMMENDERS)}")
    return RECOMMENDERS[name](dict(settings or {}))


def load_recommender(directory: str | Path, task: Task) -> Recommender:
    """A fitted recommender saved with :meth:`Recommender.save`."""
    directory = Path(directory)
    meta = read_meta(directory, META_FILE, "a fitted recommender's directory")
    rec = make(meta["name"], meta.get("config"))
    rec._load_state(directory, task)
    return rec


__all__ = ["BERT4Rec", "FitReport", "GenRec", "GenRecNTP", "GenRecNoTM", "GenerativeConfig", "LCRec", "MostPop",
           "Oracle", "RECOMMENDERS", "Recommendations", "Recommender", "SASRec", "SequentialConfig", "TIGER", "TIGERConfig",
           "Task",
           "evaluate_recommender", "load_recommender", "load_task", "make"]
