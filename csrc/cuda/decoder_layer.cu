// CUDA stages of genrec::layer_qkv / layer_out / rms_norm. RMSNorm: one warp per row (lanes stride the row,
// one shuffle reduction); rotary embedding and SwiGLU: one thread per output pair / element. Arithmetic in
// float (double for float64).
#include <cstdint>

#include "decoder_layer.h"
#include "kernel_common.cuh"

namespace genrec::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 2147483647;

int64_t blocks_for(int64_t n) { return (n + kThreads - 1) / kThreads; }

template <typename T, typename A>
__global__ void __launch_bounds__(kThreads) rms_norm_kernel(const T* __restrict__ x, const T* __restrict__ weight,
                                                            T* __restrict__ out, int64_t rows, int64_t width, A eps) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32;
  if (r >= rows) return;
  const int lane = threadIdx.x % 32;
  const T* row = x + r * width;
  A sum = 0;
  for (int64_t j = lane; j < width; j += 32) {
    const A v = to_acc(row[j]);
    sum += v * v;
  }
  const A inv = A(1) / sqrt(warp_sum(sum) / static_cast<A>(width) + eps);
  for (int64_t j = lane; j < width; j += 32) {
    const A normed = to_acc(from_acc<T, A>(to_acc(row[j]) * inv));  // rounded first, as transformers does
    out[r * width + j] = from_acc<T, A>(to_acc(weight[j]) * normed);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) rotary_kernel(T* __restrict__ y, const T* __restrict__ cos,
                                                          const T* __restrict__ sin, int64_t rows, int64_t width,
                                                          int64_t rows_per_position, int64_t dim,
                                                          int64_t rotated_heads) {
  using A = decltype(to_acc(T{}));
  const int64_t half = dim / 2, per_row = rotated_heads * half;
  const int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (e >= rows * per_row) return;
  const int64_t r = e / per_row, h = e % per_row / half, i = e % half;
  const T* c = cos + r / rows_per_position * dim;
  const T* s = sin + r / rows_per_position * dim;
  T* lo = y + r * width + h * dim + i;
  T* hi = lo + half;
  const A a = to_acc(*lo), b = to_acc(*hi);
  *lo = from_acc<T, A>(a * to_acc(c[i]) - b * to_acc(s[i]));
  *hi = from_acc<T, A>(b * to_acc(c[half + i]) + a * to_acc(s[half + i]));
}

template <typename T>
__global__ void __launch_bounds__(kThreads) silu_mul_kernel(const T* __restrict__ gate_up, T* __restrict__ out,
                                                            int64_t rows, int64_t inner) {
  using A = decltype(to_acc(T{}));
  const int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (e >= rows * inner) return;
  const int64_t r = e / inner, j = e % inner;
  const A g = to_acc(gate_up[r * 2 * inner + j]), u = to_acc(gate_up[r * 2 * inner + inner + j]);
  out[e] = from_acc<T, A>(g / (A(1) + exp_acc(-g)) * u);
}

}  // namespace

cudaError_t launch_rms_norm(DType type, const void* x, const void* weight, void* out, int64_t rows, int64_t width,
                            double eps, cudaStream_t stream) {
  if (rows == 0 || width == 0) return cudaSuccess;
  const int64_t blocks = (rows + kThreads / 32 - 1) / (kThreads / 32);
  if (blocks > kMaxBlocks) return cudaErrorInvalidConfiguration;
  return dispatch(type, [&](auto types) {
    using T = typename decltype(types)::T;
    using A = typename decltype(types)::A;
    rms_norm_kernel<T, A><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(weight), static_cast<T*>(out), rows, width, static_cast<A>(eps));
    return cudaGetLastError();
  });
}

cudaError_t launch_rotary(DType type, void* y, const void* cos, const void* sin, int64_t rows, int64_t width,
                          int64_t positions, int64_t dim, int64_t rotated_heads, cudaStream_t stream) {
  const int64_t n = rows * rotated_heads * (dim / 2);
  if (n == 0) return cudaSuccess;
  if (blocks_for(n) > kMaxBlocks || positions < 1 || rows % positions != 0) return cudaErrorInvalidConfiguration;
  return dispatch(type, [&](auto types) {
    using T = typename decltype(types)::T;
    rotary_kernel<T><<<static_cast<unsigned>(blocks_for(n)), kThreads, 0, stream>>>(
        static_cast<T*>(y), static_cast<const T*>(cos), static_cast<const T*>(sin), rows, width, rows / positions, dim,
        rotated_heads);
    return cudaGetLastError();
  });
}

cudaError_t launch_silu_mul(DType type, const void* gate_up, void* out, int64_t rows, int64_t inner,
                            cudaStream_t stream) {
  const int64_t n = rows * inner;
  if (n == 0) return cudaSuccess;
  if (blocks_for(n) > kMaxBlocks) return cudaErrorInvalidConfiguration;
  return dispatch(type, [&](auto types) {
    using T = typename decltype(types)::T;
    silu_mul_kernel<T><<<static_cast<unsigned>(blocks_for(n)), kThreads, 0, stream>>>(static_cast<const T*>(gate_up),
                                                                                      static_cast<T*>(out), rows, inner);
    return cudaGetLastError();
  });
}

}  // namespace genrec::cuda
