// CPU stages of genrec::layer_qkv / genrec::layer_out / genrec::rms_norm (the GEMMs are ATen's, see
// decoder_layer_common.cpp): row-parallel RMSNorm, rotary embedding and SwiGLU, in float32 (float64 for
// float64) through the shared 16-float row kernels (cpu/vec_math.h). Rows narrower than float32 are widened
// into a per-task buffer.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "cpu/layer_rows.h"
#include "cpu/rows.h"
#include "decoder_layer_common.h"

namespace genrec {
namespace {

void rms_norm_rows(const at::Tensor& x, const at::Tensor& weight, double eps, at::Tensor& out) {
  const int64_t rows = x.size(0), width = x.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "layer_rms_norm", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = weight.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, cpu::row_grain(width), [&](int64_t r0, int64_t r1) {
      std::vector<acc_t> buffer;
      for (int64_t r = r0; r < r1; ++r) {
        cpu::rms_norm_row(xp + r * width, wp, static_cast<acc_t>(eps), width, op + r * width, buffer);
      }
    });
  });
}

void rotary_rows(at::Tensor& y, const at::Tensor& cos, const at::Tensor& sin, int64_t rotated_heads) {
  const int64_t rows = y.size(0), width = y.size(1), dim = cos.size(1);
  const int64_t rows_per_position = rows / cos.size(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "layer_rotary", [&] {
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const scalar_t* cp = cos.const_data_ptr<scalar_t>();
    const scalar_t* sp = sin.const_data_ptr<scalar_t>();
    at::parallel_for(0, rows, cpu::row_grain(rotated_heads * dim), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t position = r / rows_per_position;
        cpu::rotary_row(yp + r * width, cp + position * dim, sp + position * dim, rotated_heads, dim);
      }
    });
  });
}

void silu_mul_rows(const at::Tensor& gate_up, at::Tensor& out) {
  const int64_t rows = out.size(0), inner = out.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, out.scalar_type(), "layer_silu_mul", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = gate_up.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, cpu::row_grain(2 * inner), [&](int64_t r0, int64_t r1) {
      std::vector<acc_t> gate_buffer, up_buffer;
      for (int64_t r = r0; r < r1; ++r) {
        cpu::silu_mul_row(gp + r * 2 * inner, inner, op + r * inner, gate_buffer, up_buffer);
      }
    });
  });
}

constexpr DecoderLayerKernels kCpuKernels{&rms_norm_rows, &rotary_rows, &silu_mul_rows};

at::Tensor rms_norm_cpu(const at::Tensor& x, const at::Tensor& weight, double eps) {
  return rms_norm_impl(kCpuKernels, x, weight, eps);
}

at::Tensor layer_qkv_cpu(const at::Tensor& x, const at::Tensor& norm_weight, double eps, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias, const at::Tensor& cos, const at::Tensor& sin,
                         int64_t rotated_heads) {
  return layer_qkv_impl(kCpuKernels, x, norm_weight, eps, weight, bias, cos, sin, rotated_heads);
}

at::Tensor layer_out_cpu(const at::Tensor& h, const at::Tensor& attn, const at::Tensor& o_weight,
                         const std::optional<at::Tensor>& o_bias, const at::Tensor& norm_weight, double eps,
                         const at::Tensor& gate_up_weight, const at::Tensor& down_weight) {
  return layer_out_impl(kCpuKernels, h, attn, o_weight, o_bias, norm_weight, eps, gate_up_weight, down_weight);
}

}  // namespace

TORCH_LIBRARY_IMPL(genrec, CPU, m) {
  m.impl("rms_norm", &rms_norm_cpu);
  m.impl("layer_qkv", &layer_qkv_cpu);
  m.impl("layer_out", &layer_out_cpu);
}

}  // namespace genrec
