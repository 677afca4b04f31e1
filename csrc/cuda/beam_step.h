// Launcher of the genrec::beam_step CUDA kernel (contract: the schema in ../genrec.cpp).
// Raw pointers and a stream only — no torch headers. One block per query; no host synchronisation, no
// allocation, so a step can be captured in a CUDA graph.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common.h"

namespace genrec::cuda {

constexpr int64_t kBeamStepMaxBeams = 1024;  // beams in per query (shared-memory slots of a block)

// logits: [batch, beams, width] of `logits_type`; scores / out_scores: float (double for kFloat64 logits).
// Trie indices are bounds-guarded: a node, offset or code out of range makes that candidate dead.
cudaError_t launch_beam_step(DType logits_type, const void* logits, const void* scores, const int64_t* nodes,
                             const int64_t* child_offsets, const int64_t* child_codes, int64_t batch, int64_t beams,
                             int64_t width, int64_t num_nodes, int64_t num_children, int64_t out_beams,
                             bool constrained, void* out_scores, int64_t* out_codes, int64_t* out_parents,
                             int64_t* out_nodes, cudaStream_t stream);

}  // namespace genrec::cuda
