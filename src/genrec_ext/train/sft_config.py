"""What an SFT run is told: :class:`SFTConfig` (everything but the model and the data; YAML presets map onto it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from .._config import check, from_mapping

#: with pack_members="auto", a step of packed rows holds at least about this many rows: rows of one user make a
#: step's gradient less diverse (heavy users' page logs at batch 64: uncapped rows of up to ~20 of a user's samples
#: cost 3.5% NDCG@10 on every one of 5 seeds; 4 per row matched unpacked; benchmarks/results/sft_packing_cpu.md)
MIN_ROWS_PER_STEP = 16

#: fields that fix which examples each step sees; a resumed run must keep them.
DATA_ORDER_FIELDS = ("global_batch_size", "seed", "packing", "pack_tokens", "pack_members", "length_splits",
                      "history_stride")


@dataclass
class SFTConfig:
    """Everything about an SFT run except the model and the data (YAML presets map onto these fields)."""

    out_dir: str = "runs/sft"
    # optimiser
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float | None = 1.0  # max global grad norm; None or 0 disables
    # batch and length of training
    global_batch_size: int = 64  # examples per optimiser step, summed over ranks and accumulation steps
    grad_accum: int = 1  # micro-batches per optimiser step on each rank
    # shared-prefix packing (train/packing.py, train/sampling.py): a user's samples share one copy of their history
    # in a packed row (cut at pack_tokens positions, at most pack_members samples); a step is a random set of rows
    # holding about global_batch_size examples, each rank's share cut into grad_accum x length_splits micro-batches
    # sorted by length (less padding). history_stride (None: exact) lets a history at the max_history cap start on
    # a stride grid, so sliding windows share rows too: samples then see max_history - stride + 1 .. max_history items
    packing: bool = False
    pack_tokens: int = 1024
    pack_members: int | str | None = "auto"  # "auto": global_batch_size // MIN_ROWS_PER_STEP; None: no cap
    length_splits: int = 4
    history_stride: int | None = None
    max_steps: int | None = None  # optimiser steps; when None, `epochs` passes over the data
    epochs: float = 1.0
    # schedule (paper §3.1: linear warm-up over the first 1% of steps, then cosine decay)
    warmup_ratio: float = 0.01
    min_lr_ratio: float = 0.0  # the cosine's floor, as a fraction of lr
    # numerics and placement
    bf16: bool | None = None  # autocast to bf16; None = on for CUDA devices that support it, off on CPU
    device: str = "auto"  # "auto" | "cpu" | "cuda" (the local rank picks the GPU)
    parallel: Literal["ddp", "fsdp"] = "ddp"  # used when launched with more than one process
    find_unused_parameters: bool = False  # DDP flag, for models with parameters a batch may not use
    seed: int = 0
    # bookkeeping
    log_every: int = 10
    checkpoint_every: int = 0  # optimiser steps between checkpoints; 0 = only the final one
    keep_checkpoints: int = 2  # newest N kept; 0 keeps all
    num_workers: int = 0  # DataLoader worker processes per rank
    tensorboard: bool = False  # also write TensorBoard scalars (if the package is installed)
    plot: bool = True  # write loss.png at the end
    overwrite: bool = False  # a fresh run (resume=False) may replace an out_dir that holds checkpoints
    # model selection (used when train_sft gets a `validate` function)
    eval_every: int = 0  # optimiser steps between validations; 0 = once per epoch
    select_metric: str = "NDCG@10"  # higher is better
    patience: int = 0  # validations without improvement before stopping early; 0 = never

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # YAML gives a list
        if len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers, got {self.betas}")
        checks = [
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.global_batch_size >= 1, f"global_batch_size must be >= 1, got {self.global_batch_size}"),
            (self.grad_accum >= 1, f"grad_accum must be >= 1, got {self.grad_accum}"),
            (self.pack_tokens >= 2, f"pack_tokens must be >= 2, got {self.pack_tokens}"),
            (self.pack_members in (None, "auto") or (isinstance(self.pack_members, int) and self.pack_members >= 1),
             f"pack_members must be >= 1, 'auto' or None, got {self.pack_members!r}"),
            (self.length_splits >= 1, f"length_splits must be >= 1, got {self.length_splits}"),
            (self.history_stride is None or self.history_stride >= 1,
             f"history_stride must be >= 1 (or None), got {self.history_stride}"),
            (self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}"),
            (self.max_steps is not None or self.epochs > 0, f"epochs must be > 0, got {self.epochs}"),
            (self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}"),
            (self.checkpoint_every >= 0, f"checkpoint_every must be >= 0, got {self.checkpoint_every}"),
            (self.keep_checkpoints >= 0, f"keep_checkpoints must be >= 0, got {self.keep_checkpoints}"),
            (self.parallel in ("ddp", "fsdp"), f"parallel must be 'ddp' or 'fsdp', got {self.parallel!r}"),
            (self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}"),
            (self.eval_every >= 0, f"eval_every must be >= 0, got {self.eval_every}"),
            (self.patience >= 0, f"patience must be >= 0, got {self.patience}"),
        ]
        check(checks)

    @property
    def members_per_row(self) -> int | None:
        """The cap on samples per packed row that ``pack_members`` stands for (None: no cap)."""
        if self.pack_members == "auto":
            return max(1, self.global_batch_size // MIN_ROWS_PER_STEP)
        return self.pack_members

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SFTConfig:
        """From a YAML/JSON mapping; an unknown key is an error naming it and the known ones."""
        return from_mapping(cls, values)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d
