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
any exact priority queue pops in the same order, and the kernel hands the queue
over to one whose buckets keep push order: appends and sequential scans instead
of heap sifts. When the volume holds at most ``MAX_LEVELS`` distinct values
(affinities stored as uint8 give about a thousand) the values are replaced by
their ranks first and the queue is one FIFO per rank (``_drain_levels``);
otherwise it is a radix queue on the value (``_drain_radix``).

Voxels live in a volume padded by one voxel on every side whose padding is never
flooded, so neighbours need no bounds checks; voxel indices and ages are 32 bits.
With ranks, each padded voxel is one 32-bit cell: its rank while it may still be
flooded, else a flag bit and the number of the seed that reached it (0: none;
outside the mask, padding). The flood's working set is then 4 bytes per voxel,
half of what a key and a seed side by side take (the radix queue's layout,
``_Voxel``), and the check of a neighbour and its labelling are one load and
one store. Queue entries carry their seed number, so a pop reads no other array.
The flood visits the volume in value order, not memory order: its cost is cache
misses, which the queues hide by prefetching the neighbourhoods of entries a few
places ahead.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy
from libcpp.algorithm cimport sort
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


cdef struct _Voxel:
    # order key (or rank) of the voxel while it may still be flooded; 0 once it is
    # queued, and for voxels never flooded (outside the mask, padding, seeds)
    uint32_t key
    # 1-based number of the seed that reached the voxel; 0 until then
    uint32_t seed


# a 32-bit cell with this bit set is no longer floodable: queued (the low bits
# are the 1-based number of its seed) or never floodable (low bits 0)
cdef uint32_t _TAKEN = 0x80000000U

# the flood's voxel storage: 32-bit cells (ranks) or key and seed side by side
ctypedef fused _Cell:
    _Voxel
    uint32_t


cdef struct _Item:
    # bits 63..32: the (clamped) key; bits 31..0: age
    uint64_t key
    uint32_t voxel
    uint32_t seed


cdef struct _Entry:
    # an item of the radix queue, which needs no age: buckets keep push order
    uint32_t value
    uint32_t voxel
    uint32_t seed


cdef struct _Queued:
    # an item of the FIFO of one rank, which is its value
    uint32_t voxel
    uint32_t seed


cdef uint64_t _AGE_MASK = 0xFFFFFFFFU

# With at most this many distinct values the flood ranks them and queues one
# FIFO per rank (a header of 24 bytes each); with more it queues by value in a
# radix queue.
MAX_LEVELS = 1 << 16

# entries ahead of the one being popped whose neighbourhoods are prefetched
cdef size_t _AHEAD = 8

cdef size_t _COMPACT_AFTER = 1 << 16


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


ctypedef fused _Queueable:
    _Entry
    _Queued


cdef inline void _compact(vector[_Queueable]& bucket) noexcept nogil:
    """Empty ``bucket``; give its memory back unless it is small.

    A bucket that has been emptied is refilled only later, and often much less:
    keeping the capacities of all buckets would hold memory for more entries than
    are ever queued at once.
    """
    cdef vector[_Queueable] empty
    if bucket.capacity() > _COMPACT_AFTER:
        bucket.swap(empty)
    else:
        bucket.clear()


cdef inline void _prefetch_neighbourhood(const _Cell* voxels, uint32_t voxel,
                                         Py_ssize_t row, Py_ssize_t plane) noexcept nogil:
    _prefetch(voxels + voxel - plane)
    _prefetch(voxels + voxel - row)
    _prefetch(voxels + voxel)
    _prefetch(voxels + voxel + row)
    _prefetch(voxels + voxel + plane)


cdef struct _Grid:
    # padded-volume index offsets of the 6 neighbours, in scikit-image's order:
    # -z, -y, -x, +x, +y, +z
    Py_ssize_t offsets[6]
    Py_ssize_t row
    Py_ssize_t plane


cdef inline uint32_t _claim(_Cell* voxels, uint32_t j, uint32_t seed,
                            uint32_t current) noexcept nogil:
    """Label neighbour ``j`` with ``seed`` if it may still be flooded.

    Returns the value it is queued with (its key raised to ``current``: a flood
    never runs downhill), or 0 if it may not be flooded (then nothing changes).
    """
    cdef uint32_t value
    if _Cell is _Voxel:
        value = voxels[j].key
        if value == 0:
            return 0
        voxels[j].key = 0
        voxels[j].seed = seed
    else:
        value = voxels[j]
        if value & _TAKEN:
            return 0
        voxels[j] = _TAKEN | seed
    return value if value > current else current


cdef uint32_t _flood_seeds(_Cell* voxels, vector[_Item]& heap, Py_ssize_t n_seeds,
                           const _Grid& grid) except? 0 nogil:
    """Phase 1, until the last seed has left the queue; ``heap`` holds the seeds.

    The binary heap, exactly as scikit-image moves its elements, so that seeds of
    equal value leave in the same order. Returns the value (key) of the last seed
    popped: every entry left in the heap is at or above it.
    """
    cdef Py_ssize_t n_seeds_left = n_seeds
    cdef _Item item, pushed
    cdef uint32_t i, j, value, current = 0
    cdef uint64_t age = 0
    cdef int d

    while n_seeds_left > 0:
        item = _heap_pop(heap)
        if (item.key & _AGE_MASK) == 0:
            n_seeds_left -= 1
        if not heap.empty():
            _prefetch_neighbourhood(voxels, heap[0].voxel, grid.row, grid.plane)
        i = item.voxel
        current = <uint32_t>(item.key >> 32)
        pushed.seed = item.seed
        for d in range(6):
            j = <uint32_t>(i + grid.offsets[d])
            value = _claim(voxels, j, item.seed, current)
            if value == 0:
                continue
            age += 1
            pushed.key = (<uint64_t>value << 32) | age
            pushed.voxel = j
            _heap_push(heap, pushed)
    return current


cdef int _drain_levels(uint32_t* voxels, vector[_Item]& heap, uint32_t n_levels,
                       uint32_t current, const _Grid& grid) except -1 nogil:
    """Phase 2 when the keys are ranks 1..``n_levels``: one FIFO per rank.

    Every key left in the queue is unique (ages differ), so any exact queue pops in
    the same order. The heap hands its entries over in (value, age) order, and
    every later push is younger, so each FIFO stays in age order; the clamp keeps
    every push at or above ``current``, so no FIFO below it fills again.
    """
    cdef vector[vector[_Queued]] buckets
    cdef vector[_Item] no_items
    cdef vector[_Queued]* bucket
    cdef _Item item
    cdef _Queued entry, pushed
    cdef size_t head = 0
    cdef uint32_t i, j, value
    cdef int d

    buckets.resize(n_levels + 1)
    while not heap.empty():
        item = _heap_pop(heap)
        entry.voxel = item.voxel
        entry.seed = item.seed
        buckets[<uint32_t>(item.key >> 32)].push_back(entry)
    heap.swap(no_items)  # give the heap's memory back

    bucket = &buckets[current]
    while True:
        if head == bucket.size():
            _compact(bucket[0])
            head = 0
            current += 1
            while current <= n_levels and buckets[current].empty():
                current += 1
            if current > n_levels:
                break
            bucket = &buckets[current]
        elif head >= _COMPACT_AFTER and 2 * head >= bucket.size():
            # drop the popped front of a long FIFO (see _drain_radix)
            bucket.erase(bucket.begin(), bucket.begin() + head)
            head = 0
        entry = bucket[0][head]
        head += 1
        if head + _AHEAD < bucket.size():
            _prefetch_neighbourhood(voxels, bucket[0][head + _AHEAD].voxel, grid.row,
                                    grid.plane)
        i = entry.voxel
        pushed.seed = entry.seed
        for d in range(6):
            j = <uint32_t>(i + grid.offsets[d])
            value = _claim(voxels, j, entry.seed, current)
            if value == 0:
                continue
            pushed.voxel = j
            # ``bucket`` points at the vector, not at its storage: a push to the
            # current FIFO may move the storage
            buckets[value].push_back(pushed)
    return 0


cdef int _drain_radix(_Voxel* voxels, vector[_Item]& heap, uint32_t current,
                      const _Grid& grid) except -1 nogil:
    """Phase 2 for keys of any number of levels: a radix queue on the value.

    Every key left is unique, so any exact queue pops in the same order. Bucket
    b > 0 holds the entries whose value first differs from ``current`` in bit
    b - 1 (counted from 1 at the least significant bit); bucket 0 holds value ==
    current. Entries are only ever appended, and a bucket is redistributed only
    into empty lower buckets, so every bucket stays in push (age) order and
    bucket 0 is the FIFO of the current value. The clamp makes the queue
    monotone, which is all a radix queue needs.
    """
    cdef vector[vector[_Entry]] buckets
    cdef vector[_Item] no_items
    cdef vector[_Entry]* source
    cdef _Item item
    cdef _Entry entry, moved
    cdef size_t head = 0, k
    cdef uint32_t i, j, value, lowest
    cdef int d, b

    buckets.resize(33)
    while not heap.empty():
        # popping hands the entries over in (value, age) order
        item = _heap_pop(heap)
        entry.value = <uint32_t>(item.key >> 32)
        entry.voxel = item.voxel
        entry.seed = item.seed
        buckets[_bit_length(entry.value ^ current)].push_back(entry)
    heap.swap(no_items)  # give the heap's memory back

    while True:
        if head == buckets[0].size():
            _compact(buckets[0])
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
            _compact(source[0])
        elif head >= _COMPACT_AFTER and 2 * head >= buckets[0].size():
            # drop the popped front of a long FIFO so that a wide plateau of one
            # value holds only its pending entries (amortised O(1) per entry)
            buckets[0].erase(buckets[0].begin(), buckets[0].begin() + head)
            head = 0
        entry = buckets[0][head]
        head += 1
        if head + _AHEAD < buckets[0].size():
            _prefetch_neighbourhood(voxels, buckets[0][head + _AHEAD].voxel, grid.row,
                                    grid.plane)
        i = entry.voxel
        moved.seed = entry.seed
        for d in range(6):
            j = <uint32_t>(i + grid.offsets[d])
            value = _claim(voxels, j, entry.seed, current)
            if value == 0:
                continue
            moved.value = value
            moved.voxel = j
            buckets[_bit_length(value ^ current)].push_back(moved)
    return 0


cdef inline size_t _slot(uint32_t key, int bits) noexcept nogil:
    """Home slot of ``key`` in an open-addressing table of 2**bits slots."""
    return <size_t>((key * <uint32_t>2654435761U) >> (32 - bits))


cdef size_t _find(const vector[uint32_t]& table, uint32_t key, int bits) noexcept nogil:
    """The slot holding ``key``, or the empty (0) slot where it belongs."""
    cdef size_t mask = table.size() - 1
    cdef size_t slot = _slot(key, bits)
    while table[slot] != 0 and table[slot] != key:
        slot = (slot + 1) & mask
    return slot


cdef int _insert(vector[uint32_t]& table, int* bits, size_t* count,
                 uint32_t key) except -1 nogil:
    """Add ``key`` (non-zero) to the set; grow the table at half load."""
    cdef size_t slot = _find(table, key, bits[0])
    cdef vector[uint32_t] old
    cdef size_t k
    if table[slot] == key:
        return 0
    table[slot] = key
    count[0] += 1
    if 2 * count[0] > table.size():
        old.swap(table)
        bits[0] += 1
        table.assign(<size_t>1 << bits[0], 0)
        for k in range(old.size()):
            if old[k] != 0:
                table[_find(table, old[k], bits[0])] = old[k]
    return 0


cdef uint32_t _distinct_keys(const float[:, :, ::1] surface, const uint64_t[:, :, ::1] labels,
                             const uint8_t[:, :, ::1] mask, bint has_mask,
                             uint32_t max_levels, vector[uint32_t]& table,
                             int* bits) noexcept nogil:
    """Collect in ``table`` the order keys of the seeds and of the voxels that may be flooded.

    Returns their number, or 0 if there are more than ``max_levels``. Runs of
    equal keys, common in a volume, cost one lookup.
    """
    cdef Py_ssize_t z, y, x
    cdef size_t count = 0
    cdef uint32_t key, previous = 0
    bits[0] = 10
    table.assign(<size_t>1 << bits[0], 0)
    for z in range(surface.shape[0]):
        for y in range(surface.shape[1]):
            for x in range(surface.shape[2]):
                if labels[z, y, x] == 0 and has_mask and mask[z, y, x] == 0:
                    continue
                key = _order_key(surface[z, y, x])
                if key != previous:
                    _insert(table, bits, &count, key)
                    if count > max_levels:
                        return 0
                    previous = key
    return <uint32_t>count


cdef void _rank_table(vector[uint32_t]& table, int bits,
                      vector[uint32_t]& ranks) noexcept nogil:
    """``ranks[slot]``: the rank 1..n, in key order, of the key in each occupied slot."""
    cdef vector[uint32_t] distinct
    cdef size_t k
    for k in range(table.size()):
        if table[k] != 0:
            distinct.push_back(table[k])
    sort(distinct.begin(), distinct.end())
    ranks.assign(table.size(), 0)
    for k in range(distinct.size()):
        ranks[_find(table, distinct[k], bits)] = <uint32_t>(k + 1)


cdef void _flood_ranked(const float[:, :, ::1] surface, uint64_t[:, :, ::1] labels,
                        const uint8_t[:, :, ::1] mask, bint has_mask, uint32_t n_levels,
                        const vector[uint32_t]& table, int bits,
                        const _Grid& grid) except * nogil:
    """The flood over ranks in 32-bit cells (see the module's docstring)."""
    cdef Py_ssize_t depth = surface.shape[0]
    cdef Py_ssize_t height = surface.shape[1]
    cdef Py_ssize_t width = surface.shape[2]
    cdef Py_ssize_t z, y, x, v
    cdef vector[uint32_t] ranks, cells
    cdef vector[uint64_t] seed_labels
    cdef vector[_Item] heap
    cdef _Item item
    cdef uint64_t label
    cdef uint32_t key, previous = 0, rank = 0, cell, current

    _rank_table(<vector[uint32_t]&>table, bits, ranks)
    # padding and voxels outside the mask: taken, by no seed
    cells.assign((depth + 2) * grid.plane, _TAKEN)
    for z in range(depth):
        for y in range(height):
            v = (z + 1) * grid.plane + (y + 1) * grid.row + 1
            for x in range(width):
                label = labels[z, y, x]
                if label == 0 and has_mask and mask[z, y, x] == 0:
                    continue
                key = _order_key(surface[z, y, x])
                if key != previous:
                    previous = key
                    rank = ranks[_find(table, key, bits)]
                if label != 0:
                    # seeds enter in C order with age 0, as in scikit-image; ranks
                    # keep the keys' order, so the heap moves as it would on keys
                    seed_labels.push_back(label)
                    cells[v + x] = _TAKEN | <uint32_t>seed_labels.size()
                    item.key = <uint64_t>rank << 32
                    item.voxel = <uint32_t>(v + x)
                    item.seed = <uint32_t>seed_labels.size()
                    _heap_push(heap, item)
                else:
                    cells[v + x] = rank
    current = _flood_seeds(cells.data(), heap, seed_labels.size(), grid)
    _drain_levels(cells.data(), heap, n_levels, current, grid)
    for z in range(depth):
        for y in range(height):
            v = (z + 1) * grid.plane + (y + 1) * grid.row + 1
            for x in range(width):
                cell = cells[v + x]
                # a rank left: reachable by no seed
                labels[z, y, x] = (
                    seed_labels[(cell ^ _TAKEN) - 1] if cell > _TAKEN else 0
                )


cdef void _flood_radix(const float[:, :, ::1] surface, uint64_t[:, :, ::1] labels,
                       const uint8_t[:, :, ::1] mask, bint has_mask,
                       const _Grid& grid) except * nogil:
    """The flood over order keys in a radix queue, key and seed side by side."""
    cdef Py_ssize_t depth = surface.shape[0]
    cdef Py_ssize_t height = surface.shape[1]
    cdef Py_ssize_t width = surface.shape[2]
    cdef Py_ssize_t z, y, x, v
    cdef vector[_Voxel] voxels
    cdef vector[uint64_t] seed_labels
    cdef vector[_Item] heap
    cdef _Item item
    cdef uint64_t label
    cdef uint32_t seed, current

    # the padding stays 0 (never flooded), so neighbours need no bounds checks
    voxels.resize((depth + 2) * grid.plane)
    for z in range(depth):
        for y in range(height):
            v = (z + 1) * grid.plane + (y + 1) * grid.row + 1
            for x in range(width):
                label = labels[z, y, x]
                if label != 0:
                    # seeds enter in C order with age 0, as in scikit-image
                    seed_labels.push_back(label)
                    voxels[v + x].seed = <uint32_t>seed_labels.size()
                    item.key = <uint64_t>_order_key(surface[z, y, x]) << 32
                    item.voxel = <uint32_t>(v + x)
                    item.seed = <uint32_t>seed_labels.size()
                    _heap_push(heap, item)
                elif not has_mask or mask[z, y, x] != 0:
                    voxels[v + x].key = _order_key(surface[z, y, x])
    current = _flood_seeds(voxels.data(), heap, seed_labels.size(), grid)
    _drain_radix(voxels.data(), heap, current, grid)
    for z in range(depth):
        for y in range(height):
            v = (z + 1) * grid.plane + (y + 1) * grid.row + 1
            for x in range(width):
                seed = voxels[v + x].seed
                labels[z, y, x] = seed_labels[seed - 1] if seed != 0 else 0


def flood(const float[:, :, ::1] surface not None, uint64_t[:, :, ::1] labels not None,
          const uint8_t[:, :, ::1] mask=None, *, uint32_t max_levels=MAX_LEVELS):
    """Flood ``labels`` in place from its non-zero voxels over ``surface``.

    Args:
        surface: Flood priority per voxel; no NaN.
        labels: Seeds on input (non-zero; zero outside ``mask``). On output every
            voxel reached from a seed through ``mask`` holds that seed's label.
        mask: Non-zero where voxels may be flooded; ``None`` floods everywhere.
        max_levels: Queue by rank (one FIFO per distinct value, 32-bit cells)
            when there are at most this many distinct values, else by value in
            a radix queue; both give the same labels (0 always takes the radix
            queue: for tests).

    The caller guarantees equal shapes and that the volume padded by one voxel on
    every side has fewer than 2**32 voxels (voxel indices and ages are 32 bits).
    """
    cdef Py_ssize_t depth = surface.shape[0]
    cdef Py_ssize_t height = surface.shape[1]
    cdef Py_ssize_t width = surface.shape[2]
    cdef bint has_mask = mask is not None
    cdef uint32_t n_levels = 0
    cdef vector[uint32_t] table
    cdef int bits = 0
    cdef _Grid grid

    if depth * height * width == 0:
        return
    grid.row = width + 2
    grid.plane = (height + 2) * grid.row
    grid.offsets[0] = -grid.plane
    grid.offsets[1] = -grid.row
    grid.offsets[2] = -1
    grid.offsets[3] = 1
    grid.offsets[4] = grid.row
    grid.offsets[5] = grid.plane
    with nogil:
        # a 32-bit cell holds a seed number below 2**31: at most one per voxel
        if max_levels > 0 and (depth + 2) * grid.plane < <Py_ssize_t>_TAKEN:
            n_levels = _distinct_keys(surface, labels, mask, has_mask, max_levels, table,
                                      &bits)
        if n_levels > 0:
            _flood_ranked(surface, labels, mask, has_mask, n_levels, table, bits, grid)
        else:
            _flood_radix(surface, labels, mask, has_mask, grid)
