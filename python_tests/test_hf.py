"""genrec_ext.hf.SIDLogitsProcessor: the trie as a Hugging Face logits processor, against a brute-force prefix
check, and inside ``generate(num_beams=...)`` of a tiny Qwen2 whose SID tokens sit anywhere in its vocabulary."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LogitsProcessorList, Qwen2Config, Qwen2ForCausalLM

from genrec_ext.hf import SIDLogitsProcessor, logits_processor
from genrec_ext.sid import SIDTrie

LEVELS = (5, 4, 6)


def _sids(n: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.unique(np.stack([rng.integers(0, k, n) for k in LEVELS], 1), axis=0)


def _token_ids(seed: int = 1, vocab: int = 200) -> list[np.ndarray]:
    """SID tokens scattered over a vocabulary of ``vocab`` ids (as tokens added to a real tokenizer would be)."""
    ids = np.random.default_rng(seed).permutation(np.arange(10, vocab))[: sum(LEVELS)]
    return list(np.split(ids, np.cumsum(LEVELS)[:-1]))


@pytest.mark.parametrize("dense", [True, False])  # child tables per node, or binary search in the CSR arrays
def test_allowed_tokens_equal_a_brute_force_prefix_check(dense, monkeypatch):
    if not dense:
        monkeypatch.setattr(logits_processor, "_DENSE_CHILDREN_MAX", 0)
    sids, token_ids = _sids(), _token_ids()
    trie = SIDTrie.from_codes(sids, list(LEVELS))
    proc = SIDLogitsProcessor(trie, token_ids, prompt_length=3, eos_token_id=2, inplace=False)
    assert all((t is not None) == dense for t in proc.children)
    rng = np.random.default_rng(2)
    valid = {tuple(s) for s in sids.tolist()}
    for depth in range(len(LEVELS) + 1):
        # prefixes of real SIDs, and random (mostly invalid) ones
        prefixes = [tuple(s[:depth]) for s in sids[rng.integers(0, len(sids), 12)]]
        prefixes += [tuple(int(rng.integers(0, k)) for k in LEVELS[:depth]) for _ in range(12)]
        rows = [[7, 8, 9] + [int(token_ids[l][c]) for l, c in enumerate(p)] for p in prefixes]
        scores = torch.randn(len(rows), 200)
        out = proc(torch.tensor(rows), scores)
        inplace = SIDLogitsProcessor(trie, token_ids, prompt_length=3, eos_token_id=2)
        written = scores.clone()
        assert inplace(torch.tensor(rows), written) is written and torch.equal(written, out)  # the default
        for prefix, got, before in zip(prefixes, out, scores):
            if depth == len(LEVELS):  # a whole SID: <eos> alone
                want = {2}
            else:
                want = {int(token_ids[depth][s[depth]]) for s in valid if s[:depth] == prefix}
            kept = set(torch.isfinite(got).nonzero().flatten().tolist())
            assert kept == want, (depth, prefix)
            assert torch.equal(got[sorted(want)], before[sorted(want)])  # kept scores untouched


def test_generate_with_beams_returns_only_real_items():
    """A tiny Qwen2 built from a config; prompts left-padded; 8 beams x 8 returned sequences per prompt; every
    generated SID is one of the trie's, each once per prompt, ranked as the beam scores say."""
    sids, token_ids = _sids(60), _token_ids(vocab=120)
    trie = SIDTrie.from_codes(sids, list(LEVELS))
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, pad_token_id=0, eos_token_id=2, bos_token_id=1)
    model = Qwen2ForCausalLM(config).eval()
    prompts = torch.tensor([[0, 0, 1, 15, 16, 17], [1, 30, 31, 32, 33, 34]])
    proc = SIDLogitsProcessor(trie, token_ids, prompt_length=prompts.shape[1], eos_token_id=2)
    with torch.no_grad():
        out = model.generate(prompts, attention_mask=(prompts != 0).long(), num_beams=8, num_return_sequences=8,
                             max_new_tokens=len(LEVELS) + 1, do_sample=False, logits_processor=LogitsProcessorList([proc]),
                             output_scores=True, return_dict_in_generate=True, pad_token_id=0, eos_token_id=2)
    generated = out.sequences[:, prompts.shape[1]:]
    to_code = [{int(t): c for c, t in enumerate(ids)} for ids in token_ids]
    valid = {tuple(s) for s in sids.tolist()}
    for p in range(len(prompts)):
        seen = set()
        for row in generated[p * 8:(p + 1) * 8].tolist():
            sid = tuple(to_code[level][row[level]] for level in range(len(LEVELS)))
            assert sid in valid
            seen.add(sid)
        assert len(seen) == 8  # beam search never returns one SID twice
    scores = out.sequences_scores.view(2, 8)
    assert (scores[:, :-1] >= scores[:, 1:]).all()


def test_offsets_and_bad_input():
    sids = _sids()
    trie = SIDTrie.from_codes(sids, list(LEVELS))
    proc = SIDLogitsProcessor(trie, [4, 9, 13], prompt_length=0)  # contiguous blocks: token = offset + code
    out = proc(torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 30))
    assert set(torch.isfinite(out[0]).nonzero().flatten().tolist()) == {4 + c for c in np.unique(sids[:, 0])}
    with pytest.raises(ValueError, match="level_token_ids has 2 levels but the trie has 3"):
        SIDLogitsProcessor(trie, [0, 5], prompt_length=0)
    with pytest.raises(ValueError, match="level 1 has 4 codes but 3 token ids"):
        SIDLogitsProcessor(trie, [list(range(5)), [5, 6, 7], list(range(9, 15))], prompt_length=0)
    with pytest.raises(ValueError, match="repeat a token id"):
        SIDLogitsProcessor(trie, [0, 0, 20], prompt_length=0)
    with pytest.raises(ValueError, match="scores cover 10 tokens"):
        proc(torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 10))
    with pytest.raises(ValueError, match="fewer than prompt_length 3"):
        SIDLogitsProcessor(trie, [4, 9, 13], prompt_length=3)(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 30))
