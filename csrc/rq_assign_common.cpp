// Shared (device-agnostic) half of genrec::rq_assign: argument checks, the level loop, squared errors.
#include "rq_assign_common.h"

#include <ATen/ATen.h>

namespace genrec {

std::tuple<at::Tensor, at::Tensor, at::Tensor> rq_assign(const RqAssignKernels& k, const at::Tensor& x,
                                                         const at::Tensor& codebooks,
                                                         at::OptionalIntArrayRef level_sizes) {
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kDouble,
              "rq_assign: x must be float32, bfloat16 or float64, got ", dtype);
  TORCH_CHECK(x.dim() == 2, "rq_assign: x must be [N, D], got shape ", x.sizes());
  TORCH_CHECK(codebooks.dim() == 3, "rq_assign: codebooks must be [L, K, D], got shape ", codebooks.sizes());
  TORCH_CHECK(codebooks.scalar_type() == dtype, "rq_assign: codebooks dtype ", codebooks.scalar_type(),
              " differs from x dtype ", dtype);
  TORCH_CHECK(codebooks.device() == x.device(), "rq_assign: codebooks are on ", codebooks.device(),
              " but x is on ", x.device());
  const int64_t n = x.size(0), dim = x.size(1), levels = codebooks.size(0), width = codebooks.size(1);
  TORCH_CHECK(codebooks.size(2) == dim, "rq_assign: codebooks must be [L, K, D] with D = ", dim,
              " (x's width), got shape ", codebooks.sizes());
  TORCH_CHECK(levels >= 1 && width >= 1, "rq_assign: codebooks need L >= 1 levels of K >= 1 centroids, got shape ",
              codebooks.sizes());
  if (level_sizes.has_value()) {
    TORCH_CHECK(static_cast<int64_t>(level_sizes->size()) == levels, "rq_assign: level_sizes has ",
                level_sizes->size(), " entries but codebooks have L = ", levels, " levels");
    for (int64_t l = 0; l < levels; ++l) {
      const int64_t kl = (*level_sizes)[l];
      TORCH_CHECK(kl >= 1 && kl <= width, "rq_assign: level_sizes[", l, "] = ", kl, " is outside [1, K = ", width,
                  "]");
    }
  }

  const auto acc = dtype == at::kDouble ? at::kDouble : at::kFloat;
  auto codes = at::empty({n, levels}, x.options().dtype(at::kLong));
  auto residual = x.to(acc, /*non_blocking=*/false, /*copy=*/true, at::MemoryFormat::Contiguous);
  if (n > 0) {
    for (int64_t l = 0; l < levels; ++l) {
      const int64_t kl = level_sizes.has_value() ? (*level_sizes)[l] : width;
      const auto codebook = codebooks[l].narrow(0, 0, kl).to(acc).contiguous();
      const auto sq_norms = codebook.pow(2).sum(1);
      k.assign_level(residual, codebook, sq_norms, codes.mutable_data_ptr<int64_t>() + l, levels);
    }
  }
  auto sq_err = residual.pow(2).sum(1);  // from the residual itself: exact, never negative
  return {codes, residual.to(dtype), sq_err};
}

}  // namespace genrec
