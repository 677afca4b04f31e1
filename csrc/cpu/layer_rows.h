// One row of each elementwise stage of a Qwen2 layer (RMSNorm, rotary embedding, SwiGLU), on raw pointers:
// the layer ops' CPU kernels (cpu/decoder_layer.cpp) loop them over a tensor's rows, and the fused CPU beam
// search (cpu/beam_search.cpp) over its own buffers. Arithmetic in float32 (float64 for float64).
#pragma once

#include <ATen/OpMathType.h>

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "cpu/rows.h"
#include "cpu/vec_math.h"

namespace genrec::cpu {

// out = weight * (x / sqrt(mean(x^2) + eps)), the normalised row rounded to the dtype before the weight
// multiplies it (as transformers' Qwen2RMSNorm does). `buffer` holds a widened row for narrow dtypes.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
void rms_norm_row(const scalar_t* x, const scalar_t* weight, acc_t eps, int64_t width, scalar_t* out,
                  std::vector<acc_t>& buffer) {
  const acc_t* row = widened(x, width, buffer);
  const acc_t inv = acc_t(1) / std::sqrt(sum_squares(row, width) / width + eps);
  for (int64_t j = 0; j < width; ++j) {
    const acc_t normed = static_cast<acc_t>(static_cast<scalar_t>(row[j] * inv));
    out[j] = static_cast<scalar_t>(static_cast<acc_t>(weight[j]) * normed);
  }
}

// In place on `heads` heads of width `dim` at y: y[i] = y[i] c[i] - y[i + D/2] s[i],
// y[i + D/2] = y[i + D/2] c[i + D/2] + y[i] s[i + D/2].
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
void rotary_row(scalar_t* y, const scalar_t* c, const scalar_t* s, int64_t heads, int64_t dim) {
  const int64_t half = dim / 2;
  for (int64_t h = 0; h < heads; ++h) {
    scalar_t* lo = y + h * dim;
    scalar_t* hi = lo + half;
    for (int64_t i = 0; i < half; ++i) {
      const acc_t a = static_cast<acc_t>(lo[i]), b = static_cast<acc_t>(hi[i]);
      lo[i] = static_cast<scalar_t>(a * static_cast<acc_t>(c[i]) - b * static_cast<acc_t>(s[i]));
      hi[i] = static_cast<scalar_t>(b * static_cast<acc_t>(c[half + i]) + a * static_cast<acc_t>(s[half + i]));
    }
  }
}

// out[j] = silu(gate_up[j]) * gate_up[inner + j] for j < inner.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
void silu_mul_row(const scalar_t* gate_up, int64_t inner, scalar_t* out, std::vector<acc_t>& gate_buffer,
                  std::vector<acc_t>& up_buffer) {
  const acc_t* gate = widened(gate_up, inner, gate_buffer);
  const acc_t* up = widened(gate_up + inner, inner, up_buffer);
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    silu_mul(gate, up, out, inner);
  } else {  // into the gate's buffer, then narrowed
    silu_mul(gate, up, gate_buffer.data(), inner);
    for (int64_t j = 0; j < inner; ++j) out[j] = static_cast<scalar_t>(gate_buffer[j]);
  }
}

}  // namespace genrec::cpu
