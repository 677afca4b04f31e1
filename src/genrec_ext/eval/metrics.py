"""Top-K metrics of generative retrieval (paper §3.1): HR@K, NDCG@K, HaR@K, R@K and long-tail share.

Inputs:

* ``recommendations``: int ``[Q, K_max]`` (numpy or torch) of dense item indices, best first; ``-1`` is a
  slot without an item (a hallucinated SID that maps to no item, or a padded/dead beam). Ranks are
  positional: a ``-1`` still takes its slot, it is never skipped over.
* ``ground_truth``: the relevant items of each query (D+ of a page, or the held-out item of leave-one-out) in
  any of these forms (duplicates inside a query are ignored, D+ is a set):

  - a list with one array-like (or one int) per query;
  - a ``tuple`` ``(offsets int [Q+1], values)`` in CSR form (a tuple is always read as CSR, pass a list for
    per-query arrays), e.g. from :meth:`genrec_ext.data.Ragged.to_csr`;
  - a :class:`genrec_ext.data.Ragged` (e.g. ``samples.positives``);
  - a 1-D int array ``[Q]`` (one item per query) or a 2-D int array ``[Q, M]`` padded with ``-1``.

Decisions:

* Queries with an empty ground truth make HR/NDCG undefined: by default (``on_empty="raise"``) they are an
  error; ``on_empty="skip"`` drops them from every metric and :func:`evaluate` reports how many.
* Binary relevance; a repeated item in one list is relevant only at its first rank, so NDCG <= 1.
* Averages are over queries (macro). HaR@K is a query's share of invalid slots among its *generated* top-K
  slots; LongTail@K likewise averages over the queries that have something to measure (at least one
  generated slot, valid item respectively); with no such query the value is NaN. R@K averages over every
  query, an invalid slot scoring 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import torch

#: The K values reported by default.
DEFAULT_KS: tuple[int, ...] = (1, 5, 10, 50)

OnEmpty = Literal["raise", "skip"]
GroundTruth = Any  # list of array-likes | (offsets, values) | Ragged | int array [Q] or [Q, M]


class EmptyGroundTruthError(ValueError):
    """A query has no relevant item, so HR/NDCG are undefined for it."""


# ------------------------------------------------------------------------------------------ input checks


def _np(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be array-like, got {type(x).__name__}") from exc


def _as_int(x: Any, name: str) -> np.ndarray:
    a = _np(x, name)
    if a.size == 0 and a.dtype.kind == "f":  # an empty Python list becomes float64
        a = a.astype(np.int64)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def check_recommendations(recommendations: Any) -> np.ndarray:
    """``recommendations`` as int64 ``[Q, K_max]``; raises on other shapes, dtypes or entries below -1."""
    rec = _as_int(recommendations, "recommendations")
    if rec.ndim != 2:
        raise ValueError(f"recommendations must be 2-D [queries, K], got shape {tuple(rec.shape)}")
    if rec.size and rec.min() < -1:
        raise ValueError(f"recommendations must be item indices >= 0 or -1 (no item), found {int(rec.min())}")
    return rec


def check_ks(ks: int | Iterable[int], num_columns: int) -> tuple[int, ...]:
    """``ks`` as a tuple of distinct positive ints (order kept), each at most ``num_columns``."""
    ks = (ks,) if isinstance(ks, (int, np.integer)) else tuple(ks)
    if not ks:
        raise ValueError("ks must name at least one K")
    out: list[int] = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"every K must be a positive int, got {k!r}")
        if k > num_columns:
            raise ValueError(f"K={int(k)} is larger than the {num_columns} recommendation columns")
        if int(k) not in out:
            out.append(int(k))
    return tuple(out)


def ground_truth_csr(ground_truth: GroundTruth, num_queries: int) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets int64 [Q+1], values int64)`` of the ground truth, each query's items unique and sorted."""
    if hasattr(ground_truth, "to_csr") and hasattr(ground_truth, "lengths"):  # data.Ragged, duck-typed
        offsets, values = ground_truth.to_csr()
        offsets, values = _as_int(offsets, "ground_truth offsets"), _as_int(values, "ground_truth values")
    elif isinstance(ground_truth, tuple):
        if len(ground_truth) != 2:
            raise ValueError(f"a tuple ground_truth must be CSR (offsets, values), got {len(ground_truth)} "
                             f"elements (pass a list for per-query arrays)")
        offsets = _as_int(ground_truth[0], "ground_truth offsets")
        values = _as_int(ground_truth[1], "ground_truth values")
        if offsets.ndim != 1 or values.ndim != 1:
            raise ValueError(f"CSR ground_truth needs 1-D offsets and values, got shapes {tuple(offsets.shape)} "
                             f"and {tuple(values.shape)}")
        if len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(values) or np.any(np.diff(offsets) < 0):
            shown = f"{offsets.tolist()[:8]}{'...' if len(offsets) > 8 else ''}"
            raise ValueError(f"CSR ground_truth offsets must start at 0, never decrease and end at "
                             f"len(values)={len(values)}, got {shown}")
    elif isinstance(ground_truth, list):
        rows = [_as_int(g, f"ground_truth[{i}]").reshape(-1) for i, g in enumerate(ground_truth)]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in rows], out=offsets[1:])
        values = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    else:
        arr = _as_int(ground_truth, "ground_truth")
        if arr.ndim == 1:  # leave-one-out: one item per query
            offsets, values = np.arange(len(arr) + 1, dtype=np.int64), arr
        elif arr.ndim == 2:  # padded with -1
            keep = arr >= 0
            offsets = np.zeros(len(arr) + 1, dtype=np.int64)
            np.cumsum(keep.sum(1), out=offsets[1:])
            values = arr[keep]
        else:
            raise ValueError(f"array ground_truth must be 1-D [Q] or 2-D [Q, M], got shape {tuple(arr.shape)}")
    if len(offsets) - 1 != num_queries:
        raise ValueError(f"ground_truth has {len(offsets) - 1} queries but recommendations have {num_queries}")
    if values.size and values.min() < 0:
        raise ValueError(f"ground_truth items must be >= 0, found {int(values.min())}")
    # One sort by (query, item) drops duplicates and orders each row.
    query = np.repeat(np.arange(num_queries, dtype=np.int64), np.diff(offsets))
    order = np.lexsort((values, query))
    q, v = query[order], values[order]
    keep = np.ones(len(v), dtype=bool)
    keep[1:] = (q[1:] != q[:-1]) | (v[1:] != v[:-1])
    out = np.zeros(num_queries + 1, dtype=np.int64)
    np.cumsum(np.bincount(q[keep], minlength=num_queries), out=out[1:])
    return out, v[keep]


def _check_generated(generated: Any, rec: np.ndarray) -> np.ndarray:
    """Bool ``[Q, K_max]`` from a mask or from per-query counts of leading generated slots."""
    if generated is None:
        return np.ones(rec.shape, dtype=bool)
    g = _np(generated, "generated")
    if g.dtype == bool:
        if g.shape != rec.shape:
            raise ValueError(f"generated mask has shape {tuple(g.shape)}, recommendations {tuple(rec.shape)}")
    elif g.dtype.kind in "iu" and g.ndim == 1:
        if len(g) != len(rec):
            raise ValueError(f"generated counts cover {len(g)} queries, recommendations {len(rec)}")
        if g.size and (g.min() < 0 or g.max() > rec.shape[1]):
            raise ValueError(f"generated counts must lie in [0, {rec.shape[1]}], found {int(g.min())}..{int(g.max())}")
        g = np.arange(rec.shape[1]) < g[:, None]
    else:
        raise TypeError(f"generated must be a bool mask [Q, K] or int counts [Q], got dtype {g.dtype} "
                        f"shape {tuple(g.shape)}")
    bad = ~g & (rec >= 0)
    if bad.any():
        q, r = np.argwhere(bad)[0]
        raise ValueError(f"recommendations[{q}, {r}] = {int(rec[q, r])} is an item in a slot marked not generated")
    return g


def _check_rewards(rewards: Any, shape: tuple[int, int] | None = None) -> np.ndarray:
    r = _np(rewards, "rewards")
    if r.dtype.kind not in "fiu":
        raise TypeError(f"rewards must be numeric, got dtype {r.dtype}")
    r = r.astype(np.float64)
    if r.ndim != 2:
        raise ValueError(f"rewards must be 2-D [queries, K], got shape {tuple(r.shape)}")
    if shape is not None and r.shape != shape:
        raise ValueError(f"rewards have shape {tuple(r.shape)}, recommendations {shape}")
    if np.isposinf(r).any():
        raise ValueError("rewards contain +inf (mark invalid slots with NaN or -inf)")
    return r


def _check_popularity(item_popularity: Any, rec: np.ndarray | None = None) -> np.ndarray:
    pop = _np(item_popularity, "item_popularity")
    if pop.ndim != 1 or pop.size == 0 or pop.dtype.kind not in "fiu":
        raise ValueError(f"item_popularity must be a non-empty 1-D numeric array [I], got dtype {pop.dtype} "
                         f"shape {tuple(pop.shape)}")
    pop = pop.astype(np.float64)
    if not np.isfinite(pop).all() or pop.min() < 0:
        raise ValueError("item_popularity must be finite and >= 0")
    if rec is not None and rec.size and rec.max() >= len(pop):
        raise ValueError(f"recommendations hold item {int(rec.max())} but item_popularity covers {len(pop)} items")
    return pop


def _mean(values: np.ndarray) -> float:
    return float(values.sum() / len(values)) if len(values) else float("nan")


# --------------------------------------------------------------------------------------------- metrics


def relevance(recommendations: Any, ground_truth: GroundTruth) -> np.ndarray:
    """Bool ``[Q, K_max]``: slot holds a relevant item at its first rank in the list (``-1`` never does)."""
    rec = check_recommendations(recommendations)
    return _relevance(rec, *ground_truth_csr(ground_truth, len(rec)))


def _relevance(rec: np.ndarray, offsets: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``offsets``/``values`` as from :func:`ground_truth_csr` (rows unique and sorted)."""
    q_n = len(rec)
    if rec.size == 0 or values.size == 0:
        return np.zeros(rec.shape, dtype=bool)
    # One int64 key per (query, item): the ground-truth keys come out sorted, so a binary search per slot
    # finds the hits with no per-query Python and no sort of the recommendations.
    n = int(max(rec.max(), values.max())) + 1
    if q_n * n >= 2**62:
        raise ValueError(f"{q_n} queries x {n} items overflow the int64 (query, item) key")
    gt_keys = np.repeat(np.arange(q_n, dtype=np.int64), np.diff(offsets)) * n + values
    keys = np.arange(q_n, dtype=np.int64)[:, None] * n + rec
    at = np.minimum(np.searchsorted(gt_keys, keys), len(gt_keys) - 1)
    hit = (rec >= 0) & (gt_keys[at] == keys)
    # A repeated item is relevant at its first rank only: row-major order is (query, rank), and np.unique's
    # return_index gives first occurrences.
    pos = np.flatnonzero(hit)
    first = np.unique(keys.reshape(-1)[pos], return_index=True)[1]
    out = np.zeros(rec.size, dtype=bool)
    out[pos[first]] = True
    return out.reshape(rec.shape)


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def _hr_ndcg_per_query(rel: np.ndarray, num_relevant: np.ndarray,
                       ks: tuple[int, ...]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per-query HR@k and NDCG@k for every k, from one cumulative sum over the ranks."""
    k_max = max(ks)
    disc = _discounts(k_max)
    cum_hits = np.cumsum(rel[:, :k_max], axis=1)
    cum_dcg = np.cumsum(rel[:, :k_max] * disc, axis=1)
    cum_ideal = np.cumsum(disc)
    out = {}
    for k in ks:
        ideal = cum_ideal[np.minimum(num_relevant, k) - 1]  # min(|D+|, K) hits at the top
        out[k] = (cum_hits[:, k - 1] > 0).astype(np.float64), cum_dcg[:, k - 1] / ideal
    return out


def _keep_nonempty(num_relevant: np.ndarray, on_empty: OnEmpty) -> np.ndarray:
    if on_empty not in ("raise", "skip"):
        raise ValueError(f"on_empty must be 'raise' or 'skip', got {on_empty!r}")
    empty = num_relevant == 0
    if on_empty == "raise" and empty.any():
        raise EmptyGroundTruthError(
            f"{int(empty.sum())} of {len(empty)} queries have an empty ground truth (first: query "
            f"{int(np.argmax(empty))}); HR/NDCG are undefined for them. Drop them or pass on_empty='skip'")
    return ~empty


def hit_rate(recommendations: Any, ground_truth: GroundTruth, k: int, *, on_empty: OnEmpty = "raise") -> float:
    """HR@K: share of queries with at least one relevant item in the top ``k``."""
    return _hr_ndcg(recommendations, ground_truth, k, on_empty)[0]


def ndcg(recommendations: Any, ground_truth: GroundTruth, k: int, *, on_empty: OnEmpty = "raise") -> float:
    """NDCG@K, binary relevance: ``sum_r rel_r / log2(r + 1)`` over ranks ``r <= k`` (1-based), divided by
    the DCG of ``min(|D+|, k)`` hits at the top; mean over queries."""
    return _hr_ndcg(recommendations, ground_truth, k, on_empty)[1]


def _hr_ndcg(recommendations: Any, ground_truth: GroundTruth, k: int, on_empty: OnEmpty) -> tuple[float, float]:
    rec = check_recommendations(recommendations)
    (k,) = check_ks(k, rec.shape[1])
    offsets, values = ground_truth_csr(ground_truth, len(rec))
    num_rel = np.diff(offsets)
    keep = _keep_nonempty(num_rel, on_empty)
    if not keep.all():
        rec, num_rel = rec[keep], num_rel[keep]
        offsets, values = _take_csr(offsets, values, keep)
    hr, nd = _hr_ndcg_per_query(_relevance(rec[:, :k], offsets, values), num_rel, (k,))[k]
    return _mean(hr), _mean(nd)


def _take_csr(offsets: np.ndarray, values: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.diff(offsets)
    out = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
    np.cumsum(lengths[keep], out=out[1:])
    return out, values[np.repeat(keep, lengths)]


def hallucination_rate(recommendations: Any, k: int, *, generated: Any = None) -> float:
    """HaR@K: per query, the share of its generated top-``k`` slots that hold no item (``-1``); mean over
    queries with at least one generated slot.

    ``generated``: bool ``[Q, K_max]`` (``False`` = a beam that died, not counted) or int ``[Q]`` counts of
    leading generated slots; default all generated. A slot marked not generated must hold ``-1``.
    """
    rec = check_recommendations(recommendations)
    (k,) = check_ks(k, rec.shape[1])
    return _mean(_har_per_query(rec, _check_generated(generated, rec), k))


def _har_per_query(rec: np.ndarray, gen: np.ndarray, k: int) -> np.ndarray:
    n_gen = gen[:, :k].sum(1)
    n_bad = (gen[:, :k] & (rec[:, :k] < 0)).sum(1)
    has = n_gen > 0
    return n_bad[has] / n_gen[has]


def reward_at_k(rewards: Any, k: int) -> float:
    """R@K (paper §3.1): mean over queries of the best reward (``r_pref`` in [0, 1]) among the top ``k`` slots
    of ``rewards`` ``[Q, K]``. NaN and -inf mark invalid slots (a SID that is no item, an empty slot): they
    score 0, what recommending nothing earns, so a model is not rewarded for hallucinating."""
    r = _check_rewards(rewards)
    (k,) = check_ks(k, r.shape[1])
    return _mean(_best_reward(r, k))


def _best_reward(r: np.ndarray, k: int) -> np.ndarray:
    return np.where(np.isfinite(r[:, :k]), r[:, :k], 0.0).max(axis=1, initial=0.0)


def long_tail_items(item_popularity: Any) -> np.ndarray:
    """Bool ``[I]``: popularity strictly below the catalogue median (``np.median`` over all ``I`` items, so
    zero-count items count). Items tied with the median are head; if more than half the catalogue shares the
    lowest popularity (e.g. many never-seen items), the median equals it and no item is long tail."""
    pop = _check_popularity(item_popularity)
    return pop < np.median(pop)


def long_tail_share(recommendations: Any, item_popularity: Any, k: int) -> float:
    """LongTail@K: per query, the share of its valid top-``k`` items that are long tail
    (:func:`long_tail_items`); mean over queries with at least one valid item (the APLT of Abdollahpouri
    et al.)."""
    rec = check_recommendations(recommendations)
    (k,) = check_ks(k, rec.shape[1])
    tail = long_tail_items(_check_popularity(item_popularity, rec))
    return _mean(_long_tail_per_query(rec, tail, k))


def _long_tail_per_query(rec: np.ndarray, tail: np.ndarray, k: int) -> np.ndarray:
    top = rec[:, :k]
    valid = top >= 0
    n_valid = valid.sum(1)
    n_tail = (valid & tail[np.where(valid, top, 0)]).sum(1)
    has = n_valid > 0
    return n_tail[has] / n_valid[has]


def evaluate(
    recommendations: Any,
    ground_truth: GroundTruth,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    item_popularity: Any = None,
    generated: Any = None,
    rewards: Any = None,
    on_empty: OnEmpty = "raise",
) -> dict[str, float]:
    """All metrics for every K in ``ks``: ``HR@K``, ``NDCG@K``, ``HaR@K``, then ``R@K`` (with ``rewards``
    ``[Q, K_max]`` aligned with the recommendations) and ``LongTail@K`` (with ``item_popularity`` ``[I]``),
    then ``queries`` (int: queries measured) and, with ``on_empty="skip"``, ``skipped_empty`` (int: queries
    dropped for an empty ground truth).

    Every metric is computed over the same queries: with ``on_empty="skip"`` the empty ones are dropped
    from all of them. See the module docstring for inputs and definitions.
    """
    rec = check_recommendations(recommendations)
    ks = check_ks(ks, rec.shape[1])
    gen = _check_generated(generated, rec)
    offsets, values = ground_truth_csr(ground_truth, len(rec))
    num_rel = np.diff(offsets)
    keep = _keep_nonempty(num_rel, on_empty)
    r = None
    if rewards is not None:
        r = _check_rewards(rewards, rec.shape)
    tail = None if item_popularity is None else long_tail_items(_check_popularity(item_popularity, rec))
    if not keep.all():
        rec, gen, num_rel = rec[keep], gen[keep], num_rel[keep]
        offsets, values = _take_csr(offsets, values, keep)
        r = None if r is None else r[keep]

    k_max = max(ks)
    per_k = _hr_ndcg_per_query(_relevance(rec[:, :k_max], offsets, values), num_rel, ks)
    out: dict[str, float] = {}
    out.update({f"HR@{k}": _mean(per_k[k][0]) for k in ks})
    out.update({f"NDCG@{k}": _mean(per_k[k][1]) for k in ks})
    out.update({f"HaR@{k}": _mean(_har_per_query(rec, gen, k)) for k in ks})
    if r is not None:
        out.update({f"R@{k}": _mean(_best_reward(r, k)) for k in ks})
    if tail is not None:
        out.update({f"LongTail@{k}": _mean(_long_tail_per_query(rec, tail, k)) for k in ks})
    out["queries"] = len(rec)
    if on_empty == "skip":
        out["skipped_empty"] = int((~keep).sum())
    return out
