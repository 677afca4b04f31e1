"""Drop-in modules built on the genrec ops."""

from .grpo_sr_loss import GRPOSRLoss
from .token_merger import TokenMerger

__all__ = ["GRPOSRLoss", "TokenMerger"]
