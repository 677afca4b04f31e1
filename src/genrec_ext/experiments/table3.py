"""`genrec experiment table3`: the paper's Table 3 (preference alignment, §2.3) on synthetic pages.

Rows (``configs/experiments/table3.yaml``): the SFT start, GRPO (``alpha=0``), GRPO-SR (``alpha=1``), and both
without the relevance gate, beside MostPop. Everything before RL is Table 1's synthetic setting: the world, the
SIDs and the SFT model of seed k, which is Table 1's GenRec row of seed k (``<out>/runs/genrec/seed<k>``), so
running Table 3 in a Table 1 synthetic directory reuses those runs. One reward model (``<out>/runs/reward``)
is the RL reward of every row and the judge of R@K for all of them. Each RL run starts from the SFT model of
its seed with the same seed, trains on unconstrained rollouts and is tested with its last weights: HR@K,
NDCG@K and R@K (the reward model's best ``r_pref`` among the constrained top K; 0 for a slot without an
item) from trie-constrained beam search, HaR@K from a free one, and "invalid" = the share of hallucinated
SIDs among the training rollouts of the last logged steps. Runs land in
``<out>/runs/table3/<row>/seed<k>/result.json``; a finished run is never redone. The summary is ``table3.md``
/ ``table3.json`` (mean ± std over seeds, with the paper's claims checked) and ``table3_rl.png`` (training
reward and invalid rollouts over steps, first seed).
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .. import baselines as B
from .._io import atomic_file, json_ready
from .common import (CONFIG_DIR, RESULT_FILE, SYNTHETIC, cached_result, format_summary, load_section, slug, summarise,
                     synthetic_task)
from .table1 import Row, Table1Spec, run_one

CONFIG_FILE = CONFIG_DIR / "table3.yaml"
COLUMNS = ("HR@10", "HR@50", "NDCG@10", "R@1", "R@10", "R@50", "HaR@10", "invalid", "train_s")
REWARD_DIR = "reward"
MOSTPOP = "MostPop"


@dataclass
class Table3Spec:
    """The YAML's synthetic section, with Table 1's synthetic section (``start``) it builds on."""

    start: Table1Spec
    sft_row: Row
    rows: dict[str, dict[str, Any] | None]  # label -> RLConfig overrides; None = the SFT start
    reward: dict[str, Any] = field(default_factory=dict)  # RewardTrainConfig fields
    rl: dict[str, Any] = field(default_factory=dict)  # RLConfig fields shared by every RL row
    beam: int = 50
    ks: tuple[int, ...] = (1, 10, 50)

    @classmethod
    def load(cls, smoke: bool = False, path: str | Path = CONFIG_FILE) -> Table3Spec:
        from ..train.rl import RLConfig

        values = load_section(path, SYNTHETIC, smoke)
        start = Table1Spec.load(SYNTHETIC, smoke=smoke)
        rows = {r.label: r for r in start.rows}
        name = values.pop("sft_row")
        if name not in rows:
            raise ValueError(f"{path}: sft_row {name!r} is no row of Table 1 ({sorted(rows)})")
        spec = cls(start=start, sft_row=rows[name], rows=dict(values.pop("rows")),
                   ks=tuple(values.pop("ks", cls.ks)), **values)
        for label, overrides in spec.rows.items():  # bad RL settings fail now, not after the SFT runs
            if overrides is not None:
                RLConfig.from_dict({**spec.rl, **overrides})
        return spec


def run_table3(out: str | Path, *, seeds: tuple[int, ...] = (0, 1, 2), smoke: bool = False,
               config: str | Path = CONFIG_FILE, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) Table 3 into ``out`` (a fresh directory or a Table 1 synthetic one); returns the summary
    (also written as Markdown, JSON and a PNG)."""
    from ..model import GenRecModel
    from ..reward import HybridReward, RewardTrainConfig, train_reward_model
    from ..reward.train import REPORT_FILE
    from ..train.rl import RLConfig, train_rl

    out = Path(out)
    spec = Table3Spec.load(smoke=smoke, path=config)
    start = spec.start
    task = synthetic_task(start.world, max_history=start.max_history, sid=start.sid, sid_dir=out / "sids",
                          progress=progress)
    reward_dir = out / "runs" / REWARD_DIR
    if not (reward_dir / REPORT_FILE).exists():
        tqdm.write("training the reward model")
        train_reward_model(task.catalog, task.splits, task.table, RewardTrainConfig.from_dict(spec.reward),
                           out_dir=reward_dir, overwrite=True, progress=progress)
    judge = HybridReward.load(reward_dir, task.catalog, task.table)  # R@K of every row: r_pref alone

    def test(rec: B.Recommender) -> dict[str, float]:
        return B.evaluate_recommender(rec, task, "test", ks=spec.ks, reward=judge, progress=False)

    results: dict[str, list[dict]] = {label: [] for label in spec.rows}
    results[MOSTPOP] = [cached_result(out / "runs" / "table3" / "mostpop" / RESULT_FILE, lambda: {
        "row": MOSTPOP, "seed": None, "metrics": test(_fitted(B.make("mostpop"), task))})]
    jobs = [(label, seed) for seed in seeds for label in spec.rows]
    sft_runs: dict[int, dict[str, Any]] = {}  # Table 1's GenRec run of each seed, read (or run) once
    bar = tqdm(jobs, desc="table3 runs", unit="run", disable=not progress)
    for label, seed in bar:
        bar.set_postfix_str(f"{label} seed {seed}")
        sft_dir = out / "runs" / spec.sft_row.slug / f"seed{seed}"
        if seed not in sft_runs:
            sft_runs[seed] = cached_result(sft_dir / RESULT_FILE, lambda: run_one(spec.sft_row, seed, task, sft_dir,
                                                                                  start.ks, progress=False))
        sft = sft_runs[seed]
        sft_model = sft_dir / "train" / "model"
        overrides = spec.rows[label]
        run_dir = out / "runs" / "table3" / slug(label) / f"seed{seed}"
        started = time.perf_counter()

        def run() -> dict[str, Any]:
            model = GenRecModel.from_pretrained(sft_model)
            record = {"row": label, "seed": seed, "start": str(sft_model)}
            if overrides is None:
                return {**record, "metrics": test(B.GenRec.from_model(model, beam=spec.beam)),
                        "train_s": sft["train_s"]}
            rl = RLConfig.from_dict({**spec.rl, **overrides, "seed": seed, "overwrite": True})
            result = train_rl(model, judge, task, rl,
                              out_dir=run_dir / "train", progress=False)
            last = [r for r in result.history if "invalid_share" in r][-1]
            metrics = test(B.GenRec.from_model(model, beam=spec.beam))
            return {**record, "settings": rl.to_dict(), "metrics": {**metrics, "invalid": last["invalid_share"]},
                    "train_s": result.elapsed}

        done = (run_dir / RESULT_FILE).exists()
        results[label].append(cached_result(run_dir / RESULT_FILE, run))
        if not done:
            m = results[label][-1]["metrics"]
            tqdm.write(f"{label} seed {seed}: {time.perf_counter() - started:.0f} s, test "
                       + ", ".join(f"{k} {m[k]:.4f}" for k in (f"HR@{max(spec.ks)}", "R@1", "HaR@10")))
    summary = {"dataset": task.name, "items": len(task.catalog), "test_queries": len(task.splits.test),
               "reward": json.loads((reward_dir / REPORT_FILE).read_text())["test"],
               "columns": [c for c in COLUMNS if "@" not in c or int(c.split("@")[1]) in spec.ks],
               "rows": {}}
    summary["rows"] = summarise(results, summary["columns"])
    summary["checks"] = paper_checks(summary["rows"])
    write_summary(summary, out, {label: out / "runs" / "table3" / slug(label) / f"seed{seeds[0]}" / "train"
                                 for label, o in spec.rows.items() if o is not None})
    return summary


def _fitted(rec: B.Recommender, task: B.Task) -> B.Recommender:
    rec.fit(task, progress=False)
    return rec


def paper_checks(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The paper's Table 3 claims, each with the means it compares and whether it holds here."""
    def mean(row: str, column: str) -> float | None:
        return rows.get(row, {}).get(column, {}).get("mean")

    claims = [
        ("GRPO-SR raises R@1 over SFT", ("GRPO-SR", "R@1"), ("SFT", "R@1")),
        ("GRPO raises R@1 over SFT", ("GRPO", "R@1"), ("SFT", "R@1")),
        ("GRPO-SR keeps more of SFT's HR@50 than GRPO (the NLL term on D+)", ("GRPO-SR", "HR@50"), ("GRPO", "HR@50")),
        ("without the gate GRPO hallucinates more (HaR@10)", ("GRPO w/o gate", "HaR@10"), ("GRPO", "HaR@10")),
        ("without the gate GRPO-SR hallucinates more (HaR@10)", ("GRPO-SR w/o gate", "HaR@10"), ("GRPO-SR", "HaR@10")),
    ]
    checks = []
    for claim, (row_a, col_a), (row_b, col_b) in claims:
        a, b = mean(row_a, col_a), mean(row_b, col_b)
        if a is None or b is None:
            continue
        checks.append({"claim": claim, "compared": f"{row_a} {col_a} {a:.4f} vs {row_b} {col_b} {b:.4f}",
                       "holds": bool(a > b)})
    return checks


def write_summary(summary: dict[str, Any], out: Path, rl_runs: dict[str, Path]) -> None:
    auc = summary["reward"]
    checks = "\n".join(f"- {'holds' if c['holds'] else 'does NOT hold'}: {c['claim']} ({c['compared']})"
                       for c in summary["checks"])
    with atomic_file(out / "table3.md") as f:
        f.write(f"Table 3 on {summary['dataset']} ({summary['items']} items, {summary['test_queries']} test pages); "
                f"mean ± std over seeds, each RL row's last weights, test read once. R@K: the reward model's best "
                f"r_pref among the constrained top K (test AUC {auc['model']['AUC']:.4f} vs popularity "
                f"{auc['popularity']['AUC']:.4f}); HaR@10 from unconstrained decoding; invalid: hallucinated "
                f"share of the training rollouts at the end.\n\n{format_summary(summary)}\n\n"
                f"The paper's claims, as measured here:\n{checks}\n")
    with atomic_file(out / "table3.json") as f:
        json.dump(json_ready(summary), f, indent=2)
    plot_rollouts({label: run / "metrics.jsonl" for label, run in rl_runs.items()}, out / "table3_rl.png")


def plot_rollouts(runs: dict[str, Path], out_path: Path) -> Path | None:
    """Training reward and hallucinated share of the rollouts over steps, one line per RL row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..train import read_metrics

    records = {name: [r for r in read_metrics(path) if "reward" in r] for name, path in runs.items()
               if path.exists()}
    if not any(records.values()):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, recs in records.items():
        steps = [r["step"] for r in recs]
        axes[0].plot(steps, [r["reward"] for r in recs], label=name)
        axes[1].plot(steps, [r["invalid_share"] for r in recs], label=name)
    for ax, title in zip(axes, ("training reward (gated when the row has the gate)", "hallucinated rollouts")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
