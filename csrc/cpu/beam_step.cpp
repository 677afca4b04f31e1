// CPU kernel of genrec::beam_step: queries in parallel, each one pass over its live beams that keeps the best
// W' candidates (cpu/beam_select.h). A row's log-sum-exp (cpu/vec_math.h) is computed only for beams that
// survive the first test.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <vector>

#include "beam_step_common.h"
#include "cpu/beam_select.h"

namespace genrec {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> beam_step_cpu(
    const at::Tensor& logits_in, const at::Tensor& scores_in, const at::Tensor& nodes_in,
    const at::Tensor& offsets_in, const at::Tensor& codes_in, int64_t beam_width, bool constrained) {
  const BeamStepArgs a =
      check_beam_step_args(logits_in, scores_in, nodes_in, offsets_in, codes_in, beam_width);
  const auto logits = logits_in.contiguous();
  const auto scores = scores_in.contiguous();
  const auto nodes = nodes_in.contiguous();
  const auto offsets = offsets_in.contiguous();
  const auto codes = codes_in.contiguous();
  const int64_t* off = offsets.const_data_ptr<int64_t>();
  const int64_t* code = codes.const_data_ptr<int64_t>();
  const int64_t* nd = nodes.const_data_ptr<int64_t>();
  if (constrained) {
    for (int64_t i = 0; i < nodes.numel(); ++i) {
      TORCH_CHECK(nd[i] >= -1 && nd[i] < a.nodes, "beam_step: nodes[", i / a.beams, ", ", i % a.beams, "] = ", nd[i],
                  " is outside [-1, ", a.nodes, ")");
    }
  }
  auto [out_scores, out_codes, out_parents, out_nodes] = empty_beam_step_outputs(scores, a);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, logits.scalar_type(), "beam_step", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* lg = logits.const_data_ptr<scalar_t>();
    const acc_t* sc = scores.const_data_ptr<acc_t>();
    acc_t* o_sc = out_scores.mutable_data_ptr<acc_t>();
    int64_t* o_code = out_codes.mutable_data_ptr<int64_t>();
    int64_t* o_par = out_parents.mutable_data_ptr<int64_t>();
    int64_t* o_node = out_nodes.mutable_data_ptr<int64_t>();
    const cpu::TrieDepth trie{off, code, a.nodes, a.children};
    at::parallel_for(0, a.batch, 1, [&](int64_t b0, int64_t b1) {
      cpu::TopK<acc_t> top(a.out_beams);
      std::vector<acc_t> buffer;  // a bf16 row widened to float
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t o = b * a.out_beams;
        cpu::select_beams<scalar_t, acc_t>(lg + b * a.beams * a.width, nullptr, sc + b * a.beams, nd + b * a.beams,
                                           a.beams, a.width, trie, constrained, top, buffer, a.out_beams,
                                           {o_sc + o, o_code + o, o_par + o, o_node + o});
      }
    });
  });
  return {out_scores, out_codes, out_parents, out_nodes};
}

}  // namespace

TORCH_LIBRARY_IMPL(genrec, CPU, m) { m.impl("beam_step", &beam_step_cpu); }

}  // namespace genrec
