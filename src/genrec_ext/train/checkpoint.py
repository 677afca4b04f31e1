"""Training checkpoints: atomic writes, discovery of the latest, RNG capture/restore, vocabulary checks.

Layout: ``<out>/checkpoints/step_<8 digits>.pt``. A file of that name only ever appears through
``os.replace`` of a fully written and fsync'ed temporary in the same directory, so every name that exists is a
complete checkpoint: a crash while writing leaves a stray ``.step_*.tmp`` (cleaned up on the next start) and the
previous checkpoints untouched. Checkpoints hold plain tensors and Python values only (numpy RNG arrays are
stored as tensors), so they load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_file

CHECKPOINT_DIR = "checkpoints"
FORMAT = "genrec-sft-ckpt/1"
_NAME = re.compile(r"^step_(\d{8,})\.pt$")


class VocabularyMismatchError(ValueError):
    """The model's SID vocabulary is not the one a checkpoint was trained with."""


def checkpoint_path(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"step_{step:08d}.pt"


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``directory`` as ``(step, path)``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        m = _NAME.match(path.name)
        if m and path.is_file():
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest_checkpoint(directory: str | Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def remove_stale_temporaries(directory: str | Path) -> int:
    """Delete temporaries left by a writer that died (only call while no other writer is active)."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    removed = 0
    for path in directory.glob(".step_*.tmp"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary in the target's directory, fsync, then ``os.replace`` onto ``path``.
    If anything fails the temporary is removed and ``path`` (if it existed) is left as it was."""
    path = Path(path)
    with atomic_file(path, "wb") as f:
        torch.save(obj, f)
    return path


def save_checkpoint(directory: str | Path, step: int, state: dict[str, Any], keep_last: int | None = None) -> Path:
    """Write ``state`` as the checkpoint of ``step`` atomically, then prune to the newest ``keep_last``
    (the new one always kept; ``None`` or 0 keeps all)."""
    path = atomic_torch_save({"format": FORMAT, **state, "step": int(step)}, checkpoint_path(directory, step))
    if keep_last:
        for _, old in list_checkpoints(directory)[:-keep_last]:
            if old != path:
                old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise RuntimeError(f"cannot load checkpoint {path}: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise RuntimeError(f"{path} is not a genrec SFT checkpoint (format {found!r}, expected {FORMAT!r})")
    return state


def check_vocabulary(checkpoint: dict[str, Any], level_sizes: Sequence[int], path: str | Path = "checkpoint") -> None:
    """Raise :class:`VocabularyMismatchError` naming both vocabularies when they differ."""
    saved = [int(k) for k in checkpoint.get("vocab_level_sizes", [])]
    mine = [int(k) for k in level_sizes]
    if saved != mine:
        raise VocabularyMismatchError(
            f"cannot resume from {path}: it was trained with SID vocabulary level_sizes {saved}, but the model "
            f"has level_sizes {mine}. Use the SID table the checkpoint was trained with, or start a new run "
            f"(resume=False, a fresh out_dir).")


# ---------------------------------------------------------------------------------------------- RNG states


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU and (if present) every CUDA generator, as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        saved = state["cuda"]
        if len(saved) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in saved])
        else:  # another machine shape: restore what matches
            for i, s in enumerate(saved[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s.cpu(), i)
