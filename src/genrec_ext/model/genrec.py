"""GenRecModel: a Hugging Face Qwen2 decoder over the SID vocabulary, with the Token Merger on the prompt.

Sequence layout of one example (right-padded in a batch; positions 0..S-1):

    with the Token Merger:  <bos> h_1 ... h_N <sep> y_1 ... y_T        (N + 2 prompt positions)
    without ("w/o TM"):     <bos> s_1^1 .. s_1^L ... s_N^L <sep> y_1 ... y_T   (L*N + 2 prompt positions)

``h_i = Linear(Concat(e(s_i^1..s_i^L)))`` (paper eq. 5, ``genrec::token_merge``) uses the decoder's own
input embedding table, so prompt and decoding share one set of SID embeddings; specials are never merged.
The loss is the cross-entropy of every target token y_t given the prompt and y_<t (eq. 4); prompt positions
carry no loss. Logits are computed only at the supervised positions and only over our token block of the
(possibly extended) vocabulary.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import Qwen2Config, Qwen2ForCausalLM
from transformers.utils import logging as hf_logging

from .._io import atomic_directory, read_meta
from ..nn import TokenMerger
from ..sid import SIDVocab
from ..sid.vocab import BOS, EOS, PAD, SEP, SPECIALS
from .batch import PackedSFTBatch, SFTBatch
from .config import ModelConfig
from .packed_attention import PackedAttention, packed_attention_enabled

FORMAT = "genrec-model/1"
META_FILE = "genrec.json"
MERGER_FILE = "token_merger.safetensors"


@dataclass
class SFTOutput:
    loss: Tensor  # mean cross-entropy over the supervised target tokens
    num_target_tokens: int
    num_input_positions: int


@dataclass
class Layout:
    """A batch laid out as decoder inputs (see the module docstring)."""

    inputs_embeds: Tensor  # [B, S, H]
    attention_mask: Tensor | PackedAttention  # [B, S] bool, or a packed batch's attention plan
    prompt_len: Tensor  # [B] prompt positions per example
    label_mask: Tensor  # [B, S] bool: positions whose next token is a target token
    labels: Tensor  # [num supervised positions] our token ids, in label_mask order
    label_index: Tensor  # [num supervised positions] each label's index in its target (0 = first SID token)
    position_ids: Tensor | None = None  # [B, S]; None: 0, 1, ... (one right-padded sequence per row)
    num_positions: Tensor | None = None  # real (unpadded) input positions; None: attention_mask.sum()


def _rope_theta(hf_config) -> float:
    """RoPE base of a Qwen2 config (transformers 5 keeps it in ``rope_parameters``, 4.x as ``rope_theta``)."""
    params = getattr(hf_config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(hf_config, "rope_theta", 1e4)))


class GenRecModel(nn.Module):
    def __init__(self, config: ModelConfig, vocab: SIDVocab, backbone: Qwen2ForCausalLM, token_offset: int = 0):
        super().__init__()
        self.config, self.vocab, self.backbone, self.token_offset = config, vocab, backbone, token_offset
        embedding = backbone.get_input_embeddings()
        if embedding.num_embeddings < token_offset + vocab.size:
            raise ValueError(f"backbone vocabulary {embedding.num_embeddings} is smaller than the SID vocabulary "
                             f"({vocab.size} tokens at offset {token_offset})")
        hidden = backbone.config.hidden_size
        self.merger = (TokenMerger(embedding.num_embeddings, hidden, vocab.levels, hidden,
                                   pad_id=token_offset + PAD, embedding=embedding) if config.token_merger else None)
        self._prompt_tables_cache: dict = {}  # (history width, device) -> prompt layout tables
        self.input_dropout = nn.Dropout(config.dropout)

    # ---- construction ------------------------------------------------------------------------------
    @classmethod
    def build(cls, config: ModelConfig, vocab: SIDVocab, *, seed: int = 0) -> GenRecModel:
        """A fresh model from ``config`` (random init, seeded), or from ``config.checkpoint``'s weights."""
        torch.manual_seed(seed)
        if config.checkpoint:
            backbone = Qwen2ForCausalLM.from_pretrained(config.checkpoint, attn_implementation="sdpa")
            offset = backbone.get_input_embeddings().num_embeddings
            backbone.resize_token_embeddings(offset + vocab.size)
            h = backbone.config
            config = ModelConfig(h.hidden_size, h.num_hidden_layers, h.num_attention_heads, h.num_key_value_heads,
                                 h.intermediate_size, h.max_position_embeddings, _rope_theta(h),
                                 h.tie_word_embeddings, config.token_merger, config.dropout, config.checkpoint)
            backbone.config.attention_dropout = config.dropout
            return cls(config, vocab, backbone, offset)
        hf = Qwen2Config(
            vocab_size=vocab.size, hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
            intermediate_size=config.intermediate_size, max_position_embeddings=config.max_position_embeddings,
            rope_theta=config.rope_theta, tie_word_embeddings=config.tie_word_embeddings,
            bos_token_id=BOS, eos_token_id=2, pad_token_id=PAD, attention_dropout=config.dropout,
        )
        hf._attn_implementation = "sdpa"
        return cls(config, vocab, Qwen2ForCausalLM(hf))

    # ---- forward -----------------------------------------------------------------------------------
    @property
    def _input_embeddings(self) -> nn.Embedding:
        return self.backbone.model.embed_tokens  # get_input_embeddings() costs more than a serving prompt's maths

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        return self._input_embeddings(tokens + self.token_offset)

    def prompt_items(self, history: Tensor, history_len: Tensor) -> tuple[Tensor, Tensor]:
        """History ``[B, N, L]`` as prompt vectors ``[B, P_items, H]`` and the number of them per example."""
        if self.merger is not None:
            return self.merger(history + self.token_offset), history_len
        b, n, levels = history.shape
        return self.embed_tokens(history.reshape(b, n * levels)), history_len * levels

    @staticmethod
    def _layout_index(rel: Tensor, n_items: Tensor, width: int, target_len: Tensor | None = None) -> Tensor:
        """The sequence layout (module docstring) as data: for positions ``rel [B, S]`` of each sequence
        (negative in left padding), the row of ``[items (width rows); the specials; targets]`` it takes
        (:meth:`_source_rows`)."""
        prompt_len = n_items[:, None] + 2
        index = torch.where(rel == 0, width + BOS, width + PAD)
        index = torch.where((rel >= 1) & (rel < prompt_len - 1), rel - 1, index)  # the items
        index = torch.where(rel == prompt_len - 1, width + SEP, index)
        if target_len is not None:
            t = rel - prompt_len
            index = torch.where((t >= 0) & (t < target_len[:, None]), width + len(SPECIALS) + t, index)
        return index

    def _source_rows(self, items: Tensor, target: Tensor | None = None) -> Tensor:
        """``[items; the special tokens' embeddings; the embedded targets]`` per example: the rows a layout
        gathers."""
        specials = self._input_embeddings.weight[self.token_offset : self.token_offset + len(SPECIALS)]
        parts = [items, specials.to(items.dtype).expand(items.shape[0], -1, -1)]
        if target is not None:
            parts.append(self.embed_tokens(target).to(items.dtype))
        return torch.cat(parts, 1)

    @staticmethod
    def _gather_rows(rows: Tensor, index: Tensor) -> Tensor:
        return rows.gather(1, index[..., None].expand(-1, -1, rows.shape[2]))

    def layout(self, batch: SFTBatch | PackedSFTBatch) -> Layout:
        if isinstance(batch, PackedSFTBatch):
            return self.packed_layout(batch)
        items, n_items = self.prompt_items(batch.history, batch.history_len)
        prompt_len = n_items + 2
        seq_len = prompt_len + batch.target_len
        j = torch.arange(int(seq_len.max()), device=items.device)[None]  # [1, S]
        index = self._layout_index(j.expand(items.shape[0], -1), n_items, items.shape[1], batch.target_len)
        inputs = self._gather_rows(self._source_rows(items, batch.target), index)
        # Position p predicts the token at p + 1: the <sep> predicts y_1, y_t predicts y_{t+1}.
        label_mask = (j >= prompt_len[:, None] - 1) & (j < seq_len[:, None] - 1)
        target_index = (j - prompt_len[:, None] + 1).clamp(0, batch.target.shape[1] - 1)
        labels = batch.target.gather(1, target_index)[label_mask]
        return Layout(inputs, j < seq_len[:, None], prompt_len, label_mask, labels,
                      target_index.expand_as(label_mask)[label_mask])

    def packed_layout(self, batch: PackedSFTBatch) -> Layout:
        """A packed batch as ONE decoder sequence: every row's prompt (``<bos>`` and its prompt vectors, padded to
        the widest), then every block (padded to the longest); a :class:`PackedAttention` plan says who sees what,
        and position ids restart per prompt and continue each block from its history prefix."""
        items, n_items = self.prompt_items(batch.history, batch.history_len)
        rows, width = items.shape[:2]
        per_item = 1 if self.merger is not None else self.vocab.levels  # prompt vectors per history item
        bos = self._input_embeddings.weight[self.token_offset + BOS].to(items.dtype).expand(rows, 1, -1)
        prompts = torch.cat([bos, items], 1)  # [R, P, H]
        blocks = self.embed_tokens(batch.blocks).to(items.dtype)  # [K, W, H]
        inputs = torch.cat([prompts.flatten(0, 1), blocks.flatten(0, 1)])[None]
        device, (k, w) = items.device, batch.blocks.shape
        prefix = batch.prefix_len * per_item  # prompt vectors a block sees
        p = torch.arange(1 + width, device=device)
        i = torch.arange(w, device=device)
        positions = torch.cat([p.repeat(rows), (1 + prefix[:, None] + i).flatten()])[None]
        real = i < batch.block_len[:, None]  # [K, W]
        sees_prompt = (p == 0) | (p - 1 < prefix[:, None])  # [K, P]: <bos> and the block's own history prefix
        sees_own = (i[None, :] <= i[:, None]) & real[:, None, :]  # [K, W, W]: causal within the block
        mask = torch.cat([sees_prompt[:, None, :].expand(k, w, 1 + width), sees_own], -1)[:, None]
        plan = PackedAttention(rows, 1 + width, batch.block_row, mask)
        # block position o (<sep> = 0) predicts the block's token o + 1
        predicts = i < batch.block_len[:, None] - 1
        label_mask = torch.cat([torch.zeros(rows * (1 + width), dtype=torch.bool, device=device), predicts.flatten()])
        labels = torch.cat([batch.blocks[:, 1:], batch.blocks[:, :1]], 1)[predicts]
        return Layout(inputs, plan, n_items + 2, label_mask[None], labels, i.expand(k, -1)[predicts], positions,
                      (1 + n_items).sum() + batch.block_len.sum())

    def prompt_inputs(self, history: Tensor, history_len: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Left-padded prompts for generation: (inputs_embeds [B, P, H], attention_mask [B, P], position_ids),
        so every prompt ends at the same position and decoding steps append in lockstep. P is the widest prompt
        the history tensor holds (no host sync); a prompt's layout, mask and positions depend only on its number
        of items, so they are rows of tables made once per width."""
        return self.prompt_from_items(*self.prompt_items(history, history_len))

    def prompt_from_items(self, items: Tensor, n_items: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`prompt_inputs` from :meth:`prompt_items`' output."""
        index, mask, positions = (t.index_select(0, n_items) for t in self.prompt_tables(items.shape[1], items.device))
        return self._gather_rows(self._source_rows(items), index), mask, positions

    def prompt_tables(self, width: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """For n = 0..width prompt items (rows n): the layout index, attention mask and position ids of a
        left-padded generation prompt of width + 2 positions."""
        key = (width, device)
        if key not in self._prompt_tables_cache:
            n = torch.arange(width + 1, device=device)
            rel = torch.arange(width + 2, device=device)[None] - (width - n[:, None])  # position inside the prompt
            self._prompt_tables_cache[key] = (self._layout_index(rel, n, width), rel >= 0, rel.clamp(min=0))
        return self._prompt_tables_cache[key]

    def hidden_states(self, inputs_embeds: Tensor, attention_mask: Tensor | PackedAttention,
                      position_ids: Tensor | None = None) -> Tensor:
        """The decoder's last hidden states. ``attention_mask``: ``[B, S]`` (padding; causal attention) or a
        packed batch's :class:`PackedAttention` plan."""
        if isinstance(attention_mask, PackedAttention):
            # a prepared mask mapping reaches every layer's attention function as is
            with packed_attention_enabled(self.backbone.config):
                out = self.backbone.model(inputs_embeds=inputs_embeds, position_ids=position_ids, use_cache=False,
                                          attention_mask={"full_attention": attention_mask})
            return out.last_hidden_state
        out = self.backbone.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask.long(),
                                  position_ids=position_ids, use_cache=False)
        return out.last_hidden_state

    def head_block(self, start: int = 0, size: int | None = None) -> tuple[Tensor, Tensor | None]:
        """The LM head's (weight, bias) rows of our tokens ``[start, start + size)`` (default: all of them)."""
        head = self.backbone.get_output_embeddings()
        lo = self.token_offset + start
        hi = lo + (self.vocab.size - start if size is None else size)
        return head.weight[lo:hi], None if head.bias is None else head.bias[lo:hi]

    def token_logits(self, hidden: Tensor, start: int = 0, size: int | None = None) -> Tensor:
        """Logits over our tokens ``[start, start + size)`` (default: the whole SID vocabulary) only."""
        return F.linear(hidden, *self.head_block(start, size))

    def forward(self, batch: SFTBatch) -> SFTOutput:
        lay = self.layout(batch)
        hidden = self.hidden_states(self.input_dropout(lay.inputs_embeds), lay.attention_mask, lay.position_ids)
        logits = self.token_logits(hidden[lay.label_mask]).float()
        if self.config.level_softmax:
            logits = logits.masked_fill(~self._allowed_tokens(lay.label_index), float("-inf"))
        loss = F.cross_entropy(logits, lay.labels)
        positions = lay.attention_mask.sum() if lay.num_positions is None else lay.num_positions
        return SFTOutput(loss, int(lay.labels.numel()), int(positions))

    def _allowed_tokens(self, label_index: Tensor) -> Tensor:
        """bool ``[N, V]``: the tokens a target position may hold, as decoding scores it: the SID tokens of its
        level (label ``t`` is level ``t mod L``), plus ``<eos>`` where an item could start (the page's end)."""
        key = ("allowed", label_index.device)
        if key not in self._prompt_tables_cache:
            levels, size = self.vocab.levels, self.vocab.size
            table = torch.zeros(levels, size, dtype=torch.bool, device=label_index.device)
            for level, (start, k) in enumerate(zip(self.vocab.offsets, self.vocab.level_sizes)):
                table[level, start:start + k] = True
            table[0, EOS] = True
            self._prompt_tables_cache[key] = table
        return self._prompt_tables_cache[key][label_index % self.vocab.levels]

    # ---- persistence -------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, state_dict: dict[str, Tensor] | None = None) -> Path:
        """Hugging Face layout (config.json + model.safetensors) plus ``genrec.json`` and the merger weights;
        the directory is replaced atomically. ``state_dict`` (this module's keys) overrides the live weights,
        e.g. the full weights gathered from an FSDP-sharded model."""
        if state_dict is not None:
            backbone_state = {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}
            merger_state = {k[len("merger.proj."):]: v for k, v in state_dict.items() if k.startswith("merger.proj.")}
        else:
            backbone_state, merger_state = None, (self.merger.proj.state_dict() if self.merger is not None else {})
        with atomic_directory(directory) as tmp, hf_progress_bars(False):  # a bar for a few MB is noise
            self.backbone.save_pretrained(tmp, state_dict=backbone_state)
            if self.merger is not None:
                save_file({k: v.detach().contiguous().cpu() for k, v in merger_state.items()}, tmp / MERGER_FILE)
            meta = {"format": FORMAT, "model": self.config.to_dict(), "level_sizes": list(self.vocab.level_sizes),
                    "token_offset": self.token_offset}
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        return Path(directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> GenRecModel:
        directory = Path(directory)
        meta = read_meta(directory, META_FILE, "a GenRec model directory", FORMAT)
        config = ModelConfig(**meta["model"])
        with hf_progress_bars(False):
            backbone = Qwen2ForCausalLM.from_pretrained(directory, attn_implementation="sdpa")
        model = cls(config, SIDVocab(tuple(meta["level_sizes"])), backbone, meta["token_offset"])
        if model.merger is not None:
            model.merger.proj.load_state_dict(load_file(directory / MERGER_FILE))
        return model


@contextlib.contextmanager
def hf_progress_bars(enabled: bool):
    """Silence transformers' own bars (e.g. "Writing model shards") when ours are off."""
    was = hf_logging.is_progress_bar_enabled()
    if was and not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was and not enabled:
            hf_logging.enable_progress_bar()


def build_model(preset: str | Path | ModelConfig = "tiny", vocab: SIDVocab | None = None, *,
                token_merger: bool | None = None, seed: int = 0, **overrides) -> GenRecModel:
    """A fresh GenRec model: ``preset`` is a preset name, a YAML path or a :class:`ModelConfig`; ``overrides``
    replace its fields (e.g. ``dropout=0.1``)."""
    if vocab is None:
        raise ValueError("build_model needs the SID vocabulary (SIDVocab(table.level_sizes))")
    config = preset if isinstance(preset, ModelConfig) else ModelConfig.load(preset)
    if token_merger is not None:
        overrides["token_merger"] = token_merger
    if overrides:
        config = ModelConfig(**{**config.to_dict(), **overrides})
    return GenRecModel.build(config, vocab, seed=seed)
