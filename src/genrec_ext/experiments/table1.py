"""`genrec experiment table1`: the paper's Table 1 on our data, every row through the baselines harness.

Rows (``configs/experiments/table1.yaml``): GenRec (page-wise, Token Merger), GenRec w/o TM, LC-Rec-style,
TIGER-style, SASRec, BERT4Rec, MostPop, and on synthetic data the Oracle. Each trained row runs once per seed
(model seed; the data is fixed): fit on the training split with the model selected on the validation split,
then the test split is read once. Runs land in ``<out>/runs/<row>/seed<k>/result.json`` and a finished run is
never redone, so an interrupted experiment resumes where it stopped. The summary is ``table1.md`` /
``table1.json`` (mean ± std over seeds) and ``table1_loss.png`` (PW-NTP vs NTP training loss, like the
paper's Fig. 2a).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .. import baselines as B
from .._io import atomic_file, json_ready
from .common import (CONFIG_DIR, RESULT_FILE, SYNTHETIC, cached_result, format_summary, load_section, sequence_task,
                     slug, synthetic_task)
from .common import summarise as summarise_runs

CONFIG_FILE = CONFIG_DIR / "table1.yaml"
COLUMNS = ("HR@1", "HR@5", "HR@10", "HR@50", "NDCG@5", "NDCG@10", "NDCG@50", "HaR@10", "train_s", "prompt_length")


@dataclass
class Row:
    """One line of the table: a label, a recommender of the harness and its settings."""

    label: str
    recommender: str
    settings: dict[str, Any] = field(default_factory=dict)
    seeded: bool = True  # False: deterministic (MostPop, Oracle), run once

    @property
    def slug(self) -> str:
        return slug(self.label)


@dataclass
class Table1Spec:
    """Everything one table needs: the data section of the YAML (rows, history cap, SID and world settings)."""

    rows: list[Row]
    max_history: int
    ks: tuple[int, ...] = (1, 5, 10, 50)
    sid: dict[str, Any] = field(default_factory=dict)
    world: dict[str, Any] = field(default_factory=dict)  # SyntheticConfig overrides

    @classmethod
    def load(cls, section: str, smoke: bool = False, path: str | Path = CONFIG_FILE) -> Table1Spec:
        values = load_section(path, section, smoke)
        rows = [Row(label, r["recommender"], dict(r.get("settings") or {}), bool(r.get("seeded", True)))
                for label, r in values.pop("rows").items()]
        values["ks"] = tuple(values.get("ks", cls.ks))
        return cls(rows=rows, **values)


# ------------------------------------------------------------------------------------------ the runs


def run_one(row: Row, seed: int, task: B.Task, run_dir: Path, ks: tuple[int, ...], progress: bool) -> dict:
    """Fit, select on validation, test once; the run's result (:func:`.common.cached_result` stores it)."""
    settings = dict(row.settings)
    if row.seeded:
        settings["seed"] = seed
    rec = B.make(row.recommender, settings)
    report = rec.fit(task, out_dir=run_dir / "train", progress=progress)
    metrics = B.evaluate_recommender(rec, task, "test", ks=ks, progress=progress)
    result = {"row": row.label, "recommender": row.recommender, "seed": seed if row.seeded else None,
              "settings": settings, "metrics": metrics, "train_s": report.seconds,
              "selected": {k: v for k, v in report.selected.items() if k != "history"}}
    return result


def run_table1(dataset: str | Path, out: str | Path, *, seeds: tuple[int, ...] = (0, 1, 2), sids: str | Path | None = None,
               rows: list[str] | None = None, smoke: bool = False, config: str | Path = CONFIG_FILE,
               progress: bool = True) -> dict[str, Any]:
    """Run (or resume) Table 1 on ``dataset`` (``"synthetic"`` or an LC-Rec directory) into ``out``; returns the
    summary (also written as Markdown, JSON and a PNG)."""
    out = Path(out)
    synthetic = str(dataset) == SYNTHETIC
    spec = Table1Spec.load(SYNTHETIC if synthetic else "lcrec", smoke=smoke, path=config)
    selected = spec.rows
    if rows:
        known = {r.slug: r for r in spec.rows} | {r.label: r for r in spec.rows}
        unknown = [r for r in rows if r not in known]
        if unknown:
            raise ValueError(f"unknown rows {unknown}; rows of this table: {[r.slug for r in spec.rows]}")
        selected = [known[r] for r in rows]
    if synthetic:
        task = synthetic_task(spec.world, max_history=spec.max_history, sid=spec.sid, sid_dir=out / "sids",
                              progress=progress)
    else:
        task = sequence_task(dataset, max_history=spec.max_history, sids=sids, sid=spec.sid, sid_dir=out / "sids",
                             progress=progress)
    jobs = [(row, seed) for row in selected for seed in (seeds if row.seeded else seeds[:1])]
    results: dict[str, list[dict]] = {row.label: [] for row in selected}
    bar = tqdm(jobs, desc="table1 runs", unit="run", disable=not progress)
    for row, seed in bar:
        run_dir = out / "runs" / row.slug / f"seed{seed}"
        bar.set_postfix_str(f"{row.label} seed {seed}")
        fresh, started = not (run_dir / RESULT_FILE).exists(), time.perf_counter()
        results[row.label].append(cached_result(run_dir / RESULT_FILE,
                                                lambda: run_one(row, seed, task, run_dir, spec.ks, progress=False)))
        if fresh:
            tqdm.write(f"{row.label} seed {seed}: {time.perf_counter() - started:.0f} s, test "
                   + ", ".join(f"{k} {results[row.label][-1]['metrics'][k]:.4f}" for k in ("HR@10", "NDCG@10")))
    summary = summarise(results, spec, task)
    write_summary(summary, out, spec)
    return summary


def summarise(results: dict[str, list[dict]], spec: Table1Spec, task: B.Task) -> dict[str, Any]:
    """Mean and std over seeds of every column per row (:func:`.common.summarise`)."""
    columns = [c for c in COLUMNS if not c.startswith(("HR@", "NDCG@")) or int(c.split("@")[1]) in spec.ks]
    return {"dataset": task.name, "items": len(task.catalog), "test_queries": len(task.splits.test),
            "columns": columns, "rows": summarise_runs(results, columns)}


def write_summary(summary: dict[str, Any], out: Path, spec: Table1Spec) -> None:
    from ..train import plot_loss_curves

    table = format_summary(summary)
    with atomic_file(out / "table1.md") as f:
        f.write(f"Table 1 on {summary['dataset']} ({summary['items']} items, {summary['test_queries']} test "
                f"queries); mean ± std over seeds, model selected on validation, test read once.\n\n{table}\n")
    with atomic_file(out / "table1.json") as f:
        json.dump(json_ready(summary), f, indent=2)
    curves = {}
    for row in spec.rows:  # the decoder rows' SFT losses, first seed
        metrics = out / "runs" / row.slug / f"seed{summary['rows'].get(row.label, {}).get('seeds', [0])[0]}" / "train" \
            / "metrics.jsonl"
        rec = B.make(row.recommender, row.settings)
        if isinstance(rec, B.GenRec) and metrics.exists():
            curves[f"{row.label} ({'PW-NTP' if rec.settings.objective == 'page' else 'NTP'})"] = metrics
    if curves:
        plot_loss_curves(curves, out / "table1_loss.png", x="epoch", smooth=0.6,
                         title="SFT training loss: page-wise (PW-NTP) vs point-wise (NTP)")
