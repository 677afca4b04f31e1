"""genrec::beam_step: CPU (and CUDA, when present) kernel against the Python trie-walking reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from genrec_ext.ops import beam_step, reference
from genrec_ext.sid import SIDTrie

from ..conftest import requires_cuda, to_cuda

OP = torch.ops.genrec.beam_step.default


@st.composite
def step_inputs(draw):
    k = draw(st.integers(1, 7))
    sids = draw(st.lists(st.tuples(st.integers(0, k - 1), st.integers(0, k - 1)), min_size=1, max_size=20, unique=True))
    trie = SIDTrie.from_codes(np.array(sids), [k, k])
    depth = draw(st.integers(0, 1))
    n_nodes = trie.num_nodes(depth)
    batch, beams = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    logits = torch.randint(-3, 3, (batch, beams, k), generator=g).double()  # small ints: many exact ties
    scores = torch.randint(-4, 1, (batch, beams), generator=g).double()
    scores[torch.rand(batch, beams, generator=g) < 0.2] = float("-inf")
    nodes = torch.randint(-1, n_nodes, (batch, beams), generator=g)
    return dict(logits=logits, scores=scores, nodes=nodes, child_offsets=trie.offsets[depth],
                child_codes=trie.codes[depth], beam_width=draw(st.integers(1, 8)), constrained=draw(st.booleans()))


def assert_same(got, want):
    torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-12)
    for g, w in zip(got[1:], want[1:]):
        assert torch.equal(g, w), (g, w)


@given(step_inputs())
def test_matches_the_trie_walking_reference(args):
    assert_same(beam_step(**args), reference.beam_step(**args))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("constrained", [True, False])
def test_serving_shape_matches_the_reference_in_any_beam_order(dtype, constrained):
    # 50 beams over 256 codes, as in serving: the float32 log-sum-exp and the pruning (beam scores usually
    # arrive best first, but must not have to) against the reference.
    rng = np.random.default_rng(0)
    trie = SIDTrie.from_codes(np.unique(rng.integers(0, 256, (3000, 2)), axis=0), [256, 256])
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 50, 256, generator=g) * 3).to(dtype)
    scores = torch.randn(2, 50, generator=g).sort(-1, descending=True).values
    nodes = torch.randint(0, trie.num_nodes(1), (2, 50), generator=g)
    for order in (torch.arange(50), torch.randperm(50, generator=g)):
        args = (logits[:, order], scores[:, order], nodes[:, order], trie.offsets[1], trie.codes[1], 50, constrained)
        got, want = beam_step(*args), reference.beam_step(*args)
        torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=2e-6)
        for g_, w_ in zip(got[1:], want[1:]):
            assert torch.equal(g_, w_)


def _trie():
    # SIDs (0,1) (0,3) (2,0): root children 0 and 2; node "0" has children 1, 3; node "2" has child 0.
    return SIDTrie.from_codes(np.array([[0, 1], [0, 3], [2, 0]]), [4, 4])


def test_constrained_keeps_only_valid_children_and_pads_with_dead_beams():
    trie = _trie()
    logits = torch.tensor([[[0.0, 5.0, 1.0, 2.0]]])  # code 1 is the favourite but invalid at the root
    scores, codes, parents, nodes = beam_step(logits, torch.zeros(1, 1), torch.zeros(1, 1, dtype=torch.long),
                                              trie.offsets[0], trie.codes[0], 4)
    assert codes.tolist() == [[2, 0, -1, -1]] and parents.tolist() == [[0, 0, -1, -1]]
    assert nodes.tolist() == [[1, 0, -1, -1]]
    logp = torch.log_softmax(logits[0, 0], 0)
    torch.testing.assert_close(scores[0, :2], logp[[2, 0]])
    assert torch.isinf(scores[0, 2:]).all()
    # Next level: the dead beams stay dead, the live ones expand to their children only.
    logits2 = torch.zeros(1, 4, 4)
    s2, c2, p2, n2 = beam_step(logits2, scores, nodes, trie.offsets[1], trie.codes[1], 4)
    assert sorted(zip(p2[0].tolist(), c2[0].tolist()))[1:] == [(0, 0), (1, 1), (1, 3)]
    assert (p2[0] == -1).sum() == 1 and torch.isinf(s2[0]).sum() == 1
    assert {trie.lookup([0, 1]), trie.lookup([0, 3]), trie.lookup([2, 0])} == {
        int(trie.leaf_items[n]) for n in n2[0].tolist() if n >= 0}


def test_unconstrained_considers_every_code():
    trie = _trie()
    logits = torch.tensor([[[0.0, 5.0, 1.0, 2.0]]])
    _, codes, _, nodes = beam_step(logits, torch.zeros(1, 1), torch.zeros(1, 1, dtype=torch.long), trie.offsets[0],
                                   trie.codes[0], 2, constrained=False)
    assert codes.tolist() == [[1, 3]] and nodes.tolist() == [[-1, -1]]


def test_a_query_whose_beams_all_die_stays_dead():
    trie = _trie()
    dead = torch.full((2, 3), float("-inf"))
    dead[1, 0] = 0.0  # query 1 keeps one live beam, query 0 has none
    scores, codes, parents, nodes = beam_step(torch.randn(2, 3, 4), dead, torch.zeros(2, 3, dtype=torch.long),
                                              trie.offsets[0], trie.codes[0], 3)
    assert torch.isinf(scores[0]).all() and codes[0].tolist() == [-1, -1, -1]  # never silently unconstrained
    assert codes[1, :2].tolist() in ([0, 2], [2, 0]) and parents[1, :2].tolist() == [0, 0]


def test_beam_width_one_and_low_precision_logits():
    trie = _trie()
    logits = torch.tensor([[[0.0, 5.0, 1.0, 2.0]]])
    for dtype in (torch.float32, torch.bfloat16):
        scores, codes, _, _ = beam_step(logits.to(dtype), torch.zeros(1, 1), torch.zeros(1, 1, dtype=torch.long),
                                        trie.offsets[0], trie.codes[0], 1)
        assert codes.tolist() == [[2]] and scores.dtype == torch.float32


def test_opcheck_and_compile():
    trie = _trie()
    args = (torch.randn(2, 3, 4), torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long), trie.offsets[0],
            trie.codes[0], 4, True)
    torch.library.opcheck(OP, args)
    torch.library.opcheck(OP, args[:-1] + (False,))
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: beam_step(*a), fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(*args), beam_step(*args)):
        assert torch.equal(got, want)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: {**a, "logits": a["logits"][0]}, r"logits must be \[B, W, K\]"),
        (lambda a: {**a, "scores": a["scores"].double()}, r"scores must be Float for Float logits, got Double"),
        (lambda a: {**a, "nodes": a["nodes"][:, :1]}, r"nodes must be int64 \[B, W\] = \[1, 2\]"),
        (lambda a: {**a, "nodes": torch.tensor([[0, 7]])}, r"nodes\[0, 1\] = 7 is outside \[-1, 1\)"),
        (lambda a: {**a, "child_codes": torch.tensor([0, 9])}, r"child_codes\[1\] = 9 is outside \[0, K = 4\)"),
        (lambda a: {**a, "child_offsets": torch.tensor([0, 5])}, r"child_offsets\[1\] = 5 is not a non-decreasing"),
        (lambda a: {**a, "beam_width": 0}, r"beam_width must be >= 1, got 0"),
    ],
)
def test_bad_input_is_named(change, match):
    trie = _trie()
    good = dict(logits=torch.randn(1, 2, 4), scores=torch.zeros(1, 2), nodes=torch.zeros(1, 2, dtype=torch.long),
                child_offsets=trie.offsets[0], child_codes=trie.codes[0], beam_width=2, constrained=True)
    with pytest.raises(RuntimeError, match=match):
        beam_step(**change(good))


@requires_cuda
@given(step_inputs())
def test_cuda_matches_cpu(args):
    cuda_args = to_cuda(args)
    got = [t.cpu() for t in beam_step(**cuda_args)]
    assert_same(got, beam_step(**args))
