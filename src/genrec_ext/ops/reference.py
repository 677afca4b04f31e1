"""Pure-PyTorch references: plain, obviously right, never fast. Every kernel is tested against these."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype of the kernels: float64 for float64, float32 for everything narrower."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def token_merge(
    sid_tokens: Tensor, embedding: Tensor, weight: Tensor, bias: Tensor | None = None, pad_id: int | None = None
) -> Tensor:
    """Paper eq. (5): ``Linear(Concat(e(s_1), ..., e(s_L)))`` per history item; pads (if ``pad_id`` is given)
    are zeros."""
    is_pad = sid_tokens == pad_id if pad_id is not None else torch.zeros_like(sid_tokens, dtype=torch.bool)
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


def beam_search(embeds: Tensor, prompt_mask: Tensor, cos: Tensor, sin: Tensor, layer_weights, layer_biases, layer_eps,
                num_heads: int, num_kv_heads: int, scaling: float, final_norm_weight: Tensor, final_eps: float,
                head_weight: Tensor, head_bias: Tensor | None, sid_embedding: Tensor, level_sizes, child_offsets,
                child_codes, beam_width: int, constrained: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """The whole search from the other references: a masked causal softmax over the prompt, then per level the
    level's logits, ``beam_step``, and a decode step of every beam over [its prompt; its own decoded tokens]
    (each beam's own keys and values copied from its parent)."""
    bsz, plen, hidden = embeds.shape
    dim, levels = cos.shape[-1], len(level_sizes)
    layers = [(layer_weights[6 * i : 6 * i + 6], layer_biases[2 * i : 2 * i + 2], layer_eps[2 * i : 2 * i + 2])
              for i in range(len(layer_weights) // 6)]
    starts = [sum(level_sizes[:level]) for level in range(levels)]

    def logits_of(h, level):
        rows = slice(starts[level], starts[level] + level_sizes[level])
        return F.linear(h, head_weight[rows], None if head_bias is None else head_bias[rows])

    def layer(h, rows_cos, rows_sin, attend):
        """One layer over rows h; ``attend(i, q, k, v)`` -> attention output of layer i's heads."""
        for i, ((norm, qkv_w, o, post, gate_up, down), (qkv_b, o_b), (eps, post_eps)) in enumerate(layers):
            qkv = layer_qkv(h, norm, eps, qkv_w, qkv_b, rows_cos, rows_sin, num_heads + num_kv_heads)
            qkv = qkv.view(h.shape[0], num_heads + 2 * num_kv_heads, dim)
            out = attend(i, qkv[:, :num_heads], qkv[:, num_heads : num_heads + num_kv_heads],
                         qkv[:, num_heads + num_kv_heads :])
            h = layer_out(h, out.reshape(h.shape[0], -1), o, o_b, post, post_eps, gate_up, down)
        return rms_norm(h, final_norm_weight, final_eps)

    # Prefill: each query's prompt alone, a causal softmax over its real positions (a padding row sees itself).
    prefix = [[None] * len(layers) for _ in range(bsz)]
    last = []
    for b in range(bsz):
        j = torch.arange(plen)
        allowed = (j[None] <= j[:, None]) & (prompt_mask[b][None] | torch.eye(plen, dtype=torch.bool))

        def prompt_attention(i, q, k, v, b=b, allowed=allowed):
            prefix[b][i] = (k, v)
            group = num_heads // num_kv_heads
            kk, vv = k.repeat_interleave(group, 1).to(acc_dtype(q.dtype)), v.repeat_interleave(group, 1).to(
                acc_dtype(q.dtype))
            s = torch.einsum("phd,qhd->hpq", q.to(kk.dtype), kk) * scaling
            probs = torch.softmax(s.masked_fill(~allowed[None], float("-inf")), -1)
            return torch.einsum("hpq,qhd->phd", probs, vv).to(q.dtype)

        last.append(layer(embeds[b], cos[b, :plen], sin[b, :plen], prompt_attention)[-1])
    logits = logits_of(torch.stack(last), 0)[:, None]
    scores = torch.zeros(bsz, 1, dtype=acc_dtype(embeds.dtype))
    nodes = torch.zeros(bsz, 1, dtype=torch.int64)
    codes = torch.zeros(bsz, 1, 0, dtype=torch.int64)
    own = [[[[] for _ in layers] for _ in range(1)] for _ in range(bsz)]  # [b][beam][layer] -> [(k, v)] decoded
    for level in range(levels):
        scores, step_codes, parents, nodes = beam_step(logits, scores, nodes, child_offsets[level], child_codes[level],
                                                       beam_width, constrained)
        parents = parents.clamp(min=0)
        codes = torch.cat([torch.stack([codes[b, parents[b]] for b in range(bsz)]), step_codes[..., None]], 2)
        if level + 1 == levels:
            break
        own = [[[list(kv) for kv in own[b][int(p)]] for p in parents[b]] for b in range(bsz)]
        rows = []
        for b in range(bsz):
            for w in range(beam_width):
                def beam_attention(i, q, k, v, b=b, w=w):
                    own[b][w][i].append((k[0], v[0]))
                    pk, pv = prefix[b][i]
                    ok = torch.stack([kv[0] for kv in own[b][w][i]], 1)[None]  # [1, Hkv, T, D]
                    ov = torch.stack([kv[1] for kv in own[b][w][i]], 1)[None]
                    return shared_prefix_attention(q[None], pk.transpose(0, 1)[None], pv.transpose(0, 1)[None],
                                                   prompt_mask[b : b + 1], ok[:, None], ov[:, None], scaling)[0]

                token = sid_embedding[starts[level] + int(step_codes[b, w].clamp(min=0))][None]
                position = slice(plen + level, plen + level + 1)
                rows.append(layer(token, cos[b, position], sin[b, position], beam_attention))
        logits = logits_of(torch.cat(rows), level + 1).view(bsz, beam_width, -1)
    return scores, codes.masked_fill(scores.isneginf()[..., None], -1), nodes


def grpo_sr_loss(hidden: Tensor, weight: Tensor, targets: Tensor, policy_coef: Tensor, nll_coef: Tensor,
                 bias: Tensor | None = None, *, old_logp: Tensor | None = None, epsilon: float = 0.2,
                 epsilon_high: float | None = None, ref_logp: Tensor | None = None, kl_coef: Tensor | None = None,
                 ignore_index: int = -100) -> tuple[Tensor, Tensor]:
    """Paper eq. 8 the eager way: the full ``[N, V]`` logits, ``log_softmax``, gather, and the per-token terms as TRL
    writes them (``exp(logp - logp.detach())`` for pi / sg(pi), ``torch.min`` of the clipped surrogates, k3 KL),
    differentiated by autograd. Returns (loss, per-row logp), in the accumulation dtype."""
    acc = acc_dtype(hidden.dtype)
    logits = F.linear(hidden, weight, bias).to(acc)  # [..., V], materialised
    valid = targets != ignore_index
    logp = logits.log_softmax(-1).gather(-1, targets.masked_fill(~valid, 0).unsqueeze(-1)).squeeze(-1)
    logp = torch.where(valid, logp, torch.zeros((), dtype=acc))
    c = policy_coef.to(acc)
    ratio = torch.exp(logp - (logp.detach() if old_logp is None else old_logp.to(acc)))
    high = epsilon if epsilon_high is None else epsilon_high
    objective = torch.min(ratio * c, torch.clamp(ratio, 1 - epsilon, 1 + high) * c)
    per_row = -objective - nll_coef.to(acc) * logp
    if ref_logp is not None:
        delta = ref_logp.to(acc) - logp
        per_row = per_row + kl_coef.to(acc) * (torch.exp(delta) - delta - 1)
    return torch.where(valid, per_row, torch.zeros((), dtype=acc)).sum(), logp
