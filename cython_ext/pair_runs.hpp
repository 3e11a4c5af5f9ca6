// Runs of label pairs with a sum and a count, summed per pair; header-only.
//
// The counting step shared by the contact kernel (_contacts: fragment pairs,
// affinity sums) and the overlap kernel (_overlaps: fragment and basin,
// voxel counts). A scan adds neighbouring voxels that see the same pair into
// one run (`extend`), stores a finished run (`flush`), and at the end sorts
// the runs by pair and sums those of one pair (`sum_by_pair`). The result
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

// Sort by (a, b) and sum the runs of each pair: `runs` becomes the distinct
// pairs in (a, b) order.
inline void sum_by_pair(std::vector<Run>& runs) {
    std::sort(runs.begin(), runs.end(), [](const Run& x, const Run& y) {
        return x.a < y.a || (x.a == y.a && x.b < y.b);
    });
    std::size_t k = 0;
    for (std::size_t i = 0; i < runs.size(); ++i) {
        if (k > 0 && runs[i].a == runs[k - 1].a && runs[i].b == runs[k - 1].b) {
            runs[k - 1].sum += runs[i].sum;
            runs[k - 1].count += runs[i].count;
        } else {
            runs[k++] = runs[i];
        }
    }
    runs.resize(k);
}

}  // namespace blockwise::pair_runs
