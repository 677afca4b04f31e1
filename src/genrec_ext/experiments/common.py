"""What the experiment tables share: the tasks (synthetic world, LC-Rec data) with cached SIDs, the YAML
sections with their CI-sized ``smoke`` overrides, and mean ± std summaries over seeds as Markdown."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .. import baselines as B
from .. import data
from .._io import atomic_file, json_ready
from ..sid import RQKMeansConfig, SIDTable, build_sid_table, train_rq_kmeans

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "experiments"
RESULT_FILE = "result.json"
SYNTHETIC = "synthetic"


def slug(label: str) -> str:
    """A row label as a directory name: ``"GRPO w/o gate"`` -> ``"grpo-w-o-gate"``."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def cached_result(path: Path, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A run's result file if it exists, else ``compute()`` written atomically: its presence means done, so a
    re-run experiment resumes where it stopped and never redoes a finished run."""
    if path.exists():
        return json.loads(path.read_text())
    result = json_ready(compute())
    with atomic_file(path) as f:
        json.dump(result, f, indent=2)
    return result


def load_section(path: str | Path, section: str, smoke: bool = False) -> dict[str, Any]:
    """``section`` of an experiment YAML, with its ``smoke.<section>`` overrides merged in when ``smoke``."""
    spec = yaml.safe_load(Path(path).read_text())
    if section not in spec:
        raise ValueError(f"{path} has no section {section!r} (sections: {sorted(spec)})")
    values = dict(spec[section])
    if smoke:  # CI-sized: the same rows, tiny budgets
        values = _merge(values, (spec.get("smoke") or {}).get(section, {}))
    return values


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# ------------------------------------------------------------------------------------------- the task


def synthetic_task(world: dict[str, Any] | data.SyntheticConfig | None = None, *,
                   max_history: int = data.DEFAULT_MAX_HISTORY,
                   sid: dict[str, Any] | None = None, sid_dir: str | Path | None = None,
                   progress: bool = False) -> B.Task:
    """The synthetic world as a task: page samples, last day = test, the day before = validation, SIDs from
    RQ K-means on the catalogue's item vectors (saved to / reused from ``sid_dir``)."""
    config = world if isinstance(world, data.SyntheticConfig) else data.SyntheticConfig(**(world or {}))
    syn = data.generate_synthetic(config, progress=progress)
    samples = data.build_page_samples(syn.log(), syn.catalog, max_history=max_history, progress=progress)
    splits = data.time_split(samples, test_days=1, valid_days=1)
    table = _cached_sids(sid_dir, lambda: build_sid_table(
        syn.catalog.embeddings, list(syn.catalog.ids),
        train_rq_kmeans(syn.catalog.embeddings, RQKMeansConfig(**(sid or {})), progress=progress)))
    return B.Task(syn.catalog, splits, max_history, table=table, world=syn, name=SYNTHETIC)


def sequence_task(path: str | Path, *, max_history: int = data.DEFAULT_MAX_HISTORY, sids: str | Path | None = None,
                  sid: dict[str, Any] | None = None, sid_dir: str | Path | None = None,
                  progress: bool = False) -> B.Task:
    """An LC-Rec dataset as a task (leave-one-out). Without ``sids``, SIDs are built from the item text
    (MiniLM, ``sid["text_fields"]``) and RQ K-means, and cached in ``sid_dir``."""
    task = B.load_task(path, sids=sids, max_history=max_history, progress=progress)
    if task.table is None:
        from ..sid.build import item_embeddings

        settings = dict(sid or {})
        fields = settings.pop("text_fields", None)

        def build() -> SIDTable:
            vectors = item_embeddings(task.catalog, text_fields=fields, progress=progress)
            return build_sid_table(vectors, list(task.catalog.ids),
                                   train_rq_kmeans(vectors, RQKMeansConfig(**settings), progress=progress))
        task.table = _cached_sids(sid_dir, build)
    return task


def _cached_sids(directory: str | Path | None, build) -> SIDTable:
    if directory is not None and (Path(directory) / "sid_table.json").exists():
        return SIDTable.load(directory)
    table = build()
    if directory is not None:
        table.save(directory)
    return table


# ------------------------------------------------------------------------------------------ summaries


def summarise(results: dict[str, list[dict]], columns: list[str]) -> dict[str, dict[str, Any]]:
    """Mean and std (over seeds, ``ddof=0``; one run: std 0) of every column per row; a run's value of a column
    is ``run["metrics"][column]``, else ``run[column]`` (e.g. ``train_s``)."""
    rows = {}
    for label, runs in results.items():
        values = {c: [r["metrics"].get(c, r.get(c)) for r in runs] for c in columns}
        rows[label] = {c: {"mean": _mean(v), "std": _std(v), "values": v} for c, v in values.items()}
        rows[label]["seeds"] = [r["seed"] for r in runs]
    return rows


def _clean(values: list) -> list[float]:
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def _mean(values: list) -> float | None:
    v = _clean(values)
    return float(np.mean(v)) if v else None


def _std(values: list) -> float | None:
    v = _clean(values)
    return float(np.std(v)) if v else None


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table: ``mean ± std`` cells (std left out for single runs)."""
    columns = summary["columns"]
    lines = ["| run | seeds | " + " | ".join(columns) + " |", "|---|---:|" + "---:|" * len(columns)]
    for label, row in summary["rows"].items():
        cells = []
        for c in columns:
            m, s = row[c]["mean"], row[c]["std"]
            digits = 1 if c in ("train_s", "prompt_length") else 4
            if m is None:
                cells.append("-")
            elif len(_clean(row[c]["values"])) > 1:
                cells.append(f"{m:.{digits}f} ± {s:.{digits}f}")
            else:
                cells.append(f"{m:.{digits}f}")
        lines.append(f"| {label} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


