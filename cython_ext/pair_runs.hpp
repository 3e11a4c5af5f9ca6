// Runs of label pairs with a sum and a count, summed per pair; header-only.
//
// The counting step shared by the contact kernel (_contacts: fragment pairs,
// affinity sums) and the overlap kernel (_overlaps: fragment and basin,
// voxel counts). A scan adds neighbouring voxels that see the same pair into
// one run (`extend`), stores a finished run (`flush`), and at the end sums
// the runs of each pair and sorts the pairs (`sum_by_pair`). The result
// does not depend on the order in which the runs were stored.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace blockwise::pair_runs {

struct Run {
    uint64_t a, b, sum, count;
};

// Store `run` (if it counted anything) and start an empty one.
inline void flush(std::vector<Run>& runs, Run& run) {
    if (run.count != 0) {
        runs.push_back(run);
        run.count = 0;
    }
}

// Add one value of the pair (a, b): to `run` if it is that pair's, else to a
// new run after storing `run`.
inline void extend(std::vector<Run>& runs, Run& run, uint64_t a, uint64_t b, uint64_t value) {
    if (run.count == 0 || run.a != a || run.b != b) {
        flush(runs, run);
        run.a = a;
        run.b = b;
        run.sum = 0;
    }
    run.sum += value;
    run.count += 1;
}

// Sum the runs of each pair and sort by (a, b): `runs` becomes the distinct
// pairs in (a, b) order. The runs go through a hash table of the distinct
// pairs (open addressing, grown at half load), so only the distinct pairs,
// usually far fewer than the runs, are sorted; sums and counts are integers,
// so the result does not depend on the order of the runs.
inline void sum_by_pair(std::vector<Run>& runs) {
    std::vector<Run> distinct;
    std::vector<std::int64_t> table(1024, -1);
    std::size_t mask = table.size() - 1;
    auto slot_of = [&](std::uint64_t a, std::uint64_t b) {
        std::uint64_t h = a * 0x9E3779B97F4A7C15ULL ^ (b + 0x632BE59BD9B4E019ULL) * 0xBF58476D1CE4E5B9ULL;
        h ^= h >> 31;
        std::size_t slot = static_cast<std::size_t>(h) & mask;
        while (table[slot] >= 0) {
            const Run& held = distinct[static_cast<std::size_t>(table[slot])];
            if (held.a == a && held.b == b) {
                break;
            }
            slot = (slot + 1) & mask;
        }
        return slot;
    };
    for (const Run& run : runs) {
        std::size_t slot = slot_of(run.a, run.b);
        if (table[slot] >= 0) {
            Run& held = distinct[static_cast<std::size_t>(table[slot])];
            held.sum += run.sum;
            held.count += run.count;
            continue;
        }
        table[slot] = static_cast<std::int64_t>(distinct.size());
        distinct.push_back(run);
        if (2 * distinct.size() > table.size()) {
            table.assign(2 * table.size(), -1);
            mask = table.size() - 1;
            for (std::size_t i = 0; i < distinct.size(); ++i) {
                table[slot_of(distinct[i].a, distinct[i].b)] = static_cast<std::int64_t>(i);
            }
        }
    }
    std::sort(distinct.begin(), distinct.end(), [](const Run& x, const Run& y) {
        return x.a < y.a || (x.a == y.a && x.b < y.b);
    });
    runs.swap(distinct);
}

}  // namespace blockwise::pair_runs
