/* Group norm and layer norm: forward against double references (odd shapes,
 * offset data), gradients of x, gamma and beta (every combination of what
 * requires one) through gradcheck and against an analytic double reference,
 * bf16/f16 affine parameters, determinism across runs and thread counts,
 * what the forward keeps for backward, and error cases. */
#include "backend/cpu/cpu_kernels.h"
#include "gradcheck.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const float *F(const ap_tensor *t) { return ap_tensor_cdata(t); }

static int same_bits(const ap_tensor *a, const ap_tensor *b) {
    return a && b && ap_tensor_numel(a) == ap_tensor_numel(b) &&
           memcmp(ap_tensor_cdata(a), ap_tensor_cdata(b), ap_tensor_nbytes(a)) == 0;
}

/* ------------------------------------------------------------ references
 * x viewed as [N, S, C] with G groups (layer norm: N = rows, S = 1, G = 1).
 * Fills y, and, given dy, dx, dgamma, dbeta (all double). */
typedef struct {
    int64_t N, S, C, G;
    double eps;
} nshape;

static double g_dx_scale; /* max of rstd * |dy * gamma|: the size of dx's terms */

static void norm_ref(const nshape *s, const float *x, const float *gamma, const float *beta, const float *dy,
                     double *y, double *dx, double *dg, double *db) {
    g_dx_scale = 0;
    int64_t cpg = s->C / s->G, M = s->S * cpg;
    if (dg)
        for (int64_t c = 0; c < s->C; c++) dg[c] = db[c] = 0;
    for (int64_t n = 0; n < s->N; n++)
        for (int64_t g = 0; g < s->G; g++) {
            double mu = 0, var = 0;
            for (int64_t p = 0; p < s->S; p++)
                for (int64_t c = g * cpg; c < (g + 1) * cpg; c++) mu += x[(n * s->S + p) * s->C + c];
            mu /= (double)M;
            for (int64_t p = 0; p < s->S; p++)
                for (int64_t c = g * cpg; c < (g + 1) * cpg; c++) {
                    double d = x[(n * s->S + p) * s->C + c] - mu;
                    var += d * d;
                }
            var /= (double)M;
            double r = 1.0 / sqrt(var + s->eps), m1 = 0, m2 = 0;
            for (int64_t p = 0; p < s->S; p++)
                for (int64_t c = g * cpg; c < (g + 1) * cpg; c++) {
                    int64_t i = (n * s->S + p) * s->C + c;
                    double xh = (x[i] - mu) * r, gm = gamma ? gamma[c] : 1.0;
                    y[i] = xh * gm + (beta ? beta[c] : 0.0);
                    if (dy) {
                        m1 += dy[i] * gm;
                        m2 += dy[i] * gm * xh;
                        if (dg) {
                            dg[c] += dy[i] * xh;
                            db[c] += dy[i];
                        }
                    }
                }
            if (!dy || !dx) continue;
            m1 /= (double)M;
            m2 /= (double)M;
            for (int64_t p = 0; p < s->S; p++)
                for (int64_t c = g * cpg; c < (g + 1) * cpg; c++) {
                    int64_t i = (n * s->S + p) * s->C + c;
                    double xh = (x[i] - mu) * r, gm = gamma ? gamma[c] : 1.0;
                    dx[i] = r * (dy[i] * gm - m1 - xh * m2);
                    g_dx_scale = fmax(g_dx_scale, r * fabs(dy[i] * gm));
                }
        }
}

typedef struct {
    int layer; /* 0: group norm, 1: layer norm */
    int groups;
    float eps;
} norm_u;

static ap_tensor *norm_apply(ap_ctx *c, const norm_u *u, ap_tensor *x, ap_tensor *g, ap_tensor *b) {
    return u->layer ? ap_layer_norm(c, x, g, b, u->eps) : ap_group_norm(c, x, u->groups, g, b, u->eps);
}
static ap_tensor *norm_f(ap_ctx *c, void *u, int n, ap_tensor **in) {
    return norm_apply(c, u, in[0], in[1], in[2]);
}

static nshape shape_of(const norm_u *u, int nd, const int64_t *sh) {
    nshape s = {sh[0], 1, sh[nd - 1], u->layer ? 1 : u->groups, u->eps};
    for (int i = 1; i < nd - 1; i++) s.S *= sh[i];
    if (u->layer) {
        s.N = 1;
        s.S = 1;
        for (int i = 0; i < nd - 1; i++) s.N *= sh[i];
    }
    return s;
}

typedef struct {
    int nd;
    int64_t sh[4];
    int groups;
    float offset, scale; /* x = offset + scale * uniform(-1, 1) */
} ncase;

static const ncase gn_cases[] = {
    {4, {3, 5, 7, 12}, 4, 0.0f, 1.0f},
    {4, {2, 3, 3, 6}, 6, 0.5f, 2.0f},       /* one channel per group */
    {4, {1, 1, 1, 8}, 2, 0.0f, 1.0f},       /* a single position */
    {3, {2, 9, 15}, 3, 0.0f, 1.0f},         /* [N, T, C] */
    {2, {4, 10}, 5, 0.0f, 1.0f},            /* no spatial dims */
    {4, {2, 5, 3, 9}, 1, 30.0f, 0.5f},      /* offset data, one group */
    {4, {2, 41, 37, 64}, 32, 2.0f, 1.0f},   /* threaded, several blocks, 2 channels per group */
    {4, {2, 24, 24, 320}, 32, -1.0f, 3.0f}, /* an SD-like channel count */
    {4, {2, 7, 5, 8}, 2, 1000.0f, 0.01f},   /* mean 1e5 x std: still f32-accurate */
};

static const ncase ln_cases[] = {
    {3, {3, 7, 13}, 1, 0.0f, 1.0f},
    {2, {5, 1}, 1, 0.0f, 1.0f},          /* C = 1: y = beta */
    {1, {17}, 1, 3.0f, 0.1f},            /* one row, offset */
    {3, {2, 77, 768}, 1, 0.0f, 2.0f},    /* CLIP-like, threaded */
    {3, {2, 257, 97}, 1, 100.0f, 1.0f},  /* many blocks, offset */
    {2, {6, 50}, 1, -1000.0f, 0.01f},    /* mean 1e5 x std */
};

static void run_forward_backward(ap_ctx *c, int layer, const ncase *k, test_rng *r, const char *label) {
    norm_u u = {layer, k->groups, 1e-5f};
    ap_tensor *x = test_rand_leaf(c, r, k->nd, k->sh, k->offset - k->scale, k->offset + k->scale);
    int64_t C = k->sh[k->nd - 1], n = ap_tensor_numel(x);
    ap_tensor *g = test_rand_leaf(c, r, 1, (int64_t[]){C}, 0.5f, 1.5f), *b = test_rand_leaf(c, r, 1, (int64_t[]){C}, -1, 1);
    nshape s = shape_of(&u, k->nd, k->sh);
    double *y = malloc(sizeof(double) * (size_t)n), *dx = malloc(sizeof(double) * (size_t)n);
    double *dg = malloc(sizeof(double) * (size_t)C), *db = malloc(sizeof(double) * (size_t)C);
    char buf[160];
    /* forward, with and without the affine parameters */
    for (int aff = 0; aff < 2; aff++) {
        int prev = ap_set_grad_enabled(c, 0);
        ap_tensor *out = norm_apply(c, &u, x, aff ? g : NULL, aff ? b : NULL);
        ap_set_grad_enabled(c, prev);
        CHECK_OK(c);
        if (!out) continue;
        norm_ref(&s, F(x), aff ? F(g) : NULL, aff ? F(b) : NULL, NULL, y, NULL, NULL, NULL);
        snprintf(buf, sizeof buf, "%s forward%s", label, aff ? "" : " (no affine)");
        /* no |mean|/std loss: offset data is as accurate as centred data */
        double tol = 1e-6;
        test_close(buf, F(out), y, n, tol, tol);
        ap_tensor_release(out);
    }
    /* backward against the reference, all three gradients; then again to accumulate */
    ap_tensor *seed = test_rand(c, r, 1, (int64_t[]){n}, -1, 1);
    norm_ref(&s, F(x), F(g), F(b), F(seed), y, dx, dg, db);
    for (int pass = 0; pass < 2; pass++) {
        ap_tensor *out = norm_apply(c, &u, x, g, b);
        CHECK(ap_backward(c, out, seed) == AP_OK);
        ap_tensor_release(out);
        if (pass == 1) break;
        double tol = 5e-6;
        snprintf(buf, sizeof buf, "%s dx", label);
        test_close(buf, F(ap_tensor_grad(x)), dx, n, tol, tol * g_dx_scale);
        double dgmax = 0, dbmax = 0;
        for (int64_t i = 0; i < C; i++) {
            dgmax = fmax(dgmax, fabs(dg[i]));
            dbmax = fmax(dbmax, fabs(db[i]));
        }
        snprintf(buf, sizeof buf, "%s dgamma", label);
        test_close(buf, F(ap_tensor_grad(g)), dg, C, tol, 1e-6 * dgmax);
        snprintf(buf, sizeof buf, "%s dbeta", label);
        test_close(buf, F(ap_tensor_grad(b)), db, C, 1e-5, 1e-6 * dbmax);
    }
    /* the second backward added the same amounts */
    for (int64_t i = 0; i < n; i++) dx[i] *= 2;
    for (int64_t i = 0; i < C; i++) {
        dg[i] *= 2;
        db[i] *= 2;
    }
    double tol = 1e-5;
    snprintf(buf, sizeof buf, "%s accumulated dx, dgamma, dbeta", label);
    double dgmax = 0, dbmax = 0;
    for (int64_t i = 0; i < C; i++) {
        dgmax = fmax(dgmax, fabs(dg[i]));
        dbmax = fmax(dbmax, fabs(db[i]));
    }
    test_close(buf, F(ap_tensor_grad(x)), dx, n, tol, tol * g_dx_scale);
    test_close(buf, F(ap_tensor_grad(g)), dg, C, tol, 1e-6 * dgmax);
    test_close(buf, F(ap_tensor_grad(b)), db, C, 1e-5, 1e-6 * dbmax);
    free(y);
    free(dx);
    free(dg);
    free(db);
    ap_tensor_release(seed);
    ap_tensor_release(x);
    ap_tensor_release(g);
    ap_tensor_release(b);
}

/* Finite differences for every subset of {x, gamma, beta} that requires a gradient. */
static void run_gradchecks(ap_ctx *c, int layer, int nd, const int64_t *sh, int groups, const char *label) {
    test_rng r = {(uint64_t)(100 + layer + nd)};
    norm_u u = {layer, groups, 1e-5f};
    int64_t C = sh[nd - 1];
    ap_tensor *in[3] = {test_rand_leaf(c, &r, nd, sh, -2, 2), test_rand_leaf(c, &r, 1, (int64_t[]){C}, 0.5f, 1.5f),
                        test_rand_leaf(c, &r, 1, (int64_t[]){C}, -1, 1)};
    char buf[160];
    for (int mask = 1; mask < 8; mask++) {
        for (int i = 0; i < 3; i++) ap_tensor_set_requires_grad(in[i], (mask >> i) & 1);
        snprintf(buf, sizeof buf, "%s grads {%s%s%s}", label, mask & 1 ? "x " : "", mask & 2 ? "gamma " : "",
                 mask & 4 ? "beta" : "");
        gradcheck(c, buf, norm_f, &u, 3, in, &(gc_opts){.max_elems = 48});
        for (int i = 0; i < 3; i++)
            if (!((mask >> i) & 1)) CHECK_MSG(ap_tensor_grad(in[i]) == NULL, "%s: frozen input %d has no grad", buf, i);
    }
    /* without gamma and beta */
    ap_tensor_set_requires_grad(in[0], 1);
    ap_tensor *only[3] = {in[0], NULL, NULL};
    snprintf(buf, sizeof buf, "%s no affine", label);
    gradcheck(c, buf, norm_f, &u, 3, only, &(gc_opts){.max_elems = 48});
    for (int i = 0; i < 3; i++) ap_tensor_release(in[i]);
}

/* gamma and beta stored in bf16 or f16: identical to f32 holding the rounded values. */
static void test_lowp_params(ap_ctx *c) {
    test_rng r = {21};
    ap_tensor *x = test_rand_leaf(c, &r, 4, (int64_t[]){2, 3, 5, 8}, -1, 1);
    ap_tensor *g = test_rand(c, &r, 1, (int64_t[]){8}, 0.5f, 1.5f), *b = test_rand(c, &r, 1, (int64_t[]){8}, -1, 1);
    ap_dtype dts[2] = {AP_BF16, AP_F16};
    for (int layer = 0; layer < 2; layer++)
        for (int d = 0; d < 2; d++) {
            norm_u u = {layer, 4, 1e-5f};
            ap_tensor *gl = ap_tensor_convert(c, g, dts[d]), *bl = ap_tensor_convert(c, b, dts[d]);
            ap_tensor *gf = ap_tensor_convert(c, gl, AP_F32), *bf = ap_tensor_convert(c, bl, AP_F32);
            ap_tensor *y1 = norm_apply(c, &u, x, gl, bl);
            ap_tensor *seed = test_rand(c, &r, 1, (int64_t[]){ap_tensor_numel(x)}, -1, 1);
            CHECK(ap_backward(c, y1, seed) == AP_OK);
            ap_tensor *gx1 = ap_copy(c, ap_tensor_grad(x));
            ap_tensor_zero_grad(x);
            ap_tensor *y2 = norm_apply(c, &u, x, gf, bf);
            CHECK(ap_backward(c, y2, seed) == AP_OK);
            CHECK_MSG(same_bits(y1, y2), "%s with %s gamma/beta: forward equals f32 of the rounded values",
                      layer ? "layer_norm" : "group_norm", ap_dtype_name(dts[d]));
            CHECK_MSG(same_bits(gx1, ap_tensor_grad(x)), "%s with %s gamma/beta: dx equals f32",
                      layer ? "layer_norm" : "group_norm", ap_dtype_name(dts[d]));
            ap_tensor_zero_grad(x);
            ap_tensor *ts[] = {gl, bl, gf, bf, y1, y2, seed, gx1};
            for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) ap_tensor_release(ts[i]);
        }
    ap_tensor_release(x);
    ap_tensor_release(g);
    ap_tensor_release(b);
}

/* Norms have no bf16 mode (DESIGN: norms and their statistics stay f32):
 * with the context in bf16 precision the results are the same bits. */
static void test_bf16_context(ap_ctx *c) {
    test_rng r = {25};
    ap_tensor *x = test_rand(c, &r, 4, (int64_t[]){2, 5, 5, 16}, -1, 1);
    ap_tensor *g = test_rand(c, &r, 1, (int64_t[]){16}, 0.5f, 1.5f);
    ap_tensor *y[2][2];
    for (int p = 0; p < 2; p++) {
        ap_set_precision(c, p ? AP_PREC_BF16 : AP_PREC_F32);
        y[p][0] = ap_group_norm(c, x, 4, g, NULL, 1e-5f);
        y[p][1] = ap_layer_norm(c, x, g, NULL, 1e-5f);
    }
    ap_set_precision(c, AP_PREC_F32);
    CHECK_MSG(same_bits(y[0][0], y[1][0]) && same_bits(y[0][1], y[1][1]), "norms ignore the bf16 precision setting");
    for (int p = 0; p < 2; p++) {
        ap_tensor_release(y[p][0]);
        ap_tensor_release(y[p][1]);
    }
    ap_tensor_release(x);
    ap_tensor_release(g);
}

/* Same bits across runs, with 1 or 2 threads, and with the AVX-512 or the
 * baseline kernels: forward and all gradients. */
static void test_determinism(ap_ctx *c) {
    test_rng r = {22};
    int threads = ap_get_num_threads(c);
    for (int layer = 0; layer < 2; layer++) {
        int64_t sh[4] = {2, 33, 29, 96};
        norm_u u = {layer, 8, 1e-6f};
        ap_tensor *in[3] = {test_rand_leaf(c, &r, 4, sh, -1, 2), test_rand_leaf(c, &r, 1, (int64_t[]){96}, 0.5f, 1.5f),
                            test_rand_leaf(c, &r, 1, (int64_t[]){96}, -1, 1)};
        ap_tensor *seed = test_rand(c, &r, 4, sh, -1, 1);
        ap_tensor *res[4][4];
        for (int run = 0; run < 4; run++) {
            ap_set_num_threads(c, run == 2 ? 1 : 2);
            ap_cpu_force_baseline(run == 3);
            for (int i = 0; i < 3; i++) ap_tensor_zero_grad(in[i]);
            ap_tensor *y = norm_f(c, &u, 3, in);
            res[run][0] = ap_copy(c, y);
            CHECK(ap_backward(c, y, seed) == AP_OK);
            for (int i = 0; i < 3; i++) res[run][i + 1] = ap_copy(c, ap_tensor_grad(in[i]));
            ap_tensor_release(y);
        }
        ap_cpu_force_baseline(false);
        for (int k = 0; k < 4; k++) {
            CHECK_MSG(same_bits(res[0][k], res[1][k]), "%s output %d identical across runs", layer ? "layer_norm" : "group_norm", k);
            CHECK_MSG(same_bits(res[0][k], res[2][k]), "%s output %d identical with 1 and 2 threads",
                      layer ? "layer_norm" : "group_norm", k);
            CHECK_MSG(same_bits(res[0][k], res[3][k]), "%s output %d identical with AVX-512 and AVX2 kernels",
                      layer ? "layer_norm" : "group_norm", k);
            for (int run = 0; run < 4; run++) ap_tensor_release(res[run][k]);
        }
        for (int i = 0; i < 3; i++) ap_tensor_release(in[i]);
        ap_tensor_release(seed);
    }
    ap_set_num_threads(c, threads);
}

/* The forward keeps x, mean and rstd, not normalised activations: live memory
 * after a recorded group norm is the output plus x's statistics only. And a
 * group norm whose inputs are all frozen keeps nothing. */
static void test_saved_memory(ap_ctx *c) {
    test_rng r = {23};
    int64_t sh[4] = {2, 16, 16, 64};
    ap_tensor *x = test_rand_leaf(c, &r, 4, sh, -1, 1);
    ap_tensor *g = test_rand(c, &r, 1, (int64_t[]){64}, 0.5f, 1.5f), *b = test_rand(c, &r, 1, (int64_t[]){64}, -1, 1);
    size_t before = ap_mem_in_use(c);
    ap_tensor *y = ap_group_norm(c, x, 32, g, b, 1e-5f);
    size_t grown = ap_mem_in_use(c) - before, ybytes = ap_tensor_nbytes(y);
    CHECK_MSG(grown < ybytes + 4096, "recorded group norm holds %zu bytes beyond x (output %zu)", grown, ybytes);
    ap_tape_clear(c);
    ap_tensor_release(y);
    ap_tensor_set_requires_grad(x, 0);
    before = ap_mem_in_use(c);
    y = ap_group_norm(c, x, 32, g, b, 1e-5f);
    CHECK(ap_tape_size(c) == 0);
    CHECK_MSG(ap_mem_in_use(c) - before < ybytes + 4096, "frozen group norm keeps only its output");
    ap_tensor_release(y);
    ap_tensor_release(x);
    ap_tensor_release(g);
    ap_tensor_release(b);
}

static void test_errors(ap_ctx *c) {
    test_rng r = {24};
    ap_tensor *x = test_rand(c, &r, 4, (int64_t[]){2, 3, 3, 12}, -1, 1);
    ap_tensor *g12 = test_rand(c, &r, 1, (int64_t[]){12}, 0, 1), *g11 = test_rand(c, &r, 1, (int64_t[]){11}, 0, 1);
    ap_tensor *g2d = test_rand(c, &r, 2, (int64_t[]){1, 12}, 0, 1), *gi = ap_tensor_zeros(c, AP_I32, 1, (int64_t[]){12});
    ap_tensor *x1 = test_rand(c, &r, 1, (int64_t[]){12}, -1, 1), *e = ap_tensor_new(c, AP_F32, 2, (int64_t[]){0, 12});
    const char *msg;
    CHECK(ap_group_norm(c, x, 5, g12, NULL, 1e-5f) == NULL && ap_last_status(c) == AP_ERR_SHAPE);
    msg = ap_last_error(c);
    CHECK_MSG(strstr(msg, "group_norm") && strstr(msg, "5 groups") && strstr(msg, "12"), "%s", msg);
    CHECK(ap_group_norm(c, x, 4, g12, NULL, 1e-5f) == NULL); /* sticky */
    ap_clear_error(c);
    CHECK(ap_group_norm(c, x, 0, NULL, NULL, 1e-5f) == NULL && ap_last_status(c) == AP_ERR_SHAPE);
    ap_clear_error(c);
    CHECK(ap_group_norm(c, x, 4, g11, NULL, 1e-5f) == NULL && ap_last_status(c) == AP_ERR_SHAPE);
    CHECK_MSG(strstr(ap_last_error(c), "gamma") && strstr(ap_last_error(c), "[11]"), "%s", ap_last_error(c));
    ap_clear_error(c);
    CHECK(ap_group_norm(c, x, 4, NULL, g2d, 1e-5f) == NULL && ap_last_status(c) == AP_ERR_SHAPE);
    CHECK(strstr(ap_last_error(c), "beta") != NULL);
    ap_clear_error(c);
    CHECK(ap_group_norm(c, x, 4, gi, NULL, 1e-5f) == NULL && ap_last_status(c) == AP_ERR_DTYPE);
    ap_clear_error(c);
    CHECK(ap_group_norm(c, x1, 4, NULL, NULL, 1e-5f) == NULL && ap_last_status(c) == AP_ERR_SHAPE);
    ap_clear_error(c);
    CHECK(ap_group_norm(c, e, 4, NULL, NULL, 1e-5f) == NULL && ap_last_status(c) == AP_ERR_SHAPE);
    ap_clear_error(c);
    CHECK(ap_group_norm(c, x, 4, NULL, NULL, -1.0f) == NULL && ap_last_status(c) == AP_ERR_INVALID_ARG);
    ap_clear_error(c);
    CHECK(ap_group_norm(c, x, 4, NULL, NULL, NAN) == NULL && ap_last_status(c) == AP_ERR_INVALID_ARG);
    ap_clear_error(c);
    CHECK(ap_group_norm(c, gi, 4, NULL, NULL, 1e-5f) == NULL && ap_last_status(c) == AP_ERR_DTYPE);
    ap_clear_error(c);
    CHECK(ap_group_norm(c, NULL, 4, NULL, NULL, 1e-5f) == NULL && ap_last_status(c) == AP_ERR_INVALID_ARG);
    ap_clear_error(c);
    CHECK(ap_layer_norm(c, x, g11, NULL, 1e-5f) == NULL && ap_last_status(c) == AP_ERR_SHAPE);
    CHECK_MSG(strstr(ap_last_error(c), "layer_norm") && strstr(ap_last_error(c), "gamma"), "%s", ap_last_error(c));
    ap_clear_error(c);
    CHECK(ap_layer_norm(c, x, NULL, gi, 1e-5f) == NULL && ap_last_status(c) == AP_ERR_DTYPE);
    ap_clear_error(c);
    ap_tensor *z = ap_tensor_new(c, AP_F32, 2, (int64_t[]){3, 0});
    CHECK(ap_layer_norm(c, z, NULL, NULL, 1e-5f) == NULL && ap_last_status(c) == AP_ERR_SHAPE);
    ap_clear_error(c);
    ap_tensor *ts[] = {x, g12, g11, g2d, gi, x1, e, z};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) ap_tensor_release(ts[i]);
}

int main(void) {
    ap_ctx *c = test_ctx();
    test_rng r = {20};
    char label[96];
    for (size_t k = 0; k < sizeof gn_cases / sizeof *gn_cases; k++) {
        snprintf(label, sizeof label, "group_norm case %zu", k);
        run_forward_backward(c, 0, &gn_cases[k], &r, label);
    }
    for (size_t k = 0; k < sizeof ln_cases / sizeof *ln_cases; k++) {
        snprintf(label, sizeof label, "layer_norm case %zu", k);
        run_forward_backward(c, 1, &ln_cases[k], &r, label);
    }
    run_gradchecks(c, 0, 4, (int64_t[]){2, 3, 5, 6}, 3, "group_norm");
    run_gradchecks(c, 0, 3, (int64_t[]){3, 4, 4}, 2, "group_norm 3d");
    run_gradchecks(c, 1, 3, (int64_t[]){2, 3, 7}, 1, "layer_norm");
    test_lowp_params(c);
    test_bf16_context(c);
    test_determinism(c);
    test_saved_memory(c);
    test_errors(c);
    CHECK(ap_tape_size(c) == 0);
    CHECK_MSG(ap_mem_in_use(c) == 0, "all tensors released (%zu bytes live)", ap_mem_in_use(c));
    ap_ctx_free(c);
    return test_summary("norm");
}
