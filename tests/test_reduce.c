/* Row reductions (sum_rows, mean_rows) and the pointwise ops abs, square, sqrt,
 * add_scalar: forward against double references on odd shapes, gradients
 * against the analytic rule and finite differences, accumulation (beta 1),
 * thread-count independence, and error cases. */
#include "gradcheck.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define F(t) ((float *)ap_tensor_data(t))

static const int64_t shapes[][4] = {{7, 0, 0, 0}, {3, 5, 0, 0}, {2, 3, 1, 0}, {2, 1, 4, 9}, {1, 33, 0, 0},
                                    {5, 1, 0, 0}};
static const int ndims[] = {1, 2, 3, 4, 2, 2};
#define NSHAPES (int)(sizeof ndims / sizeof ndims[0])

typedef struct {
    int mean;
} rows_u;

static ap_tensor *rows_f(ap_ctx *c, void *user, int n, ap_tensor **in) {
    (void)n;
    return ((rows_u *)user)->mean ? ap_mean_rows(c, in[0]) : ap_sum_rows(c, in[0]);
}

static void test_rows(ap_ctx *c) {
    test_rng r = {11};
    for (int m = 0; m < 2; m++)
        for (int k = 0; k < NSHAPES; k++) {
            ap_tensor *x = test_rand_leaf(c, &r, ndims[k], shapes[k], -2, 2);
            ap_tensor *y = m ? ap_mean_rows(c, x) : ap_sum_rows(c, x);
            CHECK_OK(c);
            if (!y) continue;
            int64_t K = shapes[k][ndims[k] - 1], R = ap_tensor_numel(x) / K;
            /* shape: [..., K] -> [...]; 1-D -> [1] */
            int shape_ok = ap_tensor_ndim(y) == (ndims[k] > 1 ? ndims[k] - 1 : 1) && ap_tensor_numel(y) == R;
            for (int i = 0; i < ndims[k] - 1; i++) shape_ok &= ap_tensor_dim(y, i) == shapes[k][i];
            CHECK_MSG(shape_ok, "%s shape %d", m ? "mean_rows" : "sum_rows", k);
            double *ref = calloc((size_t)R, sizeof *ref);
            for (int64_t i = 0; i < R; i++) {
                for (int64_t j = 0; j < K; j++) ref[i] += F(x)[i * K + j];
                if (m) ref[i] /= (double)K;
            }
            char label[64];
            snprintf(label, sizeof label, "%s shape %d", m ? "mean_rows" : "sum_rows", k);
            test_close(label, F(y), ref, R, 1e-6, 1e-6);
            /* analytic backward: d/dx[i,j] = g[i] (/K for mean); a second backward adds */
            ap_tensor *seed = test_rand(c, &r, ap_tensor_ndim(y), (int64_t[]){ap_tensor_dim(y, 0),
                                        ap_tensor_ndim(y) > 1 ? ap_tensor_dim(y, 1) : 1,
                                        ap_tensor_ndim(y) > 2 ? ap_tensor_dim(y, 2) : 1}, -1, 1);
            CHECK(ap_backward(c, y, seed) == AP_OK);
            double *gref = malloc(sizeof(double) * (size_t)(R * K));
            for (int64_t i = 0; i < R; i++)
                for (int64_t j = 0; j < K; j++) gref[i * K + j] = F(seed)[i] / (m ? (double)K : 1.0);
            test_close(label, F(ap_tensor_grad(x)), gref, R * K, 1e-6, 1e-7);
            ap_tensor_release(y);
            y = m ? ap_mean_rows(c, x) : ap_sum_rows(c, x);
            CHECK(ap_backward(c, y, seed) == AP_OK);
            for (int64_t i = 0; i < R * K; i++) gref[i] *= 2.0;
            snprintf(label, sizeof label, "%s shape %d, accumulated", m ? "mean_rows" : "sum_rows", k);
            test_close(label, F(ap_tensor_grad(x)), gref, R * K, 1e-6, 1e-7);
            snprintf(label, sizeof label, "%s shape %d", m ? "mean_rows" : "sum_rows", k);
            gradcheck(c, label, rows_f, &(rows_u){m}, 1, &x, NULL);
            free(ref);
            free(gref);
            ap_tensor_release(seed);
            ap_tensor_release(y);
            ap_tensor_release(x);
        }
}

/* Large enough to take the parallel path: the result must not depend on threads. */
static void test_rows_threads(ap_ctx *c) {
    test_rng r = {12};
    ap_tensor *x = test_rand(c, &r, 2, (int64_t[]){301, 257}, -1, 1);
    int prev = ap_get_num_threads(c);
    ap_set_num_threads(c, 1);
    ap_tensor *a = ap_sum_rows(c, x);
    ap_set_num_threads(c, 2);
    ap_tensor *b = ap_sum_rows(c, x);
    ap_set_num_threads(c, prev);
    CHECK_OK(c);
    CHECK(a && b && memcmp(F(a), F(b), 301 * sizeof(float)) == 0);
    ap_tensor_release(a);
    ap_tensor_release(b);
    ap_tensor_release(x);
}

typedef struct {
    int op;
    float s;
} pw_u;
static const char *const pw_names[] = {"abs", "square", "sqrt", "add_scalar"};

static ap_tensor *pw_apply(ap_ctx *c, int op, ap_tensor *x, float s) {
    switch (op) {
    case 0: return ap_abs(c, x);
    case 1: return ap_square(c, x);
    case 2: return ap_sqrt(c, x);
    default: return ap_add_scalar(c, x, s);
    }
}

static ap_tensor *pw_f(ap_ctx *c, void *user, int n, ap_tensor **in) {
    (void)n;
    pw_u *u = user;
    return pw_apply(c, u->op, in[0], u->s);
}

static double pw_ref(int op, double x, double s) {
    return op == 0 ? fabs(x) : op == 1 ? x * x : op == 2 ? sqrt(x) : x + s;
}
static double pw_dref(int op, double x) {
    return op == 0 ? (x > 0) - (x < 0) : op == 1 ? 2 * x : op == 2 ? 0.5 / sqrt(x) : 1.0;
}

static void test_pointwise(ap_ctx *c) {
    test_rng r = {13};
    for (int op = 0; op < 4; op++)
        for (int k = 0; k < NSHAPES; k++) {
            /* sqrt needs x > 0; abs is checked away from its kink (|x| >= 0.05) */
            ap_tensor *x = test_rand_leaf(c, &r, ndims[k], shapes[k], op == 2 ? 0.2f : -2, 2);
            int64_t m = ap_tensor_numel(x);
            if (op == 0)
                for (int64_t i = 0; i < m; i++)
                    if (fabsf(F(x)[i]) < 0.05f) F(x)[i] = F(x)[i] < 0 ? -0.05f : 0.05f;
            float s = -0.7f;
            ap_tensor *y = pw_apply(c, op, x, s);
            CHECK_OK(c);
            if (!y) continue;
            CHECK(ap_tensor_ndim(y) == ndims[k] && ap_tensor_numel(y) == m);
            double *ref = malloc(sizeof(double) * (size_t)m), *gref = malloc(sizeof(double) * (size_t)m);
            ap_tensor *seed = test_rand(c, &r, ndims[k], shapes[k], -1, 1);
            for (int64_t i = 0; i < m; i++) {
                ref[i] = pw_ref(op, F(x)[i], s);
                gref[i] = F(seed)[i] * pw_dref(op, F(x)[i]);
            }
            char label[64];
            snprintf(label, sizeof label, "%s shape %d", pw_names[op], k);
            test_close(label, F(y), ref, m, 1e-6, 1e-7);
            CHECK(ap_backward(c, y, seed) == AP_OK);
            test_close(label, F(ap_tensor_grad(x)), gref, m, 1e-6, 1e-7);
            gradcheck(c, label, pw_f, &(pw_u){op, s}, 1, &x, NULL);
            free(ref);
            free(gref);
            ap_tensor_release(seed);
            ap_tensor_release(y);
            ap_tensor_release(x);
        }
    /* abs at exactly 0: gradient 0 */
    ap_tensor *z = ap_tensor_zeros(c, AP_F32, 1, (int64_t[]){3});
    ap_tensor_set_requires_grad(z, 1);
    F(z)[0] = -1.0f;
    F(z)[2] = 2.0f;
    ap_tensor *a = ap_abs(c, z), *sa = ap_sum(c, a);
    CHECK(ap_backward(c, sa, NULL) == AP_OK);
    const float *gz = F(ap_tensor_grad(z));
    CHECK(gz[0] == -1.0f && gz[1] == 0.0f && gz[2] == 1.0f);
    ap_tensor_release(a);
    ap_tensor_release(sa);
    ap_tensor_release(z);
    /* an intermediate used twice: the second use adds into its gradient (beta 1) */
    test_rng r2 = {14};
    ap_tensor *x = test_rand_leaf(c, &r2, 2, (int64_t[]){3, 4}, 0.3f, 1);
    ap_tensor *q = ap_sqrt(c, x), *p1 = ap_square(c, q), *p2 = ap_abs(c, q), *sum = ap_add(c, p1, p2),
              *tot = ap_sum(c, sum);
    CHECK(ap_backward(c, tot, NULL) == AP_OK);
    double gref[12];
    for (int i = 0; i < 12; i++) gref[i] = 1.0 + 0.5 / sqrt((double)F(x)[i]); /* d(x + sqrt x) */
    test_close("square(sqrt x) + abs(sqrt x)", F(ap_tensor_grad(x)), gref, 12, 1e-5, 1e-6);
    ap_tensor *t[] = {q, p1, p2, sum, tot, x};
    for (int i = 0; i < 6; i++) ap_tensor_release(t[i]);
}

static void check_err(ap_ctx *c, ap_tensor *y, ap_status st, const char *w1, const char *w2) {
    const char *m = ap_last_error(c);
    CHECK_MSG(y == NULL && ap_last_status(c) == st && strstr(m, w1) && (!w2 || strstr(m, w2)),
              "expected an error naming '%s' and '%s', got '%s'", w1, w2 ? w2 : "", m);
    ap_tensor_release(y);
    ap_clear_error(c);
}

static void test_errors(ap_ctx *c) {
    check_err(c, ap_sum_rows(c, NULL), AP_ERR_INVALID_ARG, "sum_rows", "x");
    check_err(c, ap_abs(c, NULL), AP_ERR_INVALID_ARG, "abs", "x");
    ap_tensor *e = ap_tensor_new(c, AP_F32, 2, (int64_t[]){3, 0});
    check_err(c, ap_mean_rows(c, e), AP_ERR_SHAPE, "mean_rows", "[3,0]");
    ap_tensor *b = ap_tensor_zeros(c, AP_BF16, 2, (int64_t[]){2, 2});
    check_err(c, ap_mean_rows(c, b), AP_ERR_DTYPE, "mean_rows", "bf16");
    check_err(c, ap_sqrt(c, b), AP_ERR_DTYPE, "sqrt", "bf16");
    check_err(c, ap_square(c, b), AP_ERR_DTYPE, "square", NULL);
    check_err(c, ap_add_scalar(c, b, 1.0f), AP_ERR_DTYPE, "add_scalar", NULL);
    /* sticky: a failed context makes every op return NULL with the first message */
    ap_tensor *x = ap_tensor_zeros(c, AP_F32, 1, (int64_t[]){4});
    ap_tensor *y = ap_sum_rows(c, b);
    CHECK(y == NULL);
    CHECK(ap_abs(c, x) == NULL && ap_sum_rows(c, x) == NULL && ap_add_scalar(c, x, 1) == NULL);
    check_err(c, NULL, AP_ERR_DTYPE, "sum_rows", NULL);
    ap_tensor_release(x);
    ap_tensor_release(b);
    ap_tensor_release(e);
}

int main(void) {
    ap_ctx *c = test_ctx();
    test_rows(c);
    test_rows_threads(c);
    test_pointwise(c);
    test_errors(c);
    CHECK(ap_tape_size(c) == 0);
    CHECK_MSG(ap_mem_in_use(c) == 0, "all tensors released (%zu bytes live)", ap_mem_in_use(c));
    ap_ctx_free(c);
    return test_summary("reduce");
}
