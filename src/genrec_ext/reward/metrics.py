"""AUC and group AUC (ties count one half, as the Mann-Whitney statistic), and the popularity-only scorer."""

from __future__ import annotations

import numpy as np

from ..data import PageSamples


def _average_ranks(sorted_values: np.ndarray, group_starts: np.ndarray | None = None) -> np.ndarray:
    """1-based ranks of an already sorted array, ties sharing their average rank; with ``group_starts`` (the
    index where each element's group begins) the ranks restart in every group."""
    n = len(sorted_values)
    new = np.ones(n, dtype=bool)
    new[1:] = sorted_values[1:] != sorted_values[:-1]
    if group_starts is not None:
        new[1:] |= group_starts[1:] != group_starts[:-1]
    run = np.cumsum(new) - 1
    run_start = np.flatnonzero(new)
    run_end = np.r_[run_start[1:], n]  # exclusive
    base = 0 if group_starts is None else group_starts
    # ranks run_start+1 .. run_end, averaged, relative to the group start
    return (run_start[run] + run_end[run] + 1) / 2.0 - base


def auc(scores, labels) -> float:
    """ROC AUC of ``scores`` for binary ``labels`` (NaN when a class is missing)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in size: {s.shape} vs {y.shape}")
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="stable")
    ranks = _average_ranks(s[order])
    return float((ranks[y[order]].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def group_auc(scores, labels, groups) -> float:
    """GAUC: the AUC within each group (a page, a query), averaged with weights = the group's size, over the
    groups that hold both classes (NaN when none does). This is what ranking inside a group needs, e.g. the
    group-relative advantages of GRPO."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    g = np.asarray(groups).ravel()
    if not (s.shape == y.shape == g.shape):
        raise ValueError(f"scores, labels and groups differ in size: {s.shape}, {y.shape}, {g.shape}")
    if len(s) == 0:
        return float("nan")
    _, gid = np.unique(g, return_inverse=True)
    order = np.lexsort((s, gid))
    gs, ss, ys = gid[order], s[order], y[order]
    first = np.flatnonzero(np.r_[True, gs[1:] != gs[:-1]])
    starts = np.repeat(first, np.diff(np.r_[first, len(gs)]))
    ranks = _average_ranks(ss, starts)
    n = np.bincount(gs)
    n_pos = np.bincount(gs, weights=ys.astype(np.float64))
    n_neg = n - n_pos
    rank_sum = np.bincount(gs, weights=np.where(ys, ranks, 0.0))
    ok = (n_pos > 0) & (n_neg > 0)
    if not ok.any():
        return float("nan")
    per = (rank_sum[ok] - n_pos[ok] * (n_pos[ok] + 1) / 2.0) / (n_pos[ok] * n_neg[ok])
    return float(np.average(per, weights=n[ok]))


def popularity_scores(train: PageSamples) -> np.ndarray:
    """The popularity-only scorer: each item's number of positives (clicks/orders) in the training split."""
    return train.item_popularity().astype(np.float64)
