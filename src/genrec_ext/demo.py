"""`genrec demo`: the main job on built-in synthetic data.

For now the pipeline is the Token Merger alone: it merges a batch of synthetic SID histories with the
compiled kernel, checks forward and backward against the pure-PyTorch reference, and reports timings.
Later stages (SIDs, SFT, beam search, GRPO-SR) extend this job.
"""

from __future__ import annotations

import time

import torch

from genrec_ext import nn as gnn
from genrec_ext.ops import reference


def run_demo(seed: int = 0, batch: int = 64, history: int = 50, levels: int = 3, codebook: int = 256,
             dim: int = 128) -> int:
    torch.manual_seed(seed)
    vocab = 4 + levels * codebook  # specials + one block of codes per SID level (DESIGN.md, Tokens)
    merger = gnn.TokenMerger(vocab, dim, levels, dim)
    # Each history item's SID: level l uses tokens offset_l + code; the tail of each history is padding.
    codes = torch.randint(0, codebook, (batch, history, levels))
    tokens = 4 + codes + codebook * torch.arange(levels)
    lengths = torch.randint(1, history + 1, (batch,))
    tokens[torch.arange(history) >= lengths[:, None]] = merger.pad_id

    start = time.perf_counter()
    out = merger(tokens)
    out.square().sum().backward()
    elapsed = time.perf_counter() - start

    params = [merger.embedding.weight, merger.proj.weight, merger.proj.bias]
    fused_grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    ref = reference.token_merge(tokens, *params, pad_id=merger.pad_id)
    ref.square().sum().backward()

    fwd_err = (out - ref).abs().max().item()
    bwd_err = max((g - p.grad).abs().max().item() for g, p in zip(fused_grads, params))
    ok = torch.allclose(out, ref, rtol=1e-5, atol=1e-5) and all(
        torch.allclose(g, p.grad, rtol=1e-4, atol=1e-4) for g, p in zip(fused_grads, params)
    )
    print(f"Token Merger demo: {batch} users x {history} history items x {levels} SID levels "
          f"({int(lengths.sum())} real items, rest padding), d={dim}")
    print(f"  fused genrec::token_merge fwd+bwd: {elapsed * 1e3:.2f} ms")
    print(f"  max |fused - reference|: forward {fwd_err:.2e}, gradients {bwd_err:.2e}")
    print("  OK: kernel matches the reference" if ok else "  MISMATCH: kernel differs from the reference")
    return 0 if ok else 1
