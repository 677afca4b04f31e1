// CPU kernel of genrec::beam_step: queries in parallel; per query one pass over its live beams that keeps the
// best W' (score, beam * K + code) candidates in a bounded heap.
//
// Beam scores arrive best first (the previous step's output), and a beam's candidates can never beat its own
// score, so once the heap is full most beams are rejected on their score alone, before their row is read;
// the rest are rejected on the bound score + max(row) - lse(row) before any child is looked at. The row's
// log-sum-exp (cpu/vec_math.h) is computed only for beams that survive the first test.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "beam_step_common.h"
#include "cpu/rows.h"
#include "cpu/vec_math.h"

namespace genrec {
namespace {

template <typename acc_t>
struct RowStats {
  acc_t max;  // largest logit
  acc_t lse;  // log-sum-exp (-inf for a row of -inf)
};

template <typename acc_t>
RowStats<acc_t> row_stats(const acc_t* x, int64_t n) {
  const acc_t m = cpu::row_max(x, n);
  if (!(m > -std::numeric_limits<acc_t>::infinity()) || std::isinf(m)) return {m, m};  // all -inf, +inf or NaN
  return {m, m + std::log(cpu::sum_exp_shifted(x, n, m))};
}

template <typename acc_t>
struct Candidate {
  acc_t score;
  int64_t key;    // beam * K + code: the tie-break order (lower first)
  int64_t child;  // trie node at the next depth, -1 unconstrained
};

// The order of the output: higher score first, then lower key. As the heap's "less", it puts the worst on top.
template <typename acc_t>
bool better(const Candidate<acc_t>& x, const Candidate<acc_t>& y) {
  return x.score > y.score || (x.score == y.score && x.key < y.key);
}

// The best `capacity` candidates seen so far, worst on top.
template <typename acc_t>
class TopHeap {
 public:
  explicit TopHeap(int64_t capacity) : capacity_(capacity) { items_.reserve(capacity); }
  void clear() { items_.clear(); }
  bool full() const { return static_cast<int64_t>(items_.size()) == capacity_; }
  // Whether a candidate scoring `score`, with a key above every key seen so far, could still get in.
  bool admits_later(acc_t score) const { return !full() || score > items_.front().score; }
  void offer(const Candidate<acc_t>& c) {
    if (!full()) {
      items_.push_back(c);
      std::push_heap(items_.begin(), items_.end(), better<acc_t>);
    } else if (better(c, items_.front())) {
      std::pop_heap(items_.begin(), items_.end(), better<acc_t>);
      items_.back() = c;
      std::push_heap(items_.begin(), items_.end(), better<acc_t>);
    }
  }
  const std::vector<Candidate<acc_t>>& sorted() {
    std::sort_heap(items_.begin(), items_.end(), better<acc_t>);
    return items_;
  }

 private:
  int64_t capacity_;
  std::vector<Candidate<acc_t>> items_;
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> beam_step_cpu(
    const at::Tensor& logits_in, const at::Tensor& scores_in, const at::Tensor& nodes_in,
    const at::Tensor& offsets_in, const at::Tensor& codes_in, int64_t beam_width, bool constrained) {
  const BeamStepArgs a =
      check_beam_step_args(logits_in, scores_in, nodes_in, offsets_in, codes_in, beam_width);
  const auto logits = logits_in.contiguous();
  const auto scores = scores_in.contiguous();
  const auto nodes = nodes_in.contiguous();
  const auto offsets = offsets_in.contiguous();
  const auto codes = codes_in.contiguous();
  const int64_t* off = offsets.const_data_ptr<int64_t>();
  const int64_t* code = codes.const_data_ptr<int64_t>();
  const int64_t* nd = nodes.const_data_ptr<int64_t>();
  if (constrained) {
    for (int64_t i = 0; i < nodes.numel(); ++i) {
      TORCH_CHECK(nd[i] >= -1 && nd[i] < a.nodes, "beam_step: nodes[", i / a.beams, ", ", i % a.beams, "] = ", nd[i],
                  " is outside [-1, ", a.nodes, ")");
    }
  }
  auto [out_scores, out_codes, out_parents, out_nodes] = empty_beam_step_outputs(scores, a);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, logits.scalar_type(), "beam_step", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* lg = logits.const_data_ptr<scalar_t>();
    const acc_t* sc = scores.const_data_ptr<acc_t>();
    acc_t* o_sc = out_scores.mutable_data_ptr<acc_t>();
    int64_t* o_code = out_codes.mutable_data_ptr<int64_t>();
    int64_t* o_par = out_parents.mutable_data_ptr<int64_t>();
    int64_t* o_node = out_nodes.mutable_data_ptr<int64_t>();
    const acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
    at::parallel_for(0, a.batch, 1, [&](int64_t b0, int64_t b1) {
      TopHeap<acc_t> heap(a.out_beams);
      std::vector<acc_t> buffer;  // a bf16 row widened to float
      for (int64_t b = b0; b < b1; ++b) {
        heap.clear();
        for (int64_t w = 0; w < a.beams; ++w) {
          const acc_t s = sc[b * a.beams + w];
          const int64_t node = nd[b * a.beams + w];
          if (!(s > neg_inf) || (constrained && node < 0)) continue;  // dead beam (or NaN score)
          // Every candidate of this beam scores <= s and has a larger key than all kept so far.
          if (!heap.admits_later(s)) continue;
          const acc_t* row = cpu::widened(lg + (b * a.beams + w) * a.width, a.width, buffer);
          const RowStats<acc_t> st = row_stats(row, a.width);
          // s + (x - lse) is the reference's score + log_softmax, and never exceeds s (x - lse <= 0).
          if (!heap.admits_later(s + (st.max - st.lse))) continue;
          if (constrained) {
            const int64_t lo = off[node], hi = off[node + 1];
            TORCH_CHECK(lo >= 0 && lo <= a.children, "beam_step: child_offsets[", node, "] = ", lo,
                        " is not a non-decreasing offset into [0, ", a.children, "]");
            TORCH_CHECK(hi >= lo && hi <= a.children, "beam_step: child_offsets[", node + 1, "] = ", hi,
                        " is not a non-decreasing offset into [0, ", a.children, "]");
            for (int64_t j = lo; j < hi; ++j) {
              const int64_t c = code[j];
              TORCH_CHECK(c >= 0 && c < a.width, "beam_step: child_codes[", j, "] = ", c, " is outside [0, K = ",
                          a.width, ")");
              const acc_t v = s + (row[c] - st.lse);
              if (v > neg_inf) heap.offer({v, w * a.width + c, j});
            }
          } else {
            for (int64_t c = 0; c < a.width; ++c) {
              const acc_t v = s + (row[c] - st.lse);
              if (v > neg_inf) heap.offer({v, w * a.width + c, -1});
            }
          }
        }
        const auto& best = heap.sorted();
        for (int64_t i = 0; i < a.out_beams; ++i) {
          const int64_t o = b * a.out_beams + i;
          if (i < static_cast<int64_t>(best.size())) {
            o_sc[o] = best[i].score;
            o_code[o] = best[i].key % a.width;
            o_par[o] = best[i].key / a.width;
            o_node[o] = best[i].child;
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
