"""Serving: point-wise beam search over SIDs with a KV cache, constrained by the trie or not."""

from .beam_search import BeamResult, beam_search, level_logits, sequence_log_probs

__all__ = ["BeamResult", "beam_search", "level_logits", "sequence_log_probs"]
