"""Pure-PyTorch references: plain, obviously right, never fast. Every kernel is tested against these."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype of the kernels: float64 for float64, float32 for everything narrower."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def token_merge(
    sid_tokens: Tensor, embedding: Tensor, weight: Tensor, bias: Tensor | None = None, pad_id: int = 0
) -> Tensor:
    """Paper eq. (5): ``Linear(Concat(e(s_1), ..., e(s_L)))`` per history item; pads are zeros."""
    is_pad = sid_tokens == pad_id
    looked_up = embedding[sid_tokens.masked_fill(is_pad, 0)]  # [B, N, L, d]
    looked_up = torch.where(is_pad.unsqueeze(-1), torch.zeros((), dtype=embedding.dtype), looked_up)
    merged = F.linear(looked_up.flatten(2), weight, bias)  # [B, N, d_out]
    return torch.where(is_pad.all(-1, keepdim=True), torch.zeros((), dtype=merged.dtype), merged)


def rq_assign(
    x: Tensor, codebooks: Tensor, level_sizes: list[int] | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Residual quantisation by brute force: explicit ``||r - c||^2`` for every centroid, ``argmin`` (which
    returns the first, i.e. lowest, index on ties), subtract, next level. Computed in float64."""
    residual = x.double()
    codes = []
    for level, codebook in enumerate(codebooks.double()):
        if level_sizes is not None:
            codebook = codebook[: level_sizes[level]]
        distances = (residual[:, None, :] - codebook[None, :, :]).pow(2).sum(-1)  # [N, K]
        code = distances.argmin(1)
        codes.append(code)
        residual = residual - codebook[code]
    acc = acc_dtype(x.dtype)
    codes_t = torch.stack(codes, 1) if codes else torch.empty(x.shape[0], 0, dtype=torch.int64)
    return codes_t, residual.to(x.dtype), residual.pow(2).sum(1).to(acc)


def beam_step(logits: Tensor, scores: Tensor, nodes: Tensor, child_offsets: Tensor, child_codes: Tensor,
              beam_width: int, constrained: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Beam step by walking the trie in plain Python: every (beam, code) candidate with its score, sorted by
    (score desc, beam asc, code asc), the first ``beam_width`` kept, the rest padded with -inf / -1."""
    batch, beams, width = logits.shape
    logp = torch.log_softmax(logits.to(scores.dtype), dim=-1)
    out = [torch.full((batch, beam_width), float("-inf"), dtype=scores.dtype)] + [
        torch.full((batch, beam_width), -1, dtype=torch.int64) for _ in range(3)]
    for b in range(batch):
        candidates = []
        for w in range(beams):
            score, node = float(scores[b, w]), int(nodes[b, w])
            if score == float("-inf") or (constrained and node < 0):
                continue
            if constrained:
                children = range(int(child_offsets[node]), int(child_offsets[node + 1]))
                options = [(int(child_codes[j]), j) for j in children]
            else:
                options = [(c, -1) for c in range(width)]
            candidates += [(score + float(logp[b, w, c]), w, c, child) for c, child in options]
        candidates.sort(key=lambda t: (-t[0], t[1], t[2]))
        for i, (score, w, c, child) in enumerate(x for x in candidates[:beam_width] if x[0] > float("-inf")):
            out[0][b, i], out[1][b, i], out[2][b, i], out[3][b, i] = score, c, w, child
    return tuple(out)


def shared_prefix_attention(q: Tensor, prefix_k: Tensor, prefix_v: Tensor, prefix_mask: Tensor, own_k: Tensor,
                            own_v: Tensor, scale: float) -> Tensor:
    """Each beam's query against [the query's prompt keys (masked); the beam's own keys], softmax, values;
    in float32 (float64 for float64) with broadcasting einsums: the prompt is never copied per beam."""
    acc = acc_dtype(q.dtype)
    bsz, beams, heads, dim = q.shape
    kv_heads, plen = prefix_k.shape[1], prefix_k.shape[2]
    qg = q.to(acc).reshape(bsz, beams, kv_heads, heads // kv_heads, dim) * scale  # GQA groups per KV head
    prefix_scores = torch.einsum("bwkgd,bkpd->bwkgp", qg, prefix_k.to(acc))
    prefix_scores = prefix_scores.masked_fill(~prefix_mask[:, None, None, None, :], float("-inf"))
    own_scores = torch.einsum("bwkgd,bwktd->bwkgt", qg, own_k.to(acc))
    probs = torch.softmax(torch.cat([prefix_scores, own_scores], -1), -1)
    out = (torch.einsum("bwkgp,bkpd->bwkgd", probs[..., :plen], prefix_v.to(acc))
           + torch.einsum("bwkgt,bwktd->bwkgd", probs[..., plen:], own_v.to(acc)))
    return out.reshape(bsz, beams, heads, dim).to(q.dtype)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """transformers' Qwen2RMSNorm: normalised in float32 (float64 for float64), rounded, then scaled."""
    acc = acc_dtype(x.dtype)
    xf = x.to(acc)
    normed = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return (weight.to(acc) * normed.to(acc)).to(x.dtype)


def layer_qkv(x: Tensor, norm_weight: Tensor, eps: float, weight: Tensor, bias: Tensor | None, cos: Tensor,
              sin: Tensor, rotated_heads: int) -> Tensor:
    """RMSNorm, the q|k|v projection, and rotary embedding (``x cos + rotate_half(x) sin``) of the first
    ``rotated_heads`` heads; runs of N / M rows share a row of ``cos`` / ``sin``."""
    acc = acc_dtype(x.dtype)
    y = F.linear(rms_norm(x, norm_weight, eps), weight, bias)
    rows, (positions, dim) = x.shape[0], cos.shape
    heads = y[:, : rotated_heads * dim].reshape(positions, rows // positions, rotated_heads, dim).to(acc)
    rotate_half = torch.cat([-heads[..., dim // 2 :], heads[..., : dim // 2]], -1)
    rotated = heads * cos.to(acc)[:, None, None] + rotate_half * sin.to(acc)[:, None, None]
    return torch.cat([rotated.reshape(rows, rotated_heads * dim).to(y.dtype), y[:, rotated_heads * dim :]], 1)


def layer_out(h: Tensor, attn: Tensor, o_weight: Tensor, o_bias: Tensor | None, norm_weight: Tensor, eps: float,
              gate_up_weight: Tensor, down_weight: Tensor) -> Tensor:
    """Output projection + residual, then RMSNorm, SwiGLU MLP (gate rows first) + residual."""
    h1 = h + F.linear(attn, o_weight, o_bias)
    gate, up = F.linear(rms_norm(h1, norm_weight, eps), gate_up_weight).chunk(2, -1)
    return h1 + F.linear(F.silu(gate) * up, down_weight)
