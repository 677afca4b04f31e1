// CPU kernels of genrec::grpo_sr_loss: the row-wise passes over a logits tile (the GEMMs around them are
// ATen's, see ../grpo_sr_loss_common.cpp). at::parallel_for over the tile's rows; each row is walked in
// vocabulary chunks of kVocabChunk elements small enough to stay in L1/L2 between their two reads, with an
// online log-sum-exp merging the chunks, so a 152k-entry row is read from memory once per pass.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "cpu/rows.h"
#include "cpu/vec_math.h"
#include "grpo_sr_loss_common.h"

namespace genrec {
namespace {

constexpr int64_t kVocabChunk = 4096;  // 16 KiB of float32

void check_targets_cpu(const at::Tensor& targets, int64_t vocab, int64_t ignore_index) {
  const int64_t* t = targets.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < targets.numel(); ++i) {
    if (t[i] != ignore_index && (t[i] < 0 || t[i] >= vocab)) throw_bad_target(i, t[i], vocab, ignore_index);
  }
}

// log sum_j exp(x[j]) of one row, chunk by chunk: (max, sum of exp(x - max)) merged online.
template <typename acc_t>
acc_t row_log_sum_exp(const acc_t* x, int64_t n) {
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  acc_t m = kNegInf, s = 0;
  for (int64_t c0 = 0; c0 < n; c0 += kVocabChunk) {
    const int64_t len = std::min(kVocabChunk, n - c0);
    const acc_t mc = cpu::row_max(x + c0, len);
    if (mc == kNegInf) {  // all -inf (masked), or NaNs that row_max skipped: keep the NaN
      for (int64_t j = 0; j < len; ++j) {
        if (std::isnan(x[c0 + j])) return x[c0 + j];
      }
      continue;
    }
    const acc_t sc = cpu::sum_exp_shifted(x + c0, len, mc);
    if (mc > m) {
      s = s * std::exp(m - mc) + sc;
      m = mc;
    } else {
      s += sc * std::exp(mc - m);
    }
  }
  return m + std::log(s);  // -inf for an all -inf row
}

void row_lse_cpu(const at::Tensor& logits, const at::Tensor& targets, int64_t ignore_index, at::Tensor& lse,
                 at::Tensor& target_logit) {
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  const int64_t* t = targets.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "grpo_sr_loss_row_lse", [&] {
    const scalar_t* x = logits.const_data_ptr<scalar_t>();
    scalar_t* l = lse.mutable_data_ptr<scalar_t>();
    scalar_t* tl = target_logit.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, cpu::row_grain(vocab), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* row = x + r * vocab;
        l[r] = row_log_sum_exp(row, vocab);
        if (t[r] == ignore_index) {
          tl[r] = 0;
        } else {
          tl[r] = (t[r] >= 0 && t[r] < vocab) ? row[t[r]] : std::numeric_limits<scalar_t>::quiet_NaN();
        }
      }
    });
  });
}

void softmax_grad_cpu(const at::Tensor& logits, const at::Tensor& lse, const at::Tensor& targets,
                      const at::Tensor& dlogp, at::Tensor& grad) {
  TORCH_INTERNAL_ASSERT(grad.scalar_type() == logits.scalar_type() && grad.is_contiguous());
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  const int64_t* t = targets.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "grpo_sr_loss_softmax_grad", [&] {
    const scalar_t* x = logits.const_data_ptr<scalar_t>();
    const scalar_t* l = lse.const_data_ptr<scalar_t>();
    const scalar_t* d = dlogp.const_data_ptr<scalar_t>();
    scalar_t* g = grad.mutable_data_ptr<scalar_t>();  // may be x itself
    at::parallel_for(0, rows, cpu::row_grain(vocab), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        scalar_t* out = g + r * vocab;
        const scalar_t scale = d[r];
        if (scale == 0) {  // masked rows, zero coefficients: nothing flows back
          std::fill(out, out + vocab, scalar_t(0));
          continue;
        }
        const scalar_t* row = x + r * vocab;
        for (int64_t c0 = 0; c0 < vocab; c0 += kVocabChunk) {
          const int64_t len = std::min(kVocabChunk, vocab - c0);
          cpu::sum_exp_shifted(row + c0, len, l[r], out + c0);  // softmax, in L1 for the scaling below
          scalar_t* o = out + c0;
          for (int64_t j = 0; j < len; ++j) o[j] *= -scale;
        }
        if (t[r] >= 0 && t[r] < vocab) out[t[r]] += scale;
      }
    });
  });
}

const GrpoSrLossKernels kCpuKernels{
    check_targets_cpu, row_lse_cpu, softmax_grad_cpu,
    /*gemm_in_accumulation_dtype=*/true,
    /*tile_bytes=*/int64_t{64} << 20,
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> grpo_sr_loss_cpu(
    const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& targets, const at::Tensor& policy_coef, const at::Tensor& nll_coef,
    const std::optional<at::Tensor>& old_logp, const std::optional<at::Tensor>& ref_logp,
    const std::optional<at::Tensor>& kl_coef, double epsilon_low, double epsilon_high, int64_t ignore_index,
    int64_t block_rows, std::array<bool, 3> grad_mask) {
  return grpo_sr_loss_forward(kCpuKernels, hidden, weight, bias, targets, policy_coef, nll_coef, old_logp, ref_logp,
                              kl_coef, epsilon_low, epsilon_high, ignore_index, block_rows, grad_mask);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> grpo_sr_loss_backward_cpu(
    const at::Tensor& grad_loss, const std::optional<at::Tensor>& grad_logp, const at::Tensor& hidden,
    const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& targets,
    const at::Tensor& policy_coef, const at::Tensor& nll_coef, const std::optional<at::Tensor>& old_logp,
    const std::optional<at::Tensor>& ref_logp, const std::optional<at::Tensor>& kl_coef, double epsilon_low,
    double epsilon_high, int64_t ignore_index, int64_t block_rows, std::array<bool, 3> grad_mask) {
  return grpo_sr_loss_backward(kCpuKernels, grad_loss, grad_logp, hidden, weight, bias, targets, policy_coef,
                               nll_coef, old_logp, ref_logp, kl_coef, epsilon_low, epsilon_high, ignore_index,
                               block_rows, grad_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(genrec, CPU, m) {
  m.impl("grpo_sr_loss", &grpo_sr_loss_cpu);
  m.impl("grpo_sr_loss_backward", &grpo_sr_loss_backward_cpu);
}

}  // namespace genrec
