/* linear and matmul: forward against naive double-precision references,
 * gradients by finite differences (every transpose combination, batched and
 * shared b), frozen weights, the beta rule, bf16 against f32, weight packing,
 * errors. */
#include "backend/cpu/dnnl.h"
#include "gradcheck.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void release_all(ap_tensor **ts, size_t n) {
    for (size_t i = 0; i < n; i++) ap_tensor_release(ts[i]);
}
#define RELEASE(...)                                                                              \
    do {                                                                                          \
        ap_tensor *ts_[] = {__VA_ARGS__};                                                         \
        release_all(ts_, sizeof ts_ / sizeof *ts_);                                               \
    } while (0)

static int bit_equal(const ap_tensor *a, const ap_tensor *b) {
    return a && b && ap_tensor_numel(a) == ap_tensor_numel(b) &&
           !memcmp(ap_tensor_cdata(a), ap_tensor_cdata(b), ap_tensor_nbytes(a));
}

static const float *F(const ap_tensor *t) { return ap_tensor_cdata(t); }

/* ------------------------------------------------------------ linear */
static void test_linear_forward(ap_ctx *c) {
    test_rng r = {21};
    struct {
        int ndim;
        int64_t lead[3];
        int in, out, bias;
        ap_dtype wdt;
    } cases[] = {
        {3, {2, 3}, 7, 5, 1, AP_F32}, {2, {1}, 13, 1, 0, AP_F32}, {2, {4}, 33, 17, 1, AP_F32},
        {1, {0}, 9, 4, 1, AP_F32},    {2, {37}, 64, 48, 1, AP_F32}, {3, {3, 5}, 24, 40, 1, AP_BF16},
        {2, {6}, 12, 10, 0, AP_F16},  {2, {200}, 96, 80, 1, AP_F32}, {0},
        {0}, {0}, {0}, {0}, {0}, {0}, /* random shapes, filled below */
    };
    size_t nfixed = 8;
    for (size_t t = nfixed; t < sizeof cases / sizeof *cases; t++) {
        cases[t].ndim = 2 + (int)(test_rng_next(&r) % 2);
        cases[t].lead[0] = 1 + (int64_t)(test_rng_next(&r) % 9);
        cases[t].lead[1] = 1 + (int64_t)(test_rng_next(&r) % 9);
        cases[t].in = 1 + (int)(test_rng_next(&r) % 40);
        cases[t].out = 1 + (int)(test_rng_next(&r) % 40);
        cases[t].bias = (int)(test_rng_next(&r) % 2);
        cases[t].wdt = AP_F32;
    }
    for (size_t t = 0; t < sizeof cases / sizeof *cases; t++) {
        int64_t xs[4], rows = 1;
        int nd = cases[t].ndim;
        for (int i = 0; i < nd - 1; i++) rows *= (xs[i] = cases[t].lead[i]);
        xs[nd - 1] = cases[t].in;
        int in = cases[t].in, out = cases[t].out;
        ap_tensor *x = test_rand(c, &r, nd, xs, -1, 1);
        ap_tensor *w32 = test_rand(c, &r, 2, (int64_t[]){out, in}, -0.5f, 0.5f);
        ap_tensor *b = cases[t].bias ? test_rand(c, &r, 1, (int64_t[]){out}, -1, 1) : NULL;
        ap_tensor *w = cases[t].wdt == AP_F32 ? ap_tensor_retain(w32) : ap_tensor_convert(c, w32, cases[t].wdt);
        ap_tensor *wv = ap_tensor_convert(c, w, AP_F32); /* the values actually stored */
        ap_tensor *y = ap_linear(c, x, w, b);
        CHECK_OK(c);
        if (y) {
            CHECK(ap_tensor_ndim(y) == nd && ap_tensor_dim(y, -1) == out);
            double *ref = malloc((size_t)rows * out * sizeof *ref);
            for (int64_t i = 0; i < rows; i++)
                for (int o = 0; o < out; o++) {
                    double s = b ? F(b)[o] : 0.0;
                    for (int k = 0; k < in; k++) s += (double)F(x)[i * in + k] * F(wv)[o * in + k];
                    ref[i * out + o] = s;
                }
            char label[96];
            snprintf(label, sizeof label, "linear %lld x %d -> %d (%s weights)", (long long)rows, in, out,
                     ap_dtype_name(cases[t].wdt));
            test_close(label, F(y), ref, rows * out, 1e-4, 1e-5);
            free(ref);
        }
        RELEASE(x, w32, b, w, wv, y);
    }
}

static ap_tensor *linear_fn(ap_ctx *c, void *user, int n, ap_tensor **in) {
    return ap_linear(c, in[0], in[1], n > 2 ? in[2] : NULL);
}

/* y = linear(x, x): the same tensor as input and weight (aliased gradients) */
static ap_tensor *self_fn(ap_ctx *c, void *user, int n, ap_tensor **in) {
    return ap_linear(c, in[0], in[0], NULL);
}

static void test_linear_grad(ap_ctx *c) {
    test_rng r = {22};
    int dims[][4] = {{2, 3, 7, 5}, {1, 1, 4, 3}, {3, 5, 19, 11}};
    for (size_t t = 0; t < sizeof dims / sizeof *dims; t++) {
        ap_tensor *in[3] = {test_rand_leaf(c, &r, 3, (int64_t[]){dims[t][0], dims[t][1], dims[t][2]}, -1, 1),
                            test_rand_leaf(c, &r, 2, (int64_t[]){dims[t][3], dims[t][2]}, -1, 1),
                            test_rand_leaf(c, &r, 1, (int64_t[]){dims[t][3]}, -1, 1)};
        char label[64];
        snprintf(label, sizeof label, "linear case %zu", t);
        gradcheck(c, label, linear_fn, NULL, 3, in, NULL);
        RELEASE(in[0], in[1], in[2]);
    }
    ap_tensor *sq = test_rand_leaf(c, &r, 2, (int64_t[]){6, 6}, -1, 1);
    gradcheck(c, "linear(x, x)", self_fn, NULL, 1, &sq, NULL);
    ap_tensor_release(sq);
    CHECK_OK(c);
}

/* Gradients of linear(x, w, b) for seed gy, as copies (NULL where none). */
static void lin_grads(ap_ctx *c, ap_tensor *x, ap_tensor *w, ap_tensor *b, ap_tensor *gy, ap_tensor **g) {
    ap_tensor *lv[3] = {x, w, b};
    for (int k = 0; k < 3; k++) ap_tensor_zero_grad(lv[k]);
    ap_tensor *y = ap_linear(c, x, w, b);
    CHECK(ap_backward(c, y, gy) == AP_OK);
    ap_tensor_release(y);
    for (int k = 0; k < 3; k++) g[k] = lv[k] && ap_tensor_grad(lv[k]) ? ap_copy(c, ap_tensor_grad(lv[k])) : NULL;
}

static void test_linear_frozen(ap_ctx *c) {
    test_rng r = {23};
    ap_tensor *x = test_rand_leaf(c, &r, 2, (int64_t[]){9, 12}, -1, 1);
    ap_tensor *w = test_rand_leaf(c, &r, 2, (int64_t[]){7, 12}, -1, 1);
    ap_tensor *b = test_rand_leaf(c, &r, 1, (int64_t[]){7}, -1, 1);
    ap_tensor *gy = test_rand(c, &r, 2, (int64_t[]){9, 7}, -1, 1);
    ap_tensor *g0[3], *g1[3];
    lin_grads(c, x, w, b, gy, g0);
    CHECK(g0[0] && g0[1] && g0[2]);
    /* frozen weight and bias: exactly one product (dx) */
    ap_tensor_set_requires_grad(w, 0);
    ap_tensor_set_requires_grad(b, 0);
    ap_dnnl_stats s0 = ap_dnnl_get_stats(c);
    lin_grads(c, x, w, b, gy, g1);
    ap_dnnl_stats s1 = ap_dnnl_get_stats(c);
    CHECK_MSG(g1[1] == NULL && g1[2] == NULL, "a frozen weight gets no gradient");
    CHECK_MSG(s1.matmul == s0.matmul + 2, "forward and dx only: %lld products", (long long)(s1.matmul - s0.matmul));
    CHECK(bit_equal(g0[0], g1[0]));
    RELEASE(g1[0]);
    /* frozen input (LoRA's down projection sees a frozen activation): dw and db only */
    ap_tensor_set_requires_grad(x, 0);
    ap_tensor_set_requires_grad(w, 1);
    ap_tensor_set_requires_grad(b, 1);
    s0 = ap_dnnl_get_stats(c);
    lin_grads(c, x, w, b, gy, g1);
    s1 = ap_dnnl_get_stats(c);
    CHECK(g1[0] == NULL && g1[1] && g1[2]);
    CHECK_MSG(s1.matmul == s0.matmul + 2, "forward and dw only");
    CHECK(bit_equal(g0[1], g1[1]) && bit_equal(g0[2], g1[2]));
    /* a second backward adds (beta 1) */
    ap_tensor_set_requires_grad(x, 1);
    ap_tensor_zero_grad(x), ap_tensor_zero_grad(w), ap_tensor_zero_grad(b);
    ap_tensor *y = ap_linear(c, x, w, b);
    CHECK(ap_backward(c, y, gy) == AP_OK);
    ap_tensor_release(y);
    y = ap_linear(c, x, w, b);
    CHECK(ap_backward(c, y, gy) == AP_OK);
    ap_tensor_release(y);
    ap_tensor *lv[3] = {x, w, b};
    for (int k = 0; k < 3; k++) {
        ap_tensor *two = ap_scale(c, g0[k], 2.0f);
        char label[64];
        snprintf(label, sizeof label, "linear: second backward adds gradient %d", k);
        test_close_f(label, F(ap_tensor_grad(lv[k])), F(two), ap_tensor_numel(two), 0, 0);
        ap_tensor_release(two);
    }
    RELEASE(x, w, b, gy, g0[0], g0[1], g0[2], g1[0], g1[1], g1[2]);
}

/* An intermediate feeding two linears: its gradient is the sum (beta 0, then 1). */
static void test_linear_shared_input(ap_ctx *c) {
    test_rng r = {24};
    ap_tensor *x = test_rand_leaf(c, &r, 2, (int64_t[]){5, 8}, -1, 1);
    ap_tensor *w1 = test_rand(c, &r, 2, (int64_t[]){3, 8}, -1, 1), *w2 = test_rand(c, &r, 2, (int64_t[]){4, 8}, -1, 1);
    ap_tensor *g1 = test_rand(c, &r, 2, (int64_t[]){5, 3}, -1, 1), *g2 = test_rand(c, &r, 2, (int64_t[]){5, 4}, -1, 1);
    ap_tensor *h = ap_scale(c, x, 2.0f);
    ap_tensor *ys[2] = {ap_linear(c, h, w1, NULL), ap_linear(c, h, w2, NULL)}, *gs[2] = {g1, g2};
    CHECK(ap_backward_multi(c, 2, ys, gs) == AP_OK);
    double ref[40];
    for (int i = 0; i < 5; i++)
        for (int k = 0; k < 8; k++) {
            double s = 0;
            for (int o = 0; o < 3; o++) s += (double)F(g1)[i * 3 + o] * F(w1)[o * 8 + k];
            for (int o = 0; o < 4; o++) s += (double)F(g2)[i * 4 + o] * F(w2)[o * 8 + k];
            ref[i * 8 + k] = 2.0 * s;
        }
    CHECK(ap_tensor_grad(x) != NULL);
    if (ap_tensor_grad(x)) test_close("linear: shared input gets both gradients", F(ap_tensor_grad(x)), ref, 40, 1e-5, 1e-6);
    RELEASE(x, w1, w2, g1, g2, h, ys[0], ys[1]);
}

/* ------------------------------------------------------------ matmul */
typedef struct {
    int ta, tb, shared;
    int64_t lead[2];
    int nlead;
    int64_t M, N, K;
} mm_cfg;

static void mm_shapes(const mm_cfg *m, int64_t *as, int *an, int64_t *bs, int *bn) {
    *an = m->nlead + 2;
    for (int i = 0; i < m->nlead; i++) as[i] = bs[i] = m->lead[i];
    as[m->nlead] = m->ta ? m->K : m->M;
    as[m->nlead + 1] = m->ta ? m->M : m->K;
    int o = m->shared ? 0 : m->nlead;
    *bn = o + 2;
    bs[o] = m->tb ? m->N : m->K;
    bs[o + 1] = m->tb ? m->K : m->N;
}

static double *mm_ref(const mm_cfg *m, const float *a, const float *b) {
    int64_t batch = 1;
    for (int i = 0; i < m->nlead; i++) batch *= m->lead[i];
    int64_t M = m->M, N = m->N, K = m->K;
    double *y = malloc((size_t)(batch * M * N) * sizeof *y);
    for (int64_t t = 0; t < batch; t++) {
        const float *at = a + t * M * K, *bt = b + (m->shared ? 0 : t * K * N);
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) {
                double s = 0;
                for (int64_t k = 0; k < K; k++)
                    s += (double)(m->ta ? at[k * M + i] : at[i * K + k]) * (m->tb ? bt[j * K + k] : bt[k * N + j]);
                y[(t * M + i) * N + j] = s;
            }
    }
    return y;
}

static ap_tensor *mm_fn(ap_ctx *c, void *user, int n, ap_tensor **in) {
    const mm_cfg *m = user;
    return ap_matmul(c, in[0], in[1], m->ta, m->tb);
}

static void test_matmul(ap_ctx *c) {
    test_rng r = {25};
    for (int shape = 0; shape < 4; shape++)
        for (int tr = 0; tr < 4; tr++) {
            mm_cfg m = {tr & 1, tr >> 1, 0, {1, 1}, 0, 5, 3, 7};
            if (shape == 1) m = (mm_cfg){tr & 1, tr >> 1, 0, {2, 3}, 2, 4, 6, 5};   /* batched, 2 leading dims */
            if (shape == 2) m = (mm_cfg){tr & 1, tr >> 1, 1, {3, 1}, 1, 5, 4, 6};   /* shared b */
            if (shape == 3) m = (mm_cfg){tr & 1, tr >> 1, 1, {2, 2}, 2, 9, 17, 33}; /* shared b, larger */
            int64_t as[4], bs[4];
            int an, bn;
            mm_shapes(&m, as, &an, bs, &bn);
            ap_tensor *in[2] = {test_rand_leaf(c, &r, an, as, -1, 1), test_rand_leaf(c, &r, bn, bs, -1, 1)};
            char label[128];
            snprintf(label, sizeof label, "matmul %s trans_a %d trans_b %d",
                     shape == 0 ? "2-D" : shape == 1 ? "batched" : "shared b", m.ta, m.tb);
            ap_tensor *y = ap_matmul(c, in[0], in[1], m.ta, m.tb);
            CHECK_OK(c);
            if (y) {
                CHECK(ap_tensor_ndim(y) == an && ap_tensor_dim(y, -2) == m.M && ap_tensor_dim(y, -1) == m.N);
                double *ref = mm_ref(&m, F(in[0]), F(in[1]));
                test_close(label, F(y), ref, ap_tensor_numel(y), 1e-4, 1e-5);
                free(ref);
            }
            ap_tensor_release(y);
            ap_tape_clear(c);
            gradcheck(c, label, mm_fn, &m, 2, in, NULL);
            /* the one-sided cases: only a, or only b, trainable */
            for (int k = 0; k < 2 && shape >= 2; k++) {
                ap_tensor_set_requires_grad(in[k], 0);
                gradcheck(c, label, mm_fn, &m, 2, in, NULL);
                ap_tensor_set_requires_grad(in[k], 1);
            }
            RELEASE(in[0], in[1]);
        }
    CHECK_OK(c);
}

/* ------------------------------------------------------------ bf16 */
static double rel_to_scale(const ap_tensor *got, const ap_tensor *ref) {
    double err = 0, scale = 0;
    for (int64_t i = 0; i < ap_tensor_numel(ref); i++) {
        err = fmax(err, fabs((double)F(got)[i] - F(ref)[i]));
        scale = fmax(scale, fabs((double)F(ref)[i]));
    }
    return err / fmax(scale, 1e-30);
}

/* bf16 against f32: |bf16 - f32| <= 2e-2 of the output scale for outputs and
 * all gradients (8-bit mantissas on inputs, f32 accumulation). */
static void test_bf16(ap_ctx *c) {
    if (!ap_cpu_has_bf16()) {
        printf("linear bf16: this CPU has no bf16 dot products; bf16 mode computes in f32 (skipped)\n");
        return;
    }
    test_rng r = {26};
    ap_tensor *x = test_rand_leaf(c, &r, 3, (int64_t[]){2, 33, 96}, -1, 1);
    ap_tensor *w = test_rand_leaf(c, &r, 2, (int64_t[]){80, 96}, -0.2f, 0.2f);
    ap_tensor *b = test_rand_leaf(c, &r, 1, (int64_t[]){80}, -1, 1);
    ap_tensor *gy = test_rand(c, &r, 3, (int64_t[]){2, 33, 80}, -1, 1);
    ap_tensor *a = test_rand_leaf(c, &r, 3, (int64_t[]){3, 40, 24}, -1, 1);
    ap_tensor *bm = test_rand_leaf(c, &r, 2, (int64_t[]){56, 24}, -1, 1);
    ap_tensor *gm = test_rand(c, &r, 3, (int64_t[]){3, 40, 56}, -1, 1);
    ap_tensor *res[2][7];
    for (int prec = 0; prec < 2; prec++) {
        ap_set_precision(c, prec ? AP_PREC_BF16 : AP_PREC_F32);
        ap_tensor *y = ap_linear(c, x, w, b);
        res[prec][0] = ap_copy(c, y);
        ap_tensor_release(y);
        lin_grads(c, x, w, b, gy, &res[prec][1]);
        ap_tensor_zero_grad(a), ap_tensor_zero_grad(bm);
        ap_tensor *m = ap_matmul(c, a, bm, 0, 1); /* q k^T shape, shared k */
        res[prec][4] = ap_copy(c, m);
        CHECK(ap_backward(c, m, gm) == AP_OK);
        ap_tensor_release(m);
        res[prec][5] = ap_copy(c, ap_tensor_grad(a));
        res[prec][6] = ap_copy(c, ap_tensor_grad(bm));
    }
    ap_set_precision(c, AP_PREC_F32);
    const char *nm[7] = {"linear y", "linear dx", "linear dw", "linear db", "matmul y", "matmul da", "matmul db"};
    for (int k = 0; k < 7; k++) {
        double e = rel_to_scale(res[1][k], res[0][k]);
        CHECK_MSG(e <= 2e-2, "%s: bf16 error %.3g of the output scale", nm[k], e);
        if (k != 3) CHECK_MSG(e > 0, "%s: identical to f32, so bf16 was not used", nm[k]);
        printf("bf16 vs f32, %s: max error %.2e of the output scale\n", nm[k], e);
        ap_tensor_release(res[0][k]);
        ap_tensor_release(res[1][k]);
    }
    RELEASE(x, w, b, gy, a, bm, gm);
}

/* Weights are packed once per layout and again after ap_tensor_touch. */
static void test_packing(ap_ctx *c) {
    test_rng r = {27};
    ap_tensor *x = test_rand(c, &r, 2, (int64_t[]){64, 48}, -1, 1);
    ap_tensor *w = test_rand(c, &r, 2, (int64_t[]){32, 48}, -1, 1);
    for (int prec = 0; prec < 2; prec++) {
        if (prec && !ap_cpu_has_bf16()) break;
        ap_set_precision(c, prec ? AP_PREC_BF16 : AP_PREC_F32);
        ap_tensor *y0 = ap_linear(c, x, w, NULL);
        ap_dnnl_stats s0 = ap_dnnl_get_stats(c);
        ap_tensor *y1 = ap_linear(c, x, w, NULL);
        ap_dnnl_stats s1 = ap_dnnl_get_stats(c);
        CHECK_MSG(s1.packs == s0.packs, "no repacking on the second call");
        CHECK(s1.cache_hits == s0.cache_hits + 1);
        CHECK(bit_equal(y0, y1));
        float *pw = ap_tensor_data(w);
        for (int64_t i = 0; i < ap_tensor_numel(w); i++) pw[i] *= -1.0f;
        ap_tensor_touch(w);
        ap_tensor *y2 = ap_linear(c, x, w, NULL);
        int ok = y2 != NULL;
        for (int64_t i = 0; ok && i < ap_tensor_numel(y0); i++) ok = F(y2)[i] == -F(y0)[i];
        CHECK_MSG(ok, "linear uses the new weights after ap_tensor_touch (%s)", prec ? "bf16" : "f32");
        RELEASE(y0, y1, y2);
    }
    ap_set_precision(c, AP_PREC_F32);
    RELEASE(x, w);
}

static void test_determinism(ap_ctx *c) {
    test_rng r = {28};
    ap_tensor *x = test_rand_leaf(c, &r, 2, (int64_t[]){300, 64}, -1, 1);
    ap_tensor *w = test_rand_leaf(c, &r, 2, (int64_t[]){72, 64}, -1, 1);
    ap_tensor *b = test_rand_leaf(c, &r, 1, (int64_t[]){72}, -1, 1);
    ap_tensor *gy = test_rand(c, &r, 2, (int64_t[]){300, 72}, -1, 1);
    ap_tensor *g0[3], *g1[3];
    lin_grads(c, x, w, b, gy, g0);
    lin_grads(c, x, w, b, gy, g1);
    for (int k = 0; k < 3; k++) CHECK_MSG(bit_equal(g0[k], g1[k]), "linear gradient %d repeats bit for bit", k);
    RELEASE(x, w, b, gy, g0[0], g0[1], g0[2], g1[0], g1[1], g1[2]);
}

/* ------------------------------------------------------------ kernels */
/* The bf16 conversion kernel rounds like the scalar reference (denormals
 * excluded: the hardware flushes them, as FTZ/DAZ does everywhere else). */
static void test_convert_kernel(void) {
    test_rng r = {30};
    float v[1000];
    uint16_t got[1000];
    for (int i = 0; i < 1000; i++) {
        uint32_t u = (uint32_t)test_rng_next(&r);
        if ((u & 0x7f800000u) == 0) u |= 0x00800000u; /* no denormals */
        if (i % 7 == 0) u = (u & 0xffff0000u) | 0x8000u; /* exact ties */
        memcpy(&v[i], &u, 4);
    }
    v[3] = INFINITY, v[4] = -INFINITY, v[5] = NAN, v[6] = 0.0f, v[8] = -0.0f, v[9] = 3.4e38f;
    int ok = 1;
    for (int n = 0; n <= 1000 && ok; n += (n < 70 ? 1 : 131)) { /* every tail length, then long runs */
        memset(got, 0xab, sizeof got);
        ap_cpu_f32_to_bf16(got, v, n);
        for (int i = 0; i < n && ok; i++) {
            uint16_t want = ap_f32_to_bf16(v[i]);
            ok = isnan(v[i]) ? (got[i] & 0x7fff) > 0x7f80 : got[i] == want;
            if (!ok) fprintf(stderr, "n %d: [%d] %a -> %04x, want %04x\n", n, i, v[i], got[i], want);
        }
        for (int i = n; i < 1000 && ok; i++) ok = got[i] == 0xabab; /* nothing past the end */
    }
    CHECK_MSG(ok, "ap_cpu_f32_to_bf16 rounds to nearest even, like ap_f32_to_bf16");
}

static void test_sum_rows(void) {
    test_rng r = {31};
    int64_t shapes[][2] = {{1, 3}, {7, 5}, {512, 4}, {1300, 9}, {0, 6}};
    for (size_t t = 0; t < sizeof shapes / sizeof *shapes; t++) {
        int64_t rows = shapes[t][0], cols = shapes[t][1];
        float *src = malloc((size_t)(rows * cols + 1) * sizeof *src), dst[9];
        double ref[9];
        for (int64_t i = 0; i < rows * cols; i++) src[i] = (float)(2 * test_rng_uniform(&r) - 1);
        for (int beta = 0; beta < 2; beta++) {
            for (int64_t j = 0; j < cols; j++) {
                dst[j] = beta ? (float)j : NAN; /* beta 0 must not read dst */
                ref[j] = beta ? (double)j : 0.0;
                for (int64_t i = 0; i < rows; i++) ref[j] += src[i * cols + j];
            }
            ap_cpu_sum_rows(dst, src, rows, cols, (float)beta);
            char label[64];
            snprintf(label, sizeof label, "column sums of [%lld,%lld], beta %d", (long long)rows, (long long)cols, beta);
            test_close(label, dst, ref, cols, 1e-6, 1e-6);
        }
        free(src);
    }
}

/* ------------------------------------------------------------ errors */
static void expect_error(ap_ctx *c, ap_tensor *y, ap_status st, const char *needle) {
    CHECK_MSG(y == NULL, "expected an error containing \"%s\"", needle);
    CHECK_MSG(ap_last_status(c) == st, "status %s, expected %s (%s)", ap_strerror(ap_last_status(c)), ap_strerror(st),
              ap_last_error(c));
    CHECK_MSG(strstr(ap_last_error(c), needle) != NULL, "message \"%s\" lacks \"%s\"", ap_last_error(c), needle);
    ap_tensor_release(y);
    ap_clear_error(c);
}

static void test_errors(ap_ctx *c) {
    test_rng r = {29};
    ap_tensor *x = test_rand(c, &r, 2, (int64_t[]){4, 6}, -1, 1);
    ap_tensor *w = test_rand(c, &r, 2, (int64_t[]){3, 5}, -1, 1);
    ap_tensor *w3 = test_rand(c, &r, 3, (int64_t[]){1, 3, 6}, -1, 1);
    ap_tensor *wok = test_rand(c, &r, 2, (int64_t[]){3, 6}, -1, 1);
    ap_tensor *b4 = test_rand(c, &r, 1, (int64_t[]){4}, -1, 1);
    ap_tensor *xi = ap_tensor_zeros(c, AP_I64, 2, (int64_t[]){4, 6});
    ap_tensor_set_name(w, "to_q.weight");
    expect_error(c, ap_linear(c, x, w, NULL), AP_ERR_SHAPE, "x [4,6] has 6 features, weight to_q.weight [3,5] expects 5");
    expect_error(c, ap_linear(c, x, w3, NULL), AP_ERR_SHAPE, "must be 2-D");
    expect_error(c, ap_linear(c, x, wok, b4), AP_ERR_SHAPE, "bias [4] does not match");
    expect_error(c, ap_linear(c, xi, wok, NULL), AP_ERR_DTYPE, "x has dtype i64");
    expect_error(c, ap_linear(c, x, NULL, NULL), AP_ERR_INVALID_ARG, "weight is NULL");
    ap_tensor *a = test_rand(c, &r, 3, (int64_t[]){2, 4, 5}, -1, 1);
    ap_tensor *b = test_rand(c, &r, 3, (int64_t[]){3, 5, 2}, -1, 1);
    ap_tensor *b2 = test_rand(c, &r, 2, (int64_t[]){6, 2}, -1, 1);
    ap_tensor *v = test_rand(c, &r, 1, (int64_t[]){5}, -1, 1);
    expect_error(c, ap_matmul(c, a, b, 0, 0), AP_ERR_SHAPE, "leading dims");
    expect_error(c, ap_matmul(c, a, b2, 0, 0), AP_ERR_SHAPE, "inner dim 5, b [6,2] has 6");
    expect_error(c, ap_matmul(c, a, b2, 1, 1), AP_ERR_SHAPE, "inner dim 4");
    expect_error(c, ap_matmul(c, v, b2, 0, 0), AP_ERR_SHAPE, "at least 2 dims");
    expect_error(c, ap_matmul(c, b2, a, 0, 0), AP_ERR_SHAPE, "leading dims");
    expect_error(c, ap_matmul(c, a, NULL, 0, 0), AP_ERR_INVALID_ARG, "b is NULL");
    CHECK(ap_linear(c, x, w, NULL) == NULL);
    CHECK(ap_linear(c, x, wok, NULL) == NULL); /* sticky */
    ap_clear_error(c);
    RELEASE(x, w, w3, wok, b4, xi, a, b, b2, v);
}

int main(void) {
    ap_ctx *c = test_ctx();
    test_linear_forward(c);
    test_linear_grad(c);
    test_linear_frozen(c);
    test_linear_shared_input(c);
    test_matmul(c);
    test_bf16(c);
    test_packing(c);
    test_determinism(c);
    test_convert_kernel();
    test_sum_rows();
    test_errors(c);
    CHECK_OK(c);
    CHECK_MSG(ap_mem_in_use(c) == 0, "%zu bytes still in use", ap_mem_in_use(c));
    ap_ctx_free(c);
    return test_summary("linear");
}
