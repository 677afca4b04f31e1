"""What genrec ops exist and which devices have kernels for them (for `genrec info` and tests)."""

from __future__ import annotations

import torch

# Public op names (torch.ops.genrec.<name>); their backward ops are internal.
OPS: tuple[str, ...] = ("token_merge", "rq_assign", "beam_step", "shared_prefix_attention", "layer_qkv", "layer_out", "rms_norm",
                        "beam_search", "grpo_sr_loss")


def kernel_devices(op: str) -> list[str]:
    """Dispatch keys (CPU, CUDA) that have a kernel registered for `genrec::<op>`."""
    name = f"genrec::{op}"
    return [key for key in ("CPU", "CUDA") if torch._C._dispatch_has_kernel_for_dispatch_key(name, key)]
