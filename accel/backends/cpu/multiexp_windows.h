/* How pec_multiexp numbers its Pippenger windows, shared by the GMP and the IFMA kernels:
 * the windows of all columns are numbered in one run, column j owning the slots
 * first_window[j] .. first_window[j + 1] - 1.
 */
#ifndef PEC_MULTIEXP_WINDOWS_H
#define PEC_MULTIEXP_WINDOWS_H

#include <stdint.h>

/* The column whose windows include ``slot``: a binary search over the M + 1 prefix sums. */
static inline int64_t window_column(const int64_t *first_window, int64_t M, int64_t slot)
{
    int64_t lo = 0, hi = M;
    while (hi - lo > 1) {
        int64_t mid = (lo + hi) / 2;
        if (first_window[mid] <= slot)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

#endif
