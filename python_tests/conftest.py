"""Shared test settings: hypothesis profiles, the CUDA skip marker and argument mover."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("default", max_examples=40, deadline=None, derandomize=True)
settings.register_profile("thorough", max_examples=400, deadline=None)
settings.register_profile("quick", max_examples=5, deadline=None, derandomize=True)  # under compute-sanitizer
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

_NO_CUDA = "needs a CUDA device"
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason=_NO_CUDA)


def to_cuda(args: dict) -> dict:
    """An op's keyword arguments with every tensor moved to the GPU."""
    return {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in args.items()}


def pytest_collection_modifyitems(config, items):
    """Every test skipped for want of a CUDA device is also marked ``cuda``: `.ci/gpu` selects the GPU tests with
    ``-m cuda``, so none is missed for a name without "cuda" in it."""
    for item in items:
        if any(m.kwargs.get("reason") == _NO_CUDA for m in item.iter_markers("skipif")):
            item.add_marker(pytest.mark.cuda)
