"""genrec::token_merge — the Token Merger of paper eq. (5).

For each history position, the L SID-token embeddings are concatenated and projected by one linear layer:
``out[b, n] = weight @ concat(embedding[sid_tokens[b, n, 0]], ..., embedding[sid_tokens[b, n, L-1]]) + bias``.
Tokens equal to ``pad_id`` contribute zeros and receive no gradient; positions made only of ``pad_id`` give
an all-zero output (no bias) and add nothing to the bias gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._nvtx import nvtx_range, wants_grad

_OP = "genrec::token_merge"


@torch.library.register_fake(_OP)
def _token_merge_fake(sid_tokens, embedding, weight, bias, pad_id):
    torch._check(sid_tokens.dim() == 3, lambda: f"token_merge: sid_tokens must be [B, N, L], got {tuple(sid_tokens.shape)}")
    torch._check(embedding.dim() == 2, lambda: f"token_merge: embedding must be [V, d], got {tuple(embedding.shape)}")
    torch._check(
        weight.dim() == 2 and weight.shape[1] == sid_tokens.shape[2] * embedding.shape[1],
        lambda: f"token_merge: weight must be [d_out, L*d], got {tuple(weight.shape)}",
    )
    return embedding.new_empty((sid_tokens.shape[0], sid_tokens.shape[1], weight.shape[0]))


@torch.library.register_fake(_OP + "_backward")
def _token_merge_backward_fake(grad_out, sid_tokens, embedding, weight, pad_id):
    return (
        embedding.new_empty(embedding.shape),
        weight.new_empty(weight.shape),
        weight.new_empty((weight.shape[0],)),
    )


def _setup_context(ctx, inputs, output):
    sid_tokens, embedding, weight, bias, pad_id = inputs
    ctx.save_for_backward(sid_tokens, embedding, weight)
    ctx.pad_id = pad_id
    ctx.has_bias = bias is not None


def _backward(ctx, grad_out):
    sid_tokens, embedding, weight = ctx.saved_tensors
    with nvtx_range("genrec::token_merge_backward"):
        grad_embedding, grad_weight, grad_bias = torch.ops.genrec.token_merge_backward(
            grad_out, sid_tokens, embedding, weight, ctx.pad_id
        )
    return None, grad_embedding, grad_weight, grad_bias if ctx.has_bias else None, None


torch.library.register_autograd(_OP, _backward, setup_context=_setup_context)
# Under autocast the merge is a linear layer, so it runs in bf16 like one (fp16 has no kernel).
for _device in ("cpu", "cuda"):
    torch.library.register_autocast(_OP, _device, torch.bfloat16)


#: what the kernels get for "no padding": an id no token can hold (every token is checked to lie in [0, V))
NO_PAD = -(2**63)


def token_merge(
    sid_tokens: Tensor,
    embedding: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    pad_id: int | None = None,
) -> Tensor:
    """Merge each history item's L SID-token embeddings into one vector (paper eq. 5).

    Args:
        sid_tokens: int64 ``[B, N, L]`` token ids into ``embedding`` (or ``pad_id``).
        embedding: ``[V, d]`` float32 / bfloat16 / float64 token embedding table.
        weight: ``[d_out, L * d]`` projection, same dtype as ``embedding``.
        bias: optional ``[d_out]``.
        pad_id: token id marking padding (inside or outside ``[0, V)``); None (the default): no padding, every
            token is a real one. Explicit, because a drop-in op must not silently zero someone's real token 0.

    Returns:
        ``[B, N, d_out]`` in the dtype of ``embedding``.
    """
    pad_id = NO_PAD if pad_id is None else pad_id
    with nvtx_range(_OP):
        if wants_grad((embedding, weight, bias)) or torch.compiler.is_compiling():
            return torch.ops.genrec.token_merge(sid_tokens, embedding, weight, bias, pad_id)
        # No gradient wanted: past the registered (Python) autograd wrapper straight to the kernel; the wrapper
        # costs ~12 us a call, a fifth of a serving-size merge (one query's history).
        with torch._C._AutoDispatchBelowAutograd():
            return torch.ops.genrec.token_merge(sid_tokens, embedding, weight, bias, pad_id)
