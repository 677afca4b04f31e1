// The vector ISA of the hand-dispatched CPU kernels (cpu/vec_math.cpp, the attention rows): the widest this CPU
// has, capped by the environment variable GENREC_CPU_ISA (avx512 | avx2 | baseline), read once. The cap lets
// one machine measure the code paths another kind runs (an AVX-512 machine timing the AVX2 path of the AMD
// EPYC machines that lack AVX-512). Unlike target_clones, the AVX2 variant also enables FMA (every AVX2 CPU of
// the last decade has it; GCC's "avx2" target does not imply it), and each variant works in its own vector
// width (cpu/simd.h), never in blocks wider than its registers.
#pragma once

#include "cpu/simd.h"

namespace genrec::cpu {

enum class Isa { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

Isa cpu_isa();

}  // namespace genrec::cpu

// Defines `ret name params` dispatching, once, to three instantiations of the template `impl<S>` called with
// `args`: S = Simd<16> compiled for AVX-512 (+FMA), Simd<8> for AVX2 + FMA, Simd<4> for the baseline
// (cpu/simd.h).
#define GENREC_ISA_DISPATCH(ret, name, params, args, impl)                                                   \
  namespace {                                                                                                 \
  __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,fma"))) ret name##_avx512 params {               \
    return impl<::genrec::cpu::Simd<16>> args;                                                                \
  }                                                                                                           \
  __attribute__((target("avx2,fma"))) ret name##_avx2 params { return impl<::genrec::cpu::Simd<8>> args; }   \
  ret name##_baseline params { return impl<::genrec::cpu::Simd<4>> args; }                                    \
  }                                                                                                           \
  ret name params {                                                                                           \
    static const auto chosen = [] {                                                                           \
      const auto isa = ::genrec::cpu::cpu_isa();                                                              \
      return isa == ::genrec::cpu::Isa::kAvx512 ? &name##_avx512                                              \
             : isa == ::genrec::cpu::Isa::kAvx2 ? &name##_avx2                                                \
                                                : &name##_baseline;                                           \
    }();                                                                                                      \
    return chosen args;                                                                                       \
  }
