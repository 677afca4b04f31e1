"""The `genrec` console script."""

from __future__ import annotations

import argparse
import sys


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
        print(f"  genrec::{op:<20} {', '.join(kernel_devices(op)) or 'none'}")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
