// Row kernels the CPU ops share: max, and exp(x - max) summed (optionally stored), in 16-float blocks
// (cpu/vec16.h) with the ISA (AVX-512 / AVX2 / baseline) picked at load time. ATen's SLEEF-backed vector
// maths is not reachable from an extension, hence our own exp.
#pragma once

#include <cstdint>

namespace genrec::cpu {

// Largest of x[0..n) (-inf for n == 0; NaNs are skipped).
float row_max(const float* x, int64_t n);

// sum_j exp(x[j] - shift) for x[j] <= shift; with `out`, also out[j] = exp(x[j] - shift) (out may be x).
float sum_exp_shifted(const float* x, int64_t n, float shift, float* out = nullptr);

// float64 (exact-reference checks, not speed): the same, scalar, with std::exp.
double row_max(const double* x, int64_t n);
double sum_exp_shifted(const double* x, int64_t n, double shift, double* out = nullptr);

}  // namespace genrec::cpu
