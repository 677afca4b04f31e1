// Launcher of the genrec::rq_assign CUDA kernel (see ../rq_assign_common.h for the maths).
// Raw pointers and a stream only — no torch headers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common.h"

namespace genrec::cuda {

// One level, fused: for every row i of residual [n, dim], codes[i * code_stride] = the index k < width of
// the smallest sq_norms[k] - 2 residual[i] . codebook[k] (ties to the lowest k); then
// residual[i] -= codebook[code]. `type` is kFloat32 or kFloat64 (the accumulation dtype).
cudaError_t launch_rq_assign_level(DType type, void* residual, const void* codebook, const void* sq_norms,
                                   int64_t n, int64_t width, int64_t dim, int64_t* codes, int64_t code_stride,
                                   cudaStream_t stream);

}  // namespace genrec::cuda
