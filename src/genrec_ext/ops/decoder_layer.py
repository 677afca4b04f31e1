"""genrec::layer_qkv and genrec::layer_out — a Qwen2 decoder layer as two fused halves around its attention —
and genrec::rms_norm, the model's final norm.

An eager layer is ~20 ATen calls (RMSNorm alone is five on CPU); at beam-search sizes (a few hundred rows of a
small model) their dispatch, not their arithmetic, is the cost. Each half is one op: its GEMMs are ATen's
(residual adds folded into addmm) and everything between them is one pass of our kernel. Prefill and decode
steps share both halves and differ only in the attention between them. Inference only (no backward):
training uses the model's ordinary forward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._nvtx import nvtx_range, refuse_grad

_QKV = "genrec::layer_qkv"
_OUT = "genrec::layer_out"
_NORM = "genrec::rms_norm"


@torch.library.register_fake(_QKV)
def _layer_qkv_fake(x, norm_weight, eps, weight, bias, cos, sin, rotated_heads):
    return x.new_empty(x.shape[0], weight.shape[0])


@torch.library.register_fake(_OUT)
def _layer_out_fake(h, attn, o_weight, o_bias, norm_weight, eps, gate_up_weight, down_weight):
    return h.new_empty(h.shape)


@torch.library.register_fake(_NORM)
def _rms_norm_fake(x, weight, eps):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def layer_qkv(x: Tensor, norm_weight: Tensor, eps: float, weight: Tensor, bias: Tensor | None, cos: Tensor,
              sin: Tensor, rotated_heads: int) -> Tensor:
    """RMSNorm -> q|k|v projection -> rotary embedding of the query and key heads.

    Args:
        x: ``[N, H]`` hidden states (float32 / bfloat16 / float16 / float64).
        norm_weight, eps: the layer's input RMSNorm.
        weight, bias: the fused projection ``[O, H]`` (q rows, then k, then v) and its bias ``[O]`` or None.
        cos, sin: ``[M, D]`` rotary tables (transformers' ``rotary_emb`` output), N % M == 0: each run of
            N / M consecutive rows shares a row (the beams of one query share a position).
        rotated_heads: how many leading heads of width D to rotate (query heads + key heads).

    Returns:
        ``[N, O]``, rotated where asked.
    """
    refuse_grad("layer_qkv", (x, norm_weight, weight, bias))
    with nvtx_range(_QKV):
        return torch.ops.genrec.layer_qkv(x, norm_weight, eps, weight, bias, cos, sin, rotated_heads)


def layer_out(h: Tensor, attn: Tensor, o_weight: Tensor, o_bias: Tensor | None, norm_weight: Tensor, eps: float,
              gate_up_weight: Tensor, down_weight: Tensor) -> Tensor:
    """``h1 = h + attn o^T (+ o_bias)``, then ``h1 + down(silu(gate) * up)`` of ``RMSNorm(h1)``.

    Args:
        h: ``[N, H]`` the layer's input (residual stream); attn: ``[N, A]`` the attention output.
        o_weight, o_bias: the output projection ``[H, A]`` and its bias or None.
        norm_weight, eps: the post-attention RMSNorm.
        gate_up_weight: ``[2I, H]`` gate rows, then up rows; down_weight: ``[H, I]``.

    Returns:
        ``[N, H]``, the layer's output.
    """
    refuse_grad("layer_out", (h, attn, o_weight, o_bias, norm_weight, gate_up_weight, down_weight))
    with nvtx_range(_OUT):
        return torch.ops.genrec.layer_out(h, attn, o_weight, o_bias, norm_weight, eps, gate_up_weight, down_weight)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """transformers' Qwen2RMSNorm over the last dimension of ``x [..., H]`` (a model's final norm), in one
    pass (``F.rms_norm`` is a chain of ATen ops on CPU)."""
    refuse_grad("rms_norm", (x, weight))
    with nvtx_range(_NORM):
        return torch.ops.genrec.rms_norm(x, weight, eps)
