"""GRPOSRLoss: the GRPO-SR objective (paper eq. 8) on hidden states and an LM head, via ``genrec::grpo_sr_loss``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops import grpo_sr_loss


class GRPOSRLoss(nn.Module):
    """Group-relative policy term + ``alpha`` x NLL on positives, fused with the LM head (logits never stored).

    Drop-in for code that holds final hidden states and an LM head: instead of ``lm_head(hidden)`` followed by a
    log-softmax and the loss, call ``loss_fn(hidden, lm_head.weight, targets, advantages, rollout_weight,
    positive_weight, bias=lm_head.bias)``. Rows are scored positions (flattened rollout and positive sequences);
    per row::

        policy_coef = advantages * rollout_weight      # A_i / (G |o_i|) on rollout tokens
        nll_coef    = alpha * positive_weight          # alpha / |D+| on positive tokens
        kl_coef     = beta * rollout_weight            # only when beta != 0 (needs ref_logp)

    :meth:`row_weights` builds ``rollout_weight`` / ``positive_weight`` from token masks. A row with both weights 0
    (prompt, padding) contributes nothing; so does a row whose target is ``ignore_index``.

    Args:
        alpha: weight of the NLL regulariser on positives (eq. 8).
        beta: KL coefficient to a reference policy (k3 estimator, as TRL's GRPOConfig ``beta``); 0 disables it.
        epsilon, epsilon_high: PPO clip range of the ratio ``exp(logp - old_logp)`` (TRL's ``epsilon`` /
            ``epsilon_high``); used only when ``old_logp`` is given. Without it the ratio is the paper's
            ``pi / sg(pi)``.
        ignore_index: target id of rows to skip.
    """

    def __init__(self, alpha: float = 1.0, beta: float = 0.0, epsilon: float = 0.2, epsilon_high: float | None = None,
                 ignore_index: int = -100) -> None:
        super().__init__()
        if alpha < 0 or beta < 0:
            raise ValueError(f"GRPOSRLoss: alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
        if epsilon < 0 or (epsilon_high is not None and epsilon_high < 0):
            raise ValueError(f"GRPOSRLoss: epsilon and epsilon_high must be >= 0, got {epsilon}, {epsilon_high}")
        self.alpha, self.beta = float(alpha), float(beta)
        self.epsilon = float(epsilon)
        self.epsilon_high = None if epsilon_high is None else float(epsilon_high)
        self.ignore_index = int(ignore_index)

    def forward(self, hidden: Tensor, lm_head_weight: Tensor, targets: Tensor, advantages: Tensor,
                rollout_weight: Tensor, positive_weight: Tensor, bias: Tensor | None = None, *,
                old_logp: Tensor | None = None, ref_logp: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``hidden [..., H]``, ``lm_head_weight [V, H]``; ``targets`` (int64), ``advantages``, ``rollout_weight``,
        ``positive_weight`` and the optional ``old_logp`` / ``ref_logp`` of hidden's leading shape ``[...]``.
        Returns ``(loss, logp)`` (scalar, per-row log-probs ``[...]``)."""
        if self.beta != 0 and ref_logp is None:
            raise ValueError("GRPOSRLoss: beta != 0 needs ref_logp (the reference policy's log-probs)")
        for name, t in (("advantages", advantages), ("rollout_weight", rollout_weight),
                        ("positive_weight", positive_weight)):
            if t.shape != hidden.shape[:-1]:
                raise ValueError(f"GRPOSRLoss: {name} must have hidden's leading shape {tuple(hidden.shape[:-1])}, "
                                 f"got {tuple(t.shape)}")
        policy_coef = advantages * rollout_weight
        nll_coef = self.alpha * positive_weight
        kl_coef = self.beta * rollout_weight if self.beta != 0 else None
        return grpo_sr_loss(hidden, lm_head_weight, targets, policy_coef, nll_coef, bias, old_logp=old_logp,
                            epsilon=self.epsilon, epsilon_high=self.epsilon_high,
                            ref_logp=ref_logp if kl_coef is not None else None, kl_coef=kl_coef,
                            ignore_index=self.ignore_index)

    @staticmethod
    def row_weights(rollout_mask: Tensor, group_size: int, positive_mask: Tensor | None = None,
                    positive_query: Tensor | None = None, *, num_queries: int | None = None,
                    positive_length_normalized: bool = False) -> tuple[Tensor, Tensor | None]:
        """Eq. 8's per-token weights, averaged over the batch's queries.

        Args:
            rollout_mask: bool ``[Q * G, T]`` completion tokens of G rollouts per query (query-major).
            group_size: G.
            positive_mask: optional bool ``[P, T']`` tokens of the positive items' sequences (D+).
            positive_query: int64 ``[P]`` query of each positive (default: all of query 0 when Q = 1).
            num_queries: Q (default: rollouts / G).
            positive_length_normalized: divide each positive's weight by its length |v| (eq. 8 sums over a
                positive's tokens, so the default does not).

        Returns:
            ``rollout_weight [Q * G, T] = 1 / (Q G |o_i|)`` on completion tokens and ``positive_weight [P, T'] =
            1 / (Q |D+_q|)`` (``/ |v|`` when normalised) on positive tokens, 0 elsewhere (None without positives).
        """
        if rollout_mask.dim() != 2 or rollout_mask.shape[0] % group_size != 0:
            raise ValueError(f"GRPOSRLoss.row_weights: rollout_mask must be [Q * G, T] with G={group_size}, "
                             f"got {tuple(rollout_mask.shape)}")
        q = num_queries if num_queries is not None else rollout_mask.shape[0] // group_size
        mask = rollout_mask.to(torch.float32)
        rollout_weight = mask / (q * group_size * mask.sum(1, keepdim=True).clamp(min=1))
        if positive_mask is None:
            return rollout_weight, None
        pos = positive_mask.to(torch.float32)
        if positive_query is None:
            if q != 1:
                raise ValueError("GRPOSRLoss.row_weights: positive_query is needed with more than one query")
            positive_query = torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device)
        per_query = torch.bincount(positive_query, minlength=q).to(pos)  # |D+_q|
        weight = 1.0 / (q * per_query[positive_query]).unsqueeze(1)
        if positive_length_normalized:
            weight = weight / pos.sum(1, keepdim=True).clamp(min=1)
        return rollout_weight, pos * weight

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, beta={self.beta}, epsilon={self.epsilon}, epsilon_high={self.epsilon_high}, "
                f"ignore_index={self.ignore_index}")
