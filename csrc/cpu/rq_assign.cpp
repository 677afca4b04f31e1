// CPU kernel of genrec::rq_assign: rows split into blocks across threads; each block walks the codebook in
// tiles, a single-threaded GEMM tile (row block x centroid tile) feeding a running argmin, so the tile
// stays in cache and no N x K distance matrix exists.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "rq_assign_common.h"

namespace genrec {
namespace {

constexpr int64_t kCentroidTile = 512;  // centroids per GEMM tile

// Rows per task: enough that each tile GEMM amortises its call overhead when D is small (>= 32k inputs).
int64_t row_block(int64_t dim) { return std::clamp<int64_t>(32768 / std::max<int64_t>(dim, 1), 128, 512); }

// Folds one row of distances into the running (best distance, best index): a vectorised min per chunk,
// and a scan to locate it only when the chunk improves on the best (rare after the first chunks).
template <typename scalar_t>
__attribute__((target_clones("avx512f", "avx2", "default"))) void update_argmin(const scalar_t* dist, int64_t cols,
                                                                              int64_t k0, scalar_t& best,
                                                                              int64_t& best_k) {
  constexpr int64_t kChunk = 32;
  for (int64_t j0 = 0; j0 < cols; j0 += kChunk) {
    const int64_t j1 = std::min(j0 + kChunk, cols);
    scalar_t m = dist[j0];
#pragma omp simd reduction(min : m)
    for (int64_t j = j0; j < j1; ++j) m = std::min(m, dist[j]);
    if (m < best) {  // strict: on ties the earlier (lower) centroid index stays
      int64_t j = j0;
      while (dist[j] != m) ++j;
      best = m;
      best_k = k0 + j;
    }
  }
}

void assign_level_cpu(at::Tensor& residual, const at::Tensor& codebook, const at::Tensor& sq_norms,
                      int64_t* codes, int64_t code_stride) {
  const int64_t n = residual.size(0), dim = residual.size(1), width = codebook.size(0);
  // One GEMM yields the distances directly: [r, 1] . [-2c, ||c||^2] = ||c||^2 - 2 r.c.
  const auto centroids_aug = at::cat({codebook.mul(-2), sq_norms.unsqueeze(1)}, 1).contiguous();  // [K, D+1]
  AT_DISPATCH_FLOATING_TYPES(residual.scalar_type(), "rq_assign_level", [&] {
    const scalar_t* centroids = codebook.const_data_ptr<scalar_t>();
    scalar_t* r = residual.mutable_data_ptr<scalar_t>();
    const int64_t block = row_block(dim), blocks = (n + block - 1) / block;
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      const int64_t tile = std::min(kCentroidTile, width);
      auto dist = at::empty({block, tile}, residual.options());
      auto rows_aug = at::empty({block, dim + 1}, residual.options());
      rows_aug.select(1, dim).fill_(1);
      scalar_t* ra = rows_aug.mutable_data_ptr<scalar_t>();
      std::vector<scalar_t> best(block);
      std::vector<int64_t> best_k(block);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t i0 = b * block, rows = std::min(block, n - i0);
        for (int64_t i = 0; i < rows; ++i) std::copy_n(r + (i0 + i) * dim, dim, ra + i * (dim + 1));
        const auto r_block = rows_aug.narrow(0, 0, rows);
        std::fill(best.begin(), best.end(), std::numeric_limits<scalar_t>::infinity());
        std::fill(best_k.begin(), best_k.end(), 0);
        for (int64_t k0 = 0; k0 < width; k0 += tile) {
          const int64_t cols = std::min(tile, width - k0);
          auto d = dist.narrow(0, 0, rows).narrow(1, 0, cols);
          at::mm_out(d, r_block, centroids_aug.narrow(0, k0, cols).t());  // single-threaded inside parallel_for
          const scalar_t* dp = dist.const_data_ptr<scalar_t>();
          for (int64_t i = 0; i < rows; ++i) update_argmin(dp + i * tile, cols, k0, best[i], best_k[i]);
        }
        for (int64_t i = 0; i < rows; ++i) {
          codes[(i0 + i) * code_stride] = best_k[i];
          scalar_t* ri = r + (i0 + i) * dim;
          const scalar_t* c = centroids + best_k[i] * dim;
          for (int64_t j = 0; j < dim; ++j) ri[j] -= c[j];
        }
      }
    });
  });
}

const RqAssignKernels kCpuKernels{assign_level_cpu};

std::tuple<at::Tensor, at::Tensor, at::Tensor> rq_assign_cpu(const at::Tensor& x, const at::Tensor& codebooks,
                                                             at::OptionalIntArrayRef level_sizes) {
  return rq_assign(kCpuKernels, x, codebooks, level_sizes);
}

}  // namespace

TORCH_LIBRARY_IMPL(genrec, CPU, m) { m.impl("rq_assign", &rq_assign_cpu); }

}  // namespace genrec
