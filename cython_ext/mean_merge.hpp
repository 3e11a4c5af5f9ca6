// One task of the exact hierarchical mean-affinity agglomeration
// (../shared/AGGLOMERATION.md; ABISS, Lu, Zlateski & Seung, arXiv 2106.10795).
//
// A task merges clusters along their best edge, best first, where edges are
// ordered by a strict total order that survives merging:
//   * a larger mean affinity S / N is better, compared exactly by
//     cross-multiplication in 128 bits (S1 * N2 vs S2 * N1);
//   * on equal means the larger tie key tau is better; tau is a 128-bit value
//     (tau_hi, tau_lo) compared lexicographically, for a cluster edge the
//     largest fragment-edge key inside it.
// A merge of two cluster edges gives (S1 + S2, N1 + N2, max(tau1, tau2)), so
// the key of a merged edge lies between the keys of its parts: the order is
// reducible and mutually best pairs stay mutually best.
//
// A cluster whose level lambda exceeds the task level may still receive
// edges from outside the task ("open"). Each cluster carries a future bound
// per octree level: an upper bound on the mean affinity of every edge below
// the merge bound that it can still receive from outside a task at that level
// (encoded as 1 + ceil(2^24 S / N) of the best such fragment edge; 0: none;
// kUnknownFuture: no bound known). An edge popped from the heap (the best
// remaining edge of both its clusters) merges them iff neither is blocked and
// its mean exceeds both clusters' future bounds strictly: then it is better
// than any edge either can ever receive (an edge between clusters is a sum of
// fragment edges, so its mean is at most their best mean), i.e. the pair is
// mutually best in the whole graph. Otherwise both clusters are blocked
// (contagion): a blocked cluster waits for information from outside the task
// and never merges in it. Without future bounds every open cluster has
// kUnknownFuture, which blocks it at its first popped edge: the plain ABISS
// rule (frozen clusters never merge and freeze their partners).
// Only edges with a score 1 - S / (255 N) below the bound p / q enter the
// heap. After the heap runs empty, clusters that are neither blocked nor open
// are done; the others with the edges among them form the residual; every
// other edge touches a done cluster and is dropped.
//
// Header-only, no Python: reached through cython_ext/_mean_merge.pyx.

#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <queue>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace blockwise {
namespace mean_merge {

using u128 = unsigned __int128;

// The largest total contact count N over all edges of a task: keeps every
// sum in 64 bits and every product of the comparisons in 128 bits.
constexpr uint64_t kMaxTotalCount = uint64_t{1} << 56;

// Whether edge 1 (s1, n1, tau1) comes before edge 2 in the merge order.
inline bool better(uint64_t s1, uint64_t n1, uint64_t th1, uint64_t tl1, uint64_t s2, uint64_t n2,
                   uint64_t th2, uint64_t tl2) {
  const u128 left = static_cast<u128>(s1) * n2;
  const u128 right = static_cast<u128>(s2) * n1;
  if (left != right) return left > right;
  if (th1 != th2) return th1 > th2;
  return tl1 > tl2;
}

// Whether the score 1 - s / (255 n) is below the bound p / q (q > 0, n > 0,
// s <= 255 n, n < 2^56): q (255 n - s) < p 255 n, exactly.
inline bool below(uint64_t s, uint64_t n, uint64_t p, uint64_t q) {
  const u128 full = static_cast<u128>(n) * 255u;
  return static_cast<u128>(q) * (full - s) < static_cast<u128>(p) * full;
}

// Open-addressing map cluster index -> edge index with linear probing and
// backward-shift deletion; keys are < 0xFFFFFFFF. About 16 bytes per entry,
// a fraction of what std::unordered_map takes, which matters at 10^7 edges.
class AdjacencyMap {
 public:
  static constexpr uint32_t kEmpty = 0xFFFFFFFFu;
  struct Slot {
    uint32_t key;
    uint32_t value;
  };

  size_t size() const { return size_; }
  const std::vector<Slot>& slots() const { return slots_; }

  // The slot of key, or nullptr.
  Slot* find(uint32_t key) {
    if (size_ == 0) return nullptr;
    size_t i = home(key);
    while (true) {
      Slot& slot = slots_[i];
      if (slot.key == key) return &slot;
      if (slot.key == kEmpty) return nullptr;
      i = (i + 1) & mask_;
    }
  }

  // Insert key (which must be absent).
  void insert(uint32_t key, uint32_t value) {
    if ((size_ + 1) * 4 > slots_.size() * 3) grow();
    size_t i = home(key);
    while (slots_[i].key != kEmpty) i = (i + 1) & mask_;
    slots_[i] = Slot{key, value};
    ++size_;
  }

  // Remove key if present.
  void erase(uint32_t key) {
    if (size_ == 0) return;
    size_t i = home(key);
    while (slots_[i].key != key) {
      if (slots_[i].key == kEmpty) return;
      i = (i + 1) & mask_;
    }
    size_t j = i;
    while (true) {
      j = (j + 1) & mask_;
      if (slots_[j].key == kEmpty) break;
      const size_t k = home(slots_[j].key);
      // move slot j back to i unless its home lies cyclically in (i, j]
      const bool stays = (i <= j) ? (i < k && k <= j) : (i < k || k <= j);
      if (!stays) {
        slots_[i] = slots_[j];
        i = j;
      }
    }
    slots_[i].key = kEmpty;
    --size_;
  }

  void release() {
    std::vector<Slot>().swap(slots_);
    size_ = 0;
    mask_ = 0;
    shift_ = 64;
  }

 private:
  size_t home(uint32_t key) const {
    return static_cast<size_t>((static_cast<uint64_t>(key) * 0x9E3779B97F4A7C15ull) >> shift_);
  }

  void grow() {
    const size_t capacity = slots_.empty() ? 4 : slots_.size() * 2;
    std::vector<Slot> old;
    old.swap(slots_);
    slots_.assign(capacity, Slot{kEmpty, 0});
    mask_ = capacity - 1;
    shift_ = 64;
    for (size_t c = capacity; c > 1; c >>= 1) --shift_;
    size_ = 0;
    for (const Slot& slot : old) {
      if (slot.key != kEmpty) insert(slot.key, slot.value);
    }
  }

  std::vector<Slot> slots_;
  size_t size_ = 0;
  size_t mask_ = 0;
  unsigned shift_ = 64;
};

// Cluster edges as parallel arrays (inputs and outputs).
struct EdgeList {
  std::vector<uint64_t> a, b, s, n, tau_hi, tau_lo;

  void reserve(size_t count) {
    a.reserve(count);
    b.reserve(count);
    s.reserve(count);
    n.reserve(count);
    tau_hi.reserve(count);
    tau_lo.reserve(count);
  }
  void push(uint64_t a_, uint64_t b_, uint64_t s_, uint64_t n_, uint64_t th, uint64_t tl) {
    a.push_back(a_);
    b.push_back(b_);
    s.push_back(s_);
    n.push_back(n_);
    tau_hi.push_back(th);
    tau_lo.push_back(tl);
  }
};

// Future bound of a cluster that may receive any edge: blocks every merge.
constexpr uint32_t kUnknownFuture = 0xFFFFFFFFu;
// Fixed-point scale of the future bounds: 2^24 (255 * 2^24 + 1 < 2^32).
constexpr unsigned kFutureShift = 24;

// Whether an edge (s, n) has a mean s / n above the future bound `future`
// (see the file comment), exactly: 2^24 s > (future - 1) n.
inline bool beats_future(uint64_t s, uint64_t n, uint32_t future) {
  if (future == 0) return true;
  return (static_cast<u128>(s) << kFutureShift) > static_cast<u128>(future - 1) * n;
}

// One part of a task's input edges (e.g. one child's residual): parallel arrays.
struct EdgePart {
  const uint64_t* a;
  const uint64_t* b;
  const uint64_t* s;
  const uint64_t* n;
  const uint64_t* tau_hi;
  const uint64_t* tau_lo;
  size_t count;
};

struct TaskInput {
  const uint64_t* ids;
  const uint8_t* levels;
  // (n_clusters, n_future_levels) row-major future bounds, or nullptr
  const uint32_t* futures;
  size_t n_future_levels;
  size_t n_clusters;
  // the edges, read part after part: no concatenated copy is needed
  std::vector<EdgePart> parts;
};

namespace detail {

struct HeapEntry {
  uint64_t s, n, tau_hi, tau_lo;
  uint32_t edge;
};

struct WorseEntry {
  bool operator()(const HeapEntry& x, const HeapEntry& y) const {
    return better(y.s, y.n, y.tau_hi, y.tau_lo, x.s, x.n, x.tau_hi, x.tau_lo);
  }
};

inline std::string id_text(uint64_t id) { return std::to_string(id); }

}  // namespace detail

// One task: run() merges; the outputs are then read field by field, so that
// the caller can copy them into its own arrays without a second full copy.
class Task {
 public:
  // merges in the order done; a < b are the two clusters' ids (the smallest
  // fragment id of each), the merged cluster keeps the id a
  EdgeList records;
  uint64_t n_stale_pops = 0;

  // Run the task at octree level `level` with merge bound p / q.
  void run(const TaskInput& in, unsigned level, uint64_t p, uint64_t q);

  size_t n_residual_clusters() const { return kept_.size(); }
  size_t n_residual_edges() const { return residual_.size(); }
  size_t n_dropped() const { return dropped_.size(); }
  size_t n_future_levels() const { return n_future_levels_; }

  // residual clusters, sorted by id: ids, levels and future bounds (row-major)
  void fill_residual_clusters(uint64_t* ids, uint8_t* levels, uint32_t* futures) const {
    for (size_t i = 0; i < kept_.size(); ++i) {
      const uint32_t c = kept_[i];
      ids[i] = cluster_id_[c];
      levels[i] = cluster_level_[c];
      for (size_t k = 0; k < n_future_levels_; ++k) {
        futures[i * n_future_levels_ + k] = future_[c * n_future_levels_ + k];
      }
    }
  }

  // field 0..5 = a, b, s, n, tau_hi, tau_lo of the residual edges (which = 0,
  // a < b, sorted by (a, b)) or the dropped edges (which = 1, a < b, in the
  // order of the merged input edges)
  void fill_edges(int which, int field, uint64_t* out) const {
    const std::vector<uint32_t>& list = which == 0 ? residual_ : dropped_;
    for (size_t i = 0; i < list.size(); ++i) {
      const uint32_t f = list[i];
      uint64_t value = 0;
      switch (field) {
        case 0: value = std::min(cluster_id_[ea_[f]], cluster_id_[eb_[f]]); break;
        case 1: value = std::max(cluster_id_[ea_[f]], cluster_id_[eb_[f]]); break;
        case 2: value = es_[f]; break;
        case 3: value = en_[f]; break;
        case 4: value = eth_[f]; break;
        default: value = etl_[f]; break;
      }
      out[i] = value;
    }
  }

 private:
  std::vector<uint64_t> cluster_id_;
  std::vector<uint8_t> cluster_level_;
  std::vector<uint32_t> future_;
  size_t n_future_levels_ = 0;
  std::vector<uint32_t> ea_, eb_;
  std::vector<uint64_t> es_, en_, eth_, etl_;
  std::vector<uint32_t> kept_, residual_, dropped_;
};

inline void Task::run(const TaskInput& in, unsigned level, uint64_t p, uint64_t q) {
  using detail::HeapEntry;
  if (q == 0) throw std::invalid_argument("the bound's denominator q must be > 0");
  if (in.n_clusters >= AdjacencyMap::kEmpty) {
    throw std::overflow_error("a task holds at most 2^32 - 2 clusters, received " +
                              std::to_string(in.n_clusters));
  }
  size_t n_in = 0;
  for (const EdgePart& part : in.parts) n_in += part.count;
  if (n_in >= 0xFFFFFFFFull) {
    throw std::overflow_error("a task holds at most 2^32 - 2 edges, received " +
                              std::to_string(n_in));
  }
  const size_t n_clusters = in.n_clusters;
  const size_t n_levels = in.futures != nullptr ? in.n_future_levels : 0;

  // cluster id -> index, by binary search in the sorted ids
  std::vector<std::pair<uint64_t, uint32_t>> by_id(n_clusters);
  for (size_t i = 0; i < n_clusters; ++i) by_id[i] = {in.ids[i], static_cast<uint32_t>(i)};
  std::sort(by_id.begin(), by_id.end());
  for (size_t i = 1; i < n_clusters; ++i) {
    if (by_id[i].first == by_id[i - 1].first) {
      throw std::invalid_argument("cluster ids must be unique, but " +
                                  detail::id_text(by_id[i].first) + " appears more than once");
    }
  }
  auto index_of = [&](uint64_t id, const char* name, size_t e) -> uint32_t {
    auto it = std::lower_bound(by_id.begin(), by_id.end(), std::make_pair(id, uint32_t{0}));
    if (it == by_id.end() || it->first != id) {
      throw std::invalid_argument(std::string("edge ") + std::to_string(e) + " has " + name +
                                  " = " + detail::id_text(id) + ", which is not a cluster id");
    }
    return it->second;
  };

  std::vector<uint64_t>& cluster_id = cluster_id_;
  std::vector<uint8_t>& cluster_level = cluster_level_;
  cluster_id.assign(in.ids, in.ids + n_clusters);
  cluster_level.assign(in.levels, in.levels + n_clusters);
  n_future_levels_ = n_levels;
  future_.assign(in.futures != nullptr ? in.futures : nullptr,
                 in.futures != nullptr ? in.futures + n_clusters * n_levels : nullptr);
  // the future bound at this level; without bounds, an open cluster may
  // receive anything
  std::vector<uint32_t> future_now(n_clusters);
  for (size_t i = 0; i < n_clusters; ++i) {
    if (n_levels > 0) {
      future_now[i] = level < n_levels ? future_[i * n_levels + level] : 0;
    } else {
      future_now[i] = cluster_level[i] > level ? kUnknownFuture : 0;
    }
  }
  std::vector<uint8_t> blocked(n_clusters, 0);
  std::vector<uint8_t> cluster_alive(n_clusters, 1);
  std::vector<AdjacencyMap> adjacency(n_clusters);

  // edges, summed by cluster pair
  std::vector<uint32_t>& ea = ea_;
  std::vector<uint32_t>& eb = eb_;
  std::vector<uint64_t>& es = es_;
  std::vector<uint64_t>& en = en_;
  std::vector<uint64_t>& eth = eth_;
  std::vector<uint64_t>& etl = etl_;
  ea.reserve(n_in);
  eb.reserve(n_in);
  es.reserve(n_in);
  en.reserve(n_in);
  eth.reserve(n_in);
  etl.reserve(n_in);
  u128 total_count = 0;
  size_t e = 0;  // the edge's index over all parts, for messages
  for (const EdgePart& part : in.parts) {
    for (size_t i = 0; i < part.count; ++i, ++e) {
      const uint64_t s = part.s[i], n = part.n[i];
      if (n == 0) {
        throw std::invalid_argument("edge " + std::to_string(e) +
                                    " has N = 0; every edge needs N >= 1");
      }
      total_count += n;
      if (total_count >= kMaxTotalCount) {
        throw std::overflow_error("the edges' counts N sum to 2^56 or more; split the task");
      }
      if (s > 255 * n) {
        throw std::invalid_argument("edge " + std::to_string(e) + " has S = " +
                                    std::to_string(s) + " > 255 N = " +
                                    std::to_string(255 * n) +
                                    "; S sums uint8 affinities over N contacts");
      }
      const uint32_t x = index_of(part.a[i], "a", e);
      const uint32_t y = index_of(part.b[i], "b", e);
      if (x == y) {
        throw std::invalid_argument("edge " + std::to_string(e) + " joins cluster " +
                                    detail::id_text(part.a[i]) + " to itself");
      }
      const uint64_t th = part.tau_hi[i], tl = part.tau_lo[i];
      AdjacencyMap::Slot* slot = adjacency[x].find(y);
      if (slot != nullptr) {
        const uint32_t f = slot->value;
        es[f] += s;
        en[f] += n;
        if (th > eth[f] || (th == eth[f] && tl > etl[f])) {
          eth[f] = th;
          etl[f] = tl;
        }
        continue;
      }
      const uint32_t f = static_cast<uint32_t>(ea.size());
      ea.push_back(x);
      eb.push_back(y);
      es.push_back(s);
      en.push_back(n);
      eth.push_back(th);
      etl.push_back(tl);
      adjacency[x].insert(y, f);
      adjacency[y].insert(x, f);
    }
  }
  std::vector<std::pair<uint64_t, uint32_t>>().swap(by_id);
  const size_t n_edges = ea.size();
  // 0: dead (merged along or summed into another), 1: alive with its input
  // statistics, 2: alive with statistics changed by a merge
  std::vector<uint8_t> edge_state(n_edges, 1);

  // The queue is the initial edges sorted best first (read with a cursor; an
  // entry is valid while its edge keeps its input statistics) plus a heap of
  // the edges whose statistics changed by merging. The sorted part holds only
  // edge indices (4 bytes per edge instead of a 40-byte heap entry).
  std::vector<uint32_t> initial;
  for (uint32_t f = 0; f < n_edges; ++f) {
    if (below(es[f], en[f], p, q)) initial.push_back(f);
  }
  std::sort(initial.begin(), initial.end(), [&](uint32_t f, uint32_t g) {
    return better(es[f], en[f], eth[f], etl[f], es[g], en[g], eth[g], etl[g]);
  });
  size_t cursor = 0;
  const detail::WorseEntry worse{};
  std::priority_queue<HeapEntry, std::vector<HeapEntry>, detail::WorseEntry> heap(worse);

  auto push = [&](uint32_t f) {
    if (below(es[f], en[f], p, q)) heap.push(HeapEntry{es[f], en[f], eth[f], etl[f], f});
  };

  while (true) {
    while (cursor < initial.size() && edge_state[initial[cursor]] != 1) {
      ++n_stale_pops;
      ++cursor;
    }
    if (cursor >= initial.size() && heap.empty()) break;
    uint32_t f;
    if (heap.empty()) {
      f = initial[cursor++];
    } else {
      const uint32_t g = cursor < initial.size() ? initial[cursor] : 0;
      const HeapEntry& top = heap.top();
      if (cursor < initial.size() &&
          better(es[g], en[g], eth[g], etl[g], top.s, top.n, top.tau_hi, top.tau_lo)) {
        f = g;
        ++cursor;
      } else {
        f = top.edge;
        const uint64_t top_n = top.n;
        heap.pop();
        // stale: the edge died or was merged with another (N only grows)
        if (edge_state[f] == 0 || en[f] != top_n) {
          ++n_stale_pops;
          continue;
        }
      }
    }
    const uint32_t x = ea[f], y = eb[f];
    if (blocked[x] || blocked[y] || !beats_future(es[f], en[f], future_now[x]) ||
        !beats_future(es[f], en[f], future_now[y])) {
      blocked[x] = blocked[y] = 1;
      continue;
    }
    const uint64_t id_x = cluster_id[x], id_y = cluster_id[y];
    records.push(std::min(id_x, id_y), std::max(id_x, id_y), es[f], en[f], eth[f], etl[f]);
    edge_state[f] = 0;
    // the cluster with more neighbours keeps its adjacency (small into large)
    const uint32_t big = adjacency[x].size() >= adjacency[y].size() ? x : y;
    const uint32_t small = big == x ? y : x;
    adjacency[big].erase(small);
    adjacency[small].erase(big);
    for (const AdjacencyMap::Slot& slot : adjacency[small].slots()) {
      if (slot.key == AdjacencyMap::kEmpty) continue;
      const uint32_t other = slot.key, g = slot.value;
      adjacency[other].erase(small);
      AdjacencyMap::Slot* kept = adjacency[big].find(other);
      if (kept != nullptr) {
        const uint32_t h = kept->value;
        es[h] += es[g];
        en[h] += en[g];
        if (eth[g] > eth[h] || (eth[g] == eth[h] && etl[g] > etl[h])) {
          eth[h] = eth[g];
          etl[h] = etl[g];
        }
        edge_state[g] = 0;
        edge_state[h] = 2;
        push(h);
      } else {
        adjacency[big].insert(other, g);
        adjacency[other].insert(big, g);
        if (ea[g] == small) {
          ea[g] = big;
        } else {
          eb[g] = big;
        }
      }
    }
    adjacency[small].release();
    cluster_alive[small] = 0;
    cluster_id[big] = std::min(id_x, id_y);
    cluster_level[big] = std::max(cluster_level[x], cluster_level[y]);
    future_now[big] = std::max(future_now[x], future_now[y]);
    for (size_t k = 0; k < n_levels; ++k) {
      uint32_t& kept_future = future_[big * n_levels + k];
      kept_future = std::max(kept_future, future_[small * n_levels + k]);
    }
  }

  // the queue and the adjacency are not needed for the outputs
  std::vector<uint32_t>().swap(initial);
  std::vector<AdjacencyMap>().swap(adjacency);
  decltype(heap)(worse).swap(heap);

  // residual clusters (blocked, or open: they may still receive edges), sorted by id
  std::vector<uint8_t> residual(n_clusters, 0);
  for (uint32_t c = 0; c < n_clusters; ++c) {
    if (cluster_alive[c] && (blocked[c] || cluster_level[c] > level)) {
      kept_.push_back(c);
      residual[c] = 1;
    }
  }
  std::sort(kept_.begin(), kept_.end(),
            [&](uint32_t i, uint32_t j) { return cluster_id[i] < cluster_id[j]; });

  // residual edges (sorted by (a, b)) and dropped edges (in edge order)
  for (uint32_t f = 0; f < n_edges; ++f) {
    if (edge_state[f] == 0) continue;
    if (residual[ea[f]] && residual[eb[f]]) {
      residual_.push_back(f);
    } else {
      dropped_.push_back(f);
    }
  }
  auto low = [&](uint32_t f) { return std::min(cluster_id[ea[f]], cluster_id[eb[f]]); };
  auto high = [&](uint32_t f) { return std::max(cluster_id[ea[f]], cluster_id[eb[f]]); };
  std::sort(residual_.begin(), residual_.end(), [&](uint32_t f, uint32_t g) {
    const uint64_t lf = low(f), lg = low(g);
    return lf != lg ? lf < lg : high(f) < high(g);
  });
}

// out[i] = whether the score 1 - s[i] / (255 n[i]) is below p / q.
inline void scores_below(const uint64_t* s, const uint64_t* n, size_t count, uint64_t p,
                         uint64_t q, uint8_t* out) {
  for (size_t i = 0; i < count; ++i) out[i] = below(s[i], n[i], p, q);
}

}  // namespace mean_merge
}  // namespace blockwise
