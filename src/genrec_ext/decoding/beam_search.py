"""Point-wise beam search over SIDs (paper §2.2), as one ``genrec::beam_search`` call: prefill the prompt
once, then per SID level one beam step and one decode step; the beams of a query share the prompt's keys and
values, and only the decoded tokens' keys and values are per beam (following their parent beam).

* constrained: each step keeps only codes that continue a valid SID (the trie), so every result is an item;
* unconstrained: any code of the level's block, to measure how often the model hallucinates SIDs (HaR).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import ops
from ..model import GenRecModel
from ..sid import SIDTable, SIDTrie
from ..model import SFTBatch
from .weights import search_weights


@dataclass
class BeamResult:
    codes: Tensor  # int64 [B, W, L] SID codes of each beam, best first (-1 in dead slots)
    scores: Tensor  # [B, W] log-probabilities (-inf in dead slots)
    items: Tensor  # int64 [B, W] dense item index, -1 where the SID maps to no item or the slot is dead


def level_logits(model: GenRecModel, hidden: Tensor, level: int) -> Tensor:
    """Logits of the level's token block only (decoding at depth l scores only level-l tokens)."""
    return model.token_logits(hidden, model.vocab.offsets[level], model.vocab.level_sizes[level])


# Rotary variants whose tables depend only on the position (transformers' "dynamic" kinds rescale with the
# sequence length, so their tables are made per search).
_STATIC_ROPE = frozenset({"default", "linear", "llama3", "yarn"})
# model -> {(prompt width, levels, device, dtype, inv_freq's storage and version): (inv_freq, cos, sin)}, one
# entry per width like the model's prompt tables; holding inv_freq keeps its memory from being reused by a new
# buffer that would then match the key.
_ROTARY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _rotary_tables(model: GenRecModel, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos / sin ``[R, P + L - 1, D]`` for rows of prompt ``positions [R, P]`` followed by the L - 1 decode
    positions, from the backbone's own rotary module (whatever its rope scaling)."""
    ahead = positions[:, -1:] + torch.arange(1, model.vocab.levels, device=positions.device)
    probe = torch.empty(0, dtype=dtype, device=positions.device)  # the module reads only its dtype and device
    return model.backbone.model.rotary_emb(probe, torch.cat([positions, ahead], 1))


def search_inputs(model: GenRecModel, history: Tensor, history_len: Tensor) -> dict:
    """``genrec::beam_search``'s model-side arguments for these histories (``[B, N, L]`` tokens, right-padded,
    and lengths): the left-padded prompts, the rotary tables of the prompt and decode positions, and the
    model's weights (:func:`search_weights`). A prompt's positions depend only on its number of items, so with
    a static rope its rotary tables are rows of a table made once per prompt width."""
    items, n_items = model.prompt_items(history, history_len)
    embeds, mask, positions = model.prompt_from_items(items, n_items)
    rotary = model.backbone.model.rotary_emb
    if getattr(rotary, "rope_type", "default") in _STATIC_ROPE:
        key = (items.shape[1], model.vocab.levels, items.device, embeds.dtype, rotary.inv_freq.data_ptr(),
               rotary.inv_freq._version)
        tables = _ROTARY.setdefault(model, {})
        if key not in tables:
            positions_table = model.prompt_tables(items.shape[1], items.device)[2]
            tables[key] = (rotary.inv_freq, *_rotary_tables(model, positions_table, embeds.dtype))
        cos, sin = (t.index_select(0, n_items) for t in tables[key][1:])
    else:
        cos, sin = _rotary_tables(model, positions, embeds.dtype)
    return dict(embeds=embeds, prompt_mask=mask, cos=cos, sin=sin, level_sizes=model.vocab.level_sizes,
                **search_weights(model).op_arguments)


@torch.no_grad()
def beam_search(model: GenRecModel, history: Tensor, history_len: Tensor, trie: SIDTrie, *, beam_width: int = 50,
                constrained: bool = True, table: SIDTable | None = None) -> BeamResult:
    """Top-``beam_width`` SIDs for each query's history (``[B, N, L]`` tokens, right-padded, and lengths).

    ``table`` maps unconstrained results to items (constrained results come straight from the trie)."""
    if not constrained and table is None:
        raise ValueError("unconstrained beam search needs the SID table to map SIDs to items")
    if tuple(trie.level_sizes) != model.vocab.level_sizes:
        raise ValueError(f"the trie has {trie.levels} levels but the model's vocabulary {model.vocab.levels} (level "
                         f"sizes {list(trie.level_sizes)} vs {list(model.vocab.level_sizes)}): use the SID table the "
                         "model was trained with")
    trie = trie.to(history.device)
    scores, codes, nodes = ops.beam_search(**search_inputs(model, history, history_len), child_offsets=trie.offsets,
                                           child_codes=trie.codes, beam_width=beam_width, constrained=constrained)
    if constrained:
        items = trie.items_of(nodes)
    else:
        items = table.items_of(codes)
    return BeamResult(codes, scores, items)


def sequence_log_probs(model: GenRecModel, history: Tensor, history_len: Tensor, sids: Tensor) -> Tensor:
    """Teacher-forced log-probability of given SIDs ``[B, M, L]`` (level-wise softmax, as beam search scores
    them): the exhaustive check of beam search, and a scorer for candidate items. Each (history, SID) pair is
    laid out as a training sequence whose target is the SID's L tokens."""
    bsz, m, levels = sids.shape
    flat = sids.reshape(bsz * m, levels)
    batch = SFTBatch(history.repeat_interleave(m, 0), history_len.repeat_interleave(m, 0), model.vocab.tokens(flat),
                     torch.full((bsz * m,), levels, device=sids.device))
    lay = model.layout(batch)
    # The L positions that predict the SID's tokens (<sep>, y_1, ..., y_{L-1}), in order.
    hidden = model.hidden_states(lay.inputs_embeds, lay.attention_mask)[lay.label_mask].view(bsz * m, levels, -1)
    total = torch.zeros(bsz * m, device=sids.device)
    for level in range(levels):
        logp = torch.log_softmax(level_logits(model, hidden[:, level], level).float(), -1)
        total += logp.gather(1, flat[:, level : level + 1]).squeeze(1)
    return total.view(bsz, m)
