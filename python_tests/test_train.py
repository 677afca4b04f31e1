"""The SFT loop: schedule, learning, gradient accumulation, DDP/FSDP on gloo, kill-and-resume, atomic
checkpoints, vocabulary checks, metrics and plots. Tiny Qwen2 models on a small synthetic world (2 CPU cores)."""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from genrec_ext import data
from genrec_ext.model import build_model
from genrec_ext.sid import RQKMeansConfig, build_sid_table, train_rq_kmeans
from genrec_ext.train import checkpoint as ckpt
from genrec_ext.train import make_sft_dataset
from genrec_ext.train.metrics import plot_loss_curves, read_metrics
from genrec_ext.train.schedule import lr_multiplier, warmup_cosine_scheduler, warmup_steps
from genrec_ext.train.sampling import BatchPlan, StepBatchSampler, epoch_order, global_batch_indices
from genrec_ext.train.sft import SFTConfig, train_sft

from ._launch import ROOT, finish, worker_env
from ._launch import torchrun as launch
from ._train_worker import RaggedPages

WORKER = Path(__file__).resolve().with_name("_train_worker.py")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------- fixtures


def _world(codebook_size: int):
    syn = data.generate_synthetic(data.SyntheticConfig(num_items=200, num_users=80, requests_per_user=10.0, seed=0),
                                  progress=False)
    samples = data.build_page_samples(syn.log(), syn.catalog, max_history=20)
    codebooks = train_rq_kmeans(syn.catalog.embeddings, RQKMeansConfig(levels=3, codebook_size=codebook_size, seed=0),
                                progress=False)
    table = build_sid_table(syn.catalog.embeddings, list(syn.catalog.ids), codebooks)
    return syn, samples, table


@pytest.fixture(scope="module")
def world():
    return _world(16)


@pytest.fixture(scope="module")
def page_ds(world):
    syn, samples, table = world
    return make_sft_dataset(samples, syn.catalog, table, "page", max_history=20)


@pytest.fixture(scope="module")
def point_ds(world):
    syn, samples, table = world
    return make_sft_dataset(samples, syn.catalog, table, "point", max_history=20)


@pytest.fixture(scope="module")
def ragged_ds(page_ds):
    return RaggedPages(page_ds)


def _pickled(ds, tmp_path_factory, name):
    path = tmp_path_factory.mktemp("data") / name
    path.write_bytes(pickle.dumps(ds))
    return path


@pytest.fixture(scope="module")
def page_pickle(page_ds, tmp_path_factory):
    return _pickled(page_ds, tmp_path_factory, "page.pkl")


@pytest.fixture(scope="module")
def ragged_pickle(ragged_ds, tmp_path_factory):
    return _pickled(ragged_ds, tmp_path_factory, "ragged.pkl")


@pytest.fixture
def one_thread():
    """Same thread count as the subprocess workers, so float results can match bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train(ds, out, *, model_seed=0, resume=False, callback=None, validate=None, **config):
    """One SFT run; unpacked (one example per row, the default) unless ``packing=True``."""
    model = build_model("tiny", ds.vocab, seed=model_seed)
    result = train_sft(model, ds, SFTConfig(out_dir=str(out), **config), resume=resume, progress=False,
                       callback=callback, validate=validate)
    return model, result


def checkpoint_weights(out) -> dict[str, torch.Tensor]:
    return ckpt.load_checkpoint(ckpt.latest_checkpoint(Path(out) / ckpt.CHECKPOINT_DIR))["model"]


def assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= atol, f"weights differ by up to {worst:.3g} (tolerance {atol:.1g})"


def entropies(ds) -> tuple[float, float]:
    """Unigram entropy of the dataset's target tokens, and the entropy given the position in the target (a
    context-free predictor that knows the layout: which SID level, where <eos> goes). Nats."""
    targets = [ds[i][1] for i in range(len(ds))]
    tokens = np.concatenate(targets)
    positions = np.concatenate([np.arange(len(t)) for t in targets])

    def entropy(values):
        p = np.bincount(values) / len(values)
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    by_position = sum((positions == q).mean() * entropy(tokens[positions == q]) for q in np.unique(positions))
    return entropy(tokens), float(by_position)


# --------------------------------------------------------------------------------------------- schedule


def test_warmup_is_linear_over_ceil_one_percent_then_cosine_to_the_floor():
    assert warmup_steps(300, 0.01) == 3  # 0.01 * 300 = 3.0000000000000004 must not become 4
    assert warmup_steps(250, 0.01) == 3  # ceil(2.5)
    assert warmup_steps(10, 0.01) == 1
    assert warmup_steps(50, 0.0) == 0
    total, w = 203, warmup_steps(203, 0.01)
    assert w == 3
    assert [lr_multiplier(s, total, w) for s in range(4)] == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0])
    assert lr_multiplier(3 + 50, total, w) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))  # a quarter in
    assert lr_multiplier(3 + 100, total, w) == pytest.approx(0.5)  # half way
    assert lr_multiplier(3 + 100, total, w, min_lr_ratio=0.1) == pytest.approx(0.55)
    assert lr_multiplier(total, total, w, min_lr_ratio=0.1) == pytest.approx(0.1)  # the floor
    assert lr_multiplier(0, 50, 0) == 1.0  # no warm-up: start at the peak
    decay = [lr_multiplier(s, total, w) for s in range(w, total)]
    assert all(a > b for a, b in zip(decay, decay[1:]))  # strictly decreasing after warm-up

    # the torch scheduler: after k optimiser steps the lr is the one for step k
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=2e-3)
    sched = warmup_cosine_scheduler(opt, total, 0.01)
    seen = []
    for _ in range(total):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([2e-3 * lr_multiplier(s, total, w) for s in range(total)], rel=1e-12)


# ------------------------------------------------------------------------------------------- data order


def test_global_batches_are_a_pure_function_of_seed_and_step():
    plan1 = BatchPlan(dataset_size=50, global_batch_size=8, world_size=1, grad_accum=1, steps_per_epoch=6,
                      total_steps=14)
    plan4 = BatchPlan(50, 8, world_size=2, grad_accum=2, steps_per_epoch=6, total_steps=14)
    single = list(StepBatchSampler(plan1, seed=3, rank=0))
    ranks = [list(StepBatchSampler(plan4, seed=3, rank=r)) for r in range(2)]
    assert len(single) == 14 and all(len(m) == 2 for r in ranks for m in r)
    for step in range(14):
        expected = global_batch_indices(plan1, 3, step).tolist()
        assert single[step] == expected
        # rank 0's two micro-batches, then rank 1's: the same 8 examples
        assert sum(ranks[0][2 * step:2 * step + 2] + ranks[1][2 * step:2 * step + 2], []) == expected
    # resuming at step 9 yields exactly the tail
    assert list(StepBatchSampler(plan1, seed=3, rank=0, start_step=9)) == single[9:]
    # an epoch is a permutation (the 2 left-over examples are dropped), epochs are ordered differently
    epoch0 = sum(single[:6], [])
    assert len(set(epoch0)) == 48 and set(epoch0) <= set(range(50))
    assert single[6] != single[0] and single[6] == epoch_order(50, 3, 1)[:8].tolist()


def _plan(dataset_size, *, global_batch_size, grad_accum=1, world_size=1, max_steps=None, epochs=1.0):
    return BatchPlan.make(dataset_size, global_batch_size=global_batch_size, grad_accum=grad_accum,
                          world_size=world_size, max_steps=max_steps, epochs=epochs)


def test_batch_plan_rejects_bad_splits():
    with pytest.raises(ValueError, match=r"global_batch_size=10 must be divisible by world_size x grad_accum = 2 x 2"):
        _plan(100, global_batch_size=10, grad_accum=2, world_size=2)
    with pytest.raises(ValueError, match=r"has 5 examples, fewer than one global batch"):
        _plan(5, global_batch_size=8)
    plan = _plan(100, global_batch_size=8, epochs=2.5)
    assert (plan.steps_per_epoch, plan.total_steps) == (12, 30)
    assert _plan(100, global_batch_size=8, max_steps=7).total_steps == 7
    with pytest.raises(ValueError, match=r"unknown SFTConfig keys \['lr_warmup'\]"):
        SFTConfig.from_dict({"lr_warmup": 0.1})
    assert SFTConfig.from_dict({"betas": [0.9, 0.99]}).betas == (0.9, 0.99)


# --------------------------------------------------------------------------------------------- learning


@pytest.fixture(scope="module")
def page_run(page_ds, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "pw-ntp"
    model, result = train(page_ds, out, lr=3e-3, global_batch_size=16, max_steps=100, log_every=10)
    return out, model, result


def test_tiny_model_learns_well_below_the_unigram_baseline(page_ds, page_run):
    _, _, result = page_run
    unigram, by_position = entropies(page_ds)
    losses = [r["loss"] for r in result.history]
    assert unigram == pytest.approx(3.56, abs=0.05) and by_position == pytest.approx(2.35, abs=0.05)
    assert losses[0] > 3.3  # starts near log(vocab) / the unigram entropy
    assert result.loss < 0.65 * unigram  # ~1.9 nats vs 3.56
    # and below what knowing only the layout (SID level, <eos> slot) gives: it uses the history
    assert result.loss < by_position - 0.2
    assert result.step == 100 and result.epoch == pytest.approx(100 / (len(page_ds) // 16))


def _train_capturing_grads(ds, out, **config):
    """Train, recording every parameter's gradient as the optimiser step sees it (keyed by ``id(param)``)."""
    grads = []

    def hook(optimizer, args, kwargs):
        grads.append({id(p): p.grad.detach().clone() for g in optimizer.param_groups for p in g["params"]})

    handle = register_optimizer_step_pre_hook(hook)
    try:
        model, result = train(ds, out, **config)
    finally:
        handle.remove()
    return model, result, grads


def test_grad_accumulation_equals_one_big_batch(ragged_ds, tmp_path):
    common = dict(lr=3e-3, global_batch_size=8, max_steps=1, log_every=1)
    big, r1, g1 = _train_capturing_grads(ragged_ds, tmp_path / "b8", grad_accum=1, **common)
    acc, r2, g2 = _train_capturing_grads(ragged_ds, tmp_path / "a2x4", grad_accum=2, **common)
    assert r1.history[0]["loss"] == pytest.approx(r2.history[0]["loss"], abs=1e-6)
    # The accumulated gradient equals the big batch's. Pages differ in length, so this holds only because
    # each micro-batch is weighted by its share of the global batch's target tokens (a plain mean of the two
    # micro-batch losses would be off by percents).
    assert len(g1) == len(g2) == 1
    named = [(name, p1, p2, g1[0][id(p1)], g2[0][id(p2)])
             for (name, p1), p2 in zip(big.named_parameters(), acc.parameters())]
    for name, _, _, a, b in named:
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * a.abs().max().item(), msg=name)
    assert r1.history[0]["grad_norm"] == pytest.approx(r2.history[0]["grad_norm"], rel=1e-6)
    # Adam's first update is -lr * g / (|g| + eps): where the gradient is float noise around zero
    # (|g| ~ eps = 1e-8) that noise moves a weight by up to ~lr/2; everywhere else the weights agree.
    # (k_proj biases, for one, get ~0 gradient: a shift of every key is invisible to softmax)
    checked = 0
    for name, p1, p2, g, _ in named:
        signal = g.abs() > 1e-6
        torch.testing.assert_close(p2[signal], p1[signal], rtol=0, atol=1e-6, msg=name)
        assert (p2 - p1).abs().max() <= 3e-3, name
        checked += int(signal.sum())
    assert checked > 0.9 * sum(p.numel() for p in big.parameters())
    fresh = build_model("tiny", ragged_ds.vocab, seed=0).state_dict()
    assert max((fresh[k] - big.state_dict()[k]).abs().max().item() for k in fresh) > 1e-3  # it did train


def torchrun(data_path, out, config, *extra) -> subprocess.Popen:
    return launch(WORKER, "--data", data_path, "--out", out, "--config", json.dumps(config), *extra)


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_gloo_ranks_match_one_process(ragged_ds, ragged_pickle, tmp_path, parallel):
    """torchrun, 2 CPU ranks on gloo, global batch 8 = 2 ranks x 2 accumulated micro-batches x 2 (gradient
    sync only on the last), pages of different lengths (so the token weighting across ranks matters), vs one
    plain process with 2 x 4."""
    # eps=1e-6: Adam turns float noise on ~0 gradient entries (|g| ~ 1e-9) into +-lr/2 moves with eps=1e-8;
    # a larger eps keeps the two runs' summation-order noise at float scale
    config = dict(lr=3e-3, eps=1e-6, global_batch_size=8, grad_accum=2, max_steps=6, log_every=1,
                  checkpoint_every=3, keep_checkpoints=0, parallel=parallel)
    out = tmp_path / parallel
    proc = torchrun(ragged_pickle, out, config)
    _, single = train(ragged_ds, tmp_path / "single", **config)  # meanwhile, one plain process
    finish(proc)

    ranked = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in ranked] == list(range(1, 7))  # rank 0 alone logs
    assert [r["examples"] for r in ranked] == [8 * s for s in range(1, 7)]
    assert [r["loss"] for r in ranked] == pytest.approx([r["loss"] for r in single.history], abs=2e-5)  # 1e-6
    assert [r["grad_norm"] for r in ranked] == pytest.approx([r["grad_norm"] for r in single.history], rel=1e-4)
    state = ckpt.load_checkpoint(ckpt.checkpoint_path(out / ckpt.CHECKPOINT_DIR, 6))
    assert state["step"] == 6 and state["world_size"] == 2 and len(state["rng"]) == 2
    assert_same_weights(state["model"], checkpoint_weights(tmp_path / "single"), atol=5e-5)  # seen: 6e-6
    assert (out / "model").is_dir()
    if parallel == "ddp":
        return
    # FSDP resume: sharded optimiser state goes through the full checkpoint and back, bit for bit
    resumed = tmp_path / "fsdp-resumed"
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "model")
    ckpt.checkpoint_path(resumed / ckpt.CHECKPOINT_DIR, 6).unlink()
    finish(torchrun(ragged_pickle, resumed, config, "--resume"))
    again = ckpt.load_checkpoint(ckpt.checkpoint_path(resumed / ckpt.CHECKPOINT_DIR, 6))
    assert all(torch.equal(again["model"][k], state["model"][k]) for k in state["model"])
    assert [r["loss"] for r in read_metrics(resumed / "metrics.jsonl")] == [r["loss"] for r in ranked]


# ------------------------------------------------------------------------------------------- packed


def test_packed_training_learns_and_reports_what_it_shared(point_ds, tmp_path):
    """Packing on: point-wise examples of one page and a user's growing histories share a row; a step holds about
    global_batch_size examples, config.json says how many positions packing saved, and the model learns, a
    little slower per step than unpacked (a user's samples share a batch; measured here after 60 steps of 64:
    loss 2.33 packed vs 2.19 unpacked)."""
    _, packed = train(point_ds, tmp_path / "packed", packing=True, lr=3e-3, global_batch_size=64, max_steps=60,
                      log_every=20)
    _, plain = train(point_ds, tmp_path / "plain", lr=3e-3, global_batch_size=64, max_steps=60, log_every=20)
    saved = json.loads((tmp_path / "packed" / "config.json").read_text())
    assert saved["packed"] is True and json.loads((tmp_path / "plain" / "config.json").read_text())["packed"] is False
    assert saved["positions_packed"] < 0.6 * saved["positions_unpacked"]  # measured ~0.39 here
    examples = packed.history[-1]["examples"]
    assert 0.7 * 60 * 64 < examples < 1.3 * 60 * 64  # about global_batch_size per step
    losses = [r["loss"] for r in packed.history]
    assert losses[-1] < losses[0] - 1.0
    assert packed.loss - plain.loss < 0.3


def test_packed_run_resumes_to_the_uninterrupted_weights(page_ds, tmp_path):
    config = dict(packing=True, lr=3e-3, global_batch_size=8, grad_accum=2, max_steps=12, log_every=1,
                  checkpoint_every=6, keep_checkpoints=0)
    _, whole = train(page_ds, tmp_path / "whole", **config)
    shutil.copytree(tmp_path / "whole", tmp_path / "cut")
    ckpt.checkpoint_path(tmp_path / "cut" / ckpt.CHECKPOINT_DIR, 12).unlink()
    _, resumed = train(page_ds, tmp_path / "cut", resume=True, **config)
    assert resumed.resumed_from == 6
    a, b = checkpoint_weights(tmp_path / "whole"), checkpoint_weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same batches after the resume, bit for bit
    assert [r["loss"] for r in read_metrics(tmp_path / "cut" / "metrics.jsonl")] == [r["loss"] for r in whole.history]
    with pytest.raises(ValueError, match="pack_tokens"):
        train(page_ds, tmp_path / "cut", resume=True, **{**config, "pack_tokens": 64})


@pytest.mark.slow
def test_packed_two_gloo_ranks_match_one_process(page_ds, page_pickle, tmp_path):
    """Packed micro-batches: 2 ranks x 1 vs 1 process x 2 accumulated take the same micro-batches of a step."""
    config = dict(packing=True, lr=3e-3, eps=1e-6, global_batch_size=16, max_steps=5, log_every=1, keep_checkpoints=0)
    proc = torchrun(page_pickle, tmp_path / "ddp", config)
    _, single = train(page_ds, tmp_path / "single", grad_accum=2, **config)
    finish(proc)
    ranked = read_metrics(tmp_path / "ddp" / "metrics.jsonl")
    assert [r["examples"] for r in ranked] == [r["examples"] for r in single.history]
    assert [r["loss"] for r in ranked] == pytest.approx([r["loss"] for r in single.history], abs=2e-5)
    assert_same_weights(checkpoint_weights(tmp_path / "ddp"), checkpoint_weights(tmp_path / "single"), atol=5e-5)


def test_loader_workers_and_cpu_bf16(page_ds, tmp_path):
    common = dict(lr=3e-3, global_batch_size=8, max_steps=3, log_every=1)
    _, inline = train(page_ds, tmp_path / "inline", **common)
    _, workers = train(page_ds, tmp_path / "workers", num_workers=2, **common)
    assert [r["loss"] for r in workers.history] == [r["loss"] for r in inline.history]  # the same batches
    _, bf16 = train(page_ds, tmp_path / "bf16", bf16=True, **common)
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["bf16"] is True
    assert json.loads((tmp_path / "inline" / "config.json").read_text())["bf16"] is False  # auto: off on CPU
    assert [r["loss"] for r in bf16.history] == pytest.approx([r["loss"] for r in inline.history], abs=0.05)
    assert [r["loss"] for r in bf16.history] != [r["loss"] for r in inline.history]  # autocast did run


# ------------------------------------------------------------------------------------------- resume


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_weights(page_ds, page_pickle, tmp_path, one_thread):
    config = dict(lr=3e-3, global_batch_size=8, max_steps=24, log_every=1, checkpoint_every=8)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), "--data", str(page_pickle), "--out", str(killed), "--config",
         json.dumps(config), "--threads", "1", "--sleep-after", "8", "--sleep", "0.5"],
        cwd=ROOT, env=worker_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        reference, _ = train(page_ds, tmp_path / "uninterrupted", **config)  # meanwhile
        deadline = time.monotonic() + 120
        while True:  # kill it once it has checkpointed step 8 and trained on past it
            metrics = killed / "metrics.jsonl"
            steps = [r["step"] for r in read_metrics(metrics)] if metrics.exists() else []
            if steps and max(steps) >= 11 and ckpt.checkpoint_path(killed / ckpt.CHECKPOINT_DIR, 8).exists():
                break
            assert proc.poll() is None, f"worker ended early:\n{proc.stdout.read()[-4000:]}"
            assert time.monotonic() < deadline, "worker made no progress"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert [s for s, _ in ckpt.list_checkpoints(killed / ckpt.CHECKPOINT_DIR)] == [8]
    assert not (killed / "model").exists()

    resumed, result = train(page_ds, killed, resume=True, **config)
    assert result.resumed_from == 8 and result.step == 24
    mine, theirs = resumed.state_dict(), reference.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine), "resumed weights differ from the uninterrupted run"
    # the metrics file reads as one run: the killed run's records after step 8 were replaced
    merged = read_metrics(killed / "metrics.jsonl")
    uninterrupted = read_metrics(tmp_path / "uninterrupted" / "metrics.jsonl")
    assert [r["step"] for r in merged] == list(range(1, 25))
    assert [r["loss"] for r in merged] == [r["loss"] for r in uninterrupted]


def test_resume_with_another_vocabulary_names_both(page_ds, tmp_path):
    train(page_ds, tmp_path / "run", global_batch_size=8, max_steps=2)
    syn, samples, table = _world(8)
    other = make_sft_dataset(samples, syn.catalog, table, "page", max_history=20)
    assert list(other.vocab.level_sizes) != [16, 16, 16]
    with pytest.raises(ckpt.VocabularyMismatchError) as err:
        train(other, tmp_path / "run", resume=True, global_batch_size=8, max_steps=4)
    message = str(err.value)
    assert "[16, 16, 16]" in message and str(list(other.vocab.level_sizes)) in message
    # a dataset built on other SIDs than the model's is refused up front too
    with pytest.raises(ValueError, match=r"dataset's SID vocabulary has level_sizes"):
        train_sft(build_model("tiny", page_ds.vocab), other, SFTConfig(out_dir=str(tmp_path / "x")), progress=False)


def test_fresh_run_will_not_mix_into_an_old_runs_checkpoints(page_ds, tmp_path):
    train(page_ds, tmp_path, global_batch_size=8, max_steps=1)
    with pytest.raises(FileExistsError, match="resume=True"):
        train(page_ds, tmp_path, global_batch_size=8, max_steps=1)
    _, result = train(page_ds, tmp_path, global_batch_size=8, max_steps=2, overwrite=True)
    assert result.step == 2 and result.resumed_from is None
    _, again = train(page_ds, tmp_path, resume=True, global_batch_size=8, max_steps=2)  # already finished
    assert again.resumed_from == 2 and again.step == 2 and again.loss == result.loss


# ------------------------------------------------------------------------------------- model selection


class ScriptedValidation:
    """A validate function that returns scripted scores per call and keeps a copy of the weights it saw."""

    def __init__(self, scores):
        self.scores, self.seen = list(scores), []

    def __call__(self, model):
        assert not model.training  # validation runs in eval mode
        self.seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return {"NDCG@10": self.scores[len(self.seen) - 1], "HR@10": 0.5}


def test_validation_selects_the_best_weights_and_stops_early(page_ds, tmp_path):
    # validated every 2 steps; best at the 2nd validation (step 4), then 2 without improvement -> stop at step 8
    scripted = ScriptedValidation([0.1, 0.3, 0.2, 0.25, 0.9])
    model, result = train(page_ds, tmp_path, global_batch_size=8, max_steps=20, eval_every=2, patience=2,
                          validate=scripted)
    assert result.stopped_early and result.step == 8 and len(scripted.seen) == 4
    assert result.best["step"] == 4 and result.best["value"] == 0.3 and result.best["metrics"]["HR@10"] == 0.5
    assert_same_weights(model.state_dict(), scripted.seen[1], atol=0)  # the caller's model holds the selection
    saved = type(model).from_pretrained(result.model_dir)
    assert_same_weights(saved.state_dict(), scripted.seen[1], atol=0)
    records = [r for r in read_metrics(result.metrics_path) if "valid/NDCG@10" in r]
    assert [r["step"] for r in records] == [2, 4, 6, 8] and records[-1]["best/step"] == 4
    # a stopped run resumed stays stopped with the same selection
    again_model, again = train(page_ds, tmp_path, resume=True, global_batch_size=8, max_steps=20, eval_every=2,
                               patience=2, validate=ScriptedValidation([]))
    assert again.stopped_early and again.step == 8 and again.best == result.best
    assert_same_weights(again_model.state_dict(), scripted.seen[1], atol=0)


def test_validation_once_per_epoch_by_default_and_unknown_metric(page_ds, tmp_path):
    per_epoch = len(page_ds) // 64
    scripted = ScriptedValidation([0.1, 0.2, 0.3, 0.4])
    _, result = train(page_ds, tmp_path / "a", global_batch_size=64, epochs=2, validate=scripted)
    assert len(scripted.seen) == 2 and result.best["step"] == 2 * per_epoch and not result.stopped_early
    with pytest.raises(ValueError, match=r"select_metric 'HR@5' is not among"):
        train(page_ds, tmp_path / "b", global_batch_size=16, max_steps=2, eval_every=1, select_metric="HR@5",
              validate=ScriptedValidation([0.1]))


# ------------------------------------------------------------------------------------------ checkpoints


def _failing_save(real_save, fail_on_call: int):
    calls = {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == fail_on_call:
            f.write(b"half a checkpoint")  # the crash happens mid-write
            raise OSError("No space left on device (simulated)")
        return real_save(obj, f, *args, **kwargs)

    return save


def test_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    directory = tmp_path / "ck"
    first = ckpt.save_checkpoint(directory, 2, {"model": {"w": torch.arange(4.0)}, "vocab_level_sizes": [4]})
    before = first.read_bytes()
    monkeypatch.setattr(torch, "save", _failing_save(torch.save, 1))
    with pytest.raises(OSError, match="simulated"):  # overwriting the same step
        ckpt.save_checkpoint(directory, 2, {"model": {"w": torch.zeros(4)}, "vocab_level_sizes": [4]})
    monkeypatch.setattr(torch, "save", _failing_save(torch.save, 1))
    with pytest.raises(OSError, match="simulated"):  # a new step
        ckpt.save_checkpoint(directory, 4, {"model": {"w": torch.zeros(4)}, "vocab_level_sizes": [4]})
    assert first.read_bytes() == before
    assert sorted(p.name for p in directory.iterdir()) == ["step_00000002.pt"]  # no temporaries, no step 4
    assert torch.equal(ckpt.load_checkpoint(first)["model"]["w"], torch.arange(4.0))


def test_training_crash_during_a_checkpoint_then_resume(page_ds, tmp_path, monkeypatch):
    config = dict(global_batch_size=8, max_steps=6, checkpoint_every=2, log_every=1)
    monkeypatch.setattr(torch, "save", _failing_save(torch.save, 2))  # the step-4 checkpoint dies
    with pytest.raises(OSError, match="simulated"):
        train(page_ds, tmp_path, **config)
    monkeypatch.undo()
    directory = tmp_path / ckpt.CHECKPOINT_DIR
    assert [p.name for p in directory.iterdir()] == ["step_00000002.pt"]
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(directory))
    assert state["step"] == 2 and state["epoch"] == 0 and state["position"] == 2
    assert set(state) >= {"model", "optimizer", "scheduler", "rng", "vocab_level_sizes", "config"}
    assert state["vocab_level_sizes"] == [16, 16, 16]
    _, result = train(page_ds, tmp_path, resume=True, **config)
    assert result.resumed_from == 2 and result.step == 6
    assert [s for s, _ in ckpt.list_checkpoints(directory)] == [4, 6]  # keep_checkpoints=2


# ---------------------------------------------------------------------------------------- metrics, plots


def test_metrics_jsonl_and_loss_plots(page_run, point_ds, tmp_path):
    out, _, result = page_run
    records = read_metrics(out / "metrics.jsonl")
    assert records == result.history
    assert [r["step"] for r in records] == list(range(10, 101, 10))
    steps_per_epoch = 777 // 16
    for r in records:
        assert set(r) >= {"step", "loss", "lr", "tokens_per_s", "examples", "epoch", "elapsed", "grad_norm"}
        assert r["examples"] == 16 * r["step"]
        assert r["epoch"] == pytest.approx(r["step"] / steps_per_epoch)
        assert r["lr"] == pytest.approx(3e-3 * lr_multiplier(r["step"] - 1, 100, 1))  # lr of that step
        assert r["tokens_per_s"] > r["target_tokens_per_s"] > 0 and r["loss"] > 0
    assert all(a["elapsed"] < b["elapsed"] for a, b in zip(records, records[1:]))
    assert (out / "loss.png").read_bytes()[:8] == PNG_MAGIC and result.plot_path == out / "loss.png"
    config = json.loads((out / "config.json").read_text())
    assert config["total_steps"] == 100 and config["vocab_level_sizes"] == [16, 16, 16]
    assert (out / "model" / "genrec.json").exists()

    # point-wise NTP next to it, as in the paper's Fig. 2a; TensorBoard asked for but optional
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        train(point_ds, tmp_path / "ntp", lr=3e-3, global_batch_size=16, max_steps=20, log_every=5,
              tensorboard=True, plot=False)
    try:
        import torch.utils.tensorboard  # noqa: F401
        assert (tmp_path / "ntp" / "tb").is_dir()
    except Exception:
        assert not (tmp_path / "ntp" / "tb").exists()
    assert len(read_metrics(tmp_path / "ntp" / "metrics.jsonl")) == 4
    png = plot_loss_curves({"PW-NTP": out / "metrics.jsonl", "NTP": tmp_path / "ntp"}, tmp_path / "fig2a.png",
                           smooth=0.5)
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000
    assert plot_loss_curves([out, tmp_path / "ntp"], tmp_path / "dirs.png").read_bytes()[:8] == PNG_MAGIC
    with pytest.warns(UserWarning, match="no 'accuracy' records"), pytest.raises(ValueError, match="'accuracy'"):
        plot_loss_curves([out], tmp_path / "none.png", key="accuracy")

    # a run killed mid-write leaves a torn last line; readers skip it
    torn = tmp_path / "torn.jsonl"
    torn.write_text((out / "metrics.jsonl").read_text() + '{"step": 110, "lo')
    assert read_metrics(torn) == records
