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
def step_inputs(draw, ties: bool = True):
    """A beam step on a random 2-level trie. ``ties``: small-integer logits and scores (many exact ties, which
    the CPU kernel must break as the reference does); else continuous ones (no ties, for kernels that sum in
    another order)."""
    k = draw(st.integers(1, 7))
    sids = draw(st.lists(st.tuples(st.integers(0, k - 1), st.integers(0, k - 1)), min_size=1, max_size=20, unique=True))
    trie = SIDTrie.from_codes(np.array(sids), [k, k])
    depth = draw(st.integers(0, 1))
    n_nodes = trie.num_nodes(depth)
    batch, beams = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    if ties:
        logits = torch.randint(-3, 3, (batch, beams, k), generator=g).double()  # small ints: many exact ties
        scores = torch.randint(-4, 1, (batch, beams), generator=g).double()
    else:
        logits = torch.randn(batch, beams, k, generator=g, dtype=torch.float64) * 2
        scores = torch.randn(batch, beams, generator=g, dtype=torch.float64) * 2
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


def assert_same_up_to_near_ties(got, want, next_scores, tol):
    """Scores within ``tol``; codes, parents and nodes equal in every slot whose score is more than ``tol`` from
    its neighbours' (``next_scores``: the best candidate below the cut, from a search one beam wider), since
    closer ones may trade places when another kernel sums in another order; dead slots dead in both."""
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=tol)
    padded = torch.cat([want[0], next_scores[:, None]], 1).double()
    gaps = torch.diff(padded, dim=1).abs()
    clear = torch.isfinite(want[0]) & (gaps > tol)  # gap to the next slot (or candidate below the cut)
    clear[:, 1:] &= gaps[:, :-1] > tol  # ... and to the previous slot
    dead = torch.isinf(want[0])
    for g, w in zip(got[1:], want[1:]):
        assert torch.equal(g[clear], w[clear]) and torch.equal(g[dead], w[dead])


@requires_cuda
@given(step_inputs(ties=False))
def test_cuda_matches_cpu(args):
    """Continuous logits (no exact ties; CUDA's log-sum-exp sums in another order than the CPU kernel)."""
    got = [t.cpu() for t in beam_step(**to_cuda(args))]
    wider = beam_step(**{**args, "beam_width": args["beam_width"] + 1})[0][:, -1]
    assert_same_up_to_near_ties(got, beam_step(**args), wider, 1e-9)


def test_near_tie_comparison_accepts_swaps_and_catches_differences():
    """The CUDA check above, exercised on CPU: continuous inputs agree with the reference, a swap of two tied
    slots passes, a changed clear slot fails."""
    trie = _trie()
    logits = torch.tensor([[[0.0, 5.0, 1.0, 2.0], [1.0, 0.5, 1.0, 0.0]]], dtype=torch.float64)
    args = dict(logits=logits, scores=torch.tensor([[0.0, -0.5]], dtype=torch.float64),
                nodes=torch.zeros(1, 2, dtype=torch.long), child_offsets=trie.offsets[0], child_codes=trie.codes[0],
                beam_width=3, constrained=True)
    want = beam_step(**args)
    wider = beam_step(**{**args, "beam_width": 4})[0][:, -1]
    assert_same_up_to_near_ties(want, reference.beam_step(**args), wider, 1e-9)
    # beam 1's codes 0 and 2 tie exactly (logits 1.0 and 1.0): its two children may come in either order
    tied = [t.clone() for t in want]
    tied_slots = [j for j in range(3) if int(want[2][0, j]) == 1]
    assert len(tied_slots) == 2
    a, b = tied_slots
    for t in tied[1:]:
        t[0, [a, b]] = t[0, [b, a]]
    assert not torch.equal(tied[1], want[1])
    assert_same_up_to_near_ties(tied, want, wider, 1e-9)
    changed = [t.clone() for t in want]
    clear_slot = next(j for j in range(3) if int(want[2][0, j]) == 0)
    changed[1][0, clear_slot] = 3
    with pytest.raises(AssertionError):
        assert_same_up_to_near_ties(changed, want, wider, 1e-9)
