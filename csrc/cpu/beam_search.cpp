// CPU kernel of genrec::beam_search. float32 / float64 where it pays (fused_pays): one fused pass on raw
// buffers, no tensor op inside a search, BLAS GEMMs called directly, the prompt's keys / values laid out once
// per (layer, query, KV head) as the attention kernel's panels (cpu/attention_rows.h) and reused by every
// decode step, and each decode step's rows run as independent tasks on all threads (a beam needs only its
// query's panels and its own keys / values), every task taking its rows through all layers. Otherwise (bf16,
// large weights with many rows): the search over the stage ops (beam_search_common.cpp).
//
// Why: at serving sizes (one query, 50 beams, a small decoder) a search is ~100 stage calls whose arithmetic
// takes a few microseconds each; a tensor op's bookkeeping costs about as much as its work, and ATen would
// split each small GEMM across the threads on its own.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <deque>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "beam_search_common.h"
#include "cpu/attention_rows.h"
#include "cpu/beam_select.h"
#include "cpu/layer_rows.h"

// The BLAS GEMMs torch's CPU build links (MKL on x86): weak, so that a torch without them still loads this
// library and takes the stage-op path instead.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
int MKL_Set_Num_Threads_Local(int n) __attribute__((weak));  // MKL's C name (the lower-case one is Fortran's)
}

namespace genrec {
namespace {

bool have_blas() { return sgemm_ != nullptr && dgemm_ != nullptr; }

// While alive, this thread's BLAS calls run on this thread alone. A row task is already one of the threads:
// MKL would otherwise start its own threads inside each task's GEMMs and oversubscribe the cores (measured:
// prefill of 16 queries on the small preset 21 ms instead of ~3 ms).
class SingleThreadedBlas {
 public:
  SingleThreadedBlas() : previous_(MKL_Set_Num_Threads_Local != nullptr ? MKL_Set_Num_Threads_Local(1) : 0) {}
  ~SingleThreadedBlas() {
    if (MKL_Set_Num_Threads_Local != nullptr) MKL_Set_Num_Threads_Local(previous_);
  }
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  int previous_;
};

// Rows per decode task at most (about): enough for efficient GEMMs, few enough that a task's activations
// (~10 rows of its width each) stay in the core's cache.
constexpr int64_t kMaxTaskRows = 256;

// Row-major c[m, n] = beta c + a[m, k] w[n, k]^T (column-major BLAS: c^T = w a^T). Inside a parallel region
// BLAS runs on the calling thread.
template <typename T>
void gemm_nt(int64_t m, int64_t n, int64_t k, const T* a, const T* w, T beta, T* c) {
  if (m == 0) return;
  const char t = 'T', nt = 'N';
  const int M = static_cast<int>(n), N = static_cast<int>(m), K = static_cast<int>(k);
  const T alpha = 1;
  if constexpr (std::is_same_v<T, float>) {
    sgemm_(&t, &nt, &M, &N, &K, &alpha, w, &K, a, &K, &beta, c, &M);
  } else {
    dgemm_(&t, &nt, &M, &N, &K, &alpha, w, &K, a, &K, &beta, c, &M);
  }
}

// rows of c[m, n] = bias (then a GEMM adds onto it), or nothing to do without a bias.
template <typename T>
T preset_bias(const T* bias, int64_t m, int64_t n, T* c) {
  if (bias == nullptr) return T(0);
  for (int64_t r = 0; r < m; ++r) std::copy_n(bias, n, c + r * n);
  return T(1);
}

template <typename T>
const T* ptr(const at::Tensor& t) {
  return t.const_data_ptr<T>();
}

// One layer's weights as raw pointers (the tensors are held, contiguous, by FusedSearch::held).
template <typename T>
struct LayerPtrs {
  const T *input_norm, *qkv, *o, *post_norm, *gate_up, *down, *qkv_bias, *o_bias;
  T eps, post_eps;
  int64_t inner;
};

// Per-task scratch for `rows` rows of the layer stages.
template <typename T>
struct Scratch {
  std::vector<T> x, normed, qkv, attn, gate_up, act, weights, widen_a, widen_b;
  cpu::RowBlock<T> block;
  Scratch(int64_t rows, int64_t hidden, int64_t qkv_width, int64_t attn_width, int64_t inner, int64_t keys,
          int64_t own, int64_t dim)
      : x(rows * hidden), normed(rows * hidden), qkv(rows * qkv_width), attn(rows * attn_width),
        gate_up(rows * 2 * inner), act(rows * inner), weights(cpu::kRowsPerPass * cpu::round_up(keys + own)),
        block(own, dim) {}
};

template <typename T>
struct FusedSearch {
  const BeamSearchInputs& in;
  std::deque<at::Tensor> held;  // contiguous inputs whose pointers are used (a deque: references stay valid)
  std::vector<LayerPtrs<T>> layers;
  int64_t batch, plen, hidden, heads, kv_heads, dim, group, levels, width, n_layers, qkv_width, attn_width, inner;
  int64_t rotary_rows;  // per query: its P prompt positions and L - 1 decode positions
  int64_t own_block;    // one beam's decoded keys / values: [layer][k|v][KV head][L - 1][D]
  T scale;
  const T *embeds, *cos, *sin, *final_norm, *head, *head_bias, *sid_embedding;
  const bool* mask;
  std::vector<int64_t> level_offset;
  std::vector<cpu::TrieDepth> trie;
  std::vector<cpu::PromptPanel<T>> panels;  // [layer][query][KV head]

  explicit FusedSearch(const BeamSearchInputs& inputs) : in(inputs) {
    const auto hold = [&](const at::Tensor& t) -> const at::Tensor& { return held.emplace_back(t.contiguous()); };
    batch = in.embeds.size(0), plen = in.embeds.size(1), hidden = in.embeds.size(2);
    heads = in.num_heads, kv_heads = in.num_kv_heads, dim = in.cos.size(2), group = heads / kv_heads;
    levels = static_cast<int64_t>(in.level_sizes.size()), width = in.beam_width;
    n_layers = static_cast<int64_t>(in.layer_weights.size()) / kLayerWeights;
    qkv_width = (heads + 2 * kv_heads) * dim, attn_width = heads * dim, inner = 0;
    rotary_rows = plen + levels - 1, own_block = n_layers * 2 * kv_heads * (levels - 1) * dim;
    scale = static_cast<T>(in.scaling);
    embeds = ptr<T>(hold(in.embeds)), cos = ptr<T>(hold(in.cos)), sin = ptr<T>(hold(in.sin));
    mask = hold(in.prompt_mask).template const_data_ptr<bool>();
    final_norm = ptr<T>(hold(in.final_norm_weight)), head = ptr<T>(hold(in.head_weight));
    head_bias = in.head_bias.has_value() ? ptr<T>(hold(*in.head_bias)) : nullptr;
    sid_embedding = ptr<T>(hold(in.sid_embedding));
    for (int64_t i = 0; i < n_layers; ++i) {
      const auto* w = in.layer_weights.data() + i * kLayerWeights;
      const auto bias = [&](int64_t j) -> const T* {
        const auto b = in.layer_biases.get(2 * i + j);
        return b.has_value() ? ptr<T>(hold(*b)) : nullptr;
      };
      layers.push_back({ptr<T>(hold(w[0])), ptr<T>(hold(w[1])), ptr<T>(hold(w[2])), ptr<T>(hold(w[3])),
                        ptr<T>(hold(w[4])), ptr<T>(hold(w[5])), bias(0), bias(1), static_cast<T>(in.layer_eps[2 * i]),
                        static_cast<T>(in.layer_eps[2 * i + 1]), w[4].size(0) / 2});
      inner = std::max(inner, layers.back().inner);
    }
    level_offset = level_offsets(in.level_sizes);
    for (int64_t l = 0; l < levels; ++l) {
      const auto& offsets = hold(in.child_offsets[l]);
      const auto& codes = hold(in.child_codes[l]);
      trie.push_back({offsets.template const_data_ptr<int64_t>(), codes.template const_data_ptr<int64_t>(),
                      offsets.size(0) - 1, codes.size(0)});
    }
    panels.resize(n_layers * batch * kv_heads);
  }

  cpu::PromptPanel<T>& panel(int64_t layer, int64_t b, int64_t kvh) {
    return panels[(layer * batch + b) * kv_heads + kvh];
  }

  // Attention of rows [first, first + count) of s.qkv, all of query b, into s.attn: row r's queries against
  // the first visible(r) keys of the query's layer panels (-1: a padding position, whose output is never read)
  // and its `own` decoded keys / values, own_at(r, layer, 0 | 1 for k | v, KV head) + t * D for token t. Rows
  // (r, query head) of one KV head that see the same keys are attended kRowsPerPass at a time, so that each
  // load of the panel serves them all.
  template <typename Visible, typename OwnAt>
  void attend(int64_t layer, int64_t b, int64_t first, int64_t count, Scratch<T>& s, int64_t own,
              const Visible& visible, const OwnAt& own_at) {
    auto& block = s.block;
    const int64_t stride = cpu::round_up(plen + own), total = count * group;
    for (int64_t kvh = 0; kvh < kv_heads; ++kvh) {
      const auto& p = panel(layer, b, kvh);
      const auto out_at = [&](int64_t j) {  // row j = (r, g): query head kvh * group + g of row first + j / group
        return s.attn.data() + (first + j / group) * attn_width + (kvh * group + j % group) * dim;
      };
      for (int64_t j = 0; j < total;) {
        const int64_t v = visible(first + j / group);
        if (v < 0) {
          std::fill_n(out_at(j), dim, T(0));
          ++j;
          continue;
        }
        int64_t m = 0;
        for (; m < cpu::kRowsPerPass && j + m < total && visible(first + (j + m) / group) == v; ++m) {
          const int64_t r = first + (j + m) / group;
          const T* q = s.qkv.data() + r * qkv_width + (kvh * group + (j + m) % group) * dim;
          for (int64_t d = 0; d < dim; ++d) block.query(m)[d] = q[d] * scale;
          for (int64_t t = 0; t < own; ++t) {
            std::copy_n(own_at(r, layer, 0, kvh) + t * dim, dim, block.own_key(m, t));
            std::copy_n(own_at(r, layer, 1, kvh) + t * dim, dim, block.own_value(m, t));
          }
        }
        cpu::attend_rows(m, block, p, v, dim, s.weights.data(), stride);
        for (int64_t i = 0; i < m; ++i) std::copy_n(block.result(i), dim, out_at(j + i));
        j += m;
      }
    }
  }

  // Rows x[r0, r1) of s through layer i after its attention (s.attn): x += attn o^T (+ o bias), then x +=
  // SwiGLU(RMSNorm(x)).
  void finish_layer(const LayerPtrs<T>& w, int64_t r0, int64_t r1, Scratch<T>& s) {
    const int64_t n = r1 - r0;
    T* x = s.x.data() + r0 * hidden;
    if (w.o_bias != nullptr) {
      for (int64_t r = 0; r < n; ++r) {
        for (int64_t j = 0; j < hidden; ++j) x[r * hidden + j] += w.o_bias[j];
      }
    }
    gemm_nt(n, hidden, attn_width, s.attn.data() + r0 * attn_width, w.o, T(1), x);
    for (int64_t r = 0; r < n; ++r) {
      cpu::rms_norm_row(x + r * hidden, w.post_norm, w.post_eps, hidden, s.normed.data() + r * hidden, s.widen_a);
    }
    gemm_nt(n, 2 * w.inner, hidden, s.normed.data(), w.gate_up, T(0), s.gate_up.data());
    for (int64_t r = 0; r < n; ++r) {
      cpu::silu_mul_row(s.gate_up.data() + r * 2 * w.inner, w.inner, s.act.data() + r * w.inner, s.widen_a, s.widen_b);
    }
    gemm_nt(n, hidden, w.inner, s.act.data(), w.down, T(1), x);
  }

  // RMSNorm, the q|k|v GEMM and rotary embedding of rows [0, n) of s.x; row r at rotary row cos_row(r).
  template <typename CosRow>
  void project_qkv(const LayerPtrs<T>& w, int64_t n, Scratch<T>& s, const CosRow& cos_row) {
    for (int64_t r = 0; r < n; ++r) {
      cpu::rms_norm_row(s.x.data() + r * hidden, w.input_norm, w.eps, hidden, s.normed.data() + r * hidden, s.widen_a);
    }
    const T beta = preset_bias(w.qkv_bias, n, qkv_width, s.qkv.data());
    gemm_nt(n, qkv_width, hidden, s.normed.data(), w.qkv, beta, s.qkv.data());
    for (int64_t r = 0; r < n; ++r) {
      const int64_t c = cos_row(r);
      cpu::rotary_row(s.qkv.data() + r * qkv_width, cos + c * dim, sin + c * dim, heads + kv_heads, dim);
    }
  }

  // Final RMSNorm of rows [r0, r0 + n) of s.x, then their level-`level` logits into out [n, K_level] and each
  // row's max / log-sum-exp into stats (the beam step's, computed here in the row's task).
  void logits(int64_t level, int64_t r0, int64_t n, Scratch<T>& s, T* out, cpu::RowStats<T>* stats) {
    for (int64_t r = 0; r < n; ++r) {
      cpu::rms_norm_row(s.x.data() + (r0 + r) * hidden, final_norm, static_cast<T>(in.final_eps), hidden,
                        s.normed.data() + r * hidden, s.widen_a);
    }
    const int64_t k = in.level_sizes[level];
    const T beta = preset_bias(head_bias ? head_bias + level_offset[level] : nullptr, n, k, out);
    gemm_nt(n, k, hidden, s.normed.data(), head + level_offset[level] * hidden, beta, out);
    for (int64_t r = 0; r < n; ++r) stats[r] = cpu::row_stats(out + r * k, k);
  }

  // Every prompt through every layer (queries in parallel), building the panels; the level-0 logits [B, K_0].
  void prefill(std::vector<T>& logits_out, std::vector<cpu::RowStats<T>>& stats) {
    const int64_t k = in.level_sizes[0];
    logits_out.resize(batch * k);
    stats.resize(batch);
    at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
      const SingleThreadedBlas one_thread;
      Scratch<T> s(plen, hidden, qkv_width, attn_width, inner, plen, 0, dim);
      std::vector<int64_t> visible(plen);  // real prompt positions up to and including p; -1 for padding
      for (int64_t b = b0; b < b1; ++b) {
        const bool* m = mask + b * plen;
        for (int64_t p = 0, seen = 0; p < plen; ++p) visible[p] = m[p] ? ++seen : -1;
        std::copy_n(embeds + b * plen * hidden, plen * hidden, s.x.begin());
        for (int64_t i = 0; i < n_layers; ++i) {
          const auto& w = layers[i];
          project_qkv(w, plen, s, [&](int64_t r) { return b * rotary_rows + r; });
          for (int64_t kvh = 0; kvh < kv_heads; ++kvh) {
            auto& p = panel(i, b, kvh) = cpu::PromptPanel<T>(plen, dim);
            const T* key = s.qkv.data() + (heads + kvh) * dim;
            p.load(key, key + kv_heads * dim, qkv_width, m, plen, dim);
          }
          // The last layer only needs the last position (always real: prompts are left-padded).
          const int64_t first = i + 1 == n_layers ? plen - 1 : 0;
          attend(i, b, first, plen - first, s, 0, [&](int64_t r) { return visible[r]; },
                 [](int64_t, int64_t, int64_t, int64_t) -> const T* { return nullptr; });
          finish_layer(w, first, plen, s);
        }
        logits(0, plen - 1, 1, s, logits_out.data() + b * k, stats.data() + b);
      }
    });
  }

  // Decode step t: every beam's level-t token (codes, following parents) through every layer at position
  // P + t, its keys / values written to slot t of next_own after its parent's slots < t; the level-(t + 1)
  // logits [B W, K] and their row statistics.
  void decode_step(int64_t t, const int64_t* parents, const int64_t* codes, const T* own, T* next_own,
                   std::vector<T>& logits_out, std::vector<cpu::RowStats<T>>& stats) {
    const int64_t steps = levels - 1, rows = batch * width, k = in.level_sizes[t + 1];
    logits_out.resize(rows * k);
    stats.resize(rows);
    // At least one task per thread, and tasks of at most ~kMaxTaskRows rows, whose scratch stays in cache.
    const auto tasks = split_rows(batch, width, std::max<int64_t>(at::get_num_threads(), rows / kMaxTaskRows));
    at::parallel_for(0, static_cast<int64_t>(tasks.size()), 1, [&](int64_t k0, int64_t k1) {
      const SingleThreadedBlas one_thread;
      for (int64_t task = k0; task < k1; ++task) {
        const auto [b0, nb, w0, nw] = tasks[task];
        const int64_t r0 = b0 * width + w0, n = nb * nw;  // task row i is beam (b0 + i / nw, w0 + i % nw)
        Scratch<T> s(n, hidden, qkv_width, attn_width, inner, plen, t + 1, dim);
        for (int64_t i = 0; i < n; ++i) {
          const int64_t r = r0 + i;
          if (t > 0) {
            const int64_t parent = r / width * width + std::max<int64_t>(parents[r], 0);
            std::copy_n(own + parent * own_block, own_block, next_own + r * own_block);
          }
          const int64_t token = level_offset[t] + std::max<int64_t>(codes[r], 0);
          std::copy_n(sid_embedding + token * hidden, hidden, s.x.begin() + i * hidden);
        }
        const auto own_at = [&](int64_t i, int64_t layer, int64_t kv, int64_t kvh) -> T* {
          return next_own + (r0 + i) * own_block + ((layer * 2 + kv) * kv_heads + kvh) * steps * dim;
        };
        for (int64_t layer = 0; layer < n_layers; ++layer) {
          const auto& w = layers[layer];
          project_qkv(w, n, s, [&](int64_t i) { return (b0 + i / nw) * rotary_rows + plen + t; });
          for (int64_t i = 0; i < n; ++i) {
            for (int64_t kvh = 0; kvh < kv_heads; ++kvh) {
              const T* key = s.qkv.data() + i * qkv_width + (heads + kvh) * dim;
              std::copy_n(key, dim, own_at(i, layer, 0, kvh) + t * dim);
              std::copy_n(key + kv_heads * dim, dim, own_at(i, layer, 1, kvh) + t * dim);
            }
          }
          for (int64_t q = 0; q < nb; ++q) {  // per query: its rows share its panels
            const int64_t visible = panel(layer, b0 + q, 0).visible;
            attend(layer, b0 + q, q * nw, nw, s, t + 1, [&](int64_t) { return visible; }, own_at);
          }
          finish_layer(w, 0, n, s);
        }
        logits(t + 1, 0, n, s, logits_out.data() + r0 * k, stats.data() + r0);
      }
    });
  }

  std::tuple<at::Tensor, at::Tensor, at::Tensor> run() {
    const auto neg_inf = -std::numeric_limits<T>::infinity();
    std::vector<T> logits_buf;
    std::vector<cpu::RowStats<T>> stats;
    prefill(logits_buf, stats);
    // Per level: the beams in (scores, trie nodes; W_in = 1 at level 0) and out (scores, codes, parents, nodes).
    std::vector<T> scores(batch, T(0)), next_scores(batch * width);
    std::vector<int64_t> nodes(batch, 0), next_nodes(batch * width), codes(batch * width), parents(batch * width);
    // Each beam's codes so far, [B, W_in, L], and each beam's decoded keys / values, [B W][layer][k|v][KV head]
    // [step][D]: a beam's whole block is contiguous, so following a parent is one copy.
    std::vector<int64_t> history(batch * levels), next_history(batch * width * levels);
    // Uninitialised (a slot is written before it is read): at many queries these are megabytes.
    std::unique_ptr<T[]> own(new T[batch * width * own_block]), next_own(new T[batch * width * own_block]);
    int64_t beams_in = 1;
    for (int64_t level = 0;; ++level) {
      const int64_t k = in.level_sizes[level];
      at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
        cpu::TopK<T> top(width);
        std::vector<T> buffer;
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t i = b * beams_in, o = b * width;
          cpu::select_beams<T, T>(logits_buf.data() + i * k, stats.data() + i, scores.data() + i, nodes.data() + i,
                                  beams_in, k, trie[level], in.constrained, top, buffer, width,
                                  {next_scores.data() + o, codes.data() + o, parents.data() + o, next_nodes.data() + o});
        }
      });
      scores.swap(next_scores), nodes.swap(next_nodes);
      next_scores.resize(batch * width), next_nodes.resize(batch * width);
      for (int64_t r = 0; r < batch * width; ++r) {  // dead slots follow beam 0; their -inf keeps them dead
        const int64_t from = (r / width * beams_in + std::max<int64_t>(parents[r], 0)) * levels;
        std::copy_n(history.begin() + from, level, next_history.begin() + r * levels);
        next_history[r * levels + level] = codes[r];
      }
      history.swap(next_history);
      next_history.resize(batch * width * levels);
      if (level + 1 == levels) break;
      decode_step(level, parents.data(), codes.data(), own.get(), next_own.get(), logits_buf, stats);
      own.swap(next_own);
      beams_in = width;
    }
    auto scores_t = at::empty({batch, width}, in.embeds.options());
    auto codes_t = at::empty({batch, width, levels}, in.embeds.options().dtype(at::kLong));
    auto nodes_t = at::empty({batch, width}, codes_t.options());
    std::copy(scores.begin(), scores.end(), scores_t.mutable_data_ptr<T>());
    std::copy(nodes.begin(), nodes.end(), nodes_t.mutable_data_ptr<int64_t>());
    int64_t* out_codes = codes_t.mutable_data_ptr<int64_t>();
    for (int64_t r = 0; r < batch * width; ++r) {  // a dead slot's earlier codes are its stand-in parent's
      for (int64_t l = 0; l < levels; ++l) out_codes[r * levels + l] = scores[r] > neg_inf ? history[r * levels + l] : -1;
    }
    return {scores_t, codes_t, nodes_t};
  }
};

void run_row_tasks(int64_t n, const std::function<void(int64_t)>& task) {
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    // Worker threads start with default dispatch state: keep the stage ops below autograd, as on the caller's
    // thread (the search is inference-only; its weights may still require grad).
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (int64_t k = begin; k < end; ++k) task(k);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> beam_search_stages_cpu(const BeamSearchInputs& in) {
  return beam_search_impl(in, {at::get_num_threads(), &run_row_tasks});
}

// Whether the fused pass beats the stage ops for this search. Its row tasks each stream every layer's weights
// (and its prefill every query's), which is free while they stay in cache, and where there are few rows the
// stage ops' per-call cost dominates anyway; with large weights and many rows, the stage ops' GEMMs over all
// rows at once, on all threads, win. Measured (2 cores): tiny preset (0.4 MB of layer weights) fused 2.5x /
// 1.2x / 1.2x faster at 1 / 16 / 64 queries of 50 beams; small preset (12.5 MB) 1.2x-1.5x faster at 1 query,
// 0.8x-0.9x at 16, 1.0x at 64.
bool fused_pays(const BeamSearchInputs& in) {
  constexpr int64_t kCachedWeightBytes = 4 << 20, kFewRows = 128;
  int64_t bytes = 0;
  for (const auto& w : in.layer_weights) bytes += w.numel() * static_cast<int64_t>(w.element_size());
  return bytes <= kCachedWeightBytes || in.embeds.size(0) * in.beam_width <= kFewRows;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> beam_search_cpu(const BeamSearchInputs& in) {
  const auto t = in.embeds.scalar_type();
  if (!have_blas() || (t != at::kFloat && t != at::kDouble) || !fused_pays(in)) return beam_search_stages_cpu(in);
  check_beam_search_inputs(in);
  if (t == at::kFloat) return FusedSearch<float>(in).run();
  return FusedSearch<double>(in).run();
}

}  // namespace

TORCH_LIBRARY_IMPL(genrec, CPU, m) {
  m.impl("beam_search", &beam_search_kernel<&beam_search_cpu>);
  m.impl("_beam_search_stages", &beam_search_kernel<&beam_search_stages_cpu>);
}

}  // namespace genrec
