"""NVTX ranges so Nsight timelines name each genrec op (free without a GPU or under torch.compile), and the
refusal of inference-only ops to run where a gradient is wanted."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch

try:
    import nvtx as _nvtx
except ImportError:  # pragma: no cover - nvtx is a declared dependency
    _nvtx = None


@functools.cache
def _cuda_available() -> bool:  # asked once, at the first op call (every op call is on the decode path)
    return torch.cuda.is_available()


@contextlib.contextmanager
def nvtx_range(name: str) -> Iterator[None]:
    # Dynamo cannot trace the nvtx context manager, and under compile the range would mark tracing,
    # not execution; the profiler's record_function still names the op there.
    if _nvtx is None or torch.compiler.is_compiling() or not _cuda_available():
        yield
        return
    with _nvtx.annotate(name, domain="genrec"):
        yield


def wants_grad(tensors) -> bool:
    """Whether autograd would record an op on these tensors (None entries allowed)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def refuse_grad(op: str, tensors) -> None:
    """Inference-only ops have no backward: refuse inputs that want a gradient rather than silently cut it."""
    if wants_grad(tensors):
        raise RuntimeError(f"{op} is inference-only (no backward); run it under torch.no_grad(), or use the "
                           "model's forward for training")
