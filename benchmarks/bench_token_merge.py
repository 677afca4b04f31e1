"""Benchmark genrec::token_merge against eager PyTorch, torch.compile, and a GEMM on a pre-concatenated input.

    python benchmarks/bench_token_merge.py                      # CPU sweep (skips cases over --max-gflop)
    python benchmarks/bench_token_merge.py --device cuda --dtype bfloat16

Eager is the formulation every public GenRec code base uses: ``F.linear(torch.cat([E[s1], E[s2], E[s3]], -1), W, b)``.
"GEMM only" times ``F.linear`` on an already-concatenated input: the floor for any gather-then-GEMM approach.
Tokens follow the model's layout by default (``--token-layout sid``): level l draws from its own block of
``--codebook`` codes at the end of the vocabulary, as in a SID-only vocabulary (V = 4 + 3 x 256) or an LLM
vocabulary extended with SID tokens (V = 151936 + 772). There our op's projected-table strategy applies
and beats even the GEMM floor. ``--token-layout uniform`` draws tokens from the whole vocabulary, which with a
large V exercises the gather-GEMM strategy.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import benchmark_parser, machine_description, measure, parse_ints, print_row, write_table  # noqa: E402

from genrec_ext.ops import token_merge  # noqa: E402


def eager_merge(tokens, embedding, weight, bias):
    return F.linear(torch.cat([embedding[tokens[..., l]] for l in range(tokens.shape[-1])], -1), weight, bias)


def main() -> None:
    ap = benchmark_parser(__doc__)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--rows", type=parse_ints, default=[1024, 16384, 262144], help="B*N history items")
    ap.add_argument("--dims", type=parse_ints, default=[64, 256, 1024], help="d (= d_out)")
    ap.add_argument("--vocabs", type=parse_ints, default=[4 + 3 * 256, 151936 + 4 + 3 * 256])
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--codebook", type=int, default=256, help="codes per SID level (sid layout)")
    ap.add_argument("--token-layout", default="sid", choices=["sid", "uniform"])
    ap.add_argument("--max-gflop", type=float, default=None,
                    help="skip cases whose eager forward needs more (default: 120 on CPU, no limit on CUDA)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    ap.add_argument("--budget", type=float, default=1.0, help="seconds of timing per measurement")
    args = ap.parse_args()

    device, dtype = args.device, getattr(torch, args.dtype)
    max_gflop = args.max_gflop if args.max_gflop is not None else (120.0 if device == "cpu" else float("inf"))
    compiled_merge = None if args.no_compile else torch.compile(eager_merge, dynamic=True)
    gen = torch.Generator(device="cpu").manual_seed(0)
    results = []
    for vocab in args.vocabs:
        for d in args.dims:
            for rows in args.rows:
                gflop = 2 * rows * args.levels * d * d / 1e9
                if gflop > max_gflop:
                    print(f"skip V={vocab} d={d} rows={rows}: {gflop:.0f} GFLOP > --max-gflop {max_gflop:.0f}")
                    continue
                if args.token_layout == "sid":  # level l: block l of the last levels * codebook tokens
                    first = vocab - args.levels * args.codebook + args.codebook * torch.arange(args.levels)
                    tokens = first + torch.randint(0, args.codebook, (1, rows, args.levels), generator=gen)
                else:
                    tokens = torch.randint(0, vocab, (1, rows, args.levels), generator=gen)
                tokens = tokens.to(device)
                E = torch.randn(vocab, d, generator=gen).to(device, dtype).requires_grad_()
                W = (torch.randn(d, args.levels * d, generator=gen) / (args.levels * d) ** 0.5).to(device, dtype)
                W.requires_grad_()
                b = torch.zeros(d, device=device, dtype=dtype, requires_grad=True)
                grad = torch.randn(1, rows, d, generator=gen).to(device, dtype)
                x_cat = torch.randn(1, rows, args.levels * d, generator=gen).to(device, dtype).requires_grad_()

                def fwd(fn):
                    def call():
                        with torch.no_grad():
                            fn(tokens, E, W, b)
                    return call

                def fwd_bwd(fn):
                    def call():
                        fn(tokens, E, W, b).backward(grad)
                    return call

                gemm_fwd = lambda: F.linear(x_cat.detach(), W.detach(), b.detach())  # noqa: E731
                gemm_fwd_bwd = lambda: F.linear(x_cat, W, b).backward(grad)  # noqa: E731
                impls = {"eager": eager_merge}
                if compiled_merge is not None:
                    impls["compile"] = compiled_merge
                impls["ours"] = lambda t, e, w, bb: token_merge(t, e, w, bb, pad_id=-1)
                for mode, wrap, gemm in (("fwd", fwd, gemm_fwd), ("fwd+bwd", fwd_bwd, gemm_fwd_bwd)):
                    ms = {name: measure(wrap(fn), device, budget_s=args.budget) for name, fn in impls.items()}
                    ms["gemm"] = measure(gemm, device, budget_s=args.budget)
                    row = dict(
                        V=vocab, d=d, rows=rows, mode=mode, tokens=args.token_layout,
                        ours_ms=ms["ours"], eager_ms=ms["eager"], compile_ms=ms.get("compile"), gemm_ms=ms["gemm"],
                        x_eager=ms["eager"] / ms["ours"],
                        x_compile=ms["compile"] / ms["ours"] if "compile" in ms else None,
                        gemm_over_ours=ms["gemm"] / ms["ours"],
                    )
                    results.append(row)
                    print_row(row)
    columns = ["V", "tokens", "d", "rows", "mode", "ours_ms", "eager_ms", "compile_ms", "gemm_ms",
               "x_eager", "x_compile", "gemm_over_ours"]
    note = (f"{machine_description(device)}, {args.dtype}, L={args.levels}, d_out=d. x_eager / x_compile = "
            "speed-up of genrec::token_merge; gemm_over_ours = time of F.linear on a pre-concatenated input "
            "divided by ours (>= 1: we are at least as fast as the GEMM alone).")
    stem = f"token_merge_{device}_{args.dtype}_{args.token_layout}"
    write_table(results, columns, "genrec::token_merge", args.out / stem, note)


if __name__ == "__main__":
    main()
