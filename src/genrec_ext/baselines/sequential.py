"""Item-ID sequence models: SASRec (Kang & McAuley 2018) and BERT4Rec (Sun et al. 2019).

Both embed item ids (no SIDs), run a Transformer encoder over the user's recent items and score every item of
the catalogue with the tied item embeddings (full softmax cross-entropy, the strong "SASRec-CE" variant).
Training reads each user's whole sequence (:func:`genrec_ext.data.user_sequences`), windows of ``max_len + 1``
items from its end, and trains every position in one pass: SASRec predicts each next item under a causal mask,
BERT4Rec fills randomly masked items with bidirectional attention (cloze) and recommends by appending a mask.
The model is selected on the validation split (``select_metric``, every ``eval_every`` epochs) with early
stopping after ``patience`` evaluations without improvement.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._config import check, from_mapping
from ..data import PageSamples, user_sequences
from ..eval import evaluate
from ..train.distributed import resolve_device
from .base import EpochSelection, FitReport, Recommendations, Recommender, Task, timed_fit

WEIGHTS_FILE = "weights.pt"


@dataclass
class SequentialConfig:
    """Model size, training and selection of an item-ID sequence model (defaults: SASRec-CE on Amazon-sized
    data, 2 blocks of width 64)."""

    hidden: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.3
    max_len: int | None = None  # sequence positions; None = the task's max_history
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    epochs: int = 200
    eval_every: int = 1  # epochs between validations
    patience: int = 10  # validations without improvement before stopping; 0 = never stop early
    select_metric: str = "NDCG@10"
    mask_prob: float = 0.2  # BERT4Rec: share of positions masked per sequence
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        checks = [(self.hidden % self.heads == 0, f"hidden={self.hidden} must divide by heads={self.heads}"),
                  (0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}"),
                  (self.max_len is None or self.max_len >= 1, f"max_len must be >= 1, got {self.max_len}"),
                  (self.lr > 0, f"lr must be > 0, got {self.lr}"),
                  (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
                  (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
                  (self.eval_every >= 1, f"eval_every must be >= 1, got {self.eval_every}"),
                  (self.patience >= 0, f"patience must be >= 0, got {self.patience}"),
                  (0 < self.mask_prob < 1, f"mask_prob must be in (0, 1), got {self.mask_prob}")]
        check(checks, "SequentialConfig: ")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SequentialConfig:
        return from_mapping(cls, values)


class ItemSequenceEncoder(nn.Module):
    """Item + position embeddings, a pre-norm Transformer encoder, scores over all items (tied embeddings).

    Token ids: 0 = padding, 1..I = items 0..I-1, I + 1 = the mask token (BERT4Rec)."""

    def __init__(self, num_items: int, max_len: int, config: SequentialConfig, causal: bool) -> None:
        super().__init__()
        d = config.hidden
        self.num_items, self.max_len, self.causal, self.heads = num_items, max_len, causal, config.heads
        self.item = nn.Embedding(num_items + 2, d, padding_idx=0)
        self.position = nn.Embedding(max_len, d)
        self.dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(d, config.heads, 4 * d, config.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.bias = nn.Parameter(torch.zeros(num_items))
        nn.init.normal_(self.item.weight, std=d ** -0.5)
        nn.init.normal_(self.position.weight, std=d ** -0.5)
        with torch.no_grad():
            self.item.weight[0].zero_()

    def forward(self, tokens: Tensor) -> Tensor:
        """``tokens [B, T]`` (left-padded) -> hidden states ``[B, T, d]``."""
        b, t = tokens.shape
        pad = tokens == 0
        x = self.item(tokens) + self.position.weight[self.max_len - t:][None]
        # A query sees the real items allowed by causality, and always itself (so padded rows are never empty).
        allowed = ~pad[:, None, :]
        if self.causal:
            allowed = allowed & torch.ones(t, t, dtype=torch.bool, device=tokens.device).tril()[None]
        allowed = allowed | torch.eye(t, dtype=torch.bool, device=tokens.device)[None]
        mask = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill_(~allowed, float("-inf"))
        mask = mask.repeat_interleave(self.heads, 0)
        return self.norm(self.encoder(self.dropout(x), mask=mask))

    def scores(self, hidden: Tensor) -> Tensor:
        """Scores of every item ``[..., I]``."""
        return F.linear(hidden, self.item.weight[1:self.num_items + 1], self.bias)


def _windows(sequences: list[np.ndarray], length: int) -> np.ndarray:
    """Cut sequences into windows of at most ``length`` items from their ends (consecutive windows share
    one item, so every transition is trained once), left-padded with -1: int64 ``[n, length]``."""
    rows = []
    for s in sequences:
        end = len(s)
        while end >= 2:
            rows.append(s[max(0, end - length):end])
            end -= length - 1
    out = np.full((len(rows), length), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, length - len(r):] = r
    return out


def _left_pad(samples: PageSamples, width: int, append_mask: int | None = None) -> Tensor:
    """Histories as token rows ``[Q, width]`` (items + 1; 0 = padding), the most recent item last, or the mask
    token after it."""
    off, values = samples.history.to_csr()
    lengths = np.diff(off)
    room = width - (append_mask is not None)
    out = np.zeros((len(lengths), width), dtype=np.int64)
    for q in range(len(lengths)):
        h = values[off[q]:off[q + 1]][-room:] + 1 if room > 0 else values[:0]
        out[q, room - len(h):room] = h
    if append_mask is not None:
        out[:, -1] = append_mask
    return torch.from_numpy(out)


class _ItemSequenceRecommender(Recommender):
    causal: bool

    def __init__(self, config: SequentialConfig | dict[str, Any] | None = None, **overrides: Any) -> None:
        values = asdict(config) if isinstance(config, SequentialConfig) else dict(config or {})
        self.settings = SequentialConfig.from_dict({**values, **overrides})
        self.model: ItemSequenceEncoder | None = None

    def config(self) -> dict[str, Any]:
        return asdict(self.settings)

    # ---- training --------------------------------------------------------------------------------------
    def _batch_loss(self, model: ItemSequenceEncoder, rows: Tensor, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    def _query_tokens(self, samples: PageSamples) -> Tensor:
        raise NotImplementedError

    def _build(self, task: Task) -> ItemSequenceEncoder:
        cfg = self.settings
        max_len = cfg.max_len or task.max_history
        return ItemSequenceEncoder(len(task.catalog), max_len, cfg, self.causal)

    def fit(self, task: Task, *, out_dir=None, progress: bool = True) -> FitReport:
        return timed_fit(lambda: self._fit(task, progress))

    def _fit(self, task: Task, progress: bool) -> dict[str, Any]:
        cfg = self.settings
        torch.manual_seed(cfg.seed)
        device = resolve_device(cfg.device)
        model = self.model = self._build(task).to(device)
        _, sequences = user_sequences(task.splits.train)
        rows = torch.from_numpy(_windows([sequences[i] for i in range(len(sequences))], self._window(model)) + 1)
        if len(rows) == 0:
            raise ValueError("the training split has no user with two or more positives: nothing to train on")
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        generator = torch.Generator().manual_seed(cfg.seed)
        selection = EpochSelection(model, cfg.select_metric, cfg.patience)
        bar = tqdm(range(1, cfg.epochs + 1), desc=self.name, unit="epoch", disable=not progress, leave=False)
        for epoch in bar:
            model.train()
            order = torch.randperm(len(rows), generator=generator)
            total, count = 0.0, 0
            for start in range(0, len(rows), cfg.batch_size):
                batch = rows[order[start:start + cfg.batch_size]].to(device)
                loss = self._batch_loss(model, batch, generator)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, count = total + float(loss.detach()), count + 1
            if epoch % cfg.eval_every and epoch != cfg.epochs:
                continue
            metrics = self._validate(task)
            bar.set_postfix(loss=f"{total / max(count, 1):.3f}", **{cfg.select_metric: f"{metrics[cfg.select_metric]:.4f}"})
            if selection.update(epoch, total / max(count, 1), metrics):
                break
        return selection.finish()

    def _window(self, model: ItemSequenceEncoder) -> int:
        return model.max_len + 1 if self.causal else model.max_len

    def _validate(self, task: Task) -> dict[str, float]:
        valid = task.splits.valid
        recs = self.recommend(task, valid, 10, progress=False)
        m = evaluate(recs.items, valid.positives, ks=(10,), on_empty="skip")
        return {"HR@10": m["HR@10"], "NDCG@10": m["NDCG@10"]}

    # ---- inference -------------------------------------------------------------------------------------
    @torch.no_grad()
    def recommend(self, task: Task, samples: PageSamples, k: int, *, constrained: bool = True,
                  progress: bool = True, batch_size: int = 512) -> Recommendations:
        if self.model is None:
            raise RuntimeError(f"{self.name}.recommend before fit or load")
        model = self.model.eval()
        device = next(model.parameters()).device
        tokens = self._query_tokens(samples)
        k_eff = min(k, model.num_items)
        out = np.full((len(samples), k), -1, dtype=np.int64)
        for start in tqdm(range(0, len(tokens), batch_size), desc=self.name, unit="batch", disable=not progress,
                          leave=False):
            hidden = model(tokens[start:start + batch_size].to(device))[:, -1]
            out[start:start + batch_size, :k_eff] = model.scores(hidden).topk(k_eff, dim=1).indices.cpu().numpy()
        return Recommendations(out)

    # ---- persistence -----------------------------------------------------------------------------------
    def _save_state(self, directory: Path) -> None:
        torch.save({"num_items": self.model.num_items, "max_len": self.model.max_len,
                    "state": self.model.state_dict()}, directory / WEIGHTS_FILE)

    def _load_state(self, directory: Path, task: Task) -> None:
        saved = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        self.model = ItemSequenceEncoder(saved["num_items"], saved["max_len"], self.settings, self.causal)
        self.model.load_state_dict(saved["state"])
        self.model.to(resolve_device(self.settings.device))


class SASRec(_ItemSequenceRecommender):
    """Causal self-attention over the history; every position predicts the next item (full softmax)."""

    name = "sasrec"
    causal = True

    def _batch_loss(self, model: ItemSequenceEncoder, rows: Tensor, generator: torch.Generator) -> Tensor:
        inputs, targets = rows[:, :-1], rows[:, 1:]
        hidden = model(inputs)
        keep = (inputs > 0) & (targets > 0)
        return F.cross_entropy(model.scores(hidden[keep]), targets[keep] - 1)

    def _query_tokens(self, samples: PageSamples) -> Tensor:
        return _left_pad(samples, self.model.max_len)


class BERT4Rec(_ItemSequenceRecommender):
    """Bidirectional self-attention trained as a cloze task; recommends by filling a mask after the history."""

    name = "bert4rec"
    causal = False

    def _batch_loss(self, model: ItemSequenceEncoder, rows: Tensor, generator: torch.Generator) -> Tensor:
        real = rows > 0
        masked = (torch.rand(rows.shape, generator=generator) < self.settings.mask_prob).to(rows.device) & real
        # Every row also learns the serving case: its last item masked.
        masked[:, -1] |= real[:, -1]
        inputs = torch.where(masked, model.num_items + 1, rows)
        hidden = model(inputs)
        return F.cross_entropy(model.scores(hidden[masked]), rows[masked] - 1)

    def _query_tokens(self, samples: PageSamples) -> Tensor:
        return _left_pad(samples, self.model.max_len, append_mask=self.model.num_items + 1)
