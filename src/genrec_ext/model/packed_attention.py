"""Attention for shared-prefix packed rows without the dense ``[S, S]`` block mask.

Why: a packed row is ``<bos>``, the history, then many sample blocks (a 10-item page is 32 positions). Under one
dense block-causal mask every block also scores every other block's positions only to mask them out: for a row of
50 history vectors and 30 page blocks, 95% of the ``S^2`` scores are wasted, and for small models that attention
cost more than the sharing saved (packed page logs trained no faster than unpacked). Here the row is laid out with
each block in its own slot of ``block_width`` positions (``collate_packed``), and attention is two dense SDPA calls
with no waste beyond padding:

* the prompt (``<bos>`` + history vectors) attends causally to itself;
* each block's queries attend to the prompt's keys (the first ``1 + prefix`` of them: ``<bos>`` and its own
  history prefix) and causally to its own slot; the prompt's keys and values are broadcast to the blocks, as a
  shared prompt KV is in serving.

It plugs into the Hugging Face decoder as a registered attention function, switched on only while a packed batch
runs (:func:`packed_attention_enabled`): the mask argument the decoder passes down is then a
:class:`PackedAttention` plan instead of a tensor.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import AttentionInterface

NAME = "genrec_packed"


@dataclass(frozen=True)
class PackedAttention:
    """Where a packed batch's prompt and block slots lie, and what each block query may see.

    A row of the decoder's input is ``prompt`` positions (``<bos>`` + history vectors), then ``blocks`` slots of
    ``block_width`` positions each. ``mask[r * blocks + b, 0, i, k]``: whether slot ``b``'s position ``i`` of row
    ``r`` sees key ``k``, keys being the row's prompt then the slot's own positions."""

    prompt: int
    blocks: int
    block_width: int
    mask: Tensor  # bool [R * blocks, 1, block_width, prompt + block_width]


def _repeat_kv(x: Tensor, groups: int) -> Tensor:
    """Grouped-query keys/values ``[B, Hkv, S, D]`` as one per query head ``[B, Hkv * groups, S, D]``."""
    if groups == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, groups, s, d).reshape(b, h * groups, s, d)


def packed_attention_forward(module, query: Tensor, key: Tensor, value: Tensor, attention_mask: PackedAttention,
                             dropout: float = 0.0, scaling: float | None = None, **kwargs) -> tuple[Tensor, None]:
    """The attention function transformers calls per layer (``query`` ``[R, H, S, D]``, ``key``/``value``
    ``[R, Hkv, S, D]``); returns ``[R, S, H, D]`` as its SDPA function does."""
    plan = attention_mask
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = _repeat_kv(key, groups), _repeat_kv(value, groups)
    rows, heads, _, dim = query.shape
    p, nb, w = plan.prompt, plan.blocks, plan.block_width
    prompt_out = F.scaled_dot_product_attention(query[:, :, :p], key[:, :, :p], value[:, :, :p], is_causal=True,
                                                dropout_p=dropout, scale=scaling)
    if nb == 0:
        return prompt_out.transpose(1, 2).contiguous(), None

    def slots(x: Tensor) -> Tensor:  # [R, H, P + nb*w, D] -> [R*nb, H, w, D]
        return x[:, :, p:].reshape(rows, heads, nb, w, dim).transpose(1, 2).reshape(rows * nb, heads, w, dim)

    def with_prompt(x: Tensor) -> Tensor:  # each slot's keys: the row's prompt, then its own positions
        shared = x[:, None, :, :p].expand(rows, nb, heads, p, dim).reshape(rows * nb, heads, p, dim)
        return torch.cat([shared, slots(x)], 2)

    block_out = F.scaled_dot_product_attention(slots(query), with_prompt(key), with_prompt(value),
                                               attn_mask=plan.mask, dropout_p=dropout, scale=scaling)
    block_out = block_out.reshape(rows, nb, heads, w, dim).transpose(1, 2).reshape(rows, heads, nb * w, dim)
    return torch.cat([prompt_out, block_out], 2).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, packed_attention_forward)


@contextlib.contextmanager
def packed_attention_enabled(config):
    """While inside, the decoder whose config is ``config`` runs :func:`packed_attention_forward`."""
    before = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = before
