"""NVTX ranges so Nsight timelines name each genrec op; free without a GPU or under torch.compile."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

try:
    import nvtx as _nvtx
except ImportError:  # pragma: no cover - nvtx is a declared dependency
    _nvtx = None


@contextlib.contextmanager
def nvtx_range(name: str) -> Iterator[None]:
    # Dynamo cannot trace the nvtx context manager, and under compile the range would mark tracing,
    # not execution; the profiler's record_function still names the op there.
    if _nvtx is None or torch.compiler.is_compiling() or not torch.cuda.is_available():
        yield
        return
    with _nvtx.annotate(name, domain="genrec"):
        yield
