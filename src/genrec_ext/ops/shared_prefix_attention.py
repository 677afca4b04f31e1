"""genrec::shared_prefix_attention — decode-step attention for beams that share one prompt.

In beam search every query's W beams share the prompt and differ only in the few tokens decoded since. A
standard KV cache holds (and reorders, every step) W copies of the prompt's keys and values; this op reads
them once per query and adds each beam's own decoded keys and values, in one fused pass per beam and head
(scores, softmax and the weighted sum, nothing materialised). Inference only: it has no backward, since
training and teacher-forced scoring use the model's ordinary forward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._nvtx import nvtx_range, refuse_grad

_OP = "genrec::shared_prefix_attention"


@torch.library.register_fake(_OP)
def _shared_prefix_attention_fake(q, prefix_k, prefix_v, prefix_mask, own_k, own_v, scale):
    torch._check(q.dim() == 4, lambda: f"shared_prefix_attention: q must be [B, W, Hq, D], got {tuple(q.shape)}")
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def shared_prefix_attention(q: Tensor, prefix_k: Tensor, prefix_v: Tensor, prefix_mask: Tensor, own_k: Tensor,
                            own_v: Tensor, scale: float) -> Tensor:
    """Attention of one new token per beam over its query's prompt and its own decoded tokens.

    Args:
        q: ``[B, W, Hq, D]`` queries (rotary already applied), float32 / bfloat16 / float16 / float64.
        prefix_k, prefix_v: ``[B, Hkv, P, D]`` the prompt's keys and values (a transformers cache layer).
        prefix_mask: bool ``[B, P]``, true where the prompt position is real (false in padding).
        own_k, own_v: ``[B, W, Hkv, T, D]`` each beam's decoded keys and values, the current token's included.
        scale: the softmax scale (``head_dim ** -0.5`` for Qwen2).

    Returns:
        ``[B, W, Hq, D]``; query head ``h`` reads key/value head ``h // (Hq // Hkv)`` (GQA).
    """
    refuse_grad("shared_prefix_attention", (q, prefix_k, prefix_v, own_k, own_v))
    with nvtx_range(_OP):
        return torch.ops.genrec.shared_prefix_attention(q, prefix_k, prefix_v, prefix_mask, own_k, own_v, scale)
