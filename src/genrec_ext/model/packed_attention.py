"""Attention for shared-prefix packed SFT without a dense ``[S, S]`` block mask.

Why: a packed row is ``<bos>``, the history, then many sample blocks (a 10-item page is 32 positions). Under one
dense block-causal mask every block also scores every other block's positions only to mask them out: for 50
history vectors and 30 page blocks, 95% of the ``S^2`` scores are wasted, and for small models that attention
cost more than the sharing saved (packed page logs trained no faster than unpacked). Here a packed batch is one
decoder sequence, every row's prompt (``<bos>`` + history vectors, padded to the widest) then every block (padded
to the longest, listed flat with its row; ``GenRecModel.packed_layout``), and attention is two dense SDPA calls
whose only waste is that padding:

* each prompt attends causally to itself;
* each block's queries attend to its row's prompt keys (the first ``1 + prefix`` of them: ``<bos>`` and its own
  history prefix) and causally to its own positions; the prompt's keys and values are gathered per block, as a
  shared prompt KV is in serving.

It plugs into the Hugging Face decoder as a registered attention function, switched on only while a packed batch
runs (:func:`packed_attention_enabled`): the mask the decoder passes down is then a :class:`PackedAttention` plan.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv

NAME = "genrec_packed"


@dataclass(frozen=True)
class PackedAttention:
    """The layout of a packed batch's one decoder sequence: ``rows`` prompts of ``prompt`` positions, then ``K``
    blocks of ``W`` positions; block ``b`` reads row ``block_row[b]``'s prompt. ``mask[b, 0, i, k]``: whether
    block position ``i`` sees key ``k``, keys being its row's prompt then the block's own positions."""

    rows: int
    prompt: int
    block_row: Tensor  # int64 [K]
    mask: Tensor  # bool [K, 1, W, prompt + W]


def packed_attention_forward(module, query: Tensor, key: Tensor, value: Tensor, attention_mask: PackedAttention,
                             dropout: float = 0.0, scaling: float | None = None, **kwargs) -> tuple[Tensor, None]:
    """The attention function transformers calls per layer (``query`` ``[1, H, S, D]``, ``key``/``value``
    ``[1, Hkv, S, D]``); returns ``[1, S, H, D]`` as its SDPA function does."""
    plan = attention_mask
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)  # grouped-query heads, one per query head
    k, w = plan.mask.shape[0], plan.mask.shape[2]
    split = plan.rows * plan.prompt

    def prompts(x: Tensor) -> Tensor:  # [1, H, S, D] -> [R, H, P, D]
        return x[0, :, :split].unflatten(1, (plan.rows, plan.prompt)).transpose(0, 1)

    def blocks(x: Tensor) -> Tensor:  # [1, H, S, D] -> [K, H, W, D]
        return x[0, :, split:].unflatten(1, (k, w)).transpose(0, 1)

    prompt_keys, prompt_values = prompts(key), prompts(value)
    # index_select, not prompt_keys[block_row]: the latter's backward summed repeated rows in a thread-dependent
    # order on CPU, and a resumed RL run drifted from an uninterrupted one by 1e-8
    prompt_out = F.scaled_dot_product_attention(prompts(query), prompt_keys, prompt_values, is_causal=True,
                                                dropout_p=dropout, scale=scaling)
    block_out = F.scaled_dot_product_attention(
        blocks(query), torch.cat([prompt_keys.index_select(0, plan.block_row), blocks(key)], 2),
        torch.cat([prompt_values.index_select(0, plan.block_row), blocks(value)], 2), attn_mask=plan.mask, dropout_p=dropout,
        scale=scaling)
    out = torch.cat([prompt_out.transpose(0, 1).flatten(1, 2), block_out.transpose(0, 1).flatten(1, 2)], 1)
    return out[None].transpose(1, 2).contiguous(), None  # [1, S, H, D]


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
