// CPU kernel of genrec::shared_prefix_attention. Tasks are (query, KV head, block of rows), a row being one
// (beam, query head). A task copies the query's visible prompt keys once, transposed to [D, P'] in the
// accumulation type, and its values to [P', D] (a PromptPanel, cpu/attention_rows.h): each row's prompt scores are then summed in
// vector registers across keys, its weighted values across D, four rows at a time so that each load of the
// panel feeds four multiply-adds — all rows of the task reuse the panel, and the prompt is never copied per
// beam. The beam's own few keys are plain dot products; the softmax is a max / exp pass over the same
// blocks. No [B, W, H, P] score tensor exists.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <limits>
#include <vector>

#include "cpu/attention_rows.h"
#include "cpu/isa.h"
#include "cpu/simd.h"
#include "cpu/vec_math.h"
#include "shared_prefix_attention_common.h"

namespace genrec::cpu {
namespace {

// out[r] = sum_i c[r * c_stride + i] * x[i * stride .. i * stride + S::lanes) for i < n and R rows: each block
// of x is loaded once for all R rows; two accumulators per row (even / odd i), and four for a lone row, so
// that no multiply-add waits on the previous one's latency (2 x 4 accumulators + 2 loads fit the 16 registers
// of AVX2 at its 8-lane width as well as AVX-512's 32).
template <class S, int R>
GENREC_INLINE void weighted_rows(const float* c, int64_t c_stride, const float* x, int64_t stride, int64_t n,
                                 typename S::V (&out)[R]) {
  using V = typename S::V;
  if constexpr (R == 1) {
    V a0 = {}, a1 = {}, a2 = {}, a3 = {};
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
      a0 += c[i] * S::load(x + i * stride);
      a1 += c[i + 1] * S::load(x + (i + 1) * stride);
      a2 += c[i + 2] * S::load(x + (i + 2) * stride);
      a3 += c[i + 3] * S::load(x + (i + 3) * stride);
    }
    for (; i < n; ++i) a0 += c[i] * S::load(x + i * stride);
    out[0] = (a0 + a1) + (a2 + a3);
  } else {
    V even[R] = {}, odd[R] = {};
    int64_t i = 0;
    for (; i + 2 <= n; i += 2) {
      const V x0 = S::load(x + i * stride), x1 = S::load(x + (i + 1) * stride);
      for (int r = 0; r < R; ++r) {
        even[r] += c[r * c_stride + i] * x0;
        odd[r] += c[r * c_stride + i + 1] * x1;
      }
    }
    if (i < n) {
      const V x0 = S::load(x + i * stride);
      for (int r = 0; r < R; ++r) even[r] += c[r * c_stride + i] * x0;
    }
    for (int r = 0; r < R; ++r) out[r] = even[r] + odd[r];
  }
}

// R rows (beams / query heads of one KV head): queries [R][value_stride] (scaled) against `visible` prompt
// keys and each row's own keys; outputs to out[R][value_stride]. `weights` holds R rows of weight_stride.
// Scores are summed in registers across keys, outputs across dimensions: no horizontal sums in the inner
// loops, and no store-to-load chain through memory.
template <class S, int R>
GENREC_INLINE void attend_block(RowBlock<float>& block, const PromptPanel<float>& panel, int64_t visible,
                                int64_t dim, float* weights, int64_t weight_stride) {
  using V = typename S::V;
  const float* queries = block.queries.data();
  float* out = block.out.data();
  const int64_t vs = panel.value_stride, own = block.own;
  for (int64_t p0 = 0; p0 < visible; p0 += S::lanes) {
    V scores[R];
    weighted_rows<S, R>(queries, vs, panel.keys_t.data() + p0, panel.key_stride, dim, scores);
    for (int r = 0; r < R; ++r) S::store(weights + r * weight_stride + p0, scores[r]);
  }
  float inv[R];
  for (int r = 0; r < R; ++r) {
    float* w = weights + r * weight_stride;
    for (int64_t t = 0; t < own; ++t) {  // after the blocks above, whose last may spill past `visible`
      V s = {};
      const float* k = block.own_key(r, t);
      for (int64_t d = 0; d < dim; d += S::lanes) s += S::load(queries + r * vs + d) * S::load(k + d);
      w[visible + t] = S::hsum(s);
    }
    // Softmax weights in place, and 1 / their sum, over whole blocks: the padding past the last score is -inf,
    // whose weights (< 1.2e-38 after the clamp in exp) are never read.
    const int64_t n = visible + own, padded = round_up(n);
    std::fill(w + n, w + padded, -std::numeric_limits<float>::infinity());
    inv[r] = 1.0f / block_sum_exp<S>(w, padded, block_max<S>(w, padded), w);
  }
  for (int64_t j0 = 0; j0 < dim; j0 += S::lanes) {
    V acc[R];
    weighted_rows<S, R>(weights, weight_stride, panel.values.data() + j0, vs, visible, acc);
    for (int r = 0; r < R; ++r) {
      for (int64_t t = 0; t < own; ++t) {
        acc[r] += weights[r * weight_stride + visible + t] * S::load(block.own_value(r, t) + j0);
      }
      S::store(out + r * vs + j0, acc[r] * inv[r]);
    }
  }
}

template <class S>
GENREC_INLINE void attend_any(int64_t rows, RowBlock<float>& block, const PromptPanel<float>& panel, int64_t visible,
                              int64_t dim, float* weights, int64_t weight_stride) {
  switch (rows) {
    case 1: return attend_block<S, 1>(block, panel, visible, dim, weights, weight_stride);
    case 2: return attend_block<S, 2>(block, panel, visible, dim, weights, weight_stride);
    case 3: return attend_block<S, 3>(block, panel, visible, dim, weights, weight_stride);
    default: return attend_block<S, 4>(block, panel, visible, dim, weights, weight_stride);
  }
}

}  // namespace

GENREC_ISA_DISPATCH(void, attend_rows,
                    (int64_t rows, RowBlock<float>& block, const PromptPanel<float>& panel, int64_t visible,
                     int64_t dim, float* weights, int64_t weight_stride),
                    (rows, block, panel, visible, dim, weights, weight_stride), attend_any)

// float64 (exactness checks, not speed): the same maths, scalar, row by row.
void attend_rows(int64_t rows, RowBlock<double>& block, const PromptPanel<double>& panel, int64_t visible,
                 int64_t dim, double* weights, int64_t weight_stride) {
  const int64_t vs = panel.value_stride, own = block.own;
  for (int64_t r = 0; r < rows; ++r) {
    const double* query = block.query(r);
    double* w = weights + r * weight_stride;
    for (int64_t p = 0; p < visible; ++p) {
      double s = 0;
      for (int64_t d = 0; d < dim; ++d) s += query[d] * panel.keys_t[d * panel.key_stride + p];
      w[p] = s;
    }
    for (int64_t t = 0; t < own; ++t) {
      double s = 0;
      for (int64_t d = 0; d < dim; ++d) s += query[d] * block.own_key(r, t)[d];
      w[visible + t] = s;
    }
    const int64_t n = visible + own;
    const double inv = 1.0 / sum_exp_shifted(w, n, row_max(w, n), w);
    for (int64_t j = 0; j < dim; ++j) {
      double s = 0;
      for (int64_t p = 0; p < visible; ++p) s += w[p] * panel.values[p * vs + j];
      for (int64_t t = 0; t < own; ++t) s += w[visible + t] * block.own_value(r, t)[j];
      block.out[r * vs + j] = s * inv;
    }
  }
}

}  // namespace genrec::cpu

namespace genrec {
namespace {

at::Tensor shared_prefix_attention_cpu(const at::Tensor& q_in, const at::Tensor& prefix_k_in,
                                       const at::Tensor& prefix_v_in, const at::Tensor& prefix_mask_in,
                                       const at::Tensor& own_k_in, const at::Tensor& own_v_in, double scale) {
  const auto in = prepare_shared_prefix_attention(q_in, prefix_k_in, prefix_v_in, prefix_mask_in, own_k_in, own_v_in);
  const auto& a = in.sizes;
  const auto &q = in.q, &prefix_k = in.prefix_k, &prefix_v = in.prefix_v, &prefix_mask = in.prefix_mask;
  const auto &own_k = in.own_k, &own_v = in.own_v;
  auto out = in.out;
  // Strides read once here: Tensor::stride() in the row loop costs a checked call per use.
  const auto strides = [](const at::Tensor& x) {
    std::array<int64_t, 5> s{};
    for (int64_t i = 0; i < x.dim(); ++i) s[i] = x.stride(i);
    return s;
  };
  const auto qs = strides(q), ks = strides(own_k), vs = strides(own_v);
  const int64_t group = a.heads / a.kv_heads, rows = a.beams * group;  // rows per (query, KV head)
  // Rows per task: enough to amortise the task's copy of the prompt, and enough tasks for every thread.
  const int64_t block_rows = std::clamp<int64_t>((rows + at::get_num_threads() - 1) / at::get_num_threads(), 8, 64);
  const int64_t blocks = (rows + block_rows - 1) / block_rows;
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
      cpu::PromptPanel<acc_t> panel(a.prefix, D);
      cpu::RowBlock<acc_t> block(a.own, D);
      const int64_t weight_stride = cpu::round_up(a.prefix + a.own);
      std::vector<acc_t> weights(cpu::kRowsPerPass * weight_stride);
      int64_t loaded = -1;  // the (query, KV head) whose prompt is in the panel
      for (int64_t task = t0; task < t1; ++task) {
        const int64_t bk = task / blocks, b = bk / a.kv_heads, kvh = bk % a.kv_heads;
        if (bk != loaded) {  // the visible prompt positions, compacted (padding is skipped, not masked)
          panel.load(pk + bk * a.prefix * D, pv + bk * a.prefix * D, D, mask + b * a.prefix, a.prefix, D);
          loaded = bk;
        }
        const int64_t j1 = std::min(rows, (task % blocks + 1) * block_rows);
        for (int64_t j0 = task % blocks * block_rows; j0 < j1; j0 += cpu::kRowsPerPass) {
          const int64_t n = std::min(cpu::kRowsPerPass, j1 - j0);
          for (int64_t i = 0; i < n; ++i) {  // row j = (beam w, query head h)
            const int64_t j = j0 + i, w = j / group, h = kvh * group + j % group;
            const scalar_t* qh = qp + b * qs[0] + w * qs[1] + h * qs[2];
            for (int64_t d = 0; d < D; ++d) block.query(i)[d] = static_cast<acc_t>(qh[d]) * sc;
            const scalar_t* ok_h = ok + b * ks[0] + w * ks[1] + kvh * ks[2];
            const scalar_t* ov_h = ov + b * vs[0] + w * vs[1] + kvh * vs[2];
            for (int64_t t = 0; t < a.own; ++t) {
              for (int64_t d = 0; d < D; ++d) {
                block.own_key(i, t)[d] = static_cast<acc_t>(ok_h[t * ks[3] + d]);
                block.own_value(i, t)[d] = static_cast<acc_t>(ov_h[t * vs[3] + d]);
              }
            }
          }
          cpu::attend_rows(n, block, panel, panel.visible, D, weights.data(), weight_stride);
          for (int64_t i = 0; i < n; ++i) {
            const int64_t j = j0 + i, w = j / group, h = kvh * group + j % group, r = b * a.beams + w;
            std::copy_n(block.result(i), D, op + (r * a.heads + h) * D);
          }
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(genrec, CPU, m) { m.impl("shared_prefix_attention", &shared_prefix_attention_cpu); }

}  // namespace genrec
