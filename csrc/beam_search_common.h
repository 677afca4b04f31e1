// genrec::beam_search — the whole point-wise beam search (prefill, then one decode step and one beam step per
// SID level) as one op, shared by the CPU and CUDA backends. See the schema in genrec.cpp for the contract.
//
// Why one op: at serving sizes (one query, 50 beams of a small decoder) a search is ~100 stage calls whose
// arithmetic takes a few microseconds each; from Python every call costs more than its work. This file holds
// what every backend shares: the inputs and their checks, the row tasks of a decode step, and the search
// composed of the stage ops (genrec / ATen ops through the dispatcher), which CUDA runs and the CPU kernel
// falls back to (cpu/beam_search.cpp has its fused pass).
#pragma once

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <tuple>
#include <vector>

namespace genrec {

struct BeamSearchInputs {
  const at::Tensor& embeds;       // [B, P, H] left-padded prompts
  const at::Tensor& prompt_mask;  // [B, P] bool
  const at::Tensor& cos;          // [B, P + L - 1, D] rotary tables of the prompt and decode positions
  const at::Tensor& sin;
  at::TensorList layer_weights;                          // 6 per layer, see kLayerWeights
  const c10::List<std::optional<at::Tensor>>& layer_biases;  // 2 per layer: q|k|v, o
  at::ArrayRef<double> layer_eps;                        // 2 per layer: input norm, post-attention norm
  int64_t num_heads, num_kv_heads;
  double scaling;
  const at::Tensor& final_norm_weight;
  double final_eps;
  const at::Tensor& head_weight;              // [sum K, H] LM-head rows of the SID tokens, level by level
  const std::optional<at::Tensor>& head_bias;  // [sum K]
  const at::Tensor& sid_embedding;            // [sum K, H] input embeddings of the SID tokens
  at::IntArrayRef level_sizes;                // K_l
  at::TensorList child_offsets, child_codes;  // the trie's CSR arrays, one per depth
  int64_t beam_width;
  bool constrained;
};

// Per layer, in this order: input norm [H], q|k|v [O, H], o [H, Hq D], post-attention norm [H], gate|up
// [2I, H], down [H, I].
constexpr int64_t kLayerWeights = 6;

// How a backend runs a decode step's row tasks: `run(n, task)` calls task(0..n-1), in any order or at once;
// at most `max_tasks` are asked for.
struct RowTaskRunner {
  int64_t max_tasks;
  void (*run)(int64_t n, const std::function<void(int64_t)>& task);
};

// The checks the stage ops cannot make (they see one layer or one level at a time); errors name the argument.
void check_beam_search_inputs(const BeamSearchInputs& in);

// -> (scores [B, W] float32 (float64 for float64), codes int64 [B, W, L], final trie nodes int64 [B, W]), from
// the stage ops (any device). Checks its inputs.
std::tuple<at::Tensor, at::Tensor, at::Tensor> beam_search_impl(const BeamSearchInputs& in, const RowTaskRunner& runner);

// Where each level's token block starts in head_weight / sid_embedding: the sums of the earlier level sizes.
std::vector<int64_t> level_offsets(at::IntArrayRef level_sizes);

// A run of decode rows: beams [w0, w0 + nw) of queries [b0, b0 + nb) (several whole queries, or part of one).
struct RowTask {
  int64_t b0, nb, w0, nw;
};

// The row tasks of a decode step over B x W rows for a backend that runs up to `max_tasks` at once: about equal
// runs of whole queries when there are enough, else slices of each query; never fewer than a few rows each.
std::vector<RowTask> split_rows(int64_t batch, int64_t beams, int64_t max_tasks);

// The op's kernel (the schema's arguments, in order) for a backend's search. No device guard is needed: every
// stage op and ATen call guards its own device.
using BeamSearchFn = std::tuple<at::Tensor, at::Tensor, at::Tensor> (*)(const BeamSearchInputs&);
template <BeamSearchFn search>
std::tuple<at::Tensor, at::Tensor, at::Tensor> beam_search_kernel(
    const at::Tensor& embeds, const at::Tensor& prompt_mask, const at::Tensor& cos, const at::Tensor& sin,
    at::TensorList layer_weights, const c10::List<std::optional<at::Tensor>>& layer_biases,
    at::ArrayRef<double> layer_eps, int64_t num_heads, int64_t num_kv_heads, double scaling,
    const at::Tensor& final_norm_weight, double final_eps, const at::Tensor& head_weight,
    const std::optional<at::Tensor>& head_bias, const at::Tensor& sid_embedding, at::IntArrayRef level_sizes,
    at::TensorList child_offsets, at::TensorList child_codes, int64_t beam_width, bool constrained) {
  return search({embeds, prompt_mask, cos, sin, layer_weights, layer_biases, layer_eps, num_heads, num_kv_heads,
                 scaling, final_norm_weight, final_eps, head_weight, head_bias, sid_embedding, level_sizes,
                 child_offsets, child_codes, beam_width, constrained});
}

}  // namespace genrec
