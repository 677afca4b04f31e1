#include "cpu/vec_math.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "cpu/vec16.h"

namespace genrec::cpu {

__attribute__((target_clones("avx512f", "avx2", "default"))) float row_max(const float* x, int64_t n) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  Vec m = splat(kNegInf);
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    const Vec v = load(x + j);
    m = v > m ? v : m;
  }
  float tail = hmax(m);
  for (; j < n; ++j) tail = x[j] > tail ? x[j] : tail;
  return tail;
}

__attribute__((target_clones("avx512f", "avx2", "default"))) float sum_exp_shifted(const float* x, int64_t n,
                                                                                 float shift, float* out) {
  Vec sum = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    const Vec e = exp_nonpositive(load(x + j) - shift);
    if (out != nullptr) store(out + j, e);
    sum += e;
  }
  if (j < n) {  // the tail as one block padded with -inf, whose lanes are dropped
    float block[kLanes];
    std::fill_n(block, kLanes, -std::numeric_limits<float>::infinity());
    std::copy(x + j, x + n, block);
    const Vec e = exp_nonpositive(load(block) - shift);
    for (int64_t i = 0; i < n - j; ++i) {
      sum[i] += e[i];
      if (out != nullptr) out[j + i] = e[i];
    }
  }
  return hsum(sum);
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

}  // namespace genrec::cpu
