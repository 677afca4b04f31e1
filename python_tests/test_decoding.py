"""Beam search with a KV cache: exact against teacher forcing, constrained vs unconstrained, batching."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from genrec_ext import ops
from genrec_ext.decoding import beam_search, clear_fused_weights, search_inputs, search_weights, sequence_log_probs
from genrec_ext.model import build_model
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


def test_search_weights_refuse_unsupported_models(setup):
    model, *_ = setup
    gelu = copy.deepcopy(model)
    gelu.backbone.model.config.hidden_act = "gelu"
    with pytest.raises(ValueError, match="implements SwiGLU .* uses 'gelu'"):
        search_weights(gelu)
    sliding = copy.deepcopy(model)
    sliding.backbone.model.config.use_sliding_window = True
    with pytest.raises(ValueError, match="sliding-window"):
        search_weights(sliding)


def test_fused_weight_cache_follows_the_weights(setup):
    model, _, trie, _, history, lengths = setup
    model = copy.deepcopy(model)
    layer = model.backbone.model.layers[0]

    def scores():
        return beam_search(model, history, lengths, trie, beam_width=4).scores

    before = scores()
    with torch.no_grad():
        layer.mlp.up_proj.weight.mul_(2)  # seen: the version counter moves
    changed = scores()
    assert not torch.allclose(before, changed)
    with torch.no_grad():
        layer.mlp.up_proj.weight.data.mul_(0.5)  # through .data: invisible until the cache is cleared
    assert torch.equal(scores(), changed)
    clear_fused_weights()
    torch.testing.assert_close(scores(), before)


def test_trie_must_match_the_vocabulary(setup):
    model, *_ = setup
    with pytest.raises(ValueError, match="the trie has 2 levels but the model's vocabulary 3"):
        beam_search(model, torch.zeros(1, 1, 3, dtype=torch.long), torch.tensor([1]),
                    SIDTrie.from_codes(np.array([[0, 1]]), [2, 2]))


@requires_cuda
def test_a_whole_search_replays_from_a_cuda_graph(setup):
    """No host sync anywhere in a search: genrec::beam_search captures in a CUDA graph and replays to the eager
    results (GPU serving replays one graph per batch shape)."""
    model, sids, trie, _, history, lengths = setup
    model, trie = copy.deepcopy(model).cuda(), trie.to("cuda")
    history, lengths = history.cuda(), lengths.cuda()
    with torch.no_grad():
        inputs = search_inputs(model, history, lengths)

        def search():
            return ops.beam_search(**inputs, child_offsets=trie.offsets, child_codes=trie.codes, beam_width=6)

        eager = search()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the capture, as CUDA graphs require
            search()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = search()
        graph.replay()
        torch.cuda.synchronize()
    for got, want in zip(captured, eager):
        torch.testing.assert_close(got, want)
