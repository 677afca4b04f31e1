// Launchers of the genrec::grpo_sr_loss CUDA kernels (the maths: ../grpo_sr_loss_common.h).
// Raw pointers and a stream only — no torch headers. The split: the logits tile and the gradient GEMMs are
// cuBLAS calls made by the shared C++ half through ATen (the glue has torch); these kernels are the passes
// between them — the row-wise online log-sum-exp with the target gather, and the softmax gradient — plus the
// target range scan. No host synchronisation and no allocation inside; every index is bounds-guarded.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common.h"

namespace genrec::cuda {

// *first_bad = min(*first_bad, i) over every i with targets[i] outside [0, vocab) and != ignore_index.
// Initialise *first_bad to UINT64_MAX.
cudaError_t launch_find_bad_target(const int64_t* targets, int64_t n, int64_t vocab, int64_t ignore_index,
                                   unsigned long long* first_bad, cudaStream_t stream);

// One block per row of logits [rows, vocab] (acc_type: kFloat32 or kFloat64; lse / target_logit of that type):
// lse[r] = log sum_v exp(logits[r, v]) by an online (max, sum) merge; target_logit[r] = logits[r, targets[r]],
// 0 where targets[r] == ignore_index, NaN where it is outside [0, vocab).
cudaError_t launch_row_lse(DType acc_type, const void* logits, const int64_t* targets, int64_t rows, int64_t vocab,
                           int64_t ignore_index, void* lse, void* target_logit, cudaStream_t stream);

// grad[r, v] = dlogp[r] * ([v == targets[r]] - exp(logits[r, v] - lse[r])) (zero rows where dlogp[r] == 0),
// computed in acc_type and stored as grad_type (kFloat32 / kFloat64: may be logits itself, in place; kBFloat16:
// a separate tile for the tensor-core GEMMs). lse / dlogp are acc_type.
cudaError_t launch_softmax_grad(DType acc_type, const void* logits, const void* lse, const int64_t* targets,
                                const void* dlogp, int64_t rows, int64_t vocab, DType grad_type, void* grad,
                                cudaStream_t stream);

}  // namespace genrec::cuda
