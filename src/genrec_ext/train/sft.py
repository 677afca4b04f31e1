"""Supervised fine-tuning (page-wise PW-NTP or point-wise NTP, eq. 4) of a GenRec model: our own loop.

    result = train_sft(model, dataset, SFTConfig(out_dir="runs/sft", global_batch_size=256, epochs=3))

What one optimiser step is
    ``global_batch_size`` examples (summed over ranks and accumulation micro-batches), taken in order from a
    seeded permutation of the dataset that is fixed per epoch (``SeedSequence([seed, epoch])``). The batch of
    step ``s`` is a pure function of ``(seed, s)``: a resumed run consumes exactly the batches the
    uninterrupted run would, and any world size / accumulation split of the same global batch sees the same
    examples. A trailing partial batch of an epoch is dropped (the next epoch's permutation differs).

The loss
    The model returns the mean cross-entropy over its micro-batch's target tokens. Each micro-batch's loss is
    weighted by its share of the *global* batch's target tokens (counted up front and all-reduced), so the
    gradient is that of the token-mean over the whole global batch however it is split: 1 step of 8 examples
    equals 2 accumulated micro-batches of 4 equals 2 DDP ranks x 4 (up to float summation order).

Optimiser, schedule
    AdamW (no weight decay on biases and norm weights, i.e. tensors with < 2 dims), linear warm-up over
    ``ceil(warmup_ratio * total_steps)`` steps then cosine decay (paper §3.1: 1% warm-up), gradient
    clipping by global norm, bf16 autocast on CUDA when supported (CPU: opt-in via ``bf16=True``).

Scale-out
    ``torchrun --nproc_per_node N ...`` -> DDP (gloo on CPU, nccl on CUDA); ``parallel="fsdp"`` shards with
    FSDP2 (see :mod:`.distributed`). Without torchrun it is one plain process. Rank 0 alone logs and writes
    checkpoints (gathered to full, unsharded state dicts), metrics and the final model.

Model selection
    With a ``validate(model) -> {metric: value}`` function (e.g. HR/NDCG of a beam search on the validation
    split), rank 0 validates every ``eval_every`` optimiser steps (default: once per epoch) and at the end,
    logs the metrics (``valid/<metric>`` records in ``metrics.jsonl``), keeps the weights with the best
    ``select_metric`` and stops early after ``patience`` validations without improvement. The saved model and
    the model object returned to the caller then hold the *selected* weights, not the last ones. The best
    weights travel in checkpoints, so ``--resume`` keeps the selection. Not with FSDP (rank 0 alone validates).

Outputs under ``out_dir``
    ``config.json``, ``metrics.jsonl`` (one record per log step), ``loss.png``, ``checkpoints/step_*.pt``
    (every ``checkpoint_every`` steps and at the end, written atomically, the newest ``keep_checkpoints``
    kept), ``model/`` (``save_pretrained``), ``tb/`` with ``tensorboard=True`` and the package installed.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..model import hf_progress_bars
from . import checkpoint as ckpt
from . import distributed as D
from ..model.batch import PackedSFTBatch
from .batching import SFTBatch, SFTDataset, collate
from .packing import PackedSFTDataset, collate_packed, plan_packs
from .sampling import BatchPlan, PackedBatchPlan, PackedStepSampler, StepBatchSampler
from .sft_config import DATA_ORDER_FIELDS, SFTConfig
from .metrics import (
    METRICS_FILE,
    MetricsLogger,
    plot_loss_curves,
    read_metrics,
    truncate_metrics,
)
from .schedule import WarmupCosine, warmup_cosine_scheduler

CONFIG_FILE = "config.json"
MODEL_DIR = "model"
PLOT_FILE = "loss.png"

@dataclass
class TrainResult:
    step: int  # optimiser steps done (== total_steps when the run finished)
    total_steps: int
    epoch: float  # steps / steps_per_epoch
    loss: float | None  # the last logged training loss (token-mean over the last log window)
    out_dir: Path
    model_dir: Path | None  # save_pretrained output (rank 0)
    checkpoint: Path | None  # the newest checkpoint
    metrics_path: Path
    plot_path: Path | None
    elapsed: float  # seconds of training, resumed runs included
    resumed_from: int | None = None  # the step of the checkpoint this run resumed from
    history: list[dict[str, Any]] = field(default_factory=list)  # the records this run logged (rank 0)
    best: dict[str, Any] | None = None  # with validation: {"step", "value", "metrics"} of the selected weights
    stopped_early: bool = False


# --------------------------------------------------------------------------------------------- helpers


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _use_bf16(config: SFTConfig, device: torch.device) -> bool:
    if config.bf16 is None:
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    if config.bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"bf16=True but {torch.cuda.get_device_name(device)} does not support bf16")
    return bool(config.bf16)


def _vocab_level_sizes(model: nn.Module) -> list[int]:
    vocab = getattr(model, "vocab", None)
    if vocab is None:
        raise TypeError(f"{type(model).__name__} has no .vocab (SIDVocab); train_sft needs a GenRec model")
    return [int(k) for k in vocab.level_sizes]


def _prepare_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Rank 0: refuse to silently mix a fresh run into an old run's checkpoints."""
    ck_dir = out / ckpt.CHECKPOINT_DIR
    if not resume and ckpt.list_checkpoints(ck_dir):
        if not overwrite:
            raise FileExistsError(f"{out} already holds checkpoints of a run ({ck_dir}); pass resume=True to "
                                  f"continue it, or overwrite=True / a fresh out_dir to start over")
        shutil.rmtree(ck_dir)
    out.mkdir(parents=True, exist_ok=True)
    ck_dir.mkdir(exist_ok=True)
    ckpt.remove_stale_temporaries(ck_dir)


# ------------------------------------------------------------------------------------------- the loop


Validate = Callable[[nn.Module], Mapping[str, float]]


def train_sft(model: nn.Module, dataset: torch.utils.data.Dataset, config: SFTConfig | None = None, *,
              resume: bool = False, progress: bool = True,
              callback: Callable[[int, dict[str, Any] | None], None] | None = None,
              validate: Validate | None = None) -> TrainResult:
    """Train ``model`` (a GenRecModel: ``forward(SFTBatch) -> SFTOutput``) on ``dataset`` (an SFTDataset).

    ``resume=True`` continues from the newest checkpoint in ``config.out_dir`` (model, optimiser, scheduler,
    RNG states, step; the data position follows from the step) or starts fresh when there is none; the model's
    SID vocabulary must match the checkpoint's. ``callback(step, record)`` runs on every rank after each
    optimiser step (``record`` is the logged metrics on log steps, else ``None``). Returns a
    :class:`TrainResult`; the final model is in ``<out_dir>/model`` (``save_pretrained``). With ``validate``
    (see "Model selection" above) that model, and ``model`` itself, hold the weights selected on it."""
    config = config or SFTConfig()
    info = D.init_distributed(config.device)
    try:
        with hf_progress_bars(progress and info.is_main):
            return _train(model, dataset, config, info, resume=resume, progress=progress, callback=callback,
                          validate=validate)
    finally:
        D.cleanup(info)


class _Selection:
    """Validation-based model selection on rank 0: the best weights so far (CPU copies), their metrics, and
    the count of validations since the last improvement."""

    def __init__(self, validate: Validate | None, config: SFTConfig, steps_per_epoch: int) -> None:
        self.validate, self.metric, self.patience = validate, config.select_metric, config.patience
        self.every = config.eval_every or steps_per_epoch
        self.best: dict[str, Any] | None = None
        self.state: dict[str, torch.Tensor] | None = None
        self.waited = 0

    def run(self, model: nn.Module, step: int) -> tuple[dict[str, Any], bool]:
        """Validate ``model`` (rank 0); returns the log record and whether to stop early."""
        was_training = model.training
        model.eval()
        try:
            metrics = {k: float(v) for k, v in self.validate(model).items()}
        finally:
            model.train(was_training)
        if self.metric not in metrics:
            raise ValueError(f"select_metric {self.metric!r} is not among the validation metrics {sorted(metrics)}")
        value = metrics[self.metric]
        if self.best is None or value > self.best["value"]:
            self.best = {"step": step, "value": value, "metrics": metrics}
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            self.waited = 0
        else:
            self.waited += 1
        record = {"step": step, **{f"valid/{k}": v for k, v in metrics.items()},
                  f"best/{self.metric}": self.best["value"], "best/step": self.best["step"]}
        return record, bool(self.patience and self.waited >= self.patience)

    def state_dict(self) -> dict[str, Any] | None:
        if self.best is None:
            return None
        return {"best": self.best, "weights": self.state, "waited": self.waited}

    def load_state_dict(self, saved: dict[str, Any] | None) -> None:
        if saved:
            self.best, self.state, self.waited = saved["best"], saved["weights"], int(saved["waited"])


def _train(model, dataset, config: SFTConfig, info: D.DistInfo, *, resume: bool, progress: bool,
           callback, validate: Validate | None) -> TrainResult:
    out = Path(config.out_dir)
    packed = config.packing and isinstance(dataset, SFTDataset)  # other datasets (e.g. custom ones) stay unpacked
    if packed:
        units = 1 if getattr(model, "merger", None) is not None else dataset.vocab.levels  # prompt vectors per item
        dataset = PackedSFTDataset(dataset, plan_packs(dataset, units_per_item=units, pack_tokens=config.pack_tokens,
                                                      pack_members=config.members_per_row,
                                                      history_stride=config.history_stride))
        plan = PackedBatchPlan.make(dataset.plan, global_batch_size=config.global_batch_size,
                                    grad_accum=config.grad_accum, world_size=info.world_size, seed=config.seed,
                                    max_steps=config.max_steps, epochs=config.epochs,
                                    length_splits=config.length_splits)
    else:
        plan = BatchPlan.make(len(dataset), global_batch_size=config.global_batch_size, grad_accum=config.grad_accum,
                              world_size=info.world_size, max_steps=config.max_steps, epochs=config.epochs)
    if validate is not None and config.parallel == "fsdp" and info.world_size > 1:
        raise ValueError("validation-based model selection needs the whole model on rank 0: use parallel='ddp' "
                         "(or no validate function) with FSDP")
    level_sizes = _vocab_level_sizes(model)
    data_vocab = getattr(dataset, "vocab", None)
    if data_vocab is not None and [int(k) for k in data_vocab.level_sizes] != level_sizes:
        raise ValueError(f"the dataset's SID vocabulary has level_sizes {list(data_vocab.level_sizes)} but the "
                         f"model's has {level_sizes}: build both from the same SID table")
    device = info.device
    use_bf16 = _use_bf16(config, device)

    # ---- output directory and the checkpoint to resume from (rank 0 decides, everyone follows)
    decision: dict[str, Any] = {}
    if info.is_main:
        try:
            _prepare_out_dir(out, resume, config.overwrite)
            latest = ckpt.latest_checkpoint(out / ckpt.CHECKPOINT_DIR) if resume else None
            decision = {"resume_path": str(latest) if latest else None}
        except Exception as exc:  # tell the other ranks instead of leaving them in the next collective
            decision = {"error": exc}
    decision = D.broadcast_object(decision, info)
    if "error" in decision:
        raise decision["error"]
    resume_path = Path(decision["resume_path"]) if decision["resume_path"] else None

    state = None
    if resume_path is not None:
        state = ckpt.load_checkpoint(resume_path)
        ckpt.check_vocabulary(state, level_sizes, resume_path)
        saved_cfg = state.get("config", {})
        for name in DATA_ORDER_FIELDS:
            if name in saved_cfg and saved_cfg[name] != getattr(config, name):
                raise ValueError(f"cannot resume from {resume_path}: it was trained with {name}="
                                 f"{saved_cfg[name]!r} but this run has {name}={getattr(config, name)!r} "
                                 f"(the data order depends on it)")
        if state.get("dataset_size") != plan.dataset_size:
            raise ValueError(f"cannot resume from {resume_path}: it was trained on {state.get('dataset_size')} "
                             f"examples but this dataset has {plan.dataset_size}")

    _seed_everything(config.seed + info.rank)
    model.to(device)
    if state is not None:  # into the whole module, before DDP/FSDP wrap it (tied weights load as one)
        model.load_state_dict(state["model"])
    raw_model = model
    model = D.wrap_model(model, info, config.parallel, find_unused_parameters=config.find_unused_parameters)
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr, betas=config.betas,
                                  eps=config.eps)
    scheduler = warmup_cosine_scheduler(optimizer, plan.total_steps, config.warmup_ratio, config.min_lr_ratio)

    start_step, elapsed_before, stopped_early = 0, 0.0, False
    selection = _Selection(validate if info.is_main else None, config, plan.steps_per_epoch)
    if state is not None:
        selection.load_state_dict(state.get("selection"))
        stopped_early = bool(state.get("stopped_early"))
        D.load_optimizer_state(model, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        schedule = WarmupCosine(plan.total_steps, config.warmup_ratio, config.min_lr_ratio)
        if scheduler.lr_lambdas[0].__dict__ != schedule.__dict__:  # length or shape of the schedule changed
            warnings.warn(f"resuming {resume_path} with a different schedule ({scheduler.lr_lambdas[0].__dict__} "
                          f"-> {schedule.__dict__}); the learning rate follows the new one", stacklevel=3)
            scheduler.lr_lambdas[0] = schedule
            for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
                group["lr"] = base * schedule(scheduler.last_epoch)
        start_step = int(state["step"])
        elapsed_before = float(state.get("elapsed", 0.0))
        rng = state.get("rng") or []
        if info.rank < len(rng):
            ckpt.restore_rng_state(rng[info.rank])
        else:  # more ranks than when saved: a fresh, still deterministic stream per rank
            _seed_everything(config.seed + info.rank + 1_000_003 * start_step)
    del state

    if info.is_main:
        (out / CONFIG_FILE).write_text(json.dumps({
            "sft": config.to_dict(), "world_size": info.world_size, "device": str(device), "bf16": use_bf16,
            "dataset_size": plan.dataset_size, "steps_per_epoch": plan.steps_per_epoch,
            "total_steps": plan.total_steps, "micro_batch_size": plan.micro_batch_size, "packed": packed,
            **({"packed_rows": len(dataset), "micro_batches_per_step": plan.micros_per_step,
                "positions_packed": int(dataset.plan.lengths.sum()),
                "positions_unpacked": int(dataset.plan.unpacked_lengths.sum())} if packed else {}),
            "vocab_level_sizes": level_sizes, "model_class": type(raw_model).__name__,
            "resumed_from_step": start_step if resume_path else None}, indent=2) + "\n")
        if resume_path is not None:
            truncate_metrics(out / METRICS_FILE, start_step)  # drop what the killed run logged after it
    logger = MetricsLogger(out, enabled=info.is_main, tensorboard=config.tensorboard,
                           append=resume_path is not None)

    sampler = (PackedStepSampler(plan, info.rank, start_step) if packed
               else StepBatchSampler(plan, config.seed, info.rank, start_step))
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate_packed if packed else collate,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda", persistent_workers=False,
        # a private generator: creating the iterator must not draw from the global torch RNG
        generator=torch.Generator().manual_seed(config.seed),
    )
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext())
    bar = tqdm(total=plan.total_steps, initial=start_step, desc="sft", unit="step", dynamic_ncols=True,
               disable=not (progress and info.is_main))

    history: list[dict[str, Any]] = []
    last_ckpt = ckpt.latest_checkpoint(out / ckpt.CHECKPOINT_DIR) if info.is_main else None
    last_loss: float | None = None
    window = torch.zeros(3, dtype=torch.float64, device=device)  # loss*tokens, target tokens, input positions
    window_start = time.perf_counter()
    run_start = time.perf_counter()
    warned_tokens = False
    batches = iter(loader)
    model.train()
    try:
        for step in range(start_step, start_step if stopped_early else plan.total_steps):
            # an empty packed micro-batch (None) comes before this rank's non-empty ones: the last one syncs
            micro: list[SFTBatch | PackedSFTBatch] = [b for b in (next(batches) for _ in range(plan.grad_accum))
                                                      if b is not None]
            counts = [b.num_target_tokens for b in micro]  # on the CPU tensors: no device sync
            tokens = torch.tensor([float(sum(counts))], dtype=torch.float64, device=device)
            global_tokens = D.all_reduce_sum(tokens, info)  # target tokens of the whole global batch
            for i, (batch, count) in enumerate(zip(micro, counts)):
                batch = batch.to(device)
                with D.gradient_sync(model, sync=i == len(micro) - 1):
                    with autocast:
                        output = model(batch)
                    n_tok = int(output.num_target_tokens)
                    if not warned_tokens and n_tok != count:
                        warnings.warn(f"model reports {n_tok} target tokens for a micro-batch with "
                                      f"{count} target tokens; the loss weighting assumes they agree",
                                      stacklevel=2)
                        warned_tokens = True
                    # token-mean over the global batch; x world_size undoes DDP/FSDP's gradient averaging
                    weight = (n_tok * info.world_size) / global_tokens.to(torch.float32)
                    (output.loss.float() * weight).backward()
                window[0] += output.loss.detach().double() * n_tok
                window[1] += n_tok
                window[2] += float(output.num_input_positions)
            grad_norm = None
            if config.grad_clip:
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            bar.update(1)

            record = None
            validating = validate is not None and (done % selection.every == 0 or done == plan.total_steps)
            if done % config.log_every == 0 or done == plan.total_steps or validating:
                stats = D.all_reduce_sum(window.clone(), info).tolist()
                now = time.perf_counter()
                seconds = max(now - window_start, 1e-9)
                last_loss = stats[0] / max(stats[1], 1.0)
                record = {
                    "step": done, "loss": last_loss, "lr": lr,
                    "grad_norm": float(grad_norm) if grad_norm is not None else None,
                    "tokens_per_s": stats[2] / seconds, "target_tokens_per_s": stats[1] / seconds,
                    "examples": plan.examples_through(done), "epoch": plan.epoch_at(done),
                    "elapsed": elapsed_before + (now - run_start),
                }
                logger.log(record)
                if info.is_main:
                    history.append(record)
                bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}")
                window.zero_()
                window_start = time.perf_counter()

            if validating:
                decision = None
                if info.is_main:
                    valid_record, stop = selection.run(D.unwrap(model), done)
                    logger.log(valid_record)
                    history.append(valid_record)
                    bar.set_postfix(loss=f"{last_loss:.4f}" if last_loss is not None else "-",
                                    **{config.select_metric: f"{selection.best['value']:.4f}"})
                    decision = stop
                stopped_early = bool(D.broadcast_object(decision, info)) and done < plan.total_steps
            if (config.checkpoint_every and done % config.checkpoint_every == 0) or done == plan.total_steps \
                    or stopped_early:
                path = _checkpoint(model, optimizer, scheduler, config, plan, info, out, done, level_sizes,
                                   elapsed_before + (time.perf_counter() - run_start), last_loss,
                                   {"selection": selection.state_dict(), "stopped_early": stopped_early})
                last_ckpt = path if info.is_main else None
            if callback is not None:
                callback(done, record)
            if stopped_early:
                break
        else:
            done = start_step if stopped_early else plan.total_steps
    finally:
        bar.close()
        logger.close()
    elapsed = elapsed_before + (time.perf_counter() - run_start)
    if selection.state is not None:  # rank 0 returns and saves the selected weights
        D.unwrap(model).load_state_dict(selection.state)

    # ---- the final model (gathered under FSDP) and the loss curve
    full_state = None
    if D.is_fsdp(model):
        full_state, _ = D.full_state_dicts(model, None)
    model_dir = plot_path = None
    if info.is_main:
        model_dir = D.unwrap(model).save_pretrained(out / MODEL_DIR, state_dict=full_state)  # FSDP: gathered
        if config.plot and (out / METRICS_FILE).exists() and (out / METRICS_FILE).stat().st_size:
            plot_path = plot_loss_curves({out.name or "sft": out / METRICS_FILE}, out / PLOT_FILE,
                                         title=f"SFT training loss ({out.name})")
        if last_loss is None:  # resumed a finished run: report what it logged
            records = read_metrics(out / METRICS_FILE) if (out / METRICS_FILE).exists() else []
            losses = [r["loss"] for r in records if "loss" in r]
            last_loss = losses[-1] if losses else None
    D.barrier(info)
    return TrainResult(step=done, total_steps=plan.total_steps, epoch=plan.epoch_at(done), loss=last_loss,
                       out_dir=out, model_dir=model_dir, checkpoint=last_ckpt, metrics_path=out / METRICS_FILE,
                       plot_path=plot_path, elapsed=elapsed, resumed_from=start_step if resume_path else None,
                       history=history, best=selection.best, stopped_early=stopped_early)


def _checkpoint(model, optimizer, scheduler, config: SFTConfig, plan: BatchPlan | PackedBatchPlan, info: D.DistInfo, out: Path,
                step: int, level_sizes: list[int], elapsed: float, last_loss: float | None,
                extra: dict[str, Any] | None = None) -> Path | None:
    """Collect the state on every rank (collectives), write it on rank 0."""
    rng = D.all_gather_object(ckpt.capture_rng_state(), info)
    model_state, optim_state = D.full_state_dicts(model, optimizer)
    if not info.is_main:
        return None
    epoch, position = plan.locate(step)
    state = {
        "model": model_state, "optimizer": optim_state, "scheduler": scheduler.state_dict(), "rng": rng,
        "epoch": epoch, "position": position, "total_steps": plan.total_steps, "dataset_size": plan.dataset_size,
        "world_size": info.world_size, "vocab_level_sizes": level_sizes, "config": config.to_dict(),
        "model_class": type(D.unwrap(model)).__name__, "elapsed": elapsed, "loss": last_loss, **(extra or {}),
    }
    return ckpt.save_checkpoint(out / ckpt.CHECKPOINT_DIR, step, state, keep_last=config.keep_checkpoints)
