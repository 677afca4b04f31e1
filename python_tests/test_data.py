"""Data layer: page logs -> samples, time split, bad input, Parquet/CSV, LC-Rec JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from genrec_ext.data import (
    InteractionLog,
    ItemCatalog,
    PageSamples,
    Ragged,
    UnknownItemError,
    build_page_samples,
    load_lcrec,
    read_logs,
    time_split,
)

REAL_LCREC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "amazon18-scientific"
CATALOG = ItemCatalog(np.array(list("abcdefghij")))
A, B, C, D, E, F, G, H, I, J = range(10)  # dense indices of items "a".."j"

COLUMNS = ("user_id", "request_id", "item_id", "action", "ts", "position")
# One table exercising every rule (see the comments per request).
ROWS = [
    # u1/r1 @100: d ordered (3 rows fold into one), b clicked; no earlier request -> skipped (no history).
    ("u1", "r1", "a", "expose", 100, 0), ("u1", "r1", "b", "expose", 100, 1), ("u1", "r1", "c", "expose", 100, 2),
    ("u1", "r1", "d", "expose", 100, 3), ("u1", "r1", "b", "click", 105, 1), ("u1", "r1", "d", "click", 110, 3),
    ("u1", "r1", "d", "order", 150, 3),
    # u1/r2 @200: f and g clicked at the same position -> tie broken by row order (f first); g clicked first.
    ("u1", "r2", "e", "expose", 200, 0), ("u1", "r2", "f", "expose", 200, 1), ("u1", "r2", "g", "expose", 200, 1),
    ("u1", "r2", "g", "click", 205, 1), ("u1", "r2", "f", "click", 210, 1),
    # u1/r3 @200: same time as r2, so neither is in the other's history.
    ("u1", "r3", "h", "expose", 200, 0), ("u1", "r3", "h", "click", 201, 0),
    # u1/r4 @300: history = b, d (r1), g, f (r2), h (r3).
    ("u1", "r4", "i", "expose", 300, 0), ("u1", "r4", "a", "expose", 300, 1), ("u1", "r4", "a", "click", 305, 1),
    # u2/r5 @150: no clicks, no history; u2/r6 @400: a clicked, still no history; u2/r7 @500: no positives.
    ("u2", "r5", "j", "expose", 150, 0), ("u2", "r5", "c", "expose", 150, 1),
    ("u2", "r6", "a", "expose", 400, 0), ("u2", "r6", "a", "click", 402, 0),
    ("u2", "r7", "b", "expose", 500, 0),
]


def table(rows=ROWS, columns=COLUMNS) -> pa.Table:
    return pa.table({c: [r[k] for r in rows] for k, c in enumerate(columns)})


def build(rows=ROWS, **kw) -> PageSamples:
    return build_page_samples(InteractionLog.from_table(table(rows)), CATALOG, **kw)


def by_request(samples: PageSamples) -> dict:
    return {s.request: s for s in samples}


def lists(s) -> tuple:
    return (s.history.tolist(), s.target.tolist(), s.target_actions.tolist(), s.positives.tolist())


# ---------------------------------------------------------------- pages and samples


def test_pages_targets_positives_and_histories():
    got = by_request(build())
    assert sorted(got) == ["r2", "r3", "r4", "r7"]
    assert lists(got["r2"]) == ([B, D], [F, G, E], [1, 1, 0], [F, G])  # position tie: row order
    assert lists(got["r3"]) == ([B, D], [H], [1], [H])  # r2 (same ts) is not history
    assert lists(got["r4"]) == ([B, D, G, F, H], [A, I], [1, 0], [A])  # oldest first; g clicked before f
    assert lists(got["r7"]) == ([A], [B], [0], [])  # no positives: kept by default
    assert got["r4"].user == "u1" and got["r4"].ts == 300.0
    assert got["r2"].target_actions.dtype == np.int8 and got["r2"].history.dtype == np.int64


def test_strongest_action_wins_and_order_before_click():
    page = ROWS[:7]  # u1/r1 alone, preceded by a request that gives it a history
    rows = [("u1", "r0", "j", "expose", 10, 0), ("u1", "r0", "j", "click", 11, 0)] + page
    s = by_request(build(rows))["r1"]
    assert lists(s) == ([J], [D, B, A, C], [2, 1, 0, 0], [D, B])
    assert build(rows).stats.build.duplicate_rows_merged == 1 + 3  # j: 2 -> 1 row; b: 2 -> 1, d: 3 -> 1


def test_stats_count_skipped_pages():
    st = build().stats
    assert (st.pages, st.samples, st.users) == (7, 4, 2)
    assert (st.skipped_no_history, st.skipped_empty_target, st.skipped_no_positive) == (3, 0, 0)
    assert st.build.rows == len(ROWS) and st.build.duplicate_rows_merged == 8
    st = build(drop_no_positive=True).stats
    assert (st.samples, st.skipped_no_history, st.skipped_no_positive) == (3, 3, 1)
    assert "3 with no history yet" in st.summary() and "1 with no positives" in st.summary()


def test_history_cap_keeps_most_recent_oldest_first():
    got = by_request(build(max_history=3))
    assert got["r4"].history.tolist() == [G, F, H]
    assert got["r2"].history.tolist() == [B, D]
    assert by_request(build(max_history=None))["r4"].history.tolist() == [B, D, G, F, H]
    with pytest.raises(ValueError, match="max_history must be >= 1.*got 0"):
        build(max_history=0)


def test_history_matches_brute_force_earlier_clicks():
    page_ts: dict = {}
    for _, q, _, _, t, _ in ROWS:
        page_ts[q] = min(page_ts.get(q, t), t)  # a page is shown at its first row
    for smp in build(max_history=None):
        clicked = {(q, it) for u, q, it, a, _, _ in ROWS if u == smp.user and a != "expose" and page_ts[q] < smp.ts}
        assert sorted(smp.history.tolist()) == sorted(ord(it) - ord("a") for _, it in clicked)
    hist = {smp.request: smp.history.tolist() for smp in build()}
    assert H not in hist["r2"] and G not in hist["r3"] and F not in hist["r3"]  # equal ts: not earlier


def test_target_actions_configurable():
    got = by_request(build(target_actions=("order", "click")))
    assert lists(got["r2"]) == ([B, D], [F, G], [1, 1], [F, G])
    st = build(target_actions=("order", "click")).stats
    assert (st.samples, st.skipped_empty_target) == (3, 1)  # r7 has nothing but an exposure
    rows = [("u1", "r0", "j", "click", 10, 0)] + ROWS[:7]
    only_orders = by_request(build(rows, target_actions=["order"]))["r1"]
    assert lists(only_orders) == ([J], [D], [2], [D, B])  # positives are still ordered + clicked
    with pytest.raises(ValueError, match=r"unknown action name\(s\) \['purchase'\]"):
        build(target_actions=("order", "purchase"))


def test_position_column_vs_row_order():
    rows = [("u1", "r0", "j", "click", 10, 0),
            ("u1", "r1", "c", "expose", 20, 2), ("u1", "r1", "a", "expose", 20, 0), ("u1", "r1", "b", "expose", 20, 1)]
    assert by_request(build(rows))["r1"].target.tolist() == [A, B, C]
    no_pos = table(rows).drop_columns(["position"])
    s = build_page_samples(InteractionLog.from_table(no_pos), CATALOG)
    assert by_request(s)["r1"].target.tolist() == [C, A, B]
    # The full table lists each request's rows in position order, so dropping the column changes nothing.
    full = build()
    s2 = build_page_samples(InteractionLog.from_table(table().drop_columns(["position"])), CATALOG)
    assert [lists(x) for x in s2] == [lists(x) for x in full]
    # Null positions sort after known ones.
    rows[2] = ("u1", "r1", "a", "expose", 20, None)
    assert by_request(build(rows))["r1"].target.tolist() == [B, C, A]


def test_samples_are_user_time_ordered_readonly_views():
    s = build()
    assert [(x.user, x.ts) for x in s] == [("u1", 200.0), ("u1", 200.0), ("u1", 300.0), ("u2", 500.0)]
    assert s[-1].request == "r7"
    with pytest.raises(IndexError, match="sample index 4"):
        s[4]
    with pytest.raises(ValueError):
        s[0].history[0] = 5  # the pools are shared, so they are read-only


def test_ragged_csr_and_subset():
    s = build()
    off, flat = s.history.to_csr()
    assert off.tolist() == [0, 2, 4, 9, 10]
    assert flat.tolist() == [B, D, B, D, B, D, G, F, H, A]
    sub = s.subset(np.array([2, 0]))
    assert [x.request for x in sub] == ["r4", "r2"] and sub.history.values is s.history.values
    assert sub.stats.pages == 2
    r = Ragged.from_lengths(np.arange(5), np.array([2, 0, 3]))
    assert [r[i].tolist() for i in range(3)] == [[0, 1], [], [2, 3, 4]]


def reference_samples(rows, max_history, target_actions, drop_no_positive):
    """Plain-Python page samples, one page at a time: the obviously-right version of build_page_samples."""
    code = {"expose": 0, "click": 1, "order": 2}
    first_seen = {}
    for k, r in enumerate(rows):
        first_seen.setdefault(("u", r[0]), k)
        first_seen.setdefault(("q", r[1]), k)
    pages: dict = {}
    for k, (u, q, it, a, t, p) in enumerate(rows):
        pages.setdefault((u, q), []).append((k, ord(it) - ord("a"), code[a], t, p))
    info = {}
    for key, rs in pages.items():
        items: dict = {}
        for k, it, a, t, p in rs:
            act, pos, first, evt = items.get(it, (-1, float("inf"), k, float("inf")))
            items[it] = (max(act, a), min(pos, p), min(first, k), min(evt, t) if a >= 1 else evt)
        info[key] = (min(r[3] for r in rs), first_seen[("q", key[1])], items)

    def ranked(items, acts):
        chosen = [(it, v) for it, v in items.items() if v[0] in acts]
        chosen.sort(key=lambda x: (-x[1][0], x[1][1], x[1][2]))
        return [it for it, _ in chosen], [v[0] for _, v in chosen]

    out, skipped = [], 0
    for (u, q), (ts, q_rank, items) in info.items():
        target, acts = ranked(items, {code[a] for a in target_actions})
        positives, _ = ranked(items, {1, 2})
        events = []
        for (u2, _), (ts2, q_rank2, items2) in info.items():
            if u2 == u and ts2 < ts:
                events += [((ts2, q_rank2, v[3], v[1], v[2]), it) for it, v in items2.items() if v[0] >= 1]
        history = [it for _, it in sorted(events)]
        history = history[-max_history:] if max_history else history
        if not history or not target or (drop_no_positive and not positives):
            skipped += 1
            continue
        out.append(((first_seen[("u", u)], ts, q_rank), (history, target, acts, positives)))
    return [x for _, x in sorted(out)], skipped


LOG_ROWS = st.lists(
    st.tuples(st.sampled_from(["u1", "u2", "u3"]), st.sampled_from(["q1", "q2", "q3", "q4", "q5"]),
              st.sampled_from(list("abcdef")), st.sampled_from(["expose", "click", "order"]),
              st.integers(0, 4), st.integers(0, 3)),
    min_size=1, max_size=40,
)


@given(rows=LOG_ROWS, max_history=st.sampled_from([None, 1, 3]),
       target_actions=st.sampled_from([("order", "click", "expose"), ("order", "click"), ("click",)]),
       drop_no_positive=st.booleans())
def test_matches_python_reference(rows, max_history, target_actions, drop_no_positive):
    s = build(rows, max_history=max_history, target_actions=target_actions, drop_no_positive=drop_no_positive)
    expected, skipped = reference_samples(rows, max_history, target_actions, drop_no_positive)
    assert [lists(x) for x in s] == [tuple(e) for e in expected]
    assert s.stats.pages == len(s) + skipped and len(s.skipped) == skipped


# ---------------------------------------------------------------- time split

DAY = 86_400


def day_rows():
    # One request per time point, each with one click, so only the first lacks history.
    times = [1000, DAY + 5, 3 * DAY - 1, 3 * DAY, 3 * DAY + 7200]
    names = "abcde"
    return [r for k, t in enumerate(times) for r in (("u", f"q{k}", names[k], "expose", t, 0),
                                                     ("u", f"q{k}", names[k], "click", t + 1, 0))]


def test_time_split_last_day_is_test():
    s = build(day_rows())
    sp = time_split(s)
    assert [x.request for x in sp.train] == ["q1", "q2"]  # 3*DAY - 1 is still day 2
    assert [x.request for x in sp.test] == ["q3", "q4"]
    assert len(sp.valid) == 0 and sp.test_start == 3 * DAY and sp.valid_start == 3 * DAY
    assert sp.train.stats.skipped_no_history == 1 and sp.test.stats.skipped_no_history == 0
    # A test sample's history reaches into the train period.
    assert sp.test[0].history.tolist() == [A, B, C]
    assert sp.test[1].history.tolist() == [A, B, C, D]


def test_popularity_counts_only_the_split_s_own_positives():
    # A split's Ragged rows share one pool of values with the other splits; only its rows may count.
    from genrec_ext.eval import item_popularity

    pop = item_popularity(time_split(build(day_rows())).train)  # q1 clicks b, q2 clicks c
    assert pop.sum() == 2 and pop[B] == 1 and pop[C] == 1


def test_time_split_with_validation_days():
    sp = time_split(build(day_rows()), test_days=1, valid_days=1)
    assert ([x.request for x in sp.train], [x.request for x in sp.valid], [x.request for x in sp.test]) == (
        ["q1"], ["q2"], ["q3", "q4"])
    assert sp.valid_start == 2 * DAY
    sp = time_split(build(day_rows()), test_days=3)
    assert (len(sp.train), sp.train.stats.pages, [x.request for x in sp.test]) == (0, 1, ["q1", "q2", "q3", "q4"])
    with pytest.raises(ValueError, match="spans 4 day"):
        time_split(build(day_rows()), test_days=2, valid_days=2)
    with pytest.raises(ValueError, match="test_days must be >= 1, got 0"):
        time_split(build(day_rows()), test_days=0)


def test_time_split_millisecond_timestamps():
    rows = [(u, q, i, a, t * 1000, p) for u, q, i, a, t, p in day_rows()]
    sp = time_split(build(rows), day_seconds=DAY * 1000)
    assert [x.request for x in sp.test] == ["q3", "q4"]


# ---------------------------------------------------------------- bad input


def test_missing_columns_named_with_present_ones():
    t = table().drop_columns(["action", "ts"])
    with pytest.raises(ValueError, match=r"missing column\(s\) \['action', 'ts'\]; present columns: \['user_id', "
                                         r"'request_id', 'item_id', 'position'\]"):
        InteractionLog.from_table(t)


def test_unknown_action_named():
    rows = ROWS[:3] + [("u1", "r1", "a", "clik", 101, 0), ("u1", "r1", "a", "buy", 101, 0)]
    with pytest.raises(ValueError, match=r"2 unknown action value\(s\) \['clik', 'buy'\]"):
        InteractionLog.from_table(table(rows))
    codes = pa.table({"user_id": [1], "request_id": [1], "item_id": [1], "action": [7], "ts": [0]})
    with pytest.raises(ValueError, match=r"unknown action code\(s\) \[7\]"):
        InteractionLog.from_table(codes)


def test_nulls_and_bad_types_named():
    t = table().set_column(2, "item_id", pa.array([None] + [r[2] for r in ROWS[1:]]))
    with pytest.raises(ValueError, match="'item_id' has 1 null value.*row 0"):
        InteractionLog.from_table(t)
    t = table().set_column(4, "ts", pa.array([str(r[4]) for r in ROWS]))
    with pytest.raises(TypeError, match="'ts' must be numeric"):
        InteractionLog.from_table(t)


def test_unknown_items_raise_or_skip_counted():
    rows = ROWS + [("u2", "r7", "zz", "expose", 500, 1), ("u2", "r7", "yy", "click", 500, 2),
                   ("u2", "r7", "zz", "click", 501, 1)]
    log = InteractionLog.from_table(table(rows))
    with pytest.raises(UnknownItemError, match=r"2 item id\(s\) in the log \(3 rows\) are not in the catalogue "
                                               r"\(10 items\), e\.g\. \['zz', 'yy'\]; pass unknown_items='skip'"):
        build_page_samples(log, CATALOG)
    with pytest.raises(ValueError):  # also a ValueError for callers that catch bad input generically
        build_page_samples(log, CATALOG)
    s = build_page_samples(log, CATALOG, unknown_items="skip")
    b = s.stats.build
    assert (b.rows, b.rows_skipped_unknown_item, b.unknown_items, b.unknown_item_policy) == (len(rows), 3, 2, "skip")
    assert set(b.unknown_item_examples) == {"zz", "yy"} and "3 rows of 2 unknown items skipped" in s.stats.summary()
    assert [lists(x) for x in s] == [lists(x) for x in build()]


def test_catalog_ids_lookup_and_errors(tmp_path):
    cat = ItemCatalog(np.array(["10", "20", "30"]), {"title": ["x", "y", "z"]}, np.eye(3))
    assert cat.index([30, 10]).tolist() == [2, 0]  # int ids match string ids by decimal form
    assert cat.index(np.array(["20", "99"]), missing="ignore").tolist() == [1, -1]
    with pytest.raises(KeyError, match=r"1 item id\(s\) are not in the catalogue \(3 items\), e\.g\. \['99'\]"):
        cat.index(["99", "10"])
    assert cat.text_of(1) == {"title": "y"} and cat.id_of([2, 0]).tolist() == ["30", "10"]
    with pytest.raises(ValueError, match=r"must be unique; 1 id\(s\) repeat, e\.g\. \[7\]"):
        ItemCatalog(np.array([7, 8, 7]))
    with pytest.raises(ValueError, match=r"text field 'title' has shape \(2,\), expected \(3,\)"):
        ItemCatalog(np.array([1, 2, 3]), {"title": ["a", "b"]})
    with pytest.raises(ValueError, match=r"embeddings have shape \(2, 4\), expected \(3, D\)"):
        ItemCatalog(np.array([1, 2, 3]), embeddings=np.zeros((2, 4)))
    cat.save(tmp_path)
    back = ItemCatalog.load(tmp_path)
    assert back.ids.tolist() == ["10", "20", "30"] and back.text["title"].tolist() == ["x", "y", "z"]
    assert back.embeddings.dtype == np.float32 and np.array_equal(back.embeddings, np.eye(3))


# ---------------------------------------------------------------- files


def test_parquet_and_csv_round_trip(tmp_path):
    expected = [lists(x) + (x.user, x.request, x.ts) for x in build()]
    pq.write_table(table(), tmp_path / "log.parquet")
    (tmp_path / "csv").mkdir()
    pacsv.write_csv(table(ROWS[:10]), tmp_path / "csv" / "part0.csv")
    pacsv.write_csv(table(ROWS[10:]), tmp_path / "csv" / "part1.csv")
    for source in (tmp_path / "log.parquet", tmp_path / "csv"):
        log = read_logs(source)
        assert len(log) == len(ROWS) and log.has_position
        got = [lists(x) + (x.user, x.request, x.ts) for x in build_page_samples(log, CATALOG)]
        assert got == expected, source
    (tmp_path / "log.txt").write_text("x")
    with pytest.raises(ValueError, match="cannot tell the format of .*log.txt"):
        read_logs(tmp_path / "log.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_logs(tmp_path / "nope.parquet")


def test_csv_integer_ids_match_string_catalog(tmp_path):
    rows = [(1, 7, 20, "expose", 5, 0), (1, 7, 20, "click", 6, 0), (1, 8, 10, "expose", 9, 0)]
    pacsv.write_csv(table(rows), tmp_path / "log.csv")
    cat = ItemCatalog(np.array(["10", "20"]))
    s = build_page_samples(read_logs(tmp_path / "log.csv"), cat)
    assert [(x.user, x.request, x.history.tolist(), x.target.tolist()) for x in s] == [(1, 8, [1], [0])]


# ---------------------------------------------------------------- LC-Rec JSON


@pytest.fixture
def lcrec_dir(tmp_path):
    inter = {"u1": [1, 2, 3, 4, 5, 6], "u2": [7, 8, 9], "u3": [1, 2], "u4": [3]}
    items = {str(k): {"title": f"item {k}", "brand": "B", "categories": "X,Y"} for k in range(1, 11)}
    (tmp_path / "Toy.inter.json").write_text(json.dumps(inter))
    (tmp_path / "Toy.item.json").write_text(json.dumps(items))
    return tmp_path


def seqs(samples: PageSamples) -> list:
    # Item k has dense index k - 1 (file order of Toy.item.json).
    return [(x.user, x.request, (x.history + 1).tolist(), (x.target + 1).tolist()) for x in samples]


def test_lcrec_point_wise_leave_one_out(lcrec_dir):
    cat, (train, valid, test) = load_lcrec(lcrec_dir, page_size=1)
    assert len(cat) == 10 and cat.text_of(0) == {"title": "item 1", "description": "", "brand": "B",
                                                  "categories": "X,Y"}
    assert seqs(train) == [("u1", 1, [1], [2]), ("u1", 2, [1, 2], [3]), ("u1", 3, [1, 2, 3], [4])]
    assert seqs(valid) == [("u1", 4, [1, 2, 3, 4], [5]), ("u2", 1, [7], [8])]
    assert seqs(test) == [("u1", 5, [1, 2, 3, 4, 5], [6]), ("u2", 2, [7, 8], [9]), ("u3", 1, [1], [2])]
    assert (valid.stats.skipped_no_history, test.stats.skipped_no_history) == (1, 1)  # u3 valid, u4 test
    assert test[0].target_actions.tolist() == [1] and test[0].positives.tolist() == test[0].target.tolist()


def test_lcrec_pages_and_history_cap(lcrec_dir):
    _, (train, valid, test) = load_lcrec(lcrec_dir, "Toy", page_size=3, max_history=2)
    # Targets stop before the validation item (5) even when page_size would reach further.
    assert seqs(train) == [("u1", 1, [1], [2, 3, 4]), ("u1", 2, [1, 2], [3, 4]), ("u1", 3, [2, 3], [4])]
    assert seqs(valid)[0] == ("u1", 4, [3, 4], [5]) and seqs(test)[0] == ("u1", 5, [4, 5], [6])
    assert train.target_actions[0].tolist() == [1, 1, 1]


def test_lcrec_bad_input(lcrec_dir, tmp_path):
    inter = json.loads((lcrec_dir / "Toy.inter.json").read_text())
    inter["u5"] = [1, 2, 99, 3]
    (lcrec_dir / "Toy.inter.json").write_text(json.dumps(inter))
    with pytest.raises(UnknownItemError, match=r"1 item id\(s\) in Toy.inter.json \(1 entries\) are not in "
                                               r"Toy.item.json \(10 items\), e\.g\. \['99'\]"):
        load_lcrec(lcrec_dir)
    _, (train, valid, test) = load_lcrec(lcrec_dir, unknown_items="skip")
    assert seqs(test)[-1] == ("u5", 2, [1, 2], [3]) and test.stats.build.rows_skipped_unknown_item == 1
    with pytest.raises(ValueError, match="page_size must be >= 1, got 0"):
        load_lcrec(lcrec_dir, page_size=0)
    with pytest.raises(FileNotFoundError, match="Nope.inter.json"):
        load_lcrec(lcrec_dir, "Nope")
    with pytest.raises(ValueError, match="no timestamps"):
        time_split(test)


@pytest.mark.skipif(not REAL_LCREC.exists(), reason=f"{REAL_LCREC} is absent")
@pytest.mark.parametrize("page_size", [1, 3])
def test_lcrec_real_scientific(page_size):
    cat, (train, valid, test) = load_lcrec(REAL_LCREC, "Scientific", page_size=page_size, max_history=20)
    assert len(cat) == 4344 and all(isinstance(t, str) and t for t in cat.text["title"])
    assert (len(test), len(valid), len(train)) == (8317, 8317, 58_492 - 3 * 8317)
    assert test.stats.skipped_no_history == 0 and len(set(test.user.tolist())) == 8317
    assert test.history.lengths.max() == 20 and (test.target.lengths == 1).all()
    if page_size == 3:
        assert train.target.lengths.max() == 3
    # No training target reaches a validation/test item: neither by position nor by item.
    inter = json.loads((REAL_LCREC / "Scientific.inter.json").read_text())
    valid_start = np.empty(len(inter), dtype=np.int64)
    valid_start[valid.user] = valid.target.start
    assert train.target.values is valid.target.values
    assert (train.target.end <= valid_start[train.user]).all()
    # Item-wise: every (user, target item) pair occurs among the user's items before the validation one.
    before = [s[:-2] for s in inter.values()]
    seen_user = np.repeat(np.arange(len(before)), [len(b) for b in before])
    seen = seen_user * len(cat) + cat.index([x for b in before for x in b])
    off, flat = train.target.to_csr()
    assert np.isin(np.repeat(train.user, np.diff(off)) * len(cat) + flat, seen).all()
    first = test[0]
    u0 = inter[first.user]
    assert cat.id_of(first.target).tolist() == [str(u0[-1])]
    assert cat.id_of(first.history).tolist() == [str(x) for x in u0[:-1][-20:]]


def test_one_max_history_default_everywhere():
    """Every entry point that caps histories defaults to data.DEFAULT_MAX_HISTORY (it used to be 20 in some, 50 in
    others)."""
    import inspect

    from genrec_ext import baselines, data, experiments
    from genrec_ext.cli import build_parser

    default = data.DEFAULT_MAX_HISTORY
    for fn in (data.load_lcrec, data.load_splits, data.build_page_samples, baselines.load_task,
               experiments.synthetic_task, experiments.sequence_task):
        assert inspect.signature(fn).parameters["max_history"].default == default, fn.__name__
    parser = build_parser()
    for argv in (["train", "sft", "--data", "d", "--sids", "s", "--out", "o"], ["eval", "--model", "m", "--data", "d",
                 "--sids", "s"], ["baseline", "train", "sasrec", "--data", "d", "--out", "o"],
                 ["recommend", "--model", "m", "--sids", "s", "--items", "i", "--user-history", "h"]):
        assert parser.parse_args(argv).max_history == default, argv[0]
