#include "beam_step_common.h"

#include <ATen/ATen.h>

namespace genrec {

BeamStepArgs check_beam_step_args(const at::Tensor& logits, const at::Tensor& scores, const at::Tensor& nodes,
                                  const at::Tensor& child_offsets, const at::Tensor& child_codes, int64_t beam_width) {
  const auto t = logits.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kBFloat16 || t == at::kDouble,
              "beam_step: logits must be float32, bfloat16 or float64, got ", t);
  TORCH_CHECK(logits.dim() == 3 && logits.size(2) >= 1, "beam_step: logits must be [B, W, K] with K >= 1, got shape ",
              logits.sizes());
  const int64_t batch = logits.size(0), beams = logits.size(1);
  const auto acc = t == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(scores.scalar_type() == acc, "beam_step: scores must be ", acc, " for ", t, " logits, got ",
              scores.scalar_type());
  TORCH_CHECK(scores.dim() == 2 && scores.size(0) == batch && scores.size(1) == beams,
              "beam_step: scores must be [B, W] = [", batch, ", ", beams, "], got shape ", scores.sizes());
  TORCH_CHECK(nodes.scalar_type() == at::kLong && nodes.sizes() == scores.sizes(),
              "beam_step: nodes must be int64 [B, W] = [", batch, ", ", beams, "], got ", nodes.scalar_type(), " ",
              nodes.sizes());
  TORCH_CHECK(child_offsets.scalar_type() == at::kLong && child_offsets.dim() == 1 && child_offsets.size(0) >= 1,
              "beam_step: child_offsets must be int64 [nodes + 1], got ", child_offsets.scalar_type(), " ",
              child_offsets.sizes());
  TORCH_CHECK(child_codes.scalar_type() == at::kLong && child_codes.dim() == 1,
              "beam_step: child_codes must be 1-D int64, got ", child_codes.scalar_type(), " ", child_codes.sizes());
  TORCH_CHECK(beam_width >= 1, "beam_step: beam_width must be >= 1, got ", beam_width);
  for (const auto* other : {&scores, &nodes, &child_offsets, &child_codes}) {
    TORCH_CHECK(other->device() == logits.device(), "beam_step: all inputs must be on ", logits.device(),
                ", got one on ", other->device());
  }
  return {batch, beams, logits.size(2), child_offsets.size(0) - 1, child_codes.size(0), beam_width};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> empty_beam_step_outputs(const at::Tensor& scores,
                                                                                     const BeamStepArgs& a) {
  const auto idx = scores.options().dtype(at::kLong);
  return {at::empty({a.batch, a.out_beams}, scores.options()), at::empty({a.batch, a.out_beams}, idx),
          at::empty({a.batch, a.out_beams}, idx), at::empty({a.batch, a.out_beams}, idx)};
}

}  // namespace genrec
