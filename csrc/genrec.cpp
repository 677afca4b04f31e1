// The one list of genrec ops: every schema lives here; kernels register per device in cpu/ and cuda/.
#include <Python.h>
#include <torch/library.h>

// `import genrec_ext._C` loads this library (and with it the registrations below); the module itself
// is empty — the ops are reached through torch.ops.genrec.*.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "genrec_ext native ops", -1,
                                nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module);
}

TORCH_LIBRARY(genrec, m) {
  // Paper eq. (5): out[b, n] = weight @ concat(embedding[sid_tokens[b, n, 0..L-1]]) + bias.
  // Tokens equal to pad_id contribute zeros; rows made only of pad_id are all-zero outputs.
  m.def("token_merge(Tensor sid_tokens, Tensor embedding, Tensor weight, Tensor? bias, int pad_id) -> Tensor");
  // Returns (grad_embedding, grad_weight, grad_bias); grad_bias is computed even when bias was None.
  m.def(
      "token_merge_backward(Tensor grad_out, Tensor sid_tokens, Tensor embedding, Tensor weight, int pad_id)"
      " -> (Tensor, Tensor, Tensor)");
  // Residual quantisation (paper §2.1): per level, the nearest of the first level_sizes[l] centroids to the
  // running residual (ties to the lowest index), which is then subtracted. Returns (codes int64 [N, L],
  // final residual [N, D] in x's dtype, squared final residual norms [N] in float32 (float64 for float64)).
  m.def("rq_assign(Tensor x, Tensor codebooks, int[]? level_sizes=None) -> (Tensor, Tensor, Tensor)");
  // One step of beam search over one SID level for B queries x W beams. logits [B, W, K] are the level's
  // token logits per beam; scores [B, W] the running log-probabilities (-inf: a dead beam); nodes [B, W] each
  // beam's trie node at this depth (-1: none), with the depth's CSR arrays child_offsets [n + 1] and
  // child_codes [n_next]. Log-softmax over the K tokens, invalid children masked when constrained, then the
  // top `beam_width` of all beams x children (ties: lower beam, then lower code). Returns (scores [B, W'],
  // codes [B, W'], parents [B, W'], child nodes [B, W']); slots without a candidate hold -inf / -1.
  m.def(
      "beam_step(Tensor logits, Tensor scores, Tensor nodes, Tensor child_offsets, Tensor child_codes, "
      "int beam_width, bool constrained) -> (Tensor, Tensor, Tensor, Tensor)");
  // Decode-step attention of W beams that share a prompt (inference only). q [B, W, Hq, D] (one new token
  // per beam); the prompt's keys/values once per query, prefix_k/prefix_v [B, Hkv, P, D], with prefix_mask
  // [B, P] (bool, true = attend); each beam's own decoded keys/values own_k/own_v [B, W, Hkv, T, D], T >= 1.
  // Query head h reads KV head h / (Hq / Hkv). out[b, w, h] = softmax(scale * q . [prefix keys; own keys]) @
  // [prefix values; own values], accumulated in float32 (float64 for float64). Returns [B, W, Hq, D].
  m.def(
      "shared_prefix_attention(Tensor q, Tensor prefix_k, Tensor prefix_v, Tensor prefix_mask, Tensor own_k, "
      "Tensor own_v, float scale) -> Tensor");
  // A Qwen2 decoder layer in two fused halves around its attention (inference only; prefill and decode
  // steps share them). layer_qkv: RMSNorm of x [N, H] (norm_weight [H], eps), the q|k|v projection weight
  // [O, H] (+ bias [O]), then rotary embedding of the first `rotated_heads` heads of width D = cos.size(1)
  // (queries and keys); cos / sin [M, D] with N % M == 0, row r using cos[r / (N / M)] (so W beams of one
  // query share a row). out = x' W^T + b with x' = norm_weight * x / rms(x); rotation per head:
  // y[i] = y[i] cos[i] - y[i + D/2] sin[i], y[i + D/2] = y[i + D/2] cos[i + D/2] + y[i] sin[i + D/2]. -> [N, O].
  m.def(
      "layer_qkv(Tensor x, Tensor norm_weight, float eps, Tensor weight, Tensor? bias, Tensor cos, Tensor sin, "
      "int rotated_heads) -> Tensor");
  // rms_norm: the same RMSNorm alone (a model's final norm), over the last dimension of x [..., H].
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  // layer_out: h1 = h + attn o_weight^T (+ o_bias), then h1 + SwiGLU(RMSNorm(h1)) with gate_up_weight [2I, H]
  // (gate rows first) and down_weight [H, I]: out = h1 + (silu(g) * u) down^T, [g | u] = RMSNorm(h1) gate_up^T.
  // h [N, H], attn [N, A], o_weight [H, A]. -> [N, H].
  m.def(
      "layer_out(Tensor h, Tensor attn, Tensor o_weight, Tensor? o_bias, Tensor norm_weight, float eps, "
      "Tensor gate_up_weight, Tensor down_weight) -> Tensor");
  // The whole point-wise beam search of a Qwen2 decoder over SID levels (inference only): the prompts embeds
  // [B, P, H] (left-padded; prompt_mask [B, P] bool) through every layer once, then per level l the level's
  // logits (head_weight rows of level l, + head_bias) of every live beam, a beam_step (trie depth l:
  // child_offsets[l], child_codes[l]) to the best beam_width, and, below the last level, one decode step of the
  // chosen tokens (sid_embedding rows) against the prompt's keys / values and the beam's own. cos / sin
  // [B, P + L - 1, D] are the rotary tables of the prompt positions and the L - 1 decode positions. Per layer
  // layer_weights holds (input norm, q|k|v, o, post-attention norm, gate|up, down) as layer_qkv / layer_out
  // take them, layer_biases (q|k|v, o), layer_eps (input, post-attention); attention has num_heads query heads
  // over num_kv_heads, scaled by `scaling`. Returns (scores [B, W] float32 (float64 for float64), codes int64
  // [B, W, L], final trie nodes int64 [B, W]); slots without a candidate hold -inf / -1.
  m.def(
      "beam_search(Tensor embeds, Tensor prompt_mask, Tensor cos, Tensor sin, Tensor[] layer_weights, "
      "Tensor?[] layer_biases, float[] layer_eps, int num_heads, int num_kv_heads, float scaling, "
      "Tensor final_norm_weight, float final_eps, Tensor head_weight, Tensor? head_bias, Tensor sid_embedding, "
      "int[] level_sizes, Tensor[] child_offsets, Tensor[] child_codes, int beam_width, bool constrained) "
      "-> (Tensor, Tensor, Tensor)");
  // The same search composed of the stage ops (layer_qkv, shared_prefix_attention, layer_out, rms_norm,
  // beam_step) through the dispatcher: what beam_search runs on CUDA (and on CPU for bf16), registered on CPU
  // too so that it is tested where no GPU is, and as the benchmark's unfused baseline.
  m.def(
      "_beam_search_stages(Tensor embeds, Tensor prompt_mask, Tensor cos, Tensor sin, Tensor[] layer_weights, "
      "Tensor?[] layer_biases, float[] layer_eps, int num_heads, int num_kv_heads, float scaling, "
      "Tensor final_norm_weight, float final_eps, Tensor head_weight, Tensor? head_bias, Tensor sid_embedding, "
      "int[] level_sizes, Tensor[] child_offsets, Tensor[] child_codes, int beam_width, bool constrained) "
      "-> (Tensor, Tensor, Tensor)");
  // GRPO-SR (paper eq. 8) fused with the LM head; full logits are never materialised. Row r of hidden [N, H]
  // scores target token targets[r] (int64, in [0, V) or ignore_index) under the head weight [V, H] (+ bias [V]):
  // logp_r = log_softmax(hidden_r W^T + b)[targets[r]]. Per-row coefficients [N] (any floating dtype):
  //   loss = sum_r [ -min(ratio_r c_r, clip(ratio_r, 1 - epsilon_low, 1 + epsilon_high) c_r)   (c = policy_coef)
  //                  - nll_coef_r logp_r + kl_coef_r (exp(ref_r - logp_r) - (ref_r - logp_r) - 1) ]
  // with ratio_r = exp(logp_r - old_logp_r), or exp(logp_r - sg(logp_r)) = 1 when old_logp is None (the paper's
  // pi / sg(pi): value 1, gradient c_r d logp_r); the KL term (k3 estimator) needs ref_logp and kl_coef together.
  // Rows whose target is ignore_index add nothing and report logp 0. Returns (loss [] and logp [N] in float32
  // (float64 for float64 inputs), then d loss / d (hidden, weight, bias) for the entries of grad_mask that are
  // true, computed in the same sweep over the logits ([0]-sized tensors where false; grad_bias even without a
  // bias). block_rows: rows per logits tile (0: chosen from a memory budget).
  m.def(
      "grpo_sr_loss(Tensor hidden, Tensor weight, Tensor? bias, Tensor targets, Tensor policy_coef, "
      "Tensor nll_coef, Tensor? old_logp=None, Tensor? ref_logp=None, Tensor? kl_coef=None, "
      "float epsilon_low=0.2, float epsilon_high=0.2, int ignore_index=-100, int block_rows=0, "
      "bool[3] grad_mask=[False, False, False]) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Gradients of grad_loss * loss + sum_r grad_logp[r] * logp_r (grad_logp may be None) with respect to
  // (hidden, weight, bias), recomputing the logits tile by tile; [0]-sized where grad_mask is false.
  m.def(
      "grpo_sr_loss_backward(Tensor grad_loss, Tensor? grad_logp, Tensor hidden, Tensor weight, Tensor? bias, "
      "Tensor targets, Tensor policy_coef, Tensor nll_coef, Tensor? old_logp, Tensor? ref_logp, Tensor? kl_coef, "
      "float epsilon_low, float epsilon_high, int ignore_index, int block_rows, bool[3] grad_mask) "
      "-> (Tensor, Tensor, Tensor)");
}
