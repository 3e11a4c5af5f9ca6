# cython: language_level=3
"""Seeded priority-flood watershed on a 3D volume with 6-connectivity.

Reach this kernel only through :mod:`blockwise.kernels.watershed`, which checks
shapes, dtypes, contiguity, NaNs and the volume size before calling it.

The flood pops voxels from a priority queue ordered by (value, age): ``value`` is
the surface value of the voxel, raised to the value of the voxel that pushed it
(a flood never runs downhill), and ``age`` counts pushes, so ties leave the queue
first-in-first-out. Seeds enter with age 0 in C order. A neighbour is labelled
when it is pushed, with the label of the voxel being popped. This is exactly what
``skimage.segmentation.watershed(surface, markers, mask=mask, connectivity=1)``
computes, including the order in which seeds of equal value leave the queue: that
order depends on the layout of a binary heap, so the heap below moves elements
exactly as scikit-image's heap does.

Once the last seed has left the queue every key in it is unique (ages differ), so
any exact priority queue pops in the same order. The kernel then hands the queue
over to a radix queue on the value alone, whose buckets keep push order (see
``_flood``): appends and sequential scans instead of heap sifts, which matters
because the flood visits the volume in value order, not memory order.

Voxels live in a volume padded by one voxel on every side whose padding is never
flooded, so neighbours need no bounds checks; voxel indices and ages are 32 bits.
While the flood runs, the output array itself holds the number of the seed that
reached each voxel (queue entries carry the voxel's index in both volumes), so
the kernel needs 4 bytes per padded voxel beside its queue.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy
from libcpp.vector cimport vector


cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define BLOCKWISE_PREFETCH(address) __builtin_prefetch(address)
    #else
    #define BLOCKWISE_PREFETCH(address) ((void)(address))
    #endif
    """
    void _prefetch "BLOCKWISE_PREFETCH"(const void* address) noexcept nogil


cdef extern from *:
    """
    static inline int blockwise_bit_length(uint32_t bits) {
    #if defined(__GNUC__) || defined(__clang__)
        return bits ? 32 - __builtin_clz(bits) : 0;
    #else
        int length = 0;
        while (bits) { ++length; bits >>= 1; }
        return length;
    #endif
    }
    """
    int _bit_length "blockwise_bit_length"(uint32_t bits) noexcept nogil


cdef struct _Item:
    # bits 63..32: order-preserving image of the (clamped) float32 value; bits 31..0: age
    uint64_t key
    # index into the padded volume
    uint32_t voxel
    # index into the unpadded volume (C order)
    uint32_t place


cdef struct _Entry:
    # an item of the phase-2 queue, which needs no age: buckets keep push order
    uint32_t value
    uint32_t voxel
    uint32_t place


cdef uint64_t _AGE_MASK = 0xFFFFFFFFU


cdef inline uint32_t _order_key(float value) noexcept nogil:
    """Map a float32 (not NaN) to a non-zero uint32 with the same order.

    -0.0 maps like 0.0, as the two compare equal. NaN is excluded by the caller,
    so 0 is never a key and marks voxels that may not be flooded.
    """
    cdef uint32_t bits
    if value == 0:
        value = 0
    memcpy(&bits, &value, 4)
    if bits & 0x80000000U:
        return ~bits
    return bits | 0x80000000U


cdef inline int _heap_push(vector[_Item]& heap, _Item item) except -1 nogil:
    """Sift ``item`` up from the end, past strictly larger parents only."""
    cdef size_t child = heap.size()
    cdef size_t parent
    heap.push_back(item)
    while child > 0:
        parent = (child - 1) // 2
        if item.key < heap[parent].key:
            heap[child] = heap[parent]
            child = parent
        else:
            break
    heap[child] = item
    return 0


cdef inline _Item _heap_pop(vector[_Item]& heap) noexcept nogil:
    """Remove the root; the last element sifts down from the root.

    The right child is taken only if strictly smaller than the left one, and it
    moves up only if strictly smaller than the sinking element: the comparisons of
    scikit-image's ``heappop``, so equal keys end up in the same places.
    """
    cdef _Item top = heap[0]
    cdef _Item last = heap.back()
    cdef size_t n, i, child
    heap.pop_back()
    n = heap.size()
    if n == 0:
        return top
    i = 0
    while True:
        child = 2 * i + 1
        if child >= n:
            break
        if child + 1 < n and heap[child + 1].key < heap[child].key:
            child += 1
        if heap[child].key < last.key:
            heap[i] = heap[child]
            i = child
        else:
            break
    heap[i] = last
    return top


cdef size_t _COMPACT_AFTER = 1 << 16


cdef inline void _release(vector[_Entry]& bucket) noexcept nogil:
    """Empty ``bucket``; give its memory back unless it is small.

    A bucket that has been emptied is refilled only later, and often much less:
    keeping the capacities of all buckets would hold memory for more entries than
    are ever queued at once.
    """
    cdef vector[_Entry] empty
    if bucket.capacity() > _COMPACT_AFTER:
        bucket.swap(empty)
    else:
        bucket.clear()


cdef inline void _prefetch_neighbourhood(const uint32_t* keys, uint32_t voxel,
                                         Py_ssize_t row, Py_ssize_t plane) noexcept nogil:
    _prefetch(keys + voxel - plane)
    _prefetch(keys + voxel - row)
    _prefetch(keys + voxel)
    _prefetch(keys + voxel + row)
    _prefetch(keys + voxel + plane)


cdef int _flood(uint32_t* keys, uint64_t* seed_of, vector[_Item]& heap,
                Py_ssize_t n_seeds, Py_ssize_t row, Py_ssize_t plane,
                Py_ssize_t width, Py_ssize_t area) except -1 nogil:
    """Run the flood over the padded volume; ``heap`` holds the seeds on entry.

    ``keys[v]`` is the order key of padded voxel ``v`` while it may still be
    flooded and 0 otherwise (outside the mask, on the padding, already labelled).
    ``seed_of[p]``, over the unpadded volume (``width`` voxels per row, ``area``
    per plane), holds the 1-based number of the seed that reaches voxel ``p``:
    set for the seeds on entry and for every voxel when it is pushed, so a
    popped voxel finds its seed there.
    """
    cdef Py_ssize_t offsets[6]
    cdef Py_ssize_t places[6]
    cdef uint64_t seed
    cdef vector[_Item] no_items
    cdef Py_ssize_t n_seeds_left = n_seeds
    cdef _Item item, pushed
    cdef _Entry entry, moved
    cdef vector[vector[_Entry]] buckets
    cdef vector[_Entry]* source
    cdef size_t head = 0, k
    cdef uint32_t i, j, value, current = 0, lowest
    cdef uint64_t age = 0
    cdef int d, b

    # scikit-image's neighbour order: -z, -y, -x, +x, +y, +z
    offsets[0] = -plane
    offsets[1] = -row
    offsets[2] = -1
    offsets[3] = 1
    offsets[4] = row
    offsets[5] = plane
    places[0] = -area
    places[1] = -width
    places[2] = -1
    places[3] = 1
    places[4] = width
    places[5] = area

    # Phase 1, until the last seed has left: the binary heap, exactly as
    # scikit-image moves its elements, so that seeds of equal value leave in the
    # same order.
    while n_seeds_left > 0:
        item = _heap_pop(heap)
        if (item.key & _AGE_MASK) == 0:
            n_seeds_left -= 1
        if not heap.empty():
            _prefetch_neighbourhood(keys, heap[0].voxel, row, plane)
        i = item.voxel
        current = <uint32_t>(item.key >> 32)
        seed = seed_of[item.place]
        for d in range(6):
            j = <uint32_t>(i + offsets[d])
            value = keys[j]
            if value == 0:
                continue
            keys[j] = 0
            pushed.place = <uint32_t>(item.place + places[d])
            seed_of[pushed.place] = seed
            age += 1
            if value < current:
                value = current
            pushed.key = (<uint64_t>value << 32) | age
            pushed.voxel = j
            _heap_push(heap, pushed)

    # Phase 2: every key left is unique, so any exact queue pops in the same
    # order. A radix queue on the value: bucket b > 0 holds the entries whose
    # value first differs from ``current`` in bit b - 1 (counted from 1 at the
    # least significant bit); bucket 0 holds value == current. Entries are only
    # ever appended, and a bucket is redistributed only into empty lower
    # buckets, so every bucket stays in push (age) order and bucket 0 is the
    # FIFO of the current value. The clamp makes the queue monotone, which is
    # all a radix queue needs.
    buckets.resize(33)
    while not heap.empty():
        # popping hands the entries over in (value, age) order
        item = _heap_pop(heap)
        entry.value = <uint32_t>(item.key >> 32)
        entry.voxel = item.voxel
        entry.place = item.place
        buckets[_bit_length(entry.value ^ current)].push_back(entry)
    heap.swap(no_items)  # give the heap's memory back

    while True:
        if head == buckets[0].size():
            _release(buckets[0])
            head = 0
            b = 1
            while b <= 32 and buckets[b].empty():
                b += 1
            if b > 32:
                break
            source = &buckets[b]
            lowest = source[0][0].value
            for k in range(1, source.size()):
                if source[0][k].value < lowest:
                    lowest = source[0][k].value
            current = lowest
            for k in range(source.size()):
                moved = source[0][k]
                buckets[_bit_length(moved.value ^ current)].push_back(moved)
            _release(source[0])
        elif head >= _COMPACT_AFTER and 2 * head >= buckets[0].size():
            # drop the popped front of a long FIFO so that a wide plateau of one
            # value holds only its pending entries (amortised O(1) per entry)
            buckets[0].erase(buckets[0].begin(), buckets[0].begin() + head)
            head = 0
        entry = buckets[0][head]
        head += 1
        if head < buckets[0].size():
            _prefetch_neighbourhood(keys, buckets[0][head].voxel, row, plane)
            _prefetch(seed_of + buckets[0][head].place)
        i = entry.voxel
        seed = seed_of[entry.place]
        for d in range(6):
            j = <uint32_t>(i + offsets[d])
            value = keys[j]
            if value == 0:
                continue
            keys[j] = 0
            moved.place = <uint32_t>(entry.place + places[d])
            seed_of[moved.place] = seed
            if value < current:
                value = current
            moved.value = value
            moved.voxel = j
            buckets[_bit_length(value ^ current)].push_back(moved)
    return 0


def flood(const float[:, :, ::1] surface not None, uint64_t[:, :, ::1] labels not None,
          const uint8_t[:, :, ::1] mask=None):
    """Flood ``labels`` in place from its non-zero voxels over ``surface``.

    Args:
        surface: Flood priority per voxel; no NaN.
        labels: Seeds on input (non-zero; zero outside ``mask``). On output every
            voxel reached from a seed through ``mask`` holds that seed's label.
        mask: Non-zero where voxels may be flooded; ``None`` floods everywhere.

    The caller guarantees equal shapes and that the volume padded by one voxel on
    every side has fewer than 2**32 voxels (voxel indices and ages are 32 bits).
    """
    cdef Py_ssize_t depth = surface.shape[0]
    cdef Py_ssize_t height = surface.shape[1]
    cdef Py_ssize_t width = surface.shape[2]
    cdef Py_ssize_t row = width + 2
    cdef Py_ssize_t plane = (height + 2) * row
    cdef Py_ssize_t z, y, x, v
    cdef bint has_mask = mask is not None
    cdef uint64_t seed
    cdef uint64_t label
    cdef uint64_t* seed_of
    cdef vector[uint32_t] keys
    cdef vector[uint64_t] seed_labels
    cdef vector[_Item] heap
    cdef _Item item

    if depth * height * width == 0:
        return
    # the padding stays 0 (never flooded), so neighbours need no bounds checks
    keys.resize((depth + 2) * plane)
    # ``labels`` holds seed numbers while the flood runs: no second volume
    seed_of = &labels[0, 0, 0]
    with nogil:
        for z in range(depth):
            for y in range(height):
                v = (z + 1) * plane + (y + 1) * row + 1
                for x in range(width):
                    label = labels[z, y, x]
                    if label != 0:
                        # seeds enter in C order with age 0, as in scikit-image
                        seed_labels.push_back(label)
                        labels[z, y, x] = seed_labels.size()
                        item.key = <uint64_t>_order_key(surface[z, y, x]) << 32
                        item.voxel = <uint32_t>(v + x)
                        item.place = <uint32_t>((z * height + y) * width + x)
                        _heap_push(heap, item)
                    elif not has_mask or mask[z, y, x] != 0:
                        keys[v + x] = _order_key(surface[z, y, x])
        _flood(keys.data(), seed_of, heap, seed_labels.size(), row, plane,
               width, height * width)
        for v in range(depth * height * width):
            seed = seed_of[v]
            if seed != 0:
                seed_of[v] = seed_labels[seed - 1]
