// CPU kernel of genrec::beam_step: queries in parallel; per query, candidate (score, beam * K + code) pairs
// from every live beam's valid children (or all K codes, unconstrained), then a partial sort for the top W'.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "beam_step_common.h"

namespace genrec {
namespace {

template <typename acc_t>
struct Candidate {
  acc_t score;
  int64_t key;    // beam * K + code: the tie-break order (lower first)
  int64_t child;  // trie node at the next depth, -1 unconstrained
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> beam_step_cpu(
    const at::Tensor& logits_in, const at::Tensor& scores_in, const at::Tensor& nodes_in,
    const at::Tensor& offsets_in, const at::Tensor& codes_in, int64_t beam_width, bool constrained) {
  const BeamStepArgs a =
      check_beam_step_args(logits_in, scores_in, nodes_in, offsets_in, codes_in, beam_width, constrained);
  const auto logits = logits_in.contiguous();
  const auto scores = scores_in.contiguous();
  const auto nodes = nodes_in.contiguous();
  const auto offsets = offsets_in.contiguous();
  const auto codes = codes_in.contiguous();
  const int64_t* off = offsets.const_data_ptr<int64_t>();
  const int64_t* code = codes.const_data_ptr<int64_t>();
  if (constrained) {  // the trie is tiny next to the logits: checking it up front keeps every read in bounds
    for (int64_t i = 0; i <= a.nodes; ++i) {
      TORCH_CHECK(off[i] >= 0 && off[i] <= a.children && (i == 0 || off[i] >= off[i - 1]),
                  "beam_step: child_offsets[", i, "] = ", off[i], " is not a non-decreasing offset into [0, ",
                  a.children, "]");
    }
    for (int64_t j = 0; j < a.children; ++j) {
      TORCH_CHECK(code[j] >= 0 && code[j] < a.width, "beam_step: child_codes[", j, "] = ", code[j],
                  " is outside [0, K = ", a.width, ")");
    }
    const int64_t* nd = nodes.const_data_ptr<int64_t>();
    for (int64_t i = 0; i < nodes.numel(); ++i) {
      TORCH_CHECK(nd[i] >= -1 && nd[i] < a.nodes, "beam_step: nodes[", i / a.beams, ", ", i % a.beams, "] = ", nd[i],
                  " is outside [-1, ", a.nodes, ")");
    }
  }
  auto [out_scores, out_codes, out_parents, out_nodes] = empty_beam_step_outputs(scores, a);
  // The log-sum-exp of every beam in one vectorised, multi-threaded ATen pass; the loop below is then only
  // candidate generation and selection.
  const auto lse = at::logsumexp(logits.to(scores.scalar_type()), -1).contiguous();  // [B, W]
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, logits.scalar_type(), "beam_step", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* lg = logits.const_data_ptr<scalar_t>();
    const acc_t* sc = scores.const_data_ptr<acc_t>();
    const int64_t* nd = nodes.const_data_ptr<int64_t>();
    const acc_t* lse_p = lse.const_data_ptr<acc_t>();
    acc_t* o_sc = out_scores.mutable_data_ptr<acc_t>();
    int64_t* o_code = out_codes.mutable_data_ptr<int64_t>();
    int64_t* o_par = out_parents.mutable_data_ptr<int64_t>();
    int64_t* o_node = out_nodes.mutable_data_ptr<int64_t>();
    const acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
    at::parallel_for(0, a.batch, 1, [&](int64_t b0, int64_t b1) {
      std::vector<Candidate<acc_t>> cands;
      for (int64_t b = b0; b < b1; ++b) {
        cands.clear();
        for (int64_t w = 0; w < a.beams; ++w) {
          const acc_t s = sc[b * a.beams + w];
          const int64_t node = nd[b * a.beams + w];
          if (!(s > neg_inf) || (constrained && node < 0)) continue;  // dead beam (or NaN score)
          const scalar_t* row = lg + (b * a.beams + w) * a.width;
          const acc_t base = s - lse_p[b * a.beams + w];  // s + log_softmax(row)[c] = base + row[c]
          if (constrained) {
            for (int64_t j = off[node]; j < off[node + 1]; ++j) {
              cands.push_back({base + static_cast<acc_t>(row[code[j]]), w * a.width + code[j], j});
            }
          } else {
            for (int64_t c = 0; c < a.width; ++c) cands.push_back({base + static_cast<acc_t>(row[c]), w * a.width + c, -1});
          }
        }
        const int64_t keep = std::min<int64_t>(a.out_beams, static_cast<int64_t>(cands.size()));
        std::partial_sort(cands.begin(), cands.begin() + keep, cands.end(), [](const auto& x, const auto& y) {
          return x.score > y.score || (x.score == y.score && x.key < y.key);
        });
        for (int64_t i = 0; i < a.out_beams; ++i) {
          const int64_t o = b * a.out_beams + i;
          if (i < keep && cands[i].score > neg_inf) {
            o_sc[o] = cands[i].score;
            o_code[o] = cands[i].key % a.width;
            o_par[o] = cands[i].key / a.width;
            o_node[o] = cands[i].child;
          } else {  // fewer continuations than beams: dead slots that can never win again
            o_sc[o] = neg_inf;
            o_code[o] = -1;
            o_par[o] = -1;
            o_node[o] = -1;
          }
        }
      }
    });
  });
  return {out_scores, out_codes, out_parents, out_nodes};
}

}  // namespace

TORCH_LIBRARY_IMPL(genrec, CPU, m) { m.impl("beam_step", &beam_step_cpu); }

}  // namespace genrec
