// 16-float vector blocks through GCC/Clang vector extensions: one AVX-512 register, two AVX2 or four SSE
// registers, whichever ISA the calling function is compiled for (the callers are target_clones functions,
// so each clone gets its own code). Header-only and always inlined for that reason.
#pragma once

#include <cstdint>

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

// Horizontal max / sum as trees (a running scalar would chain 16 dependent operations).
inline __attribute__((always_inline)) float hmax(Vec v) {
  float t[kLanes];
  __builtin_memcpy(t, &v, sizeof(v));
  for (int w = kLanes / 2; w > 0; w /= 2) {
    for (int i = 0; i < w; ++i) t[i] = t[i + w] > t[i] ? t[i + w] : t[i];
  }
  return t[0];
}

inline __attribute__((always_inline)) float hsum(Vec v) {
  float t[kLanes];
  __builtin_memcpy(t, &v, sizeof(v));
  for (int w = kLanes / 2; w > 0; w /= 2) {
    for (int i = 0; i < w; ++i) t[i] += t[i + w];
  }
  return t[0];
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

}  // namespace genrec::cpu
