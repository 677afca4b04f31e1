"""The GenRec model: a Qwen2 decoder with the SID vocabulary and the Token Merger prompt."""

from .config import PRESETS, ModelConfig
from .genrec import GenRecModel, Layout, SFTOutput, build_model

__all__ = ["PRESETS", "GenRecModel", "Layout", "ModelConfig", "SFTOutput", "build_model"]
