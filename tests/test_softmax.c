/* ap_softmax over the last dim: forward against a double reference (odd row
 * lengths, large offsets, -inf entries), backward by gradcheck and against the
 * analytic formula, accumulation, every instruction-set path, and errors. */
#include "backend/cpu/attention.h"
#include "gradcheck.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void ref_softmax(const float *x, double *y, int64_t rows, int64_t n) {
    for (int64_t r = 0; r < rows; r++) {
        double m = -INFINITY, s = 0;
        for (int64_t i = 0; i < n; i++) m = fmax(m, x[r * n + i]);
        for (int64_t i = 0; i < n; i++) s += (y[r * n + i] = exp(x[r * n + i] - m));
        for (int64_t i = 0; i < n; i++) y[r * n + i] /= s;
    }
}

static void test_forward(ap_ctx *c) {
    const int64_t shapes[][3] = {{1, 3, 37}, {2, 5, 16}, {1, 4, 1}, {1, 7, 100}, {2, 3, 77}, {1, 300, 33}};
    for (int isa = AP_ATTN_ISA_GENERIC; isa <= AP_ATTN_ISA_AVX512; isa++) {
        if ((int)ap_attn_isa_set((ap_attn_isa)isa) != isa) continue;
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            test_rng r = {50 + si};
            ap_tensor *x = test_rand(c, &r, 3, shapes[si], -8, 8);
            float *px = ap_tensor_data(x);
            int64_t n = shapes[si][2], rows = ap_tensor_numel(x) / n;
            /* a row shifted far up (stability) and a row with masked entries */
            for (int64_t i = 0; i < n; i++) px[i] += 1000.0f;
            if (rows > 1)
                for (int64_t i = 0; i < n; i += 3) px[n + i] = -INFINITY;
            if (rows > 1 && n == 1) px[n] = 0.5f; /* keep one finite entry per row */
            ap_tensor *y = ap_softmax(c, x);
            CHECK_OK(c);
            double *ref = malloc(sizeof(double) * rows * n);
            ref_softmax(px, ref, rows, n);
            char label[96];
            snprintf(label, sizeof label, "softmax %s [%lld,%lld,%lld]", ap_attn_isa_name((ap_attn_isa)isa),
                     (long long)shapes[si][0], (long long)shapes[si][1], (long long)n);
            test_close(label, ap_tensor_cdata(y), ref, rows * n, 1e-5, 1e-7);
            /* rows sum to one */
            const float *py = ap_tensor_cdata(y);
            double worst = 0;
            for (int64_t rr = 0; rr < rows; rr++) {
                double s = 0;
                for (int64_t i = 0; i < n; i++) s += py[rr * n + i];
                worst = fmax(worst, fabs(s - 1));
            }
            CHECK_MSG(worst < 1e-5, "%s: a row sums to 1 +- %g", label, worst);
            free(ref);
            ap_tensor_release(x);
            ap_tensor_release(y);
        }
    }
    ap_attn_isa_set(ap_attn_isa_best());
}

static ap_tensor *gc_softmax(ap_ctx *c, void *u, int n, ap_tensor **in) { return ap_softmax(c, in[0]); }

static void test_backward(ap_ctx *c) {
    test_rng r = {60};
    gc_opts o = {.eps = 1e-3, .max_elems = -1};
    ap_tensor *x = test_rand_leaf(c, &r, 2, (int64_t[]){3, 7}, -2, 2);
    gradcheck(c, "softmax [3,7]", gc_softmax, NULL, 1, &x, &o);
    ap_tensor_release(x);
    x = test_rand_leaf(c, &r, 3, (int64_t[]){2, 2, 19}, -2, 2);
    gradcheck(c, "softmax [2,2,19]", gc_softmax, NULL, 1, &x, &o);
    ap_tensor_release(x);

    /* analytic: dx = y*(dy - sum(dy*y)), on a bigger tensor, twice (accumulates) */
    int64_t rows = 50, n = 130;
    x = test_rand_leaf(c, &r, 2, (int64_t[]){rows, n}, -4, 4);
    ap_tensor *gy = test_rand(c, &r, 2, (int64_t[]){rows, n}, -1, 1);
    double *yref = malloc(sizeof(double) * rows * n), *gref = malloc(sizeof(double) * rows * n);
    ref_softmax(ap_tensor_cdata(x), yref, rows, n);
    const float *g = ap_tensor_cdata(gy);
    for (int64_t rr = 0; rr < rows; rr++) {
        double dot = 0;
        for (int64_t i = 0; i < n; i++) dot += yref[rr * n + i] * g[rr * n + i];
        for (int64_t i = 0; i < n; i++) gref[rr * n + i] = yref[rr * n + i] * (g[rr * n + i] - dot);
    }
    for (int pass = 1; pass <= 2; pass++) {
        ap_tensor *y = ap_softmax(c, x);
        CHECK(ap_backward(c, y, gy) == AP_OK);
        ap_tensor_release(y);
        double *want = malloc(sizeof(double) * rows * n);
        for (int64_t i = 0; i < rows * n; i++) want[i] = pass * gref[i];
        test_close(pass == 1 ? "softmax backward" : "softmax backward accumulates",
                   ap_tensor_cdata(ap_tensor_grad(x)), want, rows * n, 1e-5, 1e-7);
        free(want);
    }
    free(yref);
    free(gref);
    ap_tensor_release(x);
    ap_tensor_release(gy);
}

static void test_errors(ap_ctx *c) {
    CHECK(ap_softmax(c, NULL) == NULL);
    CHECK(ap_last_status(c) == AP_ERR_INVALID_ARG);
    CHECK(strstr(ap_last_error(c), "softmax") != NULL);
    ap_clear_error(c);
    ap_tensor *h = ap_tensor_zeros(c, AP_BF16, 2, (int64_t[]){2, 3});
    CHECK(ap_softmax(c, h) == NULL);
    CHECK(ap_last_status(c) == AP_ERR_DTYPE);
    CHECK(strstr(ap_last_error(c), "bf16") != NULL);
    ap_clear_error(c);
    ap_tensor_release(h);
    /* empty rows: nothing to do, no error */
    ap_tensor *e = ap_tensor_zeros(c, AP_F32, 2, (int64_t[]){0, 5});
    ap_tensor *y = ap_softmax(c, e);
    CHECK(y != NULL && ap_tensor_numel(y) == 0);
    CHECK_OK(c);
    ap_tensor_release(e);
    ap_tensor_release(y);
}

int main(void) {
    ap_ctx *c = test_ctx();
    test_forward(c);
    test_backward(c);
    test_errors(c);
    CHECK(ap_mem_in_use(c) == 0);
    ap_ctx_free(c);
    return test_summary("softmax");
}
