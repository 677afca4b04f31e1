#include "cpu/vec_math.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "cpu/vec16.h"

namespace genrec::cpu {

__attribute__((target_clones("avx512f", "avx2", "default"))) float row_max(const float* x, int64_t n) {
  return block_max(x, n);
}

__attribute__((target_clones("avx512f", "avx2", "default"))) float sum_exp_shifted(const float* x, int64_t n,
                                                                                 float shift, float* out) {
  return block_sum_exp(x, n, shift, out);
}

__attribute__((target_clones("avx512f", "avx2", "default"))) float sum_squares(const float* x, int64_t n) {
  Vec acc[4] = {};  // four chains: one accumulator would wait on each FMA's latency
  int64_t j = 0;
  for (; j + 4 * kLanes <= n; j += 4 * kLanes) {
    for (int a = 0; a < 4; ++a) {
      const Vec v = load(x + j + a * kLanes);
      acc[a] += v * v;
    }
  }
  for (; j + kLanes <= n; j += kLanes) {
    const Vec v = load(x + j);
    acc[0] += v * v;
  }
  float tail = hsum((acc[0] + acc[1]) + (acc[2] + acc[3]));
  for (; j < n; ++j) tail += x[j] * x[j];
  return tail;
}

namespace {
// silu(g) = g * sigmoid(g), with sigmoid from e = exp(-|g|) <= 1 so that the exponential never overflows.
inline __attribute__((always_inline)) Vec silu(Vec g) {
  const Vec e = exp_nonpositive(g < 0 ? g : -g);
  return g * ((g >= 0 ? splat(1.0f) : e) / (1.0f + e));
}
}  // namespace

__attribute__((target_clones("avx512f", "avx2", "default"))) void silu_mul(const float* gate, const float* up,
                                                                           float* out, int64_t n) {
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) store(out + j, silu(load(gate + j)) * load(up + j));
  if (j < n) {  // the tail as one zero-padded block
    float g[kLanes] = {}, u[kLanes] = {};
    std::copy(gate + j, gate + n, g);
    std::copy(up + j, up + n, u);
    const Vec r = silu(load(g)) * load(u);
    for (int64_t i = 0; i < n - j; ++i) out[j + i] = r[i];
  }
}

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
