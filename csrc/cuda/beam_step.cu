// CUDA kernel of genrec::beam_step. One block per query:
//  1. one warp per beam computes the beam's log-sum-exp over the level's K logits (warp shuffles) and its
//     candidate range (the node's children in the CSR trie, or all K codes when unconstrained);
//  2. W' rounds of a block-wide arg-max pick the next best candidate strictly after the previous pick in the
//     order (score desc, beam * K + code asc), so no candidate list or "taken" mask is materialised.
#include <cfloat>
#include <cstdint>

#include "beam_step.h"
#include "kernel_common.cuh"

namespace genrec::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxBeams = kBeamStepMaxBeams;  // shared-memory slots per block (beams in)

template <typename A> __device__ __forceinline__ A lowest();  // the most negative finite value
template <> __device__ __forceinline__ float lowest<float>() { return -FLT_MAX; }
template <> __device__ __forceinline__ double lowest<double>() { return -DBL_MAX; }

template <typename A> struct Pick {
  A score;
  int64_t key;  // beam * K + code; -1 = none
  int64_t child;
};

// x before y in the output order?
template <typename A> __device__ __forceinline__ bool before(const Pick<A>& x, const Pick<A>& y) {
  if (x.key < 0) return false;
  if (y.key < 0) return true;
  return x.score > y.score || (x.score == y.score && x.key < y.key);
}

template <typename A> __device__ Pick<A> warp_best(Pick<A> p) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    Pick<A> q{__shfl_down_sync(0xffffffffu, p.score, offset), __shfl_down_sync(0xffffffffu, p.key, offset),
              __shfl_down_sync(0xffffffffu, p.child, offset)};
    if (before(q, p)) p = q;
  }
  return p;
}

template <typename T, typename A>
__global__ void __launch_bounds__(kThreads) beam_step_kernel(
    const T* __restrict__ logits, const A* __restrict__ scores, const int64_t* __restrict__ nodes,
    const int64_t* __restrict__ offsets, const int64_t* __restrict__ codes, int64_t beams, int64_t width,
    int64_t num_nodes, int64_t num_children, int64_t out_beams, bool constrained, A* __restrict__ out_scores,
    int64_t* __restrict__ out_codes, int64_t* __restrict__ out_parents, int64_t* __restrict__ out_nodes) {
  __shared__ A base_s[kMaxBeams];        // running score - log-sum-exp; -inf for a dead beam
  __shared__ int64_t first_s[kMaxBeams]; // first candidate (child index, or code 0)
  __shared__ int64_t start_s[kMaxBeams + 1];  // prefix sums of candidate counts
  __shared__ Pick<A> warp_s[kWarps];
  __shared__ Pick<A> last_s;
  const int64_t b = blockIdx.x;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const T* q_logits = logits + b * beams * width;

  for (int64_t w = warp; w < beams; w += kWarps) {
    const T* row = q_logits + w * width;
    A mx = lowest<A>();
    for (int64_t c = lane; c < width; c += 32) mx = fmax(mx, static_cast<A>(to_acc(row[c])));
    mx = warp_max(mx);
    A sum = 0;
    for (int64_t c = lane; c < width; c += 32) sum += exp_acc(static_cast<A>(to_acc(row[c])) - mx);
    sum = warp_sum(sum);
    if (lane == 0) {
      const A s = scores[b * beams + w];
      const int64_t node = nodes[b * beams + w];
      int64_t first = 0, count = width;
      bool live = s > neg_inf<A>();
      if (constrained) {
        live = live && node >= 0 && node < num_nodes;
        first = live ? offsets[node] : 0;
        const int64_t end = live ? offsets[node + 1] : 0;
        live = live && first >= 0 && end <= num_children && end >= first;
        count = live ? end - first : 0;
      }
      base_s[w] = live ? s - (mx + log(sum)) : neg_inf<A>();
      first_s[w] = first;
      start_s[w + 1] = live ? count : 0;
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    start_s[0] = 0;
    for (int64_t w = 0; w < beams; ++w) start_s[w + 1] += start_s[w];
    last_s = Pick<A>{A(0), -1, -1};
  }
  __syncthreads();
  const int64_t total = start_s[beams];

  for (int64_t i = 0; i < out_beams; ++i) {
    const Pick<A> last = last_s;
    Pick<A> best{neg_inf<A>(), -1, -1};
    for (int64_t p = threadIdx.x; p < total; p += kThreads) {
      int64_t lo = 0, hi = beams;  // the beam whose candidate range holds p
      while (hi - lo > 1) {
        const int64_t mid = (lo + hi) / 2;
        if (start_s[mid] <= p) lo = mid; else hi = mid;
      }
      const int64_t j = first_s[lo] + (p - start_s[lo]);
      const int64_t code = constrained ? codes[j] : j;
      if (code < 0 || code >= width) continue;
      const Pick<A> cand{base_s[lo] + static_cast<A>(to_acc(q_logits[lo * width + code])), lo * width + code,
                         constrained ? j : -1};
      if (cand.score > neg_inf<A>() && (last.key < 0 || before(last, cand)) && before(cand, best)) best = cand;
    }
    best = warp_best(best);
    if (lane == 0) warp_s[warp] = best;
    __syncthreads();
    if (threadIdx.x == 0) {
      Pick<A> top = warp_s[0];
      for (int k = 1; k < kWarps; ++k) if (before(warp_s[k], top)) top = warp_s[k];
      const int64_t o = b * out_beams + i;
      const bool found = top.key >= 0;
      out_scores[o] = found ? top.score : neg_inf<A>();
      out_codes[o] = found ? top.key % width : -1;
      out_parents[o] = found ? top.key / width : -1;
      out_nodes[o] = found ? top.child : -1;
      if (found) last_s = top;
    }
    __syncthreads();
  }
}

}  // namespace

cudaError_t launch_beam_step(DType logits_type, const void* logits, const void* scores, const int64_t* nodes,
                             const int64_t* child_offsets, const int64_t* child_codes, int64_t batch, int64_t beams,
                             int64_t width, int64_t num_nodes, int64_t num_children, int64_t out_beams,
                             bool constrained, void* out_scores, int64_t* out_codes, int64_t* out_parents,
                             int64_t* out_nodes, cudaStream_t stream) {
  if (batch == 0 || out_beams == 0) return cudaSuccess;
  if (beams > kMaxBeams || batch > 2147483647) return cudaErrorInvalidConfiguration;
  return dispatch(logits_type, [&](auto types) {
    using T = typename decltype(types)::T;
    using A = typename decltype(types)::A;  // of the scores
    beam_step_kernel<T, A><<<static_cast<unsigned>(batch), kThreads, 0, stream>>>(
        static_cast<const T*>(logits), static_cast<const A*>(scores), nodes, child_offsets, child_codes, beams, width,
        num_nodes, num_children, out_beams, constrained, static_cast<A*>(out_scores), out_codes, out_parents,
        out_nodes);
    return cudaGetLastError();
  });
}

}  // namespace genrec::cuda
