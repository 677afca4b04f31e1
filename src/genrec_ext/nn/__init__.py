"""Drop-in modules built on the genrec ops."""

from .token_merger import TokenMerger

__all__ = ["TokenMerger"]
