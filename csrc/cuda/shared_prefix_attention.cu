// CUDA kernel of genrec::shared_prefix_attention. A block serves one (query, KV head) and up to kWarps of
// its (beam, query-head) rows, one warp per row, lanes across the head dimension. The prompt's keys and
// values are staged tile by tile in shared memory once per block — every row of the block reads them from
// there, so the prompt is read once per kWarps rows and never copied per beam — and each warp keeps an
// online softmax (running max, sum and weighted values) in registers; the beam's own keys follow from
// global memory. Scores, weights and values are accumulated in float (double for float64).
#include <cstdint>

#include "kernel_common.cuh"
#include "shared_prefix_attention.h"

namespace genrec::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kPerLane = kSharedPrefixMaxDim / 32;
constexpr int64_t kTileBytes = 16384;  // shared memory for one tile of prompt keys + values

// One warp's online softmax over the keys it has seen: running max, sum of weights, weighted values.
template <typename A> struct Online {
  A max, sum, acc[kPerLane];
};

template <typename T, typename A>
__device__ __forceinline__ void visit(Online<A>& st, const A (&q)[kPerLane], const T* key, const T* value, int lane,
                                      int64_t dim) {
  A s = 0;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int64_t d = lane + 32 * i;
    if (d < dim) s += q[i] * to_acc(key[d]);
  }
  s = warp_sum(s);
  const A m = s > st.max ? s : st.max;
  const A correction = exp_acc(st.max - m);  // 0 on the first key (max was -inf)
  const A p = exp_acc(s - m);
  st.sum = st.sum * correction + p;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int64_t d = lane + 32 * i;
    if (d < dim) st.acc[i] = st.acc[i] * correction + p * to_acc(value[d]);
  }
  st.max = m;
}

template <typename T, typename A>
__global__ void __launch_bounds__(kThreads) shared_prefix_attention_kernel(
    const T* __restrict__ q, const T* __restrict__ prefix_k, const T* __restrict__ prefix_v,
    const bool* __restrict__ prefix_mask, const T* __restrict__ own_k, const T* __restrict__ own_v,
    T* __restrict__ out, RowStrides q_strides, RowStrides own_k_strides, RowStrides own_v_strides, int64_t beams,
    int64_t heads, int64_t kv_heads, int64_t prefix, int64_t own, int64_t dim, int64_t tile_keys, A scale) {
  extern __shared__ __align__(16) unsigned char smem[];
  T* tile_k = reinterpret_cast<T*>(smem);
  T* tile_v = tile_k + tile_keys * dim;
  __shared__ bool tile_visible[kTileBytes / 4];  // >= tile_keys for any dtype (>= 2 bytes x 2 per key)

  const int64_t b = blockIdx.x / kv_heads, kvh = blockIdx.x % kv_heads, group = heads / kv_heads;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t j = static_cast<int64_t>(blockIdx.y) * kWarps + warp;  // (beam, head in group) row of this block
  const bool active = j < beams * group;
  const int64_t w = active ? j / group : 0, h = kvh * group + (active ? j % group : 0);
  const int64_t row = (b * beams + w) * heads + h;  // of the (dense) output
  const T* qh = q + b * q_strides.batch + w * q_strides.beam + h * q_strides.head;

  A qr[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int64_t d = lane + 32 * i;
    qr[i] = d < dim ? to_acc(qh[d]) * scale : A(0);
  }
  Online<A> st;
  st.max = -INFINITY;
  st.sum = 0;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) st.acc[i] = 0;

  const T* pk = prefix_k + (b * kv_heads + kvh) * prefix * dim;
  const T* pv = prefix_v + (b * kv_heads + kvh) * prefix * dim;
  for (int64_t p0 = 0; p0 < prefix; p0 += tile_keys) {
    const int64_t n = min(tile_keys, prefix - p0);
    __syncthreads();  // the previous tile is consumed
    for (int64_t e = threadIdx.x; e < n * dim; e += kThreads) {
      tile_k[e] = pk[p0 * dim + e];
      tile_v[e] = pv[p0 * dim + e];
    }
    for (int64_t e = threadIdx.x; e < n; e += kThreads) tile_visible[e] = prefix_mask[b * prefix + p0 + e];
    __syncthreads();
    if (active) {
      for (int64_t p = 0; p < n; ++p) {
        if (tile_visible[p]) visit(st, qr, tile_k + p * dim, tile_v + p * dim, lane, dim);
      }
    }
  }
  if (!active) return;
  const T* ok = own_k + b * own_k_strides.batch + w * own_k_strides.beam + kvh * own_k_strides.head;
  const T* ov = own_v + b * own_v_strides.batch + w * own_v_strides.beam + kvh * own_v_strides.head;
  for (int64_t t = 0; t < own; ++t) {
    visit(st, qr, ok + t * own_k_strides.token, ov + t * own_v_strides.token, lane, dim);
  }
  const A inv = A(1) / st.sum;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int64_t d = lane + 32 * i;
    if (d < dim) out[row * dim + d] = from_acc<T, A>(st.acc[i] * inv);
  }
}

}  // namespace

cudaError_t launch_shared_prefix_attention(DType type, const void* q, RowStrides q_strides, const void* prefix_k,
                                           const void* prefix_v, const bool* prefix_mask, const void* own_k,
                                           RowStrides own_k_strides, const void* own_v, RowStrides own_v_strides,
                                           void* out, int64_t batch, int64_t beams, int64_t heads, int64_t kv_heads,
                                           int64_t prefix, int64_t own, int64_t dim, double scale,
                                           cudaStream_t stream) {
  if (batch == 0 || beams == 0 || heads == 0 || dim == 0) return cudaSuccess;
  if (dim > kSharedPrefixMaxDim) return cudaErrorInvalidValue;
  return dispatch(type, [&](auto types) {
    using T = typename decltype(types)::T;
    using A = typename decltype(types)::A;
    const int64_t tile_keys = kTileBytes / (2 * dim * static_cast<int64_t>(sizeof(T)));
    const int64_t row_blocks = (beams * (heads / kv_heads) + kWarps - 1) / kWarps;
    if (tile_keys < 1 || batch * kv_heads > 2147483647 || row_blocks > 65535) return cudaErrorInvalidConfiguration;
    const dim3 grid(static_cast<unsigned>(batch * kv_heads), static_cast<unsigned>(row_blocks));
    const size_t smem = static_cast<size_t>(2 * tile_keys * dim) * sizeof(T);
    shared_prefix_attention_kernel<T, A><<<grid, kThreads, smem, stream>>>(
        static_cast<const T*>(q), static_cast<const T*>(prefix_k), static_cast<const T*>(prefix_v), prefix_mask,
        static_cast<const T*>(own_k), static_cast<const T*>(own_v), static_cast<T*>(out), q_strides, own_k_strides,
        own_v_strides, beams, heads, kv_heads, prefix, own, dim, tile_keys, static_cast<A>(scale));
    return cudaGetLastError();
  });
}

}  // namespace genrec::cuda
