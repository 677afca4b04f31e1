// Shared (device-agnostic) half of genrec::grpo_sr_loss: argument checks, tiling, GEMMs and the per-row
// coefficient maths of eq. 8 (policy term with optional PPO clip, NLL, optional KL).
#include "grpo_sr_loss_common.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <utility>

namespace genrec {
namespace {

// Fewer rows per tile make the GEMMs inefficient (on one EPYC core: ~75 GFLOP/s at 64 rows, ~85 at >= 128).
constexpr int64_t kMinBlockRows = 64;

at::ScalarType accumulation_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

void check_row_vector(const at::Tensor& t, const char* op, const char* name, int64_t rows, const at::Tensor& hidden) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name, " must be a floating-point tensor, got ",
              t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == rows, op, ": ", name, " must be [N] = [", rows,
              "] (N = rows of hidden), got shape ", t.sizes());
  TORCH_CHECK(t.device() == hidden.device(), op, ": ", name, " is on ", t.device(), " but hidden is on ",
              hidden.device());
}

// The per-row inputs of the loss in the accumulation dtype, contiguous.
struct RowCoefs {
  at::Tensor policy;  // c_r = A_i / (G |o_i|) on rollout tokens
  at::Tensor nll;     // alpha-weighted NLL coefficient on positive tokens
  std::optional<at::Tensor> old_logp, ref_logp, kl;

  RowCoefs narrow(int64_t r0, int64_t n) const {
    auto cut = [&](const std::optional<at::Tensor>& t) -> std::optional<at::Tensor> {
      if (!t.has_value()) return std::nullopt;
      return t->narrow(0, r0, n);
    };
    return {policy.narrow(0, r0, n), nll.narrow(0, r0, n), cut(old_logp), cut(ref_logp), cut(kl)};
  }
};

RowCoefs row_coefs(at::ScalarType acc, const at::Tensor& policy_coef, const at::Tensor& nll_coef,
                   const std::optional<at::Tensor>& old_logp, const std::optional<at::Tensor>& ref_logp,
                   const std::optional<at::Tensor>& kl_coef) {
  auto conv = [&](const std::optional<at::Tensor>& t) -> std::optional<at::Tensor> {
    if (!t.has_value()) return std::nullopt;
    return t->to(acc).contiguous();
  };
  return {policy_coef.to(acc).contiguous(), nll_coef.to(acc).contiguous(), conv(old_logp), conv(ref_logp),
          conv(kl_coef)};
}

// The loss term of each row and g = d(term) / d logp, both [n]; zero where !valid (ignored rows).
//   policy:  -min(ratio c, clip(ratio, 1 - lo, 1 + hi) c), d/dlogp = -ratio c where the unclipped branch is the
//            minimum (the clipped one is constant), else 0; without old_logp the ratio is exp(logp - sg(logp)):
//            value 1, derivative 1 — never clipped.
//   NLL:     -nll logp, d/dlogp = -nll.
//   KL (k3): kl (exp(ref - logp) - (ref - logp) - 1), d/dlogp = kl (1 - exp(ref - logp)).
std::pair<at::Tensor, at::Tensor> row_terms(const at::Tensor& logp, const at::Tensor& valid, const RowCoefs& c,
                                            double epsilon_low, double epsilon_high) {
  at::Tensor objective, d_objective;
  if (c.old_logp.has_value()) {
    const auto ratio = at::exp(logp - *c.old_logp);
    const auto unclipped = ratio * c.policy;
    const auto clipped = ratio.clamp(1.0 - epsilon_low, 1.0 + epsilon_high) * c.policy;
    objective = at::minimum(unclipped, clipped);
    d_objective = at::where(unclipped <= clipped, unclipped, 0);
  } else {
    objective = c.policy;
    d_objective = c.policy;
  }
  auto loss = -objective - c.nll * logp;
  auto g = -d_objective - c.nll;
  if (c.ref_logp.has_value()) {
    const auto delta = *c.ref_logp - logp;
    const auto e = at::exp(delta);
    loss = loss + *c.kl * (e - delta - 1);
    g = g + *c.kl * (1 - e);
  }
  return {at::where(valid, loss, 0), at::where(valid, g, 0)};
}

int64_t rows_per_block(const GrpoSrLossKernels& k, const GrpoSrLossSizes& s, int64_t tile_row_bytes,
                       int64_t requested) {
  const int64_t all = std::max<int64_t>(s.rows, 1);
  if (requested > 0) return std::min(requested, all);
  return std::min(std::max(k.tile_bytes / std::max<int64_t>(tile_row_bytes, 1), kMinBlockRows), all);
}

struct SweepResult {
  at::Tensor loss, logp, grad_hidden, grad_weight, grad_bias;
};

// The one pass over row blocks that both ops run. grad_loss (0-dim) scales g; grad_logp ([N]) is added to it.
SweepResult sweep(const GrpoSrLossKernels& k, const GrpoSrLossSizes& s, const at::Tensor& hidden_in,
                  const at::Tensor& weight_in, const std::optional<at::Tensor>& bias_in,
                  const at::Tensor& targets_in, const RowCoefs& coefs, double epsilon_low, double epsilon_high,
                  int64_t ignore_index, int64_t block_rows, std::array<bool, 3> grad_mask,
                  const std::optional<at::Tensor>& grad_loss, const std::optional<at::Tensor>& grad_logp) {
  const auto dtype = hidden_in.scalar_type();
  const auto acc = accumulation_dtype(dtype);
  const auto gemm_t = k.gemm_in_accumulation_dtype ? acc : dtype;
  const auto opts = hidden_in.options();
  const bool any_grad = grad_mask[0] || grad_mask[1] || grad_mask[2];

  SweepResult out;
  out.logp = at::zeros({s.rows}, opts.dtype(acc));
  out.grad_hidden = grad_mask[0] ? at::empty({s.rows, s.hidden}, opts) : at::empty({0}, opts);
  auto grad_weight = grad_mask[1] ? at::zeros({s.vocab, s.hidden}, opts.dtype(acc)) : at::empty({0}, opts);
  auto grad_bias = grad_mask[2] ? at::zeros({s.vocab}, opts.dtype(acc)) : at::empty({0}, opts);
  auto row_loss = at::zeros({s.rows}, opts.dtype(acc));

  const auto targets = targets_in.contiguous();
  k.check_targets(targets, s.vocab, ignore_index);
  if (s.rows > 0) {
    // bfloat16 on CPU: hidden and weight widened once (O(N H + V H)); elsewhere these are no-ops.
    const auto h = hidden_in.to(gemm_t).contiguous();
    const auto w = weight_in.to(gemm_t).contiguous();
    std::optional<at::Tensor> b;
    if (bias_in.has_value()) b = bias_in->to(acc).contiguous();
    const bool separate_grad_tile = any_grad && gemm_t != acc;
    const int64_t row_bytes = s.vocab * static_cast<int64_t>(c10::elementSize(acc) +
                                                             (separate_grad_tile ? c10::elementSize(gemm_t) : 0));
    const int64_t rb = rows_per_block(k, s, row_bytes, block_rows);
    auto tile = at::empty({rb, s.vocab}, opts.dtype(acc));
    auto grad_tile = separate_grad_tile ? at::empty({rb, s.vocab}, opts.dtype(gemm_t)) : tile;
    auto lse_buf = at::empty({rb}, opts.dtype(acc));
    auto target_logit_buf = at::empty({rb}, opts.dtype(acc));

    for (int64_t r0 = 0; r0 < s.rows; r0 += rb) {
      const int64_t n = std::min(rb, s.rows - r0);
      auto logits = tile.narrow(0, 0, n);
      const auto hb = h.narrow(0, r0, n);
      if (gemm_t == acc) {
        if (b.has_value()) {
          at::addmm_out(logits, *b, hb, w.t());
        } else {
          at::mm_out(logits, hb, w.t());
        }
      } else {
        at::mm_out(logits, hb, w.t(), acc);  // bf16 inputs, float32 tile (tensor cores, fp32 accumulation)
        if (b.has_value()) logits.add_(*b);
      }
      const auto tb = targets.narrow(0, r0, n);
      auto lse = lse_buf.narrow(0, 0, n);
      auto target_logit = target_logit_buf.narrow(0, 0, n);
      k.row_lse(logits, tb, ignore_index, lse, target_logit);

      const auto valid = tb.ne(ignore_index);
      const auto logp = at::where(valid, target_logit - lse, 0);
      out.logp.narrow(0, r0, n).copy_(logp);
      auto [loss_terms, g] = row_terms(logp, valid, coefs.narrow(r0, n), epsilon_low, epsilon_high);
      row_loss.narrow(0, r0, n).copy_(loss_terms);
      if (!any_grad) continue;

      auto dlogp = grad_loss.has_value() ? g * *grad_loss : g;
      if (grad_logp.has_value()) dlogp = at::where(valid, dlogp + grad_logp->narrow(0, r0, n), 0);
      auto grad_logits = grad_tile.narrow(0, 0, n);
      k.softmax_grad(logits, lse, tb, dlogp, grad_logits);
      if (grad_mask[0]) {
        auto ghb = out.grad_hidden.narrow(0, r0, n);
        if (ghb.scalar_type() == gemm_t) {
          at::mm_out(ghb, grad_logits, w);
        } else {
          ghb.copy_(at::mm(grad_logits, w));
        }
      }
      if (grad_mask[1]) {
        if (gemm_t == acc) {
          grad_weight.addmm_(grad_logits.t(), hb);
        } else {
          at::addmm_out(grad_weight, grad_weight, grad_logits.t(), hb, acc);
        }
      }
      if (grad_mask[2]) grad_bias.add_(at::sum(grad_logits, {0}, false, acc));
    }
  }
  out.loss = row_loss.sum();
  out.grad_weight = grad_mask[1] ? grad_weight.to(dtype) : grad_weight;
  out.grad_bias = grad_mask[2] ? grad_bias.to(dtype) : grad_bias;
  return out;
}

}  // namespace

GrpoSrLossSizes check_grpo_sr_loss_args(const at::Tensor& hidden, const at::Tensor& weight,
                                        const std::optional<at::Tensor>& bias, const at::Tensor& targets,
                                        const at::Tensor& policy_coef, const at::Tensor& nll_coef,
                                        const std::optional<at::Tensor>& old_logp,
                                        const std::optional<at::Tensor>& ref_logp,
                                        const std::optional<at::Tensor>& kl_coef, double epsilon_low,
                                        double epsilon_high, int64_t block_rows) {
  constexpr const char* op = "grpo_sr_loss";
  const auto dtype = hidden.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kDouble, op,
              ": hidden must be float32, bfloat16 or float64, got ", dtype);
  TORCH_CHECK(hidden.dim() == 2, op, ": hidden must be [N, H], got shape ", hidden.sizes());
  const GrpoSrLossSizes s{hidden.size(0), hidden.size(1), weight.dim() == 2 ? weight.size(0) : 0};
  TORCH_CHECK(weight.scalar_type() == dtype, op, ": weight dtype ", weight.scalar_type(),
              " differs from hidden dtype ", dtype);
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == s.hidden, op, ": weight must be [V, H] = [V, ", s.hidden,
              "] (H from hidden), got shape ", weight.sizes());
  TORCH_CHECK(s.vocab >= 1, op, ": weight must have at least one row (V >= 1), got shape ", weight.sizes());
  TORCH_CHECK(weight.device() == hidden.device(), op, ": weight is on ", weight.device(), " but hidden is on ",
              hidden.device());
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == dtype, op, ": bias dtype ", bias->scalar_type(),
                " differs from hidden dtype ", dtype);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == s.vocab, op, ": bias must be [V] = [", s.vocab,
                "], got shape ", bias->sizes());
    TORCH_CHECK(bias->device() == hidden.device(), op, ": bias is on ", bias->device(), " but hidden is on ",
                hidden.device());
  }
  TORCH_CHECK(targets.scalar_type() == at::kLong, op, ": targets must be int64, got ", targets.scalar_type());
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == s.rows, op, ": targets must be [N] = [", s.rows,
              "] (N = rows of hidden), got shape ", targets.sizes());
  TORCH_CHECK(targets.device() == hidden.device(), op, ": targets is on ", targets.device(),
              " but hidden is on ", hidden.device());
  check_row_vector(policy_coef, op, "policy_coef", s.rows, hidden);
  check_row_vector(nll_coef, op, "nll_coef", s.rows, hidden);
  if (old_logp.has_value()) check_row_vector(*old_logp, op, "old_logp", s.rows, hidden);
  if (ref_logp.has_value()) check_row_vector(*ref_logp, op, "ref_logp", s.rows, hidden);
  if (kl_coef.has_value()) check_row_vector(*kl_coef, op, "kl_coef", s.rows, hidden);
  TORCH_CHECK(ref_logp.has_value() == kl_coef.has_value(), op,
              ": ref_logp and kl_coef go together (the KL term needs both), got ",
              ref_logp.has_value() ? "ref_logp without kl_coef" : "kl_coef without ref_logp");
  TORCH_CHECK(epsilon_low >= 0 && epsilon_low <= 1, op, ": epsilon_low must be in [0, 1], got ", epsilon_low);
  TORCH_CHECK(epsilon_high >= 0, op, ": epsilon_high must be >= 0, got ", epsilon_high);
  TORCH_CHECK(block_rows >= 0, op, ": block_rows must be >= 0 (0: automatic), got ", block_rows);
  return s;
}

void throw_bad_target(int64_t index, int64_t value, int64_t vocab, int64_t ignore_index) {
  TORCH_CHECK(false, "grpo_sr_loss: targets[", index, "] = ", value, " is outside [0, ", vocab,
              ") (the weight's rows) and is not ignore_index=", ignore_index);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> grpo_sr_loss_forward(
    const GrpoSrLossKernels& k, const at::Tensor& hidden, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& targets, const at::Tensor& policy_coef,
    const at::Tensor& nll_coef, const std::optional<at::Tensor>& old_logp, const std::optional<at::Tensor>& ref_logp,
    const std::optional<at::Tensor>& kl_coef, double epsilon_low, double epsilon_high, int64_t ignore_index,
    int64_t block_rows, std::array<bool, 3> grad_mask) {
  const auto s = check_grpo_sr_loss_args(hidden, weight, bias, targets, policy_coef, nll_coef, old_logp, ref_logp,
                                         kl_coef, epsilon_low, epsilon_high, block_rows);
  const auto coefs =
      row_coefs(accumulation_dtype(hidden.scalar_type()), policy_coef, nll_coef, old_logp, ref_logp, kl_coef);
  auto r = sweep(k, s, hidden, weight, bias, targets, coefs, epsilon_low, epsilon_high, ignore_index, block_rows,
                 grad_mask, std::nullopt, std::nullopt);
  return {r.loss, r.logp, r.grad_hidden, r.grad_weight, r.grad_bias};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> grpo_sr_loss_backward(
    const GrpoSrLossKernels& k, const at::Tensor& grad_loss, const std::optional<at::Tensor>& grad_logp,
    const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& targets, const at::Tensor& policy_coef, const at::Tensor& nll_coef,
    const std::optional<at::Tensor>& old_logp, const std::optional<at::Tensor>& ref_logp,
    const std::optional<at::Tensor>& kl_coef, double epsilon_low, double epsilon_high, int64_t ignore_index,
    int64_t block_rows, std::array<bool, 3> grad_mask) {
  const auto s = check_grpo_sr_loss_args(hidden, weight, bias, targets, policy_coef, nll_coef, old_logp, ref_logp,
                                         kl_coef, epsilon_low, epsilon_high, block_rows);
  const auto acc = accumulation_dtype(hidden.scalar_type());
  if (!(grad_mask[0] || grad_mask[1] || grad_mask[2])) {
    const auto o = hidden.options();
    return {at::empty({0}, o), at::empty({0}, o), at::empty({0}, o)};
  }
  TORCH_CHECK(at::isFloatingType(grad_loss.scalar_type()) && grad_loss.numel() == 1,
              "grpo_sr_loss_backward: grad_loss must be a floating-point scalar, got ", grad_loss.scalar_type(),
              " of shape ", grad_loss.sizes());
  TORCH_CHECK(grad_loss.device() == hidden.device(), "grpo_sr_loss_backward: grad_loss is on ", grad_loss.device(),
              " but hidden is on ", hidden.device());
  std::optional<at::Tensor> grad_logp_acc;
  if (grad_logp.has_value()) {
    check_row_vector(*grad_logp, "grpo_sr_loss_backward", "grad_logp", s.rows, hidden);
    grad_logp_acc = grad_logp->to(acc).contiguous();
  }
  const auto coefs = row_coefs(acc, policy_coef, nll_coef, old_logp, ref_logp, kl_coef);
  auto r = sweep(k, s, hidden, weight, bias, targets, coefs, epsilon_low, epsilon_high, ignore_index, block_rows,
                 grad_mask, grad_loss.reshape({}).to(acc), grad_logp_acc);
  return {r.grad_hidden, r.grad_weight, r.grad_bias};
}

}  // namespace genrec
