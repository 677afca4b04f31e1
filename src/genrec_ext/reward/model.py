"""The SIM-style reward model (Pi et al. 2020; paper §2.3): ``r_pref = P(click | user history, candidate SID)``.

Everything is keyed by semantic IDs, never by item ids, so the model scores ANY SID tuple, a real item's or a
hallucinated one: that is what makes reward hacking possible, and what the relevance gate of
:mod:`genrec_ext.reward.hybrid` guards against.

Architecture (batched, no Python per user or candidate):

* **Item encoder.** An item (history or candidate) is its ``L`` codes; one embedding table per level, the rows
  summed (``combine="sum"``) or concatenated and projected (``"concat"``). Optionally (``tuple_buckets > 0``) a
  hashed embedding of the whole tuple is added: item-level capacity (quality, popularity) that still exists for
  any tuple; it starts at zero, so a bucket no training item hashed to adds nothing.
* **General search unit (GSU).** For each candidate, the top ``top_k`` history items:
  ``search="hard"`` takes the items that share the candidate's first code (its "category"), most recent first,
  and fills up with the most recent other items; ``search="soft"`` takes the items whose code embeddings are
  closest (cosine, gradients stopped as in SIM's separate search embeddings), ties to the more recent.
* **Exact search unit (ESU).** Multi-head target attention, the candidate as query, over the selected items
  (each plus an embedding of its age = how many history items are more recent).
* **User vector.** The mean of the ``recent`` most recent history items.
* **Prefix-match features** (``prefix_features``): for each depth ``d = 1..L``, ``log1p`` of how many history
  items share the candidate's first ``d`` codes and whether one of the ``recent`` latest does: SIM's category
  counts, generalised to the SID hierarchy.
* **MLP** on ``[cand, esu, user, cand * esu, cand * user, features]`` gives a logit; ``r_pref = sigmoid``.

Conventions: histories are ``int64 [B, N, L]`` with padding rows of ``-1`` (any alignment: the mask decides, and
the recency of a valid item is the number of valid items after it); candidates ``int64 [B, C, L]``; a candidate
row holding a ``-1`` is an empty slot (a dead beam) and gets probability 0. Codes ``>= level_sizes[l]`` are an
error.

On disk (:meth:`SIMRewardModel.save`): a directory with ``reward_model.json`` (format, config) and
``model.safetensors``, replaced atomically.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .._config import check, from_mapping
from .._io import atomic_directory, read_meta

FORMAT = "genrec-reward/1"
META_FILE = "reward_model.json"
WEIGHTS_FILE = "model.safetensors"
# Fixed odd multipliers of the tuple hash (< 2**31, so code * multiplier stays far inside int64).
_HASH_MULTIPLIERS = (1_000_003, 998_244_353, 1_004_535_809, 469_762_049, 167_772_161, 754_974_721, 1_811_939_329,
                     2_013_265_921)


@dataclass(frozen=True)
class RewardModelConfig:
    """Shape of a :class:`SIMRewardModel`. ``level_sizes``: codes per SID level (the SID table's)."""

    level_sizes: tuple[int, ...]
    dim: int = 32
    combine: Literal["sum", "concat"] = "sum"
    search: Literal["hard", "soft"] = "hard"
    top_k: int = 20  # history items the general search unit hands to the exact search unit
    heads: int = 2
    recent: int = 5  # most recent history items pooled into the user vector (and the prefix "recent" flag)
    hidden: tuple[int, ...] = (128, 64)
    tuple_buckets: int = 4096  # hashed whole-SID embedding rows; 0 = off
    prefix_features: bool = True
    max_age: int = 64  # ages >= max_age - 1 share the last age embedding
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "level_sizes", tuple(int(k) for k in self.level_sizes))
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        check([
            (len(self.level_sizes) >= 1 and all(k >= 1 for k in self.level_sizes),
             f"level_sizes must be >= 1 codes per level, got {list(self.level_sizes)}"),
            (len(self.level_sizes) <= len(_HASH_MULTIPLIERS), f"at most {len(_HASH_MULTIPLIERS)} SID levels"),
            (self.heads >= 1, f"heads must be >= 1, got {self.heads}"),
            (self.dim >= 1 and self.dim % max(self.heads, 1) == 0,
             f"dim ({self.dim}) must be >= 1 and divide by heads ({self.heads})"),
            (self.combine in ("sum", "concat"), f"combine must be 'sum' or 'concat', got {self.combine!r}"),
            (self.search in ("hard", "soft"), f"search must be 'hard' or 'soft', got {self.search!r}"),
            (self.top_k >= 1, f"top_k must be >= 1, got {self.top_k}"),
            (self.recent >= 1, f"recent must be >= 1, got {self.recent}"),
            (self.tuple_buckets >= 0, f"tuple_buckets must be >= 0, got {self.tuple_buckets}"),
            (self.max_age >= 1, f"max_age must be >= 1, got {self.max_age}"),
            (0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}"),
        ], prefix="RewardModelConfig: ")

    @property
    def levels(self) -> int:
        return len(self.level_sizes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RewardModelConfig:
        return from_mapping(cls, values)


class SIMRewardModel(nn.Module):
    """``forward(history_codes [B, N, L], history_mask [B, N] | None, candidate_codes [B, C, L]) -> [B, C]``
    click probabilities in [0, 1] (see the module docstring)."""

    def __init__(self, config: RewardModelConfig) -> None:
        super().__init__()
        self.config = c = config
        d, L = c.dim, c.levels
        offsets = torch.tensor([0, *torch.tensor(c.level_sizes).cumsum(0).tolist()[:-1]], dtype=torch.int64)
        self.register_buffer("level_offsets", offsets, persistent=False)
        self.register_buffer("level_limits", torch.tensor(c.level_sizes, dtype=torch.int64), persistent=False)
        self.register_buffer("hash_multipliers", torch.tensor(_HASH_MULTIPLIERS[:L], dtype=torch.int64),
                             persistent=False)
        width = d if c.combine == "sum" else d * L
        self.code_embedding = nn.Embedding(sum(c.level_sizes), d)  # one block of rows per level
        nn.init.normal_(self.code_embedding.weight, std=0.1)
        self.combine_proj = nn.Linear(width, d) if c.combine == "concat" else None
        self.tuple_embedding = nn.Embedding(c.tuple_buckets, d) if c.tuple_buckets else None
        if self.tuple_embedding is not None:
            nn.init.zeros_(self.tuple_embedding.weight)
        self.age_embedding = nn.Embedding(c.max_age, d)
        nn.init.normal_(self.age_embedding.weight, std=0.02)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d) for _ in range(4))
        n_feat = 2 * L if c.prefix_features else 0
        layers: list[nn.Module] = []
        width = 5 * d + n_feat
        for h in c.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if c.dropout:
                layers.append(nn.Dropout(c.dropout))
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    # ------------------------------------------------------------------------------------ building blocks

    def encode(self, codes: Tensor) -> Tensor:
        """Item vectors ``[..., dim]`` of SID codes ``[..., L]`` (rows with a ``-1`` must be masked by the
        caller; they are encoded as code 0)."""
        c = self.config
        safe = codes.clamp(min=0)
        rows = self.code_embedding(safe + self.level_offsets)  # [..., L, d]
        if c.combine == "sum":
            x = rows.sum(-2)
        else:
            x = self.combine_proj(rows.flatten(-2))
        if self.tuple_embedding is not None:
            bucket = (safe * self.hash_multipliers).sum(-1) % c.tuple_buckets
            x = x + self.tuple_embedding(bucket)
        return x

    def search(self, cand: Tensor, cand_codes: Tensor, hist: Tensor, hist_codes: Tensor, mask: Tensor,
               age: Tensor) -> tuple[Tensor, Tensor]:
        """The general search unit: indices ``[B, C, k]`` into the history and whether each is a real item."""
        c = self.config
        N = hist.shape[1]
        k = min(c.top_k, N)
        recency = (N - age.clamp(max=N)).to(cand.dtype)  # larger = more recent, in [0, N]
        if c.search == "hard":
            same = (hist_codes[:, None, :, 0] == cand_codes[:, :, None, 0]).to(cand.dtype)  # [B, C, N]
            score = same * (N + 1) + recency[:, None, :]
        else:
            sim = F.normalize(cand.detach(), dim=-1) @ F.normalize(hist.detach(), dim=-1).transpose(1, 2)
            score = sim + recency[:, None, :] * (1e-4 / max(N, 1))  # ties to the more recent item
        score = score.masked_fill(~mask[:, None, :], -math.inf)
        idx = score.topk(k, dim=-1).indices  # [B, C, k]
        return idx, mask[:, None, :].expand_as(score).gather(-1, idx)

    def attend(self, cand: Tensor, keys: Tensor, valid: Tensor) -> Tensor:
        """Multi-head target attention: queries ``[B, C, d]`` over ``keys [B, C, k, d]``; 0 where no key is valid."""
        c = self.config
        B, C, k, d = keys.shape
        h, dh = c.heads, d // c.heads
        q = self.q_proj(cand).view(B, C, 1, h, dh)
        kk = self.k_proj(keys).view(B, C, k, h, dh)
        v = self.v_proj(keys).view(B, C, k, h, dh)
        logits = (q * kk).sum(-1) / math.sqrt(dh)  # [B, C, k, h]
        logits = logits.masked_fill(~valid[..., None], -math.inf)
        w = torch.softmax(logits, dim=2).nan_to_num(0.0)  # rows without any valid key -> 0
        out = (w[..., None] * v).sum(2).reshape(B, C, d)
        return self.o_proj(out) * valid.any(-1, keepdim=True).to(out.dtype)

    # ---------------------------------------------------------------------------------------- forward

    def logits(self, history_codes: Tensor, history_mask: Tensor | None, candidate_codes: Tensor) -> Tensor:
        """Click logits ``[B, C]``; empty candidate slots (a ``-1`` code) get ``-inf``."""
        c = self.config
        history_mask = self._check(history_codes, history_mask, candidate_codes)
        hist = self.encode(history_codes)  # [B, N, d]
        cand = self.encode(candidate_codes)  # [B, C, d]
        maskf = history_mask.to(hist.dtype)
        # age of a valid item = how many valid items come after it (0 = the most recent)
        age = (maskf.flip(1).cumsum(1).flip(1) - maskf).to(torch.int64)
        hist_aged = hist + self.age_embedding(age.clamp(max=c.max_age - 1))
        idx, sel_valid = self.search(cand, candidate_codes, hist, history_codes, history_mask, age)
        B, C, k = idx.shape
        keys = hist_aged.gather(1, idx.reshape(B, C * k, 1).expand(B, C * k, c.dim)).view(B, C, k, c.dim)
        esu = self.attend(cand, keys, sel_valid)
        recent = history_mask & (age < c.recent)
        rw = recent.to(hist.dtype)
        user = (rw[..., None] * hist).sum(1) / rw.sum(1, keepdim=True).clamp(min=1.0)  # [B, d]
        user = user[:, None, :].expand(B, C, c.dim)
        parts = [cand, esu, user, cand * esu, cand * user]
        if c.prefix_features:
            parts.append(self._prefix_features(history_codes, history_mask, recent, candidate_codes).to(hist.dtype))
        out = self.mlp(torch.cat(parts, dim=-1)).squeeze(-1)
        return out.masked_fill((candidate_codes < 0).any(-1), -math.inf)

    def forward(self, history_codes: Tensor, history_mask: Tensor | None, candidate_codes: Tensor) -> Tensor:
        return torch.sigmoid(self.logits(history_codes, history_mask, candidate_codes))

    def _prefix_features(self, hist_codes: Tensor, mask: Tensor, recent: Tensor, cand_codes: Tensor) -> Tensor:
        eq = hist_codes[:, None, :, :] == cand_codes[:, :, None, :]  # [B, C, N, L]
        prefix = eq.to(torch.int32).cumprod(-1).bool() & mask[:, None, :, None]  # shares the first d+1 codes
        count = prefix.sum(2).float()  # [B, C, L]
        near = (prefix & recent[:, None, :, None]).any(2).float()
        return torch.cat([torch.log1p(count), near], dim=-1)

    def _check(self, history_codes: Tensor, history_mask: Tensor | None, candidate_codes: Tensor) -> Tensor:
        L = self.config.levels
        for name, t in (("history_codes", history_codes), ("candidate_codes", candidate_codes)):
            if t.dim() != 3 or t.shape[-1] != L:
                raise ValueError(f"{name} must be [B, *, {L}] SID codes, got shape {tuple(t.shape)}")
            if t.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"{name} must hold integer codes, got {t.dtype}")
            if t.numel() and ((t < -1).any() or (t >= self.level_limits).any()):
                raise ValueError(f"{name} holds codes outside [-1, level_size) for level sizes "
                                 f"{list(self.config.level_sizes)}")
        if history_codes.shape[0] != candidate_codes.shape[0]:
            raise ValueError(f"history_codes and candidate_codes disagree on the batch size: "
                             f"{history_codes.shape[0]} vs {candidate_codes.shape[0]}")
        if history_mask is None:
            history_mask = (history_codes >= 0).all(-1)
        elif history_mask.shape != history_codes.shape[:2]:
            raise ValueError(f"history_mask must be {tuple(history_codes.shape[:2])}, got {tuple(history_mask.shape)}")
        else:
            history_mask = history_mask.bool()
            if ((history_codes < 0).any(-1) & history_mask).any():
                raise ValueError("history_mask marks history rows holding -1 codes as real items")
        return history_mask

    # -------------------------------------------------------------------------------------- save / load

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write ``reward_model.json`` + ``model.safetensors`` into ``directory`` (replaced atomically)."""
        with atomic_directory(directory) as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, tmp / WEIGHTS_FILE)
            meta = {"format": FORMAT, "config": self.config.to_dict(), **(extra or {})}
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> SIMRewardModel:
        directory = Path(directory)
        meta = read_meta(directory, META_FILE, "a reward model directory", FORMAT)
        model = cls(RewardModelConfig.from_dict(meta["config"]))
        model.load_state_dict(load_file(directory / WEIGHTS_FILE, device=str(map_location)))
        return model.eval()
