// CUDA kernel of genrec::rq_assign: a register-tiled SIMT "GEMM" whose epilogue is a running argmin.
// A block owns kTileRows residual rows and sweeps the codebook in tiles of kTileCols centroids; each thread
// accumulates a 4 x 4 micro-tile of dot products over the feature dimension (staged through shared memory
// in kTileDepth slices), turns them into distances, and keeps its best centroid per row. A shared-memory
// reduction picks each row's winner (lowest index on ties), and the block subtracts that centroid from its
// rows — no N x K matrix, one pass over the residual per level.
#include <cfloat>
#include <cstdint>

#include "rq_assign.h"

namespace genrec::cuda {
namespace {

constexpr int kTileRows = 64;
constexpr int kTileCols = 64;
constexpr int kTileDepth = 16;
constexpr int kMicro = 4;                                     // 4 x 4 outputs per thread
constexpr int kThreadsX = kTileCols / kMicro;                 // 16 threads across centroids
constexpr int kThreadsY = kTileRows / kMicro;                 // 16 threads across rows
constexpr int kThreads = kThreadsX * kThreadsY;               // 256

template <typename A> __device__ __forceinline__ A max_value();
template <> __device__ __forceinline__ float max_value<float>() { return FLT_MAX; }
template <> __device__ __forceinline__ double max_value<double>() { return DBL_MAX; }

template <typename A>
__global__ void __launch_bounds__(kThreads) rq_assign_level_kernel(A* __restrict__ residual, const A* __restrict__ codebook,
                                                                  const A* __restrict__ sq_norms, int64_t n,
                                                                  int64_t width, int64_t dim, int64_t* __restrict__ codes,
                                                                  int64_t code_stride) {
  // Transposed (a thread reads its 4 rows contiguously) and padded by one so staging stores avoid bank conflicts.
  __shared__ A rows_s[kTileDepth][kTileRows + 1];
  __shared__ A cols_s[kTileDepth][kTileCols + 1];
  __shared__ A best_s[kTileRows][kThreadsX];
  __shared__ int64_t best_k_s[kTileRows][kThreadsX];
  __shared__ int64_t winner_s[kTileRows];

  const int tx = threadIdx.x % kThreadsX, ty = threadIdx.x / kThreadsX;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTileRows;

  A best[kMicro];
  int64_t best_k[kMicro];
  for (int i = 0; i < kMicro; ++i) {
    best[i] = max_value<A>();
    best_k[i] = 0;
  }

  for (int64_t col0 = 0; col0 < width; col0 += kTileCols) {
    A acc[kMicro][kMicro] = {};
    for (int64_t d0 = 0; d0 < dim; d0 += kTileDepth) {
      // Stage a kTileDepth slice of the block's rows and of the centroid tile; zero outside the matrices.
      for (int e = threadIdx.x; e < kTileRows * kTileDepth; e += kThreads) {
        const int r = e / kTileDepth, d = e % kTileDepth;
        const int64_t gr = row0 + r, gd = d0 + d;
        rows_s[d][r] = (gr < n && gd < dim) ? residual[gr * dim + gd] : A(0);
      }
      for (int e = threadIdx.x; e < kTileCols * kTileDepth; e += kThreads) {
        const int c = e / kTileDepth, d = e % kTileDepth;
        const int64_t gc = col0 + c, gd = d0 + d;
        cols_s[d][c] = (gc < width && gd < dim) ? codebook[gc * dim + gd] : A(0);
      }
      __syncthreads();
#pragma unroll
      for (int d = 0; d < kTileDepth; ++d) {
        A a[kMicro], b[kMicro];
#pragma unroll
        for (int i = 0; i < kMicro; ++i) a[i] = rows_s[d][ty * kMicro + i];
#pragma unroll
        for (int j = 0; j < kMicro; ++j) b[j] = cols_s[d][tx * kMicro + j];
#pragma unroll
        for (int i = 0; i < kMicro; ++i)
#pragma unroll
          for (int j = 0; j < kMicro; ++j) acc[i][j] += a[i] * b[j];
      }
      __syncthreads();
    }
    // Epilogue: each thread sees its centroids in increasing order, so a strict < keeps the lowest index.
#pragma unroll
    for (int j = 0; j < kMicro; ++j) {
      const int64_t k = col0 + tx * kMicro + j;
      if (k >= width) break;
      const A norm = sq_norms[k];
#pragma unroll
      for (int i = 0; i < kMicro; ++i) {
        const A dist = norm - A(2) * acc[i][j];
        if (dist < best[i]) {
          best[i] = dist;
          best_k[i] = k;
        }
      }
    }
  }

  for (int i = 0; i < kMicro; ++i) {
    best_s[ty * kMicro + i][tx] = best[i];
    best_k_s[ty * kMicro + i][tx] = best_k[i];
  }
  __syncthreads();
  if (threadIdx.x < kTileRows) {
    const int r = threadIdx.x;
    A b = best_s[r][0];
    int64_t k = best_k_s[r][0];
    for (int t = 1; t < kThreadsX; ++t) {
      const A bt = best_s[r][t];
      const int64_t kt = best_k_s[r][t];
      if (bt < b || (bt == b && kt < k)) {
        b = bt;
        k = kt;
      }
    }
    winner_s[r] = k;
    if (row0 + r < n) codes[(row0 + r) * code_stride] = k;
  }
  __syncthreads();
  // Subtract each row's winning centroid: consecutive threads walk consecutive features (coalesced).
  for (int r = 0; r < kTileRows && row0 + r < n; ++r) {
    const A* c = codebook + winner_s[r] * dim;
    A* out = residual + (row0 + r) * dim;
    for (int64_t d = threadIdx.x; d < dim; d += kThreads) out[d] -= c[d];
  }
}

}  // namespace

cudaError_t launch_rq_assign_level(DType type, void* residual, const void* codebook, const void* sq_norms, int64_t n,
                                   int64_t width, int64_t dim, int64_t* codes, int64_t code_stride,
                                   cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if ((n + kTileRows - 1) / kTileRows > 2147483647) return cudaErrorInvalidConfiguration;  // gridDim.x limit
  const dim3 grid(static_cast<unsigned>((n + kTileRows - 1) / kTileRows));
  switch (type) {
    case DType::kFloat32:
      rq_assign_level_kernel<float><<<grid, kThreads, 0, stream>>>(
          static_cast<float*>(residual), static_cast<const float*>(codebook), static_cast<const float*>(sq_norms), n,
          width, dim, codes, code_stride);
      break;
    case DType::kFloat64:
      rq_assign_level_kernel<double><<<grid, kThreads, 0, stream>>>(
          static_cast<double*>(residual), static_cast<const double*>(codebook), static_cast<const double*>(sq_norms),
          n, width, dim, codes, code_stride);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace genrec::cuda
