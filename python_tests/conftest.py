"""Shared test settings: hypothesis profile, CUDA skip marker."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("default", max_examples=40, deadline=None, derandomize=True)
settings.register_profile("thorough", max_examples=400, deadline=None)
settings.register_profile("quick", max_examples=5, deadline=None, derandomize=True)  # under compute-sanitizer
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
