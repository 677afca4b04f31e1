// 16-float vector blocks through GCC/Clang vector extensions: one AVX-512 register, two AVX2 or four SSE
// registers, whichever ISA the calling function is compiled for (the callers are target_clones functions,
// so each clone gets its own code). Header-only and always inlined for that reason.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

namespace genrec::cpu {

constexpr int64_t kLanes = 16;
using Vec = float __attribute__((vector_size(kLanes * sizeof(float))));
using VecI = int32_t __attribute__((vector_size(kLanes * sizeof(int32_t))));

inline int64_t round_up(int64_t n) { return (n + kLanes - 1) / kLanes * kLanes; }

inline __attribute__((always_inline)) Vec splat(float x) { return Vec{} + x; }

inline __attribute__((always_inline)) Vec load(const float* p) {
  Vec v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

inline __attribute__((always_inline)) void store(float* p, Vec v) { __builtin_memcpy(p, &v, sizeof(v)); }

// Horizontal max / sum as trees of half-width vector operations (a loop over the lanes compiles to a
// scalar chain through memory).
using Vec8 = float __attribute__((vector_size(8 * sizeof(float))));
using Vec4 = float __attribute__((vector_size(4 * sizeof(float))));

inline __attribute__((always_inline)) float hmax(Vec v) {
  const Vec8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7);
  const Vec8 b = __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const Vec8 m8 = a > b ? a : b;
  const Vec4 c = __builtin_shufflevector(m8, m8, 0, 1, 2, 3), d = __builtin_shufflevector(m8, m8, 4, 5, 6, 7);
  const Vec4 m4 = c > d ? c : d;
  const float x = m4[0] > m4[2] ? m4[0] : m4[2], y = m4[1] > m4[3] ? m4[1] : m4[3];
  return x > y ? x : y;
}

inline __attribute__((always_inline)) float hsum(Vec v) {
  const Vec8 s8 = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                  __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const Vec4 s4 = __builtin_shufflevector(s8, s8, 0, 1, 2, 3) + __builtin_shufflevector(s8, s8, 4, 5, 6, 7);
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

// exp(x) for x <= 0: Cody-Waite reduction x = n ln2 + r and a degree-6 polynomial for e^r (the Cephes expf
// coefficients, ~1 ulp), 2^n from the exponent bits; exp(0) is exactly 1. Inputs below ln(FLT_MIN) (-inf
// included) are clamped there: their terms are < 1.2e-38 next to a maximum's 1.
inline __attribute__((always_inline)) Vec exp_nonpositive(Vec x) {
  x = x < -87.33654f ? splat(-87.33654f) : x;
  // n = round(x / ln2): adding 1.5 * 2^23 leaves n in the low mantissa bits (no floor call).
  const Vec shifted = x * 1.44269504088896341f + 12582912.0f;
  const VecI n_int = reinterpret_cast<const VecI&>(shifted) - 0x4B400000;
  const Vec n = shifted - 12582912.0f;
  x -= n * 0.693359375f;
  x -= n * -2.12194440e-4f;
  Vec p = splat(1.9875691500e-4f);
  p = p * x + 1.3981999507e-3f;
  p = p * x + 8.3334519073e-3f;
  p = p * x + 4.1665795894e-2f;
  p = p * x + 1.6666665459e-1f;
  p = p * x + 5.0000001201e-1f;
  p = p * x * x + x + 1.0f;
  const VecI scale_bits = (n_int + 127) << 23;
  return p * reinterpret_cast<const Vec&>(scale_bits);
}

// The largest of x[0..n) (-inf for n == 0; NaNs are skipped), and sum_j exp(x[j] - shift) for x[j] <= shift
// (with `out`, also out[j] = exp(x[j] - shift); out may be x). Inlined into a caller's own target_clones
// function (the attention kernel's rows); cpu::row_max / cpu::sum_exp_shifted (vec_math.h) wrap them.
inline __attribute__((always_inline)) float block_max(const float* x, int64_t n) {
  Vec m = splat(-std::numeric_limits<float>::infinity());
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    const Vec v = load(x + j);
    m = v > m ? v : m;
  }
  float tail = hmax(m);
  for (; j < n; ++j) tail = x[j] > tail ? x[j] : tail;
  return tail;
}

template <bool kStore>
inline __attribute__((always_inline)) float block_sum_exp(const float* x, int64_t n, float shift, float* out) {
  Vec sum = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    const Vec e = exp_nonpositive(load(x + j) - shift);
    if constexpr (kStore) store(out + j, e);
    sum += e;
  }
  if (j < n) {  // the tail as one block padded with -inf, whose lanes are dropped
    float block[kLanes];
    std::fill_n(block, kLanes, -std::numeric_limits<float>::infinity());
    std::copy(x + j, x + n, block);
    const Vec e = exp_nonpositive(load(block) - shift);
    for (int64_t i = 0; i < n - j; ++i) {
      sum[i] += e[i];
      if constexpr (kStore) out[j + i] = e[i];
    }
  }
  return hsum(sum);
}

inline __attribute__((always_inline)) float block_sum_exp(const float* x, int64_t n, float shift, float* out) {
  return out != nullptr ? block_sum_exp<true>(x, n, shift, out) : block_sum_exp<false>(x, n, shift, out);
}

}  // namespace genrec::cpu
