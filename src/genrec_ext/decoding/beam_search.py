"""Point-wise beam search over SIDs (paper §2.2): prefill the prompt once, then one ``genrec::beam_step`` per
SID level; the beams of a query share the prompt's KV cache (``SharedPrefixDecoder``), and only the decoded
tokens' keys and values are reordered by parent beam.

* constrained: each step keeps only codes that continue a valid SID (the trie), so every result is an item;
* unconstrained: any code of the level's block, to measure how often the model hallucinates SIDs (HaR).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..model import GenRecModel
from ..ops import beam_step
from ..sid import SIDTable, SIDTrie
from ..train.batching import SFTBatch
from .shared_prefix import SharedPrefixDecoder


@dataclass
class BeamResult:
    codes: Tensor  # int64 [B, W, L] SID codes of each beam, best first (-1 in dead slots)
    scores: Tensor  # [B, W] log-probabilities (-inf in dead slots)
    items: Tensor  # int64 [B, W] dense item index, -1 where the SID maps to no item or the slot is dead


def level_logits(model: GenRecModel, hidden: Tensor, level: int) -> Tensor:
    """Logits of the level's token block only (decoding at depth l scores only level-l tokens)."""
    return model.token_logits(hidden, model.vocab.offsets[level], model.vocab.level_sizes[level])


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
    device = history.device
    trie = trie.to(device)
    embeds, mask, positions = model.prompt_inputs(history, history_len)
    decoder = SharedPrefixDecoder(model.backbone.model, steps=model.vocab.levels - 1)
    hidden = decoder.prefill(embeds, mask, positions)  # once per query
    bsz = history.shape[0]
    scores = torch.zeros(bsz, 1, dtype=torch.float32, device=device)
    nodes = torch.zeros(bsz, 1, dtype=torch.int64, device=device)
    codes = torch.zeros(bsz, 1, 0, dtype=torch.int64, device=device)
    for level in range(model.vocab.levels):
        beams_in = scores.shape[1]
        logits = level_logits(model, hidden, level).float().view(bsz, beams_in, -1)
        scores, step_codes, parents, nodes = beam_step(logits, scores, nodes, trie.offsets[level], trie.codes[level],
                                                       beam_width, constrained)
        safe_parents = parents.clamp(min=0)  # dead slots follow beam 0; their -inf score keeps them dead
        codes = torch.cat([codes.gather(1, safe_parents[..., None].expand(-1, -1, codes.shape[2])),
                           step_codes[..., None]], 2)
        if level + 1 == model.vocab.levels:
            break
        decoder.reorder(safe_parents)
        token = model.vocab.offsets[level] + step_codes.clamp(min=0)  # [B, W]
        hidden = decoder.step(model.embed_tokens(token)).reshape(-1, embeds.shape[-1])
    if constrained:
        items = torch.where(nodes >= 0, trie.leaf_items[nodes.clamp(min=0)], -1)
    else:
        rows = codes.reshape(-1, codes.shape[2]).cpu().numpy()
        found = (table.item(row) if (row >= 0).all() else None for row in rows)
        items = torch.tensor([-1 if i is None else i for i in found], dtype=torch.int64).view(bsz, -1).to(device)
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
