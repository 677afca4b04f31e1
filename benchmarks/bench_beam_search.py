"""Constrained beam search: ours (``decoding.beam_search``: one ``genrec::beam_search`` call) against Hugging
Face ``generate(num_beams=W, prefix_allowed_tokens_fn=<trie lookup>)`` on the same model, end to end; the op
alone, fused, against the same search composed of the stage ops (``genrec::_beam_search_stages``, what CUDA
runs) and against the pure-PyTorch reference; and one beam step alone against an eager masked-top-k step.

    python benchmarks/bench_beam_search.py                 # CPU
    python benchmarks/bench_beam_search.py --device cuda

Defaults: W = 50, 3 levels of 256 codes, a 10k-item catalogue, batches of 1 / 16 / 64 queries, 20-item
histories, the `tiny` preset (the decoder's cost is the same for both; what differs is the search around it).
Ours and HF run in alternating rounds (--hf-reps rounds of --reps / --hf-reps runs of ours and one of HF), so
both see the same machine. --preset / --dtype change the model of both sides (tables of other settings are
written as beam_search_<device>_<preset>_<dtype>).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import (allowed_after_prefix, benchmark_parser, machine_description, measure, measure_interleaved, parse_ints,  # noqa: E402
                    print_row, time_samples, write_table)

from genrec_ext import ops  # noqa: E402
from genrec_ext.decoding import beam_search, search_inputs  # noqa: E402
from genrec_ext.model import build_model  # noqa: E402
from genrec_ext.ops import beam_step, reference  # noqa: E402
from genrec_ext.sid import SIDTrie, SIDVocab  # noqa: E402


def paired_latencies(ours, theirs, device: str, rounds: int, ours_per_round: int) -> tuple[list[float], list[float]]:
    """Latencies of both, measured in alternating rounds, so that a shared or throttled machine slows both
    sides alike and the ratio stays meaningful."""
    ours_ms, theirs_ms = [], []
    for _ in range(rounds):
        ours_ms += time_samples(ours, device, ours_per_round)
        theirs_ms += time_samples(theirs, device, 1)
    return ours_ms, theirs_ms


def hf_generate(model, history, lengths, trie_prefixes, width):
    embeds, mask, _ = model.prompt_inputs(history, lengths)

    def allowed(batch_id, input_ids):
        return trie_prefixes.get(tuple(input_ids.tolist()), [])

    return model.backbone.generate(inputs_embeds=embeds, attention_mask=mask.long(), num_beams=width,
                                   num_return_sequences=width, max_new_tokens=model.vocab.levels, min_new_tokens=model.vocab.levels,
                                   do_sample=False, prefix_allowed_tokens_fn=allowed, pad_token_id=0, eos_token_id=None)


def eager_step(logits, scores, nodes, dense_mask, width):
    logp = torch.log_softmax(logits, -1) + scores[..., None]
    valid = dense_mask[nodes.clamp(min=0)] & (nodes >= 0)[..., None]
    top, idx = logp.masked_fill(~valid, float("-inf")).flatten(1).topk(width)
    return top, idx % logits.shape[-1], idx // logits.shape[-1]


def main() -> None:
    ap = benchmark_parser(__doc__)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--beam", type=int, default=50)
    ap.add_argument("--batches", type=parse_ints, default=[1, 16, 64])
    ap.add_argument("--history", type=int, default=20)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--hf-reps", type=int, default=5)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="the model's (both sides)")
    ap.add_argument("--ref-batches", type=parse_ints, default=[1],
                    help="batches at which to time the pure-PyTorch reference too (it walks beams in Python)")
    args = ap.parse_args()
    device, width = args.device, args.beam
    levels = (256, 256, 256)
    rng = np.random.default_rng(0)
    sids = np.unique(np.stack([rng.integers(0, k, args.items * 2) for k in levels], 1), axis=0)[: args.items]
    vocab = SIDVocab(levels)
    trie = SIDTrie.from_codes(sids, list(levels))
    trie_device = trie.to(device)
    prefixes = allowed_after_prefix(vocab.tokens(torch.from_numpy(sids)).numpy())
    model = build_model(args.preset, vocab).to(device, getattr(torch, args.dtype)).eval()
    rows = []
    for batch in args.batches:
        history = vocab.tokens(torch.from_numpy(sids[rng.integers(0, len(sids), (batch, args.history))])).to(device)
        lengths = torch.full((batch,), args.history, device=device)
        with torch.no_grad():
            ours, hf = paired_latencies(lambda: beam_search(model, history, lengths, trie_device, beam_width=width),
                                        lambda: hf_generate(model, history, lengths, prefixes, width), device,
                                        args.hf_reps, max(1, args.reps // args.hf_reps))
        # The op alone on the same inputs: fused, composed of the stage ops, and the reference.
        with torch.no_grad():
            inputs = dict(search_inputs(model, history, lengths), child_offsets=trie_device.offsets,
                          child_codes=trie_device.codes, beam_width=width)
            op_ms = measure_interleaved({"fused": lambda: ops.beam_search(**inputs),
                                         "stages": lambda: ops.beam_search(**inputs, fused=False)}, device)
            ref_ms = (measure(lambda: reference.beam_search(**inputs), device, budget_s=1.0, warmup=1)
                      if batch in args.ref_batches and device == "cpu" else None)
        # One step alone at depth 1 (W beams in, each on a level-1 node), ours vs eager masked top-k.
        nodes = torch.from_numpy(rng.integers(0, trie.num_nodes(1), (batch, width))).to(device)
        logits = torch.randn(batch, width, levels[1], device=device)
        scores = torch.randn(batch, width, device=device)
        dense = trie_device.dense_mask(1)
        step_ours = time_samples(lambda: beam_step(logits, scores, nodes, trie_device.offsets[1],
                                                   trie_device.codes[1], width), device, 50)
        step_eager = time_samples(lambda: eager_step(logits, scores, nodes, dense, width), device, 50)
        row = dict(batch=batch, ours_p50_ms=statistics.median(ours), ours_p99_ms=float(np.percentile(ours, 99)),
                   hf_p50_ms=statistics.median(hf), hf_p99_ms=float(np.percentile(hf, 99)),
                   ours_qps=batch / statistics.median(ours) * 1e3, hf_qps=batch / statistics.median(hf) * 1e3,
                   x_hf=statistics.median(hf) / statistics.median(ours),
                   op_us=op_ms["fused"] * 1e3, stages_us=op_ms["stages"] * 1e3,
                   x_stages=op_ms["stages"] / op_ms["fused"], x_ref=None if ref_ms is None else ref_ms / op_ms["fused"],
                   step_ours_us=statistics.median(step_ours) * 1e3, step_eager_us=statistics.median(step_eager) * 1e3)
        row["x_step"] = row["step_eager_us"] / row["step_ours_us"]
        rows.append(row)
        print_row(row)
    note = (f"{machine_description(device)}, preset {args.preset} in {args.dtype}, W={width}, 3 x 256 codes, {len(sids):,} items, "
            f"{args.history}-item histories. x_hf: HF generate time / ours (end to end, same model); "
            "op_us: genrec::beam_search alone (fused), stages_us: the same search composed of the stage ops "
            "(genrec::_beam_search_stages), x_stages / x_ref: their time / the fused op's (the reference only at "
            f"batch {args.ref_batches}); x_step: eager masked-top-k step / genrec::beam_step (depth 1).")
    write_table(rows, list(rows[0]), "Constrained beam search",
                args.out / f"beam_search_{device}" if args.preset == "tiny" and args.dtype == "float32"
                else args.out / f"beam_search_{device}_{args.preset}_{args.dtype}", note)


if __name__ == "__main__":
    main()
