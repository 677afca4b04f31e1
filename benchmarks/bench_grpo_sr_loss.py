"""Benchmark genrec::grpo_sr_loss (GRPO-SR, paper eq. 8, fused with the LM head) against the eager loss.

    python benchmarks/bench_grpo_sr_loss.py --out benchmarks/results            # CPU sweep, writes grpo_sr_loss_cpu.*
    python benchmarks/bench_grpo_sr_loss.py --device cuda --out benchmarks/results

Eager is ``genrec_ext.ops.reference.grpo_sr_loss``: ``F.linear`` to the full ``[N, V]`` logits, ``log_softmax``,
gather, the per-token terms, autograd — what a plain PyTorch GRPO loss does. Liger's ``LigerFusedLinearGRPOLoss``
is timed when ``liger_kernel`` imports (CUDA only; recorded as "not installed" otherwise).

Time: median wall time of forward + backward (gradients for hidden and the head weight) and of the forward alone
under ``torch.no_grad``, the implementations measured in alternating rounds.

Memory (CPU): each (case, implementation) runs once in a fresh subprocess: after the inputs exist and a small
warm-up call, the peak-RSS counter is reset (/proc/self/clear_refs) and the resident set noted; peak_mb is the
peak RSS of one forward + backward minus that baseline, i.e. every byte the loss allocates and touches,
including the gradients it returns (grad_weight alone is V x H floats). temp_mb = peak_mb minus those gradient
outputs: the loss's own working memory (for eager mostly its [N, V] logits, log-softmax and their gradients).
On CUDA the same two figures come from torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import (benchmark_parser, cpu_model, machine_description, parse_ints, print_row, time_samples,  # noqa: E402
                    write_table)

from genrec_ext.ops import grpo_sr_loss, reference  # noqa: E402


def make_case(rows: int, hidden: int, vocab: int, device: str, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(rows, hidden, generator=g).to(device, dtype).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=g) / hidden**0.5).to(device, dtype).requires_grad_()
    targets = torch.randint(0, vocab, (rows,), generator=g).to(device)
    # Half the rows rollout tokens (advantage / (G |o|)), half positive tokens (alpha / |D+|), as in a GRPO-SR batch.
    rollout = torch.arange(rows) % 2 == 0
    policy = torch.where(rollout, torch.randn(rows, generator=g) / rows, torch.zeros(rows)).to(device)
    nll = torch.where(rollout, torch.zeros(rows), torch.full((rows,), 0.1 / rows)).to(device)
    return h, w, targets, policy, nll


def implementations(device: str) -> tuple[dict, str]:
    impls = {
        "ours": lambda h, w, t, p, n: grpo_sr_loss(h, w, t, p, n)[0],
        "eager": lambda h, w, t, p, n: reference.grpo_sr_loss(h, w, t, p, n)[0],
    }
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means "not available here"
        return impls, f"not installed ({type(e).__name__})"
    if device != "cuda":
        return impls, "installed, but Triton kernels need CUDA"
    liger = LigerFusedLinearGRPOLoss(beta=0.0, use_ref_model=False, loss_type="grpo")

    def liger_loss(h, w, t, p, n):
        # Liger takes [B, T] completions with per-sequence advantages [B]: one token per "sequence" here, so the
        # advantages are policy_coef * N. (It has no NLL term; the positives' rows simply get advantage 0.)
        out = liger(h[:, None, :], w, t[:, None], torch.ones_like(t[:, None]), p.float() * h.shape[0])
        return out[0] if isinstance(out, tuple) else out

    impls["liger"] = liger_loss
    return impls, "LigerFusedLinearGRPOLoss (GRPO term only, no NLL)"


def timed_rounds(fns: dict, device: str, budget_s: float, rounds: int) -> dict[str, float]:
    """Median wall time (ms) of each of `fns` after one untimed call: `rounds` alternating rounds of at least one
    call each (more while the round's share of `budget_s` lasts), so that the other load of a shared machine
    slows every implementation alike. (common.measure_interleaved's four calls per round are too many for the
    152k-vocabulary cases, whose eager call takes seconds.)"""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        time_samples(fn, device, 0, warmup=1)
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            times[name] += time_samples(fn, device, 1, warmup=0)
            while time.perf_counter() - start < budget_s / rounds / len(fns) and len(times[name]) < 50:
                times[name] += time_samples(fn, device, 1, warmup=0)
    return {name: statistics.median(t) for name, t in times.items()}


def grad_output_bytes(rows: int, hidden: int, vocab: int, dtype: torch.dtype) -> int:
    return (rows * hidden + vocab * hidden) * dtype.itemsize


def status_kb(field: str) -> int:
    return int(re.search(rf"^{field}:\s*(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def child_peak(impl: str, rows: int, hidden: int, vocab: int, dtype: str) -> None:
    """One forward + backward in this (fresh) process; prints the peak RSS over the baseline in bytes (JSON)."""
    torch.set_num_threads(int(os.environ.get("GENREC_BENCH_THREADS", torch.get_num_threads())))
    fn = implementations("cpu")[0][impl]
    dt = getattr(torch, dtype)
    small = make_case(64, hidden, 1000, "cpu", dt)  # warm-up: thread pools, BLAS buffers, lazy imports
    fn(*small).backward()
    del small
    case = make_case(rows, hidden, vocab, "cpu", dt)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = status_kb("VmRSS")
    fn(*case).backward()
    peak = status_kb("VmHWM")
    print(json.dumps({"peak_bytes": (peak - base) * 1024}))


def peak_memory_mb(impl: str, rows: int, hidden: int, vocab: int, device: str, dtype: torch.dtype) -> float | None:
    if device == "cuda":
        case = make_case(rows, hidden, vocab, device, dtype)
        fn = implementations(device)[0][impl]
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn(*case).backward()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    if impl not in ("ours", "eager"):
        return None
    cmd = [sys.executable, __file__, "--child", impl, str(rows), str(hidden), str(vocab), str(dtype).split(".")[-1]]
    # A fixed glibc mmap threshold (no dynamic raise to 32 MiB) returns every freed block above 64 KiB to the OS,
    # so freed heap kept from the warm-up cannot hide a case's allocations from the RSS peak.
    env = dict(os.environ, GENREC_BENCH_THREADS=str(torch.get_num_threads()), MALLOC_MMAP_THRESHOLD_="65536",
               MALLOC_TRIM_THRESHOLD_="0")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_bytes"] / 2**20


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        impl, rows, hidden, vocab, dtype = sys.argv[2:]
        child_peak(impl, int(rows), int(hidden), int(vocab), dtype)
        return
    ap = benchmark_parser(__doc__)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--hidden", type=parse_ints, default=[896, 2048], help="H (Qwen2.5-0.5B: 896, 3B: 2048)")
    ap.add_argument("--vocabs", type=parse_ints, default=[1000, 32000, 152064],
                    help="V (a SID head ~1k, a mid vocabulary, Qwen's full 152k)")
    ap.add_argument("--rows", type=int, default=512, help="scored positions N")
    ap.add_argument("--budget", type=float, default=4.0, help="seconds of fwd+bwd timing per case, all impls")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of timing")
    args = ap.parse_args()

    device, dtype = args.device, getattr(torch, args.dtype)
    impls, liger_note = implementations(device)
    machine = cpu_model() if device == "cpu" else machine_description(device)
    results = []
    for hidden in args.hidden:
        for vocab in args.vocabs:
            h, w, t, p, n = make_case(args.rows, hidden, vocab, device, dtype)

            def fwd_bwd(fn):
                def call():
                    h.grad, w.grad = None, None
                    fn(h, w, t, p, n).backward()
                return call

            def fwd(fn):
                def call():
                    with torch.no_grad():
                        fn(h, w, t, p, n)
                return call

            train = timed_rounds({k: fwd_bwd(f) for k, f in impls.items()}, device, args.budget, args.rounds)
            infer = timed_rounds({k: fwd(f) for k, f in impls.items()}, device, args.budget / 2, args.rounds)
            h = w = None  # free the inputs before the memory subprocesses
            mem = {k: peak_memory_mb(k, args.rows, hidden, vocab, device, dtype) for k in impls}
            grads_mb = grad_output_bytes(args.rows, hidden, vocab, dtype) / 2**20
            row = dict(
                H=hidden, V=vocab, N=args.rows,
                ours_ms=train["ours"], eager_ms=train["eager"], liger_ms=train.get("liger"),
                time_ratio=train["ours"] / train["eager"],
                ours_fwd_ms=infer["ours"], eager_fwd_ms=infer["eager"],
                ours_peak_mb=mem["ours"], eager_peak_mb=mem["eager"],
                grads_mb=grads_mb,
                ours_temp_mb=mem["ours"] - grads_mb, eager_temp_mb=mem["eager"] - grads_mb,
                peak_ratio=mem["ours"] / mem["eager"],
                temp_ratio=(mem["ours"] - grads_mb) / (mem["eager"] - grads_mb),
                eager_logits_mb=args.rows * vocab * 4 / 2**20,
            )
            results.append(row)
            print_row(row)
    columns = ["H", "V", "N", "ours_ms", "eager_ms", "time_ratio", "ours_fwd_ms", "eager_fwd_ms", "ours_peak_mb",
               "eager_peak_mb", "peak_ratio", "grads_mb", "ours_temp_mb", "eager_temp_mb", "temp_ratio",
               "eager_logits_mb"]
    if any(r.get("liger_ms") is not None for r in results):
        columns.insert(5, "liger_ms")
    note = (f"{machine}; {torch.get_num_threads()} threads, torch {torch.__version__}, {args.dtype}. "
            "ours_ms / eager_ms: forward + backward (grads of hidden and weight), median; *_fwd_ms: forward under "
            "no_grad. time_ratio = ours / eager (target <= 1). Memory: peak RSS of one forward + backward in a fresh "
            "process over the RSS with the inputs allocated (CPU); grads_mb = the returned gradients "
            "(grad_hidden + grad_weight), which any implementation must hold; *_temp_mb = peak - grads_mb, the "
            "loss's working memory; ratios = ours / eager (target <= 1/4 at 152k). eager_logits_mb: one fp32 "
            f"[N, V] logits tensor. Liger: {liger_note}.")
    stem = f"grpo_sr_loss_{device}" + ("" if args.dtype == "float32" else f"_{args.dtype}")
    write_table(results, columns, "genrec::grpo_sr_loss vs eager", args.out / stem, note)


if __name__ == "__main__":
    main()
