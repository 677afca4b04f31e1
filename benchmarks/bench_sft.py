"""SFT throughput: the Token Merger vs none (prefill and a training step), and shared-prefix packing vs one
example per row (whole training runs on real data).

    python benchmarks/bench_sft.py                       # Token Merger: CPU, tiny/small presets
    python benchmarks/bench_sft.py --device cuda --preset base --dtype bfloat16
    python benchmarks/bench_sft.py --packing             # packed vs unpacked SFT (Scientific + synthetic pages)
    python benchmarks/bench_sft.py --packing --curves    # + a 20-epoch tiny run on Scientific both ways
    python benchmarks/bench_sft.py --packing-quality      # quality of the packing modes on heavy users (--seeds)
    python benchmarks/bench_sft.py --rl                  # GRPO-SR teacher forcing: one prompt per query vs per row

Token Merger. Prefill: one forward pass over the prompt (<bos>, history, <sep>) of a batch, the serving cost
the Token Merger targets (N + 2 positions instead of L*N + 2). Training: forward + backward of page-wise NTP on
a batch with a 10-item target page; tokens/s counts supervised target tokens.

Packing. The same model (same seed) and data trained ``--steps`` optimiser steps by ``train_sft`` three ways:
``packing=False`` (``global_batch_size`` examples per step in random order, padded to the longest), packed with
exact windows (a user's samples whose histories are prefixes of one another share one copy of it; the same loss
as unpacked), and packed with ``history_stride = max_history // 2`` (histories cut by the cap start on a stride
grid, so sliding windows share rows too): examples/s and target tokens/s of the training loop, the positions each
way lays out, and the speedups. Data: Amazon 2018 Scientific (LC-Rec JSON, leave-one-out, history 20, page = the
next item; skipped when ``../shared/data`` is absent) and synthetic page logs of heavy users whose histories reach
the 50-item cap (``HEAVY_USERS``: 40 requests per user; median history 42 items), page-wise and point-wise.
``--curves`` adds the whole 20-epoch ``tiny`` training on Scientific both ways (validation-selected, as
`genrec train sft` runs it): wall time, selected validation HR@10 / NDCG@10, and a loss-vs-examples plot.

Packing quality (``--packing-quality``). Packing changes which samples share a step (a user's, in one row), and
``history_stride`` what a sample sees (its last 26..50 items instead of 50). So the `tiny` page-wise model is
trained on the heavy users' page logs in each of ``QUALITY_MODES`` (unpacked; packed with no cap on a row's samples;
packed, 4 per row; packed with the stride) for ``--seeds`` (the synthetic Table 1 recipe: 12 epochs, batch 64,
patience 2, validation on every validation page), and each selected model is tested once: HR@10 / NDCG@10, mean
and std. ``--modes`` (';'-separated) runs a subset, so processes can split the work; every run's row is kept as
JSON under ``--out`` and the table is rebuilt from all of them (``--modes ""``: rebuild only).

RL teacher forcing (``--rl``). A GRPO-SR step teacher-forces G rollouts and |D+| positives per query after the
query's prompt (``genrec_ext.train.rl.teacher_forced_hidden``): laid out packed (the prompt once per query, each
target a block reading it) against one row per target (the prompt G + |D+| times). Forward + backward of the
hidden states, Q = 16 queries, G = 8, |D+| = 3, ``--histories`` items, 4 SID levels, interleaved timing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import (benchmark_parser, machine_description, measure, measure_interleaved, parse_ints,  # noqa: E402
                    print_row, write_table)

from genrec_ext.model import build_model  # noqa: E402
from genrec_ext.sid import SIDVocab  # noqa: E402
from genrec_ext.sid.vocab import EOS  # noqa: E402
from genrec_ext.train import SFTBatch  # noqa: E402


def random_batch(vocab: SIDVocab, batch: int, history: int, page: int, gen: torch.Generator) -> SFTBatch:
    codes = torch.stack([torch.randint(k, (batch, history + page), generator=gen) for k in vocab.level_sizes], -1)
    tokens = vocab.tokens(codes)
    target = torch.cat([tokens[:, history:].reshape(batch, -1), torch.full((batch, 1), EOS)], 1)
    return SFTBatch(tokens[:, :history], torch.full((batch,), history), target, torch.full((batch,), target.shape[1]))


SCIENTIFIC = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon18-scientific"


#: A synthetic world of the demo's log size whose users are heavy (40 requests each instead of 4), so that the
#: page histories reach the 50-item cap: what "page logs with 50-item histories" means. The demo's world has a median
#: history of 5 items, too short for a cap to matter.
HEAVY_USERS = {"num_users": 350, "requests_per_user": 40.0, "seed": 0}


def packing_tasks(args) -> dict:
    """name -> (task, objective): Scientific when present, the heavy users' synthetic page logs (both objectives)."""
    from genrec_ext.experiments import SYNTHETIC, Table1Spec, sequence_task, synthetic_task

    tasks = {}
    if "scientific" not in args.datasets:
        pass
    elif SCIENTIFIC.exists():
        tasks["scientific"] = (sequence_task(SCIENTIFIC, max_history=20, sids=args.sci_sids, sid_dir=args.out / "sids_scientific",
                                             sid={"levels": 3, "codebook_size": 256, "seed": 0,
                                                  "text_fields": ["title", "brand", "categories"]}), "page")
    else:
        print(f"{SCIENTIFIC} not found: Scientific rows skipped")
    if "synthetic-50" in args.datasets:
        spec = Table1Spec.load(SYNTHETIC)
        heavy = synthetic_task(HEAVY_USERS, max_history=50, sid=spec.sid, sid_dir=args.out / "sids_synthetic_heavy")
        tasks["synthetic-50"], tasks["synthetic-50 point"] = (heavy, "page"), (heavy, "point")
    return tasks


def packing_main(args) -> None:
    import tempfile
    import time

    from genrec_ext.train import SFTConfig, make_sft_dataset, train_sft

    rows = []
    scratch = tempfile.TemporaryDirectory(prefix="bench_sft_")  # checkpoints and models: not results
    runs = Path(scratch.name)
    for name, (task, objective) in packing_tasks(args).items():
        ds = make_sft_dataset(task.splits.train, task.catalog, task.table, objective, max_history=task.max_history)
        for preset in args.presets:
            result = {"data": name, "preset": preset, "examples": len(ds)}
            stride = max(1, task.max_history // 2)
            for key, packing, history_stride in (("unpacked", False, None), ("packed", True, None),
                                                 ("stride", True, stride)):
                model = build_model(preset, ds.vocab, seed=0)
                config = SFTConfig(out_dir=str(runs / f"{name}_{preset}_{key}".replace(" ", "_")),
                                   packing=packing, history_stride=history_stride,
                                   global_batch_size=args.global_batch, max_steps=args.steps, log_every=args.steps,
                                   lr=3e-3, plot=False, overwrite=True, device=args.device)
                started = time.perf_counter()
                run = train_sft(model, ds, config, progress=False)
                setup = time.perf_counter() - started - run.elapsed
                record = run.history[-1]
                saved = __import__("json").loads((Path(config.out_dir) / "config.json").read_text())
                result[f"{key}_ex_s"] = record["examples"] / run.elapsed
                result[f"{key}_tok_s"] = record["target_tokens_per_s"]
                result[f"{key}_positions_s"] = record["tokens_per_s"]
                if packing:
                    result[f"{key}_setup_s"] = setup
                    result[f"{key}_position_ratio"] = saved["positions_unpacked"] / saved["positions_packed"]
            result["stride"] = stride
            result["packed_speedup"] = result["packed_ex_s"] / result["unpacked_ex_s"]
            result["stride_speedup"] = result["stride_ex_s"] / result["unpacked_ex_s"]
            rows.append(result)
            print_row(result)
    note = (f"{machine_description(args.device)}; fp32; {args.steps} optimiser steps of about {args.global_batch} examples "
            "each way, same model seed and data. *_ex_s: training examples/s of the loop; *_tok_s: supervised target "
            "tokens/s; *_positions_s: real (unpadded) input positions/s; *_position_ratio: positions laid out one example "
            "per row / packed (the shared histories); packed = exact windows, stride = history_stride `stride`; "
            "*_speedup = examples/s over unpacked; *_setup_s: planning the packed rows (once per run).")
    scratch.cleanup()
    write_table(rows, ["data", "preset", "examples", "unpacked_ex_s", "packed_ex_s", "packed_speedup", "stride",
                       "stride_ex_s", "stride_speedup", "unpacked_tok_s", "packed_tok_s", "stride_tok_s",
                       "packed_position_ratio", "stride_position_ratio", "packed_setup_s", "stride_setup_s"],
                "SFT throughput: shared-prefix packing vs one example per row", args.out / f"sft_packing_{args.device}", note)
    if args.curves and SCIENTIFIC.exists():
        curves_main(args)


def curves_main(args) -> None:
    """The 20-epoch tiny run on Scientific, unpacked and packed, validation-selected as `genrec train sft` does."""
    from genrec_ext.eval import make_validator
    from genrec_ext.train import SFTConfig, make_sft_dataset, plot_loss_curves, train_sft

    task, objective = packing_tasks(argparse.Namespace(**{**vars(args), "datasets": ["scientific"]}))["scientific"]
    ds = make_sft_dataset(task.splits.train, task.catalog, task.table, objective, max_history=task.max_history)
    rows, curves = [], {}
    for packing in (False, True):
        key = "packed" if packing else "unpacked"
        model = build_model("tiny", ds.vocab, seed=0)
        validate = make_validator(task.splits.valid, task.catalog, task.table, max_history=task.max_history)
        config = SFTConfig(out_dir=str(args.out / "runs" / f"scientific_tiny_20ep_{key}"), packing=packing, epochs=20,
                           global_batch_size=256, lr=3e-3, patience=3, plot=False, overwrite=True, device=args.device)
        run = train_sft(model, ds, config, progress=False, validate=validate)
        best = run.best or {}
        row = {"run": key, "epochs_run": round(run.epoch, 2), "train_s": run.elapsed,
               "selected_epoch": round(best.get("step", 0) / max(1, run.step) * run.epoch, 2),
               **{f"valid_{k}": v for k, v in best.get("metrics", {}).items()}}
        rows.append(row)
        print_row(row)
        curves[f"{key} ({run.elapsed:.0f} s)"] = Path(config.out_dir) / "metrics.jsonl"
    rows.append({"run": "unpacked / packed time", "train_s": rows[0]["train_s"] / rows[1]["train_s"]})
    write_table(rows, ["run", "epochs_run", "selected_epoch", "train_s", "valid_HR@10", "valid_NDCG@10"],
                "20-epoch tiny SFT on Scientific: unpacked vs packed", args.out / f"sft_packing_curves_{args.device}",
                f"{machine_description(args.device)}; `genrec train sft` defaults (batch 256, lr 3e-3, patience 3, "
                "validation every epoch on up to 4,096 queries).")
    plot_loss_curves(curves, args.out / f"sft_packing_curves_{args.device}.png", x="examples", smooth=0.6,
                     title="SFT loss on Scientific (tiny): unpacked vs packed")


#: the SFTConfig fields of each --packing-quality mode
QUALITY_MODES = {"unpacked": {"packing": False}, "packed, no cap": {"packing": True, "pack_members": None},
                "packed, 4 per row": {"packing": True, "pack_members": 4},
                "stride 25, no cap": {"packing": True, "pack_members": None, "history_stride": 25}}


def packing_quality_main(args) -> None:
    import json
    import time

    import numpy as np

    from genrec_ext.eval import evaluate_model, make_validator
    from genrec_ext.experiments import SYNTHETIC, Table1Spec, synthetic_task
    from genrec_ext.train import SFTConfig, make_sft_dataset, train_sft

    spec = Table1Spec.load(SYNTHETIC)
    task = synthetic_task(HEAVY_USERS, max_history=50, sid=spec.sid, sid_dir=args.out / "sids_synthetic_heavy")
    ds = make_sft_dataset(task.splits.train, task.catalog, task.table, "page", max_history=50)
    runs = args.out / "packing_quality"
    runs.mkdir(parents=True, exist_ok=True)
    for mode in filter(None, args.modes):  # --modes "": only rebuild the table from the runs kept
        for seed in args.seeds:
            model = build_model("tiny", ds.vocab, seed=seed)
            validate = make_validator(task.splits.valid, task.catalog, task.table, max_queries=None, max_history=50,
                                      seed=seed)
            config = SFTConfig(out_dir=str(runs / f"{mode}_{seed}".replace(", ", "_").replace(" ", "_")),
                               **QUALITY_MODES[mode], epochs=12, global_batch_size=64, lr=3e-3, patience=2, seed=seed, plot=False,
                               overwrite=True, device=args.device)
            started = time.perf_counter()
            run = train_sft(model, ds, config, progress=False, validate=validate)
            test = evaluate_model(model, task.splits.test, task.catalog, task.table, beam_width=50, ks=(10,),
                                  max_history=50, progress=False)
            row = {"mode": mode, "seed": seed, "epochs_run": round(run.epoch, 2), "train_s": run.elapsed,
                   "wall_s": time.perf_counter() - started,
                   **{f"valid_{k}": v for k, v in run.best["metrics"].items()},
                   "test_HR@10": test["HR@10"], "test_NDCG@10": test["NDCG@10"]}
            (Path(config.out_dir).parent / f"{Path(config.out_dir).name}.json").write_text(json.dumps(row))
            print_row(row)
    rows = [json.loads(f.read_text()) for f in sorted(runs.glob("*.json"))]
    metrics = ["valid_HR@10", "valid_NDCG@10", "test_HR@10", "test_NDCG@10", "train_s"]
    table = []
    for mode in QUALITY_MODES:
        mine = [r for r in rows if r["mode"] == mode]
        if mine:
            table += mine
            table.append({"mode": f"{mode} mean ± std ({len(mine)} seeds)", "seed": "",
                          **{m: f"{np.mean([r[m] for r in mine]):.4f} ± {np.std([r[m] for r in mine]):.4f}"
                             for m in metrics}})
    from genrec_ext.baselines import MostPop, evaluate_recommender

    popular = MostPop()
    popular.fit(task, progress=False)
    floor = {split: evaluate_recommender(popular, task, split, ks=(10,), progress=False) for split in ("valid", "test")}
    table.append({"mode": "MostPop (the floor)", "seed": "", **{f"{split}_{m}": round(floor[split][m], 4)
                                                                 for split in floor for m in ("HR@10", "NDCG@10")}})
    write_table(table, ["mode", "seed", "epochs_run", *metrics], "Packed SFT on heavy users' page logs: quality",
                args.out / f"sft_packing_quality_{args.device}",
                f"{machine_description(args.device)}; heavy users' synthetic page logs (HEAVY_USERS, max_history 50), "
                "tiny preset, page-wise with the Token Merger, 12 epochs, batch 64, lr 3e-3, patience 2, selected on "
                "every validation page, tested once (beam 50). Modes: QUALITY_MODES (no cap: pack_members None; 4 per "
                "row: pack_members 4, what 'auto' gives at batch 64; stride 25: history_stride 25).")


def rl_main(args) -> None:
    from genrec_ext.train.rl import teacher_forced_hidden

    vocab = SIDVocab((64, 64, 64, 8))
    gen = torch.Generator().manual_seed(0)
    queries, groups, positives = 16, 8, 3
    rows = []
    for preset in args.presets:
        model = build_model(preset, vocab, seed=0).to(args.device)
        for history in args.histories:
            def codes(n):
                return torch.stack([torch.randint(k, (n,), generator=gen) for k in vocab.level_sizes], -1)

            hist = vocab.tokens(torch.stack([codes(history) for _ in range(queries)])).to(args.device)
            hist_len = torch.full((queries,), history, device=args.device)
            query = torch.arange(queries, device=args.device).repeat_interleave(groups + positives)
            targets = vocab.tokens(codes(len(query))).to(args.device)

            def packed():
                teacher_forced_hidden(model, hist, hist_len, targets, query).sum().backward()

            def one_per_row():
                batch = SFTBatch(hist[query], hist_len[query], targets, torch.full_like(query, vocab.levels))
                lay = model.layout(batch)
                model.hidden_states(lay.inputs_embeds, lay.attention_mask)[lay.label_mask].sum().backward()

            ms = measure_interleaved({"packed": packed, "one_per_row": one_per_row}, args.device,
                                     budget_s=args.budget, rounds=3)
            row = {"preset": preset, "history": history, "rows": len(query), "one_per_row_ms": ms["one_per_row"],
                   "packed_ms": ms["packed"], "speedup": ms["one_per_row"] / ms["packed"]}
            rows.append(row)
            print_row(row)
    write_table(rows, ["preset", "history", "rows", "one_per_row_ms", "packed_ms", "speedup"],
                "GRPO-SR teacher forcing: one prompt per query (packed) vs one per row",
                args.out / f"rl_teacher_forcing_{args.device}",
                f"{machine_description(args.device)}; fp32; forward + backward of the final hidden states of "
                f"{queries} queries x ({groups} rollouts + {positives} positives), 4 SID levels, Token Merger on.")


def main() -> None:
    ap = benchmark_parser(__doc__)
    ap.add_argument("--packing", action="store_true", help="packed vs unpacked training runs (see above)")
    ap.add_argument("--curves", action="store_true", help="with --packing: the 20-epoch tiny run on Scientific")
    ap.add_argument("--packing-quality", action="store_true", help="quality of the packing modes (see above)")
    ap.add_argument("--rl", action="store_true", help="GRPO-SR teacher forcing, packed vs one row per target")
    ap.add_argument("--seeds", type=parse_ints, default=[0, 1, 2], help="--packing-quality: seeds")
    ap.add_argument("--modes", default=";".join(QUALITY_MODES),
                    help=f"--packing-quality: ';'-separated, of {list(QUALITY_MODES)}")
    ap.add_argument("--presets", default="tiny,small", help="--packing: model presets")
    ap.add_argument("--steps", type=int, default=40, help="--packing: optimiser steps per run")
    ap.add_argument("--global-batch", type=int, default=256, help="--packing: examples per step")
    ap.add_argument("--sci-sids", help="--packing: an existing Scientific SID table (default: built and cached)")
    ap.add_argument("--datasets", default="scientific,synthetic-50", help="--packing: which data")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--histories", type=parse_ints, default=[20, 100, 500])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--page", type=int, default=10)
    ap.add_argument("--budget", type=float, default=1.0)
    args = ap.parse_args()
    if args.rl:
        args.presets = args.presets.split(",")
        rl_main(args)
        return
    if args.packing_quality:
        args.modes = args.modes.split(";")
        packing_quality_main(args)
        return
    if args.packing:
        args.presets, args.datasets = args.presets.split(","), args.datasets.split(",")
        packing_main(args)
        return
    vocab = SIDVocab((256, 256, 256))
    gen = torch.Generator().manual_seed(0)
    models = {tm: build_model(args.preset, vocab, token_merger=tm).to(args.device) for tm in (True, False)}
    autocast = torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    rows = []
    for history in args.histories:
        batch = random_batch(vocab, args.batch, history, args.page, gen).to(args.device)
        prompt_only = SFTBatch(batch.history, batch.history_len, batch.target[:, :1], torch.ones_like(batch.target_len))
        result = {"history": history}
        for tm, model in models.items():
            name = "tm" if tm else "no_tm"

            def prefill(model=model):
                with torch.no_grad(), autocast:
                    lay = model.layout(prompt_only)
                    model.hidden_states(lay.inputs_embeds, lay.attention_mask)

            def train_step(model=model):
                with autocast:
                    out = model(batch)
                out.loss.backward()

            result[f"{name}_prompt_len"] = int(model.layout(prompt_only).prompt_len[0])
            result[f"{name}_prefill_ms"] = measure(prefill, args.device, budget_s=args.budget)
            step_ms = measure(train_step, args.device, budget_s=args.budget)
            result[f"{name}_train_tok_s"] = int(batch.target_len.sum()) / step_ms * 1e3
        result["prefill_speedup"] = result["no_tm_prefill_ms"] / result["tm_prefill_ms"]
        result["train_speedup"] = result["tm_train_tok_s"] / result["no_tm_train_tok_s"]
        rows.append(result)
        print_row(result)
    note = (f"{machine_description(args.device)}, preset {args.preset}, {args.dtype}, batch {args.batch}, 3 SID levels, "
            f"page of {args.page} items. prefill_speedup = prefill time without / with the Token Merger; "
            "train_speedup = training target tokens/s with / without.")
    write_table(rows, ["history", "tm_prompt_len", "no_tm_prompt_len", "tm_prefill_ms", "no_tm_prefill_ms",
                       "prefill_speedup", "tm_train_tok_s", "no_tm_train_tok_s", "train_speedup"],
                "GenRec prefill and SFT throughput: Token Merger vs none", args.out / f"sft_{args.device}_{args.preset}", note)


if __name__ == "__main__":
    main()
