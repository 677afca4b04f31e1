"""The hand-dispatched CPU kernels' narrower ISA paths (cpu/isa.h): the machine CI runs on takes its widest
path, so the AVX2 + FMA path (AMD EPYC machines without AVX-512) and the baseline path are run here in child
processes with GENREC_CPU_ISA capping the ISA, against the pure-PyTorch references: the attention rows (a
decode step's attention and the whole fused beam search) and the row kernels (RMSNorm, SwiGLU, softmax)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHECK = r"""
import torch
from genrec_ext.ops import beam_search, reference, shared_prefix_attention
from python_tests.ops.test_beam_search import assert_same_beams, make_inputs
torch.manual_seed(0)
for beams, prefix, own, dim in ((50, 37, 2, 32), (3, 5, 1, 8), (7, 130, 3, 64)):
    q = torch.randn(2, beams, 4, dim); pk = torch.randn(2, 2, prefix, dim); pv = torch.randn(2, 2, prefix, dim)
    mask = torch.ones(2, prefix, dtype=torch.bool); mask[1, : prefix // 3] = False
    ok, ov = torch.randn(2, beams, 2, own, dim), torch.randn(2, beams, 2, own, dim)
    args = (q, pk, pv, mask, ok, ov, dim ** -0.5)
    torch.testing.assert_close(shared_prefix_attention(*args),
                               reference.shared_prefix_attention(*(a.double() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)).float(),
                               rtol=1e-4, atol=1e-5)
args = make_inputs(batch=3, prompt=12, hidden=32, heads=4, kv_heads=2, dim=8, inner=64, levels=(16, 16, 16),
                   items=500, width=20, dtype=torch.float32, pad=(0, 5, 11))
assert_same_beams(beam_search(**args), reference.beam_search(**args), 1e-4)  # fused: attention rows + row kernels
assert_same_beams(beam_search(**args, fused=False), reference.beam_search(**args), 1e-4)  # the stage ops
print("ok")
"""


@pytest.mark.parametrize("isa", ["avx2", "baseline"])
def test_narrower_isa_paths_match_the_references(isa):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "GENREC_CPU_ISA": isa, "OMP_NUM_THREADS": "1", "PYTHONPATH": root}
    done = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
