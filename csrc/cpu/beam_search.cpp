// CPU registration of genrec::beam_search: the shared search (beam_search_common.cpp) with a decode step's row
// tasks spread over ATen's threads. Each task runs its rows through every layer with the stage ops on one
// thread (their own parallel loops run inline inside a parallel region, and so do their GEMMs), which at
// serving sizes beats splitting every small GEMM and elementwise stage across the threads one by one.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "beam_search_common.h"

namespace genrec {
namespace {

void run_row_tasks(int64_t n, const std::function<void(int64_t)>& task) {
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    // Worker threads start with default dispatch state: keep the stage ops below autograd, as on the caller's
    // thread (the search is inference-only; its weights may still require grad).
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (int64_t k = begin; k < end; ++k) task(k);
  });
}

RowTaskRunner cpu_runner() { return {at::get_num_threads(), &run_row_tasks}; }

}  // namespace

TORCH_LIBRARY_IMPL(genrec, CPU, m) { m.impl("beam_search", &beam_search_kernel<&cpu_runner>); }

}  // namespace genrec
