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
// edges from outside the task: it is frozen, never merged, and freezes the
// partner of every edge of it that comes up as the best in the heap
// (contagion). Only edges with a score 1 - S / (255 N) below the bound
// p / q enter the heap. After the heap runs empty, clusters that are not
// frozen are done; the frozen clusters with the edges among them form the
// residual; every other edge touches a done cluster and is dropped.
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

struct TaskResult {
  // merges in the order done; a < b are the two clusters' ids (the smallest
  // fragment id of each), the merged cluster keeps the id a
  EdgeList records;
  // frozen clusters, sorted by id, with their level lambda
  std::vector<uint64_t> residual_ids;
  std::vector<uint8_t> residual_levels;
  // edges among frozen clusters, a < b, sorted by (a, b)
  EdgeList residual_edges;
  // edges that touch a done cluster, a < b, in the order of the input edges
  EdgeList dropped;
  uint64_t n_stale_pops = 0;
};

struct TaskInput {
  const uint64_t* ids;
  const uint8_t* levels;
  size_t n_clusters;
  const uint64_t* a;
  const uint64_t* b;
  const uint64_t* s;
  const uint64_t* n;
  const uint64_t* tau_hi;
  const uint64_t* tau_lo;
  size_t n_edges;
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

// Run one task at octree level `level` with merge bound p / q.
inline void merge_task(const TaskInput& in, unsigned level, uint64_t p, uint64_t q,
                       TaskResult& out) {
  using detail::HeapEntry;
  if (q == 0) throw std::invalid_argument("the bound's denominator q must be > 0");
  if (in.n_clusters >= AdjacencyMap::kEmpty) {
    throw std::overflow_error("a task holds at most 2^32 - 2 clusters, received " +
                              std::to_string(in.n_clusters));
  }
  if (in.n_edges >= 0xFFFFFFFFull) {
    throw std::overflow_error("a task holds at most 2^32 - 2 edges, received " +
                              std::to_string(in.n_edges));
  }
  const size_t n_clusters = in.n_clusters;

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

  std::vector<uint64_t> cluster_id(in.ids, in.ids + n_clusters);
  std::vector<uint8_t> cluster_level(in.levels, in.levels + n_clusters);
  std::vector<uint8_t> frozen(n_clusters);
  for (size_t i = 0; i < n_clusters; ++i) frozen[i] = cluster_level[i] > level;
  std::vector<uint8_t> cluster_alive(n_clusters, 1);
  std::vector<AdjacencyMap> adjacency(n_clusters);

  // edges, summed by cluster pair
  const size_t n_in = in.n_edges;
  std::vector<uint32_t> ea, eb;
  std::vector<uint64_t> es, en, eth, etl;
  std::vector<uint8_t> edge_alive;
  ea.reserve(n_in);
  eb.reserve(n_in);
  es.reserve(n_in);
  en.reserve(n_in);
  eth.reserve(n_in);
  etl.reserve(n_in);
  u128 total_count = 0;
  for (size_t e = 0; e < n_in; ++e) {
    const uint64_t s = in.s[e], n = in.n[e];
    if (n == 0) {
      throw std::invalid_argument("edge " + std::to_string(e) + " has N = 0; every edge needs N >= 1");
    }
    total_count += n;
    if (total_count >= kMaxTotalCount) {
      throw std::overflow_error("the edges' counts N sum to 2^56 or more; split the task");
    }
    if (s > 255 * n) {
      throw std::invalid_argument("edge " + std::to_string(e) + " has S = " + std::to_string(s) +
                                  " > 255 N = " + std::to_string(255 * n) +
                                  "; S sums uint8 affinities over N contacts");
    }
    const uint32_t x = index_of(in.a[e], "a", e);
    const uint32_t y = index_of(in.b[e], "b", e);
    if (x == y) {
      throw std::invalid_argument("edge " + std::to_string(e) + " joins cluster " +
                                  detail::id_text(in.a[e]) + " to itself");
    }
    AdjacencyMap::Slot* slot = adjacency[x].find(y);
    if (slot != nullptr) {
      const uint32_t f = slot->value;
      es[f] += s;
      en[f] += n;
      if (in.tau_hi[e] > eth[f] || (in.tau_hi[e] == eth[f] && in.tau_lo[e] > etl[f])) {
        eth[f] = in.tau_hi[e];
        etl[f] = in.tau_lo[e];
      }
      continue;
    }
    const uint32_t f = static_cast<uint32_t>(ea.size());
    ea.push_back(x);
    eb.push_back(y);
    es.push_back(s);
    en.push_back(n);
    eth.push_back(in.tau_hi[e]);
    etl.push_back(in.tau_lo[e]);
    adjacency[x].insert(y, f);
    adjacency[y].insert(x, f);
  }
  const size_t n_edges = ea.size();
  edge_alive.assign(n_edges, 1);

  // The queue is the initial edges sorted best first (read with a cursor)
  // plus a heap of the edges whose statistics changed by merging: sorting is
  // cache-friendly, and it halves the heap operations, which dominate.
  std::vector<HeapEntry> initial;
  for (uint32_t f = 0; f < n_edges; ++f) {
    if (below(es[f], en[f], p, q)) initial.push_back(HeapEntry{es[f], en[f], eth[f], etl[f], f});
  }
  const detail::WorseEntry worse{};
  std::sort(initial.begin(), initial.end(),
            [&](const HeapEntry& x, const HeapEntry& y) { return worse(y, x); });
  size_t cursor = 0;
  std::priority_queue<HeapEntry, std::vector<HeapEntry>, detail::WorseEntry> heap(worse);

  auto push = [&](uint32_t f) {
    if (below(es[f], en[f], p, q)) heap.push(HeapEntry{es[f], en[f], eth[f], etl[f], f});
  };

  while (cursor < initial.size() || !heap.empty()) {
    HeapEntry top;
    if (heap.empty() || (cursor < initial.size() && worse(heap.top(), initial[cursor]))) {
      top = initial[cursor++];
    } else {
      top = heap.top();
      heap.pop();
    }
    const uint32_t f = top.edge;
    // stale: the edge died or was merged with another (N only grows)
    if (!edge_alive[f] || en[f] != top.n) {
      ++out.n_stale_pops;
      continue;
    }
    const uint32_t x = ea[f], y = eb[f];
    if (frozen[x] || frozen[y]) {
      frozen[x] = frozen[y] = 1;
      continue;
    }
    const uint64_t id_x = cluster_id[x], id_y = cluster_id[y];
    out.records.push(std::min(id_x, id_y), std::max(id_x, id_y), es[f], en[f], eth[f], etl[f]);
    edge_alive[f] = 0;
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
        edge_alive[g] = 0;
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
  }

  // the queue and the adjacency are not needed for the outputs
  std::vector<HeapEntry>().swap(initial);
  std::vector<AdjacencyMap>().swap(adjacency);

  // residual clusters, sorted by id
  std::vector<uint32_t> kept;
  for (uint32_t c = 0; c < n_clusters; ++c) {
    if (cluster_alive[c] && frozen[c]) kept.push_back(c);
  }
  std::sort(kept.begin(), kept.end(),
            [&](uint32_t i, uint32_t j) { return cluster_id[i] < cluster_id[j]; });
  out.residual_ids.reserve(kept.size());
  out.residual_levels.reserve(kept.size());
  for (uint32_t c : kept) {
    out.residual_ids.push_back(cluster_id[c]);
    out.residual_levels.push_back(cluster_level[c]);
  }

  // residual edges (sorted by (a, b)) and dropped edges (in edge order)
  std::vector<uint32_t> residual;
  for (uint32_t f = 0; f < n_edges; ++f) {
    if (!edge_alive[f]) continue;
    if (frozen[ea[f]] && frozen[eb[f]]) {
      residual.push_back(f);
    } else {
      const uint64_t i = cluster_id[ea[f]], j = cluster_id[eb[f]];
      out.dropped.push(std::min(i, j), std::max(i, j), es[f], en[f], eth[f], etl[f]);
    }
  }
  auto low = [&](uint32_t f) { return std::min(cluster_id[ea[f]], cluster_id[eb[f]]); };
  auto high = [&](uint32_t f) { return std::max(cluster_id[ea[f]], cluster_id[eb[f]]); };
  std::sort(residual.begin(), residual.end(), [&](uint32_t f, uint32_t g) {
    const uint64_t lf = low(f), lg = low(g);
    return lf != lg ? lf < lg : high(f) < high(g);
  });
  out.residual_edges.reserve(residual.size());
  for (uint32_t f : residual) {
    out.residual_edges.push(low(f), high(f), es[f], en[f], eth[f], etl[f]);
  }
}

// out[i] = whether the score 1 - s[i] / (255 n[i]) is below p / q.
inline void scores_below(const uint64_t* s, const uint64_t* n, size_t count, uint64_t p,
                         uint64_t q, uint8_t* out) {
  for (size_t i = 0; i < count; ++i) out[i] = below(s[i], n[i], p, q);
}

}  // namespace mean_merge
}  // namespace blockwise
