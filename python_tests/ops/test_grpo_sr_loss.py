"""genrec::grpo_sr_loss: the fused GRPO-SR loss (CPU, and CUDA when present) against the eager reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import genrec_ext
from genrec_ext.nn import GRPOSRLoss
from genrec_ext.ops import grpo_sr_loss, reference

from ..conftest import requires_cuda

OP = torch.ops.genrec.grpo_sr_loss.default
BACKWARD_OP = torch.ops.genrec.grpo_sr_loss_backward.default
CPU_VOCAB_CHUNK = 4096  # kVocabChunk of csrc/cpu/grpo_sr_loss.cpp: the online log-sum-exp's step


def make_inputs(N, H, V, *, bias=True, dtype=torch.float32, seed=0, ignore_frac=0.0, zero_frac=0.0, old=False,
                kl=False, device="cpu"):
    """(hidden, weight, bias) requiring grad, and the per-row tensors as keyword arguments of the functional."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g)
    weight = torch.randn(V, H, generator=g) / max(H, 1) ** 0.5
    b = torch.randn(V, generator=g) * 0.5 if bias else None
    targets = torch.randint(0, V, (N,), generator=g)
    targets[torch.rand(N, generator=g) < ignore_frac] = -100
    policy = torch.randn(N, generator=g) / 4
    nll = torch.rand(N, generator=g) / 4
    zero = torch.rand(N, generator=g) < zero_frac
    policy[zero], nll[zero] = 0, 0
    rows = dict(targets=targets, policy_coef=policy, nll_coef=nll)
    if old or kl:  # close to the current log-probs, so that ratios fall both inside and outside the clip range
        with torch.no_grad():
            _, logp = reference.grpo_sr_loss(hidden.double(), weight.double(), targets, policy, nll,
                                             None if b is None else b.double())
        if old:
            rows["old_logp"] = (logp + (torch.rand(N, generator=g) - 0.5) * 1.2).float()
        if kl:
            rows["ref_logp"] = (logp + torch.randn(N, generator=g) * 0.3).float()
            rows["kl_coef"] = torch.rand(N, generator=g) / 4
    params = [None if p is None else p.to(device=device, dtype=dtype).requires_grad_() for p in (hidden, weight, b)]
    rows = {k: v.to(device) for k, v in rows.items()}
    return params, rows


def run(fn, params, rows, *, logp_grad=False, **kw):
    """Forward + backward; returns (loss, logp, grad_hidden, grad_weight, grad_bias)."""
    hidden, weight, bias = params
    for p in params:
        if p is not None:
            p.grad = None
    args = dict(rows)
    targets, policy, nll = args.pop("targets"), args.pop("policy_coef"), args.pop("nll_coef")
    loss, logp = fn(hidden, weight, targets, policy, nll, bias, **args, **kw)
    total = loss
    if logp_grad:  # a gradient on the per-row log-probs too
        w = torch.randn(logp.shape, generator=torch.Generator().manual_seed(5), dtype=logp.dtype).to(logp.device)
        total = loss + (w * logp).sum()
    if total.requires_grad:
        total.backward()
    grads = [None if p is None or p.grad is None else p.grad.detach().clone() for p in params]
    return loss.detach(), logp.detach(), *grads


def assert_close_all(got, want, **tol):
    names = ["loss", "logp", "grad_hidden", "grad_weight", "grad_bias"]
    for name, a, b in zip(names, got, want):
        if a is None or b is None:
            assert a is None and b is None, name
        else:
            torch.testing.assert_close(a, b, **tol, msg=lambda m, n=name: f"{n}: {m}")


@st.composite
def cases(draw):
    return dict(
        N=draw(st.integers(0, 40)),
        H=draw(st.integers(1, 12)),
        V=draw(st.integers(1, 300)),
        bias=draw(st.booleans()),
        ignore_frac=draw(st.sampled_from([0.0, 0.3])),
        zero_frac=draw(st.sampled_from([0.0, 0.5, 1.0])),
        old=draw(st.booleans()),
        kl=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


@given(case=cases(), block_rows=st.sampled_from([0, 1, 3, 7]), logp_grad=st.booleans())
def test_matches_reference_fp64(case, block_rows, logp_grad):
    params, rows = make_inputs(**case, dtype=torch.float64)
    kw = dict(epsilon=0.2, epsilon_high=0.28)
    got = run(grpo_sr_loss, params, rows, logp_grad=logp_grad, block_rows=block_rows, **kw)
    want = run(reference.grpo_sr_loss, params, rows, logp_grad=logp_grad, **kw)
    assert_close_all(got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("N,V,block_rows", [(50, 2 * CPU_VOCAB_CHUNK + 809, 16), (300, 1000, 0), (33, 257, 8)],
                         ids=["vocab_not_a_multiple_of_the_chunk", "one_block", "ragged_last_block"])
@pytest.mark.parametrize("options", ["paper", "clip", "clip_kl"])
def test_matches_reference_fp32(N, V, block_rows, options):
    params, rows = make_inputs(N, 24, V, seed=1, ignore_frac=0.1, zero_frac=0.2, old=options != "paper",
                               kl=options == "clip_kl")
    got = run(grpo_sr_loss, params, rows, block_rows=block_rows)
    want = run(reference.grpo_sr_loss, params, rows)
    assert_close_all(got, want, rtol=1e-4, atol=1e-5)


def test_fused_cross_entropy_equals_f_cross_entropy():
    """policy_coef 0 and nll_coef 1/n: the mean cross-entropy, loss and gradients, ignore_index included."""
    (hidden, weight, bias), rows = make_inputs(64, 32, 5000, seed=2, ignore_frac=0.2)
    targets = rows["targets"]
    n = int((targets != -100).sum())
    loss, _ = grpo_sr_loss(hidden, weight, targets, torch.zeros(64), torch.full((64,), 1.0 / n), bias, block_rows=16)
    loss.backward()
    got = [loss.detach()] + [p.grad.clone() for p in (hidden, weight, bias)]
    for p in (hidden, weight, bias):
        p.grad = None
    want_loss = F.cross_entropy(F.linear(hidden, weight, bias), targets, ignore_index=-100)
    want_loss.backward()
    want = [want_loss.detach()] + [p.grad for p in (hidden, weight, bias)]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_zero_coefficient_rows_are_masked():
    """Rows with both coefficients 0 add nothing: their hidden gradient is exactly 0 and the rest equals the
    loss of the live rows alone; their logp is still reported."""
    (hidden, weight, bias), rows = make_inputs(30, 8, 70, seed=3)
    dead = torch.arange(30) % 3 == 0
    rows["policy_coef"][dead], rows["nll_coef"][dead] = 0, 0
    loss, logp, gh, gw, gb = run(grpo_sr_loss, (hidden, weight, bias), rows, block_rows=7)
    assert torch.equal(gh[dead], torch.zeros_like(gh[dead]))
    live = {k: v[~dead] for k, v in rows.items()}
    h_live = hidden.detach()[~dead].clone().requires_grad_()
    want = run(reference.grpo_sr_loss, (h_live, weight, bias), live)
    torch.testing.assert_close(loss, want[0])
    torch.testing.assert_close(gh[~dead], want[2])
    torch.testing.assert_close(gw, want[3])
    torch.testing.assert_close(gb, want[4])
    _, full_logp = reference.grpo_sr_loss(hidden, weight, rows["targets"], rows["policy_coef"], rows["nll_coef"], bias)
    torch.testing.assert_close(logp, full_logp.detach())


def test_ignored_rows_report_zero_and_get_no_gradient():
    (hidden, weight, bias), rows = make_inputs(12, 6, 40, seed=4)
    rows["targets"][[1, 5]] = -100
    loss, logp, gh, *_ = run(grpo_sr_loss, (hidden, weight, bias), rows)
    assert logp[1] == 0 and logp[5] == 0
    assert not gh[[1, 5]].any()
    loss7, _ = grpo_sr_loss(hidden, weight, rows["targets"].masked_fill(rows["targets"] == -100, -7),
                            rows["policy_coef"], rows["nll_coef"], bias, ignore_index=-7)
    torch.testing.assert_close(loss7, loss)


def test_alpha_zero_and_all_zero_advantages():
    (hidden, weight, bias), rows = make_inputs(20, 8, 50, seed=6)
    # alpha = 0: the policy term alone.
    rows_a = dict(rows, nll_coef=torch.zeros(20))
    assert_close_all(run(grpo_sr_loss, (hidden, weight, bias), rows_a),
                     run(reference.grpo_sr_loss, (hidden, weight, bias), rows_a))
    # All advantages zero: only the NLL term moves the parameters.
    rows_z = dict(rows, policy_coef=torch.zeros(20))
    got = run(grpo_sr_loss, (hidden, weight, bias), rows_z)
    assert_close_all(got, run(reference.grpo_sr_loss, (hidden, weight, bias), rows_z))
    # Both zero: zero loss, zero gradients (exactly: every gradient row is skipped).
    rows_0 = dict(rows, policy_coef=torch.zeros(20), nll_coef=torch.zeros(20))
    loss, _, gh, gw, gb = run(grpo_sr_loss, (hidden, weight, bias), rows_0)
    assert loss == 0 and not gh.any() and not gw.any() and not gb.any()


def test_paper_ratio_has_value_one_and_gradient_of_logp():
    """Without old_logp the policy term's value is -sum(policy_coef) and its gradient is -c d(logp)."""
    (hidden, weight, bias), rows = make_inputs(10, 5, 30, seed=7)
    rows["nll_coef"] = torch.zeros(10)
    loss, logp, gh, *_ = run(grpo_sr_loss, (hidden, weight, bias), rows)
    torch.testing.assert_close(loss, -rows["policy_coef"].sum())
    hidden.grad = None
    _, logp_ref = reference.grpo_sr_loss(hidden, weight, rows["targets"], rows["policy_coef"], rows["nll_coef"], bias)
    (-(rows["policy_coef"] * logp_ref).sum()).backward()
    torch.testing.assert_close(gh, hidden.grad)


def test_epsilon_clip_zeroes_the_gradient_of_clipped_rows():
    (hidden, weight, bias), rows = make_inputs(4, 6, 20, seed=8, bias=False)
    _, logp = reference.grpo_sr_loss(hidden, weight, rows["targets"], rows["policy_coef"], rows["nll_coef"])
    logp = logp.detach()
    rows["nll_coef"] = torch.zeros(4)
    rows["policy_coef"] = torch.tensor([1.0, 1.0, -1.0, -1.0])
    # ratios 1.5 (A > 0: clipped), 0.7 (A > 0: not), 0.5 (A < 0: clipped), 1.1 (A < 0: not)
    rows["old_logp"] = logp - torch.tensor([1.5, 0.7, 0.5, 1.1]).log()
    loss, _, gh, _, _ = run(grpo_sr_loss, (hidden, weight, None), rows, epsilon=0.2)
    assert not gh[0].any() and not gh[2].any()
    assert gh[1].abs().sum() > 0 and gh[3].abs().sum() > 0
    torch.testing.assert_close(loss, torch.tensor(-(1.2 + 0.7) + (0.8 + 1.1)))
    want = run(reference.grpo_sr_loss, (hidden, weight, None), rows, epsilon=0.2)
    torch.testing.assert_close(gh, want[2])
    # epsilon_high widens the upper side only: 1.5 is inside [0.8, 1.6).
    loss_hi, *_ = run(grpo_sr_loss, (hidden, weight, None), rows, epsilon=0.2, epsilon_high=0.6)
    torch.testing.assert_close(loss_hi, torch.tensor(-(1.5 + 0.7) + (0.8 + 1.1)))


def test_beta_kl_term():
    (hidden, weight, bias), rows = make_inputs(16, 8, 60, seed=9, kl=True)
    got = run(grpo_sr_loss, (hidden, weight, bias), rows)
    assert_close_all(got, run(reference.grpo_sr_loss, (hidden, weight, bias), rows))
    # The KL term alone: value sum kl * (exp(d) - d - 1) with d = ref - logp.
    rows_kl = dict(rows, policy_coef=torch.zeros(16), nll_coef=torch.zeros(16))
    loss, logp, *_ = run(grpo_sr_loss, (hidden, weight, bias), rows_kl)
    d = rows["ref_logp"] - logp
    torch.testing.assert_close(loss, (rows["kl_coef"] * (d.exp() - d - 1)).sum())


@pytest.mark.parametrize("options", ["nll", "clip_kl"])
def test_gradcheck_fp64(options):
    """Finite differences cannot see the paper's pi / sg(pi) (its value is 1 whatever the inputs), so the policy
    term is checked numerically through the PPO ratio exp(logp - old_logp), and against autograd elsewhere."""
    (hidden, weight, bias), rows = make_inputs(5, 3, 7, dtype=torch.float64, seed=10, ignore_frac=0.2,
                                               old=options != "nll", kl=options == "clip_kl")
    rows = {k: v.double() if v.is_floating_point() else v for k, v in rows.items()}
    if options == "nll":
        rows["policy_coef"] = torch.zeros_like(rows["policy_coef"])
    targets, policy, nll = rows.pop("targets"), rows.pop("policy_coef"), rows.pop("nll_coef")

    def f(h, w, b):  # loss and logp both: the precomputed path and the recomputing backward op
        return grpo_sr_loss(h, w, targets, policy, nll, b, block_rows=2, **rows)

    assert torch.autograd.gradcheck(f, (hidden, weight, bias))


def test_backward_op_matches_reference_with_upstream_gradients():
    (hidden, weight, bias), rows = make_inputs(23, 7, 90, dtype=torch.float64, seed=11, old=True, kl=True)
    rows = {k: v.double() if v.is_floating_point() else v for k, v in rows.items()}
    grad_loss = torch.tensor(0.7, dtype=torch.float64)
    grad_logp = torch.randn(23, dtype=torch.float64)
    loss, logp = reference.grpo_sr_loss(hidden, weight, rows["targets"], rows["policy_coef"], rows["nll_coef"], bias,
                                        old_logp=rows["old_logp"], ref_logp=rows["ref_logp"], kl_coef=rows["kl_coef"])
    want = torch.autograd.grad(grad_loss * loss + (grad_logp * logp).sum(), (hidden, weight, bias))
    got = BACKWARD_OP(grad_loss, grad_logp, hidden.detach(), weight.detach(), bias.detach(), rows["targets"],
                      rows["policy_coef"], rows["nll_coef"], rows["old_logp"], rows["ref_logp"], rows["kl_coef"],
                      0.2, 0.2, -100, 5, [True, True, True])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    only_weight = BACKWARD_OP(grad_loss, None, hidden.detach(), weight.detach(), None, rows["targets"],
                              rows["policy_coef"], rows["nll_coef"], None, None, None, 0.2, 0.2, -100, 0,
                              [False, True, False])
    assert only_weight[0].shape == (0,) and only_weight[2].shape == (0,) and only_weight[1].shape == weight.shape


def test_second_backward_through_a_retained_graph_recomputes():
    (hidden, weight, bias), rows = make_inputs(15, 6, 40, seed=12, old=True)
    args = (hidden, weight, rows["targets"], rows["policy_coef"], rows["nll_coef"], bias)
    loss, _ = grpo_sr_loss(*args, old_logp=rows["old_logp"])
    (2 * loss).backward(retain_graph=True)
    loss.backward()
    got = [p.grad.clone() for p in (hidden, weight, bias)]
    for p in (hidden, weight, bias):
        p.grad = None
    want_loss, _ = reference.grpo_sr_loss(*args, old_logp=rows["old_logp"])
    (3 * want_loss).backward()
    for a, p in zip(got, (hidden, weight, bias)):
        torch.testing.assert_close(a, p.grad)


def test_frozen_head_and_no_grad():
    (hidden, weight, bias), rows = make_inputs(9, 4, 25, seed=13)
    weight.requires_grad_(False)
    bias.requires_grad_(False)
    got = run(grpo_sr_loss, (hidden, weight, bias), rows)
    assert got[3] is None and got[4] is None
    want = run(reference.grpo_sr_loss, (hidden, weight, bias), rows)
    torch.testing.assert_close(got[2], want[2])
    with torch.no_grad():
        loss, logp = grpo_sr_loss(hidden, weight, rows["targets"], rows["policy_coef"], rows["nll_coef"], bias)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, got[0])
    torch.testing.assert_close(logp, got[1])


def test_leading_dimensions_and_empty_input():
    (hidden, weight, bias), rows = make_inputs(12, 5, 30, seed=14)
    h3 = hidden.detach().view(3, 4, 5).requires_grad_()
    loss, logp = grpo_sr_loss(h3, weight, *(rows[k].view(3, 4) for k in ("targets", "policy_coef", "nll_coef")), bias)
    assert logp.shape == (3, 4)
    want, want_logp = reference.grpo_sr_loss(hidden, weight, rows["targets"], rows["policy_coef"], rows["nll_coef"],
                                             bias)
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(logp.reshape(-1), want_logp)
    loss.backward()
    assert h3.grad.shape == (3, 4, 5)

    (hidden, weight, bias), rows = make_inputs(0, 5, 30)
    loss, logp, gh, gw, gb = run(grpo_sr_loss, (hidden, weight, bias), rows)
    assert loss == 0 and logp.shape == (0,) and gh.shape == (0, 5)
    assert not gw.any() and not gb.any()


def test_deterministic_across_thread_counts():
    params, rows = make_inputs(200, 16, 3000, seed=15, old=True)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, max(threads, 2), 1):
            torch.set_num_threads(n)
            results.append(run(grpo_sr_loss, params, rows, block_rows=64))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(results[0], results[2]):
        assert torch.equal(a, b)
    assert_close_all(results[0], results[1], rtol=1e-5, atol=1e-6)  # BLAS may split its sums by thread count


def test_bf16_error_no_worse_than_eager():
    """flash-attn criterion: |kernel - ref_fp64| <= 2 |eager_bf16 - ref_fp64| + eps for loss, logp and grads."""
    params, rows = make_inputs(40, 64, 700, dtype=torch.bfloat16, seed=16, old=True, kl=True)
    params64 = [p.detach().double().requires_grad_() for p in params]
    truth = run(reference.grpo_sr_loss, params64, {k: v.double() if v.is_floating_point() else v
                                                   for k, v in rows.items()})
    ours = run(grpo_sr_loss, params, rows, block_rows=16)
    eager = run(reference.grpo_sr_loss, params, rows)
    assert ours[0].dtype == torch.float32 and ours[2].dtype == torch.bfloat16
    for name, t, o, e in zip(["loss", "logp", "grad_hidden", "grad_weight", "grad_bias"], truth, ours, eager):
        err_ours = (o.double() - t).abs().max().item()
        err_eager = (e.double() - t).abs().max().item()
        assert err_ours <= 2 * err_eager + 1e-5 * t.abs().max().item(), (name, err_ours, err_eager)


def test_masked_vocabulary_entries():
    """A bias of -inf masks tokens (e.g. everything outside the SID block): a whole masked vocabulary chunk of the
    online log-sum-exp included; masked entries get no probability mass and (numerically) no gradient."""
    V = 2 * CPU_VOCAB_CHUNK + 100
    (hidden, weight, bias), rows = make_inputs(20, 8, V, seed=24)
    with torch.no_grad():
        bias[: CPU_VOCAB_CHUNK + 50] = float("-inf")
        rows["targets"] = torch.randint(CPU_VOCAB_CHUNK + 50, V, (20,), generator=torch.Generator().manual_seed(0))
    got = run(grpo_sr_loss, (hidden, weight, bias), rows, block_rows=8)
    want = run(reference.grpo_sr_loss, (hidden, weight, bias), rows)
    assert_close_all(got, want, rtol=1e-4, atol=1e-5)


def test_autocast_runs_the_head_in_bf16():
    (hidden, weight, bias), rows = make_inputs(16, 32, 100, seed=25)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = run(grpo_sr_loss, (hidden, weight, bias), rows)
    assert got[0].dtype == torch.float32 and got[3].dtype == torch.float32  # fp32 parameters get fp32 grads
    want = run(reference.grpo_sr_loss, (hidden, weight, bias), rows)
    assert_close_all(got, want, rtol=0.05, atol=0.02)


def test_opcheck():
    (hidden, weight, bias), rows = make_inputs(6, 4, 11, seed=17, ignore_frac=0.2, old=True, kl=True)
    h, w, b = hidden.detach(), weight.detach(), bias.detach()
    r = rows
    base = (r["targets"], r["policy_coef"], r["nll_coef"])
    for mask in ([False, False, False], [True, True, True], [True, False, False]):
        torch.library.opcheck(OP, (h, w, b, *base, r["old_logp"], r["ref_logp"], r["kl_coef"], 0.2, 0.3, -100, 4, mask))
    torch.library.opcheck(OP, (hidden, weight, None, *base, None, None, None, 0.2, 0.2, -100, 0, [True, True, False]))
    torch.library.opcheck(BACKWARD_OP, (torch.tensor(1.5), torch.randn(6), h, w, b, *base, r["old_logp"], None, None,
                                        0.2, 0.2, -100, 4, [True, True, True]))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    (hidden, weight, bias), rows = make_inputs(14, 8, 45, seed=18, old=True)

    def f(h, w, b):
        loss, logp = grpo_sr_loss(h, w, rows["targets"], rows["policy_coef"], rows["nll_coef"], b,
                                  old_logp=rows["old_logp"])
        return loss * 2

    out = torch.compile(f, fullgraph=True, backend="aot_eager")(hidden, weight, bias)
    out.backward()
    got = [p.grad.clone() for p in (hidden, weight, bias)]
    for p in (hidden, weight, bias):
        p.grad = None
    want_loss, _ = reference.grpo_sr_loss(hidden, weight, rows["targets"], rows["policy_coef"], rows["nll_coef"], bias,
                                          old_logp=rows["old_logp"])
    (want_loss * 2).backward()
    torch.testing.assert_close(out, want_loss.detach() * 2)
    for a, p in zip(got, (hidden, weight, bias)):
        torch.testing.assert_close(a, p.grad)


# ---- bad input: the error names the argument and the value ------------------------------------------

def _good():
    return dict(hidden=torch.randn(3, 4), weight=torch.randn(10, 4), targets=torch.tensor([1, 2, 3]),
                policy_coef=torch.zeros(3), nll_coef=torch.ones(3), bias=torch.randn(10))


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(targets=torch.tensor([1, 2, 3], dtype=torch.int32)), RuntimeError, r"targets must be int64, got Int"),
        (dict(targets=torch.tensor([1, 10, 3])), RuntimeError,
         r"targets\[1\] = 10 is outside \[0, 10\) \(the weight's rows\) and is not ignore_index=-100"),
        (dict(targets=torch.tensor([1, 2, -1])), RuntimeError, r"targets\[2\] = -1 is outside \[0, 10\)"),
        (dict(hidden=torch.randn(3, 4).half()), RuntimeError, r"hidden must be float32, bfloat16 or float64, got Half"),
        (dict(weight=torch.randn(10, 5)), RuntimeError,
         r"weight must be \[V, H\] = \[V, 4\] \(H from hidden\), got shape \[10, 5\]"),
        (dict(weight=torch.randn(10, 4).double()), RuntimeError,
         r"weight dtype Double differs from hidden dtype Float"),
        (dict(bias=torch.randn(9)), RuntimeError, r"bias must be \[V\] = \[10\], got shape \[9\]"),
        (dict(bias=torch.randn(10).double()), RuntimeError, r"bias dtype Double differs"),
        (dict(policy_coef=torch.zeros(4)), ValueError,
         r"policy_coef must have hidden's leading shape \(3,\), got \(4,\)"),
        (dict(nll_coef=torch.ones(3, dtype=torch.long)), RuntimeError,
         r"nll_coef must be a floating-point tensor, got Long"),
        (dict(targets=torch.tensor([1, 2])), ValueError, r"targets must have hidden's leading shape"),
        (dict(ref_logp=torch.zeros(3)), ValueError, r"ref_logp and kl_coef go together"),
        (dict(epsilon=-0.1), RuntimeError, r"epsilon_low must be in \[0, 1\], got -0.1"),
    ],
)
def test_bad_input_is_named(change, error, match):
    args = {**_good(), **change}
    with pytest.raises(error, match=match):
        grpo_sr_loss(**args)


def test_bad_input_to_the_ops_is_named():
    a = _good()
    with pytest.raises(RuntimeError,
                       match=r"policy_coef must be \[N\] = \[3\] \(N = rows of hidden\), got shape \[4\]"):
        OP(a["hidden"], a["weight"], None, a["targets"], torch.zeros(4), a["nll_coef"])
    with pytest.raises(RuntimeError, match=r"ref_logp and kl_coef go together .* kl_coef without ref_logp"):
        OP(a["hidden"], a["weight"], None, a["targets"], a["policy_coef"], a["nll_coef"], None, None, torch.ones(3))
    with pytest.raises(RuntimeError, match=r"grad_loss must be a floating-point scalar, got Float of shape \[2\]"):
        BACKWARD_OP(torch.ones(2), None, a["hidden"], a["weight"], None, a["targets"], a["policy_coef"], a["nll_coef"],
                    None, None, None, 0.2, 0.2, -100, 0, [True, False, False])
    with pytest.raises(RuntimeError, match=r"grad_logp must be \[N\] = \[3\]"):
        BACKWARD_OP(torch.ones(()), torch.ones(2), a["hidden"], a["weight"], None, a["targets"], a["policy_coef"],
                    a["nll_coef"], None, None, None, 0.2, 0.2, -100, 0, [True, False, False])


# ---- module -----------------------------------------------------------------------------------------

def test_grpo_sr_loss_module_matches_eq8():
    """Two queries, G = 3 rollouts of up to 4 tokens each, three positives: the module with row_weights equals
    eq. 8 written out sequence by sequence."""
    torch.manual_seed(19)
    Q, G, T, H, V, alpha = 2, 3, 4, 6, 15, 0.3
    rollout_mask = torch.ones(Q * G, T, dtype=torch.bool)
    rollout_mask[1, 3:] = False
    rollout_mask[4, 2:] = False
    positive_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    positive_query = torch.tensor([0, 0, 1])
    rollout_w, positive_w = GRPOSRLoss.row_weights(rollout_mask, G, positive_mask, positive_query)
    adv = torch.randn(Q * G, 1).expand(Q * G, T)
    h_roll, h_pos = torch.randn(Q * G, T, H), torch.randn(3, T, H)
    t_roll, t_pos = torch.randint(0, V, (Q * G, T)), torch.randint(0, V, (3, T))
    weight = torch.randn(V, H, requires_grad=True)
    hidden = torch.cat([h_roll, h_pos]).reshape(-1, H)
    targets = torch.cat([t_roll, t_pos]).reshape(-1)
    advantages = torch.cat([adv, torch.zeros(3, T)]).reshape(-1)
    rw = torch.cat([rollout_w, torch.zeros(3, T)]).reshape(-1)
    pw = torch.cat([torch.zeros(Q * G, T), positive_w]).reshape(-1)
    loss, logp = GRPOSRLoss(alpha=alpha)(hidden, weight, targets, advantages, rw, pw)
    loss.backward()
    got = weight.grad.clone()
    weight.grad = None

    lp_roll = F.linear(h_roll, weight).log_softmax(-1).gather(-1, t_roll[..., None])[..., 0]
    lp_pos = F.linear(h_pos, weight).log_softmax(-1).gather(-1, t_pos[..., None])[..., 0]
    want = 0
    for q in range(Q):
        rollouts = range(q * G, (q + 1) * G)
        policy = sum((torch.exp(lp_roll[i] - lp_roll[i].detach()) * adv[i])[rollout_mask[i]].sum()
                     / rollout_mask[i].sum() for i in rollouts) / G
        pos = [p for p in range(3) if positive_query[p] == q]
        nll = sum(lp_pos[p][positive_mask[p]].sum() for p in pos) / len(pos)
        want = want - (policy + alpha * nll) / Q
    want.backward()
    torch.testing.assert_close(loss, want.detach())
    torch.testing.assert_close(got, weight.grad)
    torch.testing.assert_close(logp.view(-1, T)[: Q * G], lp_roll.detach())


def test_module_checks_and_options():
    (hidden, weight, bias), rows = make_inputs(8, 4, 12, seed=20, kl=True)
    ones = torch.ones(8)
    with pytest.raises(ValueError, match=r"beta != 0 needs ref_logp"):
        GRPOSRLoss(beta=0.1)(hidden, weight, rows["targets"], ones, ones, ones)
    with pytest.raises(ValueError, match=r"rollout_weight must have hidden's leading shape \(8,\), got \(7,\)"):
        GRPOSRLoss()(hidden, weight, rows["targets"], ones, torch.ones(7), ones)
    with pytest.raises(ValueError, match=r"alpha and beta must be >= 0"):
        GRPOSRLoss(alpha=-1)
    adv, rw, pw = torch.randn(8), torch.rand(8), torch.rand(8)
    loss, _ = GRPOSRLoss(alpha=0.5, beta=0.04, epsilon=0.1, epsilon_high=0.3)(
        hidden, weight, rows["targets"], adv, rw, pw, bias, old_logp=rows["ref_logp"] - 0.1, ref_logp=rows["ref_logp"])
    want, _ = reference.grpo_sr_loss(hidden, weight, rows["targets"], adv * rw, 0.5 * pw, bias,
                                     old_logp=rows["ref_logp"] - 0.1, epsilon=0.1, epsilon_high=0.3,
                                     ref_logp=rows["ref_logp"], kl_coef=0.04 * rw)
    torch.testing.assert_close(loss, want)


def test_registered_on_cpu():
    assert "CPU" in genrec_ext.ops.kernel_devices("grpo_sr_loss")
    assert "grpo_sr_loss" in genrec_ext.ops.OPS


# ---- CUDA (skipped without a device) ----------------------------------------------------------------

@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("options", ["paper", "clip_kl"])
def test_cuda_matches_reference(dtype, options):
    params, rows = make_inputs(300, 64, 5003, dtype=dtype, seed=21, ignore_frac=0.1, zero_frac=0.2,
                               old=options != "paper", kl=options == "clip_kl", device="cuda")
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-10)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        assert_close_all(run(grpo_sr_loss, params, rows, block_rows=64), run(reference.grpo_sr_loss, params, rows),
                         **tol)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


@requires_cuda
def test_cuda_bf16_error_no_worse_than_eager():
    params, rows = make_inputs(64, 128, 3000, dtype=torch.bfloat16, seed=22, old=True, device="cuda")
    params64 = [p.detach().double().requires_grad_() for p in params]
    truth = run(reference.grpo_sr_loss, params64, {k: v.double() if v.is_floating_point() else v
                                                   for k, v in rows.items()})
    ours, eager = run(grpo_sr_loss, params, rows, block_rows=16), run(reference.grpo_sr_loss, params, rows)
    for t, o, e in zip(truth, ours, eager):
        assert (o.double() - t).abs().max() <= 2 * (e.double() - t).abs().max() + 1e-5 * t.abs().max()


@requires_cuda
def test_cuda_bad_target_and_opcheck():
    params, rows = make_inputs(6, 4, 11, seed=23, device="cuda", old=True)
    h, w, b = (p.detach() for p in params)
    torch.library.opcheck(OP, (h, w, b, rows["targets"], rows["policy_coef"], rows["nll_coef"], rows["old_logp"],
                               None, None, 0.2, 0.2, -100, 0, [True, True, True]))
    bad = rows["targets"].clone()
    bad[4] = 11
    with pytest.raises(RuntimeError, match=r"targets\[4\] = 11 is outside \[0, 11\)"):
        grpo_sr_loss(h, w, bad, rows["policy_coef"], rows["nll_coef"], b)
