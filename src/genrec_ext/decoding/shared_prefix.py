"""Prefill and decode steps for beams that share one prompt, without copying the prompt's KV cache per beam.

After prefill, every query's W beams differ only in the at most L - 1 SID tokens decoded so far. A standard
KV cache copies (and re-gathers, every step) the whole prompt cache W times; here the prompt's keys and
values stay once per query and all its beams attend to them (``genrec::shared_prefix_attention``), while only
the decoded tokens' keys and values live per beam (and are reordered by parent beam, a few rows each step).

The layer maths is Qwen2's (RMSNorm, q/k/v with bias, rotary embeddings, GQA, SwiGLU MLP) on the backbone's
own weights, so the results equal the model's forward (tested). Each layer is two fused ops around its
attention (``genrec::layer_qkv``: norm, one q|k|v GEMM, rotary; ``genrec::layer_out``: output projection,
norm, SwiGLU, residuals), on fused copies of the q|k|v and gate|up weights made when the decoder is built.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import layer_out, layer_qkv, rms_norm, shared_prefix_attention


@dataclass(frozen=True)
class _LayerWeights:
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


def _layer_weights(layer: nn.Module) -> _LayerWeights:
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
            weights = _LayerWeights(
                layer.input_layernorm.weight, torch.cat([p.weight for p in projections]),
                torch.cat([_bias(p, p.out_features) for p in projections]) if has_bias else None,
                attn.o_proj.weight, attn.o_proj.bias, layer.post_attention_layernorm.weight,
                torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), mlp.down_proj.weight,
                layer.input_layernorm.variance_epsilon, layer.post_attention_layernorm.variance_epsilon,
                attn.scaling)
        hit = (key, parts, weights)
        _FUSED[layer] = hit
    return hit[2]


class SharedPrefixDecoder:
    """``prefill`` once per batch of prompts, then up to ``steps`` calls of ``step`` (one token per beam), with
    ``reorder`` between them as beams are re-ranked."""

    def __init__(self, backbone_model, steps: int) -> None:
        config = backbone_model.config
        if config.hidden_act != "silu":
            raise ValueError(f"the fused decoder implements SwiGLU (silu); this model's MLP uses {config.hidden_act!r}")
        if getattr(config, "use_sliding_window", False):
            raise ValueError("the fused decoder implements full causal attention; this model uses sliding-window "
                             "attention (config.use_sliding_window)")
        self.model = backbone_model
        self.weights = [_layer_weights(layer) for layer in backbone_model.layers]
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = backbone_model.layers[0].self_attn.head_dim
        self.steps = steps
        self.prefix: list[tuple[Tensor, Tensor]] = []  # per layer, the prompt's keys/values [B, Hkv, P, D]
        self.prompt_mask: Tensor | None = None  # [B, P] bool, false in the left padding
        self.step_rotary: tuple[Tensor, Tensor] | None = None  # cos / sin [steps, B, D] of the decode positions
        # Every layer's decoded keys and values in one buffer, [layers, 2, B, W, Hkv, steps, D], filled up to
        # `length`: a step writes one slot per layer, and a reorder is one gather for all layers.
        self.own: Tensor | None = None
        self.length = 0

    def prefill(self, embeds: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        """The prompts ``embeds [B, P, H]`` (left-padded: ``mask [B, P]`` false in the padding, ``positions
        [B, P]``) -> the last position's final hidden state ``[B, H]``; keeps every layer's keys and values.
        Decode step t then runs at position ``positions[:, -1] + t + 1``."""
        bsz, plen, hidden = embeds.shape
        heads, kv_heads, hd = self.heads, self.kv_heads, self.head_dim
        mask = mask.bool()
        # The rotary tables of the prompt and of every decode step, in one call of the backbone's own rotary
        # module (whatever its rope scaling).
        ahead = positions[:, -1:] + torch.arange(1, self.steps + 1, device=positions.device)
        cos, sin = self.model.rotary_emb(embeds, torch.cat([positions, ahead], 1))  # [B, P + steps, D]
        # Step t reads rows [t]: laid out [steps, B, D] so that they are dense (layer_qkv would copy them per layer).
        self.step_rotary = (cos[:, plen:].transpose(0, 1).contiguous(), sin[:, plen:].transpose(0, 1).contiguous())
        cos, sin = cos[:, :plen].reshape(-1, hd), sin[:, :plen].reshape(-1, hd)
        # Causal over real keys; a padding query also sees itself, so that no row is fully masked (NaN).
        j = torch.arange(plen, device=embeds.device)
        causal = j[None, :] <= j[:, None]
        attend = causal[None] & (mask[:, None, :] | torch.eye(plen, dtype=torch.bool, device=embeds.device)[None])
        h = embeds.reshape(bsz * plen, hidden)
        self.prefix = []
        for i, w in enumerate(self.weights):
            last = i + 1 == len(self.weights)
            qkv = layer_qkv(h, w.input_norm, w.eps, w.qkv, w.qkv_bias, cos, sin, heads + kv_heads)
            qkv = qkv.view(bsz, plen, heads + 2 * kv_heads, hd).transpose(1, 2)  # [B, heads, P, D]
            q, k, v = qkv[:, :heads], qkv[:, heads : heads + kv_heads], qkv[:, heads + kv_heads :]
            self.prefix.append((k.contiguous(), v.contiguous()))  # read every step: made dense once
            if last:  # only the last position's output is needed from the last layer
                q, h = q[:, :, -1:], h.view(bsz, plen, hidden)[:, -1]
            out = F.scaled_dot_product_attention(q, k, v, attend[:, None, -q.shape[2] :], scale=w.scaling,
                                                 enable_gqa=heads != kv_heads)
            out = out.transpose(1, 2).reshape(h.shape[0], heads * hd)
            h = layer_out(h, out, w.o, w.o_bias, w.post_norm, w.post_eps, w.gate_up, w.down)
        self.prompt_mask = mask
        self.own, self.length = None, 0
        return self._final_norm(h)

    def _final_norm(self, h: Tensor) -> Tensor:
        return rms_norm(h, self.model.norm.weight, self.model.norm.variance_epsilon)

    def reorder(self, parents: Tensor) -> None:
        """New beam (b, i) continues old beam (b, parents[b, i]) (parents >= 0)."""
        if self.length:
            filled = self.own[..., : self.length, :]
            index = parents[None, None, :, :, None, None, None].expand(filled.shape)
            filled.copy_(filled.gather(3, index))

    def step(self, embeds: Tensor) -> Tensor:
        """One token per beam, ``embeds [B, W, H]``, at the next position (the same for all of a query's beams)
        -> final hidden states ``[B, W, H]``."""
        if self.prompt_mask is None:
            raise RuntimeError("SharedPrefixDecoder.step before prefill")
        if self.length == self.steps:
            raise RuntimeError(f"SharedPrefixDecoder was made for {self.steps} steps")
        bsz, beams, hidden = embeds.shape
        t, heads, kv_heads, hd = self.length, self.heads, self.kv_heads, self.head_dim
        if self.own is None:
            self.own = embeds.new_empty(len(self.weights), 2, bsz, beams, kv_heads, self.steps, hd)
        cos, sin = self.step_rotary[0][t], self.step_rotary[1][t]  # [B, D]: shared by a query's beams
        h = embeds.reshape(bsz * beams, hidden)
        for i, w in enumerate(self.weights):
            qkv = layer_qkv(h, w.input_norm, w.eps, w.qkv, w.qkv_bias, cos, sin, heads + kv_heads)
            qkv = qkv.view(bsz, beams, heads + 2 * kv_heads, hd)
            own = self.own[i, :, :, :, :, : t + 1]  # [2, B, W, Hkv, t + 1, D]
            own[:, :, :, :, t] = qkv[:, :, heads:].unflatten(2, (2, kv_heads)).movedim(2, 0)  # k and v at once
            prefix_k, prefix_v = self.prefix[i]
            out = shared_prefix_attention(qkv[:, :, :heads], prefix_k, prefix_v, self.prompt_mask, own[0], own[1],
                                          w.scaling)
            h = layer_out(h, out.view(bsz * beams, heads * hd), w.o, w.o_bias, w.post_norm, w.post_eps, w.gate_up,
                          w.down)
        self.length += 1
        return self._final_norm(h).view(bsz, beams, hidden)
