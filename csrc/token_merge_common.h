// genrec::token_merge — the Token Merger of paper eq. (5), shared between the CPU and CUDA backends.
//
// out[r] = W @ concat(E[t_r0], ..., E[t_r(L-1)]) + b  =  b + sum_l W_l @ E[t_rl]   (W_l = W[:, l*d:(l+1)*d])
//
// Two exact strategies, chosen from the shapes and the embedding rows each level's tokens span (measured
// during the token check; a backend that skips the check assumes every level spans [0, V)):
//  * projected table: P_l = E[lo_l:hi_l] @ W_l^T over the rows level l's tokens span, then
//    out[r] = b + sum_l P_l[t_rl - lo_l]. Costs sum_l (hi_l - lo_l) * d * d_out FLOPs plus a gather-add, so it
//    wins whenever the spans hold fewer rows than the R * L lookups — the usual case: a level's SID tokens
//    are one block of K codes (256), in a SID-only vocabulary or at the end of an extended LLM vocabulary,
//    next to a batch of thousands of history items. Backward scatters grad_out into G_l[t] and finishes
//    with small GEMMs.
//  * gather-GEMM: concat the L embeddings of a chunk of rows straight into one buffer and run one GEMM,
//    never materialising the L separate lookups and the cat of the eager version.
// Tokens equal to pad_id contribute zeros and receive no gradient; a row made only of pad_id is all zero
// (no bias) and contributes nothing to grad_bias.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <vector>

namespace genrec {

struct TokenMergeSizes {
  int64_t rows;     // B * N
  int64_t levels;   // L
  int64_t dim;      // d
  int64_t out_dim;  // d_out
  int64_t vocab;    // V
};

// Validates dtypes, ranks, shapes and devices; errors name the argument and the offending value.
TokenMergeSizes check_token_merge_args(const at::Tensor& sid_tokens, const at::Tensor& embedding,
                                       const at::Tensor& weight, const std::optional<at::Tensor>& bias);

// Throws the error for the first bad token: `flat_index` into sid_tokens (of `token_shape`) and its value.
[[noreturn]] void throw_bad_token(int64_t flat_index, int64_t value, int64_t vocab, int64_t pad_id,
                                  at::IntArrayRef token_shape);

// Embedding rows [lo, hi) that one level's tokens use (pads excluded; lo == hi when a level is all pad).
struct LevelRange {
  int64_t lo;
  int64_t hi;
};

// The device-specific pieces; everything else (strategy, GEMMs, reductions) is shared ATen code.
// All tensors are contiguous; tokens is int64 [R, L]; every kernel must never read out of bounds and,
// where `checks` is set, report the first token outside [0, V) that is not pad_id.
struct TokenMergeKernels {
  // Token range check (throws naming sid_tokens[b, n, l] and its value) that also returns each level's
  // LevelRange; where the check is skipped (CUDA: unchecked mode or graph capture, which allow no host
  // sync) it returns [0, V) for every level.
  std::vector<LevelRange> (*check_tokens)(const at::Tensor& tokens, int64_t vocab, int64_t pad_id,
                                          at::IntArrayRef token_shape);
  // out[r] = (row r all pad) ? 0 : bias + sum_l table[base_l + tokens[r, l]]
  // (table: [S, d_out] in the accumulation dtype; level_info: int64 [L, 3] rows (base_l, lo_l, hi_l) on the
  // tensors' device — level l's tokens lie in [lo_l, hi_l), its table rows start at base_l + lo_l)
  void (*table_sum)(const at::Tensor& table, const at::Tensor& level_info, const at::Tensor& tokens,
                    const std::optional<at::Tensor>& bias, int64_t pad_id, at::Tensor& out);
  // x[r, l*d:(l+1)*d] = tokens[r, l] == pad ? 0 : embedding[tokens[r, l]]   (x may differ in dtype)
  void (*gather_concat)(const at::Tensor& embedding, const at::Tensor& tokens, int64_t pad_id, at::Tensor& x);
  // grads[base_l + tokens[r, l]] += grad_out[r] over non-pad tokens   (grads: [S, d_out], zeroed)
  void (*scatter_levels)(const at::Tensor& grad_out, const at::Tensor& tokens, const at::Tensor& level_info,
                         int64_t pad_id, at::Tensor& grads);
  // grad_embedding[tokens[r, l]] += grad_x[r, l*d:(l+1)*d] over non-pad tokens
  void (*scatter_concat)(const at::Tensor& grad_x, const at::Tensor& tokens, int64_t pad_id,
                         at::Tensor& grad_embedding);
  // GEMMs of the gather path run in the accumulation dtype (true: CPU, where bf16 GEMMs gain nothing)
  // or in the input dtype with fp32 accumulation inside the GEMM (false: tensor cores).
  bool gemm_in_accumulation_dtype;
  // Rows per gather chunk are sized so one chunk's concat buffer stays about this big.
  int64_t chunk_bytes;
};

at::Tensor token_merge_forward(const TokenMergeKernels& k, const at::Tensor& sid_tokens,
                               const at::Tensor& embedding, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, int64_t pad_id);

std::tuple<at::Tensor, at::Tensor, at::Tensor> token_merge_backward(
    const TokenMergeKernels& k, const at::Tensor& grad_out, const at::Tensor& sid_tokens,
    const at::Tensor& embedding, const at::Tensor& weight, int64_t pad_id);

}  // namespace genrec
