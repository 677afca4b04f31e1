// genrec::shared_prefix_attention — decode-step attention of beams sharing one prompt's KV cache, shared by
// the CPU and CUDA backends. See the schema in genrec.cpp for the contract.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace genrec {

struct SharedPrefixAttentionArgs {
  int64_t batch;     // B queries
  int64_t beams;     // W beams per query
  int64_t heads;     // Hq query heads
  int64_t kv_heads;  // Hkv key/value heads (Hq % Hkv == 0)
  int64_t prefix;    // P prompt positions
  int64_t own;       // T decoded tokens per beam (the current one included)
  int64_t dim;       // D head dimension
};

// Validates dtypes, shapes and devices (errors name the argument and the shapes); returns the sizes.
SharedPrefixAttentionArgs check_shared_prefix_attention_args(const at::Tensor& q, const at::Tensor& prefix_k,
                                                             const at::Tensor& prefix_v, const at::Tensor& prefix_mask,
                                                             const at::Tensor& own_k, const at::Tensor& own_v);

// The op's inputs as both kernels read them, after the checks above: q and the own keys / values through
// their strides (the decoder passes views of its fused q|k|v projection and of its per-beam buffer; only their
// last dimension must be dense), the prompt's keys / values and mask contiguous; `out` is a new dense
// [B, W, Hq, D].
struct SharedPrefixAttentionInputs {
  SharedPrefixAttentionArgs sizes;
  at::Tensor q, prefix_k, prefix_v, prefix_mask, own_k, own_v, out;
};

SharedPrefixAttentionInputs prepare_shared_prefix_attention(const at::Tensor& q, const at::Tensor& prefix_k,
                                                            const at::Tensor& prefix_v, const at::Tensor& prefix_mask,
                                                            const at::Tensor& own_k, const at::Tensor& own_v);

}  // namespace genrec
