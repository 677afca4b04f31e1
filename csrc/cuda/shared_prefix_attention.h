// Launcher of the genrec::shared_prefix_attention CUDA kernel (contract: the schema in ../genrec.cpp).
// Raw pointers and a stream only — no torch headers; no host synchronisation and no allocation, so a decode
// step can be captured in a CUDA graph.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common.h"

namespace genrec::cuda {

constexpr int64_t kSharedPrefixMaxDim = 256;  // head dimensions up to this (lanes hold D / 32 values each)

// Element strides of a query or own-key/value tensor; its last (head) dimension is dense. The decoder passes
// views (q out of its fused q|k|v projection, own keys / values out of a buffer sized for every step), which
// are read in place.
struct RowStrides {
  int64_t batch, beam, head, token;  // token: own keys / values only
};

// All of `type` (mask: one byte per position). q [batch, beams, heads, dim] and own_k / own_v [batch, beams,
// kv_heads, own, dim] through their strides; prefix_k / prefix_v [batch, kv_heads, prefix, dim] and out
// [batch, beams, heads, dim] contiguous.
cudaError_t launch_shared_prefix_attention(DType type, const void* q, RowStrides q_strides, const void* prefix_k,
                                           const void* prefix_v, const bool* prefix_mask, const void* own_k,
                                           RowStrides own_k_strides, const void* own_v, RowStrides own_v_strides,
                                           void* out, int64_t batch, int64_t beams, int64_t heads, int64_t kv_heads,
                                           int64_t prefix, int64_t own, int64_t dim, double scale,
                                           cudaStream_t stream);

}  // namespace genrec::cuda
