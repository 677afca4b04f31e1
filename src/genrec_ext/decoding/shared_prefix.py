"""Decode steps for beams that share one prompt, without copying the prompt's KV cache per beam.

After prefill, every query's W beams differ only in the at most L - 1 SID tokens decoded so far. A standard
KV cache copies (and re-gathers, every step) the whole prompt cache W times; here the prompt's keys and
values stay once per query and all its beams attend to them (``genrec::shared_prefix_attention``), while only
the decoded tokens' keys and values live per beam (and are reordered by parent beam, a few rows each step).

The layer maths is Qwen2's (RMSNorm, q/k/v with bias, rotary embeddings, GQA, SwiGLU MLP) on the backbone's
own weights, so the result equals a cached forward of the full sequence (tested), written for a decode step's
shape: q/k/v and gate/up are one GEMM each (fused copies of the weights, rebuilt only when the weights
change), queries and keys are rotated together, and the rotation is computed once per query, not per beam.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import shared_prefix_attention


def _linear_bias(linear: nn.Linear) -> Tensor:
    return linear.bias if linear.bias is not None else linear.weight.new_zeros(linear.out_features)


_FUSED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fused_weights(layer: nn.Module) -> tuple[Tensor, Tensor, Tensor]:
    """(q|k|v weight, q|k|v bias, gate|up weight) of a decoder layer, cached until any of them changes."""
    attn, mlp = layer.self_attn, layer.mlp
    parts = [attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight, mlp.gate_proj.weight, mlp.up_proj.weight]
    parts += [p.bias for p in (attn.q_proj, attn.k_proj, attn.v_proj) if p.bias is not None]
    key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in parts)
    hit = _FUSED.get(layer)
    if hit is None or hit[0] != key:
        projections = (attn.q_proj, attn.k_proj, attn.v_proj)
        with torch.no_grad():
            hit = (key, torch.cat([p.weight for p in projections]), torch.cat([_linear_bias(p) for p in projections]),
                   torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]))
        _FUSED[layer] = hit
    return hit[1:]


def _rotate(x: Tensor, cos: Tensor, sin_signed: Tensor) -> Tensor:
    """Rotary embedding ``x * cos + rotate_half(x) * sin``; rotate_half(x) = roll(x, d/2) * [-1.., +1..], with
    the sign folded into ``sin_signed``."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), sin_signed)


class SharedPrefixDecoder:
    def __init__(self, backbone_model, cache, prompt_mask: Tensor, steps: int) -> None:
        self.model = backbone_model
        self.layers = backbone_model.layers
        self.prefix = [(layer.keys, layer.values) for layer in cache.layers]  # [B, kvh, P, hd] each (transformers 5)
        self.heads, self.kv_heads = backbone_model.config.num_attention_heads, backbone_model.config.num_key_value_heads
        self.head_dim = self.layers[0].self_attn.head_dim
        self.prompt_mask = prompt_mask  # [B, P] bool, false in the left padding
        self.steps = steps
        # Every layer's decoded keys and values in one buffer, [layers, 2, B, W, kvh, steps, hd], filled up to
        # `length`: a step writes one slot per layer, and a reorder is one gather for all layers.
        self.own: Tensor | None = None
        self.length = 0

    def reorder(self, parents: Tensor) -> None:
        """New beam (b, i) continues old beam (b, parents[b, i]) (parents >= 0)."""
        if self.length:
            filled = self.own[..., : self.length, :]
            index = parents[None, None, :, :, None, None, None].expand(filled.shape)
            filled.copy_(filled.gather(3, index))

    def step(self, embeds: Tensor, positions: Tensor) -> Tensor:
        """One token per beam: ``embeds [B, W, H]`` at ``positions [B]`` (the same for all of a query's beams)
        -> final hidden states ``[B, W, H]``."""
        bsz, beams, hidden = embeds.shape
        if self.length == self.steps:
            raise RuntimeError(f"SharedPrefixDecoder was made for {self.steps} steps")
        t = self.length
        heads, kv_heads, hd = self.heads, self.kv_heads, self.head_dim
        if self.own is None:
            self.own = embeds.new_empty(len(self.layers), 2, bsz, beams, kv_heads, self.steps, hd)
        h = embeds
        cos, sin = self.model.rotary_emb(h[:, :1], positions[:, None])  # [B, 1, hd]: once per query
        half = cos.shape[-1] // 2
        cos, sin_signed = cos[:, :, None], torch.cat([-sin[..., :half], sin[..., half:]], -1)[:, :, None]
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            w_qkv, b_qkv, w_gate_up = _fused_weights(layer)
            norm = layer.input_layernorm
            x = F.rms_norm(h, (hidden,), norm.weight, norm.variance_epsilon)
            qkv = F.linear(x, w_qkv, b_qkv).view(bsz, beams, heads + 2 * kv_heads, hd)
            qk = _rotate(qkv[:, :, : heads + kv_heads], cos, sin_signed)
            q, k, v = qk[:, :, :heads], qk[:, :, heads:], qkv[:, :, heads + kv_heads :]  # k, v: [B, W, kvh, hd]
            own = self.own[i, :, :, :, :, : t + 1]  # [2, B, W, kvh, t + 1, hd]
            own[0, :, :, :, t] = k
            own[1, :, :, :, t] = v
            prefix_k, prefix_v = self.prefix[i]
            out = shared_prefix_attention(q, prefix_k, prefix_v, self.prompt_mask, own[0], own[1], attn.scaling)
            h = h + attn.o_proj(out.reshape(bsz, beams, -1))
            norm = layer.post_attention_layernorm
            gate, up = F.linear(F.rms_norm(h, (hidden,), norm.weight, norm.variance_epsilon), w_gate_up).chunk(2, -1)
            h = h + layer.mlp.down_proj(layer.mlp.act_fn(gate) * up)
        self.length += 1
        return self.model.norm(h)
