/* conv2d: forward against a naive double-precision reference, gradients by
 * finite differences, frozen weights (no weight-gradient kernel), the beta
 * rule, bf16 against f32, weight packing and the primitive cache, errors. */
#include "backend/cpu/dnnl.h"
#include "gradcheck.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int n, h, w, ci, co, kh, kw, stride, pad[4];
    int bias;
    ap_dtype wdt;
} cfg;

static int out_dim(int in, int p0, int p1, int k, int s) { return (in + p0 + p1 - k) / s + 1; }

/* y [n,oh,ow,co] in double from x [n,h,w,ci], w [co,ci,kh,kw] (as f32 values), b [co] */
static double *ref_conv(const cfg *g, const float *x, const float *w, const float *b) {
    int oh = out_dim(g->h, g->pad[0], g->pad[1], g->kh, g->stride);
    int ow = out_dim(g->w, g->pad[2], g->pad[3], g->kw, g->stride);
    double *y = calloc((size_t)g->n * oh * ow * g->co, sizeof *y);
    for (int n = 0; n < g->n; n++)
        for (int i = 0; i < oh; i++)
            for (int j = 0; j < ow; j++)
                for (int o = 0; o < g->co; o++) {
                    double s = b ? b[o] : 0.0;
                    for (int u = 0; u < g->kh; u++)
                        for (int v = 0; v < g->kw; v++) {
                            int yi = i * g->stride - g->pad[0] + u, xj = j * g->stride - g->pad[2] + v;
                            if (yi < 0 || yi >= g->h || xj < 0 || xj >= g->w) continue;
                            const float *px = x + (((size_t)n * g->h + yi) * g->w + xj) * g->ci;
                            for (int ci = 0; ci < g->ci; ci++)
                                s += (double)px[ci] * w[(((size_t)o * g->ci + ci) * g->kh + u) * g->kw + v];
                        }
                    y[(((size_t)n * oh + i) * ow + j) * g->co + o] = s;
                }
    return y;
}

static ap_conv_params params(const cfg *g) {
    ap_conv_params p = {g->stride, {g->pad[0], g->pad[1], g->pad[2], g->pad[3]}};
    return p;
}

static ap_tensor *weights(ap_ctx *c, test_rng *r, const cfg *g, int leaf) {
    float sc = 1.0f / sqrtf((float)(g->ci * g->kh * g->kw));
    int64_t ws[4] = {g->co, g->ci, g->kh, g->kw};
    return leaf ? test_rand_leaf(c, r, 4, ws, -sc, sc) : test_rand(c, r, 4, ws, -sc, sc);
}

static void test_forward_case(ap_ctx *c, test_rng *r, const cfg *g) {
    char label[160];
    snprintf(label, sizeof label, "conv2d fwd x[%d,%d,%d,%d] w[%d,%d,%d,%d] s%d pad{%d,%d,%d,%d} bias%d %s", g->n,
             g->h, g->w, g->ci, g->co, g->ci, g->kh, g->kw, g->stride, g->pad[0], g->pad[1], g->pad[2], g->pad[3],
             g->bias, ap_dtype_name(g->wdt));
    ap_tensor *x = test_rand(c, r, 4, (int64_t[]){g->n, g->h, g->w, g->ci}, -1, 1);
    ap_tensor *w32 = weights(c, r, g, 0);
    ap_tensor *b = g->bias ? test_rand(c, r, 1, (int64_t[]){g->co}, -1, 1) : NULL;
    /* a weight stored narrower is compared with its own (rounded) values */
    ap_tensor *w = g->wdt == AP_F32 ? ap_tensor_retain(w32) : ap_tensor_convert(c, w32, g->wdt);
    ap_tensor *wv = g->wdt == AP_F32 ? ap_tensor_retain(w32) : ap_tensor_convert(c, w, AP_F32);
    ap_tensor *y = ap_conv2d(c, x, w, b, params(g));
    CHECK_OK(c);
    if (y) {
        int oh = out_dim(g->h, g->pad[0], g->pad[1], g->kh, g->stride);
        int ow = out_dim(g->w, g->pad[2], g->pad[3], g->kw, g->stride);
        CHECK(ap_tensor_ndim(y) == 4 && ap_tensor_dim(y, 0) == g->n && ap_tensor_dim(y, 1) == oh &&
              ap_tensor_dim(y, 2) == ow && ap_tensor_dim(y, 3) == g->co);
        double *ref = ref_conv(g, ap_tensor_cdata(x), ap_tensor_cdata(wv), b ? ap_tensor_cdata(b) : NULL);
        test_close(label, ap_tensor_cdata(y), ref, ap_tensor_numel(y), 1e-4, 1e-5);
        free(ref);
    }
    ap_tensor *ts[] = {x, w32, b, w, wv, y};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) ap_tensor_release(ts[i]);
}

static void test_forward(ap_ctx *c) {
    test_rng r = {11};
    const cfg fixed[] = {
        {2, 7, 5, 3, 5, 3, 3, 1, {1, 1, 1, 1}, 1, AP_F32},  /* odd sizes, symmetric padding */
        {1, 6, 6, 4, 6, 1, 1, 1, {0, 0, 0, 0}, 1, AP_F32},  /* 1x1 */
        {2, 7, 9, 3, 5, 3, 3, 2, {1, 1, 1, 1}, 1, AP_F32},  /* stride 2, odd H */
        {1, 8, 6, 5, 3, 3, 3, 2, {0, 1, 0, 1}, 0, AP_F32},  /* the VAE's downsampling pad */
        {2, 7, 7, 3, 4, 3, 3, 2, {0, 1, 0, 1}, 1, AP_F32},  /* ... with odd H and W */
        {1, 7, 5, 8, 16, 1, 1, 2, {0, 0, 0, 0}, 1, AP_F32}, /* 1x1 stride 2 */
        {2, 9, 9, 16, 24, 3, 3, 1, {1, 1, 1, 1}, 1, AP_F32}, /* blocked channels */
        {1, 5, 4, 6, 7, 3, 3, 1, {1, 1, 1, 1}, 1, AP_BF16}, /* weights stored bf16 */
        {1, 5, 4, 6, 7, 3, 3, 1, {1, 1, 1, 1}, 0, AP_F16},  /* weights stored f16 */
        {1, 6, 5, 2, 3, 2, 3, 1, {0, 1, 2, 0}, 1, AP_F32},  /* 2x3 kernel, uneven padding */
    };
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++) test_forward_case(c, &r, &fixed[i]);
    for (int t = 0; t < 12; t++) { /* random shapes */
        cfg g = {1 + (int)(test_rng_next(&r) % 2), 3 + (int)(test_rng_next(&r) % 8), 3 + (int)(test_rng_next(&r) % 8),
                 1 + (int)(test_rng_next(&r) % 9), 1 + (int)(test_rng_next(&r) % 9), 0, 0,
                 1 + (int)(test_rng_next(&r) % 2), {0, 0, 0, 0}, (int)(test_rng_next(&r) % 2), AP_F32};
        g.kh = g.kw = test_rng_next(&r) % 2 ? 3 : 1;
        for (int k = 0; k < 4; k++) g.pad[k] = g.kh == 3 ? (int)(test_rng_next(&r) % 2) : 0;
        test_forward_case(c, &r, &g);
    }
}

/* ------------------------------------------------------------ gradients */
static ap_tensor *conv_fn(ap_ctx *c, void *user, int n, ap_tensor **in) {
    const cfg *g = user;
    return ap_conv2d(c, in[0], in[1], n > 2 ? in[2] : NULL, params(g));
}

static void test_gradients(ap_ctx *c) {
    test_rng r = {12};
    const cfg cases[] = {
        {2, 5, 4, 3, 5, 3, 3, 1, {1, 1, 1, 1}, 1, AP_F32},
        {1, 7, 5, 3, 4, 3, 3, 2, {1, 1, 1, 1}, 1, AP_F32},
        {2, 6, 5, 2, 3, 3, 3, 2, {0, 1, 0, 1}, 1, AP_F32},
        {1, 4, 5, 6, 5, 1, 1, 1, {0, 0, 0, 0}, 0, AP_F32},
        {1, 5, 5, 17, 9, 3, 3, 1, {1, 1, 1, 1}, 1, AP_F32},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const cfg *g = &cases[i];
        char label[96];
        snprintf(label, sizeof label, "conv2d case %zu", i);
        ap_tensor *in[3] = {test_rand_leaf(c, &r, 4, (int64_t[]){g->n, g->h, g->w, g->ci}, -1, 1),
                            weights(c, &r, g, 1),
                            g->bias ? test_rand_leaf(c, &r, 1, (int64_t[]){g->co}, -1, 1) : NULL};
        gradcheck(c, label, conv_fn, (void *)g, g->bias ? 3 : 2, in, NULL);
        CHECK_OK(c);
        for (int k = 0; k < 3; k++) ap_tensor_release(in[k]);
    }
}

/* Gradients of y = conv(x, w, b) for the seed gy, as copies. */
static void grads(ap_ctx *c, const cfg *g, ap_tensor *x, ap_tensor *w, ap_tensor *b, ap_tensor *gy,
                  ap_tensor **gx, ap_tensor **gw, ap_tensor **gb) {
    ap_tensor_zero_grad(x), ap_tensor_zero_grad(w), ap_tensor_zero_grad(b);
    ap_tensor *y = ap_conv2d(c, x, w, b, params(g));
    CHECK(ap_backward(c, y, gy) == AP_OK);
    ap_tensor_release(y);
    *gx = ap_tensor_grad(x) ? ap_copy(c, ap_tensor_grad(x)) : NULL;
    *gw = ap_tensor_grad(w) ? ap_copy(c, ap_tensor_grad(w)) : NULL;
    *gb = b && ap_tensor_grad(b) ? ap_copy(c, ap_tensor_grad(b)) : NULL;
}

static int bit_equal(const ap_tensor *a, const ap_tensor *b) {
    return a && b && ap_tensor_numel(a) == ap_tensor_numel(b) &&
           !memcmp(ap_tensor_cdata(a), ap_tensor_cdata(b), ap_tensor_nbytes(a));
}

/* Frozen weight: dx only, no weight-gradient kernel, no saved input. */
static void test_frozen(ap_ctx *c) {
    test_rng r = {13};
    cfg g = {2, 6, 5, 4, 6, 3, 3, 1, {1, 1, 1, 1}, 1, AP_F32};
    ap_tensor *x = test_rand_leaf(c, &r, 4, (int64_t[]){2, 6, 5, 4}, -1, 1);
    ap_tensor *w = weights(c, &r, &g, 1);
    ap_tensor *b = test_rand_leaf(c, &r, 1, (int64_t[]){6}, -1, 1);
    ap_tensor *gy = test_rand(c, &r, 4, (int64_t[]){2, 6, 5, 6}, -1, 1);
    ap_tensor *gx0, *gw0, *gb0, *gx1, *gw1, *gb1;
    grads(c, &g, x, w, b, gy, &gx0, &gw0, &gb0); /* all trainable: the reference */
    CHECK(gx0 && gw0 && gb0);

    ap_tensor_set_requires_grad(w, 0);
    ap_tensor_set_requires_grad(b, 0);
    ap_dnnl_stats s0 = ap_dnnl_get_stats(c);
    grads(c, &g, x, w, b, gy, &gx1, &gw1, &gb1);
    ap_dnnl_stats s1 = ap_dnnl_get_stats(c);
    CHECK_MSG(gw1 == NULL && gb1 == NULL, "a frozen weight and bias get no gradient");
    CHECK_MSG(s1.conv_bwd_weights == s0.conv_bwd_weights, "no weight-gradient kernel ran for a frozen weight");
    CHECK(s1.conv_bwd_data == s0.conv_bwd_data + 1);
    CHECK_MSG(bit_equal(gx0, gx1), "dx does not depend on whether w is trainable");
    ap_tensor_release(gx1);

    /* a trainable bias on a frozen weight: column sums, still no weight kernel */
    ap_tensor_set_requires_grad(b, 1);
    s0 = ap_dnnl_get_stats(c);
    grads(c, &g, x, w, b, gy, &gx1, &gw1, &gb1);
    s1 = ap_dnnl_get_stats(c);
    CHECK(gw1 == NULL && gb1 != NULL);
    CHECK(s1.conv_bwd_weights == s0.conv_bwd_weights);
    if (gb1) test_close_f("conv2d bias gradient without the weight kernel", ap_tensor_cdata(gb1),
                          ap_tensor_cdata(gb0), 6, 1e-5, 1e-5);
    ap_tensor_release(gx1);
    ap_tensor_release(gb1);

    /* frozen input, trainable weight (a first layer): no backward-data kernel */
    ap_tensor_set_requires_grad(x, 0);
    ap_tensor_set_requires_grad(w, 1);
    s0 = ap_dnnl_get_stats(c);
    grads(c, &g, x, w, b, gy, &gx1, &gw1, &gb1);
    s1 = ap_dnnl_get_stats(c);
    CHECK(gx1 == NULL && gw1 != NULL);
    CHECK_MSG(s1.conv_bwd_data == s0.conv_bwd_data, "no backward-data kernel for an input without gradient");
    CHECK_MSG(bit_equal(gw0, gw1), "dw does not depend on whether x is trainable");
    CHECK(bit_equal(gb0, gb1));
    ap_tensor *ts[] = {x, w, b, gy, gx0, gw0, gb0, gw1, gb1};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) ap_tensor_release(ts[i]);
}

/* beta 1: a second backward adds exactly the same gradients again; and an
 * intermediate used by two convolutions gets the sum of both. */
static void test_accumulate(ap_ctx *c) {
    test_rng r = {14};
    cfg g = {1, 7, 6, 5, 4, 3, 3, 2, {0, 1, 0, 1}, 1, AP_F32};
    ap_tensor *x = test_rand_leaf(c, &r, 4, (int64_t[]){1, 7, 6, 5}, -1, 1);
    ap_tensor *w = weights(c, &r, &g, 1);
    ap_tensor *b = test_rand_leaf(c, &r, 1, (int64_t[]){4}, -1, 1);
    ap_tensor *gy = test_rand(c, &r, 4, (int64_t[]){1, 3, 3, 4}, -1, 1);
    ap_tensor *gx, *gw, *gb;
    grads(c, &g, x, w, b, gy, &gx, &gw, &gb);
    ap_tensor *y = ap_conv2d(c, x, w, b, params(&g)); /* no zero_grad: accumulates */
    CHECK(ap_backward(c, y, gy) == AP_OK);
    ap_tensor_release(y);
    ap_tensor *g1[3] = {gx, gw, gb}, *lv[3] = {x, w, b};
    const char *nm[3] = {"dx", "dw", "db"};
    for (int k = 0; k < 3; k++) {
        ap_tensor *two = ap_scale(c, g1[k], 2.0f);
        char label[64];
        snprintf(label, sizeof label, "conv2d second backward adds %s", nm[k]);
        test_close_f(label, ap_tensor_cdata(ap_tensor_grad(lv[k])), ap_tensor_cdata(two), ap_tensor_numel(two), 0, 0);
        ap_tensor_release(two);
    }
    /* h = 1.5 x feeds two convolutions; dh gets beta 0 then beta 1 */
    ap_tensor_zero_grad(x);
    cfg g2 = {1, 7, 6, 5, 4, 1, 1, 1, {0, 0, 0, 0}, 0, AP_F32};
    ap_tensor *w2 = weights(c, &r, &g2, 0);
    ap_tensor *gy2 = test_rand(c, &r, 4, (int64_t[]){1, 7, 6, 4}, -1, 1);
    ap_tensor *h = ap_scale(c, x, 1.5f);
    ap_tensor *ys[2] = {ap_conv2d(c, h, w, b, params(&g)), ap_conv2d(c, h, w2, NULL, params(&g2))};
    ap_tensor *gs[2] = {gy, gy2};
    CHECK(ap_backward_multi(c, 2, ys, gs) == AP_OK);
    ap_tensor *gsum = ap_tensor_grad(x) ? ap_copy(c, ap_tensor_grad(x)) : NULL;
    /* each branch alone */
    ap_tensor *part[2];
    for (int k = 0; k < 2; k++) {
        ap_tensor_zero_grad(x);
        ap_tensor *hh = ap_scale(c, x, 1.5f);
        ap_tensor *yy = k ? ap_conv2d(c, hh, w2, NULL, params(&g2)) : ap_conv2d(c, hh, w, b, params(&g));
        CHECK(ap_backward(c, yy, gs[k]) == AP_OK);
        part[k] = ap_copy(c, ap_tensor_grad(x));
        ap_tensor_release(hh);
        ap_tensor_release(yy);
    }
    if (gsum && part[0] && part[1]) {
        int64_t m = ap_tensor_numel(x);
        double *ref = malloc((size_t)m * sizeof *ref);
        for (int64_t i = 0; i < m; i++)
            ref[i] = (double)((const float *)ap_tensor_cdata(part[0]))[i] + ((const float *)ap_tensor_cdata(part[1]))[i];
        test_close("conv2d gradient of a shared input is the sum of both uses", ap_tensor_cdata(gsum), ref, m, 1e-5, 1e-6);
        free(ref);
    }
    ap_tensor *ts[] = {x, w, b, gy, gx, gw, gb, w2, gy2, h, ys[0], ys[1], gsum, part[0], part[1]};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) ap_tensor_release(ts[i]);
}

/* Same inputs and threads: bit-identical outputs and gradients. */
static void test_determinism(ap_ctx *c) {
    test_rng r = {15};
    cfg g = {2, 9, 9, 24, 40, 3, 3, 1, {1, 1, 1, 1}, 1, AP_F32};
    ap_tensor *x = test_rand_leaf(c, &r, 4, (int64_t[]){2, 9, 9, 24}, -1, 1);
    ap_tensor *w = weights(c, &r, &g, 1);
    ap_tensor *b = test_rand_leaf(c, &r, 1, (int64_t[]){40}, -1, 1);
    ap_tensor *gy = test_rand(c, &r, 4, (int64_t[]){2, 9, 9, 40}, -1, 1);
    for (int prec = 0; prec < 2; prec++) {
        if (prec && !ap_cpu_has_bf16()) break;
        ap_set_precision(c, prec ? AP_PREC_BF16 : AP_PREC_F32);
        ap_tensor *a[3], *bb[3];
        grads(c, &g, x, w, b, gy, &a[0], &a[1], &a[2]);
        grads(c, &g, x, w, b, gy, &bb[0], &bb[1], &bb[2]);
        for (int k = 0; k < 3; k++) {
            CHECK_MSG(bit_equal(a[k], bb[k]), "conv2d gradient %d repeats bit for bit (%s)", k, prec ? "bf16" : "f32");
            ap_tensor_release(a[k]);
            ap_tensor_release(bb[k]);
        }
    }
    ap_set_precision(c, AP_PREC_F32);
    ap_tensor *ts[] = {x, w, b, gy};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) ap_tensor_release(ts[i]);
}

/* bf16 against f32: relative to the output scale, |bf16 - f32| <= 2e-2 for
 * outputs and gradients (bf16 keeps 8 bits of mantissa: ~4e-3 per operand,
 * growing as sqrt of the reduction length, then averaged out). */
static double rel_to_scale(const ap_tensor *got, const ap_tensor *ref) {
    const float *a = ap_tensor_cdata(got), *b = ap_tensor_cdata(ref);
    double err = 0, scale = 0;
    for (int64_t i = 0; i < ap_tensor_numel(ref); i++) {
        err = fmax(err, fabs((double)a[i] - b[i]));
        scale = fmax(scale, fabs((double)b[i]));
    }
    return err / fmax(scale, 1e-30);
}

static void test_bf16(ap_ctx *c) {
    if (!ap_cpu_has_bf16()) {
        printf("conv2d bf16: this CPU has no bf16 dot products; bf16 mode computes in f32 (skipped)\n");
        return;
    }
    test_rng r = {16};
    const cfg cases[] = {
        {2, 9, 7, 32, 48, 3, 3, 1, {1, 1, 1, 1}, 1, AP_F32},
        {1, 9, 9, 40, 24, 3, 3, 2, {0, 1, 0, 1}, 1, AP_F32},
        {2, 6, 6, 64, 32, 1, 1, 1, {0, 0, 0, 0}, 1, AP_BF16},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const cfg *g = &cases[i];
        int oh = out_dim(g->h, g->pad[0], g->pad[1], g->kh, g->stride);
        int ow = out_dim(g->w, g->pad[2], g->pad[3], g->kw, g->stride);
        ap_tensor *x = test_rand_leaf(c, &r, 4, (int64_t[]){g->n, g->h, g->w, g->ci}, -1, 1);
        ap_tensor *w32 = weights(c, &r, g, 1);
        ap_tensor *b = test_rand_leaf(c, &r, 1, (int64_t[]){g->co}, -1, 1);
        ap_tensor *gy = test_rand(c, &r, 4, (int64_t[]){g->n, oh, ow, g->co}, -1, 1);
        ap_tensor *w = w32;
        if (g->wdt == AP_BF16) { /* frozen bf16 storage: then only dx and db */
            w = ap_tensor_convert(c, w32, AP_BF16);
        }
        ap_tensor *res[2][4];
        for (int prec = 0; prec < 2; prec++) {
            ap_set_precision(c, prec ? AP_PREC_BF16 : AP_PREC_F32);
            ap_tensor *y = ap_conv2d(c, x, w, b, params(g));
            res[prec][0] = ap_copy(c, y);
            ap_tensor_release(y);
            grads(c, g, x, w, b, gy, &res[prec][1], &res[prec][2], &res[prec][3]);
            if (prec) printf("conv2d bf16 case %zu: %s\n", i, ap_dnnl_last_impl(c));
        }
        ap_set_precision(c, AP_PREC_F32);
        const char *nm[4] = {"y", "dx", "dw", "db"};
        for (int k = 0; k < 4; k++) {
            if (!res[0][k] || !res[1][k]) {
                CHECK(!res[0][k] && !res[1][k]);
                continue;
            }
            double e = rel_to_scale(res[1][k], res[0][k]);
            CHECK_MSG(e <= 2e-2, "conv2d bf16 case %zu %s: error %.3g of the output scale", i, nm[k], e);
            if (k < 2)
                CHECK_MSG(e > 0, "conv2d bf16 case %zu %s: identical to f32, so bf16 was not used", i, nm[k]);
            ap_tensor_release(res[0][k]);
            ap_tensor_release(res[1][k]);
        }
        if (w != w32) ap_tensor_release(w);
        ap_tensor *ts[] = {x, w32, b, gy};
        for (size_t k = 0; k < sizeof ts / sizeof *ts; k++) ap_tensor_release(ts[k]);
    }
}

/* Packed weights are made once, and rebuilt after ap_tensor_touch; repeated
 * shapes reuse the cached primitive. */
static void test_packing(ap_ctx *c) {
    test_rng r = {17};
    cfg g = {1, 8, 8, 16, 32, 3, 3, 1, {1, 1, 1, 1}, 0, AP_F32};
    ap_tensor *x = test_rand(c, &r, 4, (int64_t[]){1, 8, 8, 16}, -1, 1);
    ap_tensor *w = weights(c, &r, &g, 0);
    for (int prec = 0; prec < 2; prec++) {
        if (prec && !ap_cpu_has_bf16()) break;
        ap_set_precision(c, prec ? AP_PREC_BF16 : AP_PREC_F32);
        ap_tensor *y0 = ap_conv2d(c, x, w, NULL, params(&g));
        ap_dnnl_stats s0 = ap_dnnl_get_stats(c);
        ap_tensor *y1 = ap_conv2d(c, x, w, NULL, params(&g));
        ap_dnnl_stats s1 = ap_dnnl_get_stats(c);
        CHECK_MSG(s1.packs == s0.packs, "a second call does not repack the weights");
        CHECK_MSG(s1.cache_hits == s0.cache_hits + 1 && s1.cache_misses == s0.cache_misses,
                  "a second call reuses the cached primitive");
        CHECK(bit_equal(y0, y1));
        /* change the weights in place: without touch the cache would be stale */
        float *pw = ap_tensor_data(w);
        for (int64_t i = 0; i < ap_tensor_numel(w); i++) pw[i] = -pw[i];
        ap_tensor_touch(w);
        ap_tensor *y2 = ap_conv2d(c, x, w, NULL, params(&g));
        int ok = y2 != NULL;
        for (int64_t i = 0; ok && i < ap_tensor_numel(y0); i++)
            ok = ((const float *)ap_tensor_cdata(y2))[i] == -((const float *)ap_tensor_cdata(y0))[i];
        CHECK_MSG(ok, "after ap_tensor_touch the new weights are used (%s)", prec ? "bf16" : "f32");
        ap_tensor_release(y0), ap_tensor_release(y1), ap_tensor_release(y2);
    }
    /* the cache off gives the same numbers */
    ap_set_precision(c, AP_PREC_F32);
    ap_tensor *ya = ap_conv2d(c, x, w, NULL, params(&g));
    ap_dnnl_set_cache(c, false);
    ap_tensor *yb = ap_conv2d(c, x, w, NULL, params(&g));
    ap_dnnl_set_cache(c, true);
    CHECK_MSG(bit_equal(ya, yb), "the primitive cache does not change results");
    ap_tensor *ts[] = {x, w, ya, yb};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) ap_tensor_release(ts[i]);
}

static void expect_error(ap_ctx *c, ap_tensor *y, ap_status st, const char *needle) {
    CHECK_MSG(y == NULL, "expected an error containing \"%s\"", needle);
    CHECK_MSG(ap_last_status(c) == st, "status %s, expected %s (%s)", ap_strerror(ap_last_status(c)), ap_strerror(st),
              ap_last_error(c));
    CHECK_MSG(strstr(ap_last_error(c), needle) != NULL, "message \"%s\" lacks \"%s\"", ap_last_error(c), needle);
    ap_tensor_release(y);
    ap_clear_error(c);
}

static void test_errors(ap_ctx *c) {
    test_rng r = {18};
    ap_tensor *x = test_rand(c, &r, 4, (int64_t[]){1, 5, 5, 3}, -1, 1);
    ap_tensor *w = test_rand(c, &r, 4, (int64_t[]){4, 3, 3, 3}, -1, 1);
    ap_tensor *w4 = test_rand(c, &r, 4, (int64_t[]){4, 4, 3, 3}, -1, 1);
    ap_tensor *w3 = test_rand(c, &r, 3, (int64_t[]){4, 3, 3}, -1, 1);
    ap_tensor *x3 = test_rand(c, &r, 3, (int64_t[]){5, 5, 3}, -1, 1);
    ap_tensor *b5 = test_rand(c, &r, 1, (int64_t[]){5}, -1, 1);
    ap_tensor *xi = ap_tensor_zeros(c, AP_I32, 4, (int64_t[]){1, 5, 5, 3});
    ap_tensor *wi = ap_tensor_zeros(c, AP_I32, 4, (int64_t[]){4, 3, 3, 3});
    ap_conv_params p = {1, {1, 1, 1, 1}};
    expect_error(c, ap_conv2d(c, x, w4, NULL, p), AP_ERR_SHAPE, "x has 3 channels, weight [4,4,3,3] expects 4");
    expect_error(c, ap_conv2d(c, x, w3, NULL, p), AP_ERR_SHAPE, "must be 4-D [Cout,Cin,kh,kw]");
    expect_error(c, ap_conv2d(c, x3, w, NULL, p), AP_ERR_SHAPE, "x [5,5,3] must be 4-D");
    expect_error(c, ap_conv2d(c, x, w, NULL, (ap_conv_params){0, {1, 1, 1, 1}}), AP_ERR_INVALID_ARG, "stride 0");
    expect_error(c, ap_conv2d(c, x, w, NULL, (ap_conv_params){-2, {1, 1, 1, 1}}), AP_ERR_INVALID_ARG, "stride -2");
    expect_error(c, ap_conv2d(c, x, w, NULL, (ap_conv_params){1, {1, -1, 1, 1}}), AP_ERR_INVALID_ARG, "pad[1] = -1");
    expect_error(c, ap_conv2d(c, x, w, b5, p), AP_ERR_SHAPE, "bias [5] does not match");
    expect_error(c, ap_conv2d(c, xi, w, NULL, p), AP_ERR_DTYPE, "x has dtype i32");
    expect_error(c, ap_conv2d(c, x, wi, NULL, p), AP_ERR_DTYPE, "dtype i32");
    expect_error(c, ap_conv2d(c, NULL, w, NULL, p), AP_ERR_INVALID_ARG, "x is NULL");
    expect_error(c, ap_conv2d(c, x, NULL, NULL, p), AP_ERR_INVALID_ARG, "weight is NULL");
    ap_tensor *big = test_rand(c, &r, 4, (int64_t[]){4, 3, 9, 9}, -1, 1);
    expect_error(c, ap_conv2d(c, x, big, NULL, p), AP_ERR_SHAPE, "smaller than the 9x9 kernel");
    /* sticky: after an error every call returns NULL until cleared */
    CHECK(ap_conv2d(c, x, w4, NULL, p) == NULL);
    CHECK(ap_conv2d(c, x, w, NULL, p) == NULL);
    ap_clear_error(c);
    ap_tensor *y = ap_conv2d(c, x, w, NULL, p);
    CHECK(y != NULL);
    ap_tensor *ts[] = {x, w, w4, w3, x3, b5, xi, wi, big, y};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) ap_tensor_release(ts[i]);
}

int main(void) {
    ap_ctx *c = test_ctx();
    test_forward(c);
    test_gradients(c);
    test_frozen(c);
    test_accumulate(c);
    test_determinism(c);
    test_bf16(c);
    test_packing(c);
    test_errors(c);
    CHECK_OK(c);
    CHECK_MSG(ap_mem_in_use(c) == 0, "%zu bytes still in use", ap_mem_in_use(c));
    ap_ctx_free(c);
    return test_summary("conv");
}
