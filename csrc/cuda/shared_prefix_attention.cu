// CUDA kernel of genrec::shared_prefix_attention. A block serves one (query, KV head) and up to kWarps of
// its (beam, query-head) rows, one warp per row, lanes across the head dimension. The prompt's keys and
// values are staged tile by tile in shared memory once per block — every row of the block reads them from
// there, so the prompt is read once per kWarps rows and never copied per beam — and each warp keeps an
// online softmax (running max, sum and weighted values) in registers; the beam's own keys follow from
// global memory. Scores, weights and values are accumulated in float (double for float64).
#include <cfloat>
#include <cstdint>

#include "device_math.cuh"
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
    T* __restrict__ out, int64_t beams, int64_t heads, int64_t kv_heads, int64_t prefix, int64_t own, int64_t dim,
    int64_t tile_keys, A scale) {
  extern __shared__ __align__(16) unsigned char smem[];
  T* tile_k = reinterpret_cast<T*>(smem);
  T* tile_v = tile_k + tile_keys * dim;
  __shared__ bool tile_visible[kTileBytes / 4];  // >= tile_keys for any dtype (>= 2 bytes x 2 per key)

  const int64_t b = blockIdx.x / kv_heads, kvh = blockIdx.x % kv_heads, group = heads / kv_heads;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t j = static_cast<int64_t>(blockIdx.y) * kWarps + warp;  // (beam, head in group) row of this block
  const bool active = j < beams * group;
  const int64_t w = active ? j / group : 0, h = kvh * group + (active ? j % group : 0);
  const int64_t row = (b * beams + w) * heads + h;

  A qr[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int64_t d = lane + 32 * i;
    qr[i] = d < dim ? to_acc(q[row * dim + d]) * scale : A(0);
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
  const T* ok = own_k + ((b * beams + w) * kv_heads + kvh) * own * dim;
  const T* ov = own_v + ((b * beams + w) * kv_heads + kvh) * own * dim;
  for (int64_t t = 0; t < own; ++t) visit(st, qr, ok + t * dim, ov + t * dim, lane, dim);
  const A inv = A(1) / st.sum;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int64_t d = lane + 32 * i;
    if (d < dim) out[row * dim + d] = from_acc<T, A>(st.acc[i] * inv);
  }
}

template <typename T, typename A>
cudaError_t launch(const void* q, const void* prefix_k, const void* prefix_v, const bool* prefix_mask,
                   const void* own_k, const void* own_v, void* out, int64_t batch, int64_t beams, int64_t heads,
                   int64_t kv_heads, int64_t prefix, int64_t own, int64_t dim, double scale, cudaStream_t stream) {
  const int64_t tile_keys = kTileBytes / (2 * dim * static_cast<int64_t>(sizeof(T)));
  const int64_t row_blocks = (beams * (heads / kv_heads) + kWarps - 1) / kWarps;
  if (tile_keys < 1 || batch * kv_heads > 2147483647 || row_blocks > 65535) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(batch * kv_heads), static_cast<unsigned>(row_blocks));
  const size_t smem = static_cast<size_t>(2 * tile_keys * dim) * sizeof(T);
  shared_prefix_attention_kernel<T, A><<<grid, kThreads, smem, stream>>>(
      static_cast<const T*>(q), static_cast<const T*>(prefix_k), static_cast<const T*>(prefix_v), prefix_mask,
      static_cast<const T*>(own_k), static_cast<const T*>(own_v), static_cast<T*>(out), beams, heads, kv_heads, prefix,
      own, dim, tile_keys, static_cast<A>(scale));
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_shared_prefix_attention(DType type, const void* q, const void* prefix_k, const void* prefix_v,
                                           const bool* prefix_mask, const void* own_k, const void* own_v, void* out,
                                           int64_t batch, int64_t beams, int64_t heads, int64_t kv_heads,
                                           int64_t prefix, int64_t own, int64_t dim, double scale,
                                           cudaStream_t stream) {
  if (batch == 0 || beams == 0 || heads == 0 || dim == 0) return cudaSuccess;
  if (dim > kSharedPrefixMaxDim) return cudaErrorInvalidValue;
  switch (type) {
    case DType::kFloat32:
      return launch<float, float>(q, prefix_k, prefix_v, prefix_mask, own_k, own_v, out, batch, beams, heads, kv_heads,
                                  prefix, own, dim, scale, stream);
    case DType::kBFloat16:
      return launch<__nv_bfloat16, float>(q, prefix_k, prefix_v, prefix_mask, own_k, own_v, out, batch, beams, heads,
                                          kv_heads, prefix, own, dim, scale, stream);
    case DType::kFloat16:
      return launch<__half, float>(q, prefix_k, prefix_v, prefix_mask, own_k, own_v, out, batch, beams, heads,
                                   kv_heads, prefix, own, dim, scale, stream);
    case DType::kFloat64:
      return launch<double, double>(q, prefix_k, prefix_v, prefix_mask, own_k, own_v, out, batch, beams, heads,
                                    kv_heads, prefix, own, dim, scale, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace genrec::cuda
