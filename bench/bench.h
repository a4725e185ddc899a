/* Timing helpers shared by the benchmarks: clocks, the median of a set of
 * runs, and the separator of a JSON list written record by record.
 * Header-only: each benchmark is its own program. */
#ifndef AP_BENCH_BENCH_H
#define AP_BENCH_BENCH_H

#include <stdlib.h>
#include <time.h>

/* Wall-clock seconds (monotonic). */
static inline double bench_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* CPU seconds of the whole process (all threads): beside the wall time it
 * shows what other jobs on this shared VM added. */
static inline double bench_cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static inline int bench_cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Sorts t[0..n) in place (so t[0] is then the fastest run) and returns the
 * median, the mean of the middle two for even n. */
static inline double bench_median(double *t, int n) {
    qsort(t, (size_t)n, sizeof *t, bench_cmp_d);
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

/* "" before the first record of a JSON list, "," before the others. */
static inline const char *bench_json_sep(int *first) {
    const char *s = *first ? "" : ",";
    *first = 0;
    return s;
}

#endif
