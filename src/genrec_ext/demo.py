"""`genrec demo`: the main job on built-in synthetic data, end to end as far as the pipeline is built.

Now: synthetic page logs -> page samples and a last-day split -> item embeddings -> RQ K-means semantic IDs
-> the Token Merger (fused op) over real SID histories, checked against the reference -> a small GenRec
model trained page-wise (PW-NTP) and point-wise (NTP) with a loss-curve overlay -> trie-constrained beam
search (HR@K, NDCG@K) and unconstrained decoding (HaR@K) on the last day, in one comparison table. The
GRPO-SR stage extends this job. Outputs land in ``--out``.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from genrec_ext import data
from genrec_ext import nn as gnn
from genrec_ext.ops import reference
from genrec_ext.sid import RQKMeansConfig, SIDVocab, build_sid_table, train_rq_kmeans
from genrec_ext.sid.vocab import PAD
from genrec_ext.eval import evaluate_model, format_table, item_popularity, write_report
from genrec_ext.model import build_model
from genrec_ext.train import SFTConfig, collate, make_sft_dataset, plot_loss_curves, train_sft


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run_demo(seed: int = 0, out: str | Path = "genrec_demo", levels: int = 3, codebook_size: int = 64,
             dim: int = 128, batch: int = 256, sft_steps: int = 300, beam: int = 20, progress: bool = True) -> int:
    out = Path(out)
    torch.manual_seed(seed)

    _step("1. Synthetic page logs")
    syn = data.generate_synthetic(data.SyntheticConfig(seed=seed), progress=progress)
    paths = syn.write_parquet(out / "data")
    print(f"{syn.logs.num_rows:,} log rows, {len(syn.catalog):,} items -> {paths['logs'] if 'logs' in paths else out / 'data'}")

    _step("2. Page samples, last day held out")
    samples = data.build_page_samples(syn.log(), syn.catalog, max_history=50, progress=progress)
    splits = data.time_split(samples, test_days=1)
    print(samples.stats.summary())
    print(splits.summary())

    _step("3. Semantic IDs (RQ K-means on item embeddings)")
    config = RQKMeansConfig(levels=levels, codebook_size=codebook_size, seed=seed)
    codebooks = train_rq_kmeans(syn.catalog.embeddings, config, progress=progress)
    table = build_sid_table(syn.catalog.embeddings, list(syn.catalog.ids), codebooks)
    table.save(out / "sids")
    print(table.stats.summary())
    print(f"SID table -> {out / 'sids'}")

    _step("4. Token Merger over real SID histories (fused genrec::token_merge vs reference)")
    vocab = SIDVocab(tuple(table.level_sizes))
    train = splits.train
    page_dataset = make_sft_dataset(train, syn.catalog, table, "page", max_history=50)  # trained on in step 5
    first = collate([page_dataset[i] for i in range(min(batch, len(train)))])
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
    fwd_err = (merged - ref).abs().max().item()
    print(f"{tokens.shape[0]} users x up to {tokens.shape[1]} history items x {vocab.levels} SID tokens "
          f"({int(lengths.sum()):,} real items) -> {tuple(merged.shape)} prompt vectors, d={dim}")
    print(f"fused fwd+bwd {elapsed * 1e3:.1f} ms; max |fused - reference| = {fwd_err:.1e}")
    print("OK: kernel matches the reference" if ok else "MISMATCH: kernel differs from the reference")

    _step("5. Page-wise (PW-NTP) vs point-wise (NTP) SFT of a tiny GenRec model")
    runs, models = {}, {}
    names = {"page": "PW-NTP", "point": "NTP"}
    for objective in ("page", "point"):
        dataset = page_dataset if objective == "page" else make_sft_dataset(train, syn.catalog, table, objective,
                                                                            max_history=50)
        model = build_model("tiny", vocab, seed=seed)
        config = SFTConfig(out_dir=str(out / f"sft_{objective}"), max_steps=sft_steps, global_batch_size=32, lr=3e-3,
                           log_every=10, seed=seed, overwrite=True, plot=False)
        result = train_sft(model, dataset, config, progress=progress)
        models[names[objective]] = model
        runs[f"{names[objective]} ({len(dataset):,} examples)"] = result.metrics_path
        print(f"{objective}-wise: {len(dataset):,} examples, loss {result.history[0]['loss']:.3f} -> {result.loss:.3f} "
              f"after {result.step} steps; model in {result.model_dir}")
    plot = plot_loss_curves(runs, out / "sft_loss.png", title="SFT loss: page-wise vs point-wise NTP")
    print(f"loss curves -> {plot}")

    _step(f"6. Last-day evaluation: beam search (W={beam}), constrained and unconstrained")
    popularity = item_popularity(train)
    results = {}
    for name, model in models.items():
        for mode in ("constrained", "unconstrained"):
            results[f"{name}, {mode}"] = evaluate_model(model, splits.test, syn.catalog, table, beam_width=beam,
                                                        constrained=mode == "constrained", ks=(1, 5, 10),
                                                        popularity=popularity, progress=progress)
    columns = ["HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10", "HaR@10", "LongTail@10", "queries"]
    print(format_table(results, columns=columns))
    md, _ = write_report(results, out, "eval", columns=columns)
    print(f"report -> {md}")
    print(f"\nOutputs in {out.resolve()}")
    return 0 if ok else 1
