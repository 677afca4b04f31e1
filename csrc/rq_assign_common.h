// genrec::rq_assign — residual-quantisation assignment (paper §2.1), shared by the CPU and CUDA backends.
//
// For each vector and each level l in turn: code_l = argmin_k ||r - C_l[k]||^2 over the level's first K_l
// centroids (ties to the lowest k), then r -= C_l[code_l]. The distance is ||c||^2 - 2 r.c (||r||^2 is the
// same for every k), computed tile by tile with the running argmin, so no N x K matrix is ever materialised.
// Work happens in the accumulation dtype (float32 for float32/bfloat16 inputs, float64 for float64).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/OptionalArrayRef.h>

#include <cstdint>
#include <tuple>

namespace genrec {

struct RqAssignKernels {
  // One level: codes[i * code_stride] = argmin_k (centroid_sq_norms[k] - 2 residual[i] . codebook[k]),
  // then residual[i] -= codebook[codes[i]]. residual [N, D] and codebook [K, D] are contiguous, in the
  // accumulation dtype; codes points at column l of the [N, L] int64 output.
  void (*assign_level)(at::Tensor& residual, const at::Tensor& codebook, const at::Tensor& centroid_sq_norms,
                       int64_t* codes, int64_t code_stride);
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> rq_assign(const RqAssignKernels& k, const at::Tensor& x,
                                                         const at::Tensor& codebooks,
                                                         at::OptionalIntArrayRef level_sizes);

}  // namespace genrec
