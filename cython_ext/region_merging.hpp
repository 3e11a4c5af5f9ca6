// Region merging agglomeration (MALA / waterz), header-only.
//
// Reproduces waterz's IterativeRegionMerging with the scoring functions
//
//   OneMinus<MeanAffinity<RegionGraphType, ScoreValue>>
//   OneMinus<HistogramQuantileAffinity<RegionGraphType, Q, ScoreValue, 256, InitWithMax>>
//   OneMinus<QuantileAffinity<RegionGraphType, Q, ScoreValue, InitWithMax>>
//   OneMinus<MeanMaxKAffinity<RegionGraphType, K, ScoreValue>>
//
// such that, on the same fragments and affinities, merging until a threshold
// gives the same partition as waterz, ties included. That needs:
//
//   * the same edge numbering (sorted (u, v)), the same float32 arithmetic of
//     the statistics and scores, and the same statistics per edge;
//   * the same std::priority_queue (entries {edge, score}, std::greater on
//     the score only) seeing the same sequence of pushes and pops, since the
//     heap's tie-breaking depends on that sequence: edges are pushed one by
//     one in edge order, then re-pushed only when a stale edge is popped;
//   * the same stale/deleted bookkeeping: when region b merges into region a
//     (a < b), an edge of b to a neighbour that a also touches is merged into
//     a's edge if it is more expensive, otherwise a's edge is merged into it;
//     the surviving edge is marked stale.
//
// The bookkeeping differs from waterz's where that does not change the
// result: a region is a "slot" whose incident-edge list and hash-map keys are
// taken over by the other slot of a merge if that one has more edges (so
// moving edges costs O(E log E) over a whole run, not O(E^2) for one growing
// region), edges are found by a hash map keyed by slot pairs instead of a scan
// of incidence lists, and removed edges are skipped lazily.
//
// Two additions for block-wise processing, neither of which changes the result
// where it is not used:
//
//   * forced edges (the halves of a fragment cut by a block face) are merged
//     before all others: they enter the queue with the score -inf;
//   * the region graph can be given as edges with each edge's initial
//     statistic (serialized, see "serialization") instead of a volume, and is
//     then merged exactly as the graph of the volume they came from.
//
// Floating point: the statistics are computed in float and the OneMinus step
// in double, then rounded to float, exactly as waterz does. This assumes that
// the compiler contracts no a*b+c into an FMA, which holds for the default
// x86-64 target (no -march=native) that both are built for.

#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <queue>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "union_find.hpp"

namespace blockwise {
namespace region_merging {

using EdgeId = std::uint32_t;
using SlotId = std::uint32_t;

constexpr EdgeId kNoEdge = std::numeric_limits<EdgeId>::max();

enum ScoringKind : int {
	kMean = 0,
	kHistogramQuantile = 1,
	kQuantile = 2,
	kMeanMaxK = 3,
};

// The largest k that mean_max_k accepts (k is a runtime value).
constexpr int kMaxK = 64;

// What the kernel returns, one entry per region-graph edge in (u, v) order.
struct MergeResult {
	std::vector<std::uint64_t> u;      // smaller fragment id of the edge
	std::vector<std::uint64_t> v;      // larger fragment id of the edge
	std::vector<float> score;          // initial score (1 - statistic)
	std::vector<float> merge_score;    // cummax of pop scores at the merge joining u and v, or NaN
	std::uint64_t n_merges = 0;
	// only if asked for: edge e's serialized initial statistic is
	// statistics[statistics_begin[e]:statistics_begin[e + 1]]
	std::vector<std::uint8_t> statistics;
	std::vector<std::uint64_t> statistics_begin;
};

// ---------------------------------------------------------------- hashing

inline std::uint64_t mix64(std::uint64_t x) {
	// splitmix64 finaliser
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return x;
}

inline std::size_t capacity_for(std::size_t n) {
	std::size_t cap = 16;
	while (cap < 2 * n) cap <<= 1;
	return cap;
}

// Open-addressing map from a pair of non-zero fragment ids (u < v) to an edge
// index, used while scanning the volume. No erase.
class FragmentPairIndex {
public:
	FragmentPairIndex() : _slots(capacity_for(1024)), _mask(_slots.size() - 1) {}

	std::size_t size() const { return _size; }

	// Index of (u, v); inserts `next` for a new pair and sets `inserted`.
	EdgeId find_or_insert(std::uint64_t u, std::uint64_t v, EdgeId next, bool& inserted) {
		std::size_t i = mix64(u ^ mix64(v)) & _mask;
		while (true) {
			Slot& s = _slots[i];
			if (s.u == 0) {
				s.u = u;
				s.v = v;
				s.edge = next;
				inserted = true;
				if (++_size * 2 > _slots.size()) grow();
				return next;
			}
			if (s.u == u && s.v == v) {
				inserted = false;
				return s.edge;
			}
			i = (i + 1) & _mask;
		}
	}

	void release() {
		std::vector<Slot>().swap(_slots);
		_size = 0;
	}

private:
	struct Slot {
		std::uint64_t u = 0;  // 0: empty (fragment 0 is never part of an edge)
		std::uint64_t v = 0;
		EdgeId edge = 0;
	};

	void grow() {
		std::vector<Slot> old(_slots.size() * 2);
		old.swap(_slots);
		_mask = _slots.size() - 1;
		for (const Slot& s : old) {
			if (s.u == 0) continue;
			std::size_t i = mix64(s.u ^ mix64(s.v)) & _mask;
			while (_slots[i].u != 0) i = (i + 1) & _mask;
			_slots[i] = s;
		}
	}

	std::vector<Slot> _slots;
	std::size_t _mask;
	std::size_t _size = 0;
};

// Open-addressing map from non-zero fragment ids to dense indices 0..n-1, in
// order of insertion; grows as needed.
class FragmentIndex {
public:
	explicit FragmentIndex(std::size_t n) : _keys(capacity_for(n), 0), _values(_keys.size()), _mask(_keys.size() - 1) {}

	std::size_t size() const { return _size; }

	std::size_t find_or_insert(std::uint64_t id) {
		std::size_t h = mix64(id) & _mask;
		while (_keys[h] != 0) {
			if (_keys[h] == id) return _values[h];
			h = (h + 1) & _mask;
		}
		_keys[h] = id;
		_values[h] = _size;
		if ((_size + 1) * 2 > _keys.size()) grow();
		return _size++;
	}

	// kNotFound for an id that was never inserted (and for 0)
	std::size_t find(std::uint64_t id) const {
		if (id == 0) return kNotFound;
		std::size_t h = mix64(id) & _mask;
		while (_keys[h] != 0) {
			if (_keys[h] == id) return _values[h];
			h = (h + 1) & _mask;
		}
		return kNotFound;
	}

	static constexpr std::size_t kNotFound = std::numeric_limits<std::size_t>::max();

private:
	void grow() {
		std::vector<std::uint64_t> keys(_keys.size() * 2, 0);
		std::vector<std::size_t> values(keys.size());
		keys.swap(_keys);
		values.swap(_values);
		_mask = _keys.size() - 1;
		for (std::size_t i = 0; i < keys.size(); i++) {
			if (keys[i] == 0) continue;
			std::size_t h = mix64(keys[i]) & _mask;
			while (_keys[h] != 0) h = (h + 1) & _mask;
			_keys[h] = keys[i];
			_values[h] = values[i];
		}
	}

	std::vector<std::uint64_t> _keys;  // 0: empty
	std::vector<std::size_t> _values;
	std::size_t _mask;
	std::size_t _size = 0;
};

// Open-addressing map from an unordered pair of region slots to the edge that
// connects them, with erase (backward-shift deletion, no tombstones).
class SlotPairMap {
public:
	explicit SlotPairMap(std::size_t n) : _keys(capacity_for(n), kEmpty), _edges(_keys.size()), _mask(_keys.size() - 1) {}

	static std::uint64_t key(SlotId a, SlotId b) {
		if (a > b) std::swap(a, b);
		return (static_cast<std::uint64_t>(a) << 32) | b;
	}

	EdgeId find(std::uint64_t k) const {
		std::size_t i = home(k);
		while (true) {
			if (_keys[i] == k) return _edges[i];
			if (_keys[i] == kEmpty) return kNoEdge;
			i = (i + 1) & _mask;
		}
	}

	// Inserts or overwrites. The map is sized for the initial edges and never
	// holds more than that.
	void put(std::uint64_t k, EdgeId e) {
		std::size_t i = home(k);
		while (_keys[i] != kEmpty && _keys[i] != k) i = (i + 1) & _mask;
		_keys[i] = k;
		_edges[i] = e;
	}

	void erase(std::uint64_t k) {
		std::size_t i = home(k);
		while (true) {
			if (_keys[i] == kEmpty) return;
			if (_keys[i] == k) break;
			i = (i + 1) & _mask;
		}
		// shift back the entries of the cluster that could not sit at their
		// home because of the erased one
		std::size_t j = i;
		while (true) {
			j = (j + 1) & _mask;
			if (_keys[j] == kEmpty) break;
			std::size_t h = home(_keys[j]);
			// move j to i unless h lies cyclically in (i, j]
			bool h_in_range = (i <= j) ? (i < h && h <= j) : (i < h || h <= j);
			if (!h_in_range) {
				_keys[i] = _keys[j];
				_edges[i] = _edges[j];
				i = j;
			}
		}
		_keys[i] = kEmpty;
	}

private:
	// a packed pair (a < b < 2^32 - 1) is never all ones
	static constexpr std::uint64_t kEmpty = std::numeric_limits<std::uint64_t>::max();

	std::size_t home(std::uint64_t k) const { return mix64(k) & _mask; }

	std::vector<std::uint64_t> _keys;
	std::vector<EdgeId> _edges;
	std::size_t _mask;
};

// ---------------------------------------------------------------- serialization

// The statistic of one edge, as a blob of bytes (little-endian whatever the
// host): a tag byte, (kFormatVersion << 4) | (InitWithMax << 3) | kind (the
// InitWithMax bit only for the two quantile kinds), then per kind
//
//   kMean               float32 mean, uint64 count (>= 1)                 13 bytes
//   kHistogramQuantile  per non-empty bin, in increasing bin order:
//                       uint8 bin, uint32 count (>= 1); at least one bin  1 + 5 n bytes
//                       (InitWithMax: one bin, count 1)
//   kQuantile           the float32 face affinities in scan order, at
//                       least one (InitWithMax: one, their maximum)       1 + 4 n bytes
//   kMeanMaxK           the k largest float32 face affinities,
//                       descending, padded with lowest() (-FLT_MAX)       1 + 4 k bytes
//
// Floats are finite. The quantile itself is not part of the state: a blob
// serves every quantile.

constexpr std::uint8_t kFormatVersion = 1;

inline std::uint8_t format_tag(int kind, bool init_with_max) {
	const bool has_flag = init_with_max && (kind == kHistogramQuantile || kind == kQuantile);
	return static_cast<std::uint8_t>((kFormatVersion << 4) | (has_flag ? 8 : 0) | kind);
}

inline const char* kind_name(int kind) {
	switch (kind) {
		case kMean:
			return "mean";
		case kHistogramQuantile:
			return "histogram_quantile";
		case kQuantile:
			return "quantile";
		case kMeanMaxK:
			return "mean_max_k";
		default:
			return "unknown";
	}
}

inline std::uint8_t* store_u32(std::uint8_t* out, std::uint32_t x) {
	for (int i = 0; i < 4; i++) out[i] = static_cast<std::uint8_t>(x >> (8 * i));
	return out + 4;
}

inline std::uint8_t* store_u64(std::uint8_t* out, std::uint64_t x) {
	for (int i = 0; i < 8; i++) out[i] = static_cast<std::uint8_t>(x >> (8 * i));
	return out + 8;
}

inline std::uint8_t* store_f32(std::uint8_t* out, float x) {
	std::uint32_t bits;
	std::memcpy(&bits, &x, 4);
	return store_u32(out, bits);
}

inline std::uint32_t load_u32(const std::uint8_t* in) {
	std::uint32_t x = 0;
	for (int i = 0; i < 4; i++) x |= static_cast<std::uint32_t>(in[i]) << (8 * i);
	return x;
}

inline std::uint64_t load_u64(const std::uint8_t* in) {
	std::uint64_t x = 0;
	for (int i = 0; i < 8; i++) x |= static_cast<std::uint64_t>(in[i]) << (8 * i);
	return x;
}

inline float load_f32(const std::uint8_t* in) {
	const std::uint32_t bits = load_u32(in);
	float x;
	std::memcpy(&x, &bits, 4);
	return x;
}

// The blobs of a graph's edges: edge e's is blob order[e], which is
// data[begin[order[e]]:begin[order[e] + 1]].
struct StatisticBlobs {
	const std::uint8_t* data;
	const std::uint64_t* begin;
	const std::uint64_t* order;
	std::size_t n_edges;

	// The payload (after the tag) of edge e's blob, checked to be of `kind`
	// and `init_with_max`.
	const std::uint8_t* payload(EdgeId e, int kind, bool init_with_max, std::size_t& size) const {
		const std::uint64_t i = order[e];
		const std::uint8_t* blob = data + begin[i];
		const std::size_t n = static_cast<std::size_t>(begin[i + 1] - begin[i]);
		if (n == 0) fail(e, "is empty");
		const std::uint8_t expected = format_tag(kind, init_with_max);
		if (blob[0] != expected) {
			const int their_kind = blob[0] & 7, their_version = blob[0] >> 4;
			const bool their_flag = blob[0] & 8;
			if (their_version != kFormatVersion || their_kind > kMeanMaxK ||
			    blob[0] != format_tag(their_kind, their_flag))
				fail(e, "does not start with a known format tag (" + std::to_string(blob[0]) + "; expected " +
				            std::to_string(expected) + " for format version " + std::to_string(kFormatVersion) +
				            " of \"" + kind_name(kind) + "\")");
			if (their_kind != kind)
				fail(e, std::string("holds a \"") + kind_name(their_kind) + "\" statistic, but the scoring is \"" +
				            kind_name(kind) + "\"");
			fail(e, std::string("was made with init_with_max=") + (their_flag ? "True" : "False") +
			            ", but the scoring has init_with_max=" + (init_with_max ? "True" : "False"));
		}
		size = n - 1;
		return blob + 1;
	}

	[[noreturn]] void fail(EdgeId e, const std::string& what) const {
		throw std::invalid_argument("statistics[" + std::to_string(order[e]) + "] " + what);
	}
};

inline bool is_finite(float x) { return std::isfinite(x); }

// ---------------------------------------------------------------- scoring

// waterz's one_minus<float>: 1.0 - x in double, rounded to float on return.
inline float one_minus(float x) { return static_cast<float>(1.0 - static_cast<double>(x)); }

// Reorders `values` such that values_new[i] = values_old[order[i]].
template <typename T>
void permute(std::vector<T>& values, const std::vector<EdgeId>& order) {
	std::vector<T> permuted;
	permuted.reserve(order.size());
	for (EdgeId e : order) permuted.push_back(std::move(values[e]));
	values.swap(permuted);
}

// Each statistic has the interface
//   new_edge()                 append a fresh edge
//   add(e, affinity)           one face affinity, in scan order
//   finalize(n_edges)          after the scan, before permute()
//   permute(order)             renumber edges
//   merge(from, to)            waterz's notifyEdgeMerge (always "changed")
//   release(e)                 free what a deleted edge held
//   value(e)                   the affinity statistic (score = 1 - value)
//   serialized_size(e)         bytes of edge e's blob (see "serialization")
//   serialize(e, out)          writes edge e's blob, returns its end; only
//                              before any merge (the initial statistic)
//   load(blobs)                instead of new_edge ... permute: the state of
//                              blobs.n_edges edges, from their blobs

// MeanAffinityProvider<RegionGraphType, float>
class MeanStatistic {
public:
	void new_edge() {
		_mean.push_back(0.0f);
		_count.push_back(0);
	}

	void add(EdgeId e, float affinity) {
		std::uint64_t n = _count[e];
		float mean = _mean[e];
		// float arithmetic, as waterz: (affinity + mean*n)/(n+1)
		_mean[e] = (affinity + mean * static_cast<float>(n)) / static_cast<float>(n + 1);
		_count[e] = n + 1;
	}

	void finalize(std::size_t) {}

	void permute(const std::vector<EdgeId>& order) {
		region_merging::permute(_mean, order);
		region_merging::permute(_count, order);
	}

	void merge(EdgeId from, EdgeId to) {
		std::uint64_t from_n = _count[from];
		std::uint64_t to_n = _count[to];
		float from_mean = _mean[from];
		float to_mean = _mean[to];
		_mean[to] = (from_mean * static_cast<float>(from_n) + to_mean * static_cast<float>(to_n)) /
		            static_cast<float>(from_n + to_n);
		_count[to] = from_n + to_n;
	}

	void release(EdgeId) {}

	float value(EdgeId e) const { return _mean[e]; }

	std::size_t serialized_size(EdgeId) const { return 13; }

	std::uint8_t* serialize(EdgeId e, std::uint8_t* out) const {
		*out++ = format_tag(kMean, false);
		out = store_f32(out, _mean[e]);
		return store_u64(out, _count[e]);
	}

	void load(const StatisticBlobs& blobs) {
		_mean.resize(blobs.n_edges);
		_count.resize(blobs.n_edges);
		for (EdgeId e = 0; e < blobs.n_edges; e++) {
			std::size_t size;
			const std::uint8_t* p = blobs.payload(e, kMean, false, size);
			if (size != 12)
				blobs.fail(e, "has " + std::to_string(size + 1) + " bytes, a \"mean\" statistic has 13");
			_mean[e] = load_f32(p);
			_count[e] = load_u64(p + 4);
			if (!is_finite(_mean[e])) blobs.fail(e, "holds a mean that is not finite");
			if (_count[e] == 0) blobs.fail(e, "holds a count of 0 faces");
		}
	}

private:
	std::vector<float> _mean;
	std::vector<std::uint64_t> _count;
};

// Values of the faces of all edges, collected in scan order while the volume
// is scanned, then grouped by edge (keeping scan order within an edge): one
// flat buffer instead of one growing vector per edge.
template <typename T>
class FaceValues {
public:
	void add(EdgeId e, T value) {
		_edges.push_back(e);
		_values.push_back(value);
	}

	// Fills `values` with the values grouped by edge, and `begin` (n_edges + 1
	// entries) with where each edge's values start.
	void group(std::size_t n_edges, std::vector<std::uint64_t>& begin, std::vector<T>& values) {
		begin.assign(n_edges + 1, 0);
		for (EdgeId e : _edges) begin[e + 1]++;
		for (std::size_t e = 0; e < n_edges; e++) begin[e + 1] += begin[e];
		values.resize(_values.size());
		std::vector<std::uint64_t> next(begin.begin(), begin.end() - 1);
		for (std::size_t i = 0; i < _edges.size(); i++) values[next[_edges[i]]++] = _values[i];
		std::vector<EdgeId>().swap(_edges);
		std::vector<T>().swap(_values);
	}

private:
	std::vector<EdgeId> _edges;
	std::vector<T> _values;
};

// HistogramQuantileProvider<RegionGraphType, Q, float, 256, InitWithMax>, with
// the histogram stored sparsely (sorted non-empty bins): an edge that was never
// merged holds one bin under InitWithMax, and few bins otherwise.
class HistogramQuantileStatistic {
public:
	static constexpr int kBins = 256;

	HistogramQuantileStatistic(int quantile, bool init_with_max) : _quantile(quantile), _init_with_max(init_with_max) {}

	// waterz's discretize<int>(value, 256)
	static int discretize(float value) {
		if (!(value > 0)) return 0;
		if (value >= 1) return kBins - 1;
		return std::min(static_cast<int>(value * kBins), kBins - 1);
	}

	void new_edge() {
		if (_init_with_max) _max_bin.push_back(-1);
	}

	void add(EdgeId e, float affinity) {
		const int bin = discretize(affinity);
		if (_init_with_max) {
			// waterz keeps only the highest bin seen, with a count of one
			if (bin > _max_bin[e]) _max_bin[e] = static_cast<std::int16_t>(bin);
		} else {
			_faces.add(e, static_cast<std::uint8_t>(bin));
		}
	}

	void finalize(std::size_t n_edges) {
		_histograms.resize(n_edges);
		if (_init_with_max) {
			for (std::size_t e = 0; e < n_edges; e++)
				_histograms[e].push_back(Bin{static_cast<std::uint32_t>(_max_bin[e]), 1});
			std::vector<std::int16_t>().swap(_max_bin);
			return;
		}
		std::vector<std::uint64_t> begin;
		std::vector<std::uint8_t> bins;
		_faces.group(n_edges, begin, bins);
		// count each edge's bins densely, then read out the non-empty ones in
		// order from a bitmap
		std::uint32_t counts[kBins] = {};
		for (std::size_t e = 0; e < n_edges; e++) {
			std::uint64_t used[kBins / 64] = {};
			for (std::uint64_t f = begin[e]; f < begin[e + 1]; f++) {
				counts[bins[f]]++;
				used[bins[f] >> 6] |= std::uint64_t(1) << (bins[f] & 63);
			}
			std::vector<Bin>& histogram = _histograms[e];
			std::size_t n_used = 0;
			for (std::uint64_t word : used) n_used += static_cast<std::size_t>(__builtin_popcountll(word));
			histogram.reserve(n_used);
			for (int w = 0; w < kBins / 64; w++)
				for (std::uint64_t word = used[w]; word != 0; word &= word - 1) {
					const int bin = w * 64 + __builtin_ctzll(word);
					histogram.push_back(Bin{static_cast<std::uint32_t>(bin), counts[bin]});
					counts[bin] = 0;
				}
		}
	}

	void permute(const std::vector<EdgeId>& order) { region_merging::permute(_histograms, order); }

	void merge(EdgeId from, EdgeId to) {
		const std::vector<Bin>& a = _histograms[from];
		const std::vector<Bin>& b = _histograms[to];
		std::vector<Bin> merged;
		merged.reserve(a.size() + b.size());
		std::size_t i = 0, j = 0;
		while (i < a.size() && j < b.size()) {
			if (a[i].bin < b[j].bin)
				merged.push_back(a[i++]);
			else if (b[j].bin < a[i].bin)
				merged.push_back(b[j++]);
			else {
				merged.push_back(Bin{a[i].bin, a[i].count + b[j].count});
				i++;
				j++;
			}
		}
		merged.insert(merged.end(), a.begin() + i, a.end());
		merged.insert(merged.end(), b.begin() + j, b.end());
		_histograms[to].swap(merged);
	}

	void release(EdgeId e) { std::vector<Bin>().swap(_histograms[e]); }

	float value(EdgeId e) const {
		const std::vector<Bin>& histogram = _histograms[e];
		std::int64_t sum = 0;
		for (const Bin& b : histogram) sum += b.count;
		// pivot element, 1-based (waterz computes this in int; in 64 bits here,
		// which only differs where waterz's overflows)
		const std::int64_t pivot = _quantile * sum / 100 + 1;
		std::int64_t cumulative = 0;
		int bin = kBins;  // not found: waterz's loop ends at Bins
		for (const Bin& b : histogram) {
			cumulative += b.count;
			if (cumulative >= pivot) {
				bin = static_cast<int>(b.bin);
				break;
			}
		}
		// waterz's undiscretize<float>(bin, 256): ((float)bin + 0.5)/256 in double
		return static_cast<float>((static_cast<float>(bin) + 0.5) / kBins);
	}

	std::size_t serialized_size(EdgeId e) const { return 1 + 5 * _histograms[e].size(); }

	std::uint8_t* serialize(EdgeId e, std::uint8_t* out) const {
		*out++ = format_tag(kHistogramQuantile, _init_with_max);
		for (const Bin& b : _histograms[e]) {
			*out++ = static_cast<std::uint8_t>(b.bin);
			out = store_u32(out, b.count);
		}
		return out;
	}

	void load(const StatisticBlobs& blobs) {
		_histograms.assign(blobs.n_edges, {});
		for (EdgeId e = 0; e < blobs.n_edges; e++) {
			std::size_t size;
			const std::uint8_t* p = blobs.payload(e, kHistogramQuantile, _init_with_max, size);
			if (size == 0 || size % 5 != 0)
				blobs.fail(e, "has " + std::to_string(size + 1) +
				                  " bytes, a \"histogram_quantile\" statistic has 1 + 5 n (n >= 1 bins)");
			const std::size_t n_bins = size / 5;
			std::vector<Bin>& histogram = _histograms[e];
			histogram.reserve(n_bins);
			for (std::size_t i = 0; i < n_bins; i++, p += 5) {
				const Bin b{p[0], load_u32(p + 1)};
				if (!histogram.empty() && b.bin <= histogram.back().bin)
					blobs.fail(e, "has histogram bins that are not strictly increasing");
				if (b.count == 0) blobs.fail(e, "has a histogram bin with a count of 0");
				histogram.push_back(b);
			}
			if (_init_with_max && (n_bins != 1 || histogram[0].count != 1))
				blobs.fail(e, "is a histogram of several faces, but with init_with_max an edge starts as "
				              "one face (its maximum)");
		}
	}

private:
	struct Bin {
		std::uint32_t bin;
		std::uint32_t count;
	};

	int _quantile;
	bool _init_with_max;
	// while scanning
	std::vector<std::int16_t> _max_bin;
	FaceValues<std::uint8_t> _faces;
	// per edge, from finalize() on
	std::vector<std::vector<Bin>> _histograms;
};

// VectorQuantileProvider<RegionGraphType, Q, float, InitWithMax>: all face
// affinities of an edge (only the maximum under InitWithMax). As in waterz, the
// value of an edge that was never merged into is the element at the pivot
// position in scan order (with InitWithMax: the maximum); after a merge it is
// the exact order statistic, found with nth_element.
//
// The values of edges that were never merged into stay in one flat buffer;
// an edge gets a vector of its own at its first merge.
class QuantileStatistic {
public:
	QuantileStatistic(int quantile, bool init_with_max) : _quantile(quantile), _init_with_max(init_with_max) {}

	void new_edge() {
		if (_init_with_max) _max.push_back(std::numeric_limits<float>::lowest());
	}

	void add(EdgeId e, float affinity) {
		if (_init_with_max) {
			if (_max[e] < affinity) _max[e] = affinity;
		} else {
			_faces.add(e, affinity);
		}
	}

	void finalize(std::size_t n_edges) {
		std::vector<std::uint64_t> begin;
		if (_init_with_max) {
			_flat.swap(_max);
			begin.resize(n_edges + 1);
			for (std::size_t e = 0; e <= n_edges; e++) begin[e] = e;
		} else {
			_faces.group(n_edges, begin, _flat);
		}
		_begin.assign(begin.begin(), begin.end() - 1);
		_size.resize(n_edges);
		for (std::size_t e = 0; e < n_edges; e++) _size[e] = static_cast<std::uint32_t>(begin[e + 1] - begin[e]);
		_merged.resize(n_edges);
	}

	void permute(const std::vector<EdgeId>& order) {
		region_merging::permute(_begin, order);
		region_merging::permute(_size, order);
	}

	void merge(EdgeId from, EdgeId to) {
		std::vector<float>& values = _merged[to];
		if (values.empty()) values.assign(flat_begin(to), flat_begin(to) + _size[to]);
		if (_merged[from].empty())
			values.insert(values.end(), flat_begin(from), flat_begin(from) + _size[from]);
		else
			values.insert(values.end(), _merged[from].begin(), _merged[from].end());
		std::nth_element(values.begin(), values.begin() + pivot(values.size()), values.end());
	}

	void release(EdgeId e) {
		std::vector<float>().swap(_merged[e]);
		_size[e] = 0;
	}

	float value(EdgeId e) const {
		if (!_merged[e].empty()) return _merged[e][pivot(_merged[e].size())];
		return flat_begin(e)[pivot(_size[e])];
	}

	std::size_t serialized_size(EdgeId e) const { return 1 + 4 * static_cast<std::size_t>(_size[e]); }

	std::uint8_t* serialize(EdgeId e, std::uint8_t* out) const {
		*out++ = format_tag(kQuantile, _init_with_max);
		const float* values = flat_begin(e);
		for (std::uint32_t i = 0; i < _size[e]; i++) out = store_f32(out, values[i]);
		return out;
	}

	void load(const StatisticBlobs& blobs) {
		_flat.clear();
		_begin.resize(blobs.n_edges);
		_size.resize(blobs.n_edges);
		_merged.assign(blobs.n_edges, {});
		for (EdgeId e = 0; e < blobs.n_edges; e++) {
			std::size_t size;
			const std::uint8_t* p = blobs.payload(e, kQuantile, _init_with_max, size);
			if (size == 0 || size % 4 != 0)
				blobs.fail(e, "has " + std::to_string(size + 1) +
				                  " bytes, a \"quantile\" statistic has 1 + 4 n (n >= 1 affinities)");
			const std::size_t n = size / 4;
			if (_init_with_max && n != 1)
				blobs.fail(e, "holds " + std::to_string(n) +
				                  " affinities, but with init_with_max an edge starts with one (its maximum)");
			if (n > std::numeric_limits<std::uint32_t>::max()) blobs.fail(e, "holds more than 2^32 - 1 affinities");
			_begin[e] = _flat.size();
			_size[e] = static_cast<std::uint32_t>(n);
			for (std::size_t i = 0; i < n; i++, p += 4) {
				const float value = load_f32(p);
				if (!is_finite(value)) blobs.fail(e, "holds an affinity that is not finite");
				_flat.push_back(value);
			}
		}
	}

private:
	const float* flat_begin(EdgeId e) const { return _flat.data() + _begin[e]; }

	std::size_t pivot(std::size_t size) const {
		std::size_t p = static_cast<std::size_t>(_quantile) * size / 100;
		if (p == size) p--;
		return p;
	}

	int _quantile;
	bool _init_with_max;
	// while scanning
	std::vector<float> _max;
	FaceValues<float> _faces;
	// per edge, from finalize() on: a range of _flat, or a vector after a merge
	std::vector<float> _flat;
	std::vector<std::uint64_t> _begin;
	std::vector<std::uint32_t> _size;
	std::vector<std::vector<float>> _merged;
};

// MaxKAffinityProvider + MeanMaxKAffinity<RegionGraphType, K, float>, with K a
// runtime value: the K largest face affinities of each edge, descending,
// padded with lowest().
class MeanMaxKStatistic {
public:
	explicit MeanMaxKStatistic(int k) : _k(k) {}

	void new_edge() { _values.insert(_values.end(), _k, kUnset); }

	void add(EdgeId e, float value) {
		float* values = &_values[static_cast<std::size_t>(e) * _k];
		for (int k = 0; k < _k; k++) {
			if (values[k] == kUnset) {
				values[k] = value;
				break;
			}
			if (values[k] < value) {
				for (int i = _k - 1; i > k; i--) values[i] = values[i - 1];
				values[k] = value;
				break;
			}
		}
	}

	void finalize(std::size_t) {}

	void permute(const std::vector<EdgeId>& order) {
		std::vector<float> permuted(_values.size());
		for (std::size_t i = 0; i < order.size(); i++)
			std::copy_n(&_values[static_cast<std::size_t>(order[i]) * _k], _k, &permuted[i * _k]);
		_values.swap(permuted);
	}

	void merge(EdgeId from, EdgeId to) {
		float a[kMaxK];
		float* values = &_values[static_cast<std::size_t>(to) * _k];
		const float* b = &_values[static_cast<std::size_t>(from) * _k];
		std::copy_n(values, _k, a);
		int i = 0, j = 0;
		for (int k = 0; k < _k; k++) {
			if (a[i] > b[j])
				values[k] = a[i++];
			else
				values[k] = b[j++];
		}
	}

	void release(EdgeId) {}

	float value(EdgeId e) const {
		const float* values = &_values[static_cast<std::size_t>(e) * _k];
		float sum = 0;
		int k;
		for (k = 0; k < _k; k++) {
			if (values[k] == kUnset) break;
			sum += values[k];
		}
		if (k == 0) return std::numeric_limits<float>::signaling_NaN();
		return sum / k;
	}

	std::size_t serialized_size(EdgeId) const { return 1 + 4 * static_cast<std::size_t>(_k); }

	std::uint8_t* serialize(EdgeId e, std::uint8_t* out) const {
		*out++ = format_tag(kMeanMaxK, false);
		const float* values = &_values[static_cast<std::size_t>(e) * _k];
		for (int k = 0; k < _k; k++) out = store_f32(out, values[k]);
		return out;
	}

	void load(const StatisticBlobs& blobs) {
		_values.resize(blobs.n_edges * static_cast<std::size_t>(_k));
		const std::size_t expected = 4 * static_cast<std::size_t>(_k);
		for (EdgeId e = 0; e < blobs.n_edges; e++) {
			std::size_t size;
			const std::uint8_t* p = blobs.payload(e, kMeanMaxK, false, size);
			if (size != expected)
				blobs.fail(e, "has " + std::to_string(size + 1) + " bytes, a \"mean_max_k\" statistic of k = " +
				                  std::to_string(_k) + " has " + std::to_string(expected + 1) +
				                  (size % 4 == 0 ? " (the blob holds k = " + std::to_string(size / 4) + ")" : ""));
			float* values = &_values[static_cast<std::size_t>(e) * _k];
			for (int k = 0; k < _k; k++, p += 4) {
				values[k] = load_f32(p);
				if (!is_finite(values[k])) blobs.fail(e, "holds an affinity that is not finite");
				if (k > 0 && values[k] > values[k - 1])
					blobs.fail(e, "holds affinities that are not in descending order");
			}
			if (values[0] == kUnset) blobs.fail(e, "holds no affinity (all padding)");
		}
	}

private:
	static constexpr float kUnset = std::numeric_limits<float>::lowest();

	int _k;
	std::vector<float> _values;
};

// ---------------------------------------------------------------- merging

// The queue score of a forced edge: below every real score.
constexpr float kForcedScore = -std::numeric_limits<float>::infinity();

// waterz's PriorityQueue: a min-heap on the score alone, ties broken by the
// heap's layout. The edge id enters a comparison only between two forced
// edges (which waterz does not have), so that they pop in edge order.
struct QueueEntry {
	EdgeId edge;
	float score;
	bool operator>(const QueueEntry& other) const {
		return score > other.score || (score == kForcedScore && other.score == kForcedScore && edge > other.edge);
	}
};
using EdgeQueue = std::priority_queue<QueueEntry, std::vector<QueueEntry>, std::greater<QueueEntry>>;

template <typename Statistic>
class RegionMerging {
public:
	// The region graph of a fragment volume, its statistics from a scan of the
	// faces.
	RegionMerging(const float* affs, const std::uint64_t* fragments, std::size_t depth, std::size_t height,
	              std::size_t width, Statistic statistic)
	    : _statistic(std::move(statistic)) {
		extract_region_graph(affs, fragments, depth, height, width);
	}

	// A given region graph: edges (u[e], v[e]), sorted by (u, v), unique,
	// 0 < u < v; `statistic` holds their statistics already (load()).
	RegionMerging(const std::uint64_t* u, const std::uint64_t* v, std::size_t n_edges, Statistic statistic)
	    : _statistic(std::move(statistic)) {
		if (n_edges >= static_cast<std::size_t>(kNoEdge) - 1)
			throw std::overflow_error("more than 2^32 - 2 region-graph edges");
		FragmentIndex slots(n_edges);
		_u.assign(u, u + n_edges);
		_v.assign(v, v + n_edges);
		_end_a.resize(n_edges);
		_end_b.resize(n_edges);
		for (std::size_t e = 0; e < n_edges; e++) {
			if (u[e] == 0 || u[e] >= v[e] || (e > 0 && (u[e - 1] > u[e] || (u[e - 1] == u[e] && v[e - 1] >= v[e]))))
				throw std::invalid_argument("the edges must be sorted by (u, v), unique, with 0 < u < v");
			_end_a[e] = static_cast<SlotId>(slots.find_or_insert(u[e]));
			_end_b[e] = static_cast<SlotId>(slots.find_or_insert(v[e]));
		}
		if (slots.size() >= static_cast<std::size_t>(std::numeric_limits<SlotId>::max()))
			throw std::overflow_error("more than 2^32 - 2 fragments with edges");
		index_edges(slots.size());
	}

	// Writes the initial statistic of every edge (before merge_until).
	void serialize_statistics(std::vector<std::uint8_t>& data, std::vector<std::uint64_t>& begin) const {
		const std::size_t n_edges = _u.size();
		begin.resize(n_edges + 1);
		begin[0] = 0;
		for (EdgeId e = 0; e < n_edges; e++) begin[e + 1] = begin[e] + _statistic.serialized_size(e);
		data.resize(begin[n_edges]);
		for (EdgeId e = 0; e < n_edges; e++) _statistic.serialize(e, data.data() + begin[e]);
	}

	// Marks the edges between the fragments a[i] and b[i] (either order) to be
	// merged first; pairs that are no edge are ignored.
	void force_pairs(const std::uint64_t* a, const std::uint64_t* b, std::size_t n) {
		const std::size_t n_edges = _u.size();
		for (std::size_t i = 0; i < n; i++) {
			const std::uint64_t u = std::min(a[i], b[i]), v = std::max(a[i], b[i]);
			// the edges are sorted by (u, v)
			std::size_t low = 0, high = n_edges;
			while (low < high) {
				const std::size_t mid = low + (high - low) / 2;
				if (_u[mid] < u || (_u[mid] == u && _v[mid] < v))
					low = mid + 1;
				else
					high = mid;
			}
			if (low < n_edges && _u[low] == u && _v[low] == v) _flags[low] |= kForced;
		}
	}

	// Marks the edges e with forced[e] != 0 to be merged first.
	void force_edges(const std::uint8_t* forced) {
		for (std::size_t e = 0; e < _u.size(); e++)
			if (forced[e]) _flags[e] |= kForced;
	}

	// Merges until the cheapest edge scores >= threshold. Forced edges go
	// first: they enter the queue with the score -inf (so they pop before
	// all others, in edge order) and are contracted like any other edge
	// (parallel edges combined, the survivors marked stale), also when
	// stale; their merges are reported with the merge score 0 and do not
	// enter the running maximum.
	void merge_until(float threshold, MergeResult& result) {
		const std::size_t n_edges = _u.size();
		result.merge_score.assign(n_edges, std::numeric_limits<float>::quiet_NaN());
		result.score.resize(n_edges);

		_score.resize(n_edges);
		for (EdgeId e = 0; e < n_edges; e++) {
			_score[e] = one_minus(_statistic.value(e));
			result.score[e] = _score[e];
			// the score also decides which of two parallel edges survives:
			// a forced one always does, and stays forced
			if (_flags[e] & kForced) _score[e] = kForcedScore;
		}

		// pushed one by one in edge order, as waterz's scoreEdge does: the heap
		// layout (and so the order of equal scores) depends on it
		EdgeQueue queue;
		{
			std::vector<QueueEntry> storage;
			storage.reserve(n_edges);
			queue = EdgeQueue(std::greater<QueueEntry>(), std::move(storage));
		}
		for (EdgeId e = 0; e < n_edges; e++) queue.push({e, _score[e]});

		float running_max = -std::numeric_limits<float>::infinity();
		std::uint64_t n_merges = 0;
		while (!queue.empty()) {
			EdgeId next = queue.top().edge;
			float score = _score[next];
			if (score >= threshold) break;
			queue.pop();
			// a pop that is not a merge still holds back mergeUntil(t) for
			// any t <= score, so it enters the running maximum
			running_max = std::max(running_max, score);

			if (_flags[next] & kGone) continue;

			if ((_flags[next] & (kStale | kForced)) == kStale) {
				float new_score = one_minus(_statistic.value(next));
				_score[next] = new_score;
				queue.push({next, new_score});
				_flags[next] &= static_cast<std::uint8_t>(~kStale);
				continue;
			}

			merge_regions(next);
			n_merges++;
			// forced merges pop first, while the running maximum is -inf
			const float merge_score = running_max == kForcedScore ? 0.0f : running_max;
			for (EdgeId o = _absorbed_head[next]; o != kNoEdge; o = _absorbed_next[o])
				result.merge_score[o] = merge_score;
		}

		result.n_merges = n_merges;
		result.u.swap(_u);
		result.v.swap(_v);
	}

private:
	static constexpr std::uint8_t kStale = 1;
	static constexpr std::uint8_t kGone = 2;  // deleted, or merged (contracted)
	static constexpr std::uint8_t kForced = 4;

	void extract_region_graph(const float* affs, const std::uint64_t* fragments, std::size_t depth,
	                          std::size_t height, std::size_t width) {
		const std::size_t n_voxels = depth * height * width;
		const std::size_t strides[3] = {height * width, width, 1};

		FragmentPairIndex index;
		// regions: the fragments that have an edge, numbered in order of discovery
		FragmentIndex slots(1024);
		// the edges in order of discovery
		struct FoundEdge {
			std::uint64_t u, v;
			SlotId a, b;  // slots of u and v
			EdgeId e;     // index in order of discovery
		};
		std::vector<FoundEdge> found;

		// Most faces belong to the edge of the face before in the same
		// direction, and most others to one of the last rows: a small
		// direct-mapped cache (in L2) goes before the hash map.
		struct CachedEdge {
			std::uint64_t u = 0, v = 0;
			EdgeId edge = kNoEdge;
		};
		CachedEdge last[3];
		constexpr int kRecentBits = 12;
		std::vector<CachedEdge> recent(std::size_t(1) << kRecentBits);

		auto find_edge = [&](int d, std::uint64_t u, std::uint64_t v) {
			CachedEdge& l = last[d];
			if (l.u == u && l.v == v) return l.edge;
			CachedEdge& r = recent[((u * 0x9E3779B97F4A7C15ULL + v) * 0xC2B2AE3D27D4EB4FULL) >> (64 - kRecentBits)];
			if (r.u != u || r.v != v) {
				if (index.size() >= static_cast<std::size_t>(kNoEdge) - 1)
					throw std::overflow_error("more than 2^32 - 2 region-graph edges");
				bool inserted;
				const EdgeId e = index.find_or_insert(u, v, static_cast<EdgeId>(found.size()), inserted);
				if (inserted) {
					found.push_back(FoundEdge{u, v, static_cast<SlotId>(slots.find_or_insert(u)),
					                          static_cast<SlotId>(slots.find_or_insert(v)), e});
					_statistic.new_edge();
				}
				r = CachedEdge{u, v, e};
			}
			l = r;
			return r.edge;
		};

		auto add_face = [&](int d, std::size_t i, std::uint64_t id1, std::uint64_t id2) {
			if (id2 == id1 || id2 == 0) return;
			const EdgeId e = find_edge(d, std::min(id1, id2), std::max(id1, id2));
			_statistic.add(e, affs[d * n_voxels + i]);
		};

		// voxel scan order z, y, x, then channel 0, 1, 2: the order in which
		// waterz adds the affinities of an edge (which a float running mean
		// and the scan-order quantile depend on)
		std::size_t i = 0;
		for (std::size_t z = 0; z < depth; z++)
			for (std::size_t y = 0; y < height; y++)
				for (std::size_t x = 0; x < width; x++, i++) {
					const std::uint64_t id1 = fragments[i];
					if (id1 == 0) continue;
					// a missing neighbour counts as the same fragment
					const std::uint64_t id_z = z > 0 ? fragments[i - strides[0]] : id1;
					const std::uint64_t id_y = y > 0 ? fragments[i - strides[1]] : id1;
					const std::uint64_t id_x = x > 0 ? fragments[i - strides[2]] : id1;
					if (((id_z ^ id1) | (id_y ^ id1) | (id_x ^ id1)) == 0) continue;
					add_face(0, i, id1, id_z);
					add_face(1, i, id1, id_y);
					add_face(2, i, id1, id_x);
				}
		index.release();

		// number the edges in (u, v) order, as waterz's std::map does
		const std::size_t n_edges = found.size();
		const std::size_t n_nodes = slots.size();
		if (n_nodes >= static_cast<std::size_t>(std::numeric_limits<SlotId>::max()))
			throw std::overflow_error("more than 2^32 - 2 fragments with edges");
		_statistic.finalize(n_edges);
		std::sort(found.begin(), found.end(),
		          [](const FoundEdge& a, const FoundEdge& b) { return a.u != b.u ? a.u < b.u : a.v < b.v; });
		std::vector<EdgeId> order(n_edges);
		_u.resize(n_edges);
		_v.resize(n_edges);
		_end_a.resize(n_edges);
		_end_b.resize(n_edges);
		for (std::size_t e = 0; e < n_edges; e++) {
			order[e] = found[e].e;
			_u[e] = found[e].u;
			_v[e] = found[e].v;
			_end_a[e] = found[e].a;
			_end_b[e] = found[e].b;
		}
		_statistic.permute(order);
		std::vector<FoundEdge>().swap(found);
		std::vector<EdgeId>().swap(order);
		index_edges(n_nodes);
	}

	// Sets up the merging state of the edges in _u, _v, _end_a, _end_b
	// (n_nodes slots); the slot numbering does not enter the result.
	void index_edges(std::size_t n_nodes) {
		const std::size_t n_edges = _u.size();

		// a region's label is the smallest fragment id in it
		_label.resize(n_nodes);
		for (std::size_t e = 0; e < n_edges; e++) {
			_label[_end_a[e]] = _u[e];
			_label[_end_b[e]] = _v[e];
		}

		_flags.assign(n_edges, 0);
		_absorbed_head.resize(n_edges);
		_absorbed_tail.resize(n_edges);
		_absorbed_next.assign(n_edges, kNoEdge);
		_incident.assign(n_nodes, {});
		_degree.assign(n_nodes, 0);

		std::vector<std::uint32_t> degree(n_nodes, 0);
		for (EdgeId e = 0; e < n_edges; e++) {
			degree[_end_a[e]]++;
			degree[_end_b[e]]++;
		}
		for (SlotId s = 0; s < n_nodes; s++) _incident[s].reserve(degree[s]);

		_edge_of = SlotPairMap(n_edges);
		for (EdgeId e = 0; e < n_edges; e++) {
			_incident[_end_a[e]].push_back(e);
			_incident[_end_b[e]].push_back(e);
			_degree[_end_a[e]]++;
			_degree[_end_b[e]]++;
			_edge_of.put(SlotPairMap::key(_end_a[e], _end_b[e]), e);
			_absorbed_head[e] = e;
			_absorbed_tail[e] = e;
		}
	}

	SlotId opposite(EdgeId e, SlotId s) const { return _end_a[e] == s ? _end_b[e] : _end_a[e]; }

	void replace_end(EdgeId e, SlotId from, SlotId to) {
		if (_end_a[e] == from)
			_end_a[e] = to;
		else
			_end_b[e] = to;
	}

	// waterz's notifyEdgeMerge(from, to) and the deletion of `from`; `to` is
	// left to be marked stale by the caller
	void absorb_edge(EdgeId from, EdgeId to) {
		_statistic.merge(from, to);
		_statistic.release(from);
		_absorbed_next[_absorbed_tail[to]] = _absorbed_head[from];
		_absorbed_tail[to] = _absorbed_tail[from];
		_flags[from] |= kGone;
	}

	void compact_incident(SlotId s) {
		std::vector<EdgeId>& list = _incident[s];
		if (list.size() <= 2 * static_cast<std::size_t>(_degree[s]) + 8) return;
		list.erase(std::remove_if(list.begin(), list.end(), [&](EdgeId e) { return _flags[e] & kGone; }), list.end());
	}

	// Contract edge m: region b (the larger label) merges into region a.
	void merge_regions(EdgeId m) {
		SlotId slot_a = _end_a[m], slot_b = _end_b[m];
		if (_label[slot_a] > _label[slot_b]) std::swap(slot_a, slot_b);
		const std::uint64_t label_a = _label[slot_a];

		_flags[m] |= kGone;
		_edge_of.erase(SlotPairMap::key(slot_a, slot_b));
		_degree[slot_a]--;
		_degree[slot_b]--;

		// the slot with more edges stays and takes over the other's edges
		const bool keep_a = _degree[slot_a] >= _degree[slot_b];
		const SlotId stays = keep_a ? slot_a : slot_b;
		const SlotId goes = keep_a ? slot_b : slot_a;
		const bool goes_is_b = keep_a;

		std::vector<EdgeId> edges;
		edges.swap(_incident[goes]);
		for (EdgeId e : edges) {
			if (_flags[e] & kGone) continue;
			const SlotId n = opposite(e, goes);
			const EdgeId other = _edge_of.find(SlotPairMap::key(stays, n));
			_edge_of.erase(SlotPairMap::key(goes, n));

			if (other == kNoEdge) {
				// a neighbour of one region only: the edge now ends at `stays`
				replace_end(e, goes, stays);
				_edge_of.put(SlotPairMap::key(stays, n), e);
				_incident[stays].push_back(e);
				_degree[stays]++;
				continue;
			}

			// a neighbour of both: the more expensive edge is merged into the
			// cheaper one, b's edge survives a tie (waterz's rule)
			const EdgeId edge_of_b = goes_is_b ? e : other;
			const EdgeId edge_of_a = goes_is_b ? other : e;
			const EdgeId survivor = (_score[edge_of_b] > _score[edge_of_a]) ? edge_of_a : edge_of_b;
			const EdgeId removed = survivor == edge_of_a ? edge_of_b : edge_of_a;
			absorb_edge(removed, survivor);
			_flags[survivor] |= kStale;
			_degree[n]--;
			if (survivor == e) {
				replace_end(e, goes, stays);
				_edge_of.put(SlotPairMap::key(stays, n), e);
				_incident[stays].push_back(e);
				// `other` is gone from `stays`, e takes its place: no degree change
			}
			compact_incident(n);
		}
		_label[stays] = label_a;
		compact_incident(stays);
	}

	Statistic _statistic;

	// per edge: the fragment ids (sorted (u, v) order), the current region
	// slots at its ends, its last score, stale/gone flags
	std::vector<std::uint64_t> _u, _v;
	std::vector<SlotId> _end_a, _end_b;
	std::vector<float> _score;
	std::vector<std::uint8_t> _flags;

	// per edge: the original edges it stands for, as a linked list
	std::vector<EdgeId> _absorbed_head, _absorbed_tail, _absorbed_next;

	// per region slot: incident edges (gone ones removed lazily), the number
	// of edges that are not gone, and the region's label (its smallest id)
	std::vector<std::vector<EdgeId>> _incident;
	std::vector<std::uint32_t> _degree;
	std::vector<std::uint64_t> _label;

	SlotPairMap _edge_of{0};
};

// Calls f(statistic) with a fresh statistic of the scoring kind.
template <typename F>
void with_statistic(int kind, int quantile, int k, bool init_with_max, F&& f) {
	if ((kind == kQuantile || kind == kHistogramQuantile) && (quantile < 0 || quantile > 100))
		throw std::invalid_argument("quantile must be in 0..100");
	switch (kind) {
		case kMean:
			f(MeanStatistic());
			break;
		case kHistogramQuantile:
			f(HistogramQuantileStatistic(quantile, init_with_max));
			break;
		case kQuantile:
			f(QuantileStatistic(quantile, init_with_max));
			break;
		case kMeanMaxK:
			if (k < 1 || k > kMaxK) throw std::invalid_argument("k must be in 1..64");
			f(MeanMaxKStatistic(k));
			break;
		default:
			throw std::invalid_argument("unknown scoring kind");
	}
}

// Builds the region graph of `fragments` (z, y, x; 0 is background) with the
// statistics of `affs` (3, z, y, x; channel d at p: affinity of p and p - e_d)
// and merges regions until the next edge's score is >= threshold, the edges
// between the fragments forced_u[i] and forced_v[i] (if they are edges) first.
// With `with_statistics`, result.statistics holds the initial statistics.
inline void merge_regions(const float* affs, const std::uint64_t* fragments, std::size_t depth,
                          std::size_t height, std::size_t width, float threshold, int kind, int quantile,
                          int k, bool init_with_max, const std::uint64_t* forced_u, const std::uint64_t* forced_v,
                          std::size_t n_forced, bool with_statistics, MergeResult& result) {
	with_statistic(kind, quantile, k, init_with_max, [&](auto statistic) {
		RegionMerging<decltype(statistic)> merging(affs, fragments, depth, height, width, std::move(statistic));
		if (with_statistics) merging.serialize_statistics(result.statistics, result.statistics_begin);
		merging.force_pairs(forced_u, forced_v, n_forced);
		merging.merge_until(threshold, result);
	});
}

// Merges the region graph of the edges (u[e], v[e]) (sorted by (u, v),
// unique, 0 < u < v) exactly as merge_regions() merges that of a volume,
// with the statistics of the blobs (see "serialization"), the edges with
// forced[e] != 0 first (forced may be null).
inline void merge_graph(const std::uint64_t* u, const std::uint64_t* v, std::size_t n_edges,
                        const StatisticBlobs& blobs, const std::uint8_t* forced, float threshold, int kind,
                        int quantile, int k, bool init_with_max, MergeResult& result) {
	if (blobs.n_edges != n_edges) throw std::invalid_argument("one statistics blob per edge is needed");
	with_statistic(kind, quantile, k, init_with_max, [&](auto statistic) {
		statistic.load(blobs);
		RegionMerging<decltype(statistic)> merging(u, v, n_edges, std::move(statistic));
		if (forced != nullptr) merging.force_edges(forced);
		merging.merge_until(threshold, result);
	});
}

// Labels the partition of `fragments` (n voxels) in which the edges (u, v)
// with merge_score < threshold join their fragments: every voxel gets the
// smallest fragment id of its region; 0 and fragments without edges keep
// their value.
inline void segment(const std::uint64_t* fragments, std::size_t n, const std::uint64_t* u,
                    const std::uint64_t* v, const float* merge_score, std::size_t n_edges, float threshold,
                    std::uint64_t* out) {
	FragmentIndex index(2 * n_edges);
	union_find::DisjointSets<std::size_t> regions;
	std::vector<std::uint64_t> smallest;  // per root: the smallest id of its region
	auto node = [&](std::uint64_t id) {
		std::size_t i = index.find_or_insert(id);
		if (i == regions.count()) {
			regions.add();
			smallest.push_back(id);
		}
		return i;
	};
	auto keep_smallest = [&](std::size_t keep, std::size_t gone) {
		smallest[keep] = std::min(smallest[keep], smallest[gone]);
	};
	for (std::size_t e = 0; e < n_edges; e++) {
		const std::size_t a = node(u[e]), b = node(v[e]);
		if (!(merge_score[e] < threshold)) continue;  // NaN: never merged
		regions.unite(a, b, keep_smallest);
	}
	// runs of equal ids are the rule in a fragment volume
	std::uint64_t last = 0, last_label = 0;
	for (std::size_t i = 0; i < n; i++) {
		const std::uint64_t id = fragments[i];
		if (id != last) {
			last = id;
			const std::size_t j = index.find(id);
			last_label = j == FragmentIndex::kNotFound ? id : smallest[regions.find(j)];
		}
		out[i] = last_label;
	}
}

}  // namespace region_merging
}  // namespace blockwise
