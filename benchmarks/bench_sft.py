"""Prefill time and training throughput of GenRec with vs without the Token Merger.

    python benchmarks/bench_sft.py                       # CPU, tiny/small presets
    python benchmarks/bench_sft.py --device cuda --preset base --dtype bfloat16

Prefill: one forward pass over the prompt (<bos>, history, <sep>) of a batch, the serving cost the Token
Merger targets (N + 2 positions instead of L*N + 2). Training: forward + backward of page-wise NTP on a
batch with a 10-item target page; tokens/s counts supervised target tokens.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import benchmark_parser, machine_description, measure, parse_ints, print_row, write_table  # noqa: E402

from genrec_ext.model import build_model  # noqa: E402
from genrec_ext.sid import SIDVocab  # noqa: E402
from genrec_ext.sid.vocab import EOS  # noqa: E402
from genrec_ext.train import SFTBatch  # noqa: E402


def random_batch(vocab: SIDVocab, batch: int, history: int, page: int, gen: torch.Generator) -> SFTBatch:
    codes = torch.stack([torch.randint(k, (batch, history + page), generator=gen) for k in vocab.level_sizes], -1)
    tokens = vocab.tokens(codes)
    target = torch.cat([tokens[:, history:].reshape(batch, -1), torch.full((batch, 1), EOS)], 1)
    return SFTBatch(tokens[:, :history], torch.full((batch,), history), target, torch.full((batch,), target.shape[1]))


def main() -> None:
    ap = benchmark_parser(__doc__)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--histories", type=parse_ints, default=[20, 100, 500])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--page", type=int, default=10)
    ap.add_argument("--budget", type=float, default=1.0)
    args = ap.parse_args()
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
