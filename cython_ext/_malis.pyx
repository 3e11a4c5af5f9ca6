# cython: language_level=3
"""Constrained two-pass MALIS weights (Turaga et al. 2009; Funke et al. 2018, Sec. 3.2).

Reached only through :func:`blockwise.kernels.malis.malis_weights`, which checks
shapes, dtypes, contiguity, offsets and the affinity values (finite, in [0, 1])
and sizes the outputs before calling :func:`malis_weights_kernel`.

Graph: voxels are nodes; channel c at voxel p is the edge (p, p + offsets[c])
where both ends lie in the volume. Its id is its index in the flattened
affinity array, c * n_voxels + p.

Each pass is a Kruskal run over all edges, sorted by the pass's constrained
affinity descending, ties by ascending edge id (an LSD radix sort on the float
bits, stable, so ties keep the id order). When an edge joins two components,
the pairs of labelled voxels it joins are counted from per-component label
histograms: Σ_l h_a[l] h_b[l] same-object pairs, n_a n_b minus that pairs of
different objects, where n is the number of labelled (non-zero) voxels.
Histograms are kept per union-find root; a component with one distinct label
stores it inline (no hash map), and a map is created only when two labels
meet; maps are merged small into large, so a pass costs O(E) for the sort,
O(E α(n)) for the finds and O(n log n) hash-map operations at worst.

Memory besides inputs and outputs: 21 bytes per edge (ids, keys, their sort
buffers, the same-object flags) and 32 bytes per voxel (parent, size, payload),
plus the histograms (at most one entry per labelled voxel).
"""

cimport cython
from cython.operator cimport dereference as deref
from cython.operator cimport preincrement as inc
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy
from libcpp.unordered_map cimport unordered_map
from libcpp.utility cimport pair
from libcpp.vector cimport vector

cdef extern from "union_find.hpp" namespace "blockwise::union_find" nogil:
    # the shared union-find (union by size, path compression): see union_find.hpp
    I _find "blockwise::union_find::find"[I](I* parent, I element) noexcept
    I _link "blockwise::union_find::link"[I, S](I* parent, S* size, I root_a, I root_b) noexcept

cdef extern from * nogil:
    void _prefetch "__builtin_prefetch"(const void* address) noexcept

ctypedef unordered_map[uint64_t, int64_t] Histogram

# how many edges ahead of the current one the Kruskal loop prefetches
cdef enum:
    _PREFETCH_AHEAD = 16


cdef inline uint32_t _descending_key(float value) noexcept nogil:
    """Sort key of an affinity in [0, 1]: ascending keys are descending values.

    Non-negative floats order like their bit patterns; -0.0 is mapped to +0.0.
    """
    cdef uint32_t bits
    if value <= 0:
        return 0xFFFFFFFFu
    memcpy(&bits, &value, 4)
    return ~bits


cdef void _radix_sort(vector[uint32_t]& keys, vector[uint32_t]& ids,
                      vector[uint32_t]& keys_tmp, vector[uint32_t]& ids_tmp) noexcept nogil:
    """Sort ``ids`` by ``keys`` ascending, stably (ties keep their order); two 16-bit passes."""
    cdef size_t n = keys.size()
    cdef vector[size_t] count
    cdef size_t i, bucket, total, c
    cdef int shift
    count.resize(65536)
    for shift in range(0, 32, 16):
        for bucket in range(65536):
            count[bucket] = 0
        for i in range(n):
            count[(keys[i] >> shift) & 0xFFFF] += 1
        if n == 0 or count[(keys[0] >> shift) & 0xFFFF] == n:
            continue  # every key has this digit: the pass would not move anything
        total = 0
        for bucket in range(65536):
            c = count[bucket]
            count[bucket] = total
            total += c
        for i in range(n):
            bucket = (keys[i] >> shift) & 0xFFFF
            keys_tmp[count[bucket]] = keys[i]
            ids_tmp[count[bucket]] = ids[i]
            count[bucket] += 1
        keys.swap(keys_tmp)
        ids.swap(ids_tmp)


cdef struct _Payload:
    int64_t n_labelled  # voxels with a non-zero label
    uint64_t only_label  # without a histogram: the one label, 0 if none
    int64_t histogram  # index into _Components.histograms, -1 if none


@cython.final
cdef class _Components:
    """Union-find over the voxels with a label histogram per root."""

    cdef vector[uint32_t] parent
    cdef vector[uint32_t] size
    cdef vector[_Payload] payload  # per root; one struct, so one cache miss per root
    cdef vector[Histogram] histograms
    cdef vector[int64_t] free_histograms

    cdef void reset(self, const uint64_t* labels, size_t n) noexcept nogil:
        cdef size_t i
        self.parent.resize(n)
        self.size.resize(n)
        self.payload.resize(n)
        cdef _Payload* payload = self.payload.data()
        for i in range(n):
            self.parent[i] = <uint32_t>i
            self.size[i] = 1
            payload[i].n_labelled = labels[i] != 0
            payload[i].only_label = labels[i]
            payload[i].histogram = -1
        self.histograms.clear()
        self.free_histograms.clear()

    cdef int64_t _new_histogram(self) except -1 nogil:
        cdef int64_t index
        if self.free_histograms.size() > 0:
            index = self.free_histograms.back()
            self.free_histograms.pop_back()
            return index
        self.histograms.push_back(Histogram())
        return <int64_t>self.histograms.size() - 1

    cdef int64_t merge(self, uint32_t root_a, uint32_t root_b,
                       int64_t* n_a, int64_t* n_b) except -1 nogil:
        """Join the components whose roots are root_a != root_b.

        Returns the number of same-label pairs joined, and the labelled sizes
        of both sides in ``n_a`` and ``n_b``.
        """
        cdef uint32_t* parent = self.parent.data()
        cdef _Payload* payload = self.payload.data()
        cdef uint32_t keep, gone
        cdef int64_t h_keep, h_gone, small, large, same = 0
        cdef int64_t fold_count
        cdef int64_t* count
        cdef uint64_t label_keep, label_gone, fold_label
        cdef Histogram* into
        cdef Histogram* source
        cdef Histogram.iterator it, found
        keep = _link(parent, self.size.data(), root_a, root_b)
        gone = root_b if keep == root_a else root_a
        n_a[0] = payload[keep].n_labelled
        n_b[0] = payload[gone].n_labelled
        h_keep = payload[keep].histogram
        h_gone = payload[gone].histogram
        label_keep = payload[keep].only_label
        label_gone = payload[gone].only_label
        if h_keep < 0 and h_gone < 0:
            if label_gone == 0:
                pass  # gone has no labelled voxel: keep's histogram is the union
            elif label_keep == 0:
                payload[keep].only_label = label_gone
            elif label_keep == label_gone:
                same = n_a[0] * n_b[0]
            else:
                h_keep = self._new_histogram()
                into = &self.histograms[h_keep]
                into.insert(pair[uint64_t, int64_t](label_keep, n_a[0]))
                into.insert(pair[uint64_t, int64_t](label_gone, n_b[0]))
                payload[keep].histogram = h_keep
                payload[keep].only_label = 0
        elif h_gone < 0 or h_keep < 0:
            # one side has a map, the other one label at most: fold that in
            if h_keep < 0:
                payload[keep].histogram = h_gone
                payload[keep].only_label = 0
                into = &self.histograms[h_gone]
                fold_label = label_keep
                fold_count = n_a[0]
            else:
                into = &self.histograms[h_keep]
                fold_label = label_gone
                fold_count = n_b[0]
            if fold_label != 0:
                found = into.find(fold_label)
                if found == into.end():
                    into.insert(pair[uint64_t, int64_t](fold_label, fold_count))
                else:
                    # through a pointer: Cython would apply += to a copy of deref(found)
                    count = &deref(found).second
                    same = count[0] * fold_count
                    count[0] += fold_count
        else:
            # two maps: iterate the smaller, fold it into the larger
            if self.histograms[h_keep].size() >= self.histograms[h_gone].size():
                large = h_keep
                small = h_gone
            else:
                large = h_gone
                small = h_keep
            into = &self.histograms[large]
            source = &self.histograms[small]
            it = source.begin()
            while it != source.end():
                found = into.find(deref(it).first)
                if found == into.end():
                    into.insert(deref(it))
                else:
                    count = &deref(found).second
                    same += count[0] * deref(it).second
                    count[0] += deref(it).second
                inc(it)
            source.clear()
            self.free_histograms.push_back(small)
            payload[keep].histogram = large
        payload[gone].histogram = -1
        payload[gone].only_label = 0
        payload[keep].n_labelled += payload[gone].n_labelled
        return same


def malis_weights_kernel(const float[:, :, :, ::1] affs not None,
                         const uint64_t[:, :, ::1] labels not None,
                         const int64_t[:, ::1] offsets not None,
                         float[:, :, :, ::1] weights_positive not None,
                         float[:, :, :, ::1] weights_negative not None):
    """Fill the positive- and negative-pass MALIS weights of every edge.

    Args:
        affs: (C, Z, Y, X) affinities in [0, 1].
        labels: (Z, Y, X) ground-truth object ids, 0 = background.
        offsets: (C, 3) voxel offsets of the channels.
        weights_positive: (C, Z, Y, X) zeros; receives the positive-pass counts.
        weights_negative: (C, Z, Y, X) zeros; receives the negative-pass counts.

    Returns:
        (same-object pairs counted, different-object pairs counted) as ints.
    """
    cdef Py_ssize_t n_channels = affs.shape[0]
    cdef Py_ssize_t depth = affs.shape[1], height = affs.shape[2], width = affs.shape[3]
    cdef size_t n_voxels = depth * height * width
    cdef const float* aff = &affs[0, 0, 0, 0]
    cdef const uint64_t* label = &labels[0, 0, 0]
    cdef float* out_positive = &weights_positive[0, 0, 0, 0]
    cdef float* out_negative = &weights_negative[0, 0, 0, 0]
    cdef vector[int64_t] flat_offset
    cdef vector[uint32_t] base_ids, ids, keys, ids_tmp, keys_tmp
    cdef vector[uint8_t] inside  # per edge in base_ids: both ends carry the same object
    cdef Py_ssize_t c, z, y, x, dz, dy, dx
    cdef size_t k, n_edges, p, q
    cdef uint32_t edge, root_a, root_b
    cdef uint32_t* parent
    cdef int64_t same, n_a = 0, n_b = 0
    cdef int64_t total_same = 0, total_different = 0
    cdef int is_positive
    cdef uint8_t same_object
    cdef float value
    cdef _Components components = _Components()

    with nogil:
        base_ids.reserve(n_channels * n_voxels)
        inside.reserve(n_channels * n_voxels)
        for c in range(n_channels):
            dz = offsets[c, 0]
            dy = offsets[c, 1]
            dx = offsets[c, 2]
            flat_offset.push_back((dz * height + dy) * width + dx)
            for z in range(max(0, -dz), min(depth, depth - dz)):
                for y in range(max(0, -dy), min(height, height - dy)):
                    for x in range(max(0, -dx), min(width, width - dx)):
                        p = (z * height + y) * width + x
                        q = p + flat_offset[c]
                        base_ids.push_back(<uint32_t>(c * n_voxels + p))
                        same_object = 0
                        if label[p] != 0 and label[p] == label[q]:
                            same_object = 1
                        inside.push_back(same_object)
        n_edges = base_ids.size()
        keys.resize(n_edges)
        keys_tmp.resize(n_edges)
        ids_tmp.resize(n_edges)

        for is_positive in range(1, -1, -1):
            # positive pass: min(pred, gt) -- edges not inside one object are 0;
            # negative pass: max(pred, gt) -- edges inside one object are 1
            ids = base_ids
            for k in range(n_edges):
                value = aff[base_ids[k]]
                if is_positive and not inside[k]:
                    value = 0.0
                elif not is_positive and inside[k]:
                    value = 1.0
                keys[k] = _descending_key(value)
            _radix_sort(keys, ids, keys_tmp, ids_tmp)

            components.reset(label, n_voxels)
            parent = components.parent.data()
            for k in range(n_edges):
                if k + _PREFETCH_AHEAD < n_edges:
                    # the finds below are cache misses in random order; the
                    # edges to come are known, so fetch their voxels early
                    edge = ids[k + _PREFETCH_AHEAD]
                    c = edge // n_voxels
                    p = edge - c * n_voxels
                    _prefetch(&parent[p])
                    _prefetch(&parent[p + flat_offset[c]])
                edge = ids[k]
                c = edge // n_voxels
                p = edge - c * n_voxels
                root_a = _find(parent, <uint32_t>p)
                root_b = _find(parent, <uint32_t>(p + flat_offset[c]))
                if root_a == root_b:
                    continue
                same = components.merge(root_a, root_b, &n_a, &n_b)
                if is_positive:
                    out_positive[edge] = <float>same
                    total_same += same
                else:
                    out_negative[edge] = <float>(n_a * n_b - same)
                    total_different += n_a * n_b - same
    return total_same, total_different
