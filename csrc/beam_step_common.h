// genrec::beam_step — one step of (trie-constrained) beam search over one SID level, shared by the CPU and
// CUDA backends. See the schema in genrec.cpp for the contract.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>

namespace genrec {

struct BeamStepArgs {
  int64_t batch;      // B queries
  int64_t beams;      // W live-beam slots in
  int64_t width;      // K tokens of this level
  int64_t nodes;      // trie nodes at this depth (child_offsets.size(0) - 1)
  int64_t children;   // trie nodes at the next depth (child_codes.size(0))
  int64_t out_beams;  // W' beams out
};

// Validates dtypes, shapes and devices (errors name the argument and value); returns the sizes.
BeamStepArgs check_beam_step_args(const at::Tensor& logits, const at::Tensor& scores, const at::Tensor& nodes,
                                  const at::Tensor& child_offsets, const at::Tensor& child_codes, int64_t beam_width);

// Outputs in the layout the schema returns: scores (dtype of `scores`), codes, parents, child nodes (int64).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> empty_beam_step_outputs(const at::Tensor& scores,
                                                                                     const BeamStepArgs& a);

}  // namespace genrec
