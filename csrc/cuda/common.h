// Shared by every CUDA kernel file: dtype tags for the torch-free launcher interfaces, conversions.
#pragma once

#include <cstdint>

namespace genrec::cuda {

// The launchers see raw pointers only; the glue passes the element type as this tag.
enum class DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat64 = 2, kFloat16 = 3 };

}  // namespace genrec::cuda
