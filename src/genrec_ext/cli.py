"""The `genrec` console script."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from genrec_ext._config import DEFAULT_MAX_HISTORY


def _cmd_info(args: argparse.Namespace) -> int:
    import torch

    import genrec_ext
    from genrec_ext.ops import OPS, kernel_devices

    print(f"genrec_ext {genrec_ext.__version__}")
    print(f"torch      {torch.__version__}")
    cuda = f"yes ({torch.version.cuda}, {torch.cuda.device_count()} device(s))" if torch.cuda.is_available() else (
        f"built with CUDA {torch.version.cuda}, no device visible" if torch.version.cuda else "no (CPU build of torch)"
    )
    print(f"CUDA       {cuda}")
    print("ops        kernels")
    for op in OPS:
        print(f"  genrec::{op:<{max(map(len, OPS))}} {', '.join(kernel_devices(op)) or 'none'}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from genrec_ext.demo import run_demo

    return run_demo(seed=args.seed, out=args.out, progress=not args.quiet)


def _cmd_sid_build(args: argparse.Namespace) -> int:
    from genrec_ext.sid import RQKMeansConfig
    from genrec_ext.sid.build import build_sids, item_embeddings, load_catalog

    catalog = load_catalog(args.items)
    fields = args.text_fields.split(",") if args.text_fields else None
    vectors = item_embeddings(catalog, embeddings=args.embeddings, text_fields=fields, progress=not args.quiet)
    sizes = [int(k) for k in args.codebook_size.split(",")]
    config = RQKMeansConfig(levels=args.levels, codebook_size=sizes[0] if len(sizes) == 1 else sizes,
                            iterations=args.iterations, normalize=args.normalize, seed=args.seed)
    table = build_sids(catalog, vectors, config, args.out, collisions=args.collisions, progress=not args.quiet)
    print(f"SIDs for {len(table)} items ({vectors.shape[1]}-d embeddings), {table.levels} levels "
          f"{table.level_sizes}, written to {args.out}")
    print(table.stats.summary())
    return 0


def _cmd_train_sft(args: argparse.Namespace) -> int:
    import yaml

    from genrec_ext.data import load_splits
    from genrec_ext.model import GenRecModel, ModelConfig, build_model
    from genrec_ext.sid import SIDTable
    from genrec_ext.train import make_sft_dataset
    from genrec_ext.train.sft import SFTConfig, train_sft

    table = SIDTable.load(args.sids)
    catalog, splits = load_splits(args.data, max_history=args.max_history, page_size=args.page_size,
                                  valid_days=args.valid_days, progress=not args.quiet)
    dataset = make_sft_dataset(splits.train, catalog, table, args.objective, max_history=args.max_history)
    vocab = dataset.vocab
    if args.init:
        model = GenRecModel.from_pretrained(args.init)
        if model.vocab != vocab:
            raise SystemExit(f"--init {args.init} was trained on SID levels {list(model.vocab.level_sizes)}, but "
                             f"--sids {args.sids} has {list(vocab.level_sizes)}: use a model of this vocabulary")
    else:
        model = build_model(ModelConfig.load(args.config), dataset.vocab, seed=args.seed,
                            token_merger=False if args.no_token_merger else None)
    values = yaml.safe_load(open(args.train_config)) if args.train_config else {}
    flags = {"out_dir": args.out, "max_steps": args.steps, "epochs": args.epochs, "global_batch_size": args.batch_size,
             "grad_accum": args.grad_accum, "lr": args.lr, "checkpoint_every": args.checkpoint_every,
             "packing": args.packing, "pack_tokens": args.pack_tokens, "length_splits": args.length_splits,
             "pack_members": args.pack_members, "history_stride": args.history_stride,
             "seed": args.seed, "bf16": args.bf16, "tensorboard": args.tensorboard or None, "overwrite": args.overwrite or None,
             "eval_every": args.eval_every, "patience": args.patience, "select_metric": args.select_metric}
    values.update({k: v for k, v in flags.items() if v is not None})
    try:
        config = SFTConfig.from_dict({**RECIPE, **values})
    except ValueError as exc:
        raise SystemExit(f"genrec train sft: {exc}") from None
    if config.history_stride is not None and not config.packing:
        raise SystemExit("genrec train sft: --history-stride shares packed rows; it needs --packing")
    if config.history_stride is not None and config.history_stride > (args.max_history or 0):
        raise SystemExit(f"genrec train sft: --history-stride {config.history_stride} must be <= --max-history "
                         f"{args.max_history}")
    validate = None
    if args.validate:
        if len(splits.valid) == 0:
            raise SystemExit(f"{args.data} has no validation split to select the model on (page logs: --valid-days "
                             f">= 1); pass --no-validate to train without model selection")
        from genrec_ext.eval import make_validator

        validate = make_validator(splits.valid, catalog, table, beam_width=args.valid_beam,
                                  max_queries=args.valid_queries, max_history=args.max_history, seed=args.seed)
    print(f"{len(dataset):,} {args.objective}-wise examples from {len(splits.train):,} training pages; model "
          f"{sum(p.numel() for p in model.parameters()):,} parameters, Token Merger "
          f"{'on' if model.merger is not None else 'off'}")
    result = train_sft(model, dataset, config, resume=args.resume, progress=not args.quiet, validate=validate)
    stopped = " (stopped early)" if result.stopped_early else ""
    print(f"finished step {result.step}/{result.total_steps}{stopped}; outputs in {args.out}")
    if result.best is not None:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in result.best["metrics"].items())
        print(f"selected step {result.best['step']} on validation ({shown}); saved as {Path(args.out) / 'model'}")
    return 0


#: `genrec train sft`'s training recipe where neither --train-config nor a flag says otherwise (tuned on the
#: validation split of Amazon Scientific, see docs/RESULTS.md). Packed: as good on validation (3 seeds on
#: Scientific, one on the synthetic pages) and 2x faster (benchmarks/results/sft_packing_cpu.md); --no-packing
#: lays out one example per row.
RECIPE = {"epochs": 20, "global_batch_size": 256, "lr": 3e-3, "patience": 3, "packing": True}




def _load_reward(directory: str, catalog, table):
    """The hybrid reward of a `genrec reward train` run directory (its model/ or the run itself); a wrong
    directory is named with the flag that gave it."""
    from genrec_ext.reward import HybridReward

    try:
        return HybridReward.load(directory, catalog, table)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"--reward {exc} (genrec reward train --out)") from None


def _cmd_train_rl(args: argparse.Namespace) -> int:
    import json

    from genrec_ext.eval import make_rl_validator
    from genrec_ext.model import GenRecModel
    from genrec_ext.train.rl import RLConfig, train_rl

    flags = {"out_dir": args.out, "num_generations": args.num_generations, "alpha": args.alpha,
             "gate": False if args.no_gate else None, "tau": args.tau, "constrained": False if args.unconstrained else None,
             "beta": args.beta, "scale_rewards": args.scale_rewards, "num_iterations": args.num_iterations,
             "epsilon": args.epsilon, "lr": args.lr, "batch_size": args.batch_size, "steps": args.steps,
             "epochs": args.epochs, "eval_every": args.eval_every, "select_metric": args.select_metric,
             "checkpoint_every": args.checkpoint_every, "seed": args.seed, "device": args.device,
             "max_history": args.max_history, "overwrite": args.overwrite or None}
    try:
        config = RLConfig.from_dict({k: v for k, v in flags.items() if v is not None})
        if not (Path(args.init) / "genrec.json").exists():
            raise FileNotFoundError(f"--init {args.init} is not a GenRec model directory (an SFT run's model/)")
        model = GenRecModel.from_pretrained(args.init)
        catalog, splits, table = _reward_data(args)
        if model.vocab.level_sizes != tuple(table.level_sizes):
            raise ValueError(f"--init {args.init} was trained on SID levels {list(model.vocab.level_sizes)}, but the "
                             f"SID table has {list(table.level_sizes)}: use the --sids the model was trained with")
        reward = _load_reward(args.reward, catalog, table)
        validate = None
        if args.validate:
            if len(splits.valid) == 0:
                raise ValueError(f"{args.data} has no validation split (page logs: --valid-days >= 1); pass "
                                 f"--no-validate to train without model selection")
            validate = make_rl_validator(splits.valid, catalog, table, reward, beam_width=args.valid_beam,
                                         max_queries=args.valid_queries, max_history=config.max_history or
                                         args.max_history or 50, seed=config.seed)
        result = train_rl(model, reward, (catalog, splits, table), config, resume=args.resume,
                          progress=not args.quiet, validate=validate)
    except (FileNotFoundError, FileExistsError, ValueError, json.JSONDecodeError) as exc:
        raise SystemExit(f"genrec train rl: {exc}") from None
    variant = ("GRPO-SR" if config.alpha > 0 else "GRPO") + ("" if config.gate else " w/o gate")
    print(f"{variant}: {result.step}/{result.total_steps} steps ({'constrained' if config.constrained else 'unconstrained'} "
          f"rollouts, G={config.num_generations}); outputs in {args.out}")
    if result.start is not None:
        print("SFT start (valid): " + ", ".join(f"{k} {v:.4f}" for k, v in result.start.items()))
    if result.best is not None:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in result.best["metrics"].items())
        print(f"selected step {result.best['step']} on validation {config.select_metric} ({shown}); saved as "
              f"{result.model_dir}")
    return 0


def _cmd_train_plot(args: argparse.Namespace) -> int:
    from genrec_ext.train.metrics import plot_loss_curves

    runs = dict(run.split("=", 1) if "=" in run else (run, run) for run in args.runs)
    print(plot_loss_curves(runs, args.out, smooth=args.smooth, x=args.x))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from genrec_ext.data import load_splits
    from genrec_ext.eval import (
        DEFAULT_KS,
        evaluate_model,
        format_table,
        item_popularity,
        sample_queries,
        write_report,
    )
    from genrec_ext.model import GenRecModel
    from genrec_ext.sid import SIDTable
    from genrec_ext.train.distributed import resolve_device

    table = SIDTable.load(args.sids)
    model = GenRecModel.from_pretrained(args.model)
    if model.vocab.level_sizes != tuple(table.level_sizes):
        raise SystemExit(f"--model {args.model} uses SID levels {list(model.vocab.level_sizes)} but --sids "
                         f"{args.sids} has {table.level_sizes}")
    device = resolve_device(args.device or "auto")
    model.to(device)
    from genrec_ext.experiments import SYNTHETIC

    try:
        if args.data == SYNTHETIC:
            catalog, splits, _ = _reward_data(args)
        else:
            if args.world:
                raise SystemExit("--world only applies to --data synthetic")
            catalog, splits = load_splits(args.data, max_history=args.max_history, page_size=args.page_size,
                                          valid_days=args.valid_days, progress=not args.quiet)
        reward = _load_reward(args.reward, catalog, table).to(device) if args.reward else None
        ks = DEFAULT_KS  # evaluate_model keeps those up to the beam width
        if args.ks:
            ks = tuple(sorted({int(k) for k in args.ks.split(",")}))
            if not ks or ks[0] < 1 or ks[-1] > args.beam:
                raise ValueError(f"--ks {args.ks}: cut-offs must be between 1 and --beam {args.beam}")
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"genrec eval: {exc}") from None
    samples = getattr(splits, args.split)
    if len(samples) == 0:
        raise SystemExit(f"genrec eval: the {args.split} split of {args.data} is empty"
                         + (" (page logs: pass --valid-days >= 1 for a validation split)" if args.split == "valid" else ""))
    samples = sample_queries(samples, args.max_queries, args.seed)
    popularity = item_popularity(splits.train)
    modes = ["constrained", "unconstrained"] if args.unconstrained else ["constrained"]
    results = {mode: evaluate_model(model, samples, catalog, table, beam_width=args.beam, constrained=mode == "constrained",
                                    ks=ks, popularity=popularity, batch_size=args.batch_size, max_history=args.max_history,
                                    progress=not args.quiet, reward=reward) for mode in modes}
    print(format_table(results))
    md, js = write_report(results, args.out, f"eval_{args.split}")
    print(f"report: {md}, {js}")
    return 0


def _read_histories(args: argparse.Namespace) -> list[tuple[object, list]]:
    """(user, item ids oldest first) pairs: one from --user-history (a JSON list), or one per line of --users
    (JSONL objects with "user" and "history")."""
    import json

    if args.users:
        pairs = []
        for n, line in enumerate(Path(args.users).read_text().splitlines(), 1):
            if not line.strip():
                continue
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("history"), list):
                raise ValueError(f"--users {args.users} line {n}: expected an object with a \"history\" list of item "
                                 f"ids (and a \"user\"), got {line[:80]!r}")
            pairs.append((record.get("user", n), record["history"]))
        if not pairs:
            raise ValueError(f"--users {args.users} holds no user")
        return pairs
    history = json.loads(Path(args.user_history).read_text())
    if not isinstance(history, list):
        raise ValueError(f"--user-history {args.user_history} must hold a JSON list of item ids, oldest first")
    return [(None, history)]


def _load_recommender(args: argparse.Namespace, command: str):
    import json

    from genrec_ext.serve import Recommender

    try:
        return Recommender.load(args.model, args.sids, args.items, device=args.device, max_history=args.max_history,
                                beam=args.beam)
    except (FileNotFoundError, ValueError, json.JSONDecodeError) as exc:
        raise SystemExit(f"genrec {command}: {exc}") from None


def _cmd_recommend(args: argparse.Namespace) -> int:
    import json

    from tqdm.auto import tqdm

    if (args.users is None) == (args.user_history is None):
        raise SystemExit("genrec recommend: give --user-history (one user) or --users (a JSONL file, with --out)")
    if args.users and not args.out:
        raise SystemExit("genrec recommend: --users needs --out (the JSONL file of recommendations to write)")
    if args.top_k < 1:
        raise SystemExit(f"genrec recommend: --top-k must be >= 1, got {args.top_k}")
    recommender = _load_recommender(args, "recommend")
    try:
        pairs = _read_histories(args)
        indices = [recommender.indices(h) for _, h in pairs]
    except (FileNotFoundError, ValueError, json.JSONDecodeError) as exc:  # UnknownItemError is a ValueError
        raise SystemExit(f"genrec recommend: {exc}") from None
    results = []
    batches = range(0, len(pairs), args.batch_size)
    for start in tqdm(batches, desc="recommend", unit="batch", disable=args.quiet or len(batches) == 1):
        results += recommender.recommend(indices[start:start + args.batch_size], args.top_k, args.exclude_seen)
    if args.users:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        with open(tmp, "w") as f:
            for (user, _), ranked in zip(pairs, results):
                f.write(json.dumps({"user": user, **recommender.describe(ranked)}, default=str) + "\n")
        tmp.replace(out)  # nothing half-written
        print(f"{len(results):,} users -> {out}")
        return 0
    shown = recommender.describe(results[0])
    for rank, (item, score) in enumerate(zip(shown["items"], shown["scores"]), 1):
        title = shown["titles"][rank - 1] if "titles" in shown else ""
        print(f"{rank:>3}. {item}  (log p = {score:.3f})  {title}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from genrec_ext.serve import serve

    if args.max_batch < 1 or args.max_top_k < 1:
        raise SystemExit(f"genrec serve: --max-batch and --max-top-k must be >= 1, got {args.max_batch} and "
                         f"{args.max_top_k}")
    recommender = _load_recommender(args, "serve")

    def ready(server) -> None:
        print(f"genrec serve: {recommender.num_items:,} items on {recommender.device}; listening on {server.url} "
              "(POST /recommend, GET /health; Ctrl-C stops)", flush=True)

    try:
        serve(recommender, args.host, args.port, max_batch=args.max_batch, max_top_k=args.max_top_k,
              model_name=str(args.model), ready=ready)
    except OSError as exc:  # e.g. the port is taken
        raise SystemExit(f"genrec serve: cannot listen on {args.host}:{args.port}: {exc}") from None
    return 0


def _settings(args: argparse.Namespace) -> dict:
    """``--config`` YAML, then every ``--set key=value`` (dotted keys nest: ``sft.epochs=5``)."""
    import yaml

    values = yaml.safe_load(open(args.config)) if args.config else {}
    if not isinstance(values, dict):
        raise SystemExit(f"--config {args.config} must hold a mapping of settings")
    for item in args.set or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: expected key=value")
        *parents, leaf = key.split(".")
        node = values
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(raw)
    return values


def _baseline_task(args: argparse.Namespace):
    from genrec_ext.baselines import load_task
    from genrec_ext.experiments import SYNTHETIC, synthetic_task

    if args.data == SYNTHETIC:
        return synthetic_task(max_history=args.max_history, sid={"codebook_size": 64}, progress=not args.quiet)
    return load_task(args.data, sids=args.sids, max_history=args.max_history, progress=not args.quiet)


def _cmd_baseline_list(args: argparse.Namespace) -> int:
    from genrec_ext.baselines import RECOMMENDERS

    for name, cls in RECOMMENDERS.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name:<14} {'generative' if cls.generative else 'item-level':<11} {doc}")
    return 0


def _cmd_baseline_train(args: argparse.Namespace) -> int:
    from genrec_ext import baselines as B
    from genrec_ext.eval import format_table, write_report

    try:
        rec = B.make(args.name, _settings(args))
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    task = _baseline_task(args)
    report = rec.fit(task, out_dir=Path(args.out) / "train", progress=not args.quiet)
    rec.save(args.out)
    selected = {k: v for k, v in report.selected.items() if k != "history"}
    print(f"{args.name}: fitted in {report.seconds:.1f} s; selected on validation: {selected}; saved to {args.out}")
    valid = B.evaluate_recommender(rec, task, "valid", progress=not args.quiet)
    print(format_table({f"{args.name} (valid)": valid}))
    write_report({f"{args.name} (valid)": valid}, args.out, "valid")
    return 0


def _cmd_baseline_eval(args: argparse.Namespace) -> int:
    from genrec_ext import baselines as B
    from genrec_ext.eval import format_table, write_report

    task = _baseline_task(args)
    rec = B.load_recommender(args.model, task)
    metrics = B.evaluate_recommender(rec, task, args.split, progress=not args.quiet)
    label = f"{rec.name} ({args.split})"
    print(format_table({label: metrics}))
    md, js = write_report({label: metrics}, args.out, f"eval_{args.split}")
    print(f"report: {md}, {js}")
    return 0


def _cmd_experiment_table1(args: argparse.Namespace) -> int:
    from genrec_ext.experiments import format_summary, run_table1

    seeds = tuple(int(s) for s in args.seeds.split(","))
    rows = args.rows.split(",") if args.rows else None
    try:
        summary = run_table1(args.data, args.out, seeds=seeds, sids=args.sids, rows=rows, smoke=args.smoke,
                             progress=not args.quiet)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    print(format_summary(summary))
    print(f"tables and plot in {args.out} (table1.md, table1.json, table1_loss.png)")
    return 0


def _cmd_experiment_table3(args: argparse.Namespace) -> int:
    from genrec_ext.experiments import format_summary, run_table3

    try:
        seeds = tuple(int(s) for s in args.seeds.split(","))
    except ValueError:
        raise SystemExit(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 0,1,2") from None
    try:
        summary = run_table3(args.out, seeds=seeds, smoke=args.smoke, progress=not args.quiet)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    print(format_summary(summary))
    for check in summary["checks"]:
        print(f"{'holds' if check['holds'] else 'does NOT hold'}: {check['claim']} ({check['compared']})")
    print(f"tables and plot in {args.out} (table3.md, table3.json, table3_rl.png)")
    return 0


def _reward_data(args: argparse.Namespace):
    """(catalogue, splits, SID table) for `genrec reward train`: the built-in synthetic world (as `genrec experiment
    table1 --data synthetic` builds it; --sids caches its SIDs), or a dataset directory as `genrec train sft`
    reads it (page logs: last day = test, --valid-days before it = validation; LC-Rec JSON: leave-one-out)."""
    from genrec_ext.data import load_splits
    from genrec_ext.experiments import SYNTHETIC, Table1Spec, synthetic_task
    from genrec_ext.sid import SIDTable

    if args.data == SYNTHETIC:
        spec = Table1Spec.load(SYNTHETIC)
        from genrec_ext._config import from_mapping
        from genrec_ext.data import SyntheticConfig

        world = from_mapping(SyntheticConfig, {**spec.world, **_settings(argparse.Namespace(config=None, set=args.world))})
        task = synthetic_task(world, max_history=args.max_history or spec.max_history, sid=spec.sid,
                              sid_dir=args.sids, progress=not args.quiet)
        if len(task.table) != len(task.catalog):
            raise SystemExit(f"--sids {args.sids} holds SIDs of {len(task.table)} items, but this synthetic world has "
                             f"{len(task.catalog)}: use another --sids directory for a changed --world")
        return task.catalog, task.splits, task.table
    if args.world:
        raise SystemExit("--world only applies to --data synthetic")
    if not args.sids:
        raise SystemExit(f"--sids is required for --data {args.data} (a SID table directory: genrec sid build)")
    catalog, splits = load_splits(args.data, max_history=args.max_history or DEFAULT_MAX_HISTORY, page_size=1,
                                  valid_days=args.valid_days, progress=not args.quiet)
    return catalog, splits, SIDTable.load(args.sids)


def _cmd_reward_train(args: argparse.Namespace) -> int:
    import json

    from genrec_ext.reward import (
        RewardTrainConfig,
        format_auc_table,
        train_reward_model,
    )
    from genrec_ext.reward.train import MODEL_DIR, REPORT_FILE

    flags = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "patience": args.patience,
             "seed": args.seed, "negatives": args.negatives, "num_negatives": args.num_negatives, "device": args.device}
    model = {k: v for k, v in {"search": args.search, "top_k": args.top_k, "dim": args.dim}.items() if v is not None}
    try:
        config = RewardTrainConfig.from_dict({**{k: v for k, v in flags.items() if v is not None}, "model": model})
        catalog, splits, table = _reward_data(args)
        result = train_reward_model(catalog, splits, table, config, out_dir=args.out, resume=args.resume,
                                    overwrite=args.overwrite, progress=not args.quiet)
    except (FileNotFoundError, FileExistsError, ValueError, json.JSONDecodeError) as exc:
        raise SystemExit(f"genrec reward train: {exc}") from None
    r = result.report
    resumed = f" (resumed after epoch {result.resumed_from})" if result.resumed_from is not None else ""
    print(f"reward model: {r['negatives']} negatives, selected epoch {r['selected_epoch']} of {r['epochs_run']} on "
          f"validation AUC{resumed}; {r['train_seconds']:.0f} s")
    print(format_auc_table(r))
    print(f"model: {Path(args.out) / MODEL_DIR}; table: {Path(args.out) / REPORT_FILE}")
    return 0


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    """The flags every training command shares: resuming, overwriting and quiet runs."""
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--overwrite", action="store_true", help="start afresh in an --out that holds a run")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genrec", description="GenRec: page-wise generative recommendation with fused PyTorch ops."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("info", help="versions, CUDA, and which ops have CPU/CUDA kernels")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("demo", help="run the main job on built-in synthetic data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="genrec_demo", help="output folder (default: ./genrec_demo)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)

    sid = sub.add_parser("sid", help="semantic IDs").add_subparsers(dest="sid_command", metavar="SUBCOMMAND",
                                                                   required=True)
    p = sid.add_parser("build", help="item embeddings -> RQ K-means -> unique SIDs and their codebooks")
    p.add_argument("--items", required=True,
                   help="LC-Rec X.item.json, a directory with items.parquet, or a .parquet/.csv with item_id")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--embeddings", help=".npy [items, dim] matrix, row i = the catalogue's item i")
    source.add_argument("--text-fields", help="embed these comma-separated text fields with MiniLM "
                        "(default when the catalogue has no embeddings: title,brand,categories)")
    p.add_argument("--levels", type=int, default=3)
    p.add_argument("--codebook-size", default="256", help="one size, or one per level (comma-separated)")
    p.add_argument("--iterations", type=int, default=25, help="Lloyd iterations per level at most")
    p.add_argument("--normalize", action="store_true", help="L2-normalise embeddings first")
    p.add_argument("--collisions", choices=["reassign", "append", "error"], default="reassign",
                   help="reassign: move colliding items to free last-level codes (SIDs stay L codes); "
                   "append: add a TIGER disambiguation level; error: fail on any collision")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output directory (replaced atomically)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_sid_build)

    train = sub.add_parser("train", help="training").add_subparsers(dest="train_command", metavar="SUBCOMMAND",
                                                                    required=True)
    p = train.add_parser("sft", help="page-wise (PW-NTP) or point-wise (NTP) SFT; launch with torchrun for DDP")
    p.add_argument("--config", default="tiny", help="model preset (tiny, small, base) or YAML file")
    p.add_argument("--data", required=True, help="dataset directory: logs.parquet + items.parquet, or LC-Rec JSON")
    p.add_argument("--sids", required=True, help="SID table directory (genrec sid build)")
    p.add_argument("--out", required=True, help="run directory: checkpoints, metrics.jsonl, loss.png, model/")
    p.add_argument("--objective", choices=["page", "point"], default="page")
    p.add_argument("--no-token-merger", action="store_true", help="ablation: L prompt tokens per history item")
    p.add_argument("--init", help="start from a saved GenRec model directory instead of --config")
    p.add_argument("--train-config", help="YAML file of SFTConfig fields (flags override it)")
    p.add_argument("--steps", type=int, help="optimizer steps (default: --epochs over the data)")
    p.add_argument("--epochs", type=float)
    p.add_argument("--batch-size", type=int, help="global batch: examples per optimizer step")
    p.add_argument("--grad-accum", type=int)
    p.add_argument("--packing", action=argparse.BooleanOptionalAction, default=None,
                   help="share each user's history among its samples in one packed row (default on: 2x faster "
                   "SFT on Scientific at equal validation quality over 3 seeds); --no-packing: one example per row")
    p.add_argument("--pack-tokens", type=int, help="packed row length at most (default 1024 positions)")
    p.add_argument("--pack-members", type=int, help="samples sharing one packed row at most (default: --batch-size / 16, "
                   "so that a step holds at least 16 rows)")
    p.add_argument("--length-splits", type=int, help="with --packing: micro-batches per step (per --grad-accum slot), "
                   "each of rows of similar length (default 4)")
    p.add_argument("--history-stride", type=int, help="with --packing: a history at the --max-history cap may start "
                   "on a grid of this many items, so a long user's sliding windows share packed rows (each sample then "
                   "sees its last max_history - stride + 1 .. max_history items; default: exact windows)")
    p.add_argument("--lr", type=float)
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--tensorboard", action="store_true")
    p.add_argument("--max-history", type=int, default=DEFAULT_MAX_HISTORY)
    p.add_argument("--page-size", type=int, default=1, help="LC-Rec data: items per training page")
    p.add_argument("--validate", action=argparse.BooleanOptionalAction, default=True,
                   help="select the model on the validation split and stop early (default: on)")
    p.add_argument("--valid-days", type=int, default=1, help="page logs: days before the test day held out "
                   "for validation (LC-Rec data: leave-one-out)")
    p.add_argument("--eval-every", type=int, help="optimiser steps between validations (default: once per epoch)")
    p.add_argument("--patience", type=int, help="validations without improvement before stopping (0: never)")
    p.add_argument("--select-metric", help="validation metric to maximise (HR@10 or NDCG@10; default NDCG@10)")
    p.add_argument("--valid-queries", type=int, default=4096, help="validation queries per check (0: all)")
    p.add_argument("--valid-beam", type=int, default=20, help="beam width of the validation searches")
    p.add_argument("--seed", type=int, default=0)
    _add_run_flags(p)
    p.set_defaults(func=_cmd_train_sft)
    p = train.add_parser("rl", help="GRPO-SR preference alignment of an SFT model (paper §2.3, eq. 8); launch "
                         "with torchrun for DDP")
    p.add_argument("--init", required=True, help="the SFT model directory to start from (a run's model/)")
    p.add_argument("--reward", required=True, help="reward model directory (genrec reward train --out)")
    p.add_argument("--data", required=True, help="'synthetic' (as genrec reward train), a page-log or LC-Rec directory")
    p.add_argument("--sids", help="SID table directory (required unless --data synthetic, where it caches the SIDs)")
    p.add_argument("--out", required=True, help="run directory: checkpoints, metrics.jsonl, rl.png, model/")
    p.add_argument("--world", action="append", metavar="KEY=VALUE", help="synthetic world overrides")
    p.add_argument("--alpha", type=float, help="NLL weight on the positives (0 = GRPO; default 1.0)")
    p.add_argument("--no-gate", action="store_true", help="ablation: no relevance gate (the 'w/o gate' rows)")
    p.add_argument("--tau", type=float, help="gate threshold (default: the reward's)")
    p.add_argument("--unconstrained", action="store_true", help="rollouts without the trie (hallucinations possible)")
    p.add_argument("--num-generations", type=int, help="group size G = rollout beam width (default 8)")
    p.add_argument("--beta", type=float, help="KL weight to the frozen SFT model (default 0)")
    p.add_argument("--scale-rewards", choices=["group", "batch", "none"],
                   help="advantage scaling as TRL's GRPOConfig: by the group's reward std (default), the batch's, or none")
    p.add_argument("--num-iterations", type=int, help="policy updates per rollout batch (default 1, the paper); "
                   "> 1 clips the ratio to the rollout policy as PPO does")
    p.add_argument("--epsilon", type=float, help="clip range of the ratio, only with --num-iterations > 1 (default 0.2)")
    p.add_argument("--steps", type=int, help="optimizer steps (default: --epochs over the training queries)")
    p.add_argument("--epochs", type=float)
    p.add_argument("--batch-size", type=int, help="queries per step (default 16)")
    p.add_argument("--lr", type=float, help="learning rate (default 1e-4)")
    p.add_argument("--max-history", type=int, help=f"history cap (default {DEFAULT_MAX_HISTORY}; synthetic: the table1 setting)")
    p.add_argument("--valid-days", type=int, default=1, help="page logs: days before the test day for validation")
    p.add_argument("--validate", action=argparse.BooleanOptionalAction, default=True,
                   help="validate and keep the best weights (default on)")
    p.add_argument("--eval-every", type=int, help="steps between validations (default 50)")
    p.add_argument("--select-metric", help="validation metric to maximise (R@1, R@10, HR@10, NDCG@10; default R@10)")
    p.add_argument("--valid-queries", type=int, default=512, help="validation queries per check (0: all)")
    p.add_argument("--valid-beam", type=int, default=10, help="beam width of the validation searches")
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--seed", type=int)
    _add_run_flags(p)
    p.set_defaults(func=_cmd_train_rl)

    p = train.add_parser("plot", help="overlay loss curves of runs (e.g. PW-NTP vs NTP)")
    p.add_argument("runs", nargs="+", help="LABEL=RUN_DIR (or RUN_DIR)")
    p.add_argument("--out", required=True, help="PNG path")
    p.add_argument("--x", default="step", help="x axis: step, examples, epoch or elapsed")
    p.add_argument("--smooth", type=float, default=0.0, help="EMA weight in [0, 1)")
    p.set_defaults(func=_cmd_train_plot)

    p = sub.add_parser("eval", help="beam-search a split and report HR@K, NDCG@K, HaR@K, long-tail share")
    p.add_argument("--model", required=True, help="GenRec model directory (a run's model/)")
    p.add_argument("--data", required=True, help="dataset directory (as for train sft)")
    p.add_argument("--sids", required=True, help="SID table directory")
    p.add_argument("--beam", type=int, default=50, help="beam width = recommendations per query")
    p.add_argument("--unconstrained", action="store_true", help="also decode without the trie, to measure HaR")
    p.add_argument("--split", choices=["test", "valid", "train"], default="test")
    p.add_argument("--max-queries", type=int, help="evaluate N queries drawn at random (with --seed) from the split")
    p.add_argument("--seed", type=int, default=0, help="the --max-queries draw")
    p.add_argument("--ks", help="comma-separated cut-offs K of HR@K, NDCG@K, HaR@K, R@K (default: 1,5,10,50 up to --beam)")
    p.add_argument("--page-size", type=int, default=1, help="LC-Rec data: items per test page (the next K items)")
    p.add_argument("--max-history", type=int, default=DEFAULT_MAX_HISTORY)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--reward", help="reward model directory (genrec reward train --out): adds R@K to the table")
    p.add_argument("--world", action="append", metavar="KEY=VALUE", help="--data synthetic: world overrides")
    p.add_argument("--valid-days", type=int, default=0, help="page logs: days before the test day held out as the "
                   "valid split (as train sft used them)")
    p.add_argument("--out", default="eval", help="report directory (Markdown + JSON)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_eval)

    base = sub.add_parser("baseline", help="baselines and GenRec rows through one harness").add_subparsers(
        dest="baseline_command", metavar="SUBCOMMAND", required=True)
    p = base.add_parser("list", help="the recommenders of the harness")
    p.set_defaults(func=_cmd_baseline_list)
    for command in ("train", "eval"):
        p = base.add_parser(command, help="fit NAME (selected on validation) and save it" if command == "train"
                            else "evaluate a saved recommender on a split")
        if command == "train":
            p.add_argument("name", help="recommender (genrec baseline list)")
            p.add_argument("--out", required=True, help="directory for the fitted recommender and its report")
            p.add_argument("--config", help="YAML file of settings")
            p.add_argument("--set", action="append", metavar="KEY=VALUE",
                           help="a setting (repeatable; dotted keys nest, e.g. sft.epochs=5)")
            p.set_defaults(func=_cmd_baseline_train)
        else:
            p.add_argument("--model", required=True, help="directory written by genrec baseline train")
            p.add_argument("--split", choices=["test", "valid"], default="test")
            p.add_argument("--out", default="eval", help="report directory")
            p.set_defaults(func=_cmd_baseline_eval)
        p.add_argument("--data", required=True, help="'synthetic', an LC-Rec directory or a page-log directory")
        p.add_argument("--sids", help="SID table directory (generative recommenders)")
        p.add_argument("--max-history", type=int, default=DEFAULT_MAX_HISTORY)
        p.add_argument("--quiet", action="store_true")

    rw = sub.add_parser("reward", help="the SIM-style reward model of GRPO-SR").add_subparsers(
        dest="reward_command", metavar="SUBCOMMAND", required=True)
    p = rw.add_parser("train", help="train on logged clicks (selected on validation AUC), report AUC vs popularity")
    p.add_argument("--data", required=True, help="'synthetic' (the built-in world of experiment table1), a page-log "
                   "directory or an LC-Rec directory")
    p.add_argument("--sids", help="SID table directory (required unless --data synthetic, where it caches the SIDs)")
    p.add_argument("--out", required=True, help="run directory: checkpoint.pt, metrics.jsonl, model/, reward_auc.json")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="pages (queries) per optimiser step")
    p.add_argument("--lr", type=float)
    p.add_argument("--patience", type=int, help="epochs without a better validation AUC before stopping (0: never)")
    p.add_argument("--search", choices=["hard", "soft"], help="general search unit (default hard)")
    p.add_argument("--top-k", type=int, help="history items the search unit selects per candidate")
    p.add_argument("--dim", type=int, help="embedding width")
    p.add_argument("--negatives", choices=["auto", "exposures", "sampled"],
                   help="exposed-not-clicked items (page logs) or uniform samples (sequence data); default auto")
    p.add_argument("--num-negatives", type=int, help="sampled negatives per positive")
    p.add_argument("--max-history", type=int, help=f"history cap (default {DEFAULT_MAX_HISTORY}; synthetic: the table1 setting)")
    p.add_argument("--valid-days", type=int, default=1, help="page logs: days before the test day for validation")
    p.add_argument("--world", action="append", metavar="KEY=VALUE",
                   help="--data synthetic: a SyntheticConfig field (repeatable), e.g. num_items=200")
    p.add_argument("--device", help="cpu or cuda (default cpu)")
    p.add_argument("--seed", type=int)
    _add_run_flags(p)
    p.set_defaults(func=_cmd_reward_train)

    exp = sub.add_parser("experiment", help="the paper's tables").add_subparsers(
        dest="experiment_command", metavar="SUBCOMMAND", required=True)
    p = exp.add_parser("table1", help="GenRec, its ablations and the baselines, >= 3 seeds, mean ± std")
    p.add_argument("--data", required=True, help="'synthetic' or an LC-Rec directory")
    p.add_argument("--sids", help="SID table directory (default: built from the item text, cached in --out)")
    p.add_argument("--out", required=True, help="experiment directory (re-run to resume)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated model seeds")
    p.add_argument("--rows", help="comma-separated subset of rows (e.g. genrec,sasrec)")
    p.add_argument("--smoke", action="store_true", help="CI-sized budgets")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_experiment_table1)
    p = exp.add_parser("table3", help="SFT vs GRPO / GRPO-SR with and without the gate on synthetic pages, "
                       ">= 3 seeds, mean ± std (HR@50, R@1/10/50, HaR@10)")
    p.add_argument("--out", required=True, help="experiment directory (re-run to resume); a Table 1 synthetic "
                   "directory reuses its SIDs and GenRec SFT runs as the RL starts")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (SFT start and RL run)")
    p.add_argument("--smoke", action="store_true", help="CI-sized budgets")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_experiment_table3)

    p = sub.add_parser("recommend", help="top-K items for one user history, or for a JSONL file of users")
    p.add_argument("--model", required=True, help="GenRec model directory (a run's model/)")
    p.add_argument("--sids", required=True, help="SID table directory")
    p.add_argument("--items", required=True, help="item catalogue, for ids and titles: a dataset directory (as eval "
                   "--data takes), an X.item.json, or a .parquet/.csv with item_id")
    p.add_argument("--user-history", help="JSON file: a list of item ids, oldest first (one user; printed)")
    p.add_argument("--users", help="JSONL file: one {\"user\": ..., \"history\": [item ids]} per line (batch mode)")
    p.add_argument("--out", help="with --users: JSONL of each user's ranked item ids, scores and titles")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--beam", type=int, default=50)
    p.add_argument("--exclude-seen", action="store_true", help="never recommend an item of the user's history")
    p.add_argument("--max-history", type=int, default=DEFAULT_MAX_HISTORY)
    p.add_argument("--batch-size", type=int, default=64, help="users per beam search")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_recommend)

    p = sub.add_parser("serve", help="recommendations over HTTP: POST /recommend {\"history\": [item ids]}, GET /health")
    p.add_argument("--model", required=True, help="GenRec model directory (a run's model/)")
    p.add_argument("--sids", required=True, help="SID table directory")
    p.add_argument("--items", required=True, help="item catalogue (as for recommend --items)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--beam", type=int, default=50, help="beam width at least (wider when top_k + seen items need it)")
    p.add_argument("--max-top-k", type=int, default=100, help="the largest top_k a request may ask for")
    p.add_argument("--max-batch", type=int, default=64, help="queued requests answered by one beam search at most")
    p.add_argument("--max-history", type=int, default=DEFAULT_MAX_HISTORY)
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=_cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
