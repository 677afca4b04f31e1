"""Training: SFT batches (page-wise or point-wise NTP) and the training loop."""

from .batching import SFTBatch, SFTDataset, catalog_index_of_sids, collate, make_sft_dataset, sid_codes_for
from .checkpoint import VocabularyMismatchError
from .metrics import plot_loss_curves, read_metrics
from .sft import SFTConfig, TrainResult, train_sft

_RL = ("RLConfig", "RLResult", "plot_rl_curves", "train_rl")


def __getattr__(name: str):
    # GRPO-SR imports decoding and reward, which import the model, which imports .batching from here: load it
    # on first use so that `genrec_ext.model` can be imported first.
    if name in _RL:
        from . import rl

        return getattr(rl, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "RLConfig", "RLResult", "SFTBatch", "SFTConfig", "SFTDataset", "TrainResult", "VocabularyMismatchError", "catalog_index_of_sids", "collate", "make_sft_dataset",
    "plot_loss_curves", "plot_rl_curves", "read_metrics", "sid_codes_for", "train_rl", "train_sft",
]
