"""Beam search with a KV cache: exact against teacher forcing, constrained vs unconstrained, batching."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from genrec_ext.decoding import beam_search, sequence_log_probs
from genrec_ext.decoding.beam_search import level_logits
from genrec_ext.decoding.shared_prefix import SharedPrefixDecoder, clear_fused_weights
from genrec_ext.model import build_model
from genrec_ext.ops import beam_step
from genrec_ext.sid import SIDTable, SIDTrie, SIDVocab

from .conftest import requires_cuda


@pytest.fixture(scope="module")
def setup():
    levels = (4, 3, 5)
    rng = np.random.default_rng(0)
    sids = np.unique(np.stack([rng.integers(0, k, 40) for k in levels], 1), axis=0)
    vocab = SIDVocab(levels)
    model = build_model("tiny", vocab, seed=1).eval()
    history = vocab.tokens(torch.tensor(sids[:12])).reshape(3, 4, 3)
    history[1, 2:] = 0  # shorter histories, right-padded
    history[2, 1:] = 0
    return model, sids, SIDTrie.from_codes(sids, list(levels)), SIDTable(sids, list(range(len(sids))), list(levels)), \
        history, torch.tensor([4, 2, 1])


def test_exhaustive_constrained_search_equals_teacher_forcing(setup):
    model, sids, trie, _, history, lengths = setup
    result = beam_search(model, history, lengths, trie, beam_width=len(sids) + 4)
    exact = sequence_log_probs(model, history, lengths, torch.tensor(sids)[None].expand(3, -1, -1))
    for b in range(3):
        live = result.items[b] >= 0
        assert live.sum() == len(sids)  # every item reached once; the 4 extra slots are dead
        assert sorted(result.items[b][live].tolist()) == list(range(len(sids)))
        torch.testing.assert_close(result.scores[b][live], exact[b][result.items[b][live]], rtol=1e-5, atol=1e-5)
        assert torch.all(result.scores[b][live][:-1] >= result.scores[b][live][1:])  # best first
        assert torch.isinf(result.scores[b][~live]).all()
        for slot in range(int(live.sum())):  # codes are the item's SID
            assert tuple(result.codes[b, slot].tolist()) == tuple(sids[int(result.items[b, slot])])


def test_narrow_constrained_search_only_returns_items(setup):
    model, sids, trie, _, history, lengths = setup
    result = beam_search(model, history, lengths, trie, beam_width=5)
    assert result.items.shape == (3, 5) and (result.items >= 0).all()
    assert all(len(set(row.tolist())) == 5 for row in result.items)


def test_unconstrained_search_reports_hallucinated_sids(setup):
    model, sids, trie, table, history, lengths = setup
    result = beam_search(model, history, lengths, trie, beam_width=20, constrained=False, table=table)
    valid = {tuple(s) for s in sids.tolist()}
    for b in range(3):
        for slot in range(20):
            sid = tuple(result.codes[b, slot].tolist())
            assert (result.items[b, slot] >= 0) == (sid in valid)
    assert (result.items < 0).any()  # an untrained model does hallucinate
    with pytest.raises(ValueError, match="needs the SID table"):
        beam_search(model, history, lengths, trie, beam_width=3, constrained=False)


def test_results_do_not_depend_on_the_batch(setup):
    model, sids, trie, _, history, lengths = setup
    together = beam_search(model, history, lengths, trie, beam_width=6)
    for b in range(3):
        alone = beam_search(model, history[b : b + 1, : int(lengths[b])], lengths[b : b + 1], trie, beam_width=6)
        assert torch.equal(alone.items[0], together.items[b])
        torch.testing.assert_close(alone.scores[0], together.scores[b], rtol=1e-5, atol=1e-5)


def test_bfloat16_search_agrees_with_teacher_forcing(setup):
    """The fused decoder in bf16 (the GPU serving dtype): scores within bf16 error of a float32 teacher-forced
    scoring of the same bf16 weights, and every result a real item."""
    model, sids, trie, _, history, lengths = setup
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    result = beam_search(bf16, history, lengths, trie, beam_width=8)
    assert result.scores.dtype == torch.float32 and (result.items >= 0).all()
    exact = sequence_log_probs(bf16.float(), history, lengths, torch.tensor(sids)[result.items])
    torch.testing.assert_close(result.scores, exact, rtol=0, atol=1e-2)  # measured: 2e-3


def test_prefill_equals_the_model_forward_and_its_cache(setup):
    """Our prefill (fused layer ops + SDPA) against transformers' forward: the last hidden state, and every
    layer's keys and values at the real (unpadded) prompt positions."""
    model, *_, history, lengths = setup
    embeds, mask, positions = model.prompt_inputs(history, lengths)
    with torch.no_grad():
        decoder = SharedPrefixDecoder(model.backbone.model, steps=2)
        hidden = decoder.prefill(embeds, mask, positions)
        out = model.backbone.model(inputs_embeds=embeds, attention_mask=mask.long(), position_ids=positions,
                                   use_cache=True)
    torch.testing.assert_close(hidden, out.last_hidden_state[:, -1], rtol=1e-5, atol=1e-5)
    cache = getattr(out, "cache", None) or out.past_key_values  # transformers 5.24 / 5.17
    assert len(decoder.prefix) == len(cache.layers)
    for (keys, values), layer in zip(decoder.prefix, cache.layers):
        for ours, theirs in ((keys, layer.keys), (values, layer.values)):
            assert ours.shape == theirs.shape
            torch.testing.assert_close(ours.transpose(1, 2)[mask], theirs.transpose(1, 2)[mask], rtol=1e-5, atol=1e-5)


def test_decoder_refuses_misuse(setup):
    model, *_, history, lengths = setup
    decoder = SharedPrefixDecoder(model.backbone.model, steps=1)
    h = torch.zeros(1, 2, model.config.hidden_size)
    with pytest.raises(RuntimeError, match="before prefill"):
        decoder.step(h)
    with torch.no_grad():
        decoder.prefill(*model.prompt_inputs(history[:1], lengths[:1]))
        decoder.step(h)
        with pytest.raises(RuntimeError, match="made for 1 steps"):
            decoder.step(h)
    gelu = copy.deepcopy(model.backbone.model)
    gelu.config.hidden_act = "gelu"
    with pytest.raises(ValueError, match="implements SwiGLU .* uses 'gelu'"):
        SharedPrefixDecoder(gelu, steps=1)
    sliding = copy.deepcopy(model.backbone.model)
    sliding.config.use_sliding_window = True
    with pytest.raises(ValueError, match="sliding-window"):
        SharedPrefixDecoder(sliding, steps=1)


def test_fused_weight_cache_follows_the_weights(setup):
    model, *_, history, lengths = setup
    model = copy.deepcopy(model)
    embeds, mask, positions = model.prompt_inputs(history, lengths)
    layer = model.backbone.model.layers[0]

    def prefill():
        with torch.no_grad():
            return SharedPrefixDecoder(model.backbone.model, steps=1).prefill(embeds, mask.long(), positions)

    before = prefill()  # a 0/1 integer mask, as transformers takes it, works too
    with torch.no_grad():
        layer.mlp.up_proj.weight.mul_(2)  # seen: the version counter moves
    changed = prefill()
    assert not torch.allclose(before, changed)
    with torch.no_grad():
        layer.mlp.up_proj.weight.data.mul_(0.5)  # through .data: invisible until the cache is cleared
    assert torch.equal(prefill(), changed)
    clear_fused_weights()
    torch.testing.assert_close(prefill(), before)


def test_trie_must_match_the_vocabulary(setup):
    model, *_ = setup
    with pytest.raises(ValueError, match="the trie has 2 levels but the model's vocabulary 3"):
        beam_search(model, torch.zeros(1, 1, 3, dtype=torch.long), torch.tensor([1]),
                    SIDTrie.from_codes(np.array([[0, 1]]), [2, 2]))


@requires_cuda
def test_a_decode_step_and_beam_step_replay_from_a_cuda_graph(setup):
    """No host sync in a decode step: it and the beam step capture in a CUDA graph and replay to the eager
    results (GPU serving replays one graph per step shape)."""
    model, sids, trie, _, history, lengths = setup
    model, trie = copy.deepcopy(model).cuda(), trie.to("cuda")
    history, lengths = history.cuda(), lengths.cuda()
    with torch.no_grad():
        embeds, mask, positions = model.prompt_inputs(history, lengths)
        decoder = SharedPrefixDecoder(model.backbone.model, steps=1)
        decoder.prefill(embeds, mask, positions)
        tokens = model.embed_tokens(torch.full((3, 4), 5, device="cuda"))
        scores, nodes = torch.zeros(3, 4, device="cuda"), torch.zeros(3, 4, dtype=torch.long, device="cuda")

        def step():
            decoder.length = 0  # replay the same (first) step
            hidden = decoder.step(tokens)
            logits = level_logits(model, hidden.reshape(12, -1), 1).view(3, 4, -1)
            return hidden, beam_step(logits, scores, nodes, trie.offsets[1], trie.codes[1], 4, True)

        eager = step()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the capture, as CUDA graphs require
            step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = step()
        graph.replay()
        torch.cuda.synchronize()
    torch.testing.assert_close(captured[0], eager[0])
    for got, want in zip(captured[1], eager[1]):
        torch.testing.assert_close(got, want)
