// One query's beam-step selection on raw pointers: the CPU kernel of genrec::beam_step (cpu/beam_step.cpp)
// runs it per query, and the fused CPU beam search (cpu/beam_search.cpp) on logits whose row statistics its
// decode tasks already computed.
//
// Each query keeps its best W' (score, beam * K + code) candidates (TopK). Beam scores arrive best first (the
// previous step's output), and a beam's candidates can never beat its own score, so once W' are kept most
// beams are rejected on their score alone, before their row is read; the rest are rejected on the bound
// score + max(row) - lse(row) before any child is looked at.
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu/rows.h"
#include "cpu/vec_math.h"

namespace genrec::cpu {

template <typename acc_t>
struct RowStats {
  acc_t max;  // largest logit
  acc_t lse;  // log-sum-exp (-inf for a row of -inf)
};

template <typename acc_t>
RowStats<acc_t> row_stats(const acc_t* x, int64_t n) {
  const acc_t m = row_max(x, n);
  if (!(m > -std::numeric_limits<acc_t>::infinity()) || std::isinf(m)) return {m, m};  // all -inf, +inf or NaN
  return {m, m + std::log(sum_exp_shifted(x, n, m))};
}

template <typename acc_t>
struct Candidate {
  acc_t score;
  int64_t key;    // beam * K + code: the tie-break order (lower first)
  int64_t child;  // trie node at the next depth, -1 unconstrained
};

// The order of the output: higher score first, then lower key.
template <typename acc_t>
bool better(const Candidate<acc_t>& x, const Candidate<acc_t>& y) {
  return x.score > y.score || (x.score == y.score && x.key < y.key);
}

// The best `capacity` candidates seen so far. Candidates are appended to a buffer of up to 2 x capacity,
// which is then cut back to the best `capacity` (nth_element) and its worst kept as the bar a candidate must
// beat: amortised O(1) per candidate where a heap pays O(log capacity), and most candidates of a step fall
// below the bar.
template <typename acc_t>
class TopK {
 public:
  explicit TopK(int64_t capacity) : capacity_(capacity) { items_.reserve(2 * capacity); }
  void clear() {
    items_.clear();
    has_bar_ = false;
  }
  // Whether a candidate scoring `score`, with a key above every key seen so far, could still get in.
  bool admits_later(acc_t score) const { return !has_bar_ || score > bar_.score; }
  void offer(const Candidate<acc_t>& c) {
    if (has_bar_ && !better(c, bar_)) return;
    items_.push_back(c);
    if (static_cast<int64_t>(items_.size()) == 2 * capacity_) cut();
  }
  const std::vector<Candidate<acc_t>>& sorted() {
    if (static_cast<int64_t>(items_.size()) > capacity_) cut();
    std::sort(items_.begin(), items_.end(), better<acc_t>);
    return items_;
  }

 private:
  void cut() {
    std::nth_element(items_.begin(), items_.begin() + (capacity_ - 1), items_.end(), better<acc_t>);
    items_.resize(capacity_);
    bar_ = items_.back();  // the capacity-th best: nth_element put it last of the kept
    has_bar_ = true;
  }

  int64_t capacity_;
  std::vector<Candidate<acc_t>> items_;
  Candidate<acc_t> bar_{};
  bool has_bar_ = false;
};

// The trie depth a step reads: node n's children are codes[offsets[n] .. offsets[n + 1]), the next depth's
// nodes with those indices.
struct TrieDepth {
  const int64_t* offsets;
  const int64_t* codes;
  int64_t nodes, children;
};

// Where one query's W' outputs go.
template <typename acc_t>
struct BeamOut {
  acc_t* scores;
  int64_t *codes, *parents, *nodes;
};

// One query: `beams` rows of K logits (row w at logits + w * K), their scores and trie nodes -> the best
// `top` capacity candidates into `out`, padded with -inf / -1. `stats` (one per row) may be null, and the
// rows' statistics are then computed here for the beams that need them. Nodes are assumed in [-1, nodes)
// (the caller checks); the trie arrays are checked where read.
template <typename scalar_t, typename acc_t>
void select_beams(const scalar_t* logits, const RowStats<acc_t>* stats, const acc_t* scores, const int64_t* nodes,
                  int64_t beams, int64_t K, const TrieDepth& trie, bool constrained, TopK<acc_t>& top,
                  std::vector<acc_t>& buffer, int64_t out_beams, const BeamOut<acc_t>& out) {
  const acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  top.clear();
  for (int64_t w = 0; w < beams; ++w) {
    const acc_t s = scores[w];
    const int64_t node = nodes[w];
    if (!(s > neg_inf) || (constrained && node < 0)) continue;  // dead beam (or NaN score)
    // Every candidate of this beam scores <= s and has a larger key than all kept so far.
    if (!top.admits_later(s)) continue;
    const acc_t* row = widened(logits + w * K, K, buffer);
    const RowStats<acc_t> st = stats != nullptr ? stats[w] : row_stats(row, K);
    // s + (x - lse) is the reference's score + log_softmax, and never exceeds s (x - lse <= 0).
    if (!top.admits_later(s + (st.max - st.lse))) continue;
    if (constrained) {
      const int64_t lo = trie.offsets[node], hi = trie.offsets[node + 1];
      TORCH_CHECK(lo >= 0 && lo <= trie.children, "beam_step: child_offsets[", node, "] = ", lo,
                  " is not a non-decreasing offset into [0, ", trie.children, "]");
      TORCH_CHECK(hi >= lo && hi <= trie.children, "beam_step: child_offsets[", node + 1, "] = ", hi,
                  " is not a non-decreasing offset into [0, ", trie.children, "]");
      for (int64_t j = lo; j < hi; ++j) {
        const int64_t c = trie.codes[j];
        TORCH_CHECK(c >= 0 && c < K, "beam_step: child_codes[", j, "] = ", c, " is outside [0, K = ", K, ")");
        const acc_t v = s + (row[c] - st.lse);
        if (v > neg_inf) top.offer({v, w * K + c, j});
      }
    } else {
      for (int64_t c = 0; c < K; ++c) {
        const acc_t v = s + (row[c] - st.lse);
        if (v > neg_inf) top.offer({v, w * K + c, -1});
      }
    }
  }
  const auto& best = top.sorted();
  for (int64_t i = 0; i < out_beams; ++i) {
    if (i < static_cast<int64_t>(best.size())) {
      out.scores[i] = best[i].score;
      out.codes[i] = best[i].key % K;
      out.parents[i] = best[i].key / K;
      out.nodes[i] = best[i].child;
    } else {  // fewer continuations than beams: dead slots that can never win again
      out.scores[i] = neg_inf;
      out.codes[i] = -1;
      out.parents[i] = -1;
      out.nodes[i] = -1;
    }
  }
}

}  // namespace genrec::cpu
