"""Training: SFT batches (page-wise or point-wise NTP) and the training loop."""

from .batching import SFTBatch, SFTDataset, catalog_index_of_sids, collate, make_sft_dataset, sid_codes_for
from .checkpoint import VocabularyMismatchError
from .metrics import plot_loss_curves, read_metrics
from .rl import RLConfig, RLResult, plot_rl_curves, train_rl
from .sft import SFTConfig, TrainResult, train_sft

__all__ = [
    "RLConfig", "RLResult", "SFTBatch", "SFTConfig", "SFTDataset", "TrainResult", "VocabularyMismatchError", "catalog_index_of_sids", "collate", "make_sft_dataset",
    "plot_loss_curves", "plot_rl_curves", "read_metrics", "sid_codes_for", "train_rl", "train_sft",
]
