"""GRPO-SR preference alignment (paper §2.3, eq. 8) of an SFT-trained GenRec model: our own loop.

    from genrec_ext import eval as ev, reward
    rm = reward.HybridReward.load("runs/rm", catalog, table)                  # gate + anchoring on
    validate = ev.make_rl_validator(splits.valid, catalog, table, rm)         # R@1/10, HR/NDCG@10, HaR@10
    result = train_rl(model, rm, (catalog, splits, table), RLConfig(alpha=1.0), out_dir="runs/rl",
                      validate=validate)

One optimiser step
    ``batch_size`` training queries (pages with a non-empty history and at least one positive, D+), taken in
    order from a seeded permutation fixed per epoch (as SFT: the batch of step ``s`` is a pure function of
    ``(seed, s)``, so a resumed run sees exactly the batches of the uninterrupted one).

    1. Rollouts: the ``num_generations`` (G) beams of our point-wise beam search for each query, under
       ``no_grad``, trie-constrained or not (``constrained``; the hacking study needs unconstrained rollouts).
       A beam the search could not fill (a dead slot) is no rollout: no reward statistics, no loss.
    2. Rewards: :class:`genrec_ext.reward.HybridReward` (eqs. 6-7; ``gate`` toggles the relevance gate),
       matched to the rollouts by index (query ``b``, beam ``g``), never by any text. A hallucinated SID (no item)
       is still a rollout: its reward is 0 with the gate (and ``r_pref`` without it), and its tokens are
       scored, which is how the policy learns to avoid it.
    3. Advantages: :func:`genrec_ext.reward.group_advantages` per query (``scale_rewards``).
    4. ONE policy update (``num_iterations = 1``, the paper): the G rollout SIDs and the query's positives'
       SIDs are teacher-forced through the model (each as a point-wise target after the prompt, as
       :func:`genrec_ext.decoding.sequence_log_probs` lays them out), and ``genrec::grpo_sr_loss`` is applied
       per SID level with that level's block of the LM head (the level-wise softmax beam search scores with,
       so the trained pi is the served pi), rows weighted by :meth:`genrec_ext.nn.GRPOSRLoss.row_weights`:
       policy coefficient ``A_i / (Q G L)`` on rollout tokens, NLL coefficient ``alpha / (Q |D+_q|)`` on the
       positive items' tokens. The ratio is ``pi / sg(pi)`` (value 1), so ``epsilon`` is unused unless
       ``num_iterations > 1`` (then PPO-style clipping against the rollout policy's log-probs). ``beta > 0``
       adds the k3 KL to a frozen copy of the starting (SFT) model on rollout tokens.

    GRPO = ``alpha=0``; GRPO-SR = ``alpha>0``; either with or without the gate (``gate=False``).
    Dropout is off throughout (rollouts and update use the same eval-mode policy).

Defaults (measured once, seed 0, on the default synthetic world from the `genrec experiment table1` GenRec SFT
    model, 400 steps of 16 queries, G = 8, unconstrained rollouts, last weights, validation split): ``alpha=1,
    lr=1e-4`` raised R@1 0.506 -> 0.573 at HR@10 0.514 -> 0.503 and HR@50 0.821 -> 0.819; ``alpha=0.1`` raised R@1
    to 0.662 but cost HR@50 (0.785), plain GRPO (``alpha=0``) 0.667 at HR@50 0.720. The NLL term on D+ is what
    keeps the hit rate; without the gate GRPO's unconstrained rollouts drift to hallucinated SIDs (HaR@10 0.107
    after 400 steps at lr 1e-4, 0.005 with the gate).

Model selection
    With ``validate(model) -> {metric: value}`` (e.g. :func:`genrec_ext.eval.make_rl_validator`), the model is
    validated before the first step (the SFT start, logged at step 0), every ``eval_every`` steps and at the end;
    the weights with the best ``select_metric`` (default ``R@10``: the reward-model score of the best of the
    constrained top 10 on the validation split, the quantity RL optimises; the SFT start competes too) are
    saved to ``<out>/model`` and loaded into ``model``.

Outputs under ``out_dir``
    ``config.json``, ``metrics.jsonl`` (per ``log_every`` steps: loss, reward, r_pref, zero_std_share,
    invalid_share, gated_share, anchored_share, ...; ``valid/<metric>`` records), ``rl.png`` (reward, R@K, HR, HaR
    over steps), ``checkpoints/step_*.pt`` (atomic; model, optimiser, RNG, step, selection; ``resume=True``
    continues from the newest), ``model/`` (``save_pretrained``).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._config import check, from_mapping
from ..data import DEFAULT_MAX_HISTORY
from ..decoding import beam_search, level_logits
from ..model import hf_progress_bars
from ..model.batch import PackedSFTBatch, history_prompts, padded_rows
from ..nn import GRPOSRLoss
from ..ops import grpo_sr_loss
from ..reward import group_advantages
from ..sid import SIDTable, SIDTrie, SIDVocab, sid_codes_for
from ..sid.vocab import PAD, SEP
from . import checkpoint as ckpt
from . import distributed as D
from .metrics import METRICS_FILE, MetricsLogger, read_metrics, truncate_metrics
from .sampling import epoch_order
from .sft import CONFIG_FILE, MODEL_DIR, _seed_everything

PLOT_FILE = "rl.png"
KIND = "rl"

#: fields that fix which queries each step sees and how rollouts are made; a resumed run must keep them.
_RESUME_FIELDS = ("batch_size", "seed", "num_generations", "constrained", "max_history")


@dataclass
class RLConfig:
    """A GRPO-SR run (names follow TRL's ``GRPOConfig`` where they exist)."""

    out_dir: str = "runs/rl"
    # the objective (eq. 8)
    num_generations: int = 8  # G: group size = beam width of the rollouts
    alpha: float = 1.0  # weight of the NLL on the positives D+ (0 = plain GRPO); see the note on defaults
    gate: bool = True  # relevance gate of eq. 6 (False: the "w/o gate" ablations)
    tau: float | None = None  # gate threshold (None: the reward's own, genrec_ext.reward.DEFAULT_TAU)
    anchor: bool = True  # eq. 7: positives get the group's max reward
    constrained: bool = True  # trie-constrained rollouts (False: free SIDs, hallucinations possible)
    scale_rewards: bool | str = True  # True/"group", "batch", False/"none" (TRL)
    beta: float = 0.0  # k3 KL to the frozen starting model; 0 = off
    num_iterations: int = 1  # policy updates per rollout batch (TRL); > 1 enables the clipped ratio
    epsilon: float = 0.2  # clip range, only with num_iterations > 1
    # optimisation
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    batch_size: int = 16  # queries per step
    steps: int | None = None  # optimiser steps; None: `epochs` passes over the training queries
    epochs: float = 1.0
    max_history: int | None = None  # history cap (None: the task's, else data.DEFAULT_MAX_HISTORY)
    device: str = "auto"
    seed: int = 0
    # bookkeeping
    log_every: int = 10
    eval_every: int = 50  # steps between validations (with a validate function); 0 = only at start and end
    select_metric: str = "R@10"  # higher is better
    checkpoint_every: int = 0  # 0 = only the final checkpoint
    keep_checkpoints: int = 2
    plot: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.scale_rewards, str) and self.scale_rewards.lower() in ("true", "false"):
            self.scale_rewards = self.scale_rewards.lower() == "true"
        check([
            (self.num_generations >= 2,
             f"num_generations must be >= 2 (a group needs two rollouts), got {self.num_generations}"),
            (self.alpha >= 0, f"alpha must be >= 0, got {self.alpha}"),
            (self.beta >= 0, f"beta must be >= 0, got {self.beta}"),
            (self.epsilon >= 0, f"epsilon must be >= 0, got {self.epsilon}"),
            (self.num_iterations >= 1, f"num_iterations must be >= 1, got {self.num_iterations}"),
            (self.scale_rewards in (True, False, "group", "batch", "none"),
             f"scale_rewards must be True, False, 'group', 'batch' or 'none', got {self.scale_rewards!r}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.steps is None or self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (self.steps is not None or self.epochs > 0, f"epochs must be > 0, got {self.epochs}"),
            (self.max_history is None or self.max_history >= 1, f"max_history must be >= 1, got {self.max_history}"),
            (self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}"),
            (self.eval_every >= 0, f"eval_every must be >= 0, got {self.eval_every}"),
            (self.checkpoint_every >= 0, f"checkpoint_every must be >= 0, got {self.checkpoint_every}"),
            (self.keep_checkpoints >= 0, f"keep_checkpoints must be >= 0, got {self.keep_checkpoints}"),
            (self.tau is None or self.tau >= -1, f"tau must be >= -1 (a cosine threshold), got {self.tau}"),
        ], prefix="RLConfig: ")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RLConfig:
        return from_mapping(cls, values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RLResult:
    step: int
    total_steps: int
    out_dir: Path
    model_dir: Path
    checkpoint: Path | None
    metrics_path: Path
    plot_path: Path | None
    elapsed: float
    resumed_from: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # the records this run logged
    start: dict[str, float] | None = None  # validation metrics of the starting (SFT) model
    best: dict[str, Any] | None = None  # {"step", "value", "metrics"} of the selected weights


Validate = Callable[[nn.Module], Mapping[str, float]]


# ----------------------------------------------------------------------------------------- the queries


class RLQueries:
    """Training queries of GRPO-SR: the samples with history and positives, as the tensors a step needs."""

    def __init__(self, samples, catalog, table: SIDTable, max_history: int) -> None:
        hist_len = np.minimum(samples.history.lengths, max_history)
        keep = np.flatnonzero((hist_len > 0) & (samples.positives.lengths > 0))
        if len(keep) == 0:
            raise ValueError("no training query has both a history and a positive (clicked or ordered) item")
        self.samples, self.index, self.max_history = samples, keep, max_history
        self.codes = torch.from_numpy(sid_codes_for(catalog, table)).to(torch.int64)  # [I, L] catalogue order
        self.item_tokens = SIDVocab(tuple(table.level_sizes)).tokens(self.codes).numpy()  # [I, L] SID tokens

    def __len__(self) -> int:
        return len(self.index)

    def batch(self, rows: np.ndarray) -> dict[str, Tensor]:
        """``history_items [B, N]`` / ``positives [B, P]`` (catalogue indices, -1 padding), ``history`` tokens
        ``[B, N, L]`` (PAD-filled) and ``history_len [B]``."""
        s = self.index[rows]
        history, history_len, history_items = history_prompts(
            [self.samples.history[i][-self.max_history:] for i in s], self.item_tokens, pad=PAD)
        positives, _ = padded_rows([self.samples.positives[i] for i in s])
        return {"history_items": history_items, "positives": torch.from_numpy(positives), "history": history,
                "history_len": history_len}


def step_rows(num_queries: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Query rows of optimiser step ``step``: a per-epoch seeded permutation, cut in batches (the trailing
    partial batch of an epoch is dropped)."""
    per_epoch = max(1, num_queries // batch_size)
    epoch, pos = divmod(step, per_epoch)
    return epoch_order(num_queries, seed, epoch)[pos * batch_size:(pos + 1) * batch_size]


# ------------------------------------------------------------------------------------------- the loss


@dataclass
class RolloutBatch:
    """One step's rollouts and what the update needs, ``[B, G]`` unless noted."""

    codes: Tensor  # int64 [B, G, L] rollout SIDs (-1 in dead slots)
    alive: Tensor  # bool: the slot holds a generated SID
    rewards: Any  # reward.RolloutRewards
    advantages: Tensor
    zero_std_share: float


def teacher_forced_hidden(model, history: Tensor, history_len: Tensor, targets: Tensor,
                          query: Tensor | None = None) -> Tensor:
    """Final hidden states ``[M, L, H]`` at the L positions that predict each target SID's tokens (``targets``
    ``[M, L]`` token ids, one point-wise target per row) after the prompt of history row ``query[m]``
    (``history`` ``[Q, N, L]``; default: row m). Laid out packed: each prompt is encoded once, however many of a
    query's rollouts and positives read it (G + |D+| rows per query), with the hidden states of one row per target."""
    m, levels = targets.shape
    device = targets.device
    query = torch.arange(m, device=device) if query is None else query
    # blocks grouped by query, as collate_packed lists them
    order = torch.sort(query, stable=True).indices
    blocks = torch.cat([torch.full((m, 1), SEP, dtype=targets.dtype, device=device), targets[order]], 1)
    batch = PackedSFTBatch(history, history_len, blocks, torch.full((m,), levels + 1, device=device), query[order],
                           history_len[query[order]])
    lay = model.layout(batch)
    hidden = model.hidden_states(lay.inputs_embeds, lay.attention_mask, lay.position_ids)
    return hidden[lay.label_mask].view(m, levels, -1)[torch.argsort(order)]


def level_heads(model) -> list[tuple[Tensor, Tensor | None]]:
    """The LM head's (weight, bias) block of each SID level (decoding's level-wise softmax)."""
    return [model.head_block(start, size) for start, size in zip(model.vocab.offsets, model.vocab.level_sizes)]


def grpo_sr_rows(codes: Tensor, alive: Tensor, advantages: Tensor, positive_codes: Tensor,
                 positive_query: Tensor) -> dict[str, Tensor]:
    """Rows of eq. 8 for a batch of Q queries: rollout rows ``[Q G, L]`` then positive rows ``[P, L]``.

    Returns ``codes [R, L]`` (per-level code targets, -100 in dead slots), ``advantages [R, L]`` (A_i on
    rollout rows, 0 on positive rows), ``rollout_weight [R, L]`` (``1 / (Q G L)`` on live rollout tokens) and
    ``positive_weight [R, L]`` (``1 / (Q |D+_q|)`` on positive tokens)."""
    q, g, levels = codes.shape
    roll_codes = codes.reshape(q * g, levels)
    roll_mask = alive.reshape(q * g, 1).expand(-1, levels)
    pos_mask = torch.ones(positive_codes.shape, dtype=torch.bool, device=codes.device)
    roll_w, pos_w = GRPOSRLoss.row_weights(roll_mask, g, pos_mask, positive_query, num_queries=q)
    zeros_r = torch.zeros_like(roll_w)
    zeros_p = torch.zeros_like(pos_w)
    return {
        "codes": torch.cat([torch.where(roll_mask, roll_codes, torch.full_like(roll_codes, -100)), positive_codes]),
        "advantages": torch.cat([advantages.reshape(q * g, 1).expand(-1, levels).to(roll_w), zeros_p]),
        "rollout_weight": torch.cat([roll_w, zeros_p]),
        "positive_weight": torch.cat([zeros_r, pos_w]),
    }


def grpo_sr_step_loss(model, history: Tensor, history_len: Tensor, codes: Tensor, alive: Tensor, advantages: Tensor,
                      positives: Tensor, item_codes: Tensor, *, alpha: float, beta: float = 0.0,
                      ref_model=None, old_logp: Tensor | None = None, epsilon: float = 0.2
                      ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Eq. 8 for one step: teacher-force the rollouts (``codes [Q, G, L]``, ``alive [Q, G]``, ``advantages
    [Q, G]``) and each query's positive items (``positives [Q, P]`` catalogue indices, -1 padding;
    ``item_codes [I, L]``) after the query's prompt (``history [Q, N, L]`` tokens, ``history_len [Q]``), and
    apply ``genrec::grpo_sr_loss`` level by level. Returns ``(loss, logp [R, L], rows)``."""
    q, g, levels = codes.shape
    pq, pi = torch.nonzero(positives >= 0, as_tuple=True)
    pos_codes = item_codes[positives[pq, pi]]
    rows = grpo_sr_rows(codes, alive, advantages, pos_codes, pq)
    seq_codes = rows["codes"].clamp(min=0)
    query = torch.cat([torch.arange(q, device=codes.device).repeat_interleave(g), pq])
    tokens = model.vocab.tokens(seq_codes)
    hidden = teacher_forced_hidden(model, history, history_len, tokens, query)  # [R, L, H]
    ref_logp = None
    if beta and ref_model is not None:
        with torch.no_grad():
            ref_hidden = teacher_forced_hidden(ref_model, history, history_len, tokens, query)
            ref_logp = torch.stack([torch.log_softmax(level_logits(ref_model, ref_hidden[:, l], l).float(), -1)
                                    .gather(1, seq_codes[:, l:l + 1]).squeeze(1) for l in range(levels)], 1)
    policy_coef = rows["advantages"] * rows["rollout_weight"]
    nll_coef = alpha * rows["positive_weight"]
    kl_coef = beta * rows["rollout_weight"] if ref_logp is not None else None
    total, logps = hidden.new_zeros((), dtype=torch.float32), []
    for level, (weight, bias) in enumerate(level_heads(model)):
        loss, logp = grpo_sr_loss(hidden[:, level], weight, rows["codes"][:, level], policy_coef[:, level],
                                  nll_coef[:, level], bias,
                                  old_logp=None if old_logp is None else old_logp[:, level], epsilon=epsilon,
                                  ref_logp=None if ref_logp is None else ref_logp[:, level],
                                  kl_coef=None if kl_coef is None else kl_coef[:, level])
        total = total + loss
        logps.append(logp)
    return total, torch.stack(logps, 1), rows


# ------------------------------------------------------------------------------------------- the loop


def _resolve_data(data) -> tuple[Any, Any, SIDTable, int | None]:
    if isinstance(data, tuple):
        if len(data) != 3:
            raise ValueError("data must be a task (with .catalog, .splits, .table) or (catalog, splits, table)")
        return (*data, None)
    for name in ("catalog", "splits", "table"):
        if getattr(data, name, None) is None:
            raise ValueError(f"data has no {name}: pass a task with a SID table, or (catalog, splits, table)")
    return data.catalog, data.splits, data.table, getattr(data, "max_history", None)


class _Selection:
    def __init__(self, validate: Validate | None, metric: str) -> None:
        self.validate, self.metric = validate, metric
        self.best: dict[str, Any] | None = None
        self.state: dict[str, Tensor] | None = None
        self.start: dict[str, float] | None = None

    def run(self, model, step: int) -> dict[str, Any]:
        metrics = {k: float(v) for k, v in self.validate(model).items()}
        if self.metric not in metrics:
            raise ValueError(f"select_metric {self.metric!r} is not among the validation metrics {sorted(metrics)}")
        if step == 0:
            self.start = metrics
        value = metrics[self.metric]
        if self.best is None or value > self.best["value"]:
            self.best = {"step": step, "value": value, "metrics": metrics}
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return {"step": step, **{f"valid/{k}": v for k, v in metrics.items()},
                f"best/{self.metric}": self.best["value"], "best/step": self.best["step"]}

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "weights": self.state, "start": self.start}

    def load_state_dict(self, saved: dict[str, Any] | None) -> None:
        if saved:
            self.best, self.state, self.start = saved.get("best"), saved.get("weights"), saved.get("start")


def train_rl(model, reward, data, config: RLConfig | None = None, *, out_dir: str | Path | None = None,
             resume: bool = False, progress: bool = True, validate: Validate | None = None,
             callback: Callable[[int, dict[str, Any]], None] | None = None) -> RLResult:
    """GRPO-SR (module docstring) of ``model`` (an SFT-trained GenRecModel) with ``reward`` (a
    :class:`genrec_ext.reward.HybridReward`; its ``gate``/``tau``/``anchor`` are set from ``config``) on the
    training split of ``data`` (a task with ``.catalog``, ``.splits``, ``.table`` and ``.max_history``, or
    ``(catalog, splits, table)``). ``resume=True`` continues from the newest checkpoint in the output
    directory (model, optimiser, RNG, step, selection). ``callback(step, record)`` runs after every step with
    that step's training statistics. Returns an :class:`RLResult`; ``model`` then holds the selected weights
    (the last ones without ``validate``).

    Under ``torchrun`` (see :mod:`.distributed`) the ``batch_size`` queries of a step are split evenly over the
    ranks (it must be a multiple of the world size): each rank makes the rollouts of its queries, their
    rewards and advantages (``scale_rewards="batch"`` takes the std over the whole step's rewards), and the
    gradients are averaged over ranks before clipping, so N ranks step exactly as one process (up to float
    summation order). Logged statistics are means over ranks; rank 0 alone validates, writes checkpoints,
    metrics and the model, and its ``model`` holds the selected weights."""
    config = config or RLConfig()
    if out_dir is not None:
        config = RLConfig.from_dict({**config.to_dict(), "out_dir": str(out_dir)})
    info = D.init_distributed(config.device)
    try:
        with hf_progress_bars(progress and info.is_main):
            return _train_rl(model, reward, data, config, info, resume=resume, progress=progress and info.is_main,
                             validate=validate if info.is_main else None, callback=callback)
    finally:
        D.cleanup(info)


def _train_rl(model, reward, data, config: RLConfig, info: D.DistInfo, *, resume: bool, progress: bool,
              validate: Validate | None, callback) -> RLResult:
    catalog, splits, table, task_history = _resolve_data(data)
    if getattr(model, "vocab", None) is None:
        raise TypeError(f"{type(model).__name__} has no .vocab: train_rl needs a GenRecModel")
    level_sizes = [int(k) for k in model.vocab.level_sizes]
    if level_sizes != [int(k) for k in table.level_sizes]:
        raise ValueError(f"the model was trained on SID levels {level_sizes}, the SID table has "
                         f"{list(table.level_sizes)}")
    if list(reward.model.config.level_sizes) != level_sizes:
        raise ValueError(f"the reward model scores SID levels {list(reward.model.config.level_sizes)}, the policy "
                         f"generates {level_sizes}")
    max_history = config.max_history or task_history or DEFAULT_MAX_HISTORY
    queries = RLQueries(splits.train, catalog, table, max_history)
    if len(queries) < config.batch_size:
        raise ValueError(f"{len(queries)} training queries, fewer than one batch (batch_size={config.batch_size})")
    if config.batch_size % info.world_size:
        raise ValueError(f"batch_size={config.batch_size} queries per step cannot be split evenly over "
                         f"{info.world_size} ranks: use a multiple of the world size")
    per_epoch = len(queries) // config.batch_size
    total_steps = config.steps if config.steps is not None else max(1, math.ceil(config.epochs * per_epoch))

    device = info.device
    out = Path(config.out_dir)
    ck_dir = out / ckpt.CHECKPOINT_DIR
    if not resume and ckpt.list_checkpoints(ck_dir):  # every rank sees the same files: all raise, or none
        if not config.overwrite:
            raise FileExistsError(f"{out} already holds checkpoints of a run ({ck_dir}); pass resume=True to "
                                  f"continue it, or overwrite=True / a fresh out_dir to start over")
        D.barrier(info)  # everyone has looked before rank 0 clears
        if info.is_main:
            shutil.rmtree(ck_dir)
    if info.is_main:
        ck_dir.mkdir(parents=True, exist_ok=True)
        ckpt.remove_stale_temporaries(ck_dir)
    D.barrier(info)
    resume_path = ckpt.latest_checkpoint(ck_dir) if resume else None
    state = None
    if resume_path is not None:
        state = ckpt.load_checkpoint(resume_path)
        if state.get("kind") != KIND:
            raise ValueError(f"{resume_path} is not a GRPO-SR checkpoint")
        ckpt.check_vocabulary(state, level_sizes, resume_path)
        saved = state.get("config", {})
        for name in _RESUME_FIELDS:
            if name in saved and saved[name] != getattr(config, name):
                raise ValueError(f"cannot resume from {resume_path}: it was trained with {name}={saved[name]!r} but "
                                 f"this run has {name}={getattr(config, name)!r}")

    reward = copy.copy(reward)  # the run's gate / anchor / tau, never the caller's (a judge of other runs, say)
    reward.gate, reward.anchor = config.gate, config.anchor
    if config.tau is not None:
        reward.tau = float(config.tau)
    reward = reward.to(device)
    _seed_everything(config.seed)
    model.to(device).eval()  # no dropout: rollouts and updates see the same policy
    ref_model = None
    if config.beta > 0:  # the frozen start (before any checkpoint is loaded into the model)
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    selection = _Selection(validate, config.select_metric)
    start_step, elapsed_before = 0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        selection.load_state_dict(state.get("selection"))
        start_step = int(state["step"])
        elapsed_before = float(state.get("elapsed", 0.0))
        ckpt.restore_rng_state(state["rng"])
    del state

    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_FILE).write_text(json.dumps({
            "rl": config.to_dict(), "device": str(device), "world_size": info.world_size,
            "training_queries": len(queries), "total_steps": total_steps, "steps_per_epoch": per_epoch,
            "vocab_level_sizes": level_sizes, "max_history": max_history,
            "reward": {"gate": reward.gate, "tau": reward.tau, "anchor": reward.anchor},
            "resumed_from_step": start_step if resume_path else None}, indent=2) + "\n")
        if resume_path is not None:
            truncate_metrics(out / METRICS_FILE, start_step)
    logger = MetricsLogger(out, enabled=info.is_main, append=resume_path is not None)
    trie = SIDTrie.from_table(table).to(device)
    item_codes = queries.codes.to(device)
    history: list[dict[str, Any]] = []

    def log(record: dict[str, Any]) -> None:
        logger.log(record)
        history.append(record)

    bar = tqdm(total=total_steps, initial=start_step, desc="grpo-sr", unit="step", dynamic_ncols=True,
               disable=not progress)
    run_start = time.perf_counter()
    last_ckpt = ckpt.latest_checkpoint(ck_dir) if info.is_main else None
    window: list[dict[str, float]] = []
    try:
        if validate is not None and start_step == 0:
            log(selection.run(model, 0))
            model.eval()
        for step in range(start_step, total_steps):
            rows = np.array_split(step_rows(len(queries), config.batch_size, config.seed, step),
                                  info.world_size)[info.rank]  # this rank's share of the step's queries
            batch = {k: v.to(device) for k, v in queries.batch(rows).items()}
            stats = _rl_step(model, reward, batch, trie, table, item_codes, optimizer, config, ref_model, info)
            window.append(stats)
            done = step + 1
            bar.update(1)
            if callback is not None:
                callback(done, stats)
            if done % config.log_every == 0 or done == total_steps:
                record = {"step": done, **{k: float(np.mean([w[k] for w in window])) for k in window[0]},
                          "lr": config.lr, "queries": done * config.batch_size,
                          "elapsed": elapsed_before + time.perf_counter() - run_start}
                log(record)
                window = []
                bar.set_postfix(loss=f"{record['loss']:.4f}", reward=f"{record['reward']:.3f}")
            if validate is not None and ((config.eval_every and done % config.eval_every == 0) or done == total_steps):
                record = selection.run(model, done)
                model.eval()
                log(record)
                bar.set_postfix(**{config.select_metric: f"{record[f'valid/{config.select_metric}']:.4f}"})
            if info.is_main and ((config.checkpoint_every and done % config.checkpoint_every == 0)
                                 or done == total_steps):
                last_ckpt = ckpt.save_checkpoint(ck_dir, done, {
                    "kind": KIND, "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "optimizer": optimizer.state_dict(), "rng": ckpt.capture_rng_state(),
                    "vocab_level_sizes": level_sizes, "config": config.to_dict(), "total_steps": total_steps,
                    "selection": selection.state_dict(),
                    "elapsed": elapsed_before + time.perf_counter() - run_start,
                }, keep_last=config.keep_checkpoints)
    finally:
        bar.close()
        logger.close()
    elapsed = elapsed_before + time.perf_counter() - run_start
    if selection.state is not None:
        model.load_state_dict(selection.state)
    model_dir, plot_path = out / MODEL_DIR, None
    if info.is_main:
        model.save_pretrained(model_dir)
        if config.plot and (out / METRICS_FILE).exists():
            plot_path = plot_rl_curves(out / METRICS_FILE, out / PLOT_FILE, title=f"GRPO-SR ({out.name})")
    D.barrier(info)  # the model directory exists for every rank once train_rl returns
    return RLResult(step=max(start_step, total_steps), total_steps=total_steps, out_dir=out, model_dir=model_dir,
                    checkpoint=last_ckpt, metrics_path=out / METRICS_FILE, plot_path=plot_path, elapsed=elapsed,
                    resumed_from=start_step if resume_path else None, history=history, start=selection.start,
                    best=selection.best)


def make_rollouts(model, reward, batch: dict[str, Tensor], trie: SIDTrie, table: SIDTable, *, num_generations: int,
                  constrained: bool, scale_rewards: bool | str = True, info: D.DistInfo | None = None) -> RolloutBatch:
    """Step 1-3 of the module docstring: G beams per query, their rewards (by index), group advantages. Under
    DDP (``info``), ``scale_rewards="batch"`` normalises by the std of every rank's rewards of the step."""
    with torch.no_grad():
        result = beam_search(model, batch["history"], batch["history_len"], trie, beam_width=num_generations,
                             constrained=constrained, table=table)
    alive = torch.isfinite(result.scores) & (result.codes >= 0).all(-1)
    codes = torch.where(alive[..., None], result.codes, torch.full_like(result.codes, -1))
    rewards = reward(batch["history_items"], codes, batch["positives"])
    if info is not None and info.distributed and scale_rewards == "batch":
        mine = slice(info.rank * len(alive), (info.rank + 1) * len(alive))  # equal shares: see train_rl
        adv = group_advantages(D.all_gather_rows(rewards.rewards.float(), info), scale_rewards="batch",
                               mask=D.all_gather_rows(alive.to(torch.uint8), info).bool())
        return RolloutBatch(codes, alive, rewards, adv.advantages[mine], adv.zero_std_share)
    adv = group_advantages(rewards.rewards, scale_rewards=scale_rewards, mask=alive)
    return RolloutBatch(codes, alive, rewards, adv.advantages, adv.zero_std_share)


def _rl_step(model, reward, batch, trie, table, item_codes, optimizer, config: RLConfig, ref_model,
             info: D.DistInfo) -> dict[str, float]:
    roll = make_rollouts(model, reward, batch, trie, table, num_generations=config.num_generations,
                         constrained=config.constrained, scale_rewards=config.scale_rewards, info=info)
    old_logp = None
    if config.num_iterations > 1:
        with torch.no_grad():
            _, old_logp, _ = grpo_sr_step_loss(model, batch["history"], batch["history_len"], roll.codes, roll.alive,
                                               roll.advantages, batch["positives"], item_codes, alpha=0.0)
    losses = []
    for _ in range(config.num_iterations):
        loss, logp, rows = grpo_sr_step_loss(
            model, batch["history"], batch["history_len"], roll.codes, roll.alive, roll.advantages,
            batch["positives"], item_codes, alpha=config.alpha, beta=config.beta, ref_model=ref_model,
            old_logp=old_logp, epsilon=config.epsilon)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        D.average_gradients([p for p in model.parameters() if p.requires_grad], info)
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
    r, alive = roll.rewards, roll.alive
    n = max(int(alive.sum()), 1)

    def share(mask: Tensor) -> float:
        return float((mask & alive).sum()) / n

    q = roll.codes.shape[0]
    nll_rows = rows["positive_weight"][:, 0] > 0
    stats = {
        "loss": float(np.mean(losses)),
        "reward": float(r.rewards[alive].mean()) if alive.any() else 0.0,
        "r_pref": float(r.r_pref[alive].mean()) if alive.any() else 0.0,
        "reward_top1": float(r.rewards[:, 0].mean()),
        "zero_std_share": roll.zero_std_share,
        "invalid_share": share(~r.valid),
        "gated_share": share(~r.gate),
        "anchored_share": share(r.in_positives),
        "relevance": float(r.relevance[alive].mean()) if alive.any() else 0.0,
        "dead_share": 1.0 - float(alive.float().mean()),
        "nll_positives": float(-logp.detach()[nll_rows].sum(1).mean()) if nll_rows.any() else 0.0,
        "queries_per_step": float(q),
    }
    if info.distributed:  # means over ranks (their shares of a step are equal); queries summed
        values = D.all_reduce_sum(torch.tensor(list(stats.values()), dtype=torch.float64), info)
        stats = {k: float(v) / (1 if k == "queries_per_step" else info.world_size) for k, v in zip(stats, values)}
    return stats


def plot_rl_curves(metrics_path: str | Path, out_path: str | Path, *, title: str = "GRPO-SR") -> Path | None:
    """Reward (training rollouts), validation R@K / HR@10 and HaR@10 / invalid share over steps (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [r for r in records if "reward" in r]
    valid = [r for r in records if any(k.startswith("valid/") for k in r)]
    if not train and not valid:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key in ("reward", "r_pref", "reward_top1"):
        axes[0].plot([r["step"] for r in train], [r[key] for r in train], label=key)
    axes[0].set_title("training rollouts")
    for key in sorted({k for r in valid for k in r if k.startswith(("valid/R@", "valid/HR@", "valid/NDCG@"))}):
        axes[1].plot([r["step"] for r in valid if key in r], [r[key] for r in valid if key in r], marker="o",
                     label=key[len("valid/"):])
    axes[1].set_title("validation")
    for key in sorted({k for r in valid for k in r if k.startswith("valid/HaR@")}):
        axes[2].plot([r["step"] for r in valid if key in r], [r[key] for r in valid if key in r], marker="o",
                     label=f"{key[len('valid/'):]} (valid, unconstrained)")
    axes[2].plot([r["step"] for r in train], [r["invalid_share"] for r in train], label="invalid rollouts")
    axes[2].plot([r["step"] for r in train], [r["gated_share"] for r in train], label="gated rollouts")
    axes[2].set_title("hallucination / gate")
    for ax in axes:
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
