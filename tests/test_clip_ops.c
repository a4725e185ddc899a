/* ap_crop and ap_l2_normalize (the CLIP rewards' preprocessing and embedding
 * ops): forward against double references on odd shapes, analytic gradients
 * with accumulation, finite differences (gradcheck), thread-count independence,
 * and error cases. */
#include "gradcheck.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define F(t) ((float *)ap_tensor_data(t))

typedef struct {
    int64_t top, left, h, w;
} crop_u;

static ap_tensor *crop_f(ap_ctx *c, void *user, int n, ap_tensor **in) {
    (void)n;
    crop_u *u = user;
    return ap_crop(c, in[0], u->top, u->left, u->h, u->w);
}

static void test_crop(ap_ctx *c) {
    test_rng r = {21};
    /* N, H, W, C, top, left, h, w */
    static const int64_t cases[][8] = {{1, 5, 7, 3, 1, 2, 3, 4}, {2, 9, 6, 1, 0, 0, 9, 6}, {3, 4, 11, 2, 3, 10, 1, 1},
                                       {1, 8, 8, 5, 2, 0, 4, 8}, {2, 13, 9, 3, 2, 1, 9, 7}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const int64_t *q = cases[k];
        const int64_t N = q[0], H = q[1], W = q[2], C = q[3], top = q[4], left = q[5], h = q[6], w = q[7];
        ap_tensor *x = test_rand_leaf(c, &r, 4, (int64_t[]){N, H, W, C}, -1, 1);
        ap_tensor *y = ap_crop(c, x, top, left, h, w);
        CHECK_OK(c);
        if (!y) continue;
        CHECK(ap_tensor_ndim(y) == 4 && ap_tensor_dim(y, 0) == N && ap_tensor_dim(y, 1) == h &&
              ap_tensor_dim(y, 2) == w && ap_tensor_dim(y, 3) == C);
        int64_t ny = N * h * w * C, nx = N * H * W * C;
        double *ref = malloc(sizeof(double) * (size_t)ny), *gref = calloc((size_t)nx, sizeof(double));
        for (int64_t b = 0; b < N; b++)
            for (int64_t i = 0; i < h; i++)
                for (int64_t j = 0; j < w; j++)
                    for (int64_t ch = 0; ch < C; ch++)
                        ref[((b * h + i) * w + j) * C + ch] = F(x)[((b * H + top + i) * W + left + j) * C + ch];
        char label[64];
        snprintf(label, sizeof label, "crop case %zu", k);
        test_close(label, F(y), ref, ny, 0, 0);
        /* backward: the seed lands in the window, zeros elsewhere; twice adds */
        ap_tensor *seed = test_rand(c, &r, 4, (int64_t[]){N, h, w, C}, -1, 1);
        CHECK(ap_backward(c, y, seed) == AP_OK);
        for (int64_t b = 0; b < N; b++)
            for (int64_t i = 0; i < h; i++)
                for (int64_t j = 0; j < w; j++)
                    for (int64_t ch = 0; ch < C; ch++)
                        gref[((b * H + top + i) * W + left + j) * C + ch] = F(seed)[((b * h + i) * w + j) * C + ch];
        test_close(label, F(ap_tensor_grad(x)), gref, nx, 0, 0);
        ap_tensor_release(y);
        y = ap_crop(c, x, top, left, h, w);
        CHECK(ap_backward(c, y, seed) == AP_OK);
        for (int64_t i = 0; i < nx; i++) gref[i] *= 2;
        snprintf(label, sizeof label, "crop case %zu, accumulated", k);
        test_close(label, F(ap_tensor_grad(x)), gref, nx, 0, 0);
        snprintf(label, sizeof label, "crop case %zu", k);
        gradcheck(c, label, crop_f, &(crop_u){top, left, h, w}, 1, &x, NULL);
        free(ref);
        free(gref);
        ap_tensor_release(seed);
        ap_tensor_release(y);
        ap_tensor_release(x);
    }
}

static ap_tensor *l2n_f(ap_ctx *c, void *user, int n, ap_tensor **in) {
    (void)user;
    (void)n;
    return ap_l2_normalize(c, in[0]);
}

static void test_l2_normalize(ap_ctx *c) {
    test_rng r = {22};
    static const int64_t shapes[][3] = {{7, 1, 1}, {3, 5, 1}, {2, 3, 17}, {4, 1, 1}};
    static const int nd[] = {1, 2, 3, 2};
    for (int k = 0; k < 4; k++) {
        ap_tensor *x = test_rand_leaf(c, &r, nd[k], shapes[k], -2, 2);
        ap_tensor *y = ap_l2_normalize(c, x);
        CHECK_OK(c);
        if (!y) continue;
        CHECK(ap_tensor_ndim(y) == nd[k] && ap_tensor_numel(y) == ap_tensor_numel(x));
        int64_t K = ap_tensor_dim(x, -1), R = ap_tensor_numel(x) / K;
        double *ref = malloc(sizeof(double) * (size_t)(R * K)), *gref = malloc(sizeof(double) * (size_t)(R * K));
        ap_tensor *seed = test_rand(c, &r, nd[k], shapes[k], -1, 1);
        for (int64_t i = 0; i < R; i++) {
            const float *xr = F(x) + i * K, *gr = F(seed) + i * K;
            double s = 0, dot = 0;
            for (int64_t j = 0; j < K; j++) s += (double)xr[j] * xr[j];
            double nrm = sqrt(s);
            for (int64_t j = 0; j < K; j++) ref[i * K + j] = xr[j] / nrm, dot += ref[i * K + j] * gr[j];
            for (int64_t j = 0; j < K; j++) gref[i * K + j] = (gr[j] - ref[i * K + j] * dot) / nrm;
        }
        char label[64];
        snprintf(label, sizeof label, "l2_normalize shape %d", k);
        test_close(label, F(y), ref, R * K, 1e-6, 1e-7);
        CHECK(ap_backward(c, y, seed) == AP_OK);
        test_close(label, F(ap_tensor_grad(x)), gref, R * K, 1e-5, 1e-6);
        ap_tensor_release(y);
        y = ap_l2_normalize(c, x);
        CHECK(ap_backward(c, y, seed) == AP_OK);
        for (int64_t i = 0; i < R * K; i++) gref[i] *= 2;
        snprintf(label, sizeof label, "l2_normalize shape %d, accumulated", k);
        test_close(label, F(ap_tensor_grad(x)), gref, R * K, 1e-5, 1e-6);
        snprintf(label, sizeof label, "l2_normalize shape %d", k);
        gradcheck(c, label, l2n_f, NULL, 1, &x, NULL);
        free(ref);
        free(gref);
        ap_tensor_release(seed);
        ap_tensor_release(y);
        ap_tensor_release(x);
    }
    /* a zero row stays zero (F.normalize), with a finite gradient gy / eps */
    ap_tensor *z = ap_tensor_zeros(c, AP_F32, 2, (int64_t[]){2, 3});
    F(z)[3] = 3, F(z)[4] = 4;
    ap_tensor_set_requires_grad(z, 1);
    ap_tensor *y = ap_l2_normalize(c, z);
    CHECK_OK(c);
    if (y) {
        CHECK(F(y)[0] == 0 && F(y)[1] == 0 && F(y)[2] == 0);
        CHECK(fabsf(F(y)[3] - 0.6f) < 1e-7f && fabsf(F(y)[4] - 0.8f) < 1e-7f && F(y)[5] == 0);
        CHECK(ap_backward(c, y, y) == AP_OK);
        int finite = 1;
        for (int i = 0; i < 6; i++) finite &= isfinite(F(ap_tensor_grad(z))[i]);
        CHECK(finite);
    }
    ap_tensor_release(y);
    ap_tensor_release(z);
}

/* Large enough for the parallel paths: identical results on 1 and 2 threads. */
static void test_threads(ap_ctx *c) {
    test_rng r = {23};
    ap_tensor *x = test_rand_leaf(c, &r, 4, (int64_t[]){2, 70, 90, 3}, -1, 1);
    ap_tensor *e = test_rand_leaf(c, &r, 2, (int64_t[]){400, 130}, -1, 1);
    float *res[2][4] = {{0}};
    int prev = ap_get_num_threads(c);
    for (int t = 0; t < 2; t++) {
        ap_set_num_threads(c, t + 1);
        ap_tensor_zero_grad(x);
        ap_tensor_zero_grad(e);
        ap_tensor *a = ap_crop(c, x, 3, 5, 60, 80), *b = ap_l2_normalize(c, e);
        ap_tensor *sa = ap_scale(c, a, 1.5f), *sb = ap_scale(c, b, 0.5f);
        ap_tensor *ys[2] = {sa, sb}, *seeds[2] = {a, b};
        CHECK(ap_backward_multi(c, 2, ys, seeds) == AP_OK);
        ap_tensor *ts[4] = {a, b, ap_tensor_grad(x), ap_tensor_grad(e)};
        for (int i = 0; i < 4; i++) {
            res[t][i] = malloc(ap_tensor_nbytes(ts[i]));
            memcpy(res[t][i], ap_tensor_cdata(ts[i]), ap_tensor_nbytes(ts[i]));
        }
        size_t nb[4] = {ap_tensor_nbytes(a), ap_tensor_nbytes(b), ap_tensor_nbytes(x), ap_tensor_nbytes(e)};
        if (t == 1)
            for (int i = 0; i < 4; i++) CHECK_MSG(memcmp(res[0][i], res[1][i], nb[i]) == 0, "result %d differs", i);
        ap_tensor_release(a);
        ap_tensor_release(b);
        ap_tensor_release(sa);
        ap_tensor_release(sb);
    }
    ap_set_num_threads(c, prev);
    for (int t = 0; t < 2; t++)
        for (int i = 0; i < 4; i++) free(res[t][i]);
    ap_tensor_release(x);
    ap_tensor_release(e);
}

static void expect_error(ap_ctx *c, ap_tensor *y, const char *needle) {
    CHECK(y == NULL);
    CHECK_MSG(strstr(ap_last_error(c), needle) != NULL, "message '%s' lacks '%s'", ap_last_error(c), needle);
    ap_tensor_release(y);
    ap_clear_error(c);
}

static void test_errors(ap_ctx *c) {
    test_rng r = {24};
    ap_tensor *x = test_rand(c, &r, 4, (int64_t[]){1, 4, 5, 3}, -1, 1);
    ap_tensor *x3 = test_rand(c, &r, 3, (int64_t[]){4, 5, 3}, -1, 1);
    expect_error(c, ap_crop(c, x, 1, 1, 4, 2), "does not fit");
    expect_error(c, ap_crop(c, x, 0, 3, 2, 3), "does not fit");
    expect_error(c, ap_crop(c, x, -1, 0, 2, 2), "does not fit");
    expect_error(c, ap_crop(c, x, 0, 0, 0, 2), "does not fit");
    expect_error(c, ap_crop(c, x3, 0, 0, 1, 1), "expected [N,H,W,C]");
    expect_error(c, ap_crop(c, NULL, 0, 0, 1, 1), "crop");
    ap_tensor *xb = ap_tensor_convert(c, x, AP_BF16);
    expect_error(c, ap_crop(c, xb, 0, 0, 1, 1), "crop");
    expect_error(c, ap_l2_normalize(c, xb), "l2_normalize");
    ap_tensor *e0 = ap_tensor_zeros(c, AP_F32, 2, (int64_t[]){3, 0});
    expect_error(c, ap_l2_normalize(c, e0), "empty last dim");
    /* sticky: a failed context returns NULL at once */
    ap_crop(c, x, 9, 9, 9, 9);
    CHECK(ap_l2_normalize(c, x) == NULL && ap_crop(c, x, 0, 0, 1, 1) == NULL);
    ap_clear_error(c);
    ap_tensor_release(e0);
    ap_tensor_release(xb);
    ap_tensor_release(x3);
    ap_tensor_release(x);
}

int main(void) {
    ap_ctx *c = test_ctx();
    test_crop(c);
    test_l2_normalize(c);
    test_threads(c);
    test_errors(c);
    ap_ctx_free(c);
    return test_summary("clip_ops");
}
