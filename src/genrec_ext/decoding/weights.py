"""A Qwen2 decoder's weights as ``genrec::beam_search`` takes them: per layer the fused q|k|v and gate|up
projections (one GEMM each instead of three and two), cached until a weight changes."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class LayerWeights:
    input_norm: Tensor
    qkv: Tensor  # [(Hq + 2 Hkv) D, H]: q rows, then k, then v
    qkv_bias: Tensor | None
    o: Tensor
    o_bias: Tensor | None
    post_norm: Tensor
    gate_up: Tensor  # [2I, H]: gate rows, then up
    down: Tensor
    eps: float  # the input norm's
    post_eps: float  # the post-attention norm's
    scaling: float


@dataclass(frozen=True)
class SearchWeights:
    """A GenRec model's weights in ``genrec::beam_search``'s arguments: every layer's flattened in the op's
    order (``ops.beam_search.LAYER_WEIGHTS``), the final norm, and the LM-head / input-embedding rows of the SID
    tokens."""

    layer_weights: list[Tensor]
    layer_biases: list[Tensor | None]
    layer_eps: list[float]
    num_heads: int
    num_kv_heads: int
    scaling: float
    final_norm_weight: Tensor
    final_eps: float
    head_weight: Tensor
    head_bias: Tensor | None
    sid_embedding: Tensor

    @cached_property
    def op_arguments(self) -> dict:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


def _bias(linear: nn.Linear, out_features: int) -> Tensor:
    return linear.bias if linear.bias is not None else linear.weight.new_zeros(out_features)


# model -> (key, the source tensors, SearchWeights). Holding the sources keeps their memory from being reused
# by new weights that would then match the key.
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def clear_fused_weights() -> None:
    """Drop every cached fused weight copy. Needed only after editing weights in place through ``.data``
    (which bypasses the version counters the cache watches) or replacing a parameter object; ordinary
    training steps, ``load_state_dict`` and ``.to()`` are seen."""
    _CACHE.clear()


def layer_weights(layer: nn.Module) -> LayerWeights:
    """A Qwen2 decoder layer's weights in the fused ops' layout (q|k|v and gate|up concatenated: new tensors)."""
    attn, mlp = layer.self_attn, layer.mlp
    projections = (attn.q_proj, attn.k_proj, attn.v_proj)
    with torch.no_grad():
        has_bias = any(p.bias is not None for p in projections)
        return LayerWeights(
            layer.input_layernorm.weight, torch.cat([p.weight for p in projections]),
            torch.cat([_bias(p, p.out_features) for p in projections]) if has_bias else None,
            attn.o_proj.weight, attn.o_proj.bias, layer.post_attention_layernorm.weight,
            torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), mlp.down_proj.weight,
            layer.input_layernorm.variance_epsilon, layer.post_attention_layernorm.variance_epsilon, attn.scaling)


def _check_supported(config) -> None:
    if config.hidden_act != "silu":
        raise ValueError(f"the fused decoder implements SwiGLU (silu); this model's MLP uses {config.hidden_act!r}")
    if getattr(config, "use_sliding_window", False):
        raise ValueError("the fused decoder implements full causal attention; this model uses sliding-window "
                         "attention (config.use_sliding_window)")


def search_weights(model) -> SearchWeights:
    """A :class:`~genrec_ext.model.GenRecModel`'s weights for ``genrec::beam_search``, cached until any of them
    changes (its storage or version counter: an optimizer step, ``load_state_dict``, ``.to()``); refuses the
    decoder variants the fused layers do not implement."""
    backbone = model.backbone.model
    _check_supported(backbone.config)
    hit = _CACHE.get(model)
    # The key is checked on the parameters the cache was built from: walking the module tree again would cost
    # more than the rest of a small model's search.
    if hit is not None and hit[0] == [(p.data_ptr(), p._version) for p in hit[1]]:
        return hit[2]
    head, embedding = model.backbone.get_output_embeddings(), model.backbone.get_input_embeddings()
    sources = [*backbone.parameters(), head.weight, embedding.weight] + ([] if head.bias is None else [head.bias])
    layers = [layer_weights(layer) for layer in backbone.layers]
    if len({w.scaling for w in layers}) != 1:
        raise ValueError(f"the fused decoder takes one attention scale; this model's layers use "
                         f"{sorted({w.scaling for w in layers})}")
    flat, biases, eps = [], [], []
    for w in layers:
        flat += [w.input_norm, w.qkv, w.o, w.post_norm, w.gate_up, w.down]
        biases += [w.qkv_bias, w.o_bias]
        eps += [w.eps, w.post_eps]
    lo = model.token_offset + model.vocab.offsets[0]
    rows = slice(lo, lo + sum(model.vocab.level_sizes))  # the SID tokens, level by level
    config = backbone.config
    weights = SearchWeights(flat, biases, eps, config.num_attention_heads, config.num_key_value_heads,
                            layers[0].scaling, backbone.norm.weight, backbone.norm.variance_epsilon,
                            head.weight[rows], None if head.bias is None else head.bias[rows], embedding.weight[rows])
    _CACHE[model] = ([(p.data_ptr(), p._version) for p in sources], sources, weights)
    return weights
