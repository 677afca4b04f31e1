"""Python faces of the torch.ops.genrec.* kernels: functional API, fake (meta) kernels, autograd."""

from .beam_search import beam_search
from .beam_step import beam_step
from .decoder_layer import layer_out, layer_qkv, rms_norm
from .grpo_sr_loss import grpo_sr_loss
from .registry import OPS, kernel_devices
from .rq_assign import rq_assign
from .shared_prefix_attention import shared_prefix_attention
from .token_merge import token_merge

__all__ = ["OPS", "beam_search", "beam_step", "grpo_sr_loss", "kernel_devices", "layer_out", "layer_qkv", "rms_norm",
           "rq_assign", "shared_prefix_attention", "token_merge"]
