// Row kernels the CPU ops share: max, exp(x - max) summed (optionally stored), sums of squares and SwiGLU's
// silu(gate) * up, in 16-float blocks
// (cpu/simd.h) in the width of the ISA picked at load time (cpu/isa.h). ATen's SLEEF-backed vector
// maths is not reachable from an extension, hence our own exp.
#pragma once

#include <cstdint>

namespace genrec::cpu {

// Largest of x[0..n) (-inf for n == 0; NaNs are skipped).
float row_max(const float* x, int64_t n);

// sum_j exp(x[j] - shift) for x[j] <= shift; with `out`, also out[j] = exp(x[j] - shift) (out may be x).
float sum_exp_shifted(const float* x, int64_t n, float shift, float* out = nullptr);

// sum_j x[j]^2.
float sum_squares(const float* x, int64_t n);

// out[j] = silu(gate[j]) * up[j], silu(g) = g / (1 + exp(-g)) (out may be gate or up).
void silu_mul(const float* gate, const float* up, float* out, int64_t n);

// float64 (exact-reference checks, not speed): the same, scalar, with std::exp.
double row_max(const double* x, int64_t n);
double sum_exp_shifted(const double* x, int64_t n, double shift, double* out = nullptr);
double sum_squares(const double* x, int64_t n);
void silu_mul(const double* gate, const double* up, double* out, int64_t n);

}  // namespace genrec::cpu
