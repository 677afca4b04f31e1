"""The GenRec model family in the harness: GenRec itself (page-wise PW-NTP with the Token Merger), its "w/o TM"
and point-wise ablations, and the LC-Rec-style row (our decoder, point-wise NTP, no Token Merger). All share
one adapter: SFT through :func:`genrec_ext.train.train_sft` with the model selected on the validation split
(a beam search, HR/NDCG@10), then trie-constrained beam search (unconstrained for HaR)."""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .._config import from_mapping
from ..data import PageSamples
from ..eval.run import make_validator
from ..eval.run import recommend as beam_recommend
from ..model import GenRecModel, build_model
from ..train import SFTConfig, make_sft_dataset, train_sft
from .base import FitReport, Recommendations, Recommender, Task, timed_fit

MODEL_DIR = "model"


@dataclass
class GenerativeConfig:
    """One GenRec-family recommender: model preset, objective, prompt form, training and decoding.

    ``sft`` holds :class:`genrec_ext.train.SFTConfig` fields (``lr``, ``epochs``, ``global_batch_size``,
    ``eval_every``, ``patience``, ...); ``out_dir`` is set by :meth:`GenRec.fit`."""

    preset: str = "tiny"
    objective: Literal["page", "point"] = "page"
    token_merger: bool = True
    page_size: int | None = None  # sequence data: train on pages of the next k items (None: as loaded)
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields over the preset's (e.g. dropout)
    beam: int = 50  # beam width at evaluation (>= the largest K)
    valid_beam: int = 20  # beam width of the validation searches that select the model
    valid_queries: int | None = 4096  # validation queries used for selection (None: all)
    batch_size: int = 64  # queries per beam search
    seed: int = 0
    sft: dict[str, Any] = field(default_factory=lambda: {"epochs": 20, "global_batch_size": 256, "lr": 3e-3,
                                                        "patience": 3})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GenerativeConfig:
        merged = {**asdict(cls()), **values}
        if "sft" in values:  # partial overrides of the training recipe
            merged["sft"] = {**cls().sft, **values["sft"]}
        SFTConfig.from_dict(merged["sft"])  # reject unknown training keys now, not after data loading
        return from_mapping(cls, merged)


class GenRec(Recommender):
    """GenRec: page-wise SFT (PW-NTP) of a Qwen2 decoder over SIDs with the Token Merger on the prompt."""

    name = "genrec"
    generative = True
    defaults: dict[str, Any] = {}

    def __init__(self, config: GenerativeConfig | dict[str, Any] | None = None, **overrides: Any) -> None:
        values = asdict(config) if isinstance(config, GenerativeConfig) else dict(config or {})
        self.settings = GenerativeConfig.from_dict({**self.defaults, **values, **overrides})
        self.model: GenRecModel | None = None

    @classmethod
    def from_model(cls, model: GenRecModel, **settings: Any) -> GenRec:
        """A fitted recommender around a model trained elsewhere (e.g. aligned by GRPO-SR), to evaluate it
        through the harness; ``settings`` are :class:`GenerativeConfig` fields (``beam``, ``batch_size``)."""
        rec = cls(settings)
        rec.model = model.eval()
        return rec

    def config(self) -> dict[str, Any]:
        return asdict(self.settings)

    def fit(self, task: Task, *, out_dir: str | Path | None = None, progress: bool = True) -> FitReport:
        return timed_fit(lambda: self._fit(task, out_dir, progress))

    def _fit(self, task: Task, out_dir, progress: bool) -> dict[str, Any]:
        cfg = self.settings
        table = task.require_table(self.name)
        train = task.training_pages(cfg.page_size)
        dataset = make_sft_dataset(train, task.catalog, table, cfg.objective, max_history=task.max_history)
        self.model = build_model(cfg.preset, dataset.vocab, token_merger=cfg.token_merger, seed=cfg.seed,
                                 **cfg.model)
        validate = make_validator(task.splits.valid, task.catalog, table, beam_width=cfg.valid_beam,
                                  max_queries=cfg.valid_queries, max_history=task.max_history,
                                  batch_size=cfg.batch_size, seed=cfg.seed)

        with tempfile.TemporaryDirectory(prefix="genrec-fit-") as scratch:
            sft = SFTConfig.from_dict({"seed": cfg.seed, "plot": False, "log_every": 50, **cfg.sft,
                                       "out_dir": str(out_dir or scratch), "overwrite": True})
            result = train_sft(self.model, dataset, sft, progress=progress, validate=validate)
        self.model.eval()
        best = result.best or {}
        step = best.get("step") or 0
        return {"step": step, "epoch": step * result.epoch / result.step if result.step else 0.0,
                **{f"valid_{k}": v for k, v in best.get("metrics", {}).items()},
                "steps_run": result.step, "stopped_early": result.stopped_early, "examples": len(dataset)}

    def recommend(self, task: Task, samples: PageSamples, k: int, *, constrained: bool = True,
                  progress: bool = True) -> Recommendations:
        if self.model is None:
            raise RuntimeError(f"{self.name}.recommend before fit or load")
        cfg = self.settings
        items, generated = beam_recommend(self.model, samples, task.catalog, task.require_table(self.name),
                                          beam_width=max(k, cfg.beam), constrained=constrained,
                                          batch_size=cfg.batch_size, max_history=task.max_history,
                                          progress=progress)
        return Recommendations(items[:, :k], generated[:, :k])

    def prompt_length(self, samples: PageSamples) -> float:
        """Prompt positions per query: ``<bos>``, one vector per history item (L tokens without the Token
        Merger), ``<sep>``."""
        if not len(samples):
            return 0.0
        per_item = 1 if self.settings.token_merger else len(self._level_sizes())
        return float((samples.history.lengths * per_item + 2).mean())

    def _level_sizes(self) -> tuple[int, ...]:
        if self.model is None:
            raise RuntimeError(f"{self.name}: no model yet")
        return self.model.vocab.level_sizes

    def _save_state(self, directory: Path) -> None:
        self.model.save_pretrained(directory / MODEL_DIR)

    def _load_state(self, directory: Path, task: Task) -> None:
        self.model = GenRecModel.from_pretrained(directory / MODEL_DIR).eval()


class GenRecNoTM(GenRec):
    """GenRec w/o TM: page-wise, every history item as its L SID tokens (the paper's "w/o TM" row)."""

    name = "genrec-no-tm"
    defaults = {"token_merger": False}


class GenRecNTP(GenRec):
    """GenRec trained point-wise (vanilla NTP, one positive item per example) with the Token Merger."""

    name = "genrec-ntp"
    defaults = {"objective": "point"}


class LCRec(GenRec):
    """LC-Rec-style: our decoder trained with point-wise NTP on full SID-token prompts (no Token Merger)."""

    name = "lcrec"
    defaults = {"objective": "point", "token_merger": False}
