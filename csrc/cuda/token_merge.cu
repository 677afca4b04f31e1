// CUDA kernels of genrec::token_merge. Layout: one warp-wide row of threads per output row (or per
// (row, level) segment), lanes striding the feature columns, so every global access is coalesced.
#include <cuda_bf16.h>

#include <algorithm>
#include <type_traits>

#include "token_merge.h"

namespace genrec::cuda {
namespace {

constexpr int kLanes = 32;        // threads along the feature dimension
constexpr int kRowsPerBlock = 8;  // rows (threadIdx.y) per block

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

template <typename A, typename T> __device__ __forceinline__ A to_acc(T v) { return static_cast<A>(v); }
template <> __device__ __forceinline__ float to_acc<float, __nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T, typename A> __device__ __forceinline__ T from_acc(A v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16, float>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16, double>(double v) {
  return __float2bfloat16_rn(static_cast<float>(v));
}

// The marker a bad token leaves in forward outputs (never an out-of-bounds read).
template <typename A> __device__ __forceinline__ A quiet_nan() { return static_cast<A>(__int_as_float(0x7fc00000)); }

__device__ __forceinline__ bool in_range(int64_t t, int64_t vocab) { return t >= 0 && t < vocab; }

int64_t row_blocks(int64_t rows) { return (rows + kRowsPerBlock - 1) / kRowsPerBlock; }
dim3 row_grid(int64_t rows) { return dim3(static_cast<unsigned>(row_blocks(rows))); }
constexpr int64_t kMaxGridX = 2147483647;  // gridDim.x limit
const dim3 kRowBlock(kLanes, kRowsPerBlock);

__global__ void scan_tokens_kernel(const int64_t* __restrict__ tokens, int64_t rows, int64_t levels, int64_t vocab,
                                   int64_t pad, unsigned long long* scan) {
  const int64_t first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = first; i < rows * levels; i += stride) {
    const int64_t t = tokens[i];
    if (t != pad && !in_range(t, vocab)) atomicMin(scan, static_cast<unsigned long long>(i));
  }
  // Per level: thread-local span, then a warp reduction, then one atomic per warp (not per token).
  for (int64_t l = 0; l < levels; ++l) {
    unsigned long long lo = static_cast<unsigned long long>(vocab), hi = 0;
    for (int64_t r = first; r < rows; r += stride) {
      const int64_t t = tokens[r * levels + l];
      if (t != pad && in_range(t, vocab)) {
        lo = min(lo, static_cast<unsigned long long>(t));
        hi = max(hi, static_cast<unsigned long long>(t + 1));
      }
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
      lo = min(lo, __shfl_down_sync(0xffffffffu, lo, offset));
      hi = max(hi, __shfl_down_sync(0xffffffffu, hi, offset));
    }
    if ((threadIdx.x & 31) == 0) {
      atomicMin(scan + 1 + l, lo);
      atomicMax(scan + 1 + levels + l, hi);
    }
  }
}

// Row of the projected table for token t at level l, or -1 when t is outside the level's valid range.
__device__ __forceinline__ int64_t table_row(const int64_t* __restrict__ level_info, int64_t l, int64_t t) {
  return (t >= level_info[3 * l + 1] && t < level_info[3 * l + 2]) ? level_info[3 * l] + t : -1;
}

template <typename T>
__global__ void table_sum_kernel(const typename Acc<T>::type* __restrict__ table,
                                 const int64_t* __restrict__ level_info, const int64_t* __restrict__ tokens,
                                 const T* __restrict__ bias, int64_t pad, int64_t rows, int64_t levels,
                                 int64_t out_dim, T* __restrict__ out) {
  using A = typename Acc<T>::type;
  const int64_t row = blockIdx.x * static_cast<int64_t>(kRowsPerBlock) + threadIdx.y;
  if (row >= rows) return;
  const int64_t* tok = tokens + row * levels;
  bool live = false;
  for (int64_t l = 0; l < levels; ++l) live |= tok[l] != pad;
  T* dst = out + row * out_dim;
  for (int64_t c = threadIdx.x; c < out_dim; c += kLanes) {
    A a = 0;
    if (live) {
      if (bias != nullptr) a = to_acc<A>(bias[c]);
      for (int64_t l = 0; l < levels; ++l) {
        const int64_t t = tok[l];
        if (t == pad) continue;
        const int64_t row_in_table = table_row(level_info, l, t);
        a += row_in_table >= 0 ? table[row_in_table * out_dim + c] : quiet_nan<A>();
      }
    }
    dst[c] = from_acc<T>(a);
  }
}

template <typename S, typename X>
__global__ void gather_concat_kernel(const S* __restrict__ embedding, const int64_t* __restrict__ tokens, int64_t pad,
                                     int64_t segments, int64_t vocab, int64_t dim, X* __restrict__ x) {
  using A = typename Acc<S>::type;
  const int64_t seg = blockIdx.x * static_cast<int64_t>(kRowsPerBlock) + threadIdx.y;  // (row, level)
  if (seg >= segments) return;
  const int64_t t = tokens[seg];
  X* dst = x + seg * dim;
  const bool valid = in_range(t, vocab);
  for (int64_t c = threadIdx.x; c < dim; c += kLanes) {
    A v = 0;
    if (t != pad) v = valid ? to_acc<A>(embedding[t * dim + c]) : quiet_nan<A>();
    dst[c] = from_acc<X>(v);
  }
}

template <typename G>
__global__ void scatter_levels_kernel(const G* __restrict__ grad_out, const int64_t* __restrict__ tokens,
                                      const int64_t* __restrict__ level_info, int64_t pad,
                                      int64_t rows, int64_t levels, int64_t out_dim,
                                      typename Acc<G>::type* __restrict__ grads) {
  using A = typename Acc<G>::type;
  const int64_t row = blockIdx.x * static_cast<int64_t>(kRowsPerBlock) + threadIdx.y;
  if (row >= rows) return;
  const G* src = grad_out + row * out_dim;
  for (int64_t l = 0; l < levels; ++l) {
    const int64_t t = tokens[row * levels + l];
    const int64_t row_in_table = t == pad ? -1 : table_row(level_info, l, t);
    if (row_in_table < 0) continue;
    A* dst = grads + row_in_table * out_dim;
    for (int64_t c = threadIdx.x; c < out_dim; c += kLanes) atomicAdd(dst + c, to_acc<A>(src[c]));
  }
}

template <typename G, typename A>
__global__ void scatter_concat_kernel(const G* __restrict__ grad_x, const int64_t* __restrict__ tokens, int64_t pad,
                                      int64_t segments, int64_t vocab, int64_t dim, A* __restrict__ grad_embedding) {
  const int64_t seg = blockIdx.x * static_cast<int64_t>(kRowsPerBlock) + threadIdx.y;
  if (seg >= segments) return;
  const int64_t t = tokens[seg];
  if (t == pad || !in_range(t, vocab)) return;
  const G* src = grad_x + seg * dim;
  A* dst = grad_embedding + t * dim;
  for (int64_t c = threadIdx.x; c < dim; c += kLanes) atomicAdd(dst + c, to_acc<A>(src[c]));
}

// Calls f with a null pointer of the C++ type behind `t`.
template <typename F> cudaError_t dispatch(DType t, F&& f) {
  switch (t) {
    case DType::kFloat32: return f(static_cast<float*>(nullptr));
    case DType::kBFloat16: return f(static_cast<__nv_bfloat16*>(nullptr));
    case DType::kFloat64: return f(static_cast<double*>(nullptr));
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_scan_tokens(const int64_t* tokens, int64_t rows, int64_t levels, int64_t vocab, int64_t pad,
                               unsigned long long* scan, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  const int threads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>((rows + threads - 1) / threads, 1024));
  scan_tokens_kernel<<<blocks, threads, 0, stream>>>(tokens, rows, levels, vocab, pad, scan);
  return cudaGetLastError();
}

cudaError_t launch_table_sum(DType out_type, const void* table, const int64_t* level_info, const int64_t* tokens,
                             const void* bias, int64_t pad, int64_t rows, int64_t levels, int64_t out_dim, void* out,
                             cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (row_blocks(rows) > kMaxGridX) return cudaErrorInvalidConfiguration;
  return dispatch(out_type, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    using A = typename Acc<T>::type;
    table_sum_kernel<T><<<row_grid(rows), kRowBlock, 0, stream>>>(
        static_cast<const A*>(table), level_info, tokens, static_cast<const T*>(bias), pad, rows, levels, out_dim,
        static_cast<T*>(out));
    return cudaGetLastError();
  });
}

cudaError_t launch_gather_concat(DType embedding_type, const void* embedding, DType x_type, const int64_t* tokens,
                                 int64_t pad, int64_t rows, int64_t levels, int64_t vocab, int64_t dim, void* x,
                                 cudaStream_t stream) {
  const int64_t segments = rows * levels;
  if (segments == 0) return cudaSuccess;
  if (row_blocks(segments) > kMaxGridX) return cudaErrorInvalidConfiguration;
  return dispatch(embedding_type, [&](auto* stag) {
    using S = std::remove_pointer_t<decltype(stag)>;
    return dispatch(x_type, [&](auto* xtag) {
      using X = std::remove_pointer_t<decltype(xtag)>;
      gather_concat_kernel<S, X><<<row_grid(segments), kRowBlock, 0, stream>>>(
          static_cast<const S*>(embedding), tokens, pad, segments, vocab, dim, static_cast<X*>(x));
      return cudaGetLastError();
    });
  });
}

cudaError_t launch_scatter_levels(DType grad_type, const void* grad_out, const int64_t* tokens,
                                  const int64_t* level_info, int64_t pad, int64_t rows, int64_t levels, int64_t out_dim,
                                  void* grads, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (row_blocks(rows) > kMaxGridX) return cudaErrorInvalidConfiguration;
  return dispatch(grad_type, [&](auto* tag) {
    using G = std::remove_pointer_t<decltype(tag)>;
    using A = typename Acc<G>::type;
    scatter_levels_kernel<G><<<row_grid(rows), kRowBlock, 0, stream>>>(
        static_cast<const G*>(grad_out), tokens, level_info, pad, rows, levels, out_dim, static_cast<A*>(grads));
    return cudaGetLastError();
  });
}

cudaError_t launch_scatter_concat(DType grad_type, const void* grad_x, const int64_t* tokens, int64_t pad,
                                  int64_t rows, int64_t levels, int64_t vocab, int64_t dim, void* grad_embedding,
                                  cudaStream_t stream) {
  const int64_t segments = rows * levels;
  if (segments == 0) return cudaSuccess;
  if (row_blocks(segments) > kMaxGridX) return cudaErrorInvalidConfiguration;
  return dispatch(grad_type, [&](auto* tag) {
    using G = std::remove_pointer_t<decltype(tag)>;
    using A = typename Acc<G>::type;
    scatter_concat_kernel<G, A><<<row_grid(segments), kRowBlock, 0, stream>>>(
        static_cast<const G*>(grad_x), tokens, pad, segments, vocab, dim, static_cast<A*>(grad_embedding));
    return cudaGetLastError();
  });
}

}  // namespace genrec::cuda
