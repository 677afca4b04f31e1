"""Learning-rate schedule of the paper (§3.1): linear warm-up over the first ``warmup_ratio`` of the optimiser
steps, then cosine decay to a floor.

Step ``s`` (0-based, the ``s``-th optimiser update) uses ``peak * lr_multiplier(s, ...)`` with
``W = warmup_steps(total, ratio) = ceil(ratio * total)``::

    s <  W:  (s + 1) / W                                   # 1/W, 2/W, ..., 1: no update is wasted at lr 0
    s >= W:  floor + (1 - floor) * (1 + cos(pi * (s - W) / (total - W))) / 2

so the first step after warm-up runs at the peak and the curve would reach ``floor`` one step after the last.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """``ceil(warmup_ratio * total_steps)`` (at least 1 when the ratio is positive), never more than the total."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0.0 <= warmup_ratio <= 1.0:
        raise ValueError(f"warmup_ratio must be in [0, 1], got {warmup_ratio}")
    # round away float noise first: 0.01 * 300 is 3.0000000000000004, which must stay 3
    return min(total_steps, math.ceil(round(warmup_ratio * total_steps, 9)))


def lr_multiplier(step: int, total_steps: int, warmup: int, min_lr_ratio: float = 0.0) -> float:
    """The factor on the peak learning rate for optimiser step ``step`` (see the module docstring)."""
    if step < warmup:
        return (step + 1) / warmup
    decay_steps = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosine:
    """Picklable ``lr_lambda`` for :class:`~torch.optim.lr_scheduler.LambdaLR` (its fields land in the
    scheduler's ``state_dict``, so a checkpoint records the schedule it was trained with)."""

    def __init__(self, total_steps: int, warmup_ratio: float = 0.01, min_lr_ratio: float = 0.0) -> None:
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        self.total_steps = int(total_steps)
        self.warmup = warmup_steps(total_steps, warmup_ratio)
        self.min_lr_ratio = float(min_lr_ratio)

    def __call__(self, step: int) -> float:
        return lr_multiplier(step, self.total_steps, self.warmup, self.min_lr_ratio)


def warmup_cosine_scheduler(optimizer: Optimizer, total_steps: int, warmup_ratio: float = 0.01,
                            min_lr_ratio: float = 0.0) -> LambdaLR:
    """A ``LambdaLR`` stepped once per optimiser step: after ``k`` calls to ``step()`` the learning rate is the
    one for optimiser step ``k``."""
    return LambdaLR(optimizer, WarmupCosine(total_steps, warmup_ratio, min_lr_ratio))
