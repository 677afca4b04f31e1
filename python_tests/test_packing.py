"""Shared-prefix packed SFT: the packing plan, and packed loss and gradients equal to the samples laid out one per
row (both objectives, with and without the Token Merger, ragged users, histories capped by max_history), and
token-budget batches that are a pure function of (seed, step)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genrec_ext.experiments import synthetic_task
from genrec_ext.model import build_model
from genrec_ext.train import collate, make_sft_dataset
from genrec_ext.train.packing import PackedSFTDataset, collate_packed, plan_packs
from genrec_ext.train.sampling import PackedBatchPlan

from .conftest import requires_cuda

WORLD = {"num_items": 150, "num_users": 60, "seed": 0}


@pytest.fixture(scope="module")
def task():
    return synthetic_task(WORLD, max_history=50, sid={"levels": 2, "codebook_size": 16})


def _dataset(task, objective, cap):
    return make_sft_dataset(task.splits.train, task.catalog, task.table, objective, max_history=cap)


@pytest.mark.parametrize("objective", ["page", "point"])
@pytest.mark.parametrize("cap", [None, 4])
@pytest.mark.parametrize("members", [None, 2])
def test_plan_covers_every_example_once_with_its_own_history_as_a_prefix(task, objective, cap, members):
    ds = _dataset(task, objective, cap)
    plan = plan_packs(ds, units_per_item=1, pack_tokens=96, pack_members=members)
    if members is not None:  # the cap holds, and rows that could share more do fill up to it
        assert np.diff(plan.offsets).max() == members
    assert np.array_equal(np.sort(plan.members), np.arange(len(ds)))
    users = ds.samples.user[ds.example_sample]
    for p in range(len(plan)):
        rows = plan.members[plan.offsets[p]:plan.offsets[p + 1]]
        base_history, _ = ds[int(plan.base[p])]
        assert len(set(users[rows].tolist())) == 1  # one user per row
        for m, i in zip(range(plan.offsets[p], plan.offsets[p + 1]), rows):
            history, target = ds[int(i)]
            assert plan.prefix[m] == len(history) and np.array_equal(base_history[: len(history)], history)
        blocks = sum(1 + len(ds[int(i)][1]) for i in rows)
        assert plan.lengths[p] == 1 + len(base_history) + blocks
        assert plan.lengths[p] <= 96 or len(rows) == 1
    # sharing pays: fewer positions than laid out one per row; much fewer where a page's point-wise examples share
    # one history (page targets are long, so their histories are a smaller part of a row), unless a row holds two
    assert plan.lengths.sum() < (0.75 if objective == "point" and members is None else 1.0) * plan.unpacked_lengths.sum()


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("objective", ["page", "point"])
@pytest.mark.parametrize("token_merger", [True, False])
@pytest.mark.parametrize("cap", [None, 4])
def test_packed_loss_and_gradients_equal_the_unpacked_ones(task, objective, token_merger, cap):
    ds = _dataset(task, objective, cap)
    units = 1 if token_merger else ds.vocab.levels  # prompt vectors per history item
    plan = plan_packs(ds, units_per_item=units, pack_tokens=200)
    packed = PackedSFTDataset(ds, plan)
    rng = np.random.default_rng(0)
    shared = np.flatnonzero(np.diff(plan.offsets) > 1)
    # ragged: rows of different users, numbers of members and lengths, some of one sample only
    rows = np.concatenate([rng.choice(shared, 6, replace=False), rng.choice(len(plan), 4, replace=False)])
    members = np.concatenate([plan.members[plan.offsets[p]:plan.offsets[p + 1]] for p in rows])
    assert len(members) > len(rows)  # some rows do share
    model = build_model("tiny", ds.vocab, token_merger=token_merger, seed=0, level_softmax=True).double().eval()
    batch_p = collate_packed([packed[int(p)] for p in rows])
    batch_u = collate([ds[int(i)] for i in members])
    assert batch_p.num_target_tokens == batch_u.num_target_tokens and batch_p.num_examples == len(members)
    # one decoder sequence: every row's prompt once, then every block, none padded to another row's block count
    lay = model.layout(batch_p)
    width = int(batch_p.history_len.max()) * units
    assert lay.inputs_embeds.shape[:2] == (1, len(rows) * (1 + width) + len(members) * batch_p.blocks.shape[1])
    out_p = model(batch_p)
    out_p.loss.backward()
    grads_p = _grads(model)
    model.zero_grad(set_to_none=True)
    out_u = model(batch_u)
    out_u.loss.backward()
    grads_u = _grads(model)
    assert out_p.num_target_tokens == out_u.num_target_tokens
    assert out_p.num_input_positions < out_u.num_input_positions  # the shared histories are encoded once
    torch.testing.assert_close(out_p.loss, out_u.loss, rtol=1e-10, atol=1e-12)
    assert grads_p.keys() == grads_u.keys()
    # HF's RMSNorm computes in float32 even for a float64 model: a shared history item's gradient is summed over
    # its blocks and rounded to float32 once, each unpacked copy's separately (seen: 7e-9 at |grad| ~0.4)
    for name in grads_u:
        torch.testing.assert_close(grads_p[name], grads_u[name], rtol=1e-6, atol=1e-7, msg=name)


@requires_cuda
@pytest.mark.parametrize("objective", ["page", "point"])
def test_packed_attention_on_cuda_gives_the_unpacked_loss_and_gradients(task, objective):
    # the two SDPA calls of packed_attention.py on CUDA kernels (with a boolean mask), fp32 and under bf16 autocast
    ds = _dataset(task, objective, 4)
    plan = plan_packs(ds, units_per_item=1, pack_tokens=200)
    packed = PackedSFTDataset(ds, plan)
    rows = np.flatnonzero(np.diff(plan.offsets) > 1)[:12]
    members = np.concatenate([plan.members[plan.offsets[p]:plan.offsets[p + 1]] for p in rows])
    model = build_model("tiny", ds.vocab, seed=0).cuda()
    batch_p = collate_packed([packed[int(p)] for p in rows]).to("cuda")
    batch_u = collate([ds[int(i)] for i in members]).to("cuda")
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            loss_p, loss_u = model(batch_p).loss, model(batch_u).loss
        grads_p = torch.autograd.grad(loss_p, list(model.parameters()), allow_unused=True)
        grads_u = torch.autograd.grad(loss_u, list(model.parameters()), allow_unused=True)
        torch.testing.assert_close(loss_p, loss_u, rtol=tol, atol=tol)
        for gp, gu in zip(grads_p, grads_u):
            if gu is not None:
                torch.testing.assert_close(gp, gu, rtol=10 * tol, atol=10 * tol)


@pytest.mark.parametrize("objective", ["page", "point"])
@pytest.mark.parametrize("stride", [1, 2, 4])
def test_history_stride_shares_sliding_windows_and_trains_on_each_sample_s_recent_items(task, objective, stride):
    cap = 4
    ds = _dataset(task, objective, cap)
    exact = plan_packs(ds, units_per_item=1, pack_tokens=200)
    plan = plan_packs(ds, units_per_item=1, pack_tokens=200, history_stride=stride)
    packed = PackedSFTDataset(ds, plan)
    assert np.array_equal(np.sort(plan.members), np.arange(len(ds)))
    assert np.array_equal(plan.unpacked_lengths.sum(), exact.unpacked_lengths.sum())  # measured against the cap
    capped = seen = 0
    for p in range(len(plan)):
        row_history, blocks = packed[p]
        assert len(row_history) == plan.history_len(p) <= cap
        for m, (prefix, target) in zip(range(plan.offsets[p], plan.offsets[p + 1]), blocks):
            history, own_target = ds[int(plan.members[m])]
            assert prefix == plan.prefix[m] and np.array_equal(target, own_target)
            # a member sees its own most recent `prefix` items: all of them below the cap, >= cap - stride + 1 at it
            assert np.array_equal(row_history[:prefix], history[len(history) - prefix:])
            assert prefix == len(history) if len(history) < cap else cap - stride < prefix <= cap
            capped += len(history) == cap
            seen += prefix
    assert capped > 0.3 * len(ds)  # the world has users past the cap, so the stride has windows to share
    if stride == 1:  # a grid of one item is every window exactly
        assert np.array_equal(plan.prefix[np.argsort(plan.members)], exact.prefix[np.argsort(exact.members)])
    else:  # sliding windows now share rows
        assert len(plan) < len(exact) and plan.lengths.sum() < exact.lengths.sum()
    # the packed loss is the loss of the samples with those windows laid out one per row
    model = build_model("tiny", ds.vocab, seed=0, level_softmax=True).double().eval()
    rows = np.flatnonzero(np.diff(plan.offsets) > 1)[:8]
    windows = []
    for p in rows:
        row_history, blocks = packed[int(p)]
        windows += [(row_history[:prefix], target) for prefix, target in blocks]
    torch.testing.assert_close(model(collate_packed([packed[int(p)] for p in rows])).loss,
                               model(collate(windows)).loss, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"history_stride must be in \[1, max_history=4\], got 5"):
        plan_packs(ds, history_stride=5)
    with pytest.raises(ValueError, match="history_stride needs a dataset with max_history"):
        plan_packs(_dataset(task, objective, None), history_stride=2)


@pytest.mark.parametrize("world_size", [1, 2])
def test_steps_are_random_sets_of_rows_cut_by_length_deterministic_and_cover_an_epoch(task, world_size):
    ds = _dataset(task, "point", None)
    plan = plan_packs(ds, units_per_item=1, pack_tokens=128)
    members = np.diff(plan.offsets)
    batches = PackedBatchPlan.make(plan, global_batch_size=32, grad_accum=2, world_size=world_size, seed=3,
                                   max_steps=None, epochs=2.0, length_splits=2)
    assert batches.grad_accum == 4 and batches.micros_per_step == 4 * world_size  # 2 accumulation slots x 2 splits
    epoch0 = batches.micro_batches(0)
    assert len(epoch0) == batches.steps_per_epoch * batches.micros_per_step
    rows = np.concatenate(epoch0)
    assert len(np.unique(rows)) == len(rows) and len(rows) > 0.8 * len(plan)  # each row at most once per epoch
    per_step = [np.concatenate(batches.step_micro_batches(s)) for s in range(batches.steps_per_epoch)]
    examples = np.array([members[r].sum() for r in per_step])
    assert np.all(np.abs(examples - 32) < members.max())  # about global_batch_size examples in every step
    for step in range(batches.steps_per_epoch):
        micro = batches.step_micro_batches(step)
        for rank in range(world_size):
            mine = micro[rank * 4:(rank + 1) * 4]
            assert len(mine[-1]) > 0  # the micro-batch that synchronises gradients is never empty
            seen = [b for b in mine if len(b)]
            assert all(plan.lengths[x].max() <= plan.lengths[y].min() for x, y in zip(seen, seen[1:]))  # by length
    # a step is a random set of rows, not rows of one length: steps' mean row lengths barely differ
    means = np.array([plan.lengths[r].mean() for r in per_step])
    assert means.std() < 0.5 * plan.lengths.std()
    # a pure function of (seed, step): a fresh plan gives the same step; another epoch another order
    again = PackedBatchPlan.make(plan, global_batch_size=32, grad_accum=2, world_size=world_size, seed=3,
                                 max_steps=None, epochs=2.0, length_splits=2)
    step = batches.steps_per_epoch + 1
    assert all(np.array_equal(a, b) for a, b in zip(batches.step_micro_batches(step), again.step_micro_batches(step)))
    assert not all(np.array_equal(a, b) for a, b in zip(batches.micro_batches(1), epoch0))
    assert batches.locate(step) == (1, 1) and batches.total_steps >= 2 * batches.steps_per_epoch - 1
    with pytest.raises(ValueError, match="pack_tokens must be >= 2"):
        plan_packs(ds, pack_tokens=1)
    with pytest.raises(ValueError, match="pack_members must be >= 1"):
        plan_packs(ds, pack_members=0)


def test_pack_members_auto_keeps_at_least_16_rows_per_step():
    from genrec_ext.train import SFTConfig

    assert SFTConfig(global_batch_size=64).members_per_row == 4  # the default, "auto"
    assert SFTConfig(global_batch_size=256).members_per_row == 16
    assert SFTConfig(global_batch_size=8).members_per_row == 1
    assert SFTConfig(pack_members=None).members_per_row is None and SFTConfig(pack_members=3).members_per_row == 3
    with pytest.raises(ValueError, match="pack_members must be >= 1, 'auto' or None, got 'many'"):
        SFTConfig(pack_members="many")
