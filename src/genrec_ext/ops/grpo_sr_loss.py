"""genrec::grpo_sr_loss — the GRPO-SR objective of paper eq. 8, fused with the LM head.

Every scored position (rollout tokens and positive-sequence tokens, flattened into rows) has a final hidden
state ``hidden[r]`` and a target token ``targets[r]``; ``logp_r = log_softmax(hidden[r] @ weight.T + bias)[targets[r]]``
and, with per-row coefficients that the caller builds (see :func:`genrec_ext.nn.GRPOSRLoss.row_weights`)::

    loss = sum_r [ -min(ratio_r * c_r, clip(ratio_r, 1 - epsilon, 1 + epsilon_high) * c_r)      c = policy_coef
                   - nll_coef_r * logp_r
                   + kl_coef_r * (exp(ref_r - logp_r) - (ref_r - logp_r) - 1) ]                  (only with ref_logp)

``ratio_r = exp(logp_r - old_logp_r)``, or, without ``old_logp`` (the paper), ``exp(logp_r - sg(logp_r))``: value 1,
gradient ``c_r * d logp_r``, never clipped. For eq. 8, ``policy_coef = A_i / (G |o_i|)`` on rollout tokens and
``nll_coef = alpha / |D+|`` on positive tokens (0 elsewhere). Rows whose target is ``ignore_index`` (and rows with
all coefficients 0) contribute nothing. With ``policy_coef = 0`` and ``nll_coef = 1 / n`` it is a fused
cross-entropy (mean over n rows).

The logits are computed in row tiles of ``[block_rows, V]`` (never ``[N, V]``); when an input requires grad the
gradients are computed in the same sweep (one logits GEMM, as Liger's fused linear losses do) and backward only
scales them by the upstream gradient. Backward recomputes the sweep (``genrec::grpo_sr_loss_backward``) when the
returned log-probs themselves get a gradient, when the forward ran without gradients, and on a second backward
through a retained graph.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._nvtx import nvtx_range, wants_grad

_OP = "genrec::grpo_sr_loss"


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.register_fake(_OP)
def _grpo_sr_loss_fake(hidden, weight, bias, targets, policy_coef, nll_coef, old_logp=None, ref_logp=None,
                       kl_coef=None, epsilon_low=0.2, epsilon_high=0.2, ignore_index=-100, block_rows=0,
                       grad_mask=(False, False, False)):
    torch._check(hidden.dim() == 2, lambda: f"grpo_sr_loss: hidden must be [N, H], got {tuple(hidden.shape)}")
    torch._check(weight.dim() == 2 and weight.shape[1] == hidden.shape[1],
                 lambda: f"grpo_sr_loss: weight must be [V, H], got {tuple(weight.shape)}")
    acc = _acc(hidden.dtype)
    n = hidden.shape[0]
    return (
        hidden.new_empty((), dtype=acc),
        hidden.new_empty((n,), dtype=acc),
        hidden.new_empty(hidden.shape if grad_mask[0] else (0,)),
        weight.new_empty(weight.shape if grad_mask[1] else (0,)),
        weight.new_empty((weight.shape[0],) if grad_mask[2] else (0,)),
    )


@torch.library.register_fake(_OP + "_backward")
def _grpo_sr_loss_backward_fake(grad_loss, grad_logp, hidden, weight, bias, targets, policy_coef, nll_coef, old_logp,
                                ref_logp, kl_coef, epsilon_low, epsilon_high, ignore_index, block_rows, grad_mask):
    return (
        hidden.new_empty(hidden.shape if grad_mask[0] else (0,)),
        weight.new_empty(weight.shape if grad_mask[1] else (0,)),
        weight.new_empty((weight.shape[0],) if grad_mask[2] else (0,)),
    )


def _setup_context(ctx, inputs, output):
    (hidden, weight, bias, targets, policy_coef, nll_coef, old_logp, ref_logp, kl_coef, epsilon_low, epsilon_high,
     ignore_index, block_rows, grad_mask) = inputs
    _, _, grad_hidden, grad_weight, grad_bias = output
    ctx.mark_non_differentiable(grad_hidden, grad_weight, grad_bias)
    ctx.set_materialize_grads(False)  # an unused logp output then arrives as None: the precomputed path applies
    ctx.save_for_backward(hidden, weight, bias, targets, policy_coef, nll_coef, old_logp, ref_logp, kl_coef)
    ctx.options = (epsilon_low, epsilon_high, ignore_index, block_rows)
    # d loss / d (hidden, weight, bias) at grad_loss = 1, from the forward sweep (None where not computed). Held
    # as attributes (not saved tensors) and dropped by the first backward, which may then scale them in place.
    ctx.precomputed = tuple(g if m else None for g, m in zip((grad_hidden, grad_weight, grad_bias), grad_mask))


def _backward(ctx, grad_loss, grad_logp, *_unused):
    hidden, weight, bias, targets, policy_coef, nll_coef, old_logp, ref_logp, kl_coef = ctx.saved_tensors
    needs = [bool(n) for n in ctx.needs_input_grad[:3]]
    needs[2] = needs[2] and bias is not None
    precomputed, ctx.precomputed = ctx.precomputed, None
    none = (None,) * 11
    if not any(needs) or (grad_loss is None and grad_logp is None):
        return (None, None, None, *none)
    if grad_logp is None and precomputed is not None and all(p is not None for p, n in zip(precomputed, needs) if n):
        grads = [p.mul_(grad_loss) if n else None for p, n in zip(precomputed, needs)]
    else:
        if grad_loss is None:
            grad_loss = torch.zeros((), dtype=_acc(hidden.dtype), device=hidden.device)
        with nvtx_range("genrec::grpo_sr_loss_backward"):
            out = torch.ops.genrec.grpo_sr_loss_backward(
                grad_loss, grad_logp, hidden, weight, bias, targets, policy_coef, nll_coef, old_logp, ref_logp,
                kl_coef, *ctx.options, needs)
        grads = [g if n else None for g, n in zip(out, needs)]
    return (*grads, *none)


torch.library.register_autograd(_OP, _backward, setup_context=_setup_context)


def grpo_sr_loss(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    policy_coef: Tensor,
    nll_coef: Tensor,
    bias: Tensor | None = None,
    *,
    old_logp: Tensor | None = None,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    ref_logp: Tensor | None = None,
    kl_coef: Tensor | None = None,
    ignore_index: int = -100,
    block_rows: int = 0,
) -> tuple[Tensor, Tensor]:
    """GRPO-SR loss (paper eq. 8) of hidden states under an LM head, without materialising the logits.

    Args:
        hidden: ``[..., H]`` final hidden states (float32 / bfloat16 / float64), one row per scored token.
        weight: ``[V, H]`` LM-head weight (the SID block of the head or the whole vocabulary), hidden's dtype.
            Under autocast, hidden / weight / bias are cast to the autocast dtype first.
        targets: int64 ``[...]`` token each row scores, in ``[0, V)`` or ``ignore_index``.
        policy_coef: ``[...]`` per-row policy coefficient, ``A_i / (G |o_i|)`` on rollout tokens, 0 elsewhere.
        nll_coef: ``[...]`` per-row NLL coefficient, e.g. ``alpha / |D+|`` on positive tokens, 0 elsewhere.
        bias: optional ``[V]`` head bias.
        old_logp: optional ``[...]`` log-probs of the policy that sampled the rollouts; enables the PPO ratio
            ``exp(logp - old_logp)`` clipped to ``[1 - epsilon, 1 + epsilon_high]`` (TRL's GRPOConfig knobs).
            Without it the ratio is the paper's ``pi / sg(pi)`` (value 1) and epsilon has no effect.
        epsilon, epsilon_high: clip range; ``epsilon_high`` defaults to ``epsilon``.
        ref_logp, kl_coef: optional ``[...]`` reference-model log-probs and per-row KL coefficients (TRL's ``beta``
            times the row's token weight): adds ``kl_coef * (exp(ref - logp) - (ref - logp) - 1)`` (k3). Both or
            neither.
        ignore_index: target id of rows to skip (logp 0, no loss, no gradient).
        block_rows: rows per logits tile; 0 picks it from a memory budget (~64 MiB per tile on CPU).

    Coefficient tensors are constants (they receive no gradient). Gradients flow to hidden, weight and bias.

    Returns:
        ``(loss, logp)``: the scalar loss and the per-row log-probs ``[...]`` (0 on ignored rows), both float32
        (float64 for float64 inputs). ``logp`` is differentiable too (backward then recomputes the logits).
    """
    if hidden.dim() < 1:
        raise ValueError(f"grpo_sr_loss: hidden must be [..., H], got shape {tuple(hidden.shape)}")
    lead = hidden.shape[:-1]
    for name, t in (("targets", targets), ("policy_coef", policy_coef), ("nll_coef", nll_coef),
                    ("old_logp", old_logp), ("ref_logp", ref_logp), ("kl_coef", kl_coef)):
        if t is not None and t.shape != lead:
            raise ValueError(f"grpo_sr_loss: {name} must have hidden's leading shape {tuple(lead)}, "
                             f"got {tuple(t.shape)}")
    if (ref_logp is None) != (kl_coef is None):
        raise ValueError("grpo_sr_loss: ref_logp and kl_coef go together (the KL term needs both)")
    if torch.is_autocast_enabled(hidden.device.type):
        dtype = torch.get_autocast_dtype(hidden.device.type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    epsilon_high = epsilon if epsilon_high is None else epsilon_high

    def rows(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.reshape(-1)

    grad_mask = [wants_grad((t,)) for t in (hidden, weight, bias)]
    with nvtx_range(_OP):
        loss, logp, *_ = torch.ops.genrec.grpo_sr_loss(
            hidden.reshape(-1, hidden.shape[-1]), weight, bias, rows(targets), rows(policy_coef), rows(nll_coef),
            rows(old_logp), rows(ref_logp), rows(kl_coef), float(epsilon), float(epsilon_high), int(ignore_index),
            int(block_rows), grad_mask)
    return loss, logp.reshape(lead)
