/* Elementwise ops: add/sub/mul with broadcasting, axpby, silu, gelu,
 * quick_gelu, geglu, clamp, sum, mean, concat_channels, upsample_nearest2x.
 * Forward against naive double references on odd shapes, gradients through
 * gradcheck and against analytic double references, accumulation (a second
 * backward adds), determinism across runs and thread counts, error cases. */
#include "backend/cpu/cpu_kernels.h"
#include "gradcheck.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const float *F(const ap_tensor *t) { return ap_tensor_cdata(t); }
static float *W(ap_tensor *t) { return ap_tensor_data(t); }

static ap_tensor *rand_t(ap_ctx *c, test_rng *r, int nd, const int64_t *s, float lo, float hi, int leaf) {
    return leaf ? test_rand_leaf(c, r, nd, s, lo, hi) : test_rand(c, r, nd, s, lo, hi);
}

static int same_bits(const ap_tensor *a, const ap_tensor *b) {
    return a && b && ap_tensor_numel(a) == ap_tensor_numel(b) &&
           memcmp(ap_tensor_cdata(a), ap_tensor_cdata(b), ap_tensor_nbytes(a)) == 0;
}

/* ------------------------------------------------------------ broadcasting */
typedef struct {
    int na, nb;
    int64_t as[4], bs[4];
} bc_case;

/* b's flat index for a's flat index i, numpy rules, b aligned to the end. */
static int64_t b_index(const bc_case *k, int64_t i) {
    int64_t idx[4], bi = 0, stride = 1;
    for (int d = k->na - 1; d >= 0; d--) {
        idx[d] = i % k->as[d];
        i /= k->as[d];
    }
    for (int d = k->nb - 1; d >= 0; d--) {
        int ad = d + k->na - k->nb;
        int64_t v = (ad >= 0 && k->bs[d] != 1) ? idx[ad] : 0;
        bi += v * stride;
        stride *= k->bs[d];
    }
    return bi;
}

static const bc_case bc_cases[] = {
    {4, 4, {2, 3, 5, 7}, {2, 3, 5, 7}}, /* same shape */
    {4, 1, {2, 3, 5, 7}, {7}},          /* [C] */
    {4, 4, {3, 2, 5, 6}, {3, 1, 1, 6}}, /* [N,1,1,C] */
    {3, 3, {3, 5, 7}, {3, 1, 7}},       /* [N,1,C] */
    {4, 1, {2, 3, 5, 7}, {1}},          /* scalar */
    {4, 3, {2, 3, 5, 7}, {3, 5, 7}},    /* [H,W,C] over the batch */
    {4, 4, {2, 3, 5, 7}, {2, 3, 5, 1}}, /* per position */
    {4, 4, {2, 3, 5, 7}, {2, 1, 5, 1}}, /* alternating */
    {2, 3, {4, 6}, {1, 1, 6}},          /* extra leading 1 */
    {2, 2, {1, 6}, {1, 1}},             /* a with a size-1 dim */
};

typedef ap_tensor *(*binop_fn)(ap_ctx *, ap_tensor *, ap_tensor *);
static const binop_fn binops[3] = {ap_add, ap_sub, ap_mul};
static const char *const binop_names[3] = {"add", "sub", "mul"};

static double ref_binop(int op, double a, double b) { return op == 0 ? a + b : op == 1 ? a - b : a * b; }

typedef struct {
    int op;
} bin_u;
static ap_tensor *bin_f(ap_ctx *c, void *u, int n, ap_tensor **in) {
    return binops[((bin_u *)u)->op](c, in[0], in[1]);
}

static void test_binary(ap_ctx *c) {
    test_rng r = {11};
    char label[128];
    for (size_t k = 0; k < sizeof bc_cases / sizeof *bc_cases; k++) {
        const bc_case *bc = &bc_cases[k];
        for (int op = 0; op < 3; op++) {
            ap_tensor *a = rand_t(c, &r, bc->na, bc->as, -2, 2, 1), *b = rand_t(c, &r, bc->nb, bc->bs, -2, 2, 1);
            int64_t na = ap_tensor_numel(a), nb = ap_tensor_numel(b);
            /* forward */
            int prev = ap_set_grad_enabled(c, 0);
            ap_tensor *y = binops[op](c, a, b);
            ap_set_grad_enabled(c, prev);
            CHECK_OK(c);
            double *ref = malloc(sizeof(double) * (size_t)na);
            for (int64_t i = 0; i < na; i++) ref[i] = ref_binop(op, F(a)[i], F(b)[b_index(bc, i)]);
            snprintf(label, sizeof label, "%s case %zu forward", binop_names[op], k);
            test_close(label, F(y), ref, na, 1e-6, 0);
            CHECK(ap_tensor_ndim(y) == bc->na);
            /* gradients against the double reference, then accumulation */
            ap_tensor *x2[2] = {a, b}, *g1[2], *g2[2];
            ap_tensor *yy = binops[op](c, a, b);
            ap_tensor *seed = test_rand(c, &r, 1, (int64_t[]){na}, -1, 1);
            CHECK(ap_backward(c, yy, seed) == AP_OK);
            double *ga = calloc((size_t)na, sizeof(double)), *gb = calloc((size_t)nb, sizeof(double));
            for (int64_t i = 0; i < na; i++) {
                int64_t j = b_index(bc, i);
                double s = F(seed)[i];
                ga[i] = op == 2 ? s * F(b)[j] : s;
                gb[j] += op == 0 ? s : op == 1 ? -s : s * F(a)[i];
            }
            snprintf(label, sizeof label, "%s case %zu grad a", binop_names[op], k);
            test_close(label, F(ap_tensor_grad(a)), ga, na, 1e-6, 1e-7);
            snprintf(label, sizeof label, "%s case %zu grad b", binop_names[op], k);
            test_close(label, F(ap_tensor_grad(b)), gb, nb, 1e-5, 1e-6);
            g1[0] = ap_copy(c, ap_tensor_grad(a));
            g1[1] = ap_copy(c, ap_tensor_grad(b));
            ap_tensor_release(yy);
            yy = binops[op](c, a, b);
            CHECK(ap_backward(c, yy, seed) == AP_OK); /* accumulates */
            for (int t = 0; t < 2; t++) {
                g2[t] = ap_tensor_grad(x2[t]);
                int ok = 1;
                for (int64_t i = 0; i < ap_tensor_numel(g2[t]); i++)
                    ok &= fabsf(F(g2[t])[i] - 2 * F(g1[t])[i]) <= 1e-6f * fabsf(F(g1[t])[i]);
                CHECK_MSG(ok, "%s case %zu: second backward adds (input %d)", binop_names[op], k, t);
                ap_tensor_release(g1[t]);
            }
            /* finite differences */
            bin_u u = {op};
            snprintf(label, sizeof label, "%s case %zu", binop_names[op], k);
            gradcheck(c, label, bin_f, &u, 2, x2, NULL);
            free(ref);
            free(ga);
            free(gb);
            ap_tensor_release(seed);
            ap_tensor_release(yy);
            ap_tensor_release(y);
            ap_tensor_release(a);
            ap_tensor_release(b);
        }
    }

    /* one input frozen: only the other gets a gradient */
    ap_tensor *a = rand_t(c, &r, 2, (int64_t[]){5, 6}, -1, 1, 1), *b = rand_t(c, &r, 1, (int64_t[]){6}, -1, 1, 0);
    ap_tensor *x2[2] = {a, b};
    gradcheck(c, "mul, b frozen", bin_f, &(bin_u){2}, 2, x2, NULL);
    CHECK(ap_tensor_grad(b) == NULL);
    ap_tensor_set_requires_grad(a, 0);
    ap_tensor_set_requires_grad(b, 1);
    gradcheck(c, "mul, a frozen", bin_f, &(bin_u){2}, 2, x2, NULL);
    CHECK(ap_tensor_grad(a) == NULL);
    /* the same tensor on both sides */
    ap_tensor *sq[2] = {b, b};
    gradcheck(c, "mul(b, b)", bin_f, &(bin_u){2}, 2, sq, NULL);
    gradcheck(c, "sub(b, b)", bin_f, &(bin_u){1}, 2, sq, NULL);
    ap_tensor_release(a);
    ap_tensor_release(b);
}

/* b stored in bf16 or f16 (a frozen weight): same as f32 b holding the rounded values. */
static void test_binary_lowp_b(ap_ctx *c) {
    test_rng r = {12};
    ap_tensor *a = test_rand(c, &r, 3, (int64_t[]){2, 5, 9}, -2, 2);
    ap_tensor *b = test_rand(c, &r, 1, (int64_t[]){9}, -2, 2);
    ap_dtype dts[2] = {AP_BF16, AP_F16};
    for (int d = 0; d < 2; d++) {
        ap_tensor *bl = ap_tensor_convert(c, b, dts[d]);
        ap_tensor *bf = ap_tensor_convert(c, bl, AP_F32);
        for (int op = 0; op < 3; op++) {
            ap_tensor *y1 = binops[op](c, a, bl), *y2 = binops[op](c, a, bf);
            CHECK_OK(c);
            CHECK_MSG(same_bits(y1, y2), "%s with %s b equals f32 b of the rounded values", binop_names[op],
                      ap_dtype_name(dts[d]));
            ap_tensor_release(y1);
            ap_tensor_release(y2);
        }
        ap_tensor_release(bl);
        ap_tensor_release(bf);
    }
    ap_tensor_release(a);
    ap_tensor_release(b);
}

/* Large enough for the threaded paths: the gradient of a broadcast b is the
 * same bit for bit with 1 and 2 threads and across runs. */
static void test_binary_determinism(ap_ctx *c) {
    test_rng r = {13};
    int64_t as[4] = {2, 23, 31, 96};
    const int64_t bss[3][4] = {{96, 0, 0, 0}, {2, 1, 1, 96}, {2, 23, 31, 1}};
    const int nbs[3] = {1, 4, 4};
    int threads = ap_get_num_threads(c);
    for (int k = 0; k < 3; k++) {
        ap_tensor *a = test_rand_leaf(c, &r, 4, as, -1, 1), *b = test_rand_leaf(c, &r, nbs[k], bss[k], -1, 1);
        ap_tensor *seed = test_rand(c, &r, 4, as, -1, 1);
        ap_tensor *res[3];
        for (int run = 0; run < 3; run++) {
            ap_set_num_threads(c, run == 2 ? 1 : 2);
            ap_tensor_zero_grad(b);
            ap_tensor_zero_grad(a);
            ap_tensor *y = ap_mul(c, a, b);
            CHECK(ap_backward(c, y, seed) == AP_OK);
            res[run] = ap_copy(c, ap_tensor_grad(b));
            ap_tensor_release(y);
        }
        CHECK_MSG(same_bits(res[0], res[1]), "broadcast gradient %d identical across runs", k);
        CHECK_MSG(same_bits(res[0], res[2]), "broadcast gradient %d identical with 1 and 2 threads", k);
        /* and right: against a double reference */
        bc_case bc = {4, nbs[k], {as[0], as[1], as[2], as[3]}, {bss[k][0], bss[k][1], bss[k][2], bss[k][3]}};
        int64_t nb = ap_tensor_numel(b);
        double *gb = calloc((size_t)nb, sizeof(double));
        for (int64_t i = 0; i < ap_tensor_numel(a); i++) gb[b_index(&bc, i)] += (double)F(seed)[i] * F(a)[i];
        test_close("threaded broadcast gradient", F(res[0]), gb, nb, 1e-5, 1e-6);
        free(gb);
        for (int run = 0; run < 3; run++) ap_tensor_release(res[run]);
        ap_tensor_release(a);
        ap_tensor_release(b);
        ap_tensor_release(seed);
    }
    ap_set_num_threads(c, threads);
}

static void test_binary_errors(ap_ctx *c) {
    test_rng r = {14};
    ap_tensor *a = test_rand(c, &r, 3, (int64_t[]){2, 3, 4}, -1, 1);
    ap_tensor *b = test_rand(c, &r, 1, (int64_t[]){3}, -1, 1);
    ap_tensor *b2 = test_rand(c, &r, 4, (int64_t[]){2, 2, 3, 4}, -1, 1);
    ap_tensor *ids = ap_tensor_zeros(c, AP_I32, 1, (int64_t[]){4});
    CHECK(ap_add(c, a, b) == NULL);
    CHECK(ap_last_status(c) == AP_ERR_SHAPE);
    CHECK_MSG(strstr(ap_last_error(c), "add") && strstr(ap_last_error(c), "[3]") &&
                  strstr(ap_last_error(c), "[2,3,4]"),
              "message names op and shapes: %s", ap_last_error(c));
    CHECK(ap_mul(c, a, a) == NULL); /* sticky */
    ap_clear_error(c);
    CHECK(ap_sub(c, a, b2) == NULL && ap_last_status(c) == AP_ERR_SHAPE);
    ap_clear_error(c);
    CHECK(ap_mul(c, a, ids) == NULL && ap_last_status(c) == AP_ERR_DTYPE);
    ap_clear_error(c);
    CHECK(ap_mul(c, ids, a) == NULL && ap_last_status(c) == AP_ERR_DTYPE);
    ap_clear_error(c);
    CHECK(ap_add(c, a, NULL) == NULL && ap_last_status(c) == AP_ERR_INVALID_ARG);
    ap_clear_error(c);
    /* empty tensors broadcast too */
    ap_tensor *e = ap_tensor_new(c, AP_F32, 2, (int64_t[]){0, 3});
    ap_tensor_set_requires_grad(e, 1);
    ap_tensor_set_requires_grad(b, 1);
    ap_tensor *ye = ap_mul(c, e, b);
    CHECK(ye && ap_tensor_numel(ye) == 0 && ap_tensor_dim(ye, 1) == 3);
    ap_tensor *ge = ap_tensor_new(c, AP_F32, 2, (int64_t[]){0, 3});
    CHECK(ap_backward(c, ye, ge) == AP_OK);
    const float *gbv = ap_tensor_cdata(ap_tensor_grad(b));
    CHECK_MSG(gbv[0] == 0 && gbv[1] == 0 && gbv[2] == 0, "gradient of b broadcast over nothing is zero");
    ap_tensor_release(ge);
    ap_tensor_release(ye);
    ap_tensor_release(e);
    CHECK_OK(c);
    CHECK(ap_axpby(c, 1, a, 1, b) == NULL && ap_last_status(c) == AP_ERR_SHAPE);
    CHECK(strstr(ap_last_error(c), "axpby") != NULL);
    ap_clear_error(c);
    ap_tensor_release(a);
    ap_tensor_release(b);
    ap_tensor_release(b2);
    ap_tensor_release(ids);
}

/* ------------------------------------------------------------ axpby */
static ap_tensor *axpby_f(ap_ctx *c, void *u, int n, ap_tensor **in) {
    return ap_axpby(c, 0.75f, in[0], -1.5f, in[1]);
}

static void test_axpby(ap_ctx *c) {
    test_rng r = {15};
    int64_t s[3] = {3, 7, 5};
    ap_tensor *a = test_rand_leaf(c, &r, 3, s, -1, 1), *b = test_rand_leaf(c, &r, 3, s, -1, 1);
    ap_tensor *y = ap_axpby(c, 0.75f, a, -1.5f, b);
    double ref[105];
    for (int i = 0; i < 105; i++) ref[i] = 0.75 * F(a)[i] - 1.5 * F(b)[i];
    test_close("axpby forward", F(y), ref, 105, 1e-6, 1e-7);
    ap_tape_clear(c);
    ap_tensor *in[2] = {a, b};
    gradcheck(c, "axpby", axpby_f, NULL, 2, in, NULL);
    ap_tensor_release(y);
    ap_tensor_release(a);
    ap_tensor_release(b);
}

/* ------------------------------------------------------------ activations */
static double phi(double x) { return 0.5 * erfc(-x / sqrt(2.0)); }
static double sigm(double x) { return 1.0 / (1.0 + exp(-x)); }

static double act_ref(int k, double x, double lo, double hi) {
    switch (k) {
    case 0: return x * sigm(x);
    case 1: return x * phi(x);
    case 2: return x * sigm(1.702 * x);
    default: return x < lo ? lo : x > hi ? hi : x;
    }
}
static double act_dref(int k, double x, double lo, double hi) {
    switch (k) {
    case 0: return sigm(x) * (1 + x * (1 - sigm(x)));
    case 1: return phi(x) + x * exp(-0.5 * x * x) / sqrt(2 * M_PI);
    case 2: return sigm(1.702 * x) + 1.702 * x * sigm(1.702 * x) * (1 - sigm(1.702 * x));
    default: return (x >= lo && x <= hi) ? 1 : 0;
    }
}

static const char *const act_names[4] = {"silu", "gelu", "quick_gelu", "clamp"};
static const float CLO = -0.7f, CHI = 1.3f;

static ap_tensor *act_apply(ap_ctx *c, int k, ap_tensor *x) {
    switch (k) {
    case 0: return ap_silu(c, x);
    case 1: return ap_gelu(c, x);
    case 2: return ap_quick_gelu(c, x);
    default: return ap_clamp(c, x, CLO, CHI);
    }
}

static ap_tensor *act_f(ap_ctx *c, void *u, int n, ap_tensor **in) { return act_apply(c, *(int *)u, in[0]); }

static void test_activations(ap_ctx *c) {
    test_rng r = {16};
    char label[96];
    /* values: a dense sweep of [-12, 12], random values, the tails, special points */
    const int64_t n = 1083 * 37; /* above the threading threshold, odd */
    ap_tensor *x = ap_tensor_new(c, AP_F32, 2, (int64_t[]){n / 37, 37});
    float *xv = W(x);
    for (int64_t i = 0; i < 24000; i++) xv[i] = -12.0f + 24.0f * (float)i / 24000.0f;
    for (int64_t i = 24000; i < n; i++) xv[i] = (float)(6 * test_rng_normal(&r));
    const float special[] = {0.0f, -0.0f, 1e-30f, -1e-30f, 1e-6f, 87.5f, -87.5f, 88.9f, -88.9f, 100.0f, -100.0f,
                             1e4f, -1e4f, 3e38f, -3e38f, CLO, CHI};
    memcpy(xv, special, sizeof special);
    double *ref = malloc(sizeof(double) * (size_t)n);
    for (int k = 0; k < 4; k++) {
        ap_tensor *y = act_apply(c, k, x);
        CHECK_OK(c);
        for (int64_t i = 0; i < n; i++) ref[i] = act_ref(k, xv[i], CLO, CHI);
        snprintf(label, sizeof label, "%s forward", act_names[k]);
        /* relative accuracy everywhere it is representable (below ~1e-36 all
         * is zero); quick_gelu rounds 1.702x to f32 first, as PyTorch does,
         * which costs ~|1.702x| * 2^-24 of relative accuracy in the tail */
        test_close(label, F(y), ref, n, k == 2 ? 4e-6 : 1e-6, 1e-36);
        ap_tensor_release(y);
    }
    /* gelu's negative tail keeps relative accuracy (gelu(-9) ~ -1e-18) */
    ap_tensor *tail = ap_tensor_new(c, AP_F32, 1, (int64_t[]){600});
    for (int i = 0; i < 600; i++) W(tail)[i] = -9.0f + 6.0f * (float)i / 600.0f;
    ap_tensor *gt = ap_gelu(c, tail);
    for (int i = 0; i < 600; i++) ref[i] = act_ref(1, F(tail)[i], 0, 0);
    test_close("gelu negative tail, relative", F(gt), ref, 600, 1e-6, 0);
    ap_tensor_release(gt);
    ap_tensor_release(tail);
    /* NaN passes through */
    ap_tensor *nan1 = ap_tensor_from_data(c, AP_F32, 1, (int64_t[]){1}, (float[]){NAN});
    for (int k = 0; k < 4; k++) {
        ap_tensor *y = act_apply(c, k, nan1);
        CHECK_MSG(y && isnan(F(y)[0]), "%s(NaN) is NaN", act_names[k]);
        ap_tensor_release(y);
    }
    ap_tensor_release(nan1);

    /* backward against the analytic derivative (moderate values), twice to check accumulation */
    ap_tensor *xg = test_rand_leaf(c, &r, 3, (int64_t[]){7, 41, 139}, -9, 9); /* 39893 elements */
    const int64_t m = ap_tensor_numel(xg);
    for (int i = 0; i < 8; i++) W(xg)[i] = (float[]){0, CLO, CHI, -1e-3f, 20, -20, 1, -1}[i];
    ap_tensor *seed = test_rand(c, &r, 1, (int64_t[]){m}, -1, 1);
    double *dref = malloc(sizeof(double) * (size_t)m);
    for (int k = 0; k < 4; k++) {
        for (int pass = 0; pass < 2; pass++) {
            ap_tensor *y = act_apply(c, k, xg);
            CHECK(ap_backward(c, y, seed) == AP_OK);
            ap_tensor_release(y);
        }
        for (int64_t i = 0; i < m; i++) dref[i] = 2.0 * F(seed)[i] * act_dref(k, F(xg)[i], CLO, CHI);
        snprintf(label, sizeof label, "%s backward (accumulated twice)", act_names[k]);
        test_close(label, F(ap_tensor_grad(xg)), dref, m, 2e-5, 1e-6);
        ap_tensor_zero_grad(xg);
    }
    ap_tensor_release(seed);
    ap_tensor_release(xg);

    /* finite differences on a small odd shape (values kept off the clamp bounds) */
    ap_tensor *xs = test_rand_leaf(c, &r, 2, (int64_t[]){5, 9}, -4, 4);
    for (int i = 0; i < 45; i++)
        if (fabsf(W(xs)[i] - CLO) < 0.01f || fabsf(W(xs)[i] - CHI) < 0.01f) W(xs)[i] += 0.05f;
    for (int k = 0; k < 4; k++) {
        snprintf(label, sizeof label, "%s", act_names[k]);
        gradcheck(c, label, act_f, &k, 1, &xs, &(gc_opts){.max_elems = -1});
    }
    ap_tensor_release(xs);

    /* clamp errors */
    CHECK(ap_clamp(c, x, 1.0f, -1.0f) == NULL && ap_last_status(c) == AP_ERR_INVALID_ARG);
    CHECK(strstr(ap_last_error(c), "clamp") != NULL);
    ap_clear_error(c);
    CHECK(ap_clamp(c, x, NAN, 1.0f) == NULL && ap_last_status(c) == AP_ERR_INVALID_ARG);
    ap_clear_error(c);
    ap_tensor *inf = ap_clamp(c, x, -INFINITY, 0.0f);
    CHECK(inf != NULL);
    ap_tensor_release(inf);
    ap_tensor *bad = ap_tensor_zeros(c, AP_BF16, 1, (int64_t[]){3});
    CHECK(ap_silu(c, bad) == NULL && ap_last_status(c) == AP_ERR_DTYPE);
    CHECK(strstr(ap_last_error(c), "silu") != NULL);
    ap_clear_error(c);
    CHECK(ap_gelu(c, NULL) == NULL && ap_last_status(c) == AP_ERR_INVALID_ARG);
    ap_clear_error(c);
    ap_tensor_release(bad);
    free(ref);
    free(dref);
    ap_tensor_release(x);
}

/* ------------------------------------------------------------ geglu */
static ap_tensor *geglu_f(ap_ctx *c, void *u, int n, ap_tensor **in) { return ap_geglu(c, in[0]); }

static void test_geglu(ap_ctx *c) {
    test_rng r = {17};
    const int64_t shapes[2][3] = {{3, 5, 14}, {2, 77, 640}};
    for (int s = 0; s < 2; s++) {
        const int64_t *sh = shapes[s];
        ap_tensor *x = test_rand_leaf(c, &r, 3, sh, -4, 4);
        int64_t F2 = sh[2], Fh = F2 / 2, R = sh[0] * sh[1];
        int prev = ap_set_grad_enabled(c, 0);
        ap_tensor *y = ap_geglu(c, x);
        ap_set_grad_enabled(c, prev);
        CHECK(y && ap_tensor_dim(y, 2) == Fh && ap_tensor_dim(y, 1) == sh[1]);
        double *ref = malloc(sizeof(double) * (size_t)(R * Fh)), *dref = malloc(sizeof(double) * (size_t)(R * F2));
        for (int64_t i = 0; i < R; i++)
            for (int64_t j = 0; j < Fh; j++) {
                double h = F(x)[i * F2 + j], g = F(x)[i * F2 + Fh + j];
                ref[i * Fh + j] = h * act_ref(1, g, 0, 0);
            }
        test_close(s ? "geglu forward (large)" : "geglu forward", F(y), ref, R * Fh, 2e-6, 1e-30);
        /* backward vs analytic */
        ap_tensor *yy = ap_geglu(c, x);
        ap_tensor *seed = test_rand(c, &r, 1, (int64_t[]){R * Fh}, -1, 1);
        CHECK(ap_backward(c, yy, seed) == AP_OK);
        for (int64_t i = 0; i < R; i++)
            for (int64_t j = 0; j < Fh; j++) {
                double h = F(x)[i * F2 + j], g = F(x)[i * F2 + Fh + j], d = F(seed)[i * Fh + j];
                dref[i * F2 + j] = d * act_ref(1, g, 0, 0);
                dref[i * F2 + Fh + j] = d * h * act_dref(1, g, 0, 0);
            }
        test_close("geglu backward", F(ap_tensor_grad(x)), dref, R * F2, 2e-5, 1e-6);
        if (s == 0) gradcheck(c, "geglu", geglu_f, NULL, 1, &x, &(gc_opts){.max_elems = -1});
        free(ref);
        free(dref);
        ap_tensor_release(seed);
        ap_tensor_release(yy);
        ap_tensor_release(y);
        ap_tensor_release(x);
    }
    ap_tensor *odd = test_rand(c, &r, 2, (int64_t[]){3, 5}, -1, 1);
    CHECK(ap_geglu(c, odd) == NULL && ap_last_status(c) == AP_ERR_SHAPE);
    CHECK(strstr(ap_last_error(c), "geglu") && strstr(ap_last_error(c), "[3,5]"));
    ap_clear_error(c);
    ap_tensor_release(odd);
}

/* ------------------------------------------------------------ sum, mean */
static ap_tensor *sum_f(ap_ctx *c, void *u, int n, ap_tensor **in) { return ap_sum(c, in[0]); }
static ap_tensor *mean_f(ap_ctx *c, void *u, int n, ap_tensor **in) { return ap_mean(c, in[0]); }

static void test_reductions(ap_ctx *c) {
    test_rng r = {18};
    const int64_t sizes[3] = {1, 1003, 3000017};
    int threads = ap_get_num_threads(c);
    for (int s = 0; s < 3; s++) {
        ap_tensor *x = test_rand(c, &r, 1, (int64_t[]){sizes[s]}, -1, 3);
        double ref = 0;
        for (int64_t i = 0; i < sizes[s]; i++) ref += F(x)[i];
        ap_tensor *y = ap_sum(c, x), *mu = ap_mean(c, x);
        CHECK(ap_tensor_ndim(y) == 1 && ap_tensor_dim(y, 0) == 1);
        test_close("sum", F(y), &ref, 1, 1e-7, 0);
        double mref = ref / (double)sizes[s];
        test_close("mean", F(mu), &mref, 1, 1e-7, 0);
        ap_set_num_threads(c, 1);
        ap_tensor *y1 = ap_sum(c, x);
        ap_set_num_threads(c, threads);
        CHECK_MSG(same_bits(y, y1), "sum of %lld identical with 1 thread", (long long)sizes[s]);
        ap_tensor_release(y1);
        ap_tensor_release(y);
        ap_tensor_release(mu);
        ap_tensor_release(x);
    }
    ap_tensor *x = test_rand_leaf(c, &r, 3, (int64_t[]){2, 3, 5}, -1, 1);
    gradcheck(c, "sum", sum_f, NULL, 1, &x, &(gc_opts){.max_elems = -1});
    gradcheck(c, "mean", mean_f, NULL, 1, &x, &(gc_opts){.max_elems = -1});
    /* mean's gradient is exactly 1/n; a second backward adds */
    ap_tensor_zero_grad(x);
    for (int pass = 0; pass < 2; pass++) {
        ap_tensor *m = ap_mean(c, x);
        CHECK(ap_backward(c, m, NULL) == AP_OK);
        ap_tensor_release(m);
    }
    int ok = 1;
    for (int i = 0; i < 30; i++) ok &= F(ap_tensor_grad(x))[i] == 2.0f * (1.0f / 30.0f);
    CHECK_MSG(ok, "mean gradient is 1/n, accumulated");
    ap_tensor_zero_grad(x);
    ap_tensor *e = ap_tensor_new(c, AP_F32, 2, (int64_t[]){0, 3});
    ap_tensor *es = ap_sum(c, e);
    CHECK(es && F(es)[0] == 0.0f);
    CHECK(ap_mean(c, e) == NULL && ap_last_status(c) == AP_ERR_SHAPE);
    CHECK(strstr(ap_last_error(c), "mean") != NULL);
    ap_clear_error(c);
    ap_tensor_release(es);
    ap_tensor_release(e);
    ap_tensor_release(x);
}

/* ------------------------------------------------------------ concat, upsample */
static ap_tensor *concat_f(ap_ctx *c, void *u, int n, ap_tensor **in) { return ap_concat_channels(c, in[0], in[1]); }
static ap_tensor *up_f(ap_ctx *c, void *u, int n, ap_tensor **in) { return ap_upsample_nearest2x(c, in[0]); }

static void test_layout(ap_ctx *c) {
    test_rng r = {19};
    /* concat */
    const int64_t sa[2][4] = {{2, 3, 5, 4}, {2, 40, 41, 24}}, cb[2] = {7, 9};
    for (int s = 0; s < 2; s++) {
        int64_t bsh[4] = {sa[s][0], sa[s][1], sa[s][2], cb[s]};
        ap_tensor *a = test_rand_leaf(c, &r, 4, sa[s], -1, 1), *b = test_rand_leaf(c, &r, 4, bsh, -1, 1);
        ap_tensor *y = ap_concat_channels(c, a, b);
        int64_t Ca = sa[s][3], Cb = cb[s], R = ap_tensor_numel(a) / Ca;
        CHECK(ap_tensor_dim(y, 3) == Ca + Cb);
        int ok = 1;
        for (int64_t i = 0; i < R; i++) {
            for (int64_t j = 0; j < Ca; j++) ok &= F(y)[i * (Ca + Cb) + j] == F(a)[i * Ca + j];
            for (int64_t j = 0; j < Cb; j++) ok &= F(y)[i * (Ca + Cb) + Ca + j] == F(b)[i * Cb + j];
        }
        CHECK_MSG(ok, "concat forward copies a then b");
        ap_tape_clear(c);
        ap_tensor *in[2] = {a, b};
        if (s == 0) {
            gradcheck(c, "concat_channels", concat_f, NULL, 2, in, NULL);
            ap_tensor_set_requires_grad(a, 0);
            gradcheck(c, "concat_channels, a frozen", concat_f, NULL, 2, in, NULL);
        }
        ap_tensor_release(y);
        ap_tensor_release(a);
        ap_tensor_release(b);
    }
    ap_tensor *a = test_rand(c, &r, 3, (int64_t[]){2, 3, 4}, -1, 1), *b = test_rand(c, &r, 3, (int64_t[]){2, 4, 4}, -1, 1);
    CHECK(ap_concat_channels(c, a, b) == NULL && ap_last_status(c) == AP_ERR_SHAPE);
    CHECK(strstr(ap_last_error(c), "concat_channels") != NULL);
    ap_clear_error(c);
    ap_tensor_release(a);
    ap_tensor_release(b);

    /* upsample */
    const int64_t us[2][4] = {{2, 3, 5, 3}, {2, 17, 19, 64}};
    for (int s = 0; s < 2; s++) {
        const int64_t *sh = us[s];
        ap_tensor *x = test_rand_leaf(c, &r, 4, sh, -1, 1);
        ap_tensor *y = ap_upsample_nearest2x(c, x);
        CHECK(ap_tensor_dim(y, 1) == 2 * sh[1] && ap_tensor_dim(y, 2) == 2 * sh[2]);
        int ok = 1;
        for (int64_t n = 0; n < sh[0]; n++)
            for (int64_t h = 0; h < 2 * sh[1]; h++)
                for (int64_t w = 0; w < 2 * sh[2]; w++)
                    for (int64_t ch = 0; ch < sh[3]; ch++)
                        ok &= F(y)[((n * 2 * sh[1] + h) * 2 * sh[2] + w) * sh[3] + ch] ==
                              F(x)[((n * sh[1] + h / 2) * sh[2] + w / 2) * sh[3] + ch];
        CHECK_MSG(ok, "upsample forward: y[h][w] = x[h/2][w/2]");
        /* backward: sum of the 2x2 block */
        ap_tensor *seed = test_rand(c, &r, 1, (int64_t[]){ap_tensor_numel(y)}, -1, 1);
        CHECK(ap_backward(c, y, seed) == AP_OK);
        int64_t nx = ap_tensor_numel(x);
        double *ref = calloc((size_t)nx, sizeof(double));
        for (int64_t n = 0; n < sh[0]; n++)
            for (int64_t h = 0; h < 2 * sh[1]; h++)
                for (int64_t w = 0; w < 2 * sh[2]; w++)
                    for (int64_t ch = 0; ch < sh[3]; ch++)
                        ref[((n * sh[1] + h / 2) * sh[2] + w / 2) * sh[3] + ch] +=
                            F(seed)[((n * 2 * sh[1] + h) * 2 * sh[2] + w) * sh[3] + ch];
        test_close("upsample backward", F(ap_tensor_grad(x)), ref, nx, 1e-6, 1e-6);
        if (s == 0) gradcheck(c, "upsample_nearest2x", up_f, NULL, 1, &x, &(gc_opts){.max_elems = -1});
        free(ref);
        ap_tensor_release(seed);
        ap_tensor_release(y);
        ap_tensor_release(x);
    }
    ap_tensor *x3 = test_rand(c, &r, 3, (int64_t[]){2, 3, 4}, -1, 1);
    CHECK(ap_upsample_nearest2x(c, x3) == NULL && ap_last_status(c) == AP_ERR_SHAPE);
    CHECK(strstr(ap_last_error(c), "upsample") != NULL);
    ap_clear_error(c);
    ap_tensor_release(x3);
}


/* ------------------------------------------------------------ ISA paths */
/* The AVX-512 and the x86-64-v3 copies of every kernel give the same bits
 * (forward and gradients), so results do not depend on the CPU's vector width. */
static ap_tensor *run_all(ap_ctx *c, ap_tensor *x, ap_tensor *b, ap_tensor *gx, ap_tensor *seed, ap_tensor **grads) {
    ap_tensor *outs[9] = {ap_silu(c, x), ap_gelu(c, x), ap_quick_gelu(c, x), ap_clamp(c, x, -0.5f, 0.5f),
                          ap_mul(c, x, b), ap_add(c, x, b), ap_geglu(c, gx), ap_upsample_nearest2x(c, x), NULL};
    /* one scalar from all outputs, so one backward reaches every op */
    ap_tensor *acc = NULL;
    for (int i = 0; i < 8; i++) {
        ap_tensor *m = ap_mul(c, outs[i], ap_tensor_ndim(outs[i]) == 4 && ap_tensor_dim(outs[i], 1) == ap_tensor_dim(x, 1)
                                              ? seed
                                              : outs[i]);
        ap_tensor *s = ap_sum(c, m);
        ap_tensor *na = acc ? ap_add(c, acc, s) : ap_tensor_retain(s);
        ap_tensor_release(acc);
        ap_tensor_release(m);
        ap_tensor_release(s);
        acc = na;
    }
    ap_tensor *flat = NULL;
    for (int i = 0; i < 8; i++) {
        ap_tensor *v = ap_reshape(c, outs[i], 1, (int64_t[]){-1});
        ap_tensor *nf = flat ? ap_concat_channels(c, flat, v) : ap_tensor_retain(v);
        ap_tensor_release(flat);
        ap_tensor_release(v);
        flat = nf;
    }
    CHECK(ap_backward(c, acc, NULL) == AP_OK);
    grads[0] = ap_copy(c, ap_tensor_grad(x));
    grads[1] = ap_copy(c, ap_tensor_grad(b));
    grads[2] = ap_copy(c, ap_tensor_grad(gx));
    ap_tensor_zero_grad(x);
    ap_tensor_zero_grad(b);
    ap_tensor_zero_grad(gx);
    ap_tensor *y = ap_detach(c, flat);
    for (int i = 0; i < 8; i++) ap_tensor_release(outs[i]);
    ap_tensor_release(acc);
    ap_tensor_release(flat);
    return y;
}

static void test_isa_paths(ap_ctx *c) {
    test_rng r = {10};
    ap_tensor *x = test_rand_leaf(c, &r, 4, (int64_t[]){2, 9, 11, 67}, -6, 6);
    ap_tensor *b = test_rand_leaf(c, &r, 4, (int64_t[]){2, 1, 1, 67}, -2, 2);
    ap_tensor *gx = test_rand_leaf(c, &r, 3, (int64_t[]){3, 7, 94}, -6, 6);
    ap_tensor *seed = test_rand(c, &r, 4, (int64_t[]){2, 9, 11, 67}, -1, 1);
    ap_tensor *g[2][3], *y[2];
    for (int base = 0; base < 2; base++) {
        ap_cpu_force_baseline(base);
        y[base] = run_all(c, x, b, gx, seed, g[base]);
    }
    ap_cpu_force_baseline(false);
    CHECK_MSG(same_bits(y[0], y[1]), "activations, broadcast ops, geglu, upsample: AVX-512 and AVX2 forward bits equal");
    for (int i = 0; i < 3; i++) CHECK_MSG(same_bits(g[0][i], g[1][i]), "AVX-512 and AVX2 gradients equal (input %d)", i);
    for (int k = 0; k < 2; k++) {
        ap_tensor_release(y[k]);
        for (int i = 0; i < 3; i++) ap_tensor_release(g[k][i]);
    }
    ap_tensor_release(x);
    ap_tensor_release(b);
    ap_tensor_release(gx);
    ap_tensor_release(seed);
}

int main(void) {
    ap_ctx *c = test_ctx();
    test_binary(c);
    test_binary_lowp_b(c);
    test_binary_determinism(c);
    test_binary_errors(c);
    test_axpby(c);
    test_activations(c);
    test_geglu(c);
    test_reductions(c);
    test_layout(c);
    test_isa_paths(c);
    CHECK(ap_tape_size(c) == 0);
    CHECK_MSG(ap_mem_in_use(c) == 0, "all tensors released (%zu bytes live)", ap_mem_in_use(c));
    ap_ctx_free(c);
    return test_summary("elementwise");
}
