"""Metric reports: a Markdown table (rows = runs such as "constrained", "PW-NTP"; columns = metrics) and JSON."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_file

Results = Mapping[str, Mapping[str, float]] | Mapping[str, float]


def _rows(results: Results, label: str) -> dict[str, dict[str, float]]:
    """``{run: {metric: value}}``; a flat ``{metric: value}`` becomes the single run ``label``."""
    if not isinstance(results, Mapping):
        raise TypeError(f"results must be a dict, got {type(results).__name__}")
    nested = [isinstance(v, Mapping) for v in results.values()]
    if all(nested) and results:
        return {str(run): dict(m) for run, m in results.items()}
    if any(nested):
        raise TypeError("results must be either {metric: value} or {run: {metric: value}}, not a mix")
    return {label: dict(results)}


def _number(value: Any, where: str) -> int | float:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where} must be a number, got {value!r}")
    return value


def _cell(value: int | float, digits: int) -> str:
    if isinstance(value, int):  # counts such as "queries"
        return str(value)
    return "nan" if math.isnan(value) else f"{value:.{digits}f}"


def _escape(text: str) -> str:
    return text.replace("|", r"\|")


def format_table(
    results: Results,
    *,
    columns: Sequence[str] | None = None,
    digits: int = 4,
    index_name: str = "run",
    label: str = "result",
) -> str:
    """A Markdown table of ``results``, one row per run in the given order.

    Args:
        results: ``{run: {metric: value}}`` or one run's ``{metric: value}`` (shown as the row ``label``).
        columns: metrics to show, in this order (default: every metric, in first-seen order); a run lacking
            one shows ``-``.
        digits: decimals of float values (ints, e.g. ``queries``, are shown as they are; NaN as ``nan``).
        index_name: header of the first column.
    """
    if digits < 0:
        raise ValueError(f"digits must be >= 0, got {digits}")
    rows = _rows(results, label)
    seen = list(dict.fromkeys(m for metrics in rows.values() for m in metrics))
    if columns is None:
        columns = seen
    else:
        columns = list(columns)
        missing = [c for c in columns if c not in seen]
        if missing:
            raise ValueError(f"columns {missing} are in no run (known: {seen})")
    header = [index_name, *columns]
    body = [[_escape(run), *(_cell(_number(m[c], f"results[{run!r}][{c!r}]"), digits) if c in m else "-"
                             for c in columns)] for run, m in rows.items()]
    widths = [max(len(_escape(h)), 3, *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    lines = ["| " + " | ".join(_escape(h).ljust(w) for h, w in zip(header, widths)) + " |",
             # Metrics right-aligned so that decimals line up.
             "| " + " | ".join("-" * w if i == 0 else "-" * (w - 1) + ":" for i, w in enumerate(widths)) + " |"]
    lines += ["| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
              + " |" for r in body]
    return "\n".join(lines)


def _jsonable(results: Results) -> Any:
    # NaN is not JSON: it is written as null.
    def num(v: Any, where: str) -> int | float | None:
        v = _number(v, where)
        return None if isinstance(v, float) and math.isnan(v) else v

    return {str(k): ({str(m): num(x, f"results[{k!r}][{m!r}]") for m, x in v.items()} if isinstance(v, Mapping)
                     else num(v, f"results[{k!r}]")) for k, v in results.items()}


def write_report(results: Results, out_dir: str | Path, name: str, **table_kwargs: Any) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.md`` (the :func:`format_table` table; ``table_kwargs`` go to it, a flat
    ``results`` is labelled ``name``) and ``<out_dir>/<name>.json`` (``results`` with full precision, NaN as
    null). Creates ``out_dir``; each file is replaced atomically. Returns ``(md_path, json_path)``."""
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        raise ValueError(f"name must be a plain file stem, got {name!r}")
    _rows(results, name)  # validates the shape
    table_kwargs.setdefault("label", name)
    table = format_table(results, **table_kwargs)
    payload = json.dumps(_jsonable(results), indent=2, allow_nan=False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / f"{name}.md", out / f"{name}.json"
    for path, text in ((md, table), (js, payload)):
        with atomic_file(path) as f:
            f.write(text + "\n")
    return md, js
