"""Training metrics: JSONL (always), TensorBoard (when installed and asked for), loss-curve plots (matplotlib).

One JSON object per line and log step, e.g.
``{"step": 20, "loss": 2.91, "lr": 0.00098, "tokens_per_s": 51234.0, "examples": 640, "epoch": 0.4,
"elapsed": 3.1, ...}``. ``step`` counts optimiser updates done, ``examples`` training examples consumed
(summed over ranks), ``elapsed`` seconds of training in this run and the runs it resumed.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .._io import atomic_file

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics JSONL file; a torn last line (a run killed mid-write) is skipped."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def truncate_metrics(path: str | Path, last_step: int) -> int:
    """Keep only the records with ``step <= last_step`` (a resumed run re-logs the steps after its checkpoint);
    rewrites the file atomically. Returns the number of records kept."""
    path = Path(path)
    if not path.exists():
        return 0
    kept = [r for r in read_metrics(path) if int(r.get("step", 0)) <= last_step]
    with atomic_file(path) as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
    return len(kept)


def _tensorboard_writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception as exc:  # tensorboard is optional: torch raises ImportError/ModuleNotFoundError without it
        warnings.warn(f"TensorBoard logging requested but unavailable ({exc}); writing JSONL only", stacklevel=3)
        return None
    return SummaryWriter(log_dir=str(log_dir))


class MetricsLogger:
    """Appends records to ``<out>/metrics.jsonl`` (flushed per record) and mirrors scalars to TensorBoard under
    ``<out>/tb`` when ``tensorboard=True`` and the package is installed. Inactive (a no-op) when
    ``enabled=False``, e.g. on ranks other than 0."""

    def __init__(self, out_dir: str | Path, *, enabled: bool = True, tensorboard: bool = False,
                 append: bool = False) -> None:
        self.path = Path(out_dir) / METRICS_FILE
        self.enabled = enabled
        self._file = None
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a" if append else "w", encoding="utf-8")
        if tensorboard:
            self._tb = _tensorboard_writer(Path(out_dir) / "tb")

    def log(self, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (v.item() if hasattr(v, "item") else v) for k, v in record.items()}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        if self._tb is not None:
            step = int(clean["step"])
            for key, value in clean.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _smooth(values: Sequence[float], weight: float) -> list[float]:
    """TensorBoard-style exponential moving average with bias correction."""
    if weight <= 0:
        return list(values)
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


def plot_loss_curves(runs: Mapping[str, str | Path] | Iterable[str | Path], out_png: str | Path, *,
                     key: str = "loss", x: str = "step", smooth: float = 0.0, title: str | None = None,
                     log_y: bool = False) -> Path:
    """Overlay the ``key`` curves of several runs (e.g. PW-NTP vs NTP as in the paper's Fig. 2a) into a PNG.

    ``runs`` maps a legend label to a metrics JSONL file (or a run directory holding ``metrics.jsonl``); a plain
    list is labelled by each run's directory name. ``x`` is any record field (``step``, ``examples``,
    ``epoch``, ``elapsed``); ``smooth`` an EMA weight in [0, 1) drawn over the faint raw curve. Uses the Agg
    canvas directly, so the global matplotlib backend is left alone. Returns the PNG path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not isinstance(runs, Mapping):
        paths = [Path(p) for p in runs]
        runs = {(p.name if p.is_dir() else p.parent.name) or str(p): p for p in paths}
    if not runs:
        raise ValueError("plot_loss_curves needs at least one run")
    if not 0.0 <= smooth < 1.0:
        raise ValueError(f"smooth must be in [0, 1), got {smooth}")
    fig = Figure(figsize=(6.4, 4.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    plotted = 0
    for label, path in runs.items():
        path = Path(path)
        if path.is_dir():
            path = path / METRICS_FILE
        records = [r for r in read_metrics(path) if key in r and x in r
                   and isinstance(r[key], (int, float)) and math.isfinite(r[key])]
        if not records:
            warnings.warn(f"run {label!r} ({path}) has no {key!r} records; left out of the plot", stacklevel=2)
            continue
        xs = [r[x] for r in records]
        ys = [r[key] for r in records]
        if smooth > 0:
            (line,) = ax.plot(xs, ys, alpha=0.25, linewidth=1)
            ax.plot(xs, _smooth(ys, smooth), color=line.get_color(), linewidth=1.8, label=str(label))
        else:
            ax.plot(xs, ys, linewidth=1.5, label=str(label))
        plotted += 1
    if plotted == 0:
        raise ValueError(f"none of the runs {list(runs)} has {key!r} records to plot")
    ax.set_xlabel(x)
    ax.set_ylabel(key)
    if log_y:
        ax.set_yscale("log")
    ax.set_title(title or f"training {key}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_file(out_png, "wb") as f:
        fig.savefig(f, format="png")
    return out_png
