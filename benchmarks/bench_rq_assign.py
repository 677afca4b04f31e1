"""Benchmark genrec::rq_assign against faiss-cpu and eager PyTorch, measured in the same run.

    python benchmarks/bench_rq_assign.py                  # CPU sweep (cases over --max-gflop skipped)
    python benchmarks/bench_rq_assign.py --device cuda

faiss: per level, ``IndexFlatL2(D).add(C_l).search(residual, 1)`` (BLAS GEMM + argmin, the standard
nearest-centroid assignment) and a numpy residual update. Eager: per level,
``argmin(||c||^2 - 2 r @ C^T)`` — one N x K distance matrix per level — and ``r -= C[code]``.
gflops: 2 N K D L over our time; the GEMM alone (``torch.mm`` of the same shapes) is reported as a roofline.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import benchmark_parser, machine_description, measure, parse_ints, print_row, write_table  # noqa: E402

from genrec_ext.ops import rq_assign  # noqa: E402


def eager_rq(x, codebooks):
    residual, codes = x.clone(), []
    for codebook in codebooks:
        code = (codebook.pow(2).sum(1) - 2 * residual @ codebook.T).argmin(1)
        residual -= codebook[code]
        codes.append(code)
    return torch.stack(codes, 1), residual


def faiss_rq(x: np.ndarray, codebooks: np.ndarray):
    import faiss

    residual, codes = x.copy(), []
    for codebook in codebooks:
        index = faiss.IndexFlatL2(codebook.shape[1])
        index.add(codebook)
        _, nearest = index.search(residual, 1)
        code = nearest[:, 0]
        residual -= codebook[code]
        codes.append(code)
    return np.stack(codes, 1), residual


def gemm_roofline(x, codebooks):
    for codebook in codebooks:
        torch.mm(x, codebook.T)


def main() -> None:
    ap = benchmark_parser(__doc__)
    ap.add_argument("--n", type=parse_ints, default=[100_000, 1_000_000])
    ap.add_argument("--dims", type=parse_ints, default=[64, 384, 768])
    ap.add_argument("--ks", type=parse_ints, default=[256, 1024, 8192])
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--max-gflop", type=float, default=None, help="skip larger cases (default: 400 on CPU)")
    ap.add_argument("--eager-max-gib", type=float, default=4.0, help="skip eager when its N x K matrix is larger")
    ap.add_argument("--budget", type=float, default=1.0)
    args = ap.parse_args()
    device = args.device
    max_gflop = args.max_gflop if args.max_gflop is not None else (400.0 if device == "cpu" else float("inf"))
    try:
        import faiss  # noqa: F401

        have_faiss = device == "cpu"
    except ImportError:
        have_faiss = False
        print("faiss-cpu not installed: no faiss column (pip install faiss-cpu)")

    gen = torch.Generator().manual_seed(0)
    rows = []
    for n in args.n:
        for d in args.dims:
            for k in args.ks:
                gflop = 2 * n * k * d * args.levels / 1e9
                if gflop > max_gflop:
                    print(f"skip N={n} D={d} K={k}: {gflop:.0f} GFLOP > --max-gflop {max_gflop:.0f}")
                    continue
                x = torch.randn(n, d, generator=gen).to(device)
                codebooks = (torch.randn(args.levels, k, d, generator=gen)
                             * (0.5 ** torch.arange(args.levels))[:, None, None]).to(device)
                ms = {"ours": measure(lambda: rq_assign(x, codebooks), device, budget_s=args.budget, warmup=1)}
                ms["gemm"] = measure(lambda: gemm_roofline(x, codebooks), device, budget_s=args.budget, warmup=1)
                if n * k * 4 / 2**30 <= args.eager_max_gib:
                    ms["eager"] = measure(lambda: eager_rq(x, codebooks), device, budget_s=args.budget, warmup=1)
                if have_faiss:
                    xn, cn = x.numpy(), codebooks.numpy()
                    ms["faiss"] = measure(lambda: faiss_rq(xn, cn), device, budget_s=args.budget, warmup=1)
                    agree = float((faiss_rq(xn, cn)[0] == rq_assign(x, codebooks)[0].numpy()).mean())
                else:
                    agree = None
                row = dict(N=n, D=d, K=k, ours_ms=ms["ours"], faiss_ms=ms.get("faiss"), eager_ms=ms.get("eager"),
                           gemm_ms=ms["gemm"], x_faiss=ms["faiss"] / ms["ours"] if "faiss" in ms else None,
                           x_eager=ms["eager"] / ms["ours"] if "eager" in ms else None,
                           gflops=gflop / ms["ours"] * 1e3, of_gemm=ms["gemm"] / ms["ours"], codes_agree=agree)
                rows.append(row)
                print_row(row)
    note = (f"{machine_description(device)}, float32, L={args.levels}. x_faiss / x_eager: speed-up of "
            "genrec::rq_assign; of_gemm: time of the bare GEMMs (torch.mm, no argmin, no residual) over ours — "
            "the share of the GEMM roofline we reach; codes_agree: share of codes identical to faiss's.")
    write_table(rows, ["N", "D", "K", "ours_ms", "faiss_ms", "eager_ms", "gemm_ms", "x_faiss", "x_eager", "gflops",
                       "of_gemm", "codes_agree"], "genrec::rq_assign", args.out / f"rq_assign_{device}", note)


if __name__ == "__main__":
    main()
