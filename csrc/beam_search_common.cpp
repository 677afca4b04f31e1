#include "beam_search_common.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <initializer_list>
#include <string>
#include <vector>

namespace genrec {
namespace {

// The stage ops, through the dispatcher (each device's own kernel; a typed call costs well under a
// microsecond).
template <typename Signature>
c10::TypedOperatorHandle<Signature> genrec_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

at::Tensor layer_qkv(const at::Tensor& x, const at::Tensor& norm_weight, double eps, const at::Tensor& weight,
                     const std::optional<at::Tensor>& bias, const at::Tensor& cos, const at::Tensor& sin,
                     int64_t rotated_heads) {
  static const auto op = genrec_op<at::Tensor(const at::Tensor&, const at::Tensor&, double, const at::Tensor&,
                                              const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
                                              int64_t)>("genrec::layer_qkv");
  return op.call(x, norm_weight, eps, weight, bias, cos, sin, rotated_heads);
}

at::Tensor layer_out(const at::Tensor& h, const at::Tensor& attn, const at::Tensor& o_weight,
                     const std::optional<at::Tensor>& o_bias, const at::Tensor& norm_weight, double eps,
                     const at::Tensor& gate_up_weight, const at::Tensor& down_weight) {
  static const auto op = genrec_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                              const std::optional<at::Tensor>&, const at::Tensor&, double,
                                              const at::Tensor&, const at::Tensor&)>("genrec::layer_out");
  return op.call(h, attn, o_weight, o_bias, norm_weight, eps, gate_up_weight, down_weight);
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  static const auto op = genrec_op<at::Tensor(const at::Tensor&, const at::Tensor&, double)>("genrec::rms_norm");
  return op.call(x, weight, eps);
}

at::Tensor shared_prefix_attention(const at::Tensor& q, const at::Tensor& prefix_k, const at::Tensor& prefix_v,
                                   const at::Tensor& prefix_mask, const at::Tensor& own_k, const at::Tensor& own_v,
                                   double scale) {
  static const auto op = genrec_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                              const at::Tensor&, const at::Tensor&, const at::Tensor&, double)>(
      "genrec::shared_prefix_attention");
  return op.call(q, prefix_k, prefix_v, prefix_mask, own_k, own_v, scale);
}

using BeamStepResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

BeamStepResult beam_step(const at::Tensor& logits, const at::Tensor& scores, const at::Tensor& nodes,
                         const at::Tensor& child_offsets, const at::Tensor& child_codes, int64_t beam_width,
                         bool constrained) {
  static const auto op = genrec_op<BeamStepResult(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                  const at::Tensor&, const at::Tensor&, int64_t, bool)>(
      "genrec::beam_step");
  return op.call(logits, scores, nodes, child_offsets, child_codes, beam_width, constrained);
}

struct Layer {
  const at::Tensor &input_norm, &qkv, &o, &post_norm, &gate_up, &down;
  std::optional<at::Tensor> qkv_bias, o_bias;
  double eps, post_eps;
};

std::vector<Layer> unpack_layers(const BeamSearchInputs& in) {
  const int64_t n = static_cast<int64_t>(in.layer_weights.size()) / kLayerWeights;
  std::vector<Layer> layers;
  layers.reserve(n);
  for (int64_t i = 0; i < n; ++i) {
    const auto* w = in.layer_weights.data() + i * kLayerWeights;
    layers.push_back({w[0], w[1], w[2], w[3], w[4], w[5], in.layer_biases.get(2 * i), in.layer_biases.get(2 * i + 1),
                      in.layer_eps[2 * i], in.layer_eps[2 * i + 1]});
  }
  return layers;
}

}  // namespace

void check_beam_search_inputs(const BeamSearchInputs& in) {
  constexpr const char* op = "beam_search";
  const auto& e = in.embeds;
  const auto t = e.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kBFloat16 || t == at::kDouble, op,
              ": embeds must be float32, bfloat16 or float64, got ", t);
  TORCH_CHECK(e.dim() == 3 && e.size(1) >= 1, op, ": embeds must be [B, P, H] with P >= 1, got shape ", e.sizes());
  const int64_t batch = e.size(0), plen = e.size(1), hidden = e.size(2);
  const int64_t levels = static_cast<int64_t>(in.level_sizes.size());
  TORCH_CHECK(levels >= 1, op, ": level_sizes must name at least one SID level");
  for (const int64_t k : in.level_sizes) TORCH_CHECK(k >= 1, op, ": level_sizes must be >= 1, got ", in.level_sizes);
  TORCH_CHECK(in.prompt_mask.scalar_type() == at::kBool && in.prompt_mask.dim() == 2 &&
                  in.prompt_mask.size(0) == batch && in.prompt_mask.size(1) == plen,
              op, ": prompt_mask must be bool [B, P] = [", batch, ", ", plen, "], got ", in.prompt_mask.scalar_type(),
              " ", in.prompt_mask.sizes());
  TORCH_CHECK(in.cos.dim() == 3 && in.cos.size(0) == batch && in.cos.size(1) == plen + levels - 1, op,
              ": cos must be [B, P + L - 1, D] = [", batch, ", ", plen + levels - 1, ", D] (the prompt's positions and ",
              levels - 1, " decode steps), got shape ", in.cos.sizes());
  const int64_t n_layers = static_cast<int64_t>(in.layer_weights.size()) / kLayerWeights;
  TORCH_CHECK(n_layers >= 1 && static_cast<int64_t>(in.layer_weights.size()) == n_layers * kLayerWeights, op,
              ": layer_weights must hold ", kLayerWeights, " tensors per layer (at least one layer), got ",
              in.layer_weights.size());
  TORCH_CHECK(static_cast<int64_t>(in.layer_biases.size()) == 2 * n_layers, op, ": layer_biases must hold 2 per layer (",
              2 * n_layers, "), got ", in.layer_biases.size());
  TORCH_CHECK(static_cast<int64_t>(in.layer_eps.size()) == 2 * n_layers, op, ": layer_eps must hold 2 per layer (",
              2 * n_layers, "), got ", in.layer_eps.size());
  TORCH_CHECK(in.num_kv_heads >= 1 && in.num_heads >= 1 && in.num_heads % in.num_kv_heads == 0, op,
              ": num_heads = ", in.num_heads, " must be a positive multiple of num_kv_heads = ", in.num_kv_heads);
  const int64_t dim = in.cos.size(2);
  TORCH_CHECK(dim >= 2 && dim % 2 == 0, op, ": cos / sin must have an even head width D >= 2, got D = ", dim);
  // Every float tensor the search reads: its shape (-1: any size), embeds' dtype and device. The fused CPU
  // kernel reads them as raw buffers, so nothing may be left to the stage ops' own checks.
  // `layer` >= 0 names a layer's tensor; messages are built only on failure (a search checks ~20 tensors).
  const auto check = [&](const at::Tensor& x, std::initializer_list<int64_t> shape, const char* name,
                         int64_t layer = -1) {
    bool fits = x.dim() == static_cast<int64_t>(shape.size());
    for (int64_t i = 0; fits && i < x.dim(); ++i) fits = shape.begin()[i] < 0 || x.size(i) == shape.begin()[i];
    const auto where = [&] { return layer < 0 ? std::string() : "layer " + std::to_string(layer) + "'s "; };
    const auto want = [&] {
      std::string text = "[";
      for (const int64_t n : shape) text += (text.size() > 1 ? ", " : "") + (n < 0 ? std::string("?") : std::to_string(n));
      return text + "]";
    };
    TORCH_CHECK(fits, op, ": ", where(), name, " must be ", want(), ", got shape ", x.sizes());
    TORCH_CHECK(x.scalar_type() == t, op, ": ", where(), name, " must have embeds' dtype ", t, ", got ",
                x.scalar_type());
    TORCH_CHECK(x.device() == e.device(), op, ": ", where(), name, " must be on ", e.device(), ", got ", x.device());
  };
  check(in.cos, {batch, plen + levels - 1, dim}, "cos");
  check(in.sin, {batch, plen + levels - 1, dim}, "sin");
  const int64_t qkv_rows = (in.num_heads + 2 * in.num_kv_heads) * dim, attn_width = in.num_heads * dim;
  for (int64_t i = 0; i < n_layers; ++i) {
    const auto* w = in.layer_weights.data() + i * kLayerWeights;
    check(w[0], {hidden}, "input norm weight", i);
    check(w[1], {qkv_rows, hidden}, "q|k|v weight (rows: (num_heads + 2 num_kv_heads) D)", i);
    check(w[2], {hidden, attn_width}, "o weight", i);
    check(w[3], {hidden}, "post-attention norm weight", i);
    check(w[4], {-1, hidden}, "gate|up weight", i);
    TORCH_CHECK(w[4].size(0) % 2 == 0, op, ": layer ", i, "'s gate|up weight must have 2I rows, got ", w[4].size(0));
    check(w[5], {hidden, w[4].size(0) / 2}, "down weight", i);
    if (const auto b = in.layer_biases.get(2 * i); b.has_value()) check(*b, {qkv_rows}, "q|k|v bias", i);
    if (const auto b = in.layer_biases.get(2 * i + 1); b.has_value()) check(*b, {hidden}, "o bias", i);
  }
  check(in.final_norm_weight, {hidden}, "final_norm_weight");
  int64_t tokens = 0;
  for (const int64_t k : in.level_sizes) tokens += k;
  check(in.head_weight, {tokens, hidden}, "head_weight ([sum(level_sizes), H])");
  check(in.sid_embedding, {tokens, hidden}, "sid_embedding ([sum(level_sizes), H])");
  if (in.head_bias.has_value()) check(*in.head_bias, {tokens}, "head_bias ([sum(level_sizes)])");
  TORCH_CHECK(static_cast<int64_t>(in.child_offsets.size()) == levels &&
                  static_cast<int64_t>(in.child_codes.size()) == levels,
              op, ": the trie must have one child_offsets / child_codes array per level (", levels, "), got ",
              in.child_offsets.size(), " / ", in.child_codes.size());
  for (int64_t l = 0; l < levels; ++l) {
    const auto &offsets = in.child_offsets[l], &codes = in.child_codes[l];
    TORCH_CHECK(offsets.scalar_type() == at::kLong && offsets.dim() == 1 && offsets.size(0) >= 1 &&
                    codes.scalar_type() == at::kLong && codes.dim() == 1,
                op, ": child_offsets[", l, "] and child_codes[", l, "] must be 1-D int64 (offsets non-empty), got ",
                offsets.scalar_type(), " ", offsets.sizes(), " and ", codes.scalar_type(), " ", codes.sizes());
    TORCH_CHECK(offsets.device() == e.device() && codes.device() == e.device(), op, ": the trie must be on ",
                e.device(), ", got child_offsets[", l, "] on ", offsets.device(), " and child_codes[", l, "] on ",
                codes.device());
    // A depth's children are the next depth's nodes (checked where the search can reach them, constrained).
    TORCH_CHECK(!in.constrained || l + 1 == levels || in.child_offsets[l + 1].size(0) == codes.size(0) + 1, op,
                ": the trie's depth ", l, " has ", codes.size(0), " children but depth ", l + 1, " has ",
                in.child_offsets[l + 1].size(0) - 1, " nodes (child_offsets[", l + 1, "] must have ",
                codes.size(0) + 1, " entries)");
  }
  TORCH_CHECK(in.child_offsets[0].size(0) == 2, op,
              ": the trie's first depth must hold exactly the root (child_offsets[0] of 2 entries), got shape ",
              in.child_offsets[0].sizes());
  TORCH_CHECK(in.beam_width >= 1, op, ": beam_width must be >= 1, got ", in.beam_width);
  TORCH_CHECK(in.prompt_mask.device() == e.device(), op, ": prompt_mask must be on ", e.device(), ", got ",
              in.prompt_mask.device());
}

std::vector<int64_t> level_offsets(at::IntArrayRef level_sizes) {
  std::vector<int64_t> offsets(level_sizes.size(), 0);
  for (size_t l = 1; l < offsets.size(); ++l) offsets[l] = offsets[l - 1] + level_sizes[l - 1];
  return offsets;
}

// Fewer rows than this per task cost more in task start-up than they save.
constexpr int64_t kMinRowsPerTask = 16;

std::vector<RowTask> split_rows(int64_t batch, int64_t beams, int64_t max_tasks) {
  const int64_t parts = std::clamp<int64_t>(batch * beams / kMinRowsPerTask, 1, std::max<int64_t>(max_tasks, 1));
  std::vector<RowTask> tasks;
  if (batch >= parts) {
    for (int64_t p = 0; p < parts; ++p) {
      const int64_t b0 = batch * p / parts, b1 = batch * (p + 1) / parts;
      tasks.push_back({b0, b1 - b0, 0, beams});
    }
    return tasks;
  }
  const int64_t slices = std::min((parts + batch - 1) / batch, beams);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t s = 0; s < slices; ++s) {
      const int64_t w0 = beams * s / slices, w1 = beams * (s + 1) / slices;
      tasks.push_back({b, 1, w0, w1 - w0});
    }
  }
  return tasks;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> beam_search_impl(const BeamSearchInputs& in, const RowTaskRunner& runner) {
  check_beam_search_inputs(in);
  const auto layers = unpack_layers(in);
  const int64_t batch = in.embeds.size(0), plen = in.embeds.size(1), hidden = in.embeds.size(2);
  const int64_t heads = in.num_heads, kv_heads = in.num_kv_heads, dim = in.cos.size(2);
  const int64_t levels = static_cast<int64_t>(in.level_sizes.size()), width = in.beam_width;
  const int64_t n_layers = static_cast<int64_t>(layers.size());
  const auto level_offset = level_offsets(in.level_sizes);
  const auto level_logits = [&](const at::Tensor& h, int64_t l, std::optional<at::Tensor> out) {
    const auto w = in.head_weight.narrow(0, level_offset[l], in.level_sizes[l]);
    if (!in.head_bias.has_value()) return out ? at::mm_out(*out, h, w.t()) : at::mm(h, w.t());
    const auto b = in.head_bias->narrow(0, level_offset[l], in.level_sizes[l]);
    return out ? at::addmm_out(*out, b, h, w.t()) : at::addmm(b, h, w.t());
  };

  // ---- prefill: every prompt position through every layer; keeps each layer's keys / values --------------
  const auto cos_prompt = in.cos.narrow(1, 0, plen).reshape({batch * plen, dim});
  const auto sin_prompt = in.sin.narrow(1, 0, plen).reshape({batch * plen, dim});
  const auto& mask = in.prompt_mask;
  // Causal over real keys; a padding query also sees itself, so that no row is fully masked (NaN).
  const auto j = at::arange(plen, mask.options().dtype(at::kLong));
  const auto attend = (j.unsqueeze(0) <= j.unsqueeze(1)).unsqueeze(0) &
                      (mask.unsqueeze(1) | at::eye(plen, mask.options()).unsqueeze(0));  // [B, P, P]
  std::vector<at::Tensor> prefix_k(n_layers), prefix_v(n_layers);
  auto h = in.embeds.reshape({batch * plen, hidden});
  for (int64_t i = 0; i < n_layers; ++i) {
    const auto& w = layers[i];
    const bool last = i + 1 == n_layers;
    const auto qkv = layer_qkv(h, w.input_norm, w.eps, w.qkv, w.qkv_bias, cos_prompt, sin_prompt, heads + kv_heads)
                         .view({batch, plen, heads + 2 * kv_heads, dim})
                         .transpose(1, 2);  // [B, heads, P, D]
    auto q = qkv.narrow(1, 0, heads);
    prefix_k[i] = qkv.narrow(1, heads, kv_heads).contiguous();  // read every step: made dense once
    prefix_v[i] = qkv.narrow(1, heads + kv_heads, kv_heads).contiguous();
    if (last) {  // only the last position's output is needed from the last layer
      q = q.narrow(2, plen - 1, 1);
      h = h.view({batch, plen, hidden}).select(1, plen - 1);
    }
    const int64_t q_len = q.size(2);
    const auto out = at::scaled_dot_product_attention(q, prefix_k[i], prefix_v[i],
                                                      attend.narrow(1, plen - q_len, q_len).unsqueeze(1), 0.0, false,
                                                      in.scaling, heads != kv_heads);
    h = layer_out(h, out.transpose(1, 2).reshape({h.size(0), heads * dim}), w.o, w.o_bias, w.post_norm, w.post_eps,
                  w.gate_up, w.down);
  }
  h = rms_norm(h, in.final_norm_weight, in.final_eps);  // [B, H]

  // ---- level 0 from the prompt, then one decode step + beam step per further level -----------------------
  const auto acc = in.embeds.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto long_opts = mask.options().dtype(at::kLong);
  auto scores = at::zeros({batch, 1}, in.embeds.options().dtype(acc));
  auto nodes = at::zeros({batch, 1}, long_opts);
  auto codes = at::empty({batch, 1, 0}, long_opts);
  auto logits = level_logits(h, 0, std::nullopt).view({batch, 1, in.level_sizes[0]});
  // Every layer's decoded keys and values, [layers, 2, B W, Hkv, L - 1, D]: a step writes one slot per layer, and
  // following the parents is one index_select for all layers.
  at::Tensor own;
  const int64_t steps = levels - 1;
  for (int64_t level = 0;; ++level) {
    auto [step_scores, step_codes, parents, step_nodes] =
        beam_step(logits, scores, nodes, in.child_offsets[level], in.child_codes[level], width, in.constrained);
    scores = step_scores;
    nodes = step_nodes;
    const auto safe_parents = parents.clamp_min(0);  // dead slots follow beam 0; their -inf score keeps them dead
    codes = at::cat({codes.gather(1, safe_parents.unsqueeze(2).expand({batch, width, level})), step_codes.unsqueeze(2)},
                    2);
    if (level + 1 == levels) break;

    // Decode step t = level: the chosen level-`level` tokens at prompt position P + t.
    const int64_t t = level, rows = batch * width;
    if (t == 0) {
      own = at::empty({n_layers, 2, rows, kv_heads, steps, dim}, in.embeds.options());
    } else {
      const auto beams_in = at::arange(batch, long_opts).mul_(width).unsqueeze(1);
      own = own.index_select(2, (safe_parents + beams_in).view({rows}));
    }
    const auto tokens = step_codes.clamp_min(0).add_(level_offset[level]).view({rows});
    const auto cos_t = in.cos.select(1, plen + t).contiguous(), sin_t = in.sin.select(1, plen + t).contiguous();
    const auto head_rows = in.level_sizes[level + 1];
    auto next_logits = at::empty({rows, head_rows}, in.embeds.options());
    const auto tasks = split_rows(batch, width, runner.max_tasks);
    runner.run(static_cast<int64_t>(tasks.size()), [&](int64_t k) {
      const auto [b0, nb, w0, nw] = tasks[k];
      const int64_t r0 = b0 * width + w0, n = nb * nw;
      auto x = in.sid_embedding.index_select(0, tokens.narrow(0, r0, n));  // [n, H]
      const auto cos_rows = cos_t.narrow(0, b0, nb), sin_rows = sin_t.narrow(0, b0, nb);  // shared by a query's beams
      const auto mask_rows = mask.narrow(0, b0, nb);
      for (int64_t i = 0; i < n_layers; ++i) {
        const auto& w = layers[i];
        const auto qkv = layer_qkv(x, w.input_norm, w.eps, w.qkv, w.qkv_bias, cos_rows, sin_rows, heads + kv_heads)
                             .view({nb, nw, heads + 2 * kv_heads, dim});
        const auto own_rows = own.select(0, i).narrow(1, r0, n);  // [2, n, Hkv, steps, D]
        own_rows.select(3, t).copy_(qkv.narrow(2, heads, 2 * kv_heads).reshape({n, 2, kv_heads, dim}).transpose(0, 1));
        const auto own_kv = own_rows.narrow(3, 0, t + 1).view({2, nb, nw, kv_heads, t + 1, dim});
        const auto attn = shared_prefix_attention(qkv.narrow(2, 0, heads), prefix_k[i].narrow(0, b0, nb),
                                                  prefix_v[i].narrow(0, b0, nb), mask_rows, own_kv[0], own_kv[1],
                                                  in.scaling);
        x = layer_out(x, attn.view({n, heads * dim}), w.o, w.o_bias, w.post_norm, w.post_eps, w.gate_up, w.down);
      }
      level_logits(rms_norm(x, in.final_norm_weight, in.final_eps), level + 1, next_logits.narrow(0, r0, n));
    });
    logits = next_logits.view({batch, width, head_rows});
  }
  codes.masked_fill_(scores.isneginf().unsqueeze(2), -1);  // a dead slot's earlier codes are its stand-in parent's
  return {scores, codes, nodes};
}

}  // namespace genrec
