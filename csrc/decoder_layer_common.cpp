#include "decoder_layer_common.h"

#include <ATen/ATen.h>

namespace genrec {
namespace {

void check_dtype(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, " must have the input's dtype ", x.scalar_type(),
              ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " must be on ", x.device(), ", got ", t.device());
}

void check_float_dtype(const char* op, const char* name, const at::Tensor& x) {
  const auto t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kBFloat16 || t == at::kHalf || t == at::kDouble, op, ": ", name,
              " must be float32, bfloat16, float16 or float64, got ", t);
}

void check_input(const char* op, const char* name, const at::Tensor& x) {
  check_float_dtype(op, name, x);
  TORCH_CHECK(x.dim() == 2, op, ": ", name, " must be 2-D [N, H], got shape ", x.sizes());
}

// An RMSNorm weight over x's last dimension.
void check_norm(const char* op, const char* name, const at::Tensor& weight, const at::Tensor& x) {
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(-1), op, ": ", name, " must be [H] = [", x.size(-1),
              "], got shape ", weight.sizes());
  check_dtype(op, name, weight, x);
}

void check_weight(const char* op, const char* name, const at::Tensor& w, int64_t rows, int64_t cols,
                  const at::Tensor& x) {
  TORCH_CHECK(w.dim() == 2 && (rows < 0 || w.size(0) == rows) && w.size(1) == cols, op, ": ", name, " must be [",
              rows < 0 ? "O" : std::to_string(rows), ", ", cols, "], got shape ", w.sizes());
  check_dtype(op, name, w, x);
}

void check_bias(const char* op, const char* name, const std::optional<at::Tensor>& b, int64_t size,
                const at::Tensor& x) {
  if (!b.has_value()) return;
  TORCH_CHECK(b->dim() == 1 && b->size(0) == size, op, ": ", name, " must be [", size, "], got shape ", b->sizes());
  check_dtype(op, name, *b, x);
}

at::Tensor rms_normed(const DecoderLayerKernels& k, const at::Tensor& x, const at::Tensor& weight, double eps) {
  auto out = at::empty_like(x, at::MemoryFormat::Contiguous);
  k.rms_norm(x.contiguous(), weight.contiguous(), eps, out);
  return out;
}

}  // namespace

at::Tensor rms_norm_impl(const DecoderLayerKernels& k, const at::Tensor& x, const at::Tensor& weight, double eps) {
  constexpr const char* op = "rms_norm";
  check_float_dtype(op, "x", x);
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least one dimension");
  check_norm(op, "weight", weight, x);
  if (x.numel() == 0) return at::empty(x.sizes(), x.options());
  return rms_normed(k, x.reshape({-1, x.size(-1)}), weight, eps).view(x.sizes());
}

at::Tensor layer_qkv_impl(const DecoderLayerKernels& k, const at::Tensor& x, const at::Tensor& norm_weight,
                          double eps, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          const at::Tensor& cos, const at::Tensor& sin, int64_t rotated_heads) {
  constexpr const char* op = "layer_qkv";
  check_input(op, "x", x);
  check_norm(op, "norm_weight", norm_weight, x);
  check_weight(op, "weight", weight, -1, x.size(1), x);
  const int64_t out_dim = weight.size(0);
  check_bias(op, "bias", bias, out_dim, x);
  TORCH_CHECK(cos.dim() == 2 && cos.size(0) >= 1 && cos.size(1) >= 2 && cos.size(1) % 2 == 0, op,
              ": cos must be [M, D] with M >= 1 and an even D >= 2, got shape ", cos.sizes());
  TORCH_CHECK(sin.sizes() == cos.sizes(), op, ": sin must have cos's shape ", cos.sizes(), ", got ", sin.sizes());
  check_dtype(op, "cos", cos, x);
  check_dtype(op, "sin", sin, x);
  const int64_t rows = x.size(0), positions = cos.size(0), dim = cos.size(1);
  TORCH_CHECK(rows % positions == 0, op, ": x's N = ", rows, " rows must be a multiple of cos's M = ", positions,
              " rows (each run of N / M rows shares a position)");
  TORCH_CHECK(rotated_heads >= 0 && rotated_heads <= out_dim / dim, op, ": rotated_heads = ", rotated_heads,
              " heads of width D = ", dim, " do not fit in the O = ", out_dim, " projected columns");
  const auto normed = rms_normed(k, x, norm_weight, eps);
  auto out = bias.has_value() ? at::addmm(*bias, normed, weight.t()) : at::mm(normed, weight.t());
  TORCH_INTERNAL_ASSERT(out.is_contiguous(), "layer_qkv: the projection GEMM returned a strided result");
  if (rows > 0 && rotated_heads > 0) k.rotary(out, cos.contiguous(), sin.contiguous(), rotated_heads);
  return out;
}

at::Tensor layer_out_impl(const DecoderLayerKernels& k, const at::Tensor& h, const at::Tensor& attn,
                          const at::Tensor& o_weight, const std::optional<at::Tensor>& o_bias,
                          const at::Tensor& norm_weight, double eps, const at::Tensor& gate_up_weight,
                          const at::Tensor& down_weight) {
  constexpr const char* op = "layer_out";
  check_input(op, "h", h);
  const int64_t rows = h.size(0), hidden = h.size(1);
  TORCH_CHECK(attn.dim() == 2 && attn.size(0) == rows, op, ": attn must be [N, A] with N = ", rows,
              ", got shape ", attn.sizes());
  check_dtype(op, "attn", attn, h);
  check_weight(op, "o_weight", o_weight, hidden, attn.size(1), h);
  check_bias(op, "o_bias", o_bias, hidden, h);
  check_norm(op, "norm_weight", norm_weight, h);
  TORCH_CHECK(gate_up_weight.dim() == 2 && gate_up_weight.size(0) % 2 == 0 && gate_up_weight.size(1) == hidden, op,
              ": gate_up_weight must be [2I, H] with H = ", hidden, ", got shape ", gate_up_weight.sizes());
  check_dtype(op, "gate_up_weight", gate_up_weight, h);
  const int64_t inner = gate_up_weight.size(0) / 2;
  check_weight(op, "down_weight", down_weight, hidden, inner, h);
  // h1 = h + attn o^T, the residual folded into the GEMM (beta = 1); then h1 += MLP(h1) the same way.
  auto h1 = at::addmm(h, attn, o_weight.t());
  if (o_bias.has_value()) h1.add_(*o_bias);
  const auto gate_up = at::mm(rms_normed(k, h1, norm_weight, eps), gate_up_weight.t());
  TORCH_INTERNAL_ASSERT(gate_up.is_contiguous(), "layer_out: the gate|up GEMM returned a strided result");
  auto act = at::empty({rows, inner}, h.options());
  if (rows > 0) k.silu_mul(gate_up, act);
  return h1.addmm_(act, down_weight.t());
}

}  // namespace genrec
