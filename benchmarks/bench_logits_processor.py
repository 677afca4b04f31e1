"""Constrained Hugging Face ``generate``: our ``genrec_ext.hf.SIDLogitsProcessor`` against the Python per-beam
processor peers use (a faithful re-implementation of MiniOneRec's ``LogitProcessor`` / LC-Rec's
``prefix_allowed_tokens_fn``: a dict from each generated prefix to its allowed token ids, built once, then per
step a Python loop over the beams that looks its prefix up and unmasks those ids), on the same model.

    python benchmarks/bench_logits_processor.py                # CPU
    python benchmarks/bench_logits_processor.py --device cuda

Processor: one call on the scores of B x W beams at each SID depth (median time, both measured in interleaved
rounds). End to end: ``model.generate(num_beams=W, num_return_sequences=W, max_new_tokens=L + 1)`` of a small
Qwen2 built from a config (vocabulary of 32k plus the SID tokens, which sit at scattered ids as tokens added to a
real tokenizer do), same prompts, each processor. Defaults: W = 50, 3 levels of 256 codes, 10k items.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList, Qwen2Config, Qwen2ForCausalLM

sys.path.insert(0, str(Path(__file__).parent))
from common import allowed_after_prefix, benchmark_parser, machine_description, measure_interleaved, parse_ints, print_row, write_table  # noqa: E402

from genrec_ext.hf import SIDLogitsProcessor  # noqa: E402
from genrec_ext.sid import SIDTrie  # noqa: E402


class PerBeamPrefixProcessor(LogitsProcessor):
    """What peers run: prefix -> allowed token ids in a dict; a Python loop over the beams per step."""

    def __init__(self, sid_tokens: np.ndarray, prompt_length: int, eos_token_id: int) -> None:
        self.prompt_length = prompt_length
        self.allowed = allowed_after_prefix(sid_tokens, eos_token_id)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        mask = torch.full_like(scores, float("-inf"))
        for i, row in enumerate(input_ids[:, self.prompt_length:].tolist()):
            mask[i, self.allowed.get(tuple(row), [])] = 0
        return scores + mask


def main() -> None:
    ap = benchmark_parser(__doc__)
    ap.add_argument("--beam", type=int, default=50)
    ap.add_argument("--batches", type=parse_ints, default=[1, 8])
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--codebook", type=int, default=256)
    ap.add_argument("--base-vocab", type=int, default=32_000)
    ap.add_argument("--budget", type=float, default=1.0)
    ap.add_argument("--generate-reps", type=int, default=3)
    args = ap.parse_args()
    device, levels = args.device, (args.codebook,) * 3
    rng = np.random.default_rng(0)
    sids = np.unique(np.stack([rng.integers(0, k, args.items) for k in levels], 1), axis=0)
    trie = SIDTrie.from_codes(sids, list(levels))
    vocab = args.base_vocab + sum(levels)
    ids = rng.permutation(np.arange(3, vocab))[: sum(levels)]  # scattered over the vocabulary
    token_ids = np.split(ids, np.cumsum(levels)[:-1])
    sid_tokens = np.stack([token_ids[level][sids[:, level]] for level in range(3)], 1)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, pad_token_id=0, eos_token_id=2, bos_token_id=1)
    model = Qwen2ForCausalLM(config).to(device).eval()
    prompt_len = 12
    rows = []
    for batch in args.batches:
        prompts = torch.randint(3, args.base_vocab, (batch, prompt_len), device=device)
        ours = SIDLogitsProcessor(trie, token_ids, prompt_length=prompt_len, eos_token_id=2).to(device)
        copying = SIDLogitsProcessor(trie, token_ids, prompt_length=prompt_len, eos_token_id=2, inplace=False).to(device)
        theirs = PerBeamPrefixProcessor(sid_tokens, prompt_len, eos_token_id=2)
        result = {"batch": batch, "beams": batch * args.beam}
        # one call at each depth, on beams holding real prefixes
        for depth in range(3):
            pick = sids[rng.integers(0, len(sids), batch * args.beam)]
            generated = torch.as_tensor(np.stack([token_ids[level][pick[:, level]] for level in range(depth)], 1)
                                        if depth else np.zeros((batch * args.beam, 0), dtype=np.int64), device=device)
            input_ids = torch.cat([prompts.repeat_interleave(args.beam, 0), generated], 1)
            scores = torch.randn(batch * args.beam, vocab, device=device)
            want = theirs(input_ids, scores)
            assert torch.equal(copying(input_ids, scores), want) and torch.equal(ours(input_ids, scores.clone()), want)
            times = measure_interleaved({"ours": lambda: ours(input_ids, scores), "copy": lambda: copying(input_ids, scores),
                                         "theirs": lambda: theirs(input_ids, scores)}, device, budget_s=args.budget)
            for name in ("ours", "copy", "theirs"):
                result[f"d{depth}_{name}_us"] = times[name] * 1e3
        for name in ("ours", "copy"):
            result[f"x_processor_{name}"] = (sum(result[f"d{d}_theirs_us"] for d in range(3))
                                             / sum(result[f"d{d}_{name}_us"] for d in range(3)))

        def generate(proc):
            with torch.no_grad():
                return model.generate(prompts, attention_mask=torch.ones_like(prompts), num_beams=args.beam,
                                      num_return_sequences=args.beam, max_new_tokens=4, do_sample=False,
                                      logits_processor=LogitsProcessorList([proc]), pad_token_id=0, eos_token_id=2)

        assert torch.equal(generate(ours), generate(theirs))  # the same beams, token for token
        times = measure_interleaved({"ours": lambda: generate(ours), "theirs": lambda: generate(theirs)}, device,
                                    budget_s=args.budget * args.generate_reps)
        result["generate_ours_ms"], result["generate_theirs_ms"] = times["ours"], times["theirs"]
        result["x_generate"] = times["theirs"] / times["ours"]
        rows.append(result)
        print_row(result)
    note = (f"{machine_description(device)}; W = {args.beam}, 3 x {args.codebook} codes, {len(sids):,} items, vocabulary "
            f"{vocab:,} (SID tokens scattered); *_us: one processor call at SID depth d (median; ours: the default, "
            "in place; copy: inplace=False, a new scores tensor like theirs); x_processor_*: summed over the three "
            "depths, theirs / ours; generate_*_ms: model.generate end to end (same beams asserted); "
            "x_generate: theirs / ours.")
    write_table(rows, ["batch", "beams", "d0_ours_us", "d0_copy_us", "d0_theirs_us", "d1_ours_us", "d1_copy_us",
                       "d1_theirs_us", "d2_ours_us", "d2_copy_us", "d2_theirs_us", "x_processor_ours", "x_processor_copy",
                       "generate_ours_ms", "generate_theirs_ms", "x_generate"],
                "SID-constrained HF generate: tensorised trie processor vs a Python per-beam processor",
                args.out / f"logits_processor_{device}", note)


if __name__ == "__main__":
    main()
