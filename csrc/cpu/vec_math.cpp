#include "cpu/vec_math.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "cpu/isa.h"
#include "cpu/simd.h"

namespace genrec::cpu {

Isa cpu_isa() {
  static const Isa isa = [] {
    __builtin_cpu_init();
    Isa best = Isa::kBaseline;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::kAvx2;
    if (best == Isa::kAvx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
      best = Isa::kAvx512;
    const char* cap = std::getenv("GENREC_CPU_ISA");
    Isa limit = Isa::kAvx512;
    if (cap != nullptr && std::strcmp(cap, "avx2") == 0) limit = Isa::kAvx2;
    if (cap != nullptr && std::strcmp(cap, "baseline") == 0) limit = Isa::kBaseline;
    return best < limit ? best : limit;
  }();
  return isa;
}

namespace {

template <class S>
GENREC_INLINE float sum_squares_block(const float* x, int64_t n) {
  typename S::V acc[4] = {};  // four chains: one accumulator would wait on each FMA's latency
  int64_t j = 0;
  for (; j + 4 * S::lanes <= n; j += 4 * S::lanes) {
    for (int a = 0; a < 4; ++a) {
      const typename S::V v = S::load(x + j + a * S::lanes);
      acc[a] += v * v;
    }
  }
  for (; j + S::lanes <= n; j += S::lanes) {
    const typename S::V v = S::load(x + j);
    acc[0] += v * v;
  }
  float tail = S::hsum((acc[0] + acc[1]) + (acc[2] + acc[3]));
  for (; j < n; ++j) tail += x[j] * x[j];
  return tail;
}

// silu(g) = g * sigmoid(g), with sigmoid from e = exp(-|g|) <= 1 so that the exponential never overflows.
template <class S>
GENREC_INLINE typename S::V silu(typename S::V g) {
  const typename S::V e = S::exp_nonpositive(g < 0 ? g : -g);
  return g * ((g >= 0 ? S::splat(1.0f) : e) / (1.0f + e));
}

template <class S>
GENREC_INLINE void silu_mul_block(const float* gate, const float* up, float* out, int64_t n) {
  int64_t j = 0;
  for (; j + S::lanes <= n; j += S::lanes) S::store(out + j, silu<S>(S::load(gate + j)) * S::load(up + j));
  if (j < n) {  // the tail as one zero-padded block
    float g[S::lanes] = {}, u[S::lanes] = {};
    std::copy(gate + j, gate + n, g);
    std::copy(up + j, up + n, u);
    const typename S::V r = silu<S>(S::load(g)) * S::load(u);
    for (int64_t i = 0; i < n - j; ++i) out[j + i] = r[i];
  }
}

}  // namespace

GENREC_ISA_DISPATCH(float, row_max, (const float* x, int64_t n), (x, n), block_max)
GENREC_ISA_DISPATCH(float, sum_exp_shifted, (const float* x, int64_t n, float shift, float* out), (x, n, shift, out),
                    block_sum_exp)
GENREC_ISA_DISPATCH(float, sum_squares, (const float* x, int64_t n), (x, n), sum_squares_block)
GENREC_ISA_DISPATCH(void, silu_mul, (const float* gate, const float* up, float* out, int64_t n), (gate, up, out, n),
                    silu_mul_block)

double row_max(const double* x, int64_t n) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < n; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

double sum_exp_shifted(const double* x, int64_t n, double shift, double* out) {
  double sum = 0;
  for (int64_t j = 0; j < n; ++j) {
    const double e = std::exp(x[j] - shift);
    if (out != nullptr) out[j] = e;
    sum += e;
  }
  return sum;
}

double sum_squares(const double* x, int64_t n) {
  double sum = 0;
  for (int64_t j = 0; j < n; ++j) sum += x[j] * x[j];
  return sum;
}

void silu_mul(const double* gate, const double* up, double* out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = gate[j] / (1.0 + std::exp(-gate[j])) * up[j];
}

}  // namespace genrec::cpu
