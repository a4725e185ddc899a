/* The tape, leaves and frozen tensors, no-grad scopes, and checkpointing. */
#include "core/internal.h"
#include "gradcheck.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* A test-local op built on the node API: y = sin(x), which saves its input. */
static void wave_backward(ap_ctx *c, ap_node *n) {
    float beta;
    ap_tensor *gx = ap_grad_acc(c, n, 0, &beta);
    if (!gx) return;
    const float *x = ap_f32(n->saved[0]), *gy = ap_f32(ap_node_gout(n, 0));
    float *g = ap_f32(gx);
    for (int64_t i = 0; i < gx->numel; i++) g[i] = (beta != 0.0f ? g[i] : 0.0f) + cosf(x[i]) * gy[i];
}

static ap_tensor *wave(ap_ctx *c, ap_tensor *x) {
    if (!ap_check_input(c, "wave", "x", x, AP_F32)) return NULL;
    ap_tensor *y = ap_tensor_like(c, x);
    if (!y) return NULL;
    for (int64_t i = 0; i < x->numel; i++) ap_f32(y)[i] = sinf(ap_f32(x)[i]);
    ap_node *n = ap_node_begin(c, "wave", wave_backward, 1, &x);
    ap_node_save(n, 0, x);
    ap_node_output(n, 0, y);
    return y;
}

/* A segment: y = -sin(sin(sin(1.5 x))), through a flat view and back
 * (exercises views, and ops that save their inputs as real layers do). */
static ap_status segment(ap_ctx *c, void *user, int n_in, ap_tensor *const *in, int n_out,
                         ap_tensor **out) {
    (void)user;
    (void)n_in;
    (void)n_out;
    ap_tensor *a = ap_scale(c, in[0], 1.5f);
    ap_tensor *b = ap_reshape(c, a, 1, (int64_t[]){-1});
    ap_tensor *e1 = wave(c, b), *e2 = wave(c, e1), *e3 = wave(c, e2);
    ap_tensor *d = ap_scale(c, e3, -1.0f);
    ap_tensor_release(e1);
    ap_tensor_release(e2);
    ap_tensor_release(e3);
    out[0] = ap_reshape(c, d, ap_tensor_ndim(in[0]), (int64_t[]){ap_tensor_dim(in[0], 0), ap_tensor_dim(in[0], 1)});
    ap_tensor_release(a);
    ap_tensor_release(b);
    ap_tensor_release(d);
    return out[0] ? AP_OK : ap_last_status(c);
}

static void test_basic(ap_ctx *c) {
    test_rng r = {1};
    ap_tensor *x = test_rand_leaf(c, &r, 2, (int64_t[]){3, 5}, -1, 1);
    ap_tensor *y = ap_scale(c, x, 3.0f);
    CHECK(ap_tensor_requires_grad(y));
    CHECK(ap_tape_size(c) == 1);
    ap_tensor *s = ap_reshape(c, y, 1, (int64_t[]){15});
    ap_tensor *g = ap_tensor_new(c, AP_F32, 1, (int64_t[]){15});
    for (int i = 0; i < 15; i++) ((float *)ap_tensor_data(g))[i] = (float)i;
    CHECK(ap_backward(c, s, g) == AP_OK);
    CHECK(ap_tape_size(c) == 0);
    const float *gx = ap_tensor_cdata(ap_tensor_grad(x));
    int ok = 1;
    for (int i = 0; i < 15; i++) ok &= gx[i] == 3.0f * i;
    CHECK(ok);
    /* second backward accumulates */
    y = (ap_tensor_release(y), ap_scale(c, x, 3.0f));
    ap_tensor_release(s);
    s = ap_reshape(c, y, 1, (int64_t[]){15});
    CHECK(ap_backward(c, s, g) == AP_OK);
    gx = ap_tensor_cdata(ap_tensor_grad(x));
    ok = 1;
    for (int i = 0; i < 15; i++) ok &= gx[i] == 6.0f * i;
    CHECK(ok);
    /* zero_grad: next backward overwrites */
    ap_tensor_zero_grad(x);
    CHECK(ap_tensor_grad(x) == NULL);
    /* stale outputs (tape cleared) read as constants */
    CHECK(!ap_tensor_requires_grad(s));
    CHECK(ap_backward(c, s, g) != AP_OK);
    ap_clear_error(c);
    /* no-grad scope records nothing */
    int prev = ap_set_grad_enabled(c, 0);
    ap_tensor *z = ap_scale(c, x, 2.0f);
    CHECK(!ap_tensor_requires_grad(z) && ap_tape_size(c) == 0);
    ap_set_grad_enabled(c, prev);
    /* frozen tensors record nothing */
    ap_tensor *f = test_rand(c, &r, 2, (int64_t[]){3, 5}, -1, 1);
    ap_tensor *fz = ap_scale(c, f, 2.0f);
    CHECK(!ap_tensor_requires_grad(fz) && ap_tape_size(c) == 0);
    /* errors: a non-leaf cannot be marked, a bf16 tensor cannot require grad */
    ap_tensor *w = ap_scale(c, x, 1.0f);
    CHECK(ap_tensor_set_requires_grad(w, 1) == AP_ERR_STATE);
    ap_clear_error(c);
    ap_tape_clear(c);
    ap_tensor *h = ap_tensor_zeros(c, AP_BF16, 1, (int64_t[]){4});
    CHECK(ap_tensor_set_requires_grad(h, 1) == AP_ERR_DTYPE);
    CHECK(strstr(ap_last_error(c), "bf16") != NULL);
    ap_clear_error(c);
    /* sticky errors: a NULL input fails, and later ops return NULL */
    CHECK(ap_scale(c, NULL, 1.0f) == NULL);
    CHECK(ap_last_status(c) == AP_ERR_INVALID_ARG);
    CHECK(ap_scale(c, x, 1.0f) == NULL);
    ap_clear_error(c);
    ap_tensor *tensors[] = {x, y, s, g, z, f, fz, w, h};
    for (size_t i = 0; i < sizeof tensors / sizeof *tensors; i++) ap_tensor_release(tensors[i]);
}

/* The aliasing rule: a node whose two inputs are the same tensor. The
 * checkpoint node with in = {x, x} exercises ap_grad_acc's temporaries. */
static ap_status sum2(ap_ctx *c, void *user, int n_in, ap_tensor *const *in, int n_out, ap_tensor **out) {
    (void)user;
    (void)n_in;
    (void)n_out;
    ap_tensor *a = ap_scale(c, in[0], 2.0f), *b = ap_scale(c, in[1], 5.0f);
    /* out = 2*in0 + 5*in1 via a reshape-free route: scale then a checkpointed identity */
    out[0] = ap_reshape(c, a, ap_tensor_ndim(a), (int64_t[]){ap_tensor_dim(a, 0)});
    out[1] = ap_reshape(c, b, ap_tensor_ndim(b), (int64_t[]){ap_tensor_dim(b, 0)});
    ap_tensor_release(a);
    ap_tensor_release(b);
    return AP_OK;
}

static void test_alias(ap_ctx *c) {
    test_rng r = {2};
    ap_tensor *x = test_rand_leaf(c, &r, 1, (int64_t[]){7}, -1, 1);
    ap_tensor *outs[2];
    ap_tensor *ins[2] = {x, x};
    CHECK(ap_checkpoint(c, sum2, NULL, 2, ins, 2, outs) == AP_OK);
    ap_tensor *g0 = ap_tensor_new(c, AP_F32, 1, (int64_t[]){7}), *g1 = ap_tensor_new(c, AP_F32, 1, (int64_t[]){7});
    for (int i = 0; i < 7; i++) {
        ((float *)ap_tensor_data(g0))[i] = 1.0f;
        ((float *)ap_tensor_data(g1))[i] = (float)i;
    }
    ap_tensor *gs[2] = {g0, g1};
    CHECK(ap_backward_multi(c, 2, outs, gs) == AP_OK);
    const float *gx = ap_tensor_cdata(ap_tensor_grad(x));
    int ok = 1;
    for (int i = 0; i < 7; i++) ok &= fabsf(gx[i] - (2.0f + 5.0f * i)) < 1e-6f;
    CHECK_MSG(ok, "d/dx (2x, 5x) . (1, i) = 2 + 5i");
    ap_tensor_release(outs[0]);
    ap_tensor_release(outs[1]);
    ap_tensor_release(g0);
    ap_tensor_release(g1);
    ap_tensor_release(x);
}

/* A chain of K segments, plain or each checkpointed: same gradients, and the
 * checkpointed chain holds less memory at its peak. */
static ap_tensor *chain(ap_ctx *c, ap_tensor *x, int K, int ckpt) {
    ap_tensor *h = ap_tensor_retain(x);
    for (int k = 0; k < K; k++) {
        ap_tensor *o = NULL;
        if (ckpt)
            ap_checkpoint(c, segment, NULL, 1, &h, 1, &o);
        else
            segment(c, NULL, 1, &h, 1, &o);
        ap_tensor_release(h);
        h = o;
    }
    return h;
}

static ap_tensor *chain_plain(ap_ctx *c, void *u, int n, ap_tensor **in) { return chain(c, in[0], 6, 0); }
static ap_tensor *chain_ckpt(ap_ctx *c, void *u, int n, ap_tensor **in) { return chain(c, in[0], 6, 1); }

static void test_checkpoint(ap_ctx *c) {
    test_rng r = {3};
    int64_t shape[2] = {64, 1024};
    ap_tensor *x = test_rand_leaf(c, &r, 2, shape, -0.9f, 0.9f);
    ap_tensor *gy = test_rand(c, &r, 2, shape, -1, 1);
    size_t peak[2];
    ap_tensor *grads[2];
    for (int mode = 0; mode < 2; mode++) {
        ap_tensor_zero_grad(x);
        ap_mem_reset_peak(c);
        size_t base = ap_mem_in_use(c);
        ap_tensor *y = chain(c, x, 8, mode);
        CHECK_OK(c);
        CHECK(ap_tape_size(c) == (mode ? 8u : 8u * 7u));
        CHECK(ap_backward(c, y, gy) == AP_OK);
        ap_tensor_release(y);
        peak[mode] = ap_mem_peak(c) - base;
        grads[mode] = ap_copy(c, ap_tensor_grad(x));
    }
    test_close_f("checkpointed chain gradient equals plain", ap_tensor_cdata(grads[1]),
                 ap_tensor_cdata(grads[0]), ap_tensor_numel(x), 0, 0);
    CHECK_MSG(peak[1] < peak[0], "peak with checkpointing %zu < without %zu", peak[1], peak[0]);
    printf("chain of 8 segments: peak %zu bytes plain, %zu checkpointed\n", peak[0], peak[1]);

    /* the harness agrees on both */
    ap_tensor *xs = test_rand_leaf(c, &r, 2, (int64_t[]){3, 4}, -1, 1);
    gradcheck(c, "chain plain", chain_plain, NULL, 1, &xs, NULL);
    gradcheck(c, "chain checkpointed", chain_ckpt, NULL, 1, &xs, NULL);

    /* a parameter reached only inside the function still gets its gradient */
    ap_tensor_release(grads[0]);
    ap_tensor_release(grads[1]);
    ap_tensor_release(x);
    ap_tensor_release(gy);
    ap_tensor_release(xs);
}


/* Realistic checkpointed segments, as in a ResBlock: h + s * silu(group_norm(h)).
 * Each segment saves several activations when recorded plainly (group norm's
 * input and statistics, silu's input, mul's factors); checkpointed, only the
 * segment inputs stay. Gradients of the input and of every segment's
 * parameters must be identical, and the peak lower. */
typedef struct {
    ap_tensor *gamma, *beta, *s; /* [C] each */
} res_params;

static ap_status res_segment(ap_ctx *c, void *user, int n_in, ap_tensor *const *in, int n_out, ap_tensor **out) {
    (void)n_in;
    (void)n_out;
    const res_params *p = user;
    ap_tensor *t = ap_group_norm(c, in[0], 4, p->gamma, p->beta, 1e-5f);
    ap_tensor *u = ap_silu(c, t);
    ap_tensor *v = ap_mul(c, u, p->s);
    out[0] = ap_add(c, in[0], v);
    ap_tensor_release(t);
    ap_tensor_release(u);
    ap_tensor_release(v);
    return out[0] ? AP_OK : ap_last_status(c);
}

static ap_tensor *res_chain(ap_ctx *c, ap_tensor *x, res_params *ps, int K, int ckpt) {
    ap_tensor *h = ap_tensor_retain(x);
    for (int k = 0; k < K; k++) {
        ap_tensor *o = NULL;
        if (ckpt)
            ap_checkpoint(c, res_segment, &ps[k], 1, &h, 1, &o);
        else
            res_segment(c, &ps[k], 1, &h, 1, &o);
        ap_tensor_release(h);
        h = o;
    }
    return h;
}

typedef struct {
    int ckpt;
    res_params ps[2]; /* must outlive the backward of a checkpointed chain */
} res_gc;

/* in: x, then gamma, beta, s of two segments (also in u->ps) */
static ap_tensor *res_chain_gc(ap_ctx *c, void *u, int n, ap_tensor **in) {
    res_gc *g = u;
    return res_chain(c, in[0], g->ps, 2, g->ckpt);
}

static void test_checkpoint_resblocks(ap_ctx *c) {
    enum { K = 12, C = 32 };
    test_rng r = {4};
    int64_t shape[4] = {2, 12, 12, C};
    ap_tensor *x = test_rand_leaf(c, &r, 4, shape, -1, 1);
    ap_tensor *gy = test_rand(c, &r, 4, shape, -1, 1);
    res_params ps[K];
    for (int k = 0; k < K; k++) {
        ps[k].gamma = test_rand_leaf(c, &r, 1, (int64_t[]){C}, 0.5f, 1.5f);
        ps[k].beta = test_rand_leaf(c, &r, 1, (int64_t[]){C}, -0.5f, 0.5f);
        ps[k].s = test_rand_leaf(c, &r, 1, (int64_t[]){C}, -1, 1);
    }
    size_t peak[2];
    ap_tensor *grads[2][1 + 3 * K];
    for (int mode = 0; mode < 2; mode++) {
        ap_tensor_zero_grad(x);
        for (int k = 0; k < K; k++) {
            ap_tensor_zero_grad(ps[k].gamma);
            ap_tensor_zero_grad(ps[k].beta);
            ap_tensor_zero_grad(ps[k].s);
        }
        ap_mem_reset_peak(c);
        size_t base = ap_mem_in_use(c);
        ap_tensor *y = res_chain(c, x, ps, K, mode);
        CHECK_OK(c);
        CHECK(ap_tape_size(c) == (mode ? (size_t)K : 4u * K));
        CHECK(ap_backward(c, y, gy) == AP_OK);
        ap_tensor_release(y);
        peak[mode] = ap_mem_peak(c) - base;
        grads[mode][0] = ap_copy(c, ap_tensor_grad(x));
        for (int k = 0; k < K; k++) {
            grads[mode][1 + 3 * k] = ap_copy(c, ap_tensor_grad(ps[k].gamma));
            grads[mode][2 + 3 * k] = ap_copy(c, ap_tensor_grad(ps[k].beta));
            grads[mode][3 + 3 * k] = ap_copy(c, ap_tensor_grad(ps[k].s));
        }
    }
    int same = 1;
    for (int i = 0; i < 1 + 3 * K; i++) {
        const ap_tensor *a = grads[0][i], *b = grads[1][i];
        same &= a && b && memcmp(ap_tensor_cdata(a), ap_tensor_cdata(b), ap_tensor_nbytes(a)) == 0;
    }
    CHECK_MSG(same, "checkpointed group_norm/silu/mul/add chain: gradients of x and all parameters identical");
    /* plain keeps three activations per segment (its output, and the group
     * norm and silu outputs that silu and mul save), checkpointed one (the
     * output), plus one segment's worth being recomputed during backward */
    CHECK_MSG(peak[1] * 3 < peak[0] * 2, "peak with checkpointing %zu < 2/3 of without %zu", peak[1], peak[0]);
    printf("chain of %d resblock segments: peak %zu bytes plain, %zu checkpointed\n", K, peak[0], peak[1]);
    for (int m = 0; m < 2; m++)
        for (int i = 0; i < 1 + 3 * K; i++) ap_tensor_release(grads[m][i]);

    /* finite differences through both, with every parameter checked */
    ap_tensor *in[7];
    in[0] = test_rand_leaf(c, &r, 4, (int64_t[]){2, 3, 3, 8}, -1, 1);
    for (int i = 1; i < 7; i++) in[i] = test_rand_leaf(c, &r, 1, (int64_t[]){8}, (i % 3) == 1 ? 0.5f : -1.0f, 1.0f);
    res_gc u = {0, {{in[1], in[2], in[3]}, {in[4], in[5], in[6]}}};
    gradcheck(c, "resblock chain plain", res_chain_gc, &u, 7, in, NULL);
    u.ckpt = 1;
    gradcheck(c, "resblock chain checkpointed", res_chain_gc, &u, 7, in, NULL);
    for (int i = 0; i < 7; i++) ap_tensor_release(in[i]);
    for (int k = 0; k < K; k++) {
        ap_tensor_release(ps[k].gamma);
        ap_tensor_release(ps[k].beta);
        ap_tensor_release(ps[k].s);
    }
    ap_tensor_release(x);
    ap_tensor_release(gy);
}

/* Seeds are borrowed, not copied: a later contribution to the same output
 * must not write into the caller's seed tensor. */
static void test_seed_not_modified(ap_ctx *c) {
    test_rng r = {9};
    ap_tensor *x = test_rand_leaf(c, &r, 1, (int64_t[]){6}, -1, 1);
    ap_tensor *y = ap_scale(c, x, 2.0f);
    ap_tensor *z = ap_scale(c, y, 3.0f); /* its backward adds into y's gradient */
    ap_tensor *gy = test_rand(c, &r, 1, (int64_t[]){6}, -1, 1), *gz = test_rand(c, &r, 1, (int64_t[]){6}, -1, 1);
    float keep[6];
    memcpy(keep, ap_tensor_cdata(gy), sizeof keep);
    ap_tensor *ys[2] = {y, z}, *gs[2] = {gy, gz};
    CHECK(ap_backward_multi(c, 2, ys, gs) == AP_OK);
    CHECK_MSG(memcmp(keep, ap_tensor_cdata(gy), sizeof keep) == 0, "the caller's seed is unchanged");
    double want[6];
    for (int i = 0; i < 6; i++)
        want[i] = 2.0 * ((double)keep[i] + 3.0 * ((const float *)ap_tensor_cdata(gz))[i]);
    test_close("d/dx of (2x, 6x) seeded (gy, gz)", ap_tensor_cdata(ap_tensor_grad(x)), want, 6, 1e-6, 1e-7);
    ap_tensor *ts[] = {x, y, z, gy, gz};
    for (int i = 0; i < 5; i++) ap_tensor_release(ts[i]);
}

/* Under AP_DEBUG_POISON new blocks hold NaNs, so a backward that reads a fresh
 * accumulator gives NaN: the scalar seed of ap_backward(c, y, NULL) once did
 * (0 * acc + 1). Every test of this file runs poisoned (set before the first
 * allocation), in the plain build too. */
static void test_poison(ap_ctx *c) {
    ap_tensor *t = ap_tensor_new(c, AP_F32, 1, (int64_t[]){5});
    CHECK(t && isnan(ap_f32(t)[0]) && isnan(ap_f32(t)[4]));
    ap_tensor_release(t);
    test_rng r = {11};
    ap_tensor *x = test_rand_leaf(c, &r, 1, (int64_t[]){7}, -1, 1);
    ap_tensor *y = ap_mean(c, x); /* a scalar: the seed is the NULL-gradient path */
    CHECK(ap_backward(c, y, NULL) == AP_OK);
    ap_tensor *g = ap_tensor_grad(x);
    for (int i = 0; g && i < 7; i++) CHECK_MSG(fabsf(ap_f32(g)[i] - 1.0f / 7) < 1e-7f, "d mean/dx = 1/7, got %g", ap_f32(g)[i]);
    CHECK(g != NULL);
    ap_tensor_release(y);
    ap_tape_clear(c);
    ap_tensor_release(x);
}

int main(void) {
    setenv("AP_DEBUG_POISON", "1", 1);
    ap_ctx *c = test_ctx();
    test_poison(c);
    test_basic(c);
    test_alias(c);
    test_seed_not_modified(c);
    test_checkpoint(c);
    test_checkpoint_resblocks(c);
    CHECK(ap_mem_in_use(c) == 0);
    ap_ctx_free(c);
    return test_summary("autograd");
}
