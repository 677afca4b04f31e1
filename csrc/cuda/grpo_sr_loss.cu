// CUDA kernels of genrec::grpo_sr_loss (launchers: grpo_sr_loss.h). row_lse: one 256-thread block per row;
// each thread folds its strided elements into an online (max, sum of exp) pair, then warp shuffles and one
// shared-memory step merge the pairs — one read of the row. softmax_grad: one thread per element of the tile
// (grid-stride), coalesced along the vocabulary. Arithmetic in float (double for float64).
#include <algorithm>
#include <cstdint>

#include "grpo_sr_loss.h"
#include "kernel_common.cuh"

namespace genrec::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;  // grid-stride loops cover the rest

__device__ __forceinline__ float log_acc(float x) { return logf(x); }
__device__ __forceinline__ double log_acc(double x) { return log(x); }

// Folds (m2, s2) — a max and the sum of exp(x - m2) — into (m, s). A -inf maximum carries no mass; NaNs
// propagate into s.
template <typename A> __device__ __forceinline__ void merge(A& m, A& s, A m2, A s2) {
  if (m2 == neg_inf<A>()) return;
  if (m == neg_inf<A>()) {
    m = m2;
    s = s2;
  } else if (m2 > m) {
    s = s * exp_acc(m - m2) + s2;
    m = m2;
  } else {
    s += s2 * exp_acc(m2 - m);
  }
}

__global__ void find_bad_target_kernel(const int64_t* __restrict__ targets, int64_t n, int64_t vocab,
                                       int64_t ignore_index, unsigned long long* first_bad) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    const int64_t t = targets[i];
    if (t != ignore_index && (t < 0 || t >= vocab)) atomicMin(first_bad, static_cast<unsigned long long>(i));
  }
}

template <typename A>
__global__ void __launch_bounds__(kThreads) row_lse_kernel(const A* __restrict__ logits,
                                                           const int64_t* __restrict__ targets, int64_t vocab,
                                                           int64_t ignore_index, A* __restrict__ lse,
                                                           A* __restrict__ target_logit) {
  const int64_t r = blockIdx.x;
  const A* row = logits + r * vocab;
  A m = neg_inf<A>(), s = 0;
  for (int64_t v = threadIdx.x; v < vocab; v += kThreads) merge(m, s, row[v], A(1));
  for (int o = 16; o > 0; o >>= 1) {
    const A m2 = __shfl_xor_sync(0xffffffffu, m, o);
    const A s2 = __shfl_xor_sync(0xffffffffu, s, o);
    merge(m, s, m2, s2);
  }
  __shared__ A warp_m[kWarps], warp_s[kWarps];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    warp_m[warp] = m;
    warp_s[warp] = s;
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  for (int w = 1; w < kWarps; ++w) merge(m, s, warp_m[w], warp_s[w]);
  lse[r] = m == neg_inf<A>() ? m : m + log_acc(s);
  const int64_t t = targets[r];
  if (t == ignore_index) {
    target_logit[r] = 0;
  } else {
    target_logit[r] = (t >= 0 && t < vocab) ? row[t] : quiet_nan<A>();  // never out of bounds
  }
}

// logits and grad may be one buffer (in place): no __restrict__ on either.
template <typename A, typename G>
__global__ void __launch_bounds__(kThreads) softmax_grad_kernel(const A* logits, const A* __restrict__ lse,
                                                                const int64_t* __restrict__ targets,
                                                                const A* __restrict__ dlogp, int64_t rows,
                                                                int64_t vocab, G* grad) {
  const int64_t total = rows * vocab;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < total; i += stride) {
    const int64_t r = i / vocab, v = i - r * vocab;
    const A d = dlogp[r];
    A g = 0;
    if (d != A(0)) {
      g = -d * exp_acc(logits[i] - lse[r]);
      if (targets[r] == v) g += d;
    }
    grad[i] = from_acc<G, A>(g);
  }
}

int grid_for(int64_t work) {
  return static_cast<int>(std::min<int64_t>(std::max<int64_t>((work + kThreads - 1) / kThreads, 1), kMaxBlocks));
}

}  // namespace

cudaError_t launch_find_bad_target(const int64_t* targets, int64_t n, int64_t vocab, int64_t ignore_index,
                                   unsigned long long* first_bad, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  find_bad_target_kernel<<<grid_for(n), kThreads, 0, stream>>>(targets, n, vocab, ignore_index, first_bad);
  return cudaGetLastError();
}

cudaError_t launch_row_lse(DType acc_type, const void* logits, const int64_t* targets, int64_t rows, int64_t vocab,
                           int64_t ignore_index, void* lse, void* target_logit, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (rows > 2147483647) return cudaErrorInvalidConfiguration;
  const auto blocks = static_cast<unsigned>(rows);
  switch (acc_type) {
    case DType::kFloat32:
      row_lse_kernel<float><<<blocks, kThreads, 0, stream>>>(static_cast<const float*>(logits), targets, vocab,
                                                            ignore_index, static_cast<float*>(lse),
                                                            static_cast<float*>(target_logit));
      break;
    case DType::kFloat64:
      row_lse_kernel<double><<<blocks, kThreads, 0, stream>>>(static_cast<const double*>(logits), targets, vocab,
                                                             ignore_index, static_cast<double*>(lse),
                                                             static_cast<double*>(target_logit));
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t launch_softmax_grad(DType acc_type, const void* logits, const void* lse, const int64_t* targets,
                                const void* dlogp, int64_t rows, int64_t vocab, DType grad_type, void* grad,
                                cudaStream_t stream) {
  const int64_t total = rows * vocab;
  if (total == 0) return cudaSuccess;
  const int blocks = grid_for(total);
  if (acc_type == DType::kFloat64 && grad_type == DType::kFloat64) {
    softmax_grad_kernel<double, double><<<blocks, kThreads, 0, stream>>>(
        static_cast<const double*>(logits), static_cast<const double*>(lse), targets,
        static_cast<const double*>(dlogp), rows, vocab, static_cast<double*>(grad));
    return cudaGetLastError();
  }
  if (acc_type != DType::kFloat32) return cudaErrorInvalidValue;
  const auto* x = static_cast<const float*>(logits);
  const auto* l = static_cast<const float*>(lse);
  const auto* d = static_cast<const float*>(dlogp);
  switch (grad_type) {
    case DType::kFloat32:
      softmax_grad_kernel<float, float><<<blocks, kThreads, 0, stream>>>(x, l, targets, d, rows, vocab,
                                                                        static_cast<float*>(grad));
      break;
    case DType::kBFloat16:
      softmax_grad_kernel<float, __nv_bfloat16><<<blocks, kThreads, 0, stream>>>(
          x, l, targets, d, rows, vocab, static_cast<__nv_bfloat16*>(grad));
      break;
    case DType::kFloat16:
      softmax_grad_kernel<float, __half><<<blocks, kThreads, 0, stream>>>(x, l, targets, d, rows, vocab,
                                                                         static_cast<__half*>(grad));
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace genrec::cuda
