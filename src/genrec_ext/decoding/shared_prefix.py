"""Decode steps for beams that share one prompt, without copying the prompt's KV cache per beam.

After prefill, every query's W beams differ only in the at most L - 1 SID tokens decoded so far. A standard
KV cache copies (and re-gathers, every step) the whole prompt cache W times; here the prompt's keys and
values stay once per query and all its beams attend to them through a broadcasting einsum, while only the
decoded tokens' keys and values live per beam (and are reordered by parent beam, a few rows each step).
The layer maths is Qwen2's (RMSNorm, q/k/v with bias, rotary embeddings, GQA, SwiGLU MLP), reusing the
backbone's own modules, so the result equals a cached forward of the full sequence (tested).
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb


def _layer_kv(cache, index: int) -> tuple[Tensor, Tensor]:
    """Keys and values of one layer from a transformers cache (5.x ``layers[i].keys``, older ``key_cache``)."""
    if hasattr(cache, "layers"):
        return cache.layers[index].keys, cache.layers[index].values
    return cache.key_cache[index], cache.value_cache[index]


class SharedPrefixDecoder:
    def __init__(self, backbone_model, cache, prompt_mask: Tensor) -> None:
        self.model = backbone_model
        self.layers = backbone_model.layers
        self.prefix = [_layer_kv(cache, i) for i in range(len(self.layers))]  # [B, kvh, P, hd] each
        self.prefix_bias = torch.zeros(prompt_mask.shape, dtype=torch.float32, device=prompt_mask.device).masked_fill(
            ~prompt_mask, float("-inf"))[:, None, None, None, :]  # [B, 1, 1, 1, P]
        self.own: list[tuple[Tensor, Tensor] | None] = [None] * len(self.layers)  # [B, W, kvh, t, hd]

    def reorder(self, parents: Tensor) -> None:
        """New beam (b, i) continues old beam (b, parents[b, i]) (parents >= 0)."""
        for i, kv in enumerate(self.own):
            if kv is not None:
                idx = parents[:, :, None, None, None].expand(-1, -1, *kv[0].shape[2:])
                self.own[i] = (kv[0].gather(1, idx), kv[1].gather(1, idx))

    def step(self, embeds: Tensor, positions: Tensor) -> Tensor:
        """One token per beam: ``embeds [B, W, H]`` at ``positions [B, W]`` -> final hidden states ``[B, W, H]``."""
        bsz, beams, hidden = embeds.shape
        h = embeds
        cos, sin = self.model.rotary_emb(h.reshape(bsz * beams, 1, hidden), positions.reshape(bsz * beams, 1))
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            hd = attn.head_dim
            q = attn.q_proj(x).view(bsz * beams, -1, 1, hd)
            k = attn.k_proj(x).view(bsz * beams, -1, 1, hd)
            v = attn.v_proj(x).view(bsz, beams, -1, 1, hd)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            kv_heads = k.shape[1]
            k = k.view(bsz, beams, kv_heads, 1, hd)
            own = self.own[i]
            own_k = k if own is None else torch.cat([own[0], k], 3)
            own_v = v if own is None else torch.cat([own[1], v], 3)
            self.own[i] = (own_k, own_v)
            prefix_k, prefix_v = self.prefix[i]
            qg = q.view(bsz, beams, kv_heads, -1, hd) * attn.scaling  # GQA: query heads grouped per KV head
            scores = torch.cat([torch.einsum("bwkgd,bkpd->bwkgp", qg, prefix_k).float() + self.prefix_bias,
                                torch.einsum("bwkgd,bwktd->bwkgt", qg, own_k).float()], -1)
            probs = torch.softmax(scores, -1).to(qg.dtype)
            plen = prefix_k.shape[2]
            out = (torch.einsum("bwkgp,bkpd->bwkgd", probs[..., :plen], prefix_v)
                   + torch.einsum("bwkgt,bwktd->bwkgd", probs[..., plen:], own_v))
            h = h + attn.o_proj(out.reshape(bsz, beams, -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return self.model.norm(h)
