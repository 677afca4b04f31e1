"""genrec::shared_prefix_attention (one decode step's attention for W beams sharing a prompt) against
* the einsum reference (genrec_ext.ops.reference: broadcasting einsums, nothing copied per beam), and
* PyTorch SDPA over a standard per-beam KV cache (the prompt's keys/values expanded to every beam, as HF
  beam search keeps them): timed with the cache already expanded ("sdpa"), and with the expansion a
  per-step cache reorder costs ("sdpa+copy").

    python benchmarks/bench_shared_prefix_attention.py                 # CPU
    python benchmarks/bench_shared_prefix_attention.py --device cuda

Shapes: W = 50 beams, T = 2 own tokens (the last SID level), head layouts of the tiny / small / base presets,
prompts of 22 / 102 / 302 positions (20 or 100 history items with the Token Merger, 100 without).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import benchmark_parser, machine_description, measure_interleaved, parse_ints, print_row, write_table  # noqa: E402

from genrec_ext.ops import reference, shared_prefix_attention  # noqa: E402

LAYOUTS = {"tiny": (4, 2, 16), "small": (8, 4, 32), "base": (14, 2, 64)}  # (Hq, Hkv, D)


def main() -> None:
    ap = benchmark_parser(__doc__)
    ap.add_argument("--beams", type=int, default=50)
    ap.add_argument("--own", type=int, default=2)
    ap.add_argument("--batches", type=parse_ints, default=[1, 16, 64])
    ap.add_argument("--prompts", type=parse_ints, default=[22, 102, 302])
    ap.add_argument("--layouts", default="tiny,small,base")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--budget", type=float, default=0.5, help="seconds of timing per variant")
    args = ap.parse_args()
    device, dtype, w, t = args.device, getattr(torch, args.dtype), args.beams, args.own
    rows = []
    with torch.no_grad():
        for layout in args.layouts.split(","):
            hq, hkv, d = LAYOUTS[layout]
            for p in args.prompts:
                for b in args.batches:
                    g = torch.Generator(device=device).manual_seed(0)
                    r = lambda *s: torch.randn(*s, generator=g, device=device).to(dtype)  # noqa: E731
                    q, pk, pv = r(b, w, hq, d), r(b, hkv, p, d), r(b, hkv, p, d)
                    ok, ov = r(b, w, hkv, t, d), r(b, w, hkv, t, d)
                    mask = torch.ones(b, p, dtype=torch.bool, device=device)
                    mask[: b // 2, : p // 4] = False  # left padding in half the prompts
                    scale = d**-0.5

                    def expanded():
                        keys = torch.cat([pk[:, None].expand(b, w, hkv, p, d), ok], 3).reshape(b * w, hkv, p + t, d)
                        values = torch.cat([pv[:, None].expand(b, w, hkv, p, d), ov], 3).reshape(b * w, hkv, p + t, d)
                        return keys, values

                    keys, values = expanded()
                    visible = torch.cat([mask[:, None].expand(b, w, p), mask.new_ones(b, w, t)], 2)
                    attn_mask = visible.reshape(b * w, 1, 1, p + t)

                    def sdpa(kv=None):
                        k_, v_ = kv if kv is not None else (keys, values)
                        return F.scaled_dot_product_attention(q.reshape(b * w, hq, 1, d), k_, v_, attn_mask=attn_mask,
                                                              scale=scale, enable_gqa=True)

                    ms = measure_interleaved({
                        "ours": lambda: shared_prefix_attention(q, pk, pv, mask, ok, ov, scale),
                        "ref": lambda: reference.shared_prefix_attention(q, pk, pv, mask, ok, ov, scale),
                        "plain": sdpa, "copied": lambda: sdpa(expanded())}, device, budget_s=args.budget)
                    ours, ref, plain, copied = ms["ours"], ms["ref"], ms["plain"], ms["copied"]
                    row = dict(layout=f"{layout} {hq}/{hkv}x{d}", prompt=p, batch=b, ours_us=ours * 1e3,
                               reference_us=ref * 1e3, sdpa_us=plain * 1e3, sdpa_copy_us=copied * 1e3,
                               x_reference=ref / ours, x_sdpa=plain / ours, x_sdpa_copy=copied / ours)
                    rows.append(row)
                    print_row(row)
    note = (f"{machine_description(device)}, {args.dtype}, W={w} beams, T={t} own tokens; layout = preset "
            "Hq/Hkv x D; half the prompts left-padded by a quarter. x_*: their time / ours (> 1: ours faster).")
    write_table(rows, list(rows[0]), "Shared-prefix decode attention",
                args.out / f"shared_prefix_attention_{device}", note)


if __name__ == "__main__":
    main()
