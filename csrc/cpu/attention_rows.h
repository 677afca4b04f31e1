// Attention of a few rows (beams x query heads of one KV head) over one prompt's keys / values plus each row's
// own decoded keys / values: the kernel of genrec::shared_prefix_attention (cpu/shared_prefix_attention.cpp),
// also run by the fused CPU beam search (cpu/beam_search.cpp) on prompt panels it keeps across decode steps.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/simd.h"

namespace genrec::cpu {

// Rows attended together: they share every load of the prompt's keys and values (a row alone would issue
// one load per multiply-add, and the loads, not the arithmetic, would bound it).
constexpr int64_t kRowsPerPass = 4;

// The visible (unpadded) prompt keys / values of one (query, KV head), compacted in order and laid out for
// attend_rows: keys transposed to [D, key_stride], values [visible, value_stride]; strides are whole vector
// blocks and the padding is zeros, so a block load never leaves the buffer and padding lanes add exact zeros.
template <typename acc_t>
struct PromptPanel {
  int64_t key_stride = 0, value_stride = 0, visible = 0;
  std::vector<acc_t> keys_t, values;

  PromptPanel() = default;
  PromptPanel(int64_t prefix, int64_t dim)
      : key_stride(round_up(prefix)), value_stride(round_up(dim)), keys_t(dim * key_stride),
        values(prefix * value_stride) {}

  // Position p's key at keys + p * row_stride (its value likewise), for the positions where mask[p].
  template <typename scalar_t>
  void load(const scalar_t* keys, const scalar_t* values_in, int64_t row_stride, const bool* mask, int64_t prefix,
            int64_t dim) {
    visible = 0;
    for (int64_t p = 0; p < prefix; ++p) {
      if (!mask[p]) continue;
      for (int64_t d = 0; d < dim; ++d) {
        keys_t[d * key_stride + visible] = static_cast<acc_t>(keys[p * row_stride + d]);
        values[visible * value_stride + d] = static_cast<acc_t>(values_in[p * row_stride + d]);
      }
      ++visible;
    }
  }
};

// Up to kRowsPerPass rows' queries (scaled), own keys / values and outputs, [row][own][value_stride] and
// [row][value_stride], zero-padded like the panel.
template <typename acc_t>
struct RowBlock {
  int64_t own, value_stride;
  std::vector<acc_t> queries, own_keys, own_values, out;
  RowBlock(int64_t own_tokens, int64_t dim)
      : own(own_tokens), value_stride(round_up(dim)), queries(kRowsPerPass * value_stride),
        own_keys(kRowsPerPass * own * value_stride), own_values(kRowsPerPass * own * value_stride),
        out(kRowsPerPass * value_stride) {}
  acc_t* query(int64_t row) { return queries.data() + row * value_stride; }
  acc_t* own_key(int64_t row, int64_t t) { return own_keys.data() + (row * own + t) * value_stride; }
  acc_t* own_value(int64_t row, int64_t t) { return own_values.data() + (row * own + t) * value_stride; }
  const acc_t* own_key(int64_t row, int64_t t) const { return own_keys.data() + (row * own + t) * value_stride; }
  const acc_t* own_value(int64_t row, int64_t t) const { return own_values.data() + (row * own + t) * value_stride; }
  const acc_t* result(int64_t row) const { return out.data() + row * value_stride; }
};

// The first `rows` rows of `block` against the first `visible` keys of `panel` (visible <= panel.visible) and
// their own keys: softmax(q . [keys; own keys]) @ [values; own values] into block.out. `weights` holds
// kRowsPerPass rows of weight_stride >= round_up(visible + own) scratch.
void attend_rows(int64_t rows, RowBlock<float>& block, const PromptPanel<float>& panel, int64_t visible, int64_t dim,
                 float* weights, int64_t weight_stride);
void attend_rows(int64_t rows, RowBlock<double>& block, const PromptPanel<double>& panel, int64_t visible,
                 int64_t dim, double* weights, int64_t weight_stride);

}  // namespace genrec::cpu
