// CPU kernels of genrec::token_merge: at::parallel_for over rows (forward) or over column blocks
// (backward scatters: each output element is owned by one task and summed in row order, so gradients
// are deterministic for any thread count).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cpu/rows.h"
#include "token_merge_common.h"

namespace genrec {
namespace {

// Columns per backward task: one 64-byte cache line of fp32.
constexpr int64_t kColumnBlock = 16;

std::vector<LevelRange> check_tokens_cpu(const at::Tensor& tokens, int64_t vocab, int64_t pad_id,
                                         at::IntArrayRef shape) {
  const int64_t* t = tokens.const_data_ptr<int64_t>();
  const int64_t rows = tokens.size(0), levels = tokens.size(1);
  std::vector<LevelRange> ranges(levels, LevelRange{vocab, 0});
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t l = 0; l < levels; ++l) {
      const int64_t v = t[r * levels + l];
      if (v == pad_id) continue;
      if (v < 0 || v >= vocab) throw_bad_token(r * levels + l, v, vocab, pad_id, shape);
      ranges[l].lo = std::min(ranges[l].lo, v);
      ranges[l].hi = std::max(ranges[l].hi, v + 1);
    }
  }
  for (auto& range : ranges) {
    if (range.hi <= range.lo) range = LevelRange{0, 0};
  }
  return ranges;
}

bool all_pad(const int64_t* row, int64_t levels, int64_t pad_id) {
  for (int64_t l = 0; l < levels; ++l)
    if (row[l] != pad_id) return false;
  return true;
}

void table_sum_cpu(const at::Tensor& table, const at::Tensor& level_info, const at::Tensor& tokens,
                   const std::optional<at::Tensor>& bias, int64_t pad_id, at::Tensor& out) {
  const int64_t rows = tokens.size(0), levels = tokens.size(1), d_out = table.size(1);
  const int64_t* tok = tokens.const_data_ptr<int64_t>();
  const int64_t* info = level_info.const_data_ptr<int64_t>();  // (base, lo, hi) per level; ranges are exact here
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, out.scalar_type(), "token_merge_table_sum", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* P = table.const_data_ptr<acc_t>();
    const scalar_t* b = bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr;
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, cpu::row_grain(d_out), [&](int64_t r0, int64_t r1) {
      std::vector<acc_t> row_acc(d_out);
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t* t = tok + r * levels;
        scalar_t* dst = o + r * d_out;
        if (all_pad(t, levels, pad_id)) {
          std::fill(dst, dst + d_out, scalar_t(0));
          continue;
        }
        acc_t* a = row_acc.data();
        if (b != nullptr) {
          for (int64_t c = 0; c < d_out; ++c) a[c] = static_cast<acc_t>(b[c]);
        } else {
          std::fill(a, a + d_out, acc_t(0));
        }
        for (int64_t l = 0; l < levels; ++l) {
          if (t[l] == pad_id) continue;
          const acc_t* p = P + (info[3 * l] + t[l]) * d_out;
          for (int64_t c = 0; c < d_out; ++c) a[c] += p[c];
        }
        for (int64_t c = 0; c < d_out; ++c) dst[c] = static_cast<scalar_t>(a[c]);
      }
    });
  });
}

void gather_concat_cpu(const at::Tensor& embedding, const at::Tensor& tokens, int64_t pad_id, at::Tensor& x) {
  const int64_t rows = tokens.size(0), levels = tokens.size(1), dim = embedding.size(1);
  const int64_t* tok = tokens.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, embedding.scalar_type(), "token_merge_gather", [&] {
    using src_t = scalar_t;
    const src_t* E = embedding.const_data_ptr<src_t>();
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "token_merge_gather_out", [&] {
      scalar_t* X = x.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, rows, cpu::row_grain(levels * dim), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          for (int64_t l = 0; l < levels; ++l) {
            const int64_t t = tok[r * levels + l];
            scalar_t* dst = X + (r * levels + l) * dim;
            if (t == pad_id) {
              std::fill(dst, dst + dim, scalar_t(0));
            } else {
              const src_t* src = E + t * dim;
              for (int64_t c = 0; c < dim; ++c) dst[c] = static_cast<scalar_t>(src[c]);
            }
          }
        }
      });
    });
  });
}

void scatter_levels_cpu(const at::Tensor& grad_out, const at::Tensor& tokens, const at::Tensor& level_info,
                        int64_t pad_id, at::Tensor& grads) {
  const int64_t rows = tokens.size(0), levels = tokens.size(1), d_out = grads.size(1);
  const int64_t* tok = tokens.const_data_ptr<int64_t>();
  const int64_t* info = level_info.const_data_ptr<int64_t>();  // (base, lo, hi) per level; ranges are exact here
  const int64_t blocks = (d_out + kColumnBlock - 1) / kColumnBlock;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, grad_out.scalar_type(), "token_merge_scatter_levels", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = grad_out.const_data_ptr<scalar_t>();
    acc_t* G = grads.mutable_data_ptr<acc_t>();
    // Task = (level, column block): levels own disjoint table rows, so no two tasks write one element.
    at::parallel_for(0, levels * blocks, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t l = i / blocks, c0 = (i % blocks) * kColumnBlock, c1 = std::min(c0 + kColumnBlock, d_out);
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t t = tok[r * levels + l];
          if (t == pad_id) continue;
          const scalar_t* src = g + r * d_out;
          acc_t* dst = G + (info[3 * l] + t) * d_out;
          for (int64_t c = c0; c < c1; ++c) dst[c] += static_cast<acc_t>(src[c]);
        }
      }
    });
  });
}

void scatter_concat_cpu(const at::Tensor& grad_x, const at::Tensor& tokens, int64_t pad_id, at::Tensor& grad_embedding) {
  const int64_t rows = tokens.size(0), levels = tokens.size(1), dim = grad_embedding.size(1);
  const int64_t* tok = tokens.const_data_ptr<int64_t>();
  const int64_t blocks = (dim + kColumnBlock - 1) / kColumnBlock;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, grad_x.scalar_type(), "token_merge_scatter_concat", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    TORCH_INTERNAL_ASSERT(grad_embedding.scalar_type() == c10::CppTypeToScalarType<acc_t>::value);
    const scalar_t* dx = grad_x.const_data_ptr<scalar_t>();
    acc_t* dE = grad_embedding.mutable_data_ptr<acc_t>();
    // Task = column block of d across all levels: one token id may occur at several levels.
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t c0 = b * kColumnBlock, c1 = std::min(c0 + kColumnBlock, dim);
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t l = 0; l < levels; ++l) {
            const int64_t t = tok[r * levels + l];
            if (t == pad_id) continue;
            const scalar_t* src = dx + (r * levels + l) * dim;
            acc_t* dst = dE + t * dim;
            for (int64_t c = c0; c < c1; ++c) dst[c] += static_cast<acc_t>(src[c]);
          }
        }
      }
    });
  });
}

const TokenMergeKernels kCpuKernels{
    check_tokens_cpu, table_sum_cpu, gather_concat_cpu, scatter_levels_cpu, scatter_concat_cpu,
    /*gemm_in_accumulation_dtype=*/true,
    /*chunk_bytes=*/int64_t{4} << 20,
};

at::Tensor token_merge_cpu(const at::Tensor& sid_tokens, const at::Tensor& embedding, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, int64_t pad_id) {
  return token_merge_forward(kCpuKernels, sid_tokens, embedding, weight, bias, pad_id);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> token_merge_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& sid_tokens, const at::Tensor& embedding,
    const at::Tensor& weight, int64_t pad_id) {
  return token_merge_backward(kCpuKernels, grad_out, sid_tokens, embedding, weight, pad_id);
}

}  // namespace

TORCH_LIBRARY_IMPL(genrec, CPU, m) {
  m.impl("token_merge", &token_merge_cpu);
  m.impl("token_merge_backward", &token_merge_backward_cpu);
}

}  // namespace genrec
