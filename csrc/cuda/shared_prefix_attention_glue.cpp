// CUDA registration of genrec::shared_prefix_attention: checks, device guard and stream around the launcher.
// No host sync, so a decode step can be captured in a CUDA graph.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/glue.h"
#include "cuda/shared_prefix_attention.h"
#include "shared_prefix_attention_common.h"

namespace genrec {
namespace {

cuda::RowStrides row_strides(const at::Tensor& x) {
  return {x.stride(0), x.stride(1), x.stride(2), x.dim() == 5 ? x.stride(3) : 0};
}

at::Tensor shared_prefix_attention_cuda(const at::Tensor& q_in, const at::Tensor& prefix_k_in,
                                        const at::Tensor& prefix_v_in, const at::Tensor& prefix_mask_in,
                                        const at::Tensor& own_k_in, const at::Tensor& own_v_in, double scale) {
  const c10::cuda::CUDAGuard guard(q_in.device());
  const auto in = prepare_shared_prefix_attention(q_in, prefix_k_in, prefix_v_in, prefix_mask_in, own_k_in, own_v_in);
  const auto& a = in.sizes;
  TORCH_CHECK(a.dim <= cuda::kSharedPrefixMaxDim, "shared_prefix_attention: head dimension D = ", a.dim,
              " is above the CUDA kernel's ", cuda::kSharedPrefixMaxDim);
  C10_CUDA_CHECK(cuda::launch_shared_prefix_attention(
      cuda::dtype_tag(in.q), in.q.const_data_ptr(), row_strides(in.q), in.prefix_k.const_data_ptr(),
      in.prefix_v.const_data_ptr(), in.prefix_mask.const_data_ptr<bool>(), in.own_k.const_data_ptr(),
      row_strides(in.own_k), in.own_v.const_data_ptr(), row_strides(in.own_v), in.out.mutable_data_ptr(), a.batch,
      a.beams, a.heads, a.kv_heads, a.prefix, a.own, a.dim, scale, cuda::current_stream()));
  return in.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(genrec, CUDA, m) { m.impl("shared_prefix_attention", &shared_prefix_attention_cuda); }

}  // namespace genrec
