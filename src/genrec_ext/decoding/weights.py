"""A Qwen2 decoder's weights as ``genrec::beam_search`` takes them: per layer the fused q|k|v and gate|up
projections (one GEMM each instead of three and two), cached until a weight changes."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

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
class DecoderWeights:
    """Every layer's weights flattened in the op's order (``ops.beam_search.LAYER_WEIGHTS``), and the shapes."""

    layer_weights: list[Tensor]
    layer_biases: list[Tensor | None]
    layer_eps: list[float]
    num_heads: int
    num_kv_heads: int
    scaling: float
    final_norm: Tensor
    final_eps: float


def _bias(linear: nn.Linear, out_features: int) -> Tensor:
    return linear.bias if linear.bias is not None else linear.weight.new_zeros(out_features)


# layer -> (key, the source tensors, fused weights). Holding the sources keeps their memory from being reused
# by new weights that would then match the key.
_FUSED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def clear_fused_weights() -> None:
    """Drop every cached fused weight copy. Needed only after editing weights in place through ``.data``
    (which bypasses the version counters the cache watches); ordinary training steps, ``load_state_dict``
    and ``.to()`` are seen."""
    _FUSED.clear()


def layer_weights(layer: nn.Module) -> LayerWeights:
    """A decoder layer's weights in the fused ops' layout, cached until any of them changes (their storage or
    version counter: an optimizer step, ``load_state_dict``, ``.to()``)."""
    attn, mlp = layer.self_attn, layer.mlp
    projections = (attn.q_proj, attn.k_proj, attn.v_proj)
    parts = [p.weight for p in projections] + [p.bias for p in projections if p.bias is not None]
    parts += [mlp.gate_proj.weight, mlp.up_proj.weight, attn.o_proj.weight, mlp.down_proj.weight,
              layer.input_layernorm.weight, layer.post_attention_layernorm.weight]
    key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in parts)
    hit = _FUSED.get(layer)
    if hit is None or hit[0] != key:
        with torch.no_grad():
            has_bias = any(p.bias is not None for p in projections)
            weights = LayerWeights(
                layer.input_layernorm.weight, torch.cat([p.weight for p in projections]),
                torch.cat([_bias(p, p.out_features) for p in projections]) if has_bias else None,
                attn.o_proj.weight, attn.o_proj.bias, layer.post_attention_layernorm.weight,
                torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), mlp.down_proj.weight,
                layer.input_layernorm.variance_epsilon, layer.post_attention_layernorm.variance_epsilon,
                attn.scaling)
        hit = (key, parts, weights)
        _FUSED[layer] = hit
    return hit[2]


def decoder_weights(backbone_model) -> DecoderWeights:
    """The weights of a transformers ``Qwen2Model`` for ``genrec::beam_search``; refuses the variants the fused
    layers do not implement."""
    config = backbone_model.config
    if config.hidden_act != "silu":
        raise ValueError(f"the fused decoder implements SwiGLU (silu); this model's MLP uses {config.hidden_act!r}")
    if getattr(config, "use_sliding_window", False):
        raise ValueError("the fused decoder implements full causal attention; this model uses sliding-window "
                         "attention (config.use_sliding_window)")
    layers = [layer_weights(layer) for layer in backbone_model.layers]
    flat, biases, eps = [], [], []
    for w in layers:
        flat += [w.input_norm, w.qkv, w.o, w.post_norm, w.gate_up, w.down]
        biases += [w.qkv_bias, w.o_bias]
        eps += [w.eps, w.post_eps]
    if len({w.scaling for w in layers}) != 1:
        raise ValueError(f"the fused decoder takes one attention scale; this model's layers use "
                         f"{sorted({w.scaling for w in layers})}")
    return DecoderWeights(flat, biases, eps, config.num_attention_heads, config.num_key_value_heads, layers[0].scaling,
                          backbone_model.norm.weight, backbone_model.norm.variance_epsilon)
