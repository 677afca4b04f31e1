"""The GenRec model: a Qwen2 decoder with the SID vocabulary and the Token Merger prompt."""

from .batch import PackedSFTBatch, SFTBatch
from .config import PRESETS, ModelConfig
from .genrec import GenRecModel, Layout, SFTOutput, build_model, hf_progress_bars

__all__ = ["PRESETS", "GenRecModel", "Layout", "ModelConfig", "PackedSFTBatch", "SFTBatch", "SFTOutput", "build_model", "hf_progress_bars"]
