// CUDA registration of genrec::layer_qkv / layer_out / rms_norm: the shared op bodies
// (decoder_layer_common.cpp: checks, cuBLAS GEMMs through ATen) with the CUDA stage launchers, on the current
// stream under a device guard. No host sync, so a decode step can be captured in a CUDA graph.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/decoder_layer.h"
#include "cuda/glue.h"
#include "decoder_layer_common.h"

namespace genrec {
namespace {

using cuda::current_stream;
using cuda::dtype_tag;

void rms_norm_rows(const at::Tensor& x, const at::Tensor& weight, double eps, at::Tensor& out) {
  C10_CUDA_CHECK(cuda::launch_rms_norm(dtype_tag(x), x.const_data_ptr(), weight.const_data_ptr(),
                                       out.mutable_data_ptr(), x.size(0), x.size(1), eps, current_stream()));
}

void rotary_rows(at::Tensor& y, const at::Tensor& cos, const at::Tensor& sin, int64_t rotated_heads) {
  C10_CUDA_CHECK(cuda::launch_rotary(dtype_tag(y), y.mutable_data_ptr(), cos.const_data_ptr(), sin.const_data_ptr(),
                                     y.size(0), y.size(1), cos.size(0), cos.size(1), rotated_heads, current_stream()));
}

void silu_mul_rows(const at::Tensor& gate_up, at::Tensor& out) {
  C10_CUDA_CHECK(cuda::launch_silu_mul(dtype_tag(out), gate_up.const_data_ptr(), out.mutable_data_ptr(), out.size(0),
                                       out.size(1), current_stream()));
}

constexpr DecoderLayerKernels kCudaKernels{&rms_norm_rows, &rotary_rows, &silu_mul_rows};

at::Tensor rms_norm_cuda(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const c10::cuda::CUDAGuard guard(x.device());
  return rms_norm_impl(kCudaKernels, x, weight, eps);
}

at::Tensor layer_qkv_cuda(const at::Tensor& x, const at::Tensor& norm_weight, double eps, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias, const at::Tensor& cos, const at::Tensor& sin,
                          int64_t rotated_heads) {
  const c10::cuda::CUDAGuard guard(x.device());
  return layer_qkv_impl(kCudaKernels, x, norm_weight, eps, weight, bias, cos, sin, rotated_heads);
}

at::Tensor layer_out_cuda(const at::Tensor& h, const at::Tensor& attn, const at::Tensor& o_weight,
                          const std::optional<at::Tensor>& o_bias, const at::Tensor& norm_weight, double eps,
                          const at::Tensor& gate_up_weight, const at::Tensor& down_weight) {
  const c10::cuda::CUDAGuard guard(h.device());
  return layer_out_impl(kCudaKernels, h, attn, o_weight, o_bias, norm_weight, eps, gate_up_weight, down_weight);
}

}  // namespace

TORCH_LIBRARY_IMPL(genrec, CUDA, m) {
  m.impl("rms_norm", &rms_norm_cuda);
  m.impl("layer_qkv", &layer_qkv_cuda);
  m.impl("layer_out", &layer_out_cuda);
}

}  // namespace genrec
