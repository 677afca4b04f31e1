// Row helpers the CPU kernels share: the grain of a row-parallel loop, and a row in the accumulation type.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace genrec::cpu {

// Rows per at::parallel_for task: enough elements (`width` per row) that a task outweighs waking a thread.
inline int64_t row_grain(int64_t width) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(width, 1)); }

// The row in the accumulation type: itself when the types agree, else widened into `buffer` (bf16, fp16).
template <typename scalar_t, typename acc_t>
const acc_t* widened(const scalar_t* row, int64_t n, std::vector<acc_t>& buffer) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return row;
  } else {
    buffer.resize(n);
    std::copy_n(row, n, buffer.begin());
    return buffer.data();
  }
}

}  // namespace genrec::cpu
