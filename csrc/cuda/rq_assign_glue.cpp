// CUDA registration of genrec::rq_assign: device guard and stream around the per-level launcher.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/glue.h"
#include "cuda/rq_assign.h"
#include "rq_assign_common.h"

namespace genrec {
namespace {

void assign_level_cuda(at::Tensor& residual, const at::Tensor& codebook, const at::Tensor& sq_norms, int64_t* codes,
                       int64_t code_stride) {
  C10_CUDA_CHECK(cuda::launch_rq_assign_level(cuda::dtype_tag(residual), residual.mutable_data_ptr(),
                                              codebook.const_data_ptr(), sq_norms.const_data_ptr(), residual.size(0),
                                              codebook.size(0), residual.size(1), codes, code_stride,
                                              cuda::current_stream()));
}

const RqAssignKernels kCudaKernels{assign_level_cuda};

std::tuple<at::Tensor, at::Tensor, at::Tensor> rq_assign_cuda(const at::Tensor& x, const at::Tensor& codebooks,
                                                              at::OptionalIntArrayRef level_sizes) {
  const c10::cuda::CUDAGuard guard(x.device());
  return rq_assign(kCudaKernels, x, codebooks, level_sizes);
}

}  // namespace

TORCH_LIBRARY_IMPL(genrec, CUDA, m) { m.impl("rq_assign", &rq_assign_cuda); }

}  // namespace genrec
