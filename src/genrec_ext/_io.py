"""Small file-system helpers shared across stages."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np


@contextlib.contextmanager
def atomic_directory(directory: str | Path) -> Iterator[Path]:
    """Write a directory all-or-nothing: yields a temporary directory beside ``directory``; when the block
    succeeds it takes ``directory``'s place (an old one is swapped out, then removed), when it fails it is
    deleted and ``directory`` is left as it was."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        yield tmp
        if directory.exists():
            old = directory.with_name(directory.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (where the platform has directory file descriptors)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Write a file all-or-nothing: yields a new temporary file beside ``path`` (``.<name>.<unique>.tmp``, open
    in ``mode``: "w" text as UTF-8, or "wb"); when the block succeeds it is flushed, fsync'ed and renamed onto
    ``path``, when it fails it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask's permissions, like open()
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def read_meta(directory: str | Path, name: str, what: str, fmt: str | None = None) -> dict[str, Any]:
    """The JSON metadata file ``name`` of a saved directory (a model, a reward model, a recommender), with
    errors that say what the directory should have been; ``fmt`` checks its ``format`` field."""
    path = Path(directory) / name
    if not path.exists():
        raise FileNotFoundError(f"{directory} is not {what} (missing {name})")
    meta = json.loads(path.read_text())
    if fmt is not None and meta.get("format") != fmt:
        raise ValueError(f"{path}: format {meta.get('format')!r} is not {fmt!r}")
    return meta


def json_ready(obj: Any) -> Any:
    """``obj`` with NaN floats as None (JSON has no NaN) and numpy scalars as Python numbers, recursively."""
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.generic):
        return json_ready(obj.item())
    return obj
