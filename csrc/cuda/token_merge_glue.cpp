// CUDA registration of genrec::token_merge: checks, device guard and stream around the launchers.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdlib>
#include <limits>

#include "cuda/glue.h"
#include "cuda/token_merge.h"
#include "token_merge_common.h"

namespace genrec {
namespace {

using cuda::current_stream;
using cuda::dtype_tag;

// One scan of the tokens finds the first bad one and each level's span; reading them back costs one sync.
// It is skipped while a CUDA graph is being captured and when GENREC_UNCHECKED_TOKENS=1 (every level then
// spans [0, V)); the kernels stay in bounds either way.
std::vector<LevelRange> check_tokens_cuda(const at::Tensor& tokens, int64_t vocab, int64_t pad_id,
                                          at::IntArrayRef shape) {
  const int64_t rows = tokens.size(0), levels = tokens.size(1);
  static const bool unchecked = [] {
    const char* v = std::getenv("GENREC_UNCHECKED_TOKENS");
    return v != nullptr && v[0] == '1';
  }();
  if (unchecked || c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None) {
    return std::vector<LevelRange>(levels, LevelRange{0, vocab});
  }
  constexpr int64_t kNone = std::numeric_limits<int64_t>::max();
  std::vector<int64_t> init(1 + 2 * levels, 0);
  init[0] = kNone;
  std::fill(init.begin() + 1, init.begin() + 1 + levels, vocab);
  auto scan = at::tensor(init, at::kLong).to(tokens.device());
  C10_CUDA_CHECK(cuda::launch_scan_tokens(tokens.const_data_ptr<int64_t>(), rows, levels, vocab, pad_id,
                                          reinterpret_cast<unsigned long long*>(scan.mutable_data_ptr<int64_t>()),
                                          current_stream()));
  const auto host = scan.cpu();
  const int64_t* h = host.const_data_ptr<int64_t>();
  if (h[0] != kNone) throw_bad_token(h[0], tokens.view(-1)[h[0]].item<int64_t>(), vocab, pad_id, shape);
  std::vector<LevelRange> ranges;
  for (int64_t l = 0; l < levels; ++l) {
    const int64_t lo = h[1 + l], hi = h[1 + levels + l];
    ranges.push_back(hi > lo ? LevelRange{lo, hi} : LevelRange{0, 0});
  }
  return ranges;
}

void table_sum_cuda(const at::Tensor& table, const at::Tensor& level_info, const at::Tensor& tokens,
                    const std::optional<at::Tensor>& bias, int64_t pad_id, at::Tensor& out) {
  C10_CUDA_CHECK(cuda::launch_table_sum(dtype_tag(out), table.const_data_ptr(), level_info.const_data_ptr<int64_t>(),
                                        tokens.const_data_ptr<int64_t>(),
                                        bias.has_value() ? bias->const_data_ptr() : nullptr, pad_id, tokens.size(0),
                                        tokens.size(1), table.size(1), out.mutable_data_ptr(), current_stream()));
}

void gather_concat_cuda(const at::Tensor& embedding, const at::Tensor& tokens, int64_t pad_id, at::Tensor& x) {
  C10_CUDA_CHECK(cuda::launch_gather_concat(dtype_tag(embedding), embedding.const_data_ptr(), dtype_tag(x),
                                            tokens.const_data_ptr<int64_t>(), pad_id, tokens.size(0), tokens.size(1),
                                            embedding.size(0), embedding.size(1), x.mutable_data_ptr(),
                                            current_stream()));
}

void scatter_levels_cuda(const at::Tensor& grad_out, const at::Tensor& tokens, const at::Tensor& level_info,
                         int64_t pad_id, at::Tensor& grads) {
  C10_CUDA_CHECK(cuda::launch_scatter_levels(dtype_tag(grad_out), grad_out.const_data_ptr(),
                                             tokens.const_data_ptr<int64_t>(), level_info.const_data_ptr<int64_t>(),
                                             pad_id, tokens.size(0), tokens.size(1), grads.size(1),
                                             grads.mutable_data_ptr(), current_stream()));
}

void scatter_concat_cuda(const at::Tensor& grad_x, const at::Tensor& tokens, int64_t pad_id,
                         at::Tensor& grad_embedding) {
  C10_CUDA_CHECK(cuda::launch_scatter_concat(dtype_tag(grad_x), grad_x.const_data_ptr(),
                                             tokens.const_data_ptr<int64_t>(), pad_id, tokens.size(0), tokens.size(1),
                                             grad_embedding.size(0), grad_embedding.size(1),
                                             grad_embedding.mutable_data_ptr(), current_stream()));
}

const TokenMergeKernels kCudaKernels{
    check_tokens_cuda, table_sum_cuda, gather_concat_cuda, scatter_levels_cuda, scatter_concat_cuda,
    /*gemm_in_accumulation_dtype=*/false,  // bf16 GEMMs on tensor cores, fp32 accumulation inside
    /*chunk_bytes=*/int64_t{1} << 30,
};

at::Tensor token_merge_cuda(const at::Tensor& sid_tokens, const at::Tensor& embedding, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, int64_t pad_id) {
  const c10::cuda::CUDAGuard guard(embedding.device());
  return token_merge_forward(kCudaKernels, sid_tokens, embedding, weight, bias, pad_id);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> token_merge_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& sid_tokens, const at::Tensor& embedding, const at::Tensor& weight,
    int64_t pad_id) {
  const c10::cuda::CUDAGuard guard(embedding.device());
  // Gradients are summed with atomics: flag it under torch.use_deterministic_algorithms(True).
  at::globalContext().alertNotDeterministic("genrec::token_merge_backward (CUDA)");
  return token_merge_backward(kCudaKernels, grad_out, sid_tokens, embedding, weight, pad_id);
}

}  // namespace

TORCH_LIBRARY_IMPL(genrec, CUDA, m) {
  m.impl("token_merge", &token_merge_cuda);
  m.impl("token_merge_backward", &token_merge_backward_cuda);
}

}  // namespace genrec
