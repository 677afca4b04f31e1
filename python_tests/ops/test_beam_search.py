"""genrec::beam_search: the whole search (prefill, decode steps, beam steps) against the reference built from
the other ops' references, on random decoders and tries of odd shapes — the fused CPU kernel and the search
composed of the stage ops (genrec::_beam_search_stages, what CUDA runs) alike; CUDA against CPU when a GPU is
there."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genrec_ext.ops import beam_search, reference
from genrec_ext.sid import SIDTrie

from ..conftest import requires_cuda, to_cuda

OP = torch.ops.genrec.beam_search.default


def make_inputs(batch=2, prompt=6, hidden=16, heads=4, kv_heads=2, dim=8, inner=24, layers=2, levels=(4, 3, 5),
                items=30, width=6, bias=True, pad=(0, 3), dtype=torch.float64, seed=0, constrained=True):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dtype)  # noqa: E731
    rng = np.random.default_rng(seed)
    sids = np.unique(np.stack([rng.integers(0, k, items) for k in levels], 1), axis=0)
    trie = SIDTrie.from_codes(sids, list(levels))
    mask = torch.ones(batch, prompt, dtype=torch.bool)
    for b, n in enumerate(pad[:batch]):
        mask[b, : min(n, prompt - 1)] = False  # left padding; every prompt keeps at least one position
    steps = len(levels) - 1
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)
    positions = torch.cat([positions, positions[:, -1:] + torch.arange(1, steps + 1)], 1).double()
    angles = positions[..., None] * 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = torch.cat([angles, angles], -1)
    weights, biases, eps = [], [], []
    for _ in range(layers):
        qkv_rows = (heads + 2 * kv_heads) * dim
        weights += [1 + r(hidden, scale=0.1), r(qkv_rows, hidden, scale=hidden**-0.5), r(hidden, heads * dim,
                    scale=(heads * dim) ** -0.5), 1 + r(hidden, scale=0.1), r(2 * inner, hidden, scale=hidden**-0.5),
                    r(hidden, inner, scale=inner**-0.5)]
        biases += [r(qkv_rows, scale=0.1) if bias else None, r(hidden, scale=0.1) if bias else None]
        eps += [1e-6, 1e-5]
    tokens = sum(levels)
    return dict(embeds=r(batch, prompt, hidden), prompt_mask=mask, cos=angles.cos().to(dtype),
                sin=angles.sin().to(dtype), layer_weights=weights, layer_biases=biases, layer_eps=eps,
                num_heads=heads, num_kv_heads=kv_heads, scaling=dim**-0.5, final_norm_weight=1 + r(hidden, scale=0.1),
                final_eps=1e-6, head_weight=r(tokens, hidden, scale=3 * hidden**-0.5),
                head_bias=r(tokens, scale=0.5) if bias else None, sid_embedding=r(tokens, hidden),
                level_sizes=list(levels), child_offsets=trie.offsets, child_codes=trie.codes, beam_width=width,
                constrained=constrained)


def assert_matches_reference(args, tol=1e-10, fused=True):
    scores, codes, nodes = beam_search(**args, fused=fused)
    want_scores, want_codes, want_nodes = reference.beam_search(**args)
    bsz, width = args["embeds"].shape[0], args["beam_width"]
    assert scores.shape == (bsz, width) and codes.shape == (bsz, width, len(args["level_sizes"]))
    assert scores.dtype == want_scores.dtype
    torch.testing.assert_close(scores, want_scores, rtol=tol, atol=tol)
    live = scores > float("-inf")
    assert torch.equal(codes[live], want_codes[live])
    assert torch.equal(nodes, want_nodes)
    assert (codes[~live] == -1).all() if (~live).any() else True
    return scores, codes, nodes


@given(st.integers(1, 3), st.integers(1, 9), st.sampled_from([(1, 1), (2, 1), (4, 2)]), st.integers(1, 3),
       st.sampled_from([(5,), (4, 3), (4, 3, 5), (2, 7, 3, 2)]), st.integers(1, 12), st.booleans(), st.booleans(),
       st.booleans(), st.integers(0, 2**16))
def test_matches_the_reference_on_odd_shapes(batch, prompt, heads_kv, layers, levels, width, bias, constrained, fused,
                                             seed):
    heads, kv_heads = heads_kv
    args = make_inputs(batch, prompt, heads=heads, kv_heads=kv_heads, layers=layers, levels=levels, width=width,
                       bias=bias, constrained=constrained, pad=(0, prompt // 2, prompt), seed=seed)
    assert_matches_reference(args, fused=fused)


def beams_by_sid(codes: torch.Tensor, scores: torch.Tensor) -> list[dict[tuple[int, ...], float]]:
    """Each query's live beams as {SID: score}: beams compared by SID, never by slot, so that two beams whose
    scores round the other way in another summation order do not count as a difference."""
    return [{tuple(c): float(v) for c, v in zip(cq.tolist(), sq.tolist()) if v > float("-inf")}
            for cq, sq in zip(codes, scores)]


def assert_same_beams(got, want, tol):
    """Tie-proof equality up to rounding ``tol``: the same number of live beams per query; every SID of ``want``
    whose score clears the query's cut (its lowest kept score) by more than ``tol`` is in ``got`` (the rest may
    trade places with a candidate just below the cut); shared SIDs' scores agree within ``tol``; and at least
    half of all SIDs are compared that way (so that a check cannot pass on almost nothing)."""
    (scores, codes, _), (want_scores, want_codes, _) = got, want
    assert torch.equal(torch.isinf(scores), torch.isinf(want_scores))
    compared = total = 0
    for mine, ref in zip(beams_by_sid(codes, scores), beams_by_sid(want_codes, want_scores)):
        if not ref:
            continue
        cut = min(ref.values())
        must = {sid for sid, v in ref.items() if v > cut + tol}
        assert must <= mine.keys(), f"beams lost: {sorted(must - mine.keys())}"
        shared = mine.keys() & ref.keys()
        worst = max((abs(mine[sid] - ref[sid]) for sid in shared), default=0.0)
        assert worst <= tol, f"a shared SID's score differs by {worst:.3g} > {tol}"
        compared, total = compared + len(must), total + len(ref)
    assert compared >= 0.5 * total, f"only {compared} of {total} beams clear of the cut by more than {tol}"


def bf16_agreement(got, want) -> tuple[float, float]:
    """How well a bfloat16 search finds a float64 search's beams: the share of the float64 SIDs it returns
    (mean over queries) and the largest score difference of a SID both return."""
    shares, worst = [], 0.0
    for mine, ref in zip(beams_by_sid(got[1], got[0]), beams_by_sid(want[1], want[0])):
        if ref:
            shared = mine.keys() & ref.keys()
            shares.append(len(shared) / len(ref))
            worst = max([worst, *(abs(mine[sid] - ref[sid]) for sid in shared)])
    return float(np.mean(shares)), worst


def float64_twin(args: dict) -> dict:
    """The same search in float64 (weights rounded to bfloat16 first, then widened): the truth a bfloat16 search
    is judged against."""
    wide = {k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in args.items()}
    wide["layer_weights"] = [w.double() for w in args["layer_weights"]]
    wide["layer_biases"] = [None if b is None else b.double() for b in args["layer_biases"]]
    return wide


@pytest.mark.parametrize("fused", [True, False])
def test_serving_shape_in_float32(fused):
    """50 beams over 3 x 64 codes of a 2-layer model, float32, against the float32 reference."""
    args = make_inputs(batch=3, prompt=12, hidden=32, heads=4, kv_heads=2, dim=8, inner=64, levels=(64, 64, 64),
                       items=2000, width=50, dtype=torch.float32, pad=(0, 5, 11))
    assert_same_beams(beam_search(**args, fused=fused), reference.beam_search(**args), 1e-4)


@settings(max_examples=12)  # the reference walks every beam in Python
@given(st.sampled_from([2, 6, 16, 24, 40]), st.sampled_from([4, 12, 20, 48]), st.sampled_from([1, 7, 33]),
       st.booleans(), st.integers(0, 2**16))
def test_odd_head_and_hidden_widths(dim, hidden, inner, fused, seed):
    """Head widths and hidden sizes off the 16-float vector blocks (the attention panels' and row kernels' tails)."""
    args = make_inputs(batch=2, prompt=5, hidden=hidden, heads=2, kv_heads=1, dim=dim, inner=inner, width=7, seed=seed)
    assert_matches_reference(args, fused=fused)


def test_many_queries_take_several_tasks_per_thread():
    """More decode rows than one task holds (24 x 50 rows: tasks of whole queries, more than one per thread),
    prompts of one position: the fused kernel against the stage ops (themselves checked against the reference
    above; the reference would walk these 1,200 beams in Python)."""
    args = make_inputs(batch=24, prompt=1, width=50, levels=(6, 5, 4), items=100, pad=())
    fused, stages = beam_search(**args), beam_search(**args, fused=False)
    torch.testing.assert_close(fused[0], stages[0], rtol=1e-10, atol=1e-10)
    assert torch.equal(fused[1], stages[1]) and torch.equal(fused[2], stages[2])


def test_fewer_items_than_beams_pads_dead_slots():
    args = make_inputs(items=5, width=9, levels=(3, 3))
    scores, codes, nodes = assert_matches_reference(args)
    live, items = scores > float("-inf"), args["child_codes"][-1].numel()  # the trie's leaves
    assert 3 <= items < 9 and (live.sum(1) == items).all()  # every item once, then -inf / -1 slots
    assert (nodes[~live] == -1).all() and (codes[~live] == -1).all()
    assert (nodes[live] >= 0).all()


def test_unconstrained_search_returns_no_trie_nodes():
    args = make_inputs(items=5, width=9, levels=(3, 3), constrained=False)
    scores, codes, nodes = assert_matches_reference(args)
    assert (scores > float("-inf")).all() and (nodes == -1).all()  # 9 of the 3 x 3 SIDs, valid or not


def test_single_level_search_is_one_beam_step():
    args = make_inputs(levels=(7,), width=4)
    assert_matches_reference(args)


#: bfloat16 vs a float64 search on BF16_CASES (3 seeds each), measured on the CPU kernel: share of the float64
#: beams found >= 0.969, shared SIDs' scores within 0.10
BF16_CASES = [dict(width=4), dict(width=16, levels=(8, 8, 8), items=300), dict(width=8, levels=(16, 16), items=200)]


@pytest.mark.parametrize("case", BF16_CASES)
def test_bfloat16_agrees_with_a_float64_reference(case):
    for seed in range(3):
        args = make_inputs(dtype=torch.bfloat16, batch=4, pad=(0, 2, 3, 5), seed=seed, **case)
        got = beam_search(**args)
        assert got[0].dtype == torch.float32
        found, worst = bf16_agreement(got, reference.beam_search(**float64_twin(args)))
        assert found >= 0.9 and worst <= 0.15, (seed, found, worst)


def test_opcheck_and_compile():
    args = make_inputs(width=3)
    torch.library.opcheck(OP, tuple(args.values()))
    torch.library.opcheck(torch.ops.genrec._beam_search_stages.default, tuple(args.values()))
    compiled = torch.compile(lambda kw: beam_search(**kw), fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(args), beam_search(**args)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("change, message", [
    (dict(embeds=torch.zeros(2, 6)), "embeds must be \\[B, P, H\\]"),
    (dict(prompt_mask=torch.ones(2, 6)), "prompt_mask must be bool"),
    (dict(cos=torch.zeros(2, 6, 8, dtype=torch.float64)), "cos must be \\[B, P \\+ L - 1, D\\] = \\[2, 8, D\\]"),
    (dict(layer_eps=[1e-6]), "layer_eps must hold 2 per layer \\(4\\), got 1"),
    (dict(num_kv_heads=3), "num_heads = 4 must be a positive multiple of num_kv_heads = 3"),
    (dict(level_sizes=[4, 3, 6]), "head_weight \\(\\[sum\\(level_sizes\\), H\\]\\) must be \\[13, 16\\]"),
    (dict(final_norm_weight=torch.ones(15, dtype=torch.float64)), "final_norm_weight must be \\[16\\], got shape"),
    (dict(sin=torch.zeros(2, 8, 8)), "sin must have embeds' dtype Double, got Float"),
    (dict(beam_width=0), "beam_width must be >= 1, got 0"),
])
def test_bad_inputs_name_the_argument(change, message):
    args = make_inputs() | change
    for fused in (True, False):
        with pytest.raises(RuntimeError, match=message):
            beam_search(**args, fused=fused)


@pytest.mark.parametrize("index, shape, message", [
    (2, (16, 31), "layer 0's o weight must be \\[16, 32\\], got shape \\[16, 31\\]"),
    (10, (15, 16), "layer 1's gate\\|up weight must have 2I rows, got 15"),
    (11, (16, 25), "layer 1's down weight must be \\[16, 24\\]"),
])
def test_bad_layer_weights_name_the_layer(index, shape, message):
    args = make_inputs()
    args["layer_weights"] = list(args["layer_weights"])
    args["layer_weights"][index] = torch.zeros(shape, dtype=torch.float64)
    for fused in (True, False):
        with pytest.raises(RuntimeError, match=message):
            beam_search(**args, fused=fused)


def test_an_inconsistent_trie_is_refused():
    args = make_inputs()
    args["child_offsets"] = [args["child_offsets"][0], args["child_offsets"][1][:-1], args["child_offsets"][2]]
    with pytest.raises(RuntimeError, match="the trie's depth 0 has .* children but depth 1 has"):
        beam_search(**args)
    args = make_inputs()
    args["child_codes"] = [args["child_codes"][0] + 10, *args["child_codes"][1:]]  # codes past K_0 = 4
    with pytest.raises(RuntimeError, match="child_codes\\[.*\\] = .* is outside \\[0, K = 4\\)"):
        beam_search(**args)


def test_refuses_inputs_that_want_a_gradient():
    args = make_inputs()
    args["embeds"].requires_grad_(True)
    with pytest.raises(RuntimeError, match="inference-only"):
        beam_search(**args)
    with torch.no_grad():
        beam_search(**args)


def _on_cuda(args: dict) -> dict:
    moved = to_cuda(args)
    for key in ("layer_weights", "layer_biases", "child_offsets", "child_codes"):
        moved[key] = [None if t is None else t.cuda() for t in args[key]]
    return moved


@requires_cuda
def test_cuda_matches_cpu_in_float32():
    """Tie-proof (beams compared by SID; only near-cut SIDs may trade places) over several shapes."""
    for seed, case in enumerate([dict(), dict(width=16, levels=(8, 8, 8), items=300), dict(width=50, levels=(64, 64),
                                                                                            items=2000, hidden=32)]):
        args = make_inputs(batch=3, dtype=torch.float32, pad=(0, 2, 5), seed=seed, **case)
        gpu = [t.cpu() for t in beam_search(**_on_cuda(args))]
        assert_same_beams(gpu, beam_search(**args), 1e-4)


@requires_cuda
@pytest.mark.parametrize("case", BF16_CASES)
def test_cuda_bfloat16_is_as_close_to_float64_as_cpu(case):
    """bfloat16 judged relatively (DESIGN): against the float64 search, the CUDA search finds about as many of
    its beams as the CPU kernel does, and its shared scores are at most about twice as far off."""
    for seed in range(3):
        args = make_inputs(dtype=torch.bfloat16, batch=4, pad=(0, 2, 3, 5), seed=seed, **case)
        want = reference.beam_search(**float64_twin(args))
        cpu_found, cpu_worst = bf16_agreement(beam_search(**args), want)
        gpu_found, gpu_worst = bf16_agreement([t.cpu() for t in beam_search(**_on_cuda(args))], want)
        assert gpu_found >= cpu_found - 0.05 and gpu_worst <= 2 * cpu_worst + 0.02, (seed, gpu_found, cpu_found,
                                                                                     gpu_worst, cpu_worst)
