"""Evaluation: HR@K, NDCG@K, HaR@K, R@K, long-tail share, and Markdown/JSON reports.

Typical use::

    from genrec_ext import eval as ev

    results = {mode: ev.evaluate(recs[mode], test.positives, ks=(1, 5, 10), item_popularity=pop)
               for mode in ("constrained", "unconstrained")}          # recs: int [Q, K], -1 = no item
    print(ev.format_table(results, columns=["HR@10", "NDCG@10", "HaR@10"]))
    ev.write_report(results, "runs/eval", "decoding")                  # decoding.md + decoding.json
"""

from __future__ import annotations

from .metrics import (
    DEFAULT_KS,
    EmptyGroundTruthError,
    evaluate,
    ground_truth_csr,
    hallucination_rate,
    hit_rate,
    long_tail_items,
    long_tail_share,
    ndcg,
    relevance,
    reward_at_k,
)
from .report import format_table, write_report

_RUN = ("evaluate_model", "item_popularity", "item_rewards", "make_rl_validator", "make_validator", "recommend",
        "sample_queries")


def __getattr__(name: str):
    # The model-running half imports the decoder and transformers (seconds); the metrics need only numpy.
    if name in _RUN:
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "evaluate_model", "item_popularity", "item_rewards", "make_rl_validator", "make_validator", "recommend",
    "sample_queries",
    "DEFAULT_KS", "EmptyGroundTruthError", "evaluate", "format_table", "ground_truth_csr", "hallucination_rate",
    "hit_rate", "long_tail_items", "long_tail_share", "ndcg", "relevance", "reward_at_k", "write_report",
]
