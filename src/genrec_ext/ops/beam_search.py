"""genrec::beam_search — the whole point-wise beam search of a Qwen2 decoder over SID levels, as one op.

Prefill the prompts once (every layer's keys and values kept), then per SID level: the level's logits of every
live beam, one ``genrec::beam_step`` (trie-constrained or not), and below the last level one decode step of
the chosen tokens in which a query's beams share its prompt's keys and values
(``genrec::shared_prefix_attention``) and own only their decoded ones, reordered by parent beam.

At serving sizes a search is ~100 stage calls of a few microseconds of arithmetic each, so from Python the
calls, not the maths, were the cost; here they are made from C++, and on CPU each decode step's rows run as
independent tasks on all threads (a beam needs only its query's prompt cache and its own). Inference only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._nvtx import nvtx_range, refuse_grad
from .reference import acc_dtype

_OP = "genrec::beam_search"
LAYER_WEIGHTS = ("input_norm", "qkv", "o", "post_norm", "gate_up", "down")  # per layer, in the op's order


@torch.library.register_fake("genrec::_beam_search_stages")
@torch.library.register_fake(_OP)
def _beam_search_fake(embeds, prompt_mask, cos, sin, layer_weights, layer_biases, layer_eps, num_heads, num_kv_heads,
                      scaling, final_norm_weight, final_eps, head_weight, head_bias, sid_embedding, level_sizes,
                      child_offsets, child_codes, beam_width, constrained):
    torch._check(embeds.dim() == 3, lambda: f"beam_search: embeds must be [B, P, H], got {tuple(embeds.shape)}")
    shape = (embeds.shape[0], beam_width)
    scores = embeds.new_empty(shape, dtype=acc_dtype(embeds.dtype))
    return scores, embeds.new_empty((*shape, len(level_sizes)), dtype=torch.int64), \
        embeds.new_empty(shape, dtype=torch.int64)


def beam_search(embeds: Tensor, prompt_mask: Tensor, cos: Tensor, sin: Tensor, layer_weights: Sequence[Tensor],
                layer_biases: Sequence[Tensor | None], layer_eps: Sequence[float], num_heads: int, num_kv_heads: int,
                scaling: float, final_norm_weight: Tensor, final_eps: float, head_weight: Tensor,
                head_bias: Tensor | None, sid_embedding: Tensor, level_sizes: Sequence[int],
                child_offsets: Sequence[Tensor], child_codes: Sequence[Tensor], beam_width: int,
                constrained: bool = True, *, fused: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Top-``beam_width`` SIDs of each prompt.

    Args:
        embeds: ``[B, P, H]`` left-padded prompt embeddings; prompt_mask: bool ``[B, P]`` (false in padding).
        cos, sin: ``[B, P + L - 1, D]`` rotary tables of the prompt positions and the L - 1 decode positions.
        layer_weights: per layer the six tensors of :data:`LAYER_WEIGHTS` (fused q|k|v and gate|up, as
            ``layer_qkv`` / ``layer_out`` take them); layer_biases: per layer (q|k|v bias, o bias), None for
            none; layer_eps: per layer (input norm eps, post-attention norm eps).
        num_heads, num_kv_heads, scaling: the attention's heads (GQA) and softmax scale.
        final_norm_weight, final_eps: the model's final RMSNorm.
        head_weight, head_bias: ``[sum K, H]`` (and ``[sum K]``) the LM head's rows of the SID tokens, level by
            level; sid_embedding: ``[sum K, H]`` their input embeddings.
        level_sizes: K per level; child_offsets, child_codes: the trie's CSR arrays per depth
            (:class:`genrec_ext.sid.SIDTrie`).
        constrained: keep only codes that continue a valid SID (else any code of the level's block).
        fused: False runs the same search composed of the stage ops (``genrec::_beam_search_stages``: what
            CUDA runs), for tests and as a baseline.

    Returns:
        ``(scores [B, W], codes int64 [B, W, L], nodes int64 [B, W])``, best first: log-probabilities (float32;
        float64 for float64), the SIDs' codes and their leaf nodes in the trie (``-1`` when unconstrained);
        slots without a candidate hold ``-inf`` / ``-1``.
    """
    refuse_grad("beam_search", (embeds, *layer_weights, *layer_biases, final_norm_weight, head_weight, head_bias,
                                sid_embedding))
    op = torch.ops.genrec.beam_search if fused else torch.ops.genrec._beam_search_stages
    with nvtx_range(_OP):
        return op(embeds, prompt_mask, cos, sin, list(layer_weights), list(layer_biases), list(layer_eps), num_heads,
                  num_kv_heads, scaling, final_norm_weight, final_eps, head_weight, head_bias, sid_embedding,
                  list(level_sizes), list(child_offsets), list(child_codes), beam_width, constrained)
