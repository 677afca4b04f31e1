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
  const auto a =
      check_shared_prefix_attention_args(q_in, prefix_k_in, prefix_v_in, prefix_mask_in, own_k_in, own_v_in);
  TORCH_CHECK(a.dim <= cuda::kSharedPrefixMaxDim, "shared_prefix_attention: head dimension D = ", a.dim,
              " is above the CUDA kernel's ", cuda::kSharedPrefixMaxDim);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const auto q = dense_last_dim(q_in);
  const auto own_k = dense_last_dim(own_k_in);
  const auto own_v = dense_last_dim(own_v_in);
  const auto prefix_k = prefix_k_in.contiguous();
  const auto prefix_v = prefix_v_in.contiguous();
  const auto prefix_mask = prefix_mask_in.contiguous();
  auto out = at::empty(q.sizes(), q.options());
  C10_CUDA_CHECK(cuda::launch_shared_prefix_attention(
      cuda::dtype_tag(q), q.const_data_ptr(), row_strides(q), prefix_k.const_data_ptr(), prefix_v.const_data_ptr(),
      prefix_mask.const_data_ptr<bool>(), own_k.const_data_ptr(), row_strides(own_k), own_v.const_data_ptr(),
      row_strides(own_v), out.mutable_data_ptr(), a.batch, a.beams, a.heads, a.kv_heads, a.prefix, a.own, a.dim,
      scale, cuda::current_stream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(genrec, CUDA, m) { m.impl("shared_prefix_attention", &shared_prefix_attention_cuda); }

}  // namespace genrec
