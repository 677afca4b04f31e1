"""Evaluation metrics (HR, NDCG, HaR, R, long tail) on hand-computed cases, a per-query loop, and reports."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from genrec_ext.data import Ragged
from genrec_ext.eval import (
    DEFAULT_KS,
    EmptyGroundTruthError,
    evaluate,
    format_table,
    ground_truth_csr,
    hallucination_rate,
    hit_rate,
    long_tail_items,
    long_tail_share,
    ndcg,
    relevance,
    reward_at_k,
    write_report,
)

L2, L3, L4, L5 = (1 / math.log2(r + 1) for r in (2, 3, 4, 5))  # discounts of ranks 2..5; rank 1 is 1


# ----------------------------------------------------------------------------------------- HR / NDCG


def test_single_positive_hand_computed():
    recs = np.array([[5, 3, 7], [1, 2, 4], [9, 8, 4]])
    gt = [3, 9, 9]  # hit at rank 2, miss, hit at rank 1
    assert hit_rate(recs, gt, 1) == pytest.approx(1 / 3)
    assert hit_rate(recs, gt, 3) == pytest.approx(2 / 3)
    assert ndcg(recs, gt, 1) == pytest.approx(1 / 3)
    assert ndcg(recs, gt, 3) == pytest.approx((L2 + 1) / 3)


def test_multiple_positives_ideal_uses_min_of_positives_and_k():
    recs = np.array([[1, 9, 2, 8, 3]])
    gt = [[1, 2, 3]]
    # K=2: one hit at rank 1; ideal = 2 hits (min(3, 2)).
    assert ndcg(recs, gt, 2) == pytest.approx(1 / (1 + L2))
    # K=4: hits at ranks 1, 3; ideal = 3 hits (min(3, 4)).
    assert ndcg(recs, gt, 4) == pytest.approx((1 + L3) / (1 + L2 + L3))
    # K=5: all three found, at ranks 1, 3, 5.
    assert ndcg(recs, gt, 5) == pytest.approx((1 + L3 + L5) / (1 + L2 + L3))
    # One positive, K=5: ideal is a single hit at rank 1.
    assert ndcg(recs, [[2]], 5) == pytest.approx(L3)


def test_ranks_beyond_k_ignored_and_invalid_slots_take_ranks():
    recs = np.array([[4, 5, 3], [-1, 3, -1]])
    gt = [[3], [3]]
    assert hit_rate(recs, gt, 2) == pytest.approx(0.5)  # query 0's hit is at rank 3
    assert ndcg(recs, gt, 2) == pytest.approx(L2 / 2)  # -1 is a miss at rank 1, not skipped
    assert hit_rate(recs, gt, 1) == 0.0
    assert ndcg(recs, gt, 3) == pytest.approx((L3 + L2) / 2)


def test_repeated_items_count_once():
    recs = np.array([[3, 3, 4]])
    assert ndcg(recs, [[3]], 3) == pytest.approx(1.0)  # not 1 + 1/log2(3)
    assert ndcg(recs, [[3, 4]], 3) == pytest.approx((1 + L3) / (1 + L2))
    assert ndcg(recs, [[3, 3]], 3) == pytest.approx(1.0)  # repeated ground truth = the set {3}
    assert relevance(recs, [[3, 4]]).tolist() == [[True, False, True]]


def test_ground_truth_forms_agree():
    recs = np.array([[1, 2, 3], [4, 5, 6], [7, 1, -1]])
    lists = [[2, 9], [6], [1, 1]]
    off, val = np.array([0, 2, 3, 5]), np.array([2, 9, 6, 1, 1])
    forms = [
        lists,
        [np.array(g) for g in lists],
        [torch.tensor(g) for g in lists],
        (off, val),
        (torch.from_numpy(off), torch.from_numpy(val)),
        Ragged(val, off[:-1], off[1:]),
        np.array([[2, 9], [6, -1], [1, -1]]),  # padded with -1
    ]
    want = evaluate(recs, lists, ks=(1, 3))
    assert want["NDCG@3"] == pytest.approx((L2 / (1 + L2) + L3 + L2) / 3)
    for gt in forms:
        assert evaluate(recs, gt, ks=(1, 3)) == want
    assert evaluate(torch.from_numpy(recs), lists, ks=(1, 3)) == want
    # Leave-one-out: one item per query as a 1-D array.
    assert evaluate(recs, np.array([2, 6, 1]), ks=(3,)) == evaluate(recs, [[2], [6], [1]], ks=(3,))
    o, v = ground_truth_csr(lists, 3)
    assert o.tolist() == [0, 2, 3, 4] and v.tolist() == [2, 9, 6, 1]


# --------------------------------------------------------------------------------------------- HaR


def test_hallucination_rate_with_generated_mask():
    recs = np.array([[1, -1, -1, 2], [-1, 7, -1, -1], [-1, -1, -1, -1]])
    gen = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=bool)
    # q0: 2 of 4 invalid; q1: 1 of 2 generated; q2: nothing generated -> left out.
    assert hallucination_rate(recs, 4, generated=gen) == pytest.approx((0.5 + 0.5) / 2)
    assert hallucination_rate(recs, 1, generated=gen) == pytest.approx((0 + 1) / 2)
    assert hallucination_rate(recs, 2, generated=gen) == pytest.approx((0.5 + 0.5) / 2)
    # Counts of leading generated slots are the same mask.
    assert hallucination_rate(recs, 4, generated=np.array([4, 2, 0])) == hallucination_rate(recs, 4, generated=gen)
    assert hallucination_rate(recs, 4, generated=torch.from_numpy(gen)) == hallucination_rate(recs, 4, generated=gen)
    # Default: every slot generated.
    assert hallucination_rate(recs, 4) == pytest.approx((0.5 + 0.75 + 1.0) / 3)
    assert math.isnan(hallucination_rate(recs[2:], 4, generated=gen[2:]))
    with pytest.raises(ValueError, match=r"recommendations\[0, 3\] = 2 .* not generated"):
        hallucination_rate(recs, 4, generated=np.array([3, 2, 0]))
    with pytest.raises(ValueError, match="generated mask has shape"):
        hallucination_rate(recs, 4, generated=gen[:, :2])


# ----------------------------------------------------------------------------------------------- R@K


def test_reward_at_k_scores_invalid_slots_zero():
    r = np.array([[np.nan, 0.2, 0.9], [-np.inf, np.nan, np.nan], [0.5, 0.1, 0.3], [0.4, 0.6, np.nan]])
    assert reward_at_k(r, 1) == pytest.approx((0 + 0 + 0.5 + 0.4) / 4)  # invalid first slots score 0
    assert reward_at_k(r, 2) == pytest.approx((0.2 + 0 + 0.5 + 0.6) / 4)
    assert reward_at_k(r, 3) == pytest.approx((0.9 + 0 + 0.5 + 0.6) / 4)
    assert reward_at_k(torch.tensor(r, dtype=torch.float32), 3) == pytest.approx((0.9 + 0 + 0.5 + 0.6) / 4)
    assert reward_at_k(r[1:2], 3) == 0.0  # only hallucinations: nothing earned
    with pytest.raises(ValueError, match=r"\+inf"):
        reward_at_k(np.array([[np.inf]]), 1)


# ------------------------------------------------------------------------------------------ long tail


def test_long_tail_share_with_median_ties():
    pop = np.array([10, 0, 3, 3, 7, 1])  # median 3: items 2, 3 tie with it and are head; tail = {1, 5}
    assert long_tail_items(pop).tolist() == [False, True, False, False, False, True]
    recs = np.array([[1, 2, -1], [5, 1, 0], [-1, -1, -1]])
    assert long_tail_share(recs, pop, 1) == pytest.approx(1.0)  # q2 has no valid item -> left out
    assert long_tail_share(recs, pop, 3) == pytest.approx((1 / 2 + 2 / 3) / 2)
    # More than half the catalogue at the minimum: the median is that minimum, so nothing is long tail.
    assert not long_tail_items(np.array([0, 0, 0, 5])).any()
    with pytest.raises(ValueError, match="item 6 but item_popularity covers 6 items"):
        long_tail_share(np.array([[6]]), pop, 1)
    with pytest.raises(ValueError, match="item_popularity"):
        long_tail_items(np.array([1, -1]))


# ------------------------------------------------------------------------------------------ evaluate


def test_evaluate_keys_and_values():
    recs = np.array([[3, 1, -1, 2], [0, 5, 5, -1]])
    gen = np.array([4, 3])
    rewards = np.array([[1.0, np.nan, -np.inf, 0.5], [0.3, 0.7, np.nan, np.nan]])
    out = evaluate(recs, [[1, 2], [5]], ks=(1, 4), item_popularity=np.arange(6), generated=gen, rewards=rewards)
    assert list(out) == ["HR@1", "HR@4", "NDCG@1", "NDCG@4", "HaR@1", "HaR@4", "R@1", "R@4",
                         "LongTail@1", "LongTail@4", "queries"]
    assert out["HR@1"] == 0.0 and out["HR@4"] == 1.0
    assert out["NDCG@4"] == pytest.approx(((L2 + L4) / (1 + L2) + L2) / 2)
    assert out["HaR@4"] == pytest.approx((1 / 4 + 0 / 3) / 2)  # q1's 4th slot was never generated
    assert out["R@1"] == pytest.approx((1.0 + 0.3) / 2) and out["R@4"] == pytest.approx((1.0 + 0.7) / 2)
    assert out["LongTail@4"] == pytest.approx((2 / 3 + 1 / 3) / 2)  # tail = items 0, 1, 2 (median 2.5)
    assert out["queries"] == 2 and isinstance(out["queries"], int)
    assert all(isinstance(v, float) for k, v in out.items() if k != "queries")


def test_default_ks_and_k_too_large():
    assert DEFAULT_KS == (1, 5, 10, 50)
    recs = np.zeros((2, 50), dtype=np.int64)
    assert [k for k in evaluate(recs, [[0], [1]]) if k.startswith("HR@")] == ["HR@1", "HR@5", "HR@10", "HR@50"]
    with pytest.raises(ValueError, match=r"K=50 is larger than the 10 recommendation columns"):
        evaluate(recs[:, :10], [[0], [1]])
    with pytest.raises(ValueError, match=r"K=11 is larger than the 10"):
        ndcg(recs[:, :10], [[0], [1]], 11)
    with pytest.raises(ValueError, match="positive int, got 0"):
        evaluate(recs, [[0], [1]], ks=(0, 5))


def test_empty_ground_truth_raises_or_is_skipped():
    recs = np.array([[1, 2], [3, 4], [-1, 5]])
    gt = [[2], [], [5]]
    with pytest.raises(EmptyGroundTruthError, match=r"1 of 3 queries .* \(first: query 1\)"):
        evaluate(recs, gt, ks=(2,))
    with pytest.raises(EmptyGroundTruthError):
        hit_rate(recs, gt, 2)
    out = evaluate(recs, gt, ks=(2,), on_empty="skip")
    # Query 1 is dropped from every metric, HaR included.
    assert out == {"HR@2": 1.0, "NDCG@2": pytest.approx(L2), "HaR@2": pytest.approx(0.25),
                   "queries": 2, "skipped_empty": 1}
    assert hit_rate(recs, gt, 2, on_empty="skip") == 1.0
    assert math.isnan(evaluate(recs[:0], [], ks=(2,))["HR@2"])
    none_left = evaluate(recs[1:2], [[]], ks=(2,), on_empty="skip")
    assert math.isnan(none_left["NDCG@2"]) and none_left["queries"] == 0 and none_left["skipped_empty"] == 1
    with pytest.raises(ValueError, match="on_empty must be"):
        evaluate(recs, gt, ks=(2,), on_empty="ignore")


def test_bad_inputs_name_the_problem():
    recs = np.array([[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="found -2"):
        evaluate(np.array([[1, -2]]), [[1]], ks=(1,))
    with pytest.raises(TypeError, match="integers, got dtype float"):
        evaluate(recs.astype(float), [[1], [2]], ks=(1,))
    with pytest.raises(ValueError, match=r"2-D \[queries, K\], got shape \(2,\)"):
        evaluate(np.array([1, 2]), [[1], [2]], ks=(1,))
    with pytest.raises(ValueError, match="ground_truth has 1 queries but recommendations have 2"):
        evaluate(recs, [[1]], ks=(1,))
    with pytest.raises(ValueError, match="offsets must start at 0"):
        evaluate(recs, (np.array([0, 1, 3]), np.array([1, 2])), ks=(1,))
    with pytest.raises(ValueError, match="ground_truth items must be >= 0, found -3"):
        evaluate(recs, [[1], [-3]], ks=(1,))
    with pytest.raises(ValueError, match=r"rewards have shape \(2, 1\)"):
        evaluate(recs, [[1], [2]], ks=(1,), rewards=np.zeros((2, 1)))


# ------------------------------------------------------------------------- vectorised vs per-query loop


def _loop_metrics(recs: list[list[int]], gt: list[list[int]], k: int, gen: list[list[bool]]):
    hr, nd, har = [], [], []
    for row, pos, g in zip(recs, gt, gen):
        pos, seen, dcg = set(pos), set(), 0.0
        for r, item in enumerate(row[:k], start=1):
            if item >= 0 and item in pos and item not in seen:
                dcg += 1 / math.log2(r + 1)
            seen.add(item)
        ideal = sum(1 / math.log2(r + 1) for r in range(1, min(len(pos), k) + 1))
        hr.append(float(any(i in pos for i in row[:k])))
        nd.append(dcg / ideal)
        n_gen = sum(g[:k])
        if n_gen:
            har.append(sum(1 for i, gi in zip(row[:k], g[:k]) if gi and i < 0) / n_gen)
    mean = lambda xs: sum(xs) / len(xs) if xs else math.nan  # noqa: E731
    return mean(hr), mean(nd), mean(har)


@st.composite
def cases(draw):
    q = draw(st.integers(1, 8))
    k_max = draw(st.integers(1, 7))
    n_items = draw(st.integers(1, 12))
    item = st.integers(-1, n_items - 1)
    recs = draw(st.lists(st.lists(item, min_size=k_max, max_size=k_max), min_size=q, max_size=q))
    gt = draw(st.lists(st.lists(st.integers(0, n_items - 1), min_size=1, max_size=5), min_size=q, max_size=q))
    # Dead beams: a slot that holds -1 may be marked not generated.
    gen = [[i >= 0 or draw(st.booleans()) for i in row] for row in recs]
    ks = draw(st.lists(st.integers(1, k_max), min_size=1, max_size=3, unique=True))
    return recs, gt, gen, ks


@given(cases())
def test_vectorised_matches_per_query_loop(case):
    recs, gt, gen, ks = case
    out = evaluate(np.array(recs), gt, ks=ks, generated=np.array(gen))
    for k in ks:
        hr, nd, har = _loop_metrics(recs, gt, k, gen)
        assert out[f"HR@{k}"] == pytest.approx(hr, abs=1e-12)
        assert out[f"NDCG@{k}"] == pytest.approx(nd, abs=1e-12)
        assert out[f"HaR@{k}"] == pytest.approx(har, abs=1e-12, nan_ok=True)
        assert 0.0 <= out[f"NDCG@{k}"] <= 1.0 + 1e-12


# ------------------------------------------------------------------------------------------- reports


RESULTS = {
    "constrained": {"HR@10": 0.25, "NDCG@10": 0.123456, "HaR@10": 0.0, "queries": 100},
    "unconstrained": {"HR@10": 0.2, "NDCG@10": 0.1, "HaR@10": float("nan"), "queries": 100},
    "PW-NTP": {"HR@10": 0.3},
}


def test_format_table_markdown():
    assert format_table(RESULTS, digits=3) == (
        "| run           | HR@10 | NDCG@10 | HaR@10 | queries |\n"
        "| ------------- | ----: | ------: | -----: | ------: |\n"
        "| constrained   | 0.250 |   0.123 |  0.000 |     100 |\n"
        "| unconstrained | 0.200 |   0.100 |    nan |     100 |\n"
        "| PW-NTP        | 0.300 |       - |      - |       - |"
    )
    flat = format_table({"HR@1": np.float64(0.5), "NDCG@1": 0.5}, label="NTP", index_name="mode")
    assert flat.splitlines()[0] == "| mode | HR@1   | NDCG@1 |"
    assert flat.splitlines()[2] == "| NTP  | 0.5000 | 0.5000 |"
    picked = format_table(RESULTS, columns=["HaR@10", "HR@10"])
    assert picked.splitlines()[0] == "| run           | HaR@10 | HR@10  |"
    assert format_table({"a|b": {"x": 1.0}}).splitlines()[2].startswith(r"| a\|b")
    with pytest.raises(ValueError, match=r"columns \['R@10'\] are in no run"):
        format_table(RESULTS, columns=["R@10"])
    with pytest.raises(TypeError, match="not a mix"):
        format_table({"a": {"x": 1.0}, "y": 2.0})
    with pytest.raises(TypeError, match=r"results\['a'\]\['x'\] must be a number"):
        format_table({"a": {"x": "high"}})


def test_write_report_markdown_and_json(tmp_path):
    md, js = write_report(RESULTS, tmp_path / "reports", "decoding", digits=3)
    assert (md, js) == (tmp_path / "reports" / "decoding.md", tmp_path / "reports" / "decoding.json")
    assert md.read_text() == format_table(RESULTS, digits=3) + "\n"
    raw = json.loads(js.read_text())
    assert raw["constrained"] == RESULTS["constrained"]  # full precision, not the table's 3 decimals
    assert raw["unconstrained"]["HaR@10"] is None  # NaN -> null
    assert list(raw) == list(RESULTS)
    md, js = write_report({"HR@1": 0.5}, tmp_path, "single")
    assert "| single | 0.5000 |" in md.read_text() and json.loads(js.read_text()) == {"HR@1": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports", "single.json", "single.md"]
    with pytest.raises(ValueError, match="plain file stem"):
        write_report(RESULTS, tmp_path, "a/b")
