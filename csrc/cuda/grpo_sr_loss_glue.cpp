// CUDA registration of genrec::grpo_sr_loss: checks, device guard and stream around the launchers. The GEMMs
// (logits tile, grad_hidden, grad_weight) are cuBLAS through ATen in ../grpo_sr_loss_common.cpp, bfloat16
// inputs with float32 outputs / accumulators (mm / addmm with out_dtype); the kernels in grpo_sr_loss.cu are the
// row passes between them.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdlib>
#include <limits>

#include "cuda/glue.h"
#include "cuda/grpo_sr_loss.h"
#include "grpo_sr_loss_common.h"

namespace genrec {
namespace {

using cuda::current_stream;
using cuda::dtype_tag;

// One scan finds the first bad target; reading it back costs one host sync. Skipped while a CUDA graph is being
// captured and when GENREC_UNCHECKED_TARGETS=1; the kernels stay in bounds either way (a bad target's log-prob
// is NaN).
void check_targets_cuda(const at::Tensor& targets, int64_t vocab, int64_t ignore_index) {
  static const bool unchecked = [] {
    const char* v = std::getenv("GENREC_UNCHECKED_TARGETS");
    return v != nullptr && v[0] == '1';
  }();
  if (targets.numel() == 0 || unchecked ||
      c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None) {
    return;
  }
  constexpr int64_t kNone = std::numeric_limits<int64_t>::max();
  auto first_bad = at::full({1}, kNone, targets.options());
  C10_CUDA_CHECK(cuda::launch_find_bad_target(
      targets.const_data_ptr<int64_t>(), targets.numel(), vocab, ignore_index,
      reinterpret_cast<unsigned long long*>(first_bad.mutable_data_ptr<int64_t>()), current_stream()));
  const int64_t i = first_bad.item<int64_t>();
  if (i != kNone) throw_bad_target(i, targets[i].item<int64_t>(), vocab, ignore_index);
}

void row_lse_cuda(const at::Tensor& logits, const at::Tensor& targets, int64_t ignore_index, at::Tensor& lse,
                  at::Tensor& target_logit) {
  C10_CUDA_CHECK(cuda::launch_row_lse(dtype_tag(logits), logits.const_data_ptr(), targets.const_data_ptr<int64_t>(),
                                      logits.size(0), logits.size(1), ignore_index, lse.mutable_data_ptr(),
                                      target_logit.mutable_data_ptr(), current_stream()));
}

void softmax_grad_cuda(const at::Tensor& logits, const at::Tensor& lse, const at::Tensor& targets,
                       const at::Tensor& dlogp, at::Tensor& grad) {
  TORCH_INTERNAL_ASSERT(grad.is_contiguous() && grad.sizes() == logits.sizes());
  const auto d = dlogp.contiguous();
  C10_CUDA_CHECK(cuda::launch_softmax_grad(dtype_tag(logits), logits.const_data_ptr(), lse.const_data_ptr(),
                                           targets.const_data_ptr<int64_t>(), d.const_data_ptr(), logits.size(0),
                                           logits.size(1), dtype_tag(grad), grad.mutable_data_ptr(),
                                           current_stream()));
}

const GrpoSrLossKernels kCudaKernels{
    check_targets_cuda, row_lse_cuda, softmax_grad_cuda,
    /*gemm_in_accumulation_dtype=*/false,  // bf16 GEMMs on tensor cores, float32 tiles and accumulators
    /*tile_bytes=*/int64_t{1} << 30,
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> grpo_sr_loss_cuda(
    const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& targets, const at::Tensor& policy_coef, const at::Tensor& nll_coef,
    const std::optional<at::Tensor>& old_logp, const std::optional<at::Tensor>& ref_logp,
    const std::optional<at::Tensor>& kl_coef, double epsilon_low, double epsilon_high, int64_t ignore_index,
    int64_t block_rows, std::array<bool, 3> grad_mask) {
  const c10::cuda::CUDAGuard guard(hidden.device());
  return grpo_sr_loss_forward(kCudaKernels, hidden, weight, bias, targets, policy_coef, nll_coef, old_logp,
                              ref_logp, kl_coef, epsilon_low, epsilon_high, ignore_index, block_rows, grad_mask);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> grpo_sr_loss_backward_cuda(
    const at::Tensor& grad_loss, const std::optional<at::Tensor>& grad_logp, const at::Tensor& hidden,
    const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& targets,
    const at::Tensor& policy_coef, const at::Tensor& nll_coef, const std::optional<at::Tensor>& old_logp,
    const std::optional<at::Tensor>& ref_logp, const std::optional<at::Tensor>& kl_coef, double epsilon_low,
    double epsilon_high, int64_t ignore_index, int64_t block_rows, std::array<bool, 3> grad_mask) {
  const c10::cuda::CUDAGuard guard(hidden.device());
  return grpo_sr_loss_backward(kCudaKernels, grad_loss, grad_logp, hidden, weight, bias, targets, policy_coef,
                               nll_coef, old_logp, ref_logp, kl_coef, epsilon_low, epsilon_high, ignore_index,
                               block_rows, grad_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(genrec, CUDA, m) {
  m.impl("grpo_sr_loss", &grpo_sr_loss_cuda);
  m.impl("grpo_sr_loss_backward", &grpo_sr_loss_backward_cuda);
}

}  // namespace genrec
