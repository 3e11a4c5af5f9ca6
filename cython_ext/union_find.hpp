// Union-find (disjoint sets) shared by every kernel, header-only.
//
// Union by size with path compression: a find costs O(alpha(n)) amortised.
// The primitives work on caller-owned arrays (`parent`, `size`), so the same
// code runs on numpy buffers handed over by Cython and on the std::vector
// storage of DisjointSets below:
//
//   find(parent, x)                   root of x; every element on the path
//                                     then points straight at the root
//   link(parent, size, ra, rb)        joins two distinct roots, returns the
//                                     surviving one
//   unite(parent, size, a, b, hook)   find + link, calling hook(keep, gone)
//                                     before the link (the payload hook)
//
// Tie rule, relied on by callers and tests: the root of the larger set
// survives; on equal sizes the first argument's root (ra, the set of a)
// survives, i.e. the set of b goes under the root of a.
//
// The payload hook lets a kernel keep data per set (the smallest id of a
// region, a label histogram for MALIS) in its own arrays indexed by root: when
// hook(keep, gone) runs, size[keep] and size[gone] are still the sizes of the
// two sets being joined, and afterwards `gone` is no longer a root, so the
// hook moves gone's payload into keep's slot.

#pragma once

#include <cstddef>
#include <utility>
#include <vector>

namespace blockwise {
namespace union_find {

// Returns the root of `element` and points every element on its path at it.
template <class Index>
inline Index find(Index* parent, Index element) noexcept {
	Index root = element;
	while (parent[root] != root) root = parent[root];
	while (parent[element] != root) {
		const Index next = parent[element];
		parent[element] = root;
		element = next;
	}
	return root;
}

// Joins the sets whose roots are root_a != root_b and returns the surviving
// root: that of the larger set, root_a on equal sizes.
template <class Index, class Size>
inline Index link(Index* parent, Size* size, Index root_a, Index root_b) noexcept {
	if (size[root_a] < size[root_b]) std::swap(root_a, root_b);
	parent[root_b] = root_a;
	size[root_a] += size[root_b];
	return root_a;
}

// Hook for unite() when no payload is kept.
struct NoPayload {
	template <class Index>
	void operator()(Index, Index) const noexcept {}
};

// Joins the sets of a and b. Returns false (and calls nothing) if they are
// already one set; otherwise calls on_merge(keep, gone) with the surviving
// root and the other one, before the link, and returns true.
template <class Index, class Size, class OnMerge = NoPayload>
inline bool unite(Index* parent, Size* size, Index a, Index b, OnMerge&& on_merge = OnMerge()) {
	Index root_a = find(parent, a);
	Index root_b = find(parent, b);
	if (root_a == root_b) return false;
	if (size[root_a] < size[root_b]) std::swap(root_a, root_b);
	on_merge(root_a, root_b);
	link(parent, size, root_a, root_b);
	return true;
}

// Disjoint sets that own their storage and can grow one element at a time.
template <class Index = std::size_t>
class DisjointSets {
public:
	explicit DisjointSets(std::size_t n = 0) : _parent(n), _size(n, 1) {
		for (std::size_t i = 0; i < n; i++) _parent[i] = static_cast<Index>(i);
	}

	// Number of elements.
	std::size_t count() const noexcept { return _parent.size(); }

	// Adds a singleton set and returns its element.
	Index add() {
		const Index element = static_cast<Index>(_parent.size());
		_parent.push_back(element);
		_size.push_back(1);
		return element;
	}

	Index find(Index element) noexcept { return union_find::find(_parent.data(), element); }

	// Number of elements of the set whose root is `root`.
	Index set_size(Index root) const noexcept { return _size[root]; }

	Index link(Index root_a, Index root_b) noexcept {
		return union_find::link(_parent.data(), _size.data(), root_a, root_b);
	}

	template <class OnMerge = NoPayload>
	bool unite(Index a, Index b, OnMerge&& on_merge = OnMerge()) {
		return union_find::unite(_parent.data(), _size.data(), a, b, std::forward<OnMerge>(on_merge));
	}

private:
	std::vector<Index> _parent;
	std::vector<Index> _size;
};

}  // namespace union_find
}  // namespace blockwise
