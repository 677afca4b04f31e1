"""`genrec demo`: the main job on built-in synthetic data, end to end.

Synthetic page logs -> page samples split by day (last day = test, the day before = validation) -> RQ K-means
semantic IDs -> the Token Merger (fused op) over real SID histories, checked against the reference -> a tiny
GenRec model trained page-wise (PW-NTP) and point-wise (NTP), each selected on the validation day, with a
loss-curve overlay -> GRPO-SR: a SIM-style reward model trained on the logged clicks (AUC beside popularity's),
then preference alignment of the page-wise model on unconstrained beam-search rollouts with the relevance gate,
as the GRPO-SR row of `genrec experiment table3` -> trie-constrained beam search on the test day (HR@K, NDCG@K,
R@K: the reward model's best score among the top K) and unconstrained decoding (HaR@K), in one table beside
MostPop (the floor: popularity) and the Oracle (the ceiling: the generator's own click probabilities). Every row
goes through the baselines harness, as `genrec experiment table1` does. Outputs land in ``--out``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from . import baselines as B
from . import data
from . import nn as gnn
from .eval import format_table, write_report
from .experiments.table3 import Table3Spec
from .model import GenRecModel
from .ops import reference
from .sid import RQKMeansConfig, SIDVocab, build_sid_table, train_rq_kmeans
from .sid.vocab import PAD
from .reward import HybridReward, RewardTrainConfig, train_reward_model
from .train import collate, make_sft_dataset, plot_loss_curves
from .train.rl import RLConfig, train_rl

#: The demo's training recipe for both objectives (tiny preset; selected on the validation day).
DEMO_SFT: dict[str, Any] = {"epochs": 8, "global_batch_size": 64, "lr": 3e-3, "patience": 2, "log_every": 20}


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run_demo(seed: int = 0, out: str | Path = "genrec_demo", levels: int = 3, codebook_size: int = 64,
             dim: int = 128, beam: int = 50, sft: dict[str, Any] | None = None, progress: bool = True) -> int:
    out = Path(out)
    torch.manual_seed(seed)
    started = time.perf_counter()

    _step("1. Synthetic page logs")
    syn = data.generate_synthetic(data.SyntheticConfig(seed=seed), progress=progress)
    paths = syn.write_parquet(out / "data")
    print(f"{syn.logs.num_rows:,} log rows, {len(syn.catalog):,} items -> {paths['logs']}")

    _step("2. Page samples: last day = test, the day before = validation")
    samples = data.build_page_samples(syn.log(), syn.catalog, max_history=50, progress=progress)
    splits = data.time_split(samples, test_days=1, valid_days=1)
    print(samples.stats.summary())
    print(splits.summary())

    _step("3. Semantic IDs (RQ K-means on item embeddings)")
    config = RQKMeansConfig(levels=levels, codebook_size=codebook_size, seed=seed)
    codebooks = train_rq_kmeans(syn.catalog.embeddings, config, progress=progress)
    table = build_sid_table(syn.catalog.embeddings, list(syn.catalog.ids), codebooks)
    table.save(out / "sids")
    print(table.stats.summary())
    print(f"SID table -> {out / 'sids'}")
    task = B.Task(syn.catalog, splits, 50, table=table, world=syn, name="synthetic")

    _step("4. Token Merger over real SID histories (fused genrec::token_merge vs reference)")
    ok = _check_token_merger(task, dim)

    _step("5. Page-wise (PW-NTP) vs point-wise (NTP) SFT of a tiny GenRec model, selected on validation")
    recipe = {**DEMO_SFT, **(sft or {})}
    rows: dict[str, B.Recommender] = {"MostPop": B.make("mostpop"), "Oracle": B.make("oracle")}
    curves = {}
    for label, name, objective in (("PW-NTP (GenRec)", "genrec", "page"), ("NTP", "genrec-ntp", "point")):
        rec = B.make(name, {"seed": seed, "beam": beam, "sft": recipe})
        run_dir = out / f"sft_{objective}"
        report = rec.fit(task, out_dir=run_dir, progress=progress)
        rows[label] = rec
        curves[f"{label}, {report.selected['examples']:,} examples"] = run_dir / "metrics.jsonl"
        losses = [r["loss"] for r in _records(run_dir) if "loss" in r]
        print(f"{objective}-wise: {report.selected['examples']:,} examples, loss {losses[0]:.3f} -> {losses[-1]:.3f} "
              f"in {report.selected['steps_run']} steps ({report.seconds:.0f} s); selected step "
              f"{report.selected['step']} (valid NDCG@10 {report.selected['valid_NDCG@10']:.4f}); "
              f"model in {run_dir / 'model'}")
    for row in ("MostPop", "Oracle"):
        rows[row].fit(task, progress=False)
    plot = plot_loss_curves(curves, out / "sft_loss.png", x="epoch",
                            title="SFT loss: page-wise vs point-wise NTP")
    print(f"loss curves -> {plot}")

    _step("6. GRPO-SR: a reward model on the logged clicks, then preference alignment of the PW-NTP model")
    rows["GRPO-SR (GenRec)"], judge = _align(task, out, seed, beam, progress)

    _step(f"7. Test day: beam search (W={beam}) constrained for HR/NDCG/R@K, unconstrained for HaR")
    results = {label: B.evaluate_recommender(rec, task, "test", ks=(1, 5, 10, 50), reward=judge, progress=progress)
               for label, rec in rows.items()}
    columns = ["HR@1", "HR@10", "HR@50", "NDCG@10", "R@1", "R@10", "HaR@10", "LongTail@10", "queries"]
    print(format_table(results, columns=columns))
    md, _ = write_report(results, out, "eval", columns=columns)
    print(f"report -> {md}")
    print(f"\nOutputs in {out.resolve()} ({time.perf_counter() - started:.0f} s)")
    return 0 if ok else 1


def _align(task: B.Task, out: Path, seed: int, beam: int, progress: bool) -> tuple[B.Recommender, HybridReward]:
    """The GRPO-SR row of `genrec experiment table3` (its reward model, RL settings and variant) from the
    page-wise SFT model; returns the aligned recommender and the reward model that judges R@K."""
    spec = Table3Spec.load()
    report = train_reward_model(task.catalog, task.splits, task.table, RewardTrainConfig.from_dict(spec.reward),
                                out_dir=out / "reward", overwrite=True, progress=progress).report
    print(f"reward model: test AUC {report['test']['model']['AUC']:.4f} (popularity {report['test']['popularity']['AUC']:.4f})"
          f", selected epoch {report['selected_epoch']}; -> {out / 'reward'}")
    policy = GenRecModel.from_pretrained(out / "sft_page" / "model")
    config = RLConfig.from_dict({**spec.rl, **spec.rows["GRPO-SR"], "seed": seed, "overwrite": True})
    reward = HybridReward.load(out / "reward", task.catalog, task.table)
    result = train_rl(policy, reward, task, config,
                      out_dir=out / "rl", progress=progress)
    first, last = result.history[0], result.history[-1]
    rollouts = "constrained" if config.constrained else "unconstrained"
    print(f"GRPO-SR (alpha {config.alpha}, gate on, {rollouts} rollouts, G={config.num_generations}): "
          f"{result.step} steps x {config.batch_size} pages ({result.elapsed:.0f} s); rollout reward "
          f"{first['reward']:.3f} -> {last['reward']:.3f}; curves -> {result.plot_path}")
    return B.GenRec.from_model(policy, beam=beam), reward  # train_rl set the gate on its own copy


def _records(run_dir: Path) -> list[dict]:
    from .train import read_metrics

    return read_metrics(run_dir / "metrics.jsonl")


def _check_token_merger(task: B.Task, dim: int) -> bool:
    """The fused op against the pure-PyTorch reference on a batch of real SID histories (fwd + bwd)."""
    vocab = SIDVocab(tuple(task.table.level_sizes))
    dataset = make_sft_dataset(task.splits.train, task.catalog, task.table, "page", max_history=task.max_history)
    first = collate([dataset[i] for i in range(min(256, len(dataset)))])
    tokens, lengths = first.history, first.history_len
    merger = gnn.TokenMerger(vocab.size, dim, vocab.levels, dim, pad_id=PAD)
    start = time.perf_counter()
    merged = merger(tokens)
    merged.square().mean().backward()
    elapsed = time.perf_counter() - start
    params = [merger.embedding.weight, merger.proj.weight, merger.proj.bias]
    fused_grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    ref = reference.token_merge(tokens, *params, pad_id=PAD)
    ref.square().mean().backward()
    ok = torch.allclose(merged, ref, rtol=1e-5, atol=1e-5) and all(
        torch.allclose(g, p.grad, rtol=1e-4, atol=1e-6) for g, p in zip(fused_grads, params))
    print(f"{tokens.shape[0]} users x up to {tokens.shape[1]} history items x {vocab.levels} SID tokens "
          f"({int(lengths.sum()):,} real items) -> {tuple(merged.shape)} prompt vectors, d={dim}")
    print(f"fused fwd+bwd {elapsed * 1e3:.1f} ms; max |fused - reference| = {(merged - ref).abs().max().item():.1e}")
    print("OK: kernel matches the reference" if ok else "MISMATCH: kernel differs from the reference")
    return ok
