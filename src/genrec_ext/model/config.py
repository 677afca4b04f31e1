"""Model configuration: presets in genrec_ext/configs/*.yaml, or any YAML file, or keyword overrides."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
PRESETS = ("tiny", "small", "base")


@dataclass(frozen=True)
class ModelConfig:
    """A Qwen2 decoder over the SID vocabulary. With ``checkpoint`` set, the backbone is loaded from that local
    Hugging Face directory (e.g. Qwen2.5) and its vocabulary is extended with the SID tokens; the size fields
    are then taken from the checkpoint."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    token_merger: bool = True  # False: the "w/o TM" ablation, L prompt tokens per history item
    dropout: float = 0.0  # training only: on the decoder's input vectors and on attention weights
    level_softmax: bool = False  # train each target token's softmax over its SID level only (as decoding scores)
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must divide by num_heads ({self.num_heads}) and "
                             f"num_heads by num_kv_heads ({self.num_kv_heads})")

    @classmethod
    def load(cls, preset_or_path: str | Path, **overrides: Any) -> ModelConfig:
        """A preset name (``tiny``, ``small``, ``base``) or a YAML file, then ``overrides``."""
        path = Path(preset_or_path)
        if str(preset_or_path) in PRESETS:
            path = CONFIG_DIR / f"{preset_or_path}.yaml"
        if not path.exists():
            raise FileNotFoundError(f"model config {preset_or_path!r} is neither a preset {PRESETS} nor a file")
        values = yaml.safe_load(path.read_text()) or {}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{path}: unknown model config keys {unknown} (known: {sorted(known)})")
        return replace(cls(**values), **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
