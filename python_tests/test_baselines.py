"""The baselines harness: MostPop and Oracle on hand-computed cases, per-user sequences, SASRec / BERT4Rec and the
GenRec-family adapters trained a few steps on a tiny synthetic world, save / load, the CLI and `table1 --smoke`
(resumable, skipping finished runs)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from genrec_ext import baselines as B
from genrec_ext import data
from genrec_ext.baselines.popularity import top_k_rows
from genrec_ext.cli import main
from genrec_ext.experiments import RESULT_FILE, run_table1, synthetic_task

WORLD = {"num_items": 150, "num_users": 80, "seed": 0}


@pytest.fixture(scope="module")
def task():
    return synthetic_task(WORLD, max_history=10, sid={"levels": 2, "codebook_size": 16})


def _lcrec_dir(tmp_path: Path, sequences: dict[str, list[str]]) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    items = sorted({i for s in sequences.values() for i in s})
    (tmp_path / "Toy.inter.json").write_text(json.dumps(sequences))
    (tmp_path / "Toy.item.json").write_text(json.dumps({i: {"title": f"item {i}"} for i in items}))
    return tmp_path


# ------------------------------------------------------------------------------------------ sequences


def test_user_sequences_of_lcrec_training_stop_before_the_validation_item(tmp_path):
    seqs = {"u1": ["a", "b", "c", "d", "e"], "u2": ["c", "a", "b"], "u3": ["b", "a", "c", "e"]}
    catalog, splits = data.load_lcrec(_lcrec_dir(tmp_path, seqs), max_history=2)
    users, rows = data.user_sequences(splits.train)
    got = {str(splits.train.user_ids[u]): list(catalog.ids[rows[i]]) for i, u in enumerate(users)}
    # u2 (3 items) has no training position; max_history=2 caps histories, never the sequences
    assert got == {"u1": ["a", "b", "c"], "u3": ["b", "a"]}


def test_user_sequences_of_page_logs_end_with_the_latest_pages_positives(task):
    train = task.splits.train
    users, rows = data.user_sequences(train)
    assert len(users) == len(np.unique(train.user))
    for i in range(0, len(users), 7):
        mine = np.flatnonzero(train.user == users[i])
        latest = mine[np.flatnonzero(train.history.end[mine] == train.history.end[mine].max())[-1]]  # the last page
        seq = rows[i]
        n_pos = len(train.positives[latest])
        assert list(seq[len(seq) - n_pos:]) == list(train.positives[latest])
        assert list(seq[:len(seq) - n_pos][-len(train.history[latest]):]) == list(train.history[latest])


def test_load_task_of_page_logs_holds_out_a_validation_day(tmp_path):
    syn = data.generate_synthetic(data.SyntheticConfig(**WORLD), progress=False)
    syn.write_parquet(tmp_path)
    task = B.load_task(tmp_path, max_history=10)
    splits = task.splits
    assert len(splits.valid) > 0  # models are selected on it
    assert splits.train.ts.max() < splits.valid_start <= splits.valid.ts.min()
    assert splits.valid.ts.max() < splits.test_start == splits.valid_start + 86400.0


# ------------------------------------------------------------------------------------- MostPop, Oracle


def test_top_k_rows_breaks_ties_by_lower_index():
    scores = np.array([[0.1, 0.5, 0.5, 0.2], [1.0, 1.0, 1.0, 1.0]])
    assert top_k_rows(scores, 3).tolist() == [[1, 2, 3], [0, 1, 2]]
    assert top_k_rows(scores, 9).tolist() == [[1, 2, 3, 0], [0, 1, 2, 3]]


def test_mostpop_ranks_training_positives_and_scores_by_hand(tmp_path):
    # training positives: a x3 (u1: a, u2: a, u3: a... see sequences), hand-counted below
    seqs = {"u1": ["a", "b", "a", "c", "d"], "u2": ["b", "b", "a", "c", "a"], "u3": ["c", "a", "d", "b"]}
    task = B.load_task(_lcrec_dir(tmp_path, seqs), max_history=5)
    # training targets (positions 1..n-3): u1 -> b, a; u2 -> b, a; u3 -> a
    assert task.popularity.tolist() == [3, 2, 0, 0]  # catalogue order a, b, c, d
    rec = B.make("mostpop")
    rec.fit(task, progress=False)
    items = rec.recommend(task, task.splits.test, 6, progress=False).items
    assert items.tolist() == [[0, 1, 2, 3, -1, -1]] * 3  # ties (c, d: 0) by index; 4 items, K = 6
    # test items: u1 d, u2 a, u3 b -> ranks 4, 1, 2
    m = B.evaluate_recommender(rec, task, "test", ks=(1, 2, 4), progress=False)
    assert m["HR@1"] == pytest.approx(1 / 3) and m["HR@2"] == pytest.approx(2 / 3) and m["HR@4"] == 1.0
    assert m["NDCG@4"] == pytest.approx((1 / np.log2(5) + 1 + 1 / np.log2(3)) / 3)
    assert np.isnan(m["HaR@1"]) and m["prompt_length"] == 0.0
    rec.save(tmp_path / "mp")
    again = B.load_recommender(tmp_path / "mp", task)
    assert again.recommend(task, task.splits.test, 4, progress=False).items.tolist() == items[:, :4].tolist()


class _ToyWorld:
    """positive_probability by request id: request r prefers item (r mod 3), then the others by index."""

    def positive_probability(self, request_ids):
        p = np.full((len(request_ids), 3), 0.1, dtype=np.float32)
        p[np.arange(len(request_ids)), np.asarray(request_ids) % 3] = 0.9
        return p


def test_oracle_ranks_by_the_worlds_probability_per_request(task):
    toy = replace(task, world=_ToyWorld())
    test = task.splits.test
    items = B.make("oracle").recommend(toy, test, 2, progress=False).items
    requests = test.request_ids[test.request]
    first = requests % 3
    assert items[:, 0].tolist() == first.tolist()
    assert items[:, 1].tolist() == np.where(first == 0, 1, 0).tolist()
    with pytest.raises(ValueError, match="only for synthetic data"):
        B.make("oracle").fit(replace(task, world=None))


def test_unknown_recommender_and_settings_are_named():
    with pytest.raises(ValueError, match="unknown recommender 'sasrek'"):
        B.make("sasrek")
    with pytest.raises(ValueError, match=r"unknown SequentialConfig keys \['hiden'\]"):
        B.make("sasrec", {"hiden": 8})
    with pytest.raises(ValueError, match=r"unknown SFTConfig keys \['epoch'\]"):
        B.make("genrec", {"sft": {"epoch": 2}})
    with pytest.raises(ValueError, match="mostpop has no settings"):
        B.make("mostpop", {"k": 3})


# ------------------------------------------------------------------------------------ trained models


@pytest.mark.parametrize("name", ["sasrec", "bert4rec"])
def test_item_sequence_models_learn_and_round_trip(task, name, tmp_path):
    rec = B.make(name, {"epochs": 6, "hidden": 32, "patience": 0, "batch_size": 32})
    report = rec.fit(task, progress=False)
    history = report.selected["history"]
    assert len(history) == 6 and history[-1]["loss"] < history[0]["loss"]
    best = max(h["NDCG@10"] for h in history)
    assert report.selected["valid_NDCG@10"] == best  # the selected epoch is the best on validation
    recs = rec.recommend(task, task.splits.test, 10, progress=False)
    assert recs.items.shape == (len(task.splits.test), 10) and recs.items.min() >= 0
    assert all(len(set(row)) == 10 for row in recs.items.tolist())
    rec.save(tmp_path)
    again = B.load_recommender(tmp_path, task)
    np.testing.assert_array_equal(again.recommend(task, task.splits.test, 10, progress=False).items, recs.items)


def test_early_stopping_of_item_sequence_models(task):
    rec = B.make("sasrec", {"epochs": 50, "hidden": 16, "patience": 2, "lr": 1e-6})  # nothing to gain
    report = rec.fit(task, progress=False)
    assert report.selected["epochs_run"] < 50


@pytest.mark.parametrize("name", ["genrec", "lcrec"])
def test_generative_rows_fit_select_and_report_har(task, name, tmp_path):
    rec = B.make(name, {"beam": 10, "valid_queries": 32, "sft": {"max_steps": 6, "global_batch_size": 16,
                                                                   "eval_every": 3}})
    report = rec.fit(task, out_dir=tmp_path / "train", progress=False)
    assert report.selected["step"] in (3, 6) and 0 <= report.selected["valid_NDCG@10"] <= 1
    m = B.evaluate_recommender(rec, task, "test", ks=(1, 10), progress=False)
    assert 0 <= m["HR@10"] <= 1 and 0 <= m["HaR@10"] <= 1  # HaR from the unconstrained decoding
    levels = len(task.table.level_sizes)
    expect = task.splits.test.history.lengths * (1 if name == "genrec" else levels) + 2
    assert m["prompt_length"] == pytest.approx(expect.mean())
    constrained = rec.recommend(task, task.splits.test, 10, progress=False)
    assert (constrained.items[constrained.generated] >= 0).all()  # every constrained result is a real item
    rec.save(tmp_path / "saved")
    again = B.load_recommender(tmp_path / "saved", task)
    np.testing.assert_array_equal(again.recommend(task, task.splits.test, 10, progress=False).items,
                                  constrained.items)


# ------------------------------------------------------------------------------------- CLI, table1


def test_cli_baseline_train_and_eval(tmp_path, capsys):
    d = _lcrec_dir(tmp_path / "data", {f"u{u}": [f"i{(u * 3 + k) % 7}" for k in range(6)] for u in range(12)})
    assert main(["baseline", "train", "sasrec", "--data", str(d), "--out", str(tmp_path / "m"), "--quiet",
                 "--set", "epochs=2", "--set", "hidden=16"]) == 0
    assert "selected on validation" in capsys.readouterr().out
    assert main(["baseline", "eval", "--model", str(tmp_path / "m"), "--data", str(d), "--out",
                 str(tmp_path / "r"), "--quiet"]) == 0
    report = json.loads((tmp_path / "r" / "eval_test.json").read_text())
    assert report["sasrec (test)"]["queries"] == 12
    with pytest.raises(SystemExit, match="unknown SequentialConfig keys"):
        main(["baseline", "train", "sasrec", "--data", str(d), "--out", str(tmp_path / "x"), "--set", "epoch=2"])
    with pytest.raises(SystemExit, match="expected key=value"):
        main(["baseline", "train", "sasrec", "--data", str(d), "--out", str(tmp_path / "x"), "--set", "epochs"])


def test_table1_smoke_runs_end_to_end_and_resumes(tmp_path, capsys):
    out = tmp_path / "t1"
    summary = run_table1("synthetic", out, seeds=(0, 1), smoke=True, progress=False)  # every row of the table
    assert list(summary["rows"]) == ["GenRec", "GenRec w/o TM", "LC-Rec-style", "TIGER-style", "SASRec", "BERT4Rec",
                                     "MostPop", "Oracle"]
    assert summary["rows"]["GenRec"]["seeds"] == [0, 1] and summary["rows"]["MostPop"]["seeds"] == [None]
    for name in ("table1.md", "table1.json", "table1_loss.png"):
        assert (out / name).stat().st_size > 0
    md = (out / "table1.md").read_text()
    assert "| GenRec | 2 |" in md and " ± " in md and "| Oracle | 1 |" in md
    # a second call finds every run finished and trains nothing
    results = sorted(out.glob(f"runs/*/*/{RESULT_FILE}"))
    stamps = [p.stat().st_mtime_ns for p in results]
    (results[0]).unlink()  # ... except the one that was "interrupted"
    again = run_table1("synthetic", out, seeds=(0, 1), smoke=True, progress=False)
    assert [p.stat().st_mtime_ns for p in results[1:]] == stamps[1:] and results[0].exists()
    assert again["rows"]["SASRec"]["HR@10"]["values"] == summary["rows"]["SASRec"]["HR@10"]["values"]
    with pytest.raises(ValueError, match="unknown rows"):
        run_table1("synthetic", out, rows=["nope"], smoke=True, progress=False)
