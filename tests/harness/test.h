/* The test harness: checks that count failures, random tensors, comparisons
 * against double-precision references, and (gradcheck.h) finite differences.
 * A test's main returns test_summary(): non-zero when any check failed. */
#ifndef AP_TEST_H
#define AP_TEST_H

#include "alignprop.h"

#include <stdint.h>
#include <stdio.h>

extern int test_failures, test_checks;

#define CHECK(cond)                                                                    \
    do {                                                                               \
        test_checks++;                                                                 \
        if (!(cond)) {                                                                 \
            test_failures++;                                                           \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);   \
        }                                                                              \
    } while (0)

#define CHECK_MSG(cond, ...)                                                           \
    do {                                                                               \
        test_checks++;                                                                 \
        if (!(cond)) {                                                                 \
            test_failures++;                                                           \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);   \
            fprintf(stderr, __VA_ARGS__);                                              \
            fputc('\n', stderr);                                                       \
        }                                                                              \
    } while (0)

/* Checks that c has no error (prints it otherwise). */
#define CHECK_OK(c) CHECK_MSG(ap_last_status(c) == AP_OK, "%s", ap_last_error(c))

/* Prints "<name>: N checks, N failed" and returns the exit code. */
int test_summary(const char *name);

/* A context for tests (threads from AP_NUM_THREADS, precision f32). Exits on failure. */
ap_ctx *test_ctx(void);

/* Deterministic random numbers (splitmix64). */
typedef struct {
    uint64_t s;
} test_rng;
uint64_t test_rng_next(test_rng *r);
double test_rng_uniform(test_rng *r); /* [0,1) */
double test_rng_normal(test_rng *r);
/* f32 tensor with values uniform in [lo, hi). */
ap_tensor *test_rand(ap_ctx *c, test_rng *r, int ndim, const int64_t *shape, float lo, float hi);
/* Same, marked as requiring a gradient. */
ap_tensor *test_rand_leaf(ap_ctx *c, test_rng *r, int ndim, const int64_t *shape, float lo, float hi);

/* Compares n f32 values with a double reference: passes when every
 * |got - ref| <= atol + rtol*|ref|; prints the worst element either way when
 * verbose or failing. Returns 1 on pass. Counts as one check. */
int test_close(const char *label, const float *got, const double *ref, int64_t n, double rtol,
               double atol);
/* Same with an f32 reference. */
int test_close_f(const char *label, const float *got, const float *ref, int64_t n, double rtol,
                 double atol);

/* Reads a file of the project (path relative to the source tree, found through
 * AP_SOURCE_DIR or the working directory) into a malloc'd buffer. */
void *test_read_file(const char *rel, size_t *len);
/* Absolute path of a project file in a static buffer. */
const char *test_path(const char *rel);

#endif
