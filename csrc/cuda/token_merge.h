// Launchers of the genrec::token_merge CUDA kernels (see ../token_merge_common.h for the maths).
// Raw pointers and a stream only — no torch headers — so nvcc compiles them in any build.
// Accumulation buffers (table, grads, grad_embedding) are float64 for kFloat64 inputs, float32 otherwise.
// Kernels never read out of bounds: a token outside its valid range that is not `pad` yields NaN outputs in
// the forward kernels and is skipped by the backward ones (the glue reports it before launching, when checking).
// level_info is a device array [levels, 3] of (base_l, lo_l, hi_l): level l's valid tokens are [lo_l, hi_l)
// and token t's projected-table row is base_l + t.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common.h"

namespace genrec::cuda {

// One pass over tokens [rows, levels]: scan[0] = min(scan[0], flat index of any token outside [0, vocab)
// that is not pad); per level l, scan[1 + l] = min(scan[1 + l], smallest valid token) and
// scan[1 + levels + l] = max(scan[1 + levels + l], largest valid token + 1). Initialise scan to
// (UINT64_MAX, vocab..., 0...).
cudaError_t launch_scan_tokens(const int64_t* tokens, int64_t rows, int64_t levels, int64_t vocab, int64_t pad,
                               unsigned long long* scan, cudaStream_t stream);

// out[r] = all-pad(r) ? 0 : bias + sum_l table[base_l + tokens[r, l]]; bias may be null (same dtype as out).
cudaError_t launch_table_sum(DType out_type, const void* table, const int64_t* level_info, const int64_t* tokens,
                             const void* bias, int64_t pad, int64_t rows, int64_t levels, int64_t out_dim, void* out,
                             cudaStream_t stream);

// x[r, l*dim:(l+1)*dim] = tokens[r, l] == pad ? 0 : embedding[tokens[r, l]], converted to x_type.
cudaError_t launch_gather_concat(DType embedding_type, const void* embedding, DType x_type, const int64_t* tokens,
                                 int64_t pad, int64_t rows, int64_t levels, int64_t vocab, int64_t dim, void* x,
                                 cudaStream_t stream);

// grads[base_l + tokens[r, l]] += grad_out[r] (atomic, so the summation order varies run to run).
cudaError_t launch_scatter_levels(DType grad_type, const void* grad_out, const int64_t* tokens,
                                  const int64_t* level_info, int64_t pad, int64_t rows, int64_t levels, int64_t out_dim,
                                  void* grads, cudaStream_t stream);

// grad_embedding[tokens[r, l]] += grad_x[r, l*dim:(l+1)*dim] (atomic).
cudaError_t launch_scatter_concat(DType grad_type, const void* grad_x, const int64_t* tokens, int64_t pad,
                                  int64_t rows, int64_t levels, int64_t vocab, int64_t dim, void* grad_embedding,
                                  cudaStream_t stream);

}  // namespace genrec::cuda
