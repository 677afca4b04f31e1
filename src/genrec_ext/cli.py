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

    return run_demo(seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genrec", description="GenRec: page-wise generative recommendation with fused PyTorch ops."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("info", help="versions, CUDA, and which ops have CPU/CUDA kernels")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("demo", help="run the main job on built-in synthetic data")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
