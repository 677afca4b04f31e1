// Float vector blocks of L lanes through GCC/Clang vector extensions, in the width of the ISA a kernel variant
// is compiled for (cpu/isa.h): 16 lanes = one AVX-512 register, 8 = one AVX2 register, 4 = one SSE register.
// A block wider than the target's registers is lowered through the stack (measured on the AVX2 path with
// 16-float blocks: row kernels 5-13x slower than on AVX-512), so every ISA variant instantiates the kernels
// with its own width, `Simd<L>`. Buffers are padded to kPad = 16 floats, a multiple of every width.
// Header-only and always inlined into the calling variant.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

#define GENREC_INLINE inline __attribute__((always_inline))

namespace genrec::cpu {

// Row padding of the kernels' buffers: a whole number of blocks for every lane width.
constexpr int64_t kPad = 16;

inline int64_t round_up(int64_t n) { return (n + kPad - 1) / kPad * kPad; }

// The vector types of each width, spelled out: GCC 12 drops a vector_size attribute whose size depends on a
// template parameter (the "vector" silently becomes one float).
template <int L>
struct VectorTypes;
template <>
struct VectorTypes<16> {
  typedef float V __attribute__((vector_size(64)));
  typedef int32_t VI __attribute__((vector_size(64)));
};
template <>
struct VectorTypes<8> {
  typedef float V __attribute__((vector_size(32)));
  typedef int32_t VI __attribute__((vector_size(32)));
};
template <>
struct VectorTypes<4> {
  typedef float V __attribute__((vector_size(16)));
  typedef int32_t VI __attribute__((vector_size(16)));
};

template <int L>
struct Simd {
  static constexpr int64_t lanes = L;
  using V = typename VectorTypes<L>::V;
  using VI = typename VectorTypes<L>::VI;
  static_assert(sizeof(V) == L * sizeof(float), "a vector of L floats");

  static GENREC_INLINE V splat(float x) { return V{} + x; }

  static GENREC_INLINE V load(const float* p) {
    V v;
    __builtin_memcpy(&v, p, sizeof(v));
    return v;
  }

  static GENREC_INLINE void store(float* p, V v) { __builtin_memcpy(p, &v, sizeof(v)); }

  // Horizontal max / sum as trees of half-width vector operations (a loop over the lanes compiles to a
  // scalar chain through memory). The halves are taken with memcpy, which compiles to register extracts
  // (GCC 12 rejects __builtin_shufflevector on a template's dependent vector type).
  using V8 = typename VectorTypes<8>::V;
  using V4 = typename VectorTypes<4>::V;

  template <class H, class W>
  static GENREC_INLINE void halves(const W& v, H& lo, H& hi) {
    static_assert(2 * sizeof(H) == sizeof(W), "halves of a vector");
    __builtin_memcpy(&lo, &v, sizeof(H));
    __builtin_memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(H), sizeof(H));
  }

  static GENREC_INLINE V4 to_four(V v, bool take_max) {
    if constexpr (L == 4) {
      return v;
    } else {
      V8 v8;
      if constexpr (L == 16) {
        V8 a, b;
        halves(v, a, b);
        v8 = take_max ? (a > b ? a : b) : a + b;
      } else {
        __builtin_memcpy(&v8, &v, sizeof(v8));
      }
      V4 c, d;
      halves(v8, c, d);
      return take_max ? (c > d ? c : d) : c + d;
    }
  }

  static GENREC_INLINE float hmax(V v) {
    const V4 m4 = to_four(v, true);
    const float x = m4[0] > m4[2] ? m4[0] : m4[2], y = m4[1] > m4[3] ? m4[1] : m4[3];
    return x > y ? x : y;
  }

  static GENREC_INLINE float hsum(V v) {
    const V4 s4 = to_four(v, false);
    return (s4[0] + s4[2]) + (s4[1] + s4[3]);
  }

  // exp(x) for x <= 0: Cody-Waite reduction x = n ln2 + r and a degree-6 polynomial for e^r (the Cephes expf
  // coefficients, ~1 ulp), 2^n from the exponent bits; exp(0) is exactly 1. Inputs below ln(FLT_MIN) (-inf
  // included) are clamped there: their terms are < 1.2e-38 next to a maximum's 1.
  static GENREC_INLINE V exp_nonpositive(V x) {
    x = x < -87.33654f ? splat(-87.33654f) : x;
    // n = round(x / ln2): adding 1.5 * 2^23 leaves n in the low mantissa bits (no floor call).
    const V shifted = x * 1.44269504088896341f + 12582912.0f;
    VI n_int;
    __builtin_memcpy(&n_int, &shifted, sizeof(n_int));
    n_int -= 0x4B400000;
    const V n = shifted - 12582912.0f;
    x -= n * 0.693359375f;
    x -= n * -2.12194440e-4f;
    V p = splat(1.9875691500e-4f);
    p = p * x + 1.3981999507e-3f;
    p = p * x + 8.3334519073e-3f;
    p = p * x + 4.1665795894e-2f;
    p = p * x + 1.6666665459e-1f;
    p = p * x + 5.0000001201e-1f;
    p = p * x * x + x + 1.0f;
    const VI scale_bits = (n_int + 127) << 23;
    V scale;
    __builtin_memcpy(&scale, &scale_bits, sizeof(scale));
    return p * scale;
  }
};

// The largest of x[0..n) (-inf for n == 0; NaNs are skipped).
template <class S>
GENREC_INLINE float block_max(const float* x, int64_t n) {
  typename S::V m = S::splat(-std::numeric_limits<float>::infinity());
  int64_t j = 0;
  for (; j + S::lanes <= n; j += S::lanes) {
    const typename S::V v = S::load(x + j);
    m = v > m ? v : m;
  }
  float tail = S::hmax(m);
  for (; j < n; ++j) tail = x[j] > tail ? x[j] : tail;
  return tail;
}

// sum_j exp(x[j] - shift) for x[j] <= shift; with `out`, also out[j] = exp(x[j] - shift) (out may be x).
template <class S, bool kStore>
GENREC_INLINE float block_sum_exp(const float* x, int64_t n, float shift, float* out) {
  typename S::V sum = {};
  int64_t j = 0;
  for (; j + S::lanes <= n; j += S::lanes) {
    const typename S::V e = S::exp_nonpositive(S::load(x + j) - shift);
    if constexpr (kStore) S::store(out + j, e);
    sum += e;
  }
  if (j < n) {  // the tail as one block padded with -inf, whose lanes are dropped
    float block[S::lanes];
    std::fill_n(block, S::lanes, -std::numeric_limits<float>::infinity());
    std::copy(x + j, x + n, block);
    const typename S::V e = S::exp_nonpositive(S::load(block) - shift);
    for (int64_t i = 0; i < n - j; ++i) {
      sum[i] += e[i];
      if constexpr (kStore) out[j + i] = e[i];
    }
  }
  return S::hsum(sum);
}

template <class S>
GENREC_INLINE float block_sum_exp(const float* x, int64_t n, float shift, float* out) {
  return out != nullptr ? block_sum_exp<S, true>(x, n, shift, out) : block_sum_exp<S, false>(x, n, shift, out);
}

}  // namespace genrec::cpu
