"""Training the reward model on logged feedback, selected on validation AUC, reported against popularity.

    result = train_reward_model(catalog, splits, table, RewardTrainConfig(), out_dir="runs/rm")
    print(format_auc_table(result.report))

Examples come from :mod:`.examples` (page logs: exposures, clicked/ordered = 1; sequence data: sampled
negatives). One step = ``batch_size`` pages (all of a page's candidates together), taken in a seeded
permutation fixed per epoch (``SeedSequence([seed, epoch])``); loss = binary cross-entropy over the real
candidates; AdamW with gradient clipping. After every epoch the validation AUC decides: the best weights are
kept, and ``patience`` epochs without improvement stop training. The test split is read once, at the end, with
the selected weights, and every number stands next to the popularity-only scorer's (an item's count of training
positives) on the same examples.

Outputs in ``out_dir``: ``checkpoint.pt`` (model, optimiser, epoch, selection state, RNG; written atomically
after every epoch; ``resume=True`` continues from it), ``metrics.jsonl`` (one line per epoch), ``model/``
(:meth:`SIMRewardModel.save`, the selected weights, with the AUC table in its ``reward_model.json``) and
``reward_auc.json`` (the table, the selected epoch, the configs).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .._config import check, from_mapping
from .._io import atomic_file, json_ready
from ..data import ItemCatalog, Splits
from ..sid import SIDTable, sid_codes_for
from .examples import Examples, build_examples, make_batch, resolve_negatives
from .metrics import auc, group_auc, popularity_scores
from .model import RewardModelConfig, SIMRewardModel

CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.jsonl"
MODEL_DIR = "model"
REPORT_FILE = "reward_auc.json"
CKPT_FORMAT = "genrec-reward-ckpt/1"
#: config fields a resumed run must keep (they fix the model and the examples each step sees)
_RESUME_FIELDS = ("batch_size", "seed", "negatives", "num_negatives", "model")
_VALID_SEED, _TEST_SEED = 1_000_001, 1_000_002  # sampled negatives of the held-out splits


@dataclass
class RewardTrainConfig:
    """How to train (the model's shape is ``model``: :class:`RewardModelConfig` fields but ``level_sizes``,
    which come from the SID table)."""

    epochs: int = 30
    batch_size: int = 64  # pages (queries) per optimiser step
    lr: float = 2e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    patience: int = 3  # epochs without a better validation AUC before stopping; 0 = never
    seed: int = 0
    negatives: str = "auto"  # "exposures" (page logs) | "sampled" (sequence data) | "auto"
    num_negatives: int = 4  # sampled negatives per positive
    eval_batch_size: int = 512
    device: str = "cpu"
    model: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check([
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {self.eval_batch_size}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip}"),
            (self.patience >= 0, f"patience must be >= 0, got {self.patience}"),
            (self.negatives in ("auto", "exposures", "sampled"),
             f"negatives must be 'auto', 'exposures' or 'sampled', got {self.negatives!r}"),
            (self.num_negatives >= 1, f"num_negatives must be >= 1, got {self.num_negatives}"),
        ], prefix="RewardTrainConfig: ")
        if "level_sizes" in self.model:
            raise ValueError("RewardTrainConfig.model: level_sizes come from the SID table, do not set them")
        RewardModelConfig.from_dict({"level_sizes": (1,), **self.model})  # unknown or bad keys fail here

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RewardTrainConfig:
        return from_mapping(cls, values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RewardTrainResult:
    """The trained model (selected weights) and the report written to ``reward_auc.json``."""

    model: SIMRewardModel
    report: dict[str, Any]
    resumed_from: int | None = None  # the epoch of the checkpoint this run resumed from


# ------------------------------------------------------------------------------------------- scoring


@torch.no_grad()
def score_examples(model: SIMRewardModel, examples: Examples, item_codes: torch.Tensor, *, batch_size: int = 512,
                   device: str | torch.device = "cpu", progress: bool = False, desc: str = "scoring") -> np.ndarray:
    """``r_pref`` of every candidate of ``examples``, flat in their order."""
    was_training = model.training
    model.eval()
    out = []
    n = len(examples)
    for a in tqdm(range(0, n, batch_size), desc=desc, disable=not progress, leave=False):
        batch = make_batch(examples, np.arange(a, min(a + batch_size, n)), item_codes).to(device)
        probs = model(batch.history_codes, batch.history_mask, batch.candidate_codes)
        out.append(probs[batch.candidate_mask].float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def _groups(examples: Examples) -> np.ndarray:
    return np.repeat(np.arange(len(examples)), np.diff(examples.offsets))


def auc_metrics(scores: np.ndarray, examples: Examples) -> dict[str, float]:
    """AUC over all candidates and GAUC over pages (queries) of ``scores`` aligned with ``examples.items``."""
    return {"AUC": auc(scores, examples.labels), "GAUC": group_auc(scores, examples.labels, _groups(examples))}


def format_auc_table(report: dict[str, Any]) -> str:
    """The report's AUC table as Markdown: model vs popularity on validation and test."""
    lines = ["| split | candidates | positives | model AUC | popularity AUC | model GAUC | popularity GAUC |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for split in ("valid", "test"):
        r = report[split]
        lines.append(f"| {split} | {r['candidates']} | {r['positives']} | {r['model']['AUC']:.4f} | "
                     f"{r['popularity']['AUC']:.4f} | {r['model']['GAUC']:.4f} | {r['popularity']['GAUC']:.4f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ training


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state()}


def train_reward_model(catalog: ItemCatalog, splits: Splits, table: SIDTable,
                       config: RewardTrainConfig | None = None, *, out_dir: str | Path, resume: bool = False,
                       overwrite: bool = False, progress: bool = True) -> RewardTrainResult:
    """Train a :class:`SIMRewardModel` on ``splits.train``, select it on ``splits.valid`` (AUC), report valid
    and test AUC / GAUC next to popularity's, save everything in ``out_dir`` (see the module docstring).

    ``resume=True`` continues from ``out_dir/checkpoint.pt`` (a fresh start when there is none); without it an
    ``out_dir`` that holds a checkpoint is an error unless ``overwrite=True``."""
    config = config or RewardTrainConfig()
    out = Path(out_dir)
    ckpt_path = out / CHECKPOINT_FILE
    if ckpt_path.exists() and not resume and not overwrite:
        raise FileExistsError(f"{out} already holds a reward-model run ({ckpt_path}); pass resume to continue it, "
                              f"or overwrite / a fresh output directory to start over")
    for name in ("train", "valid", "test"):
        if len(getattr(splits, name)) == 0:
            raise ValueError(f"the {name} split is empty: the reward model needs train, validation and test pages "
                             f"(page logs: at least 3 days)")
    device = torch.device(config.device)
    item_codes = torch.from_numpy(sid_codes_for(catalog, table)).to(torch.int64)
    mode = resolve_negatives(splits.train, config.negatives)
    seed = config.seed

    def train_examples(epoch: int) -> Examples:
        return build_examples(splits.train, mode, num_negatives=config.num_negatives, seed=(seed, epoch))

    fixed_train = train_examples(0) if mode == "exposures" else None
    valid = build_examples(splits.valid, mode, num_negatives=config.num_negatives, seed=(seed, _VALID_SEED))
    if not (0 < valid.positives < len(valid.labels)):
        raise ValueError(f"the validation split has {valid.positives} positives among {len(valid.labels)} "
                         f"candidates: AUC needs both clicked and unclicked candidates")

    torch.manual_seed(seed)
    model_config = RewardModelConfig(level_sizes=tuple(table.level_sizes), **config.model)
    model = SIMRewardModel(model_config).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    state = {"epoch": 0, "best_auc": -math.inf, "best_epoch": 0, "best_state": None, "waited": 0,
             "history": [], "stopped": False, "elapsed": 0.0}
    resumed_from = None
    if resume and ckpt_path.exists():
        saved = _load_checkpoint(ckpt_path)
        mine = config.to_dict()
        for key in _RESUME_FIELDS:
            if saved["config"].get(key) != mine[key]:
                raise ValueError(f"cannot resume from {ckpt_path}: it was trained with {key}="
                                 f"{saved['config'].get(key)!r}, this run has {key}={mine[key]!r}")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"]["torch"])
        state = saved["state"]
        resumed_from = state["epoch"]
    out.mkdir(parents=True, exist_ok=True)
    if resumed_from is None:
        (out / METRICS_FILE).unlink(missing_ok=True)

    started = time.perf_counter() - state["elapsed"]
    model.train()
    epoch_bar = tqdm(range(state["epoch"] + 1, config.epochs + 1), desc="reward model", unit="epoch",
                     disable=not progress or state["stopped"])
    for epoch in epoch_bar:
        if state["stopped"]:
            break
        examples = fixed_train if fixed_train is not None else train_examples(epoch)
        order = np.random.default_rng(np.random.SeedSequence([seed, epoch])).permutation(len(examples))
        total, count = 0.0, 0
        batches = range(0, len(order), config.batch_size)
        bar = tqdm(batches, desc=f"epoch {epoch}", unit="batch", leave=False, disable=not progress)
        for a in bar:
            batch = make_batch(examples, order[a:a + config.batch_size], item_codes).to(device)
            if not batch.candidate_mask.any():
                continue
            logits = model.logits(batch.history_codes, batch.history_mask, batch.candidate_codes)
            loss = F.binary_cross_entropy_with_logits(logits[batch.candidate_mask], batch.labels[batch.candidate_mask])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            total += float(loss.detach()) * int(batch.candidate_mask.sum())
            count += int(batch.candidate_mask.sum())
            bar.set_postfix(loss=f"{total / max(count, 1):.4f}")
        bar.close()
        metrics = auc_metrics(score_examples(model, valid, item_codes, batch_size=config.eval_batch_size,
                                             device=device), valid)
        record = {"epoch": epoch, "loss": total / max(count, 1), **{f"valid_{k}": v for k, v in metrics.items()}}
        state["history"].append(record)
        if metrics["AUC"] > state["best_auc"]:
            state.update(best_auc=metrics["AUC"], best_epoch=epoch, waited=0,
                         best_state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        else:
            state["waited"] += 1
            state["stopped"] = bool(config.patience and state["waited"] >= config.patience)
        state["epoch"] = epoch
        state["elapsed"] = time.perf_counter() - started
        epoch_bar.set_postfix(loss=f"{record['loss']:.4f}", valid_AUC=f"{metrics['AUC']:.4f}",
                              best=f"{state['best_auc']:.4f}@{state['best_epoch']}")
        with atomic_file(out / METRICS_FILE) as f:
            f.write("".join(json.dumps(json_ready(r)) + "\n" for r in state["history"]))
        _save_checkpoint(ckpt_path, model, optimizer, config, state)
        if state["stopped"]:
            break
    epoch_bar.close()

    if state["best_state"] is not None:
        model.load_state_dict(state["best_state"])
    model.eval()
    report = _report(model, splits, mode, config, item_codes, valid, device, progress)
    report.update(selected_epoch=state["best_epoch"], epochs_run=state["epoch"], stopped_early=state["stopped"],
                  train_seconds=state["elapsed"], negatives=mode, history=state["history"],
                  model_config=model_config.to_dict(), train_config=config.to_dict())
    report = json_ready(report)
    model.save(out / MODEL_DIR, extra={"auc": {s: report[s] for s in ("valid", "test")},
                                       "selected_epoch": report["selected_epoch"]})
    with atomic_file(out / REPORT_FILE) as f:
        json.dump(report, f, indent=2)
    return RewardTrainResult(model, report, resumed_from)


def _report(model: SIMRewardModel, splits: Splits, mode: str, config: RewardTrainConfig, item_codes: torch.Tensor,
            valid: Examples, device: torch.device, progress: bool) -> dict[str, Any]:
    popularity = popularity_scores(splits.train)
    test = build_examples(splits.test, mode, num_negatives=config.num_negatives, seed=(config.seed, _TEST_SEED))
    out: dict[str, Any] = {}
    for name, ex in (("valid", valid), ("test", test)):
        scores = score_examples(model, ex, item_codes, batch_size=config.eval_batch_size, device=device,
                                progress=progress, desc=f"scoring {name}")
        out[name] = {"pages": len(ex), "candidates": len(ex.labels), "positives": ex.positives,
                     "model": auc_metrics(scores, ex), "popularity": auc_metrics(popularity[ex.items], ex)}
    return out


def _save_checkpoint(path: Path, model: SIMRewardModel, optimizer: torch.optim.Optimizer, config: RewardTrainConfig,
                     state: dict[str, Any]) -> None:
    payload = {"format": CKPT_FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
               "config": config.to_dict(), "state": state, "rng": _rng_state()}  # saved at once: no copy
    with atomic_file(path, "wb") as f:
        torch.save(payload, f)


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RuntimeError(f"cannot load reward-model checkpoint {path}: {exc}") from exc
    if not isinstance(saved, dict) or saved.get("format") != CKPT_FORMAT:
        raise RuntimeError(f"{path} is not a reward-model checkpoint (expected format {CKPT_FORMAT!r})")
    return saved
