#include "shared_prefix_attention_common.h"

#include <ATen/ATen.h>

namespace genrec {

SharedPrefixAttentionArgs check_shared_prefix_attention_args(const at::Tensor& q, const at::Tensor& prefix_k,
                                                             const at::Tensor& prefix_v, const at::Tensor& prefix_mask,
                                                             const at::Tensor& own_k, const at::Tensor& own_v) {
  const auto t = q.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kBFloat16 || t == at::kHalf || t == at::kDouble,
              "shared_prefix_attention: q must be float32, bfloat16, float16 or float64, got ", t);
  TORCH_CHECK(q.dim() == 4, "shared_prefix_attention: q must be [B, W, Hq, D], got shape ", q.sizes());
  const int64_t batch = q.size(0), beams = q.size(1), heads = q.size(2), dim = q.size(3);
  TORCH_CHECK(prefix_k.dim() == 4 && prefix_k.size(0) == batch && prefix_k.size(3) == dim,
              "shared_prefix_attention: prefix_k must be [B, Hkv, P, D] with B = ", batch, ", D = ", dim,
              ", got shape ", prefix_k.sizes());
  const int64_t kv_heads = prefix_k.size(1), prefix = prefix_k.size(2);
  TORCH_CHECK(kv_heads >= 1 && heads % kv_heads == 0, "shared_prefix_attention: Hq = ", heads,
              " query heads are not a multiple of Hkv = ", kv_heads, " key/value heads");
  TORCH_CHECK(prefix_v.sizes() == prefix_k.sizes(), "shared_prefix_attention: prefix_v must have prefix_k's shape ",
              prefix_k.sizes(), ", got ", prefix_v.sizes());
  TORCH_CHECK(prefix_mask.scalar_type() == at::kBool && prefix_mask.dim() == 2 && prefix_mask.size(0) == batch &&
                  prefix_mask.size(1) == prefix,
              "shared_prefix_attention: prefix_mask must be bool [B, P] = [", batch, ", ", prefix, "], got ",
              prefix_mask.scalar_type(), " ", prefix_mask.sizes());
  TORCH_CHECK(own_k.dim() == 5 && own_k.size(0) == batch && own_k.size(1) == beams && own_k.size(2) == kv_heads &&
                  own_k.size(3) >= 1 && own_k.size(4) == dim,
              "shared_prefix_attention: own_k must be [B, W, Hkv, T, D] = [", batch, ", ", beams, ", ", kv_heads,
              ", T >= 1, ", dim, "], got shape ", own_k.sizes());
  TORCH_CHECK(own_v.sizes() == own_k.sizes(), "shared_prefix_attention: own_v must have own_k's shape ",
              own_k.sizes(), ", got ", own_v.sizes());
  for (const auto* other : {&prefix_k, &prefix_v, &own_k, &own_v}) {
    TORCH_CHECK(other->scalar_type() == t, "shared_prefix_attention: keys and values must have q's dtype ", t,
                ", got ", other->scalar_type());
  }
  for (const auto* other : {&prefix_k, &prefix_v, &prefix_mask, &own_k, &own_v}) {
    TORCH_CHECK(other->device() == q.device(), "shared_prefix_attention: all inputs must be on ", q.device(),
                ", got one on ", other->device());
  }
  return {batch, beams, heads, kv_heads, prefix, own_k.size(3), dim};
}

SharedPrefixAttentionInputs prepare_shared_prefix_attention(const at::Tensor& q, const at::Tensor& prefix_k,
                                                            const at::Tensor& prefix_v, const at::Tensor& prefix_mask,
                                                            const at::Tensor& own_k, const at::Tensor& own_v) {
  const auto sizes = check_shared_prefix_attention_args(q, prefix_k, prefix_v, prefix_mask, own_k, own_v);
  const auto dense_last_dim = [](const at::Tensor& x) { return x.stride(-1) == 1 ? x : x.contiguous(); };
  auto q_rows = dense_last_dim(q);
  return {sizes,
          q_rows,
          prefix_k.contiguous(),
          prefix_v.contiguous(),
          prefix_mask.contiguous(),
          dense_last_dim(own_k),
          dense_last_dim(own_v),
          at::empty(q_rows.sizes(), q_rows.options())};
}

}  // namespace genrec
