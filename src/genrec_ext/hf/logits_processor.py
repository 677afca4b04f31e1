"""Our SID trie as a Hugging Face ``LogitsProcessor``: constrained ``generate`` for models whose tokenizer holds
SID tokens anywhere in its vocabulary (e.g. ``<a_12><b_7><c_3>`` added to a Qwen tokenizer).

    processor = SIDLogitsProcessor(trie, level_token_ids, prompt_length=inputs["input_ids"].shape[1],
                                   eos_token_id=tokenizer.eos_token_id)
    out = model.generate(**inputs, num_beams=50, num_return_sequences=50, max_new_tokens=trie.levels + 1,
                         logits_processor=LogitsProcessorList([processor]))

Peers constrain ``generate`` with a Python loop over the beams and a dict lookup per prefix
(``prefix_allowed_tokens_fn``, MiniOneRec's ``LogitProcessor``). Here every step is a few tensor operations over
all beams at once, on the scores' device, with no host synchronisation: each beam's generated tokens are mapped
back to codes and walked down the trie by binary search in its CSR arrays (key = parent node x K + code, sorted
by construction), then every code of the next level is tested the same way, giving a ``[beams, K]`` mask that is
scattered onto the level's token ids. After the L-th SID token only ``eos_token_id`` is allowed (when given). A
beam whose prefix is no valid SID (which this processor never produces) gets no allowed token.

By default the mask is written into ``scores`` (``inplace=True``): a fresh ``[beams, vocab]`` tensor per step
costs more than everything else here (measured: allocating 400 x 32k floats 25 ms, the in-place step 2.6 ms on
one CPU thread). Beam search never reads the tensor it passes to the processors again; greedy search and
sampling with ``output_logits=True`` do (their raw logits would come back masked): pass ``inplace=False`` there.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import LogitsProcessor

from ..sid import SIDTrie


#: the largest dense child table (nodes x K bools) a level gets; larger levels binary-search the CSR arrays
_DENSE_CHILDREN_MAX = 1 << 24


class SIDLogitsProcessor(LogitsProcessor):
    """Masks every beam's next-token scores to the valid continuations of its SID prefix (module docstring).

    Args:
        trie: the valid SIDs (:class:`genrec_ext.sid.SIDTrie`).
        level_token_ids: per SID level, the token id of each code (``[K_l]`` ints), or per level one int offset
            (token = offset + code).
        prompt_length: the (padded) prompt length: tokens after it are the generated SID tokens.
        eos_token_id: allowed, alone, once a whole SID has been generated; None: nothing is masked after it.
        inplace: write the mask into ``scores`` (module docstring) rather than into a new tensor.
    """

    def __init__(self, trie: SIDTrie, level_token_ids: Sequence[Sequence[int] | Tensor | int], prompt_length: int,
                 eos_token_id: int | None = None, *, inplace: bool = True) -> None:
        if len(level_token_ids) != trie.levels:
            raise ValueError(f"level_token_ids has {len(level_token_ids)} levels but the trie has {trie.levels}")
        if prompt_length < 0:
            raise ValueError(f"prompt_length must be >= 0, got {prompt_length}")
        self.prompt_length, self.inplace = int(prompt_length), inplace
        self.levels = trie.levels
        self.token_ids: list[Tensor] = []
        for level, (ids, k) in enumerate(zip(level_token_ids, trie.level_sizes)):
            ids = torch.arange(k) + int(ids) if isinstance(ids, int) else torch.as_tensor(ids, dtype=torch.int64)
            if ids.shape != (k,):
                raise ValueError(f"level {level} has {k} codes but {tuple(ids.shape)[0] if ids.dim() else 0} token ids")
            if (ids < 0).any():
                raise ValueError(f"level {level}'s token ids must be >= 0, got {int(ids.min())}")
            self.token_ids.append(ids)
        every = torch.cat(self.token_ids)
        if len(torch.unique(every)) != len(every):
            raise ValueError("level_token_ids repeat a token id: each (level, code) needs its own token")
        vocab = self.max_token = int(every.max()) + 1
        # token id -> code, per level (-1: not a token of that level); CSR keys parent * K + code, sorted
        self.code_of: list[Tensor] = []
        self.keys: list[Tensor] = []
        # per level, a dense [nodes, K] table of each node's valid child codes where it is small: one gather per
        # step instead of a binary search per (beam, code) (the step's largest cost after the -inf fill)
        self.children: list[Tensor | None] = []
        trie = trie.to("cpu")
        for level, ids in enumerate(self.token_ids):
            code_of = torch.full((vocab,), -1, dtype=torch.int64)
            code_of[ids] = torch.arange(len(ids))
            self.code_of.append(code_of)
            counts = trie.offsets[level][1:] - trie.offsets[level][:-1]
            parents = torch.repeat_interleave(torch.arange(trie.num_nodes(level)), counts)
            self.keys.append(parents * trie.level_sizes[level] + trie.codes[level])
            small = trie.num_nodes(level) * trie.level_sizes[level] <= _DENSE_CHILDREN_MAX
            self.children.append(trie.dense_mask(level) if small else None)
        self.level_sizes = list(trie.level_sizes)
        self.eos_ids = None if eos_token_id is None else torch.tensor([int(eos_token_id)])
        self._device = torch.device("cpu")

    def to(self, device) -> SIDLogitsProcessor:
        device = torch.device(device)
        if device != self._device:
            self.token_ids = [t.to(device) for t in self.token_ids]
            self.code_of = [t.to(device) for t in self.code_of]
            self.keys = [t.to(device) for t in self.keys]
            self.children = [None if t is None else t.to(device) for t in self.children]
            self.eos_ids = None if self.eos_ids is None else self.eos_ids.to(device)
            self._device = device
        return self

    def _walk(self, generated: Tensor) -> Tensor:
        """Depth-``t`` trie node of each row's ``t`` generated tokens (``-1``: no valid SID prefix)."""
        node = torch.zeros(generated.shape[0], dtype=torch.int64, device=generated.device)
        for level in range(generated.shape[1]):
            code_of = self.code_of[level]
            tok = generated[:, level]
            code = code_of[tok.clamp(0, len(code_of) - 1)].masked_fill(tok >= len(code_of), -1)
            node = self._child(level, node, code)
        return node

    def _child(self, level: int, node: Tensor, code: Tensor) -> Tensor:
        """The depth-(level + 1) node reached from ``node`` by ``code`` (any shape; -1 where there is none)."""
        keys = self.keys[level]
        key = node * self.level_sizes[level] + code
        pos = torch.searchsorted(keys, key.clamp(min=0))
        hit = keys[pos.clamp(max=len(keys) - 1)] == key
        return torch.where(hit & (pos < len(keys)) & (node >= 0) & (code >= 0), pos, -1)

    def allowed_codes(self, generated: Tensor) -> Tensor:
        """bool ``[rows, K_t]``: the level-``t`` codes that continue each row's ``t`` generated SID tokens."""
        depth = generated.shape[1]
        node = self._walk(generated)
        if self.children[depth] is not None:
            return self.children[depth][node.clamp(min=0)] & (node >= 0)[:, None]
        codes = torch.arange(self.level_sizes[depth], device=generated.device)
        return self._child(depth, node[:, None], codes[None]) >= 0

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        self.to(scores.device)
        if input_ids.shape[1] < self.prompt_length:
            raise ValueError(f"input_ids has {input_ids.shape[1]} tokens, fewer than prompt_length {self.prompt_length}")
        if self.max_token > scores.shape[1]:
            raise ValueError(f"SID token ids reach {self.max_token - 1} but the scores cover {scores.shape[1]} tokens")
        generated = input_ids[:, self.prompt_length:]
        depth = generated.shape[1]
        if depth >= self.levels:  # a whole SID: only <eos>, if we know it
            if self.eos_ids is None:
                return scores
            ids = self.eos_ids
            kept = scores.index_select(1, ids)
        else:
            ids = self.token_ids[depth]
            kept = scores.index_select(1, ids).masked_fill_(~self.allowed_codes(generated), float("-inf"))
        out = scores.fill_(float("-inf")) if self.inplace else torch.full_like(scores, float("-inf"))
        return out.index_copy_(1, ids, kept)
