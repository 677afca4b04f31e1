"""genrec::layer_qkv / genrec::layer_out / genrec::rms_norm (a Qwen2 decoder layer as two fused halves around
its attention, and the final norm) against
* the plain-PyTorch reference (genrec_ext.ops.reference), and
* transformers' own Qwen2 modules on the same weights ("hf"): Qwen2RMSNorm, the q/k/v Linears and
  apply_rotary_pos_emb; o_proj + residual, Qwen2RMSNorm, Qwen2MLP + residual.

    python benchmarks/bench_decoder_layer.py                 # CPU: presets tiny, small
    python benchmarks/bench_decoder_layer.py --device cuda --presets tiny,small,base

Rows = B x W decode rows (W = 50 beams; B = 1 / 16 / 64), as in one beam-search decode step.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import Qwen2Config
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RotaryEmbedding, apply_rotary_pos_emb

sys.path.insert(0, str(Path(__file__).parent))
from common import benchmark_parser, machine_description, measure_interleaved, parse_ints, print_row, write_table  # noqa: E402

from genrec_ext.decoding.weights import layer_weights  # noqa: E402
from genrec_ext.model import ModelConfig  # noqa: E402
from genrec_ext.ops import layer_out, layer_qkv, reference, rms_norm  # noqa: E402


def hf_layer(preset: str, device: str, dtype: torch.dtype) -> tuple[Qwen2DecoderLayer, Qwen2RotaryEmbedding]:
    c = ModelConfig.load(preset)
    config = Qwen2Config(hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                         num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads)
    torch.manual_seed(0)
    layer = Qwen2DecoderLayer(config, 0).to(device, dtype).eval()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return layer, Qwen2RotaryEmbedding(config).to(device)


def main() -> None:
    ap = benchmark_parser(__doc__)
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--batches", type=parse_ints, default=[1, 16, 64])
    ap.add_argument("--beams", type=int, default=50)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--budget", type=float, default=1.0, help="seconds of timing per variant (over 5 rounds)")
    args = ap.parse_args()
    device, dtype = args.device, getattr(torch, args.dtype)
    rows = []
    with torch.no_grad():
        for preset in args.presets.split(","):
            layer, rotary = hf_layer(preset, device, dtype)
            attn, mlp = layer.self_attn, layer.mlp
            heads, kv_heads = attn.config.num_attention_heads, attn.config.num_key_value_heads
            hd, hidden, eps = attn.head_dim, attn.config.hidden_size, layer.input_layernorm.variance_epsilon
            w = layer_weights(layer)  # the fused q|k|v and gate|up weights, exactly as the search passes them
            for batch in args.batches:
                n = batch * args.beams
                g = torch.Generator(device=device).manual_seed(0)
                x = torch.randn(n, hidden, generator=g, device=device).to(dtype)
                a = torch.randn(n, heads * hd, generator=g, device=device).to(dtype)
                cos, sin = rotary(x, torch.arange(20, 20 + batch, device=device)[:, None])  # one position per query
                cos, sin = cos.reshape(batch, hd), sin.reshape(batch, hd)
                qkv_args = (x, w.input_norm, w.eps, w.qkv, w.qkv_bias, cos, sin, heads + kv_heads)
                out_args = (x, a, w.o, w.o_bias, w.post_norm, w.post_eps, w.gate_up, w.down)
                beams_cos = cos.repeat_interleave(args.beams, 0)[:, None]  # HF: one row per beam
                beams_sin = sin.repeat_interleave(args.beams, 0)[:, None]

                def hf_qkv():
                    h = layer.input_layernorm(x)
                    q = attn.q_proj(h).view(n, heads, hd)
                    k = attn.k_proj(h).view(n, kv_heads, hd)
                    return apply_rotary_pos_emb(q, k, beams_cos, beams_sin, unsqueeze_dim=0) + (attn.v_proj(h),)

                def hf_out():
                    h1 = x + attn.o_proj(a)
                    return h1 + mlp(layer.post_attention_layernorm(h1))

                t = measure_interleaved({
                    "qkv_ours": lambda: layer_qkv(*qkv_args), "qkv_ref": lambda: reference.layer_qkv(*qkv_args),
                    "qkv_hf": hf_qkv, "out_ours": lambda: layer_out(*out_args),
                    "out_ref": lambda: reference.layer_out(*out_args), "out_hf": hf_out,
                    "norm_ours": lambda: rms_norm(x, layer.input_layernorm.weight, eps),
                    "norm_ref": lambda: reference.rms_norm(x, layer.input_layernorm.weight, eps),
                    "norm_hf": lambda: layer.input_layernorm(x)}, device, budget_s=args.budget)
                t = {name: ms * 1e3 for name, ms in t.items()}
                row = dict(preset=preset, rows=n, qkv_ours_us=t["qkv_ours"], qkv_hf_us=t["qkv_hf"],
                           x_qkv_hf=t["qkv_hf"] / t["qkv_ours"], x_qkv_ref=t["qkv_ref"] / t["qkv_ours"],
                           out_ours_us=t["out_ours"], out_hf_us=t["out_hf"], x_out_hf=t["out_hf"] / t["out_ours"],
                           x_out_ref=t["out_ref"] / t["out_ours"], norm_ours_us=t["norm_ours"],
                           norm_hf_us=t["norm_hf"], x_norm_hf=t["norm_hf"] / t["norm_ours"],
                           x_norm_ref=t["norm_ref"] / t["norm_ours"])
                rows.append(row)
                print_row(row)
    note = (f"{machine_description(device)}, {args.dtype}, W={args.beams} beams per query. x_*_hf: transformers' "
            "Qwen2 modules on the same weights / ours; x_*_ref: the plain-PyTorch reference / ours. qkv = RMSNorm + "
            "q|k|v projection + rotary; out = o_proj + residual + RMSNorm + SwiGLU MLP + residual; norm = RMSNorm.")
    write_table(rows, list(rows[0]), "Decoder layer halves", args.out / f"decoder_layer_{device}", note)


if __name__ == "__main__":
    main()
