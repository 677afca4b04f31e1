"""Shared benchmark plumbing: timing on CPU/CUDA, and writing a result table as Markdown + JSON."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def benchmark_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every benchmark takes: --device (default cuda when present) and --out (the table folder)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", type=Path, default=Path("bench_results"))
    return ap


def parse_ints(text: str) -> list[int]:
    """A comma-separated option ("1,16,64"; "1e5" is accepted) as ints: use as argparse ``type=``."""
    return [int(float(v)) for v in text.split(",")]


def time_samples(fn: Callable[[], object], device: str, reps: int, *, warmup: int = 1) -> list[float]:
    """Wall times of `reps` calls of `fn` in milliseconds, after `warmup` untimed ones (CUDA: synchronised
    around each call)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def measure(fn: Callable[[], object], device: str, *, budget_s: float = 1.0, min_reps: int = 3,
            warmup: int = 3) -> float:
    """Median wall time of `fn` in milliseconds: at least `min_reps` calls, more within `budget_s` (200 at most)."""
    times = time_samples(fn, device, 1, warmup=warmup)
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < budget_s and len(times) < 200):
        times += time_samples(fn, device, 1, warmup=0)
    return statistics.median(times)


def measure_interleaved(fns: dict[str, Callable[[], object]], device: str, *, budget_s: float = 1.0,
                        rounds: int = 5) -> dict[str, float]:
    """Median wall time (ms) of each of `fns`, measured in `rounds` alternating rounds of budget_s / rounds
    each, so that a shared machine whose speed drifts between seconds slows every variant alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(measure(fn, device, budget_s=budget_s / rounds, warmup=1))
    return {name: statistics.median(t) for name, t in times.items()}


def allowed_after_prefix(sid_tokens, eos_token_id: int | None = None) -> dict[tuple[int, ...], list[int]]:
    """The Python competitor's table (prefix_allowed_tokens_fn, MiniOneRec's LogitProcessor): each generated
    SID-token prefix -> the token ids that may follow it (``eos_token_id`` after a whole SID, when given)."""
    allowed: dict[tuple[int, ...], set[int]] = {}
    for row in np.asarray(sid_tokens).tolist():
        for depth in range(len(row)):
            allowed.setdefault(tuple(row[:depth]), set()).add(row[depth])
        if eos_token_id is not None:
            allowed.setdefault(tuple(row), set()).add(eos_token_id)
    return {k: sorted(v) for k, v in allowed.items()}


def print_row(row: dict) -> None:
    """One finished table row as it is measured (floats to 3 decimals), so long runs show progress."""
    print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)


def cpu_model() -> str:
    """CPU model, its widest vector ISA, the path our kernels take (GENREC_CPU_ISA caps it) and torch's."""
    model = platform.processor() or platform.machine()
    flags: list[str] = []
    try:
        text = Path("/proc/cpuinfo").read_text()
        if m := re.search(r"^model name\s*:\s*(.+)$", text, re.M):
            model = m.group(1).strip()
        if m := re.search(r"^flags\s*:\s*(.+)$", text, re.M):
            flags = m.group(1).split()
    except OSError:
        pass
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "baseline"
    cap = os.environ.get("GENREC_CPU_ISA")
    ours = f"our kernels capped to {cap}" if cap else "our kernels on the widest"
    extra = ", ".join(f"{k}={os.environ[k]}" for k in ("MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY") if k in os.environ)
    return (f"{model}, {isa} ({ours}; torch ISA {torch.backends.cpu.get_cpu_capability()}"
            + (f"; {extra}" if extra else "") + ")")


def machine_description(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return f"{cpu_model()}, {torch.get_num_threads()} threads (torch {torch.__version__})"


def write_table(rows: list[dict], columns: list[str], title: str, out_stem: Path, note: str = "") -> str:
    """Render `rows` as a Markdown table, print it, and save `<out_stem>.md` and `<out_stem>.json`."""

    def cell(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return "" if v is None else str(v)

    lines = [f"## {title}", "", note, ""] if note else [f"## {title}", ""]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    text = "\n".join(lines) + "\n"
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    out_stem.with_suffix(".md").write_text(text)
    out_stem.with_suffix(".json").write_text(json.dumps({"title": title, "note": note, "rows": rows}, indent=2))
    print(text)
    return text
