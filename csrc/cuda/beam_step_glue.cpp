// CUDA registration of genrec::beam_step: checks, device guard and stream around the launcher. No host sync,
// so a decoding step can be captured in a CUDA graph; trie indices are bounds-guarded inside the kernel.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "beam_step_common.h"
#include "cuda/beam_step.h"
#include "cuda/glue.h"

namespace genrec {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> beam_step_cuda(
    const at::Tensor& logits_in, const at::Tensor& scores_in, const at::Tensor& nodes_in,
    const at::Tensor& offsets_in, const at::Tensor& codes_in, int64_t beam_width, bool constrained) {
  const BeamStepArgs a = check_beam_step_args(logits_in, scores_in, nodes_in, offsets_in, codes_in, beam_width);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  TORCH_CHECK(a.beams <= cuda::kBeamStepMaxBeams, "beam_step: at most ", cuda::kBeamStepMaxBeams,
              " beams in on CUDA, got W = ", a.beams);
  const auto logits = logits_in.contiguous();
  const auto scores = scores_in.contiguous();
  const auto nodes = nodes_in.contiguous();
  const auto offsets = offsets_in.contiguous();
  const auto codes = codes_in.contiguous();
  auto [out_scores, out_codes, out_parents, out_nodes] = empty_beam_step_outputs(scores, a);
  C10_CUDA_CHECK(cuda::launch_beam_step(
      cuda::dtype_tag(logits), logits.const_data_ptr(), scores.const_data_ptr(), nodes.const_data_ptr<int64_t>(),
      offsets.const_data_ptr<int64_t>(), codes.const_data_ptr<int64_t>(), a.batch, a.beams, a.width, a.nodes,
      a.children, a.out_beams, constrained, out_scores.mutable_data_ptr(), out_codes.mutable_data_ptr<int64_t>(),
      out_parents.mutable_data_ptr<int64_t>(), out_nodes.mutable_data_ptr<int64_t>(),
      cuda::current_stream()));
  return {out_scores, out_codes, out_parents, out_nodes};
}

}  // namespace

TORCH_LIBRARY_IMPL(genrec, CUDA, m) { m.impl("beam_step", &beam_step_cuda); }

}  // namespace genrec
