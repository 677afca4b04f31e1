// Shared (device-agnostic) half of genrec::token_merge: argument checks, strategy, GEMMs, reductions.
#include "token_merge_common.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <limits>
#include <string>

namespace genrec {
namespace {

at::ScalarType accumulation_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// [R] bool: rows that hold at least one real (non-pad) token.
at::Tensor live_rows(const at::Tensor& tokens, int64_t pad_id) { return tokens.ne(pad_id).any(1); }

// W [d_out, L*d] -> [L, d_out, d] in dtype `t`: one slice W_l per SID level.
at::Tensor weight_by_level(const at::Tensor& weight, const TokenMergeSizes& s, at::ScalarType t) {
  return weight.to(t).view({s.out_dim, s.levels, s.dim}).permute({1, 0, 2});
}

// Where each level's slice of the projected table starts: table row = base_l + token.
struct TablePlan {
  std::vector<LevelRange> ranges;
  std::vector<int64_t> offset;  // first table row of level l
  int64_t rows = 0;             // S
  at::Tensor level_info;        // int64 [L, 3] on the op's device: (offset[l] - lo_l, lo_l, hi_l); table only
};

// The table beats the direct GEMM when the levels' spans hold fewer rows than the R * L lookups.
bool use_projected_table(const TablePlan& p, const TokenMergeSizes& s) { return p.rows < s.rows * s.levels; }

TablePlan plan_table(std::vector<LevelRange> ranges, const TokenMergeSizes& s, const at::Tensor& tokens) {
  TablePlan p;
  p.ranges = std::move(ranges);
  bool full = true;
  for (const auto& r : p.ranges) {
    p.offset.push_back(p.rows);
    p.rows += r.hi - r.lo;
    full = full && r.lo == 0 && r.hi == s.vocab;
  }
  if (!use_projected_table(p, s)) return p;  // the direct GEMM needs no level_info (a few ATen calls saved)
  if (full) {  // built on the device: no host-to-device copy (keeps CUDA-graph capture legal)
    const auto base = at::arange(s.levels, tokens.options()).mul_(s.vocab);
    p.level_info = at::stack({base, at::zeros_like(base), at::full_like(base, s.vocab)}, 1);
  } else {
    std::vector<int64_t> info;
    for (int64_t l = 0; l < s.levels; ++l) {
      info.insert(info.end(), {p.offset[l] - p.ranges[l].lo, p.ranges[l].lo, p.ranges[l].hi});
    }
    p.level_info = at::tensor(info, at::kLong).view({s.levels, 3}).to(tokens.device());
  }
  return p;
}

int64_t chunk_rows(const TokenMergeKernels& k, const TokenMergeSizes& s, at::ScalarType t) {
  const int64_t row_bytes = s.levels * s.dim * static_cast<int64_t>(c10::elementSize(t));
  // At least 256 rows so each GEMM stays efficient, at most all of them.
  return std::min(std::max<int64_t>(k.chunk_bytes / std::max<int64_t>(row_bytes, 1), 256), std::max<int64_t>(s.rows, 1));
}

}  // namespace

TokenMergeSizes check_token_merge_args(const at::Tensor& sid_tokens, const at::Tensor& embedding,
                                       const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(sid_tokens.scalar_type() == at::kLong, "token_merge: sid_tokens must be int64, got ",
              sid_tokens.scalar_type());
  TORCH_CHECK(sid_tokens.dim() == 3, "token_merge: sid_tokens must be [B, N, L], got shape ", sid_tokens.sizes());
  TORCH_CHECK(sid_tokens.size(2) >= 1, "token_merge: sid_tokens must have L >= 1 levels, got shape ",
              sid_tokens.sizes());
  const auto dtype = embedding.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kDouble,
              "token_merge: embedding must be float32, bfloat16 or float64, got ", dtype);
  TORCH_CHECK(embedding.dim() == 2, "token_merge: embedding must be [V, d], got shape ", embedding.sizes());
  TORCH_CHECK(weight.scalar_type() == dtype, "token_merge: weight dtype ", weight.scalar_type(),
              " differs from embedding dtype ", dtype);
  TokenMergeSizes s{sid_tokens.size(0) * sid_tokens.size(1), sid_tokens.size(2), embedding.size(1), 0,
                    embedding.size(0)};
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == s.levels * s.dim,
              "token_merge: weight must be [d_out, L*d] = [d_out, ", s.levels * s.dim, "] (L=", s.levels,
              ", d=", s.dim, "), got shape ", weight.sizes());
  s.out_dim = weight.size(0);
  TORCH_CHECK(sid_tokens.device() == embedding.device() && weight.device() == embedding.device(),
              "token_merge: sid_tokens (", sid_tokens.device(), "), embedding (", embedding.device(),
              ") and weight (", weight.device(), ") must be on one device");
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == dtype, "token_merge: bias dtype ", bias->scalar_type(),
                " differs from embedding dtype ", dtype);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == s.out_dim, "token_merge: bias must be [d_out] = [",
                s.out_dim, "], got shape ", bias->sizes());
    TORCH_CHECK(bias->device() == embedding.device(), "token_merge: bias is on ", bias->device(),
                " but embedding is on ", embedding.device());
  }
  return s;
}

void throw_bad_token(int64_t flat_index, int64_t value, int64_t vocab, int64_t pad_id, at::IntArrayRef shape) {
  const int64_t levels = shape[2], per_batch = shape[1] * levels;
  // INT64_MIN is the Python face's "no pad_id" (genrec_ext.ops.token_merge.NO_PAD)
  const std::string pad = pad_id == std::numeric_limits<int64_t>::min() ? std::string("no pad_id was given")
                                                                         : "is not pad_id=" + std::to_string(pad_id);
  TORCH_CHECK_INDEX(false, "token_merge: sid_tokens[", flat_index / per_batch, ", ", (flat_index % per_batch) / levels,
                    ", ", flat_index % levels, "] = ", value, " is outside [0, ", vocab,
                    ") (the embedding's rows) and ", pad);
}

at::Tensor token_merge_forward(const TokenMergeKernels& k, const at::Tensor& sid_tokens,
                               const at::Tensor& embedding_in, const at::Tensor& weight_in,
                               const std::optional<at::Tensor>& bias_in, int64_t pad_id) {
  const TokenMergeSizes s = check_token_merge_args(sid_tokens, embedding_in, weight_in, bias_in);
  const auto dtype = embedding_in.scalar_type();
  auto out = at::empty({sid_tokens.size(0), sid_tokens.size(1), s.out_dim}, embedding_in.options());
  if (s.rows == 0) return out;
  const auto tokens = sid_tokens.reshape({s.rows, s.levels}).contiguous();
  const auto plan = plan_table(k.check_tokens(tokens, s.vocab, pad_id, sid_tokens.sizes()), s, tokens);
  const auto embedding = embedding_in.contiguous();
  std::optional<at::Tensor> bias;
  if (bias_in.has_value()) bias = bias_in->contiguous();
  auto out2d = out.view({s.rows, s.out_dim});
  const auto acc = accumulation_dtype(dtype);

  if (use_projected_table(plan, s)) {
    // P_l = E[lo_l:hi_l] @ W_l^T, kept in the accumulation dtype so bf16 rounds once, at the end.
    const auto w_levels = weight_by_level(weight_in, s, acc);  // [L, d_out, d]
    auto table = at::empty({plan.rows, s.out_dim}, out.options().dtype(acc));
    for (int64_t l = 0; l < s.levels; ++l) {
      const auto [lo, hi] = plan.ranges[l];
      if (hi == lo) continue;
      auto slice = table.narrow(0, plan.offset[l], hi - lo);
      at::mm_out(slice, embedding.narrow(0, lo, hi - lo).to(acc), w_levels[l].t());
    }
    k.table_sum(table, plan.level_info, tokens, bias, pad_id, out2d);
    return out;
  }

  const auto gemm_t = k.gemm_in_accumulation_dtype ? acc : dtype;
  const auto weight_t = weight_in.to(gemm_t).t();  // [L*d, d_out]
  const auto bias_t = bias.has_value() ? bias->to(gemm_t) : at::zeros({s.out_dim}, out.options().dtype(gemm_t));
  const auto live = live_rows(tokens, pad_id);
  const int64_t step = chunk_rows(k, s, gemm_t);
  auto x = at::empty({std::min(step, s.rows), s.levels * s.dim}, embedding.options().dtype(gemm_t));
  for (int64_t r0 = 0; r0 < s.rows; r0 += step) {
    const int64_t n = std::min(step, s.rows - r0);
    auto xc = x.narrow(0, 0, n);
    auto oc = out2d.narrow(0, r0, n);
    k.gather_concat(embedding, tokens.narrow(0, r0, n), pad_id, xc);
    if (gemm_t == dtype) {
      at::addmm_out(oc, bias_t, xc, weight_t);
    } else {
      oc.copy_(at::addmm(bias_t, xc, weight_t));
    }
  }
  out2d.masked_fill_(live.logical_not().unsqueeze(1), 0);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> token_merge_backward(
    const TokenMergeKernels& k, const at::Tensor& grad_out_in, const at::Tensor& sid_tokens,
    const at::Tensor& embedding_in, const at::Tensor& weight_in, int64_t pad_id) {
  const TokenMergeSizes s = check_token_merge_args(sid_tokens, embedding_in, weight_in, std::nullopt);
  const auto dtype = embedding_in.scalar_type();
  TORCH_CHECK(grad_out_in.scalar_type() == dtype, "token_merge_backward: grad_out dtype ",
              grad_out_in.scalar_type(), " differs from embedding dtype ", dtype);
  TORCH_CHECK(grad_out_in.dim() == 3 && grad_out_in.size(0) == sid_tokens.size(0) &&
                  grad_out_in.size(1) == sid_tokens.size(1) && grad_out_in.size(2) == s.out_dim,
              "token_merge_backward: grad_out must be [B, N, d_out] = [", sid_tokens.size(0), ", ",
              sid_tokens.size(1), ", ", s.out_dim, "], got shape ", grad_out_in.sizes());
  TORCH_CHECK(grad_out_in.device() == embedding_in.device(), "token_merge_backward: grad_out is on ",
              grad_out_in.device(), " but embedding is on ", embedding_in.device());
  const auto acc = accumulation_dtype(dtype);
  const auto opts = embedding_in.options().dtype(acc);
  if (s.rows == 0) {
    const auto o = embedding_in.options();
    return {at::zeros(embedding_in.sizes(), o), at::zeros(weight_in.sizes(), o), at::zeros({s.out_dim}, o)};
  }
  const auto tokens = sid_tokens.reshape({s.rows, s.levels}).contiguous();
  const auto plan = plan_table(k.check_tokens(tokens, s.vocab, pad_id, sid_tokens.sizes()), s, tokens);
  const auto grad_out = grad_out_in.reshape({s.rows, s.out_dim}).contiguous();
  const auto embedding = embedding_in.contiguous();
  const auto live = live_rows(tokens, pad_id);
  const auto grad_bias = grad_out.to(acc).masked_fill(live.logical_not().unsqueeze(1), 0).sum(0);

  auto grad_embedding = at::zeros({s.vocab, s.dim}, opts);
  auto grad_weight = at::zeros({s.out_dim, s.levels * s.dim}, opts);
  if (use_projected_table(plan, s)) {
    auto grads = at::zeros({plan.rows, s.out_dim}, opts);  // G_l[t] = sum of grad_out over t at level l
    k.scatter_levels(grad_out, tokens, plan.level_info, pad_id, grads);
    // dE[lo_l:hi_l] += G_l @ W_l and dW_l = G_l^T @ E[lo_l:hi_l], level by level (spans may overlap).
    const auto w_levels = weight_by_level(weight_in, s, acc);  // [L, d_out, d]
    for (int64_t l = 0; l < s.levels; ++l) {
      const auto [lo, hi] = plan.ranges[l];
      if (hi == lo) continue;
      const auto g_level = grads.narrow(0, plan.offset[l], hi - lo);
      grad_embedding.narrow(0, lo, hi - lo).addmm_(g_level, w_levels[l]);
      grad_weight.narrow(1, l * s.dim, s.dim).copy_(at::mm(g_level.t(), embedding.narrow(0, lo, hi - lo).to(acc)));
    }
  } else {
    const auto gemm_t = k.gemm_in_accumulation_dtype ? acc : dtype;
    const auto weight_t = weight_in.to(gemm_t);  // [d_out, L*d]
    const int64_t step = chunk_rows(k, s, gemm_t);
    auto x = at::empty({std::min(step, s.rows), s.levels * s.dim}, embedding.options().dtype(gemm_t));
    for (int64_t r0 = 0; r0 < s.rows; r0 += step) {
      const int64_t n = std::min(step, s.rows - r0);
      const auto tc = tokens.narrow(0, r0, n);
      const auto gc = grad_out.narrow(0, r0, n).to(gemm_t);
      auto xc = x.narrow(0, 0, n);
      // Pad tokens gather as zeros, so all-pad rows add nothing to dW without masking grad_out.
      k.gather_concat(embedding, tc, pad_id, xc);
      if (gemm_t == acc) {
        grad_weight.addmm_(gc.t(), xc);
      } else {
        grad_weight.add_(at::mm(gc.t(), xc));
      }
      k.scatter_concat(at::mm(gc, weight_t), tc, pad_id, grad_embedding);
    }
  }
  return {grad_embedding.to(dtype), grad_weight.to(dtype), grad_bias.to(dtype)};
}

}  // namespace genrec
