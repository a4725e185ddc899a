#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int test_failures, test_checks;

int test_summary(const char *name) {
    printf("%s: %d checks, %d failed\n", name, test_checks, test_failures);
    return test_failures ? 1 : 0;
}

ap_ctx *test_ctx(void) {
    ap_ctx *c = NULL;
    if (ap_ctx_create_checked(&c) != AP_OK) {
        fprintf(stderr, "context: %s\n", c ? ap_last_error(c) : "out of memory");
        exit(2);
    }
    ap_set_precision(c, AP_PREC_F32);
    return c;
}

uint64_t test_rng_next(test_rng *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
double test_rng_uniform(test_rng *r) { return (double)(test_rng_next(r) >> 11) * 0x1.0p-53; }
double test_rng_normal(test_rng *r) {
    double u1 = test_rng_uniform(r), u2 = test_rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

ap_tensor *test_rand(ap_ctx *c, test_rng *r, int ndim, const int64_t *shape, float lo, float hi) {
    ap_tensor *t = ap_tensor_new(c, AP_F32, ndim, shape);
    if (!t) return NULL;
    float *d = ap_tensor_data(t);
    for (int64_t i = 0; i < ap_tensor_numel(t); i++)
        d[i] = (float)(lo + (hi - lo) * test_rng_uniform(r));
    return t;
}

ap_tensor *test_rand_leaf(ap_ctx *c, test_rng *r, int ndim, const int64_t *shape, float lo, float hi) {
    ap_tensor *t = test_rand(c, r, ndim, shape, lo, hi);
    if (t) ap_tensor_set_requires_grad(t, 1);
    return t;
}

static int close_impl(const char *label, const float *got, const double *refd, const float *reff,
                      int64_t n, double rtol, double atol) {
    double worst = -1, wg = 0, wr = 0;
    int64_t wi = -1, bad = 0;
    for (int64_t i = 0; i < n; i++) {
        double r = refd ? refd[i] : (double)reff[i], g = got[i];
        double err = fabs(g - r), lim = atol + rtol * fabs(r);
        double ratio = err / lim;
        if (!(err <= lim)) bad++;
        if (!(ratio <= worst) || isnan(ratio)) {
            if (wi < 0 || isnan(ratio) || ratio > worst) {
                worst = isnan(ratio) ? INFINITY : ratio;
                wi = i;
                wg = g;
                wr = r;
            }
        }
    }
    test_checks++;
    if (bad) {
        test_failures++;
        fprintf(stderr, "FAIL %s: %lld of %lld elements out of tolerance; worst [%lld] got %.9g want %.9g (rtol %g atol %g)\n",
                label, (long long)bad, (long long)n, (long long)wi, wg, wr, rtol, atol);
        return 0;
    }
    return 1;
}

int test_close(const char *label, const float *got, const double *ref, int64_t n, double rtol, double atol) {
    return close_impl(label, got, ref, NULL, n, rtol, atol);
}
int test_close_f(const char *label, const float *got, const float *ref, int64_t n, double rtol, double atol) {
    return close_impl(label, got, NULL, ref, n, rtol, atol);
}

const char *test_path(const char *rel) {
    static char buf[4096];
    const char *root = getenv("AP_SOURCE_DIR");
    if (rel[0] == '/' || !root)
        snprintf(buf, sizeof buf, "%s", rel);
    else
        snprintf(buf, sizeof buf, "%s/%s", root, rel);
    return buf;
}

void *test_read_file(const char *rel, size_t *len) {
    FILE *f = fopen(test_path(rel), "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b) {
        b[n] = 0;
        *len = (size_t)n;
    }
    return b;
}
