// genrec::grpo_sr_loss — GRPO-SR (paper eq. 8) fused with the LM head, shared by the CPU and CUDA backends
// (contract: the schemas in genrec.cpp).
//
// One sweep over row blocks of Rb rows. Per block:
//   1. logits tile [Rb, V] = hidden_blk W^T + b                      (ATen GEMM: BLAS on CPU, cuBLAS on CUDA)
//   2. per row: lse = log sum_v exp(logits), the target's logit      (device kernel: online log-sum-exp)
//   3. logp = target logit - lse; the row's loss term and g = d loss / d logp (policy term with its optional
//      PPO clip, NLL, optional k3 KL): a handful of ATen ops on [Rb]-vectors, identical on every device
//   4. with gradients wanted: dlogp = grad_loss * g (+ grad_logp), then in place
//      G = dlogp * (onehot(target) - exp(logits - lse))              (device kernel)
//      grad_hidden_blk = G W;  grad_W += G^T hidden_blk;  grad_b += sum_r G   (ATen GEMMs)
// The tile holds a row block's whole vocabulary, so each logit is computed once (three GEMMs in all, as the
// eager forward + backward) and memory is O(N H + V H + Rb V): Rb is chosen so the tile stays near
// `tile_bytes` (never the N x V logits of the eager loss). grad_W is accumulated block after block by one GEMM
// each, so no two threads ever write it (race-free, deterministic for a fixed thread count).
//
// Where the gradients are computed: the forward op computes them in its sweep when grad_mask asks (the
// autograd face does so whenever an input requires grad, as Liger's fused linear losses do), and the backward
// op scales them by the upstream gradient; the backward op alone recomputes the sweep (used when the forward
// ran without grad_mask, when the per-row log-probs themselves receive a gradient, or for a second backward).
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <optional>
#include <tuple>

namespace genrec {

struct GrpoSrLossSizes {
  int64_t rows;    // N
  int64_t hidden;  // H
  int64_t vocab;   // V
};

// Validates dtypes, ranks, shapes, devices and options; errors name the argument and the offending value.
GrpoSrLossSizes check_grpo_sr_loss_args(const at::Tensor& hidden, const at::Tensor& weight,
                                        const std::optional<at::Tensor>& bias, const at::Tensor& targets,
                                        const at::Tensor& policy_coef, const at::Tensor& nll_coef,
                                        const std::optional<at::Tensor>& old_logp,
                                        const std::optional<at::Tensor>& ref_logp,
                                        const std::optional<at::Tensor>& kl_coef, double epsilon_low,
                                        double epsilon_high, int64_t block_rows);

// Throws the error for a bad target: its index into targets and its value.
[[noreturn]] void throw_bad_target(int64_t index, int64_t value, int64_t vocab, int64_t ignore_index);

// The device-specific pieces. Tiles are contiguous [n, V] in the accumulation dtype (float32, float64 for
// float64 inputs); lse / target_logit / dlogp are [n] in that dtype; targets int64 [n]. Kernels never read out
// of bounds: a target outside [0, V) that is not ignore_index gives a NaN target logit.
struct GrpoSrLossKernels {
  // Throws (throw_bad_target) for the first target outside [0, vocab) that is not ignore_index; may skip the
  // check where it would cost a host sync that is not allowed (CUDA graph capture) or not wanted.
  void (*check_targets)(const at::Tensor& targets, int64_t vocab, int64_t ignore_index);
  // lse[r] = log sum_v exp(logits[r, v]); target_logit[r] = logits[r, targets[r]] (0 for ignore_index).
  void (*row_lse)(const at::Tensor& logits, const at::Tensor& targets, int64_t ignore_index, at::Tensor& lse,
                  at::Tensor& target_logit);
  // grad[r, v] = dlogp[r] * ([v == targets[r]] - exp(logits[r, v] - lse[r])), all zero where dlogp[r] == 0.
  // grad is either logits itself (in place) or a tile of the GEMM dtype (rounded on the way out).
  void (*softmax_grad)(const at::Tensor& logits, const at::Tensor& lse, const at::Tensor& targets,
                       const at::Tensor& dlogp, at::Tensor& grad);
  // GEMMs in the accumulation dtype (true: CPU, where hidden / weight are widened once for bfloat16) or in the
  // input dtype with float32 outputs and accumulators (false: tensor cores).
  bool gemm_in_accumulation_dtype;
  // Rows per tile are chosen so that one logits tile stays about this big (at least kMinBlockRows rows).
  int64_t tile_bytes;
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> grpo_sr_loss_forward(
    const GrpoSrLossKernels& k, const at::Tensor& hidden, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& targets, const at::Tensor& policy_coef,
    const at::Tensor& nll_coef, const std::optional<at::Tensor>& old_logp, const std::optional<at::Tensor>& ref_logp,
    const std::optional<at::Tensor>& kl_coef, double epsilon_low, double epsilon_high, int64_t ignore_index,
    int64_t block_rows, std::array<bool, 3> grad_mask);

std::tuple<at::Tensor, at::Tensor, at::Tensor> grpo_sr_loss_backward(
    const GrpoSrLossKernels& k, const at::Tensor& grad_loss, const std::optional<at::Tensor>& grad_logp,
    const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& targets, const at::Tensor& policy_coef, const at::Tensor& nll_coef,
    const std::optional<at::Tensor>& old_logp, const std::optional<at::Tensor>& ref_logp,
    const std::optional<at::Tensor>& kl_coef, double epsilon_low, double epsilon_high, int64_t ignore_index,
    int64_t block_rows, std::array<bool, 3> grad_mask);

}  // namespace genrec
