// CPU kernel of genrec::shared_prefix_attention. Tasks are (query, KV head, block of rows), a row being one
// (beam, query head). A task copies the query's visible prompt keys once, transposed to [D, P'] in the
// accumulation type, and its values to [P', D] (a Panel): each row's prompt scores are then summed in
// vector registers across keys, its weighted values across D — all rows of the task reuse the panel, and
// the prompt is never copied per beam. The beam's own few keys are plain dot products;
// the softmax is a max / exp pass over the same blocks. No [B, W, H, P] score tensor exists.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/vec16.h"
#include "cpu/vec_math.h"
#include "shared_prefix_attention_common.h"

namespace genrec {
namespace {

using cpu::kLanes;
using cpu::load;
using cpu::round_up;
using cpu::store;
using cpu::Vec;

// The prompt and own keys / values of one (query, KV head), laid out for attend_row: keys transposed to
// [D, key_stride], values and own keys / values [keys, value_stride]; strides are whole vector blocks and
// the padding is zeros, so a block load never leaves the buffer and padding lanes add exact zeros.
template <typename acc_t>
struct Panel {
  int64_t key_stride, value_stride;
  std::vector<acc_t> keys_t, values, own_keys, own_values;
  Panel(int64_t prefix, int64_t own, int64_t dim)
      : key_stride(round_up(prefix)), value_stride(round_up(dim)), keys_t(dim * key_stride),
        values(prefix * value_stride), own_keys(own * value_stride), own_values(own * value_stride) {}
};

// sum_i c[i] * x[i * stride .. i * stride + kLanes) for i < n, with four independent accumulators (a single
// one would wait on each multiply-add's latency).
inline __attribute__((always_inline)) Vec weighted_rows(const float* c, const float* x, int64_t stride, int64_t n) {
  Vec a0 = {}, a1 = {}, a2 = {}, a3 = {};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    a0 += c[i] * load(x + i * stride);
    a1 += c[i + 1] * load(x + (i + 1) * stride);
    a2 += c[i + 2] * load(x + (i + 2) * stride);
    a3 += c[i + 3] * load(x + (i + 3) * stride);
  }
  for (; i < n; ++i) a0 += c[i] * load(x + i * stride);
  return (a0 + a1) + (a2 + a3);
}

// One row (a beam and query head): `query` (scaled) against `visible` prompt keys and `own` own keys; the
// attention output goes to out[0..dim). `weights` holds round_up(visible + own) values, `out` value_stride.
// Scores are summed in registers across keys, outputs across dimensions: no horizontal sums, and no
// store-to-load chain through memory.
__attribute__((target_clones("avx512f", "avx2", "default"))) void attend_row(const float* query,
                                                                           const Panel<float>& panel,
                                                                           int64_t visible, int64_t own, int64_t dim,
                                                                           float* weights, float* out) {
  for (int64_t p0 = 0; p0 < visible; p0 += kLanes) {
    store(weights + p0, weighted_rows(query, panel.keys_t.data() + p0, panel.key_stride, dim));
  }
  for (int64_t t = 0; t < own; ++t) {  // after the blocks above, whose last may spill past `visible`
    Vec s = {};
    const float* k = panel.own_keys.data() + t * panel.value_stride;
    for (int64_t d = 0; d < dim; d += kLanes) s += load(query + d) * load(k + d);
    weights[visible + t] = cpu::hsum(s);
  }
  // Softmax over whole blocks: the tail past the last score is -inf, whose weights (< 1.2e-38 after the
  // clamp in exp) never reach an output.
  const int64_t n = visible + own, padded = round_up(n);
  for (int64_t i = n; i < padded; ++i) weights[i] = -std::numeric_limits<float>::infinity();
  Vec m = cpu::splat(-std::numeric_limits<float>::infinity());
  for (int64_t i = 0; i < padded; i += kLanes) {
    const Vec v = load(weights + i);
    m = v > m ? v : m;
  }
  const float top = cpu::hmax(m);
  Vec sum = {};
  for (int64_t i = 0; i < padded; i += kLanes) {
    const Vec e = cpu::exp_nonpositive(load(weights + i) - top);
    store(weights + i, e);
    sum += e;
  }
  const float inv = 1.0f / cpu::hsum(sum);  // >= 1: the maximum contributes exactly 1
  for (int64_t j0 = 0; j0 < dim; j0 += kLanes) {
    Vec acc = weighted_rows(weights, panel.values.data() + j0, panel.value_stride, visible);
    for (int64_t t = 0; t < own; ++t) {
      acc += weights[visible + t] * load(panel.own_values.data() + t * panel.value_stride + j0);
    }
    store(out + j0, acc * inv);
  }
}

// float64 (exactness checks, not speed): the same maths, scalar.
void attend_row(const double* query, const Panel<double>& panel, int64_t visible, int64_t own, int64_t dim,
                double* weights, double* out) {
  for (int64_t p = 0; p < visible; ++p) {
    double s = 0;
    for (int64_t d = 0; d < dim; ++d) s += query[d] * panel.keys_t[d * panel.key_stride + p];
    weights[p] = s;
  }
  for (int64_t t = 0; t < own; ++t) {
    double s = 0;
    for (int64_t d = 0; d < dim; ++d) s += query[d] * panel.own_keys[t * panel.value_stride + d];
    weights[visible + t] = s;
  }
  const int64_t n = visible + own;
  const double inv = 1.0 / cpu::sum_exp_shifted(weights, n, cpu::row_max(weights, n), weights);
  for (int64_t j = 0; j < dim; ++j) {
    double s = 0;
    for (int64_t p = 0; p < visible; ++p) s += weights[p] * panel.values[p * panel.value_stride + j];
    for (int64_t t = 0; t < own; ++t) s += weights[visible + t] * panel.own_values[t * panel.value_stride + j];
    out[j] = s * inv;
  }
}

at::Tensor shared_prefix_attention_cpu(const at::Tensor& q_in, const at::Tensor& prefix_k_in,
                                       const at::Tensor& prefix_v_in, const at::Tensor& prefix_mask_in,
                                       const at::Tensor& own_k_in, const at::Tensor& own_v_in, double scale) {
  const auto a =
      check_shared_prefix_attention_args(q_in, prefix_k_in, prefix_v_in, prefix_mask_in, own_k_in, own_v_in);
  // q and the own keys / values are read through their strides (the decoder passes views into its fused
  // q|k|v projection and its per-beam cache buffer); only their last dimension must be dense.
  const auto dense_rows = [](const at::Tensor& x) { return x.stride(-1) == 1 ? x : x.contiguous(); };
  const auto q = dense_rows(q_in);
  const auto prefix_k = prefix_k_in.contiguous();
  const auto prefix_v = prefix_v_in.contiguous();
  const auto prefix_mask = prefix_mask_in.contiguous();
  const auto own_k = dense_rows(own_k_in);
  const auto own_v = dense_rows(own_v_in);
  auto out = at::empty(q.sizes(), q.options());
  // Strides read once here: Tensor::stride() in the row loop costs a checked call per use.
  const auto strides = [](const at::Tensor& x) {
    std::array<int64_t, 5> s{};
    for (int64_t i = 0; i < x.dim(); ++i) s[i] = x.stride(i);
    return s;
  };
  const auto qs = strides(q), ks = strides(own_k), vs = strides(own_v);
  const int64_t group = a.heads / a.kv_heads, rows = a.beams * group;  // rows per (query, KV head)
  // Rows per task: enough to amortise the task's copy of the prompt, and enough tasks for every thread.
  const int64_t block = std::clamp<int64_t>((rows + at::get_num_threads() - 1) / at::get_num_threads(), 8, 64);
  const int64_t blocks = (rows + block - 1) / block;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "shared_prefix_attention", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* qp = q.const_data_ptr<scalar_t>();
    const scalar_t* pk = prefix_k.const_data_ptr<scalar_t>();
    const scalar_t* pv = prefix_v.const_data_ptr<scalar_t>();
    const bool* mask = prefix_mask.const_data_ptr<bool>();
    const scalar_t* ok = own_k.const_data_ptr<scalar_t>();
    const scalar_t* ov = own_v.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const acc_t sc = static_cast<acc_t>(scale);
    const int64_t D = a.dim;
    at::parallel_for(0, a.batch * a.kv_heads * blocks, 1, [&](int64_t t0, int64_t t1) {
      Panel<acc_t> panel(a.prefix, a.own, D);
      std::vector<acc_t> query(panel.value_stride), weights(round_up(a.prefix + a.own)), result(panel.value_stride);
      int64_t loaded = -1;  // the (query, KV head) whose prompt is in the panel
      int64_t visible = 0;
      for (int64_t task = t0; task < t1; ++task) {
        const int64_t bk = task / blocks, b = bk / a.kv_heads, kvh = bk % a.kv_heads;
        if (bk != loaded) {  // the visible prompt positions, compacted (padding is skipped, not masked)
          const scalar_t* pk_h = pk + bk * a.prefix * D;
          const scalar_t* pv_h = pv + bk * a.prefix * D;
          visible = 0;
          for (int64_t p = 0; p < a.prefix; ++p) {
            if (!mask[b * a.prefix + p]) continue;
            for (int64_t d = 0; d < D; ++d) {
              panel.keys_t[d * panel.key_stride + visible] = static_cast<acc_t>(pk_h[p * D + d]);
              panel.values[visible * panel.value_stride + d] = static_cast<acc_t>(pv_h[p * D + d]);
            }
            ++visible;
          }
          loaded = bk;
        }
        const int64_t j1 = std::min(rows, (task % blocks + 1) * block);
        for (int64_t j = task % blocks * block; j < j1; ++j) {
          const int64_t w = j / group, h = kvh * group + j % group, r = b * a.beams + w;
          const scalar_t* qh = qp + b * qs[0] + w * qs[1] + h * qs[2];
          for (int64_t d = 0; d < D; ++d) query[d] = static_cast<acc_t>(qh[d]) * sc;
          const scalar_t* ok_h = ok + b * ks[0] + w * ks[1] + kvh * ks[2];
          const scalar_t* ov_h = ov + b * vs[0] + w * vs[1] + kvh * vs[2];
          for (int64_t t = 0; t < a.own; ++t) {
            for (int64_t d = 0; d < D; ++d) {
              panel.own_keys[t * panel.value_stride + d] = static_cast<acc_t>(ok_h[t * ks[3] + d]);
              panel.own_values[t * panel.value_stride + d] = static_cast<acc_t>(ov_h[t * vs[3] + d]);
            }
          }
          attend_row(query.data(), panel, visible, a.own, D, weights.data(), result.data());
          std::copy_n(result.begin(), D, op + (r * a.heads + h) * D);
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(genrec, CPU, m) { m.impl("shared_prefix_attention", &shared_prefix_attention_cpu); }

}  // namespace genrec
