// genrec::layer_qkv and genrec::layer_out — the two fused halves of a Qwen2 decoder layer around its
// attention — and genrec::rms_norm, the model's final norm (contract: the schemas in genrec.cpp). The GEMMs are ATen's (MKL / oneDNN on CPU, cuBLAS on CUDA,
// with the residual adds folded into addmm); everything between them is one pass of a device kernel per
// stage, so a layer costs two op calls instead of ~20 and no intermediate is read twice.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace genrec {

// The per-device elementwise stages. All tensors are contiguous and of one dtype (float32, bfloat16, float16
// or float64); arithmetic is in float32 (float64 for float64).
struct DecoderLayerKernels {
  // out[r] = weight * (x[r] / sqrt(mean(x[r]^2) + eps)), the normalised row rounded to the dtype before the
  // weight multiplies it (as transformers' Qwen2RMSNorm does). x, out [N, H].
  void (*rms_norm)(const at::Tensor& x, const at::Tensor& weight, double eps, at::Tensor& out);
  // In place on the first `rotated_heads` heads of width D of every row of y [N, O]; cos / sin [M, D].
  void (*rotary)(at::Tensor& y, const at::Tensor& cos, const at::Tensor& sin, int64_t rotated_heads);
  // out[r, j] = silu(gate_up[r, j]) * gate_up[r, I + j]; gate_up [N, 2I], out [N, I].
  void (*silu_mul)(const at::Tensor& gate_up, at::Tensor& out);
};

at::Tensor rms_norm_impl(const DecoderLayerKernels& k, const at::Tensor& x, const at::Tensor& weight, double eps);

at::Tensor layer_qkv_impl(const DecoderLayerKernels& k, const at::Tensor& x, const at::Tensor& norm_weight,
                          double eps, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          const at::Tensor& cos, const at::Tensor& sin, int64_t rotated_heads);

at::Tensor layer_out_impl(const DecoderLayerKernels& k, const at::Tensor& h, const at::Tensor& attn,
                          const at::Tensor& o_weight, const std::optional<at::Tensor>& o_bias,
                          const at::Tensor& norm_weight, double eps, const at::Tensor& gate_up_weight,
                          const at::Tensor& down_weight);

}  // namespace genrec
