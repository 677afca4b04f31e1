"""Serving: point-wise beam search over SIDs with a KV cache, constrained by the trie or not."""

from .beam_search import BeamResult, beam_search, level_logits, sequence_log_probs
from .shared_prefix import SharedPrefixDecoder, clear_fused_weights

__all__ = ["BeamResult", "SharedPrefixDecoder", "beam_search", "clear_fused_weights", "level_logits",
           "sequence_log_probs"]
