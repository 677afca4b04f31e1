"""Drop-ins for Hugging Face users: constrained ``generate`` on our SID trie."""

from .logits_processor import SIDLogitsProcessor

__all__ = ["SIDLogitsProcessor"]
