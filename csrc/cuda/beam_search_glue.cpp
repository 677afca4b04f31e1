// CUDA registration of genrec::beam_search: the shared search (beam_search_common.cpp) on the current stream,
// each decode step as one task over all rows (the GPU finds its parallelism inside each stage kernel). The
// stages are the CUDA kernels of beam_step, layer_qkv / layer_out / rms_norm and shared_prefix_attention plus
// cuBLAS GEMMs; nothing is read back to the host, so a whole search can be captured in a CUDA graph.
#include <torch/library.h>

#include "beam_search_common.h"

namespace genrec {
namespace {

void run_inline(int64_t n, const std::function<void(int64_t)>& task) {
  for (int64_t k = 0; k < n; ++k) task(k);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> beam_search_cuda(const BeamSearchInputs& in) {
  return beam_search_impl(in, {1, &run_inline});
}

}  // namespace

TORCH_LIBRARY_IMPL(genrec, CUDA, m) {
  m.impl("beam_search", &beam_search_kernel<&beam_search_cuda>);
  m.impl("_beam_search_stages", &beam_search_kernel<&beam_search_cuda>);
}

}  // namespace genrec
