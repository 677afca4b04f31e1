"""TIGER-style generative retrieval (Rajput et al. 2023): a T5 encoder-decoder over semantic IDs.

The encoder reads the user's most recent ``task.max_history`` items as their L SID tokens each (no user-id
token); the decoder emits the next item's L SID tokens, one per level, after a ``<bos>`` start token. The
vocabulary is ours (:class:`genrec_ext.sid.SIDVocab`: four specials, then one block of tokens per SID level), so
the model is a fair sibling of the GenRec rows: same SIDs, same splits, same metrics.

* Training: point-wise NTP (:func:`genrec_ext.train.make_sft_dataset` with ``objective="point"``: one example
  per positive item of a training page). The loss at decoder position l is the cross-entropy over the level-l
  token block only: exactly the distribution the beam search scores, so training and decoding agree.
* Decoding: our trie-constrained beam search, not ``generate``: the encoder runs once per batch of queries;
  then per SID level one decoder step with the decoder's key/value cache and one ``genrec::beam_step``
  (log-softmax over the level's block, trie mask, top-W across beams). The self-attention cache follows each
  beam's parent; the cross-attention cache is expanded once to W rows per query (a query's beams share it,
  so it never needs reordering). ``constrained=False`` decodes any code of each level (HaR).
* Selection: HR@10 / NDCG@10 of that search on (up to ``valid_queries``) validation queries every
  ``eval_every`` epochs; the best epoch's weights are kept, with early stopping after ``patience``
  validations without improvement.

transformers renamed the cache keyword of T5's stacks from ``past_key_values`` (5.17, the GPU image) to
``cache`` (5.24): the keyword is read from the installed ``T5Stack.forward`` signature, and the search checks
that the cache really filled (an unknown keyword would be swallowed by ``**kwargs``).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import ops
from .._config import check, from_mapping
from ..data import ItemCatalog, PageSamples
from ..eval import evaluate
from ..sid import SIDTable, SIDTrie, SIDVocab
from ..sid.vocab import BOS, EOS, PAD
from ..train import SFTBatch, catalog_index_of_sids, collate, make_sft_dataset, sid_codes_for
from ..train.distributed import resolve_device
from .base import EpochSelection, FitReport, Recommendations, Recommender, Task, timed_fit

WEIGHTS_FILE = "weights.pt"


@dataclass
class TIGERConfig:
    """Model size, training recipe, selection and decoding of the TIGER baseline.

    Defaults: TIGER's depth and width (d_model 128, 4 encoder + 4 decoder layers, ReLU FFN, dropout 0.1) with
    attention of d_model's own width (4 heads of 32, not 6 of 64) and a narrower FFN (512, not 1024): about a
    third of the compute and of the per-beam cross-attention cache, so that Amazon-sized data (33k training
    examples) trains in about a minute per epoch on one CPU core; AdamW with warmup + cosine decay over 20
    epochs instead of the paper's 200k inverse-sqrt steps (validation NDCG@10 still rises at the last epoch,
    mostly from the decaying learning rate)."""

    d_model: int = 128
    d_kv: int = 32  # width of one attention head (T5 lets heads * d_kv differ from d_model)
    d_ff: int = 512
    heads: int = 4
    encoder_layers: int = 4
    decoder_layers: int = 4
    dropout: float = 0.1
    feed_forward: str = "relu"  # T5's feed_forward_proj: "relu" (T5 1.0, TIGER) or "gated-gelu" (T5 1.1)
    relative_buckets: int = 32
    relative_max_distance: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup_steps: int = 200
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio at the last epoch
    grad_clip: float = 1.0  # 0 = none
    batch_size: int = 256
    epochs: int = 20
    eval_every: int = 1  # epochs between validations
    patience: int = 3  # validations without improvement before stopping; 0 = never stop early
    select_metric: str = "NDCG@10"
    beam: int = 50  # beam width of recommend (at least k)
    valid_beam: int = 20  # beam width of the validation searches that select the model
    valid_queries: int | None = 4096  # validation queries used for selection (None: all)
    decode_batch: int = 64  # queries per beam search (memory ~ decode_batch * beam * history tokens)
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        checks = [
            (self.d_model >= 1 and self.d_kv >= 1 and self.d_ff >= 1 and self.heads >= 1,
             "d_model, d_kv, d_ff and heads must be >= 1"),
            (self.encoder_layers >= 1 and self.decoder_layers >= 1, "encoder_layers and decoder_layers must be >= 1"),
            (0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}"),
            (self.feed_forward in ("relu", "gelu", "gated-gelu", "gated-relu", "gated-silu"),
             f"feed_forward must be a T5 feed_forward_proj (relu, gated-gelu, ...), got {self.feed_forward!r}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}"),
            (0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}"),
            (self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.eval_every >= 1, f"eval_every must be >= 1, got {self.eval_every}"),
            (self.patience >= 0, f"patience must be >= 0, got {self.patience}"),
            (self.select_metric in ("HR@10", "NDCG@10"), f"select_metric must be HR@10 or NDCG@10, got "
                                                         f"{self.select_metric!r}"),
            (self.beam >= 1 and self.valid_beam >= 10, f"beam must be >= 1 and valid_beam >= 10, got {self.beam}, "
                                                       f"{self.valid_beam}"),
            (self.valid_queries is None or self.valid_queries >= 1,
             f"valid_queries must be >= 1 or None, got {self.valid_queries}"),
            (self.decode_batch >= 1, f"decode_batch must be >= 1, got {self.decode_batch}"),
        ]
        check(checks, "TIGERConfig: ")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TIGERConfig:
        return from_mapping(cls, values)


def _cache_keyword() -> str:
    """The keyword T5's stacks take their cache by: ``cache`` (transformers >= 5.24) or ``past_key_values``."""
    from transformers.models.t5.modeling_t5 import T5Stack

    return "cache" if "cache" in inspect.signature(T5Stack.forward).parameters else "past_key_values"


class TIGERModel(nn.Module):
    """A randomly initialised ``T5ForConditionalGeneration`` over our SID vocabulary, used through its encoder,
    decoder and LM head (never ``generate``)."""

    def __init__(self, level_sizes: tuple[int, ...], config: TIGERConfig) -> None:
        super().__init__()
        from transformers import T5Config, T5ForConditionalGeneration

        self.vocab = SIDVocab(tuple(int(k) for k in level_sizes))
        t5 = T5Config(vocab_size=self.vocab.size, d_model=config.d_model, d_kv=config.d_kv, d_ff=config.d_ff,
                      num_layers=config.encoder_layers, num_decoder_layers=config.decoder_layers,
                      num_heads=config.heads, dropout_rate=config.dropout, feed_forward_proj=config.feed_forward,
                      relative_attention_num_buckets=config.relative_buckets,
                      relative_attention_max_distance=config.relative_max_distance,
                      pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=BOS, tie_word_embeddings=False,
                      is_encoder_decoder=True, use_cache=True)
        self.t5 = T5ForConditionalGeneration(t5)
        # An untied T5 head starts at std 1 (logits of std ~sqrt(d_model)); start it like a tied head, whose
        # hidden states T5 scales by d_model ** -0.5.
        nn.init.normal_(self.t5.lm_head.weight, std=config.d_model ** -0.5)
        self._cache_kw = _cache_keyword()

    @property
    def levels(self) -> int:
        return self.vocab.levels

    # ---- pieces ----------------------------------------------------------------------------------------
    @staticmethod
    def encoder_inputs(history: Tensor, history_len: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, N, L]`` right-padded history tokens -> encoder ids ``[B, N * L]`` and mask. A query without
        history reads a lone ``<bos>`` (an all-masked row has no defined attention)."""
        b, n, levels = history.shape
        ids = history.reshape(b, n * levels).clone()
        mask = torch.arange(n * levels, device=ids.device)[None] < (history_len[:, None] * levels)
        empty = history_len == 0
        if bool(empty.any()):
            ids[empty, 0] = BOS
            mask[empty, 0] = True
        ids[~mask] = PAD
        return ids, mask

    def encode(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self.t5.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state

    def decode(self, tokens: Tensor, encoded: Tensor, mask: Tensor, cache=None) -> Tensor:
        """Decoder hidden states ``[B, T, d]`` of ``tokens [B, T]`` (the new tokens only when ``cache`` holds
        the earlier ones)."""
        kwargs = {"use_cache": False} if cache is None else {self._cache_kw: cache, "use_cache": True}
        out = self.t5.decoder(input_ids=tokens, encoder_hidden_states=encoded, encoder_attention_mask=mask.long(),
                              **kwargs)
        return out.last_hidden_state

    def level_logits(self, hidden: Tensor, level: int) -> Tensor:
        """Logits of the level-``level`` token block only ``[..., K_l]``."""
        start = self.vocab.offsets[level]
        return F.linear(hidden, self.t5.lm_head.weight[start:start + self.vocab.level_sizes[level]])

    def decoder_inputs(self, target: Tensor) -> Tensor:
        """``<bos>`` then the first L - 1 target tokens: teacher forcing of an L-token SID."""
        start = torch.full_like(target[:, :1], BOS)
        return torch.cat([start, target[:, :self.levels - 1]], 1)

    # ---- training and scoring --------------------------------------------------------------------------
    def loss(self, batch: SFTBatch) -> Tensor:
        """Mean level-wise cross-entropy of the batch's target SIDs (``target [B, L]`` tokens)."""
        ids, mask = self.encoder_inputs(batch.history, batch.history_len)
        hidden = self.decode(self.decoder_inputs(batch.target), self.encode(ids, mask), mask)
        codes = self.vocab.codes(batch.target[:, :self.levels])
        return sum(F.cross_entropy(self.level_logits(hidden[:, level], level).float(), codes[:, level])
                   for level in range(self.levels)) / self.levels

    @torch.no_grad()
    def sequence_log_probs(self, history: Tensor, history_len: Tensor, sids: Tensor) -> Tensor:
        """Teacher-forced log-probability ``[B, M]`` of SIDs ``[B, M, L]`` (codes) after each history, level by
        level as the beam search scores them (log-softmax over each level's block): the exhaustive check."""
        b, m, levels = sids.shape
        ids, mask = self.encoder_inputs(history, history_len)
        encoded = self.encode(ids, mask).repeat_interleave(m, 0)
        flat = sids.reshape(b * m, levels)
        hidden = self.decode(self.decoder_inputs(self.vocab.tokens(flat)), encoded, mask.repeat_interleave(m, 0))
        total = torch.zeros(b * m, dtype=torch.float32, device=sids.device)
        for level in range(levels):
            logp = torch.log_softmax(self.level_logits(hidden[:, level], level).float(), -1)
            total += logp.gather(1, flat[:, level:level + 1]).squeeze(1)
        return total.view(b, m)

    # ---- decoding --------------------------------------------------------------------------------------
    @torch.no_grad()
    def beam_search(self, history: Tensor, history_len: Tensor, trie: SIDTrie, beam_width: int,
                    constrained: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """Top-``beam_width`` SIDs per query: ``(scores [B, W], codes [B, W, L], nodes [B, W])`` best first;
        dead slots hold ``-inf`` / ``-1``; ``nodes`` are trie leaves (``-1`` when unconstrained)."""
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        if tuple(trie.level_sizes) != self.vocab.level_sizes:
            raise ValueError(f"the trie's level sizes {list(trie.level_sizes)} differ from the model's "
                             f"{list(self.vocab.level_sizes)}: use the SID table the model was trained with")
        b, device, levels = history.shape[0], history.device, self.levels
        ids, mask = self.encoder_inputs(history, history_len)
        encoded = self.encode(ids, mask)
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        hidden = self.decode(torch.full((b, 1), BOS, dtype=torch.int64, device=device), encoded, mask, cache)[:, -1]
        if cache.get_seq_length() == 0:
            raise RuntimeError(f"T5's decoder ignored the cache keyword {self._cache_kw!r}: this transformers "
                               "version passes the decoder cache by another name")
        scores = torch.zeros(b, 1, dtype=torch.float32, device=device)
        nodes = torch.zeros(b, 1, dtype=torch.int64, device=device)
        codes = torch.zeros(b, 1, 0, dtype=torch.int64, device=device)
        rows = torch.arange(b, device=device)[:, None]
        for level in range(levels):
            logits = self.level_logits(hidden, level).float().view(b, scores.shape[1], -1)
            scores, step_codes, parents, nodes = ops.beam_step(logits, scores, nodes, trie.offsets[level],
                                                               trie.codes[level], beam_width, constrained)
            parents = parents.clamp(min=0)  # dead slots follow beam 0; their -inf score keeps them dead
            codes = torch.cat([codes.gather(1, parents[..., None].expand(-1, -1, level)), step_codes[..., None]], 2)
            if level + 1 == levels:
                break
            # Each new beam continues its parent's decoder state (rows of the previous step's beams).
            cache.self_attention_cache.reorder_cache((rows * logits.shape[1] + parents).reshape(-1))
            if level == 0:  # one row per query so far: every beam of a query shares its cross-attention K/V
                cache.cross_attention_cache.batch_repeat_interleave(beam_width)
                encoded, mask = encoded.repeat_interleave(beam_width, 0), mask.repeat_interleave(beam_width, 0)
            tokens = (self.vocab.offsets[level] + step_codes.clamp(min=0)).reshape(-1, 1)
            hidden = self.decode(tokens, encoded, mask, cache)[:, -1]
        return scores, codes.masked_fill(scores.isneginf()[..., None], -1), nodes


def _history_tokens(samples: PageSamples, item_tokens: np.ndarray, max_history: int | None) -> list[np.ndarray]:
    """Each sample's most recent ``max_history`` items as ``[n, L]`` tokens, oldest first."""
    off, values = samples.history.to_csr()
    out = []
    for q in range(len(off) - 1):
        h = values[off[q]:off[q + 1]]
        if max_history is not None:
            h = h[max(0, len(h) - max_history):]
        out.append(item_tokens[h])
    return out


def _batch_histories(histories: list[np.ndarray], levels: int) -> tuple[Tensor, Tensor]:
    n = max([1] + [len(h) for h in histories])
    out = np.full((len(histories), n, levels), PAD, dtype=np.int64)
    for i, h in enumerate(histories):
        out[i, :len(h)] = h
    return torch.from_numpy(out), torch.tensor([len(h) for h in histories], dtype=torch.int64)


def _length_batches(lengths: np.ndarray, batch_size: int, generator: np.random.Generator | None) -> list[np.ndarray]:
    """Batches of similar length (less padding): shuffled, then sorted by length within chunks of 50
    batches, batch order shuffled; sorted outright when ``generator`` is None (inference)."""
    if generator is None:
        order = np.argsort(lengths, kind="stable")
        return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    order = generator.permutation(len(lengths))
    chunk = 50 * batch_size
    batches = []
    for s in range(0, len(order), chunk):
        part = order[s:s + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in generator.permutation(len(batches))]


class TIGER(Recommender):
    """TIGER-style: a T5 encoder-decoder trained with point-wise NTP on SIDs, decoded by our constrained beam
    search (see the module docstring)."""

    name = "tiger"
    generative = True

    def __init__(self, config: TIGERConfig | dict[str, Any] | None = None, **overrides: Any) -> None:
        values = asdict(config) if isinstance(config, TIGERConfig) else dict(config or {})
        self.settings = TIGERConfig.from_dict({**values, **overrides})
        self.model: TIGERModel | None = None
        self._search_cache: dict = {}  # (id(table), id(catalog)) -> (table, catalog, trie, to_catalog, tokens)

    def config(self) -> dict[str, Any]:
        return asdict(self.settings)

    # ---- training --------------------------------------------------------------------------------------
    def fit(self, task: Task, *, out_dir: str | Path | None = None, progress: bool = True) -> FitReport:
        return timed_fit(lambda: self._fit(task, progress))

    def _fit(self, task: Task, progress: bool) -> dict[str, Any]:
        cfg = self.settings
        table = task.require_table(self.name)
        torch.manual_seed(cfg.seed)
        device = resolve_device(cfg.device)
        dataset = make_sft_dataset(task.splits.train, task.catalog, table, "point", max_history=task.max_history)
        if len(dataset) == 0:
            raise ValueError("the training split has no positive item: nothing to train on")
        model = self.model = TIGERModel(tuple(table.level_sizes), cfg).to(device)
        lengths = np.minimum(task.splits.train.history.lengths[dataset.example_sample], task.max_history or np.inf)
        valid = task.splits.valid
        if cfg.valid_queries is not None and len(valid) > cfg.valid_queries:
            pick = np.random.default_rng(cfg.seed).choice(len(valid), cfg.valid_queries, replace=False)
            valid = valid.subset(np.sort(pick))

        decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "relative_attention_bias" not in n]
        no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "relative_attention_bias" not in n)]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
        steps_per_epoch = math.ceil(len(dataset) / cfg.batch_size)
        total = steps_per_epoch * cfg.epochs

        def factor(step: int) -> float:
            if step < cfg.warmup_steps:
                return (step + 1) / cfg.warmup_steps
            progress_ = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
            return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress_))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        rng = np.random.default_rng(cfg.seed)
        selection = EpochSelection(model, cfg.select_metric, cfg.patience)
        bar = tqdm(range(1, cfg.epochs + 1), desc=self.name, unit="epoch", disable=not progress, leave=False)
        for epoch in bar:
            model.train()
            loss_sum, count = 0.0, 0
            for index in _length_batches(lengths, cfg.batch_size, rng):
                batch = collate([dataset[int(i)] for i in index]).to(device)
                loss = model.loss(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                loss_sum, count = loss_sum + float(loss.detach()), count + 1
            if epoch % cfg.eval_every and epoch != cfg.epochs:
                continue
            metrics = self._validate(task, valid)
            bar.set_postfix(loss=f"{loss_sum / max(count, 1):.3f}", **{cfg.select_metric: f"{metrics[cfg.select_metric]:.4f}"})
            if selection.update(epoch, loss_sum / max(count, 1), metrics):
                break
        report = selection.finish()
        model.eval()
        return {**report, "examples": len(dataset)}

    def _validate(self, task: Task, valid: PageSamples) -> dict[str, float]:
        recs = self.recommend(task, valid, 10, progress=False, beam_width=self.settings.valid_beam)
        m = evaluate(recs.items, valid.positives, ks=(10,), generated=recs.generated, on_empty="skip")
        return {"HR@10": m["HR@10"], "NDCG@10": m["NDCG@10"]}

    # ---- inference -------------------------------------------------------------------------------------
    def _search_tables(self, catalog: ItemCatalog, table: SIDTable, device: torch.device):
        key = (id(table), id(catalog), str(device))
        hit = self._search_cache.get(key)
        if hit is None or hit[0] is not table or hit[1] is not catalog:
            trie = SIDTrie.from_table(table).to(device)
            to_catalog = torch.from_numpy(catalog_index_of_sids(catalog, table))
            tokens = self.model.vocab.tokens(sid_codes_for(catalog, table)).numpy()
            hit = self._search_cache[key] = (table, catalog, trie, to_catalog, tokens)
        return hit[2:]

    @torch.no_grad()
    def recommend(self, task: Task, samples: PageSamples, k: int, *, constrained: bool = True,
                  progress: bool = True, beam_width: int | None = None) -> Recommendations:
        """Top-``k`` items per sample by beam search of width ``max(k, config beam)`` (or ``beam_width``)."""
        if self.model is None:
            raise RuntimeError(f"{self.name}.recommend before fit or load")
        model = self.model.eval()
        table = task.require_table(self.name)
        device = next(model.parameters()).device
        width = max(k, beam_width or self.settings.beam)
        trie, to_catalog, tokens = self._search_tables(task.catalog, table, device)
        histories = _history_tokens(samples, tokens, task.max_history)
        lengths = np.array([len(h) for h in histories], dtype=np.int64)
        items = np.full((len(samples), width), -1, dtype=np.int64)
        generated = np.zeros((len(samples), width), dtype=bool)
        batches = _length_batches(lengths, self.settings.decode_batch, None)
        lookup = None if constrained else {tuple(int(c) for c in row): i for i, row in enumerate(table.codes)}
        for index in tqdm(batches, desc=self.name, unit="batch", disable=not progress, leave=False):
            history, history_len = _batch_histories([histories[i] for i in index], model.levels)
            scores, codes, nodes = model.beam_search(history.to(device), history_len.to(device), trie, width,
                                                     constrained)
            if constrained:
                rows = trie.items_of(nodes).cpu()
            else:
                flat = codes.reshape(-1, codes.shape[2]).cpu().numpy()
                rows = torch.tensor([lookup.get(tuple(r.tolist()), -1) for r in flat],
                                    dtype=torch.int64).view(codes.shape[:2])
            items[index] = torch.where(rows >= 0, to_catalog[rows.clamp(min=0)], -1).numpy()
            generated[index] = torch.isfinite(scores).cpu().numpy()
        return Recommendations(items[:, :k], generated[:, :k])

    def prompt_length(self, samples: PageSamples) -> float:
        """Encoder tokens per query: L per history item."""
        if not len(samples):
            return 0.0
        levels = self.model.levels if self.model is not None else 1
        cap = samples.max_history or np.inf
        return float((np.minimum(samples.history.lengths, cap) * levels).mean())

    # ---- persistence -----------------------------------------------------------------------------------
    def _save_state(self, directory: Path) -> None:
        torch.save({"level_sizes": list(self.model.vocab.level_sizes), "state": self.model.state_dict()},
                   directory / WEIGHTS_FILE)

    def _load_state(self, directory: Path, task: Task) -> None:
        saved = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        model = TIGERModel(tuple(saved["level_sizes"]), self.settings)
        model.load_state_dict(saved["state"])
        self.model = model.to(resolve_device(self.settings.device)).eval()
        self._search_cache.clear()
