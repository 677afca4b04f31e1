// Launchers of the elementwise stages of genrec::layer_qkv / layer_out / rms_norm on CUDA (the GEMMs are
// cuBLAS through ATen; contract: the schemas in ../genrec.cpp). Raw pointers and a stream only — no torch
// headers; no host synchronisation and no allocation, so a decode step can be captured in a CUDA graph.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common.h"

namespace genrec::cuda {

// out[r] = weight * round(x[r] / sqrt(mean(x[r]^2) + eps)); x, out [rows, width] contiguous.
cudaError_t launch_rms_norm(DType type, const void* x, const void* weight, void* out, int64_t rows, int64_t width,
                            double eps, cudaStream_t stream);

// In place on the first rotated_heads heads of width dim of y [rows, width]; cos / sin [positions, dim], row r
// using cos[r / (rows / positions)].
cudaError_t launch_rotary(DType type, void* y, const void* cos, const void* sin, int64_t rows, int64_t width,
                          int64_t positions, int64_t dim, int64_t rotated_heads, cudaStream_t stream);

// out[r, j] = silu(gate_up[r, j]) * gate_up[r, inner + j]; gate_up [rows, 2 inner], out [rows, inner].
cudaError_t launch_silu_mul(DType type, const void* gate_up, void* out, int64_t rows, int64_t inner,
                            cudaStream_t stream);

}  // namespace genrec::cuda
