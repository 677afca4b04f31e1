"""The hybrid reward (paper eqs. 6-7), group-relative advantages and R@K: pure tensor functions.

A rollout group is the ``G`` candidates generated for one query (e.g. the G beams of a point-wise beam search);
every tensor here is ``[B, G]`` (or ``[B, G, L]`` for SID codes), and a rollout's reward, relevance and
advantage sit at the rollout's own position. Rewards are matched to rollouts by index, never by any text.

Relevance ``s_i``
    The largest cosine similarity between the candidate item's embedding and the embeddings of the user's
    history items: ``s_i = max_j cos(e_{o_i}, e_{h_j})`` (in [-1, 1]). The embeddings are the ones the SIDs were
    built from (:func:`relevance_embeddings`: the catalogue's item vectors, else the SID codebooks'
    reconstruction of each item). A SID tuple that maps to no item, an empty slot, or a user without history
    has ``s_i = 0``.

Gate and reward (eq. 6)
    ``G_i = 1(s_i > tau)``, ``r_i = G_i * r_pref_i``; ``gate=False`` gives ``r_i = r_pref_i`` (the "w/o gate"
    ablations). With ``tau >= 0`` a hallucinated SID is always gated to 0.

Anchoring (eq. 7)
    A candidate that is one of the query's positives ``D+`` (its clicked or ordered items) gets
    ``r_max = max_j r_j``, the group's highest reward (after gating, over every member of the group).

Advantages
    ``A_i = (r_i - mean_group) / (std_group + eps)`` with TRL's conventions: ``std`` is the unbiased standard
    deviation (``torch.std``), ``eps = 1e-4``, ``scale_rewards`` True/"group" divides by the group's std, "batch"
    by the whole batch's, False/"none" only centres. A group whose rewards are all equal (std ~ 0) has zero
    advantages and no learning signal; its share is returned for logging (TRL's ``frac_reward_zero_std``).

R@K (paper §3): the best ``r_pref`` among a query's top ``K`` recommendations, an invalid SID counting 0,
averaged over queries (:func:`genrec_ext.eval.reward_at_k`, which evaluation reports).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import ItemCatalog
from ..sid import SIDLookup, SIDTable, sid_codes_for
from .model import SIMRewardModel

#: The gate's threshold: a small constant (paper §2.3). On the default synthetic world's validation day it passes
#: 91% of clicked items, 80% of exposed-not-clicked ones, 75% of uniformly random items and no hallucinated SID
#: (tau = 0.2: 82%, 61%, 50%; tau = 0: 96%, 93%, 90%).
DEFAULT_TAU = 0.1


# ------------------------------------------------------------------------------------------- relevance


def relevance_embeddings(catalog: ItemCatalog, table: SIDTable | None = None) -> Tensor:
    """Item vectors for the relevance ``s_i``, ``float32 [I, D]`` in catalogue order: the catalogue's own
    embeddings (what the SIDs of page logs and the synthetic world are built from), else each item's
    reconstruction from the SID codebooks (the sum of its residual centroids; e.g. LC-Rec data whose SIDs came
    from MiniLM text vectors)."""
    if catalog.embeddings is not None:
        return torch.from_numpy(np.array(catalog.embeddings, dtype=np.float32))  # a copy: the catalogue's is read-only
    if table is None or table.codebooks is None:
        raise ValueError("relevance needs item embeddings: the catalogue has none and no SID table with codebooks "
                         "was given")
    codes = torch.from_numpy(sid_codes_for(catalog, table))
    books = table.codebooks.codebooks
    return sum(books[level][codes[:, level]] for level in range(table.codebooks.levels)).float()


def relevance(candidate_items: Tensor, history_items: Tensor, item_embeddings: Tensor,
              history_mask: Tensor | None = None) -> Tensor:
    """``s_i``: max cosine between each candidate and the history (see the module docstring).

    Args:
        candidate_items: int64 ``[B, G]`` catalogue indices, ``-1`` = no item (a hallucinated SID, an empty slot).
        history_items: int64 ``[B, N]`` catalogue indices, ``-1`` = padding.
        item_embeddings: ``[I, D]``.
        history_mask: optional bool ``[B, N]`` (default ``history_items >= 0``).
    Returns:
        float ``[B, G]``; 0 for invalid candidates and for users without history.
    """
    if candidate_items.dim() != 2 or history_items.dim() != 2 or candidate_items.shape[0] != history_items.shape[0]:
        raise ValueError(f"candidate_items [B, G] and history_items [B, N] must share B, got "
                         f"{tuple(candidate_items.shape)} and {tuple(history_items.shape)}")
    I = item_embeddings.shape[0]
    for name, t in (("candidate_items", candidate_items), ("history_items", history_items)):
        if t.numel() and (int(t.max()) >= I or int(t.min()) < -1):
            raise ValueError(f"{name} must be catalogue indices in [-1, {I}), got range [{int(t.min())}, {int(t.max())}]")
    mask = history_items >= 0 if history_mask is None else history_mask.bool() & (history_items >= 0)
    emb = F.normalize(item_embeddings.float(), dim=-1)
    cand = emb[candidate_items.clamp(min=0)]  # [B, G, D]
    hist = emb[history_items.clamp(min=0)]  # [B, N, D]
    cos = cand @ hist.transpose(1, 2)  # [B, G, N]
    cos = cos.masked_fill(~mask[:, None, :], -torch.inf)
    s = cos.max(-1).values if cos.shape[-1] else cand.new_full(candidate_items.shape, -torch.inf)
    ok = (candidate_items >= 0) & torch.isfinite(s)
    return torch.where(ok, s, torch.zeros_like(s))


# ---------------------------------------------------------------------------------------------- reward


def hybrid_rewards(r_pref: Tensor, relevance: Tensor, positive: Tensor | None = None, *, tau: float = DEFAULT_TAU,
                   gate: bool = True) -> Tensor:
    """Eqs. 6-7: ``r_i = 1(s_i > tau) * r_pref_i`` (``gate=False``: ``r_pref_i``), then every candidate in
    ``D+`` (``positive`` bool ``[B, G]``) set to the group's highest ``r_i``. All tensors ``[B, G]``."""
    if r_pref.shape != relevance.shape or r_pref.dim() != 2:
        raise ValueError(f"r_pref and relevance must both be [B, G], got {tuple(r_pref.shape)} and "
                         f"{tuple(relevance.shape)}")
    r = r_pref * (relevance > tau).to(r_pref.dtype) if gate else r_pref.clone()
    if positive is not None:
        if positive.shape != r.shape:
            raise ValueError(f"positive must be [B, G] = {tuple(r.shape)}, got {tuple(positive.shape)}")
        if r.shape[1]:
            r = torch.where(positive.bool(), r.max(dim=1, keepdim=True).values.expand_as(r), r)
    return r


@dataclass
class GroupAdvantages:
    """``advantages [B, G]`` (0 at masked slots and in all-equal groups), the share of groups whose rewards are
    all equal, and each group's mean and std ``[B]``."""

    advantages: Tensor
    zero_std_share: float
    mean: Tensor
    std: Tensor


def group_advantages(rewards: Tensor, *, scale_rewards: bool | str = True, eps: float = 1e-4,
                     mask: Tensor | None = None) -> GroupAdvantages:
    """Group-relative advantages of ``rewards [B, G]`` (one group per row; see the module docstring).

    ``mask`` (bool ``[B, G]``) leaves slots out of the statistics (their advantage is 0). ``scale_rewards``:
    True or ``"group"`` (divide by the group's std), ``"batch"`` (by the std of every unmasked reward), False
    or ``"none"`` (centre only)."""
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [B, G] (one group per row), got shape {tuple(rewards.shape)}")
    modes = {True: "group", False: "none", "group": "group", "batch": "batch", "none": "none"}
    if scale_rewards not in modes:
        raise ValueError(f"scale_rewards must be True, False, 'group', 'batch' or 'none', got {scale_rewards!r}")
    mode = modes[scale_rewards]
    r = rewards.float()
    m = torch.ones_like(r, dtype=torch.bool) if mask is None else mask.bool()
    if m.shape != r.shape:
        raise ValueError(f"mask must be {tuple(r.shape)}, got {tuple(m.shape)}")
    mf = m.to(r.dtype)
    n = mf.sum(1)
    mean = (r * mf).sum(1) / n.clamp(min=1)
    dev = (r - mean[:, None]) * mf
    std = ((dev ** 2).sum(1) / (n - 1).clamp(min=1)).sqrt()
    big = torch.where(m, r, torch.full_like(r, -torch.inf)).max(1).values
    small = torch.where(m, r, torch.full_like(r, torch.inf)).min(1).values
    equal = (n <= 1) | (big - small <= 0) | torch.isclose(std, torch.zeros_like(std))
    if mode == "group":
        adv = dev / (std[:, None] + eps)
    elif mode == "batch":
        flat = r[m]
        adv = dev / ((flat.std() if flat.numel() > 1 else flat.new_zeros(())) + eps)
    else:
        adv = dev
    adv = torch.where(equal[:, None] | ~m, torch.zeros_like(adv), adv)
    share = float(equal.float().mean()) if len(equal) else 0.0
    return GroupAdvantages(adv, share, mean, std)


# ------------------------------------------------------------------------------------ the whole reward


@dataclass
class RolloutRewards:
    """Everything about a batch of rollout groups, ``[B, G]`` each: the catalogue item (-1 = invalid SID),
    ``r_pref``, relevance ``s``, the gate, membership in ``D+`` and the final reward ``r``."""

    items: Tensor
    r_pref: Tensor
    relevance: Tensor
    gate: Tensor
    in_positives: Tensor
    rewards: Tensor

    @property
    def valid(self) -> Tensor:
        return self.items >= 0


class HybridReward:
    """The reward of GRPO-SR rollouts: ``reward(history_items, rollout_codes, positives) -> RolloutRewards``.

    Bundles the reward model, the SID -> item lookup, the relevance embeddings and the flags: ``gate`` (eq. 6),
    ``anchor`` (eq. 7), ``tau``."""

    def __init__(self, model: SIMRewardModel, item_codes: Tensor | np.ndarray, level_sizes: Sequence[int],
                 item_embeddings: Tensor, *, tau: float = DEFAULT_TAU, gate: bool = True, anchor: bool = True) -> None:
        if tuple(model.config.level_sizes) != tuple(int(k) for k in level_sizes):
            raise ValueError(f"the reward model was trained on SID levels {list(model.config.level_sizes)}, the SID "
                             f"table has {list(level_sizes)}")
        self.model = model.eval()
        self.item_codes = torch.as_tensor(np.asarray(item_codes), dtype=torch.int64)
        self.lookup = SIDLookup(self.item_codes, level_sizes)
        self.item_embeddings = item_embeddings
        self.tau, self.gate, self.anchor = float(tau), bool(gate), bool(anchor)

    @classmethod
    def load(cls, directory: str | Path, catalog: ItemCatalog, table: SIDTable, **flags) -> HybridReward:
        """From a reward model directory (``genrec reward train``'s ``<out>/model``, or ``<out>`` itself)."""
        directory = Path(directory)
        if not (directory / "reward_model.json").exists() and (directory / "model" / "reward_model.json").exists():
            directory = directory / "model"
        return cls(SIMRewardModel.load(directory), sid_codes_for(catalog, table), table.level_sizes,
                   relevance_embeddings(catalog, table), **flags)

    def to(self, device) -> HybridReward:
        self.model.to(device)
        self.item_codes = self.item_codes.to(device)
        self.lookup = self.lookup.to(device)
        self.item_embeddings = self.item_embeddings.to(device)
        return self

    @torch.no_grad()
    def r_pref(self, history_items: Tensor, rollout_codes: Tensor) -> Tensor:
        """``r_pref [B, G]`` of rollout SIDs ``[B, G, L]`` (any tuple; empty or out-of-range slots: 0)."""
        sizes = torch.tensor(self.model.config.level_sizes, device=rollout_codes.device)
        codes = rollout_codes.to(torch.int64)
        codes = codes.masked_fill(((codes < 0) | (codes >= sizes)).any(-1, keepdim=True), -1)
        h = history_items.to(torch.int64)
        hist_codes = self.item_codes.to(h.device)[h.clamp(min=0)].masked_fill((h < 0)[..., None], -1)
        return self.model(hist_codes, h >= 0, codes)

    @torch.no_grad()
    def __call__(self, history_items: Tensor, rollout_codes: Tensor, positives: Tensor | None = None) -> RolloutRewards:
        """Rewards of rollout groups.

        Args:
            history_items: int64 ``[B, N]`` catalogue indices of each query's history, ``-1`` = padding.
            rollout_codes: int64 ``[B, G, L]`` generated SIDs (row ``b`` = query ``b``'s group); ``-1`` = empty.
            positives: int64 ``[B, P]`` catalogue indices of each query's ``D+``, ``-1`` = padding (None: no
                anchoring).
        """
        if rollout_codes.dim() != 3 or history_items.dim() != 2 or rollout_codes.shape[0] != history_items.shape[0]:
            raise ValueError(f"history_items [B, N] and rollout_codes [B, G, L] must share B, got "
                             f"{tuple(history_items.shape)} and {tuple(rollout_codes.shape)}")
        items = self.lookup(rollout_codes)
        r_pref = self.r_pref(history_items, rollout_codes)
        s = relevance(items, history_items, self.item_embeddings.to(items.device))
        gate = s > self.tau
        if positives is not None and self.anchor:
            in_pos = ((items[:, :, None] == positives[:, None, :]) & (items[:, :, None] >= 0)).any(-1)
        else:
            in_pos = torch.zeros_like(items, dtype=torch.bool)
        rewards = hybrid_rewards(r_pref, s, in_pos if self.anchor else None, tau=self.tau, gate=self.gate)
        return RolloutRewards(items, r_pref, s, gate, in_pos, rewards)
