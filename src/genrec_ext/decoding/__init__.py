"""Serving: point-wise beam search over SIDs with a KV cache, constrained by the trie or not."""

from .beam_search import BeamResult, beam_search, level_logits, search_inputs, sequence_log_probs
from .weights import clear_fused_weights, search_weights

__all__ = ["BeamResult", "beam_search", "clear_fused_weights", "level_logits", "search_inputs",
           "search_weights", "sequence_log_probs"]
