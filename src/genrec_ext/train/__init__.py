"""Training: SFT batches (page-wise or point-wise NTP) and the training loop."""

from .batching import SFTBatch, SFTDataset, collate, make_sft_dataset, sid_codes_for

__all__ = ["SFTBatch", "SFTDataset", "collate", "make_sft_dataset", "sid_codes_for"]
