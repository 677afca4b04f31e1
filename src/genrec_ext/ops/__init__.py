"""Python faces of the torch.ops.genrec.* kernels: functional API, fake (meta) kernels, autograd."""

from .registry import OPS, kernel_devices
from .token_merge import token_merge

__all__ = ["OPS", "kernel_devices", "token_merge"]
