"""genrec::beam_step — one step of trie-constrained beam search over one SID level.

For B queries x W beams: log-softmax of each beam's logits over the level's K tokens, add the beam's running
score, keep only the children of the beam's trie node (constrained) or every code (unconstrained), and take
the top ``beam_width`` over all beams x candidates (ties: lower beam, then lower code). No host sync and no
Python per beam; on CUDA a step can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._nvtx import nvtx_range

_OP = "genrec::beam_step"


@torch.library.register_fake(_OP)
def _beam_step_fake(logits, scores, nodes, child_offsets, child_codes, beam_width, constrained):
    torch._check(logits.dim() == 3, lambda: f"beam_step: logits must be [B, W, K], got {tuple(logits.shape)}")
    shape = (logits.shape[0], beam_width)
    index = scores.new_empty(shape, dtype=torch.int64)
    return scores.new_empty(shape), index, torch.empty_like(index), torch.empty_like(index)


def beam_step(logits: Tensor, scores: Tensor, nodes: Tensor, child_offsets: Tensor, child_codes: Tensor,
              beam_width: int, constrained: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One beam-search step over one SID level.

    Args:
        logits: ``[B, W, K]`` the level's token logits per live beam (float32 / bfloat16 / float64).
        scores: ``[B, W]`` running log-probabilities (float32; float64 for float64 logits); ``-inf`` = dead.
        nodes: int64 ``[B, W]`` each beam's trie node at this depth (``-1`` = none).
        child_offsets, child_codes: this depth's CSR arrays of :class:`genrec_ext.sid.SIDTrie`.
        beam_width: beams to keep (``W'``).
        constrained: mask codes that continue no valid SID.

    Returns:
        ``(scores, codes, parents, child_nodes)``, each ``[B, W']``; slots without a candidate hold
        ``-inf`` / ``-1``, and never win later steps. ``child_nodes`` is ``-1`` when unconstrained.
    """
    with nvtx_range(_OP):
        return torch.ops.genrec.beam_step(logits, scores, nodes, child_offsets, child_codes, beam_width, constrained)
