// Shared by the CUDA kernel files: element <-> accumulator conversions (float for float32 / bfloat16 /
// float16, double for float64), warp reductions, exp in the accumulator's precision, and the dispatch from a
// launcher's DType tag to those types.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common.h"

namespace genrec::cuda {

template <typename T> __device__ __forceinline__ float to_acc(T v) { return static_cast<float>(v); }
template <> __device__ __forceinline__ float to_acc<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ float to_acc<__half>(__half v) { return __half2float(v); }
__device__ __forceinline__ double to_acc(double v) { return v; }

template <typename T, typename A> __device__ __forceinline__ T from_acc(A v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16, float>(float v) {
  return __float2bfloat16(v);
}
template <> __device__ __forceinline__ __half from_acc<__half, float>(float v) { return __float2half(v); }

// -inf and a quiet NaN in the accumulator's type, built from its bit pattern (std::numeric_limits is host-only constexpr,
// which nvcc accepts in device code only with --expt-relaxed-constexpr).
template <typename A> __device__ __forceinline__ A neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() { return __int_as_float(0xff800000); }
template <> __device__ __forceinline__ double neg_inf<double>() { return __longlong_as_double(0xfff0000000000000LL); }
template <typename A> __device__ __forceinline__ A quiet_nan();
template <> __device__ __forceinline__ float quiet_nan<float>() { return __int_as_float(0x7fc00000); }
template <> __device__ __forceinline__ double quiet_nan<double>() { return __longlong_as_double(0x7ff8000000000000LL); }

__device__ __forceinline__ float exp_acc(float x) { return expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }

template <typename A> __device__ __forceinline__ A warp_sum(A v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename A> __device__ __forceinline__ A warp_max(A v) {
  for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

template <typename Element, typename Acc> struct Types {
  using T = Element;
  using A = Acc;
};

// Calls f(Types<T, A>{}) for the element type T of `type` and its accumulator A.
template <typename F> cudaError_t dispatch(DType type, F&& f) {
  switch (type) {
    case DType::kFloat32:
      return f(Types<float, float>{});
    case DType::kBFloat16:
      return f(Types<__nv_bfloat16, float>{});
    case DType::kFloat16:
      return f(Types<__half, float>{});
    case DType::kFloat64:
      return f(Types<double, double>{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace genrec::cuda
