/* Rewards: brightness and saturation against double references, their
 * gradients by finite differences, mixtures (value and gradient = weighted sum
 * of the parts), losses and their gradients, the registry, and spec errors. */
#include "gradcheck.h"
#include "rewards/reward.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define F(t) ((float *)ap_tensor_data(t))

static const int64_t img_shapes[][4] = {{2, 3, 5, 3}, {1, 1, 1, 3}, {3, 4, 7, 3}};
#define NIMG (int)(sizeof img_shapes / sizeof img_shapes[0])

/* Double references, straight from the definitions in docs/rewards.md. */
static double ref_brightness(const float *x, int64_t P) {
    double s = 0;
    for (int64_t i = 0; i < 3 * P; i++) s += (x[i] + 1.0) / 2.0;
    return s / (double)(3 * P);
}
static double ref_saturation(const float *x, int64_t P) {
    double s = 0;
    for (int64_t p = 0; p < P; p++) {
        double u[3], m = 0, v = 0;
        for (int k = 0; k < 3; k++) m += (u[k] = (x[3 * p + k] + 1.0) / 2.0) / 3.0;
        for (int k = 0; k < 3; k++) v += (u[k] - m) * (u[k] - m) / 3.0;
        s += sqrt(v + 1e-4) - sqrt(1e-4);
    }
    return s / (double)P;
}

static ap_reward *make(ap_ctx *c, const char *name) {
    ap_reward *r = NULL;
    CHECK(ap_reward_create(c, name, NULL, &r) == AP_OK);
    CHECK_OK(c);
    return r;
}

static void test_values(ap_ctx *c) {
    test_rng rng = {21};
    const char *names[] = {"brightness", "saturation"};
    for (int k = 0; k < 2; k++) {
        ap_reward *r = make(c, names[k]);
        if (!r) continue;
        CHECK(!strcmp(r->name, names[k]));
        for (int s = 0; s < NIMG; s++) {
            ap_tensor *x = test_rand(c, &rng, 4, img_shapes[s], -1, 1);
            ap_tensor *y = r->forward(c, r, x, NULL);
            CHECK_OK(c);
            int64_t N = img_shapes[s][0], P = img_shapes[s][1] * img_shapes[s][2];
            CHECK(y && ap_tensor_ndim(y) == 1 && ap_tensor_dim(y, 0) == N);
            if (!y) continue;
            double ref[3];
            for (int64_t n = 0; n < N; n++)
                ref[n] = k ? ref_saturation(F(x) + n * 3 * P, P) : ref_brightness(F(x) + n * 3 * P, P);
            char label[64];
            snprintf(label, sizeof label, "%s shape %d", names[k], s);
            test_close(label, F(y), ref, N, 1e-5, 1e-6);
            ap_tensor_release(y);
            ap_tensor_release(x);
        }
        ap_reward_free(r);
    }
    /* known points: grey and black images have saturation 0, a pure primary sqrt(2/9+eps)-sqrt(eps);
     * brightness of all -1 is 0, of all +1 is 1 */
    ap_reward *b = make(c, "brightness"), *sat = make(c, "saturation");
    ap_tensor *x = ap_tensor_new(c, AP_F32, 4, (int64_t[]){3, 2, 2, 3});
    for (int i = 0; i < 12; i++) {
        F(x)[i] = -1.0f;                    /* black */
        F(x)[12 + i] = 1.0f;                /* white */
        F(x)[24 + i] = i % 3 ? -1.0f : 1.0f; /* red */
    }
    ap_tensor *yb = b->forward(c, b, x, NULL), *ys = sat->forward(c, sat, x, NULL);
    CHECK_OK(c);
    if (yb && ys) {
        CHECK(F(yb)[0] == 0.0f && F(yb)[1] == 1.0f && fabsf(F(yb)[2] - 1.0f / 3) < 1e-6f);
        CHECK(fabsf(F(ys)[0]) < 1e-7f && fabsf(F(ys)[1]) < 1e-7f);
        CHECK(fabsf(F(ys)[2] - (float)(sqrt(2.0 / 9 + 1e-4) - 0.01)) < 1e-6f);
    }
    ap_tensor_release(yb);
    ap_tensor_release(ys);
    ap_tensor_release(x);
    ap_reward_free(b);
    ap_reward_free(sat);
}

/* ------------------------------------------------------------ gradients */
typedef struct {
    ap_reward_mix *mix;
    const ap_reward_loss *loss; /* NULL: the rewards themselves */
} mix_u;

static ap_tensor *mix_f(ap_ctx *c, void *user, int n, ap_tensor **in) {
    (void)n;
    mix_u *u = user;
    ap_tensor *r = ap_reward_mix_forward(c, u->mix, in[0], NULL, NULL);
    if (!u->loss) return r;
    ap_tensor *l = ap_reward_loss_apply(c, u->loss, r);
    ap_tensor_release(r);
    return l;
}

static ap_reward_mix *parse(ap_ctx *c, const char *spec) {
    ap_reward_mix *m = NULL;
    CHECK_MSG(ap_reward_mix_parse(c, spec, NULL, &m) == AP_OK, "%s: %s", spec, ap_last_error(c));
    return m;
}

static void test_gradcheck(ap_ctx *c) {
    test_rng rng = {22};
    const char *specs[] = {"brightness", "saturation", "brightness=1,saturation=0.5", "saturation=-2"};
    gc_opts o = {.eps = 1e-3, .rtol = 1e-2, .atol = 1e-3, .max_elems = -1, .seed = 5};
    for (int k = 0; k < 4; k++)
        for (int s = 0; s < NIMG; s++) {
            ap_reward_mix *m = parse(c, specs[k]);
            if (!m) continue;
            /* channels kept apart by at least ~0.1 so the per-pixel std is well away from its floor */
            ap_tensor *x = test_rand_leaf(c, &rng, 4, img_shapes[s], -0.9f, 0.9f);
            char label[96];
            snprintf(label, sizeof label, "%s shape %d", specs[k], s);
            gradcheck(c, label, mix_f, &(mix_u){m, NULL}, 1, &x, &o);
            ap_tensor_release(x);
            ap_reward_mix_free(m);
        }
}

/* The gradient of the mixture equals w1*grad(brightness) + w2*grad(saturation). */
static void test_mix_gradient(ap_ctx *c) {
    test_rng rng = {23};
    ap_tensor *x = test_rand_leaf(c, &rng, 4, (int64_t[]){2, 5, 3, 3}, -1, 1);
    ap_tensor *seed = test_rand(c, &rng, 1, (int64_t[]){2}, -1, 1);
    const char *specs[] = {"brightness", "saturation", "brightness=1,saturation=0.5"};
    float *g[3];
    ap_tensor *parts[2] = {0}, *vals[3] = {0};
    for (int k = 0; k < 3; k++) {
        ap_reward_mix *m = parse(c, specs[k]);
        ap_tensor_zero_grad(x);
        vals[k] = ap_reward_mix_forward(c, m, x, NULL, k == 2 ? parts : NULL);
        CHECK_OK(c);
        CHECK(vals[k] && ap_backward(c, vals[k], seed) == AP_OK);
        g[k] = malloc(sizeof(float) * 90);
        memcpy(g[k], F(ap_tensor_grad(x)), sizeof(float) * 90);
        ap_reward_mix_free(m);
    }
    double ref[90], vref[2];
    for (int i = 0; i < 90; i++) ref[i] = (double)g[0][i] + 0.5 * (double)g[1][i];
    test_close("mix gradient = 1*brightness + 0.5*saturation", g[2], ref, 90, 1e-5, 1e-7);
    for (int n = 0; n < 2; n++) vref[n] = (double)F(vals[0])[n] + 0.5 * (double)F(vals[1])[n];
    test_close("mix value", F(vals[2]), vref, 2, 1e-6, 1e-7);
    /* parts hold each component's rewards */
    CHECK(parts[0] && parts[1]);
    if (parts[0] && parts[1]) {
        test_close_f("mix part 0", F(parts[0]), F(vals[0]), 2, 0, 0);
        test_close_f("mix part 1", F(parts[1]), F(vals[1]), 2, 0, 0);
    }
    for (int k = 0; k < 3; k++) {
        free(g[k]);
        ap_tensor_release(vals[k]);
    }
    ap_tensor_release(parts[0]);
    ap_tensor_release(parts[1]);
    ap_tensor_release(seed);
    ap_tensor_release(x);
}

/* ------------------------------------------------------------ losses */
static void test_losses(ap_ctx *c) {
    const char *specs[] = {"maximize", "minimize", "target:0.25", "target:-3"};
    const float rv[5] = {0.1f, 0.7f, -0.2f, 0.4f, 0.3f};
    for (int k = 0; k < 4; k++) {
        ap_reward_loss l;
        CHECK(ap_reward_loss_parse(c, specs[k], &l) == AP_OK);
        char buf[64];
        CHECK_MSG(!strcmp(ap_reward_loss_str(&l, buf, sizeof buf), specs[k]), "%s round-trips: %s", specs[k], buf);
        ap_tensor *r = ap_tensor_from_data(c, AP_F32, 1, (int64_t[]){5}, rv);
        ap_tensor_set_requires_grad(r, 1);
        ap_tensor *y = ap_reward_loss_apply(c, &l, r);
        CHECK_OK(c);
        CHECK(y && ap_tensor_numel(y) == 1);
        double v = 0, g[5];
        for (int i = 0; i < 5; i++) {
            double d = rv[i] - (double)l.target;
            v += k == 0 ? -rv[i] : k == 1 ? rv[i] : fabs(d);
            g[i] = (k == 0 ? -1.0 : k == 1 ? 1.0 : (d > 0) - (d < 0)) / 5.0;
        }
        v /= 5;
        char label[64];
        snprintf(label, sizeof label, "loss %s", specs[k]);
        if (y) test_close(label, F(y), &v, 1, 1e-6, 1e-7);
        CHECK(y && ap_backward(c, y, NULL) == AP_OK);
        test_close(label, F(ap_tensor_grad(r)), g, 5, 1e-6, 1e-7);
        ap_tensor_release(y);
        ap_tensor_release(r);
    }
    /* the whole reward -> loss chain by finite differences, and target's sign flip */
    test_rng rng = {24};
    ap_reward_loss lt;
    CHECK(ap_reward_loss_parse(c, "target:0.45", &lt) == AP_OK);
    ap_reward_mix *m = parse(c, "brightness=1,saturation=0.5");
    ap_tensor *x = test_rand_leaf(c, &rng, 4, (int64_t[]){3, 3, 2, 3}, -0.9f, 0.9f);
    gc_opts o = {.max_elems = -1, .seed = 6};
    gradcheck(c, "target:0.45 of brightness=1,saturation=0.5", mix_f, &(mix_u){m, &lt}, 1, &x, &o);
    ap_reward_loss lx = {AP_LOSS_MAXIMIZE, 0};
    gradcheck(c, "maximize of brightness=1,saturation=0.5", mix_f, &(mix_u){m, &lx}, 1, &x, &o);
    ap_tensor_release(x);
    ap_reward_mix_free(m);
}

/* ------------------------------------------------------------ registry and specs */
static ap_tensor *bad_forward(ap_ctx *c, ap_reward *self, ap_tensor *x, const char *const *prompts) {
    (void)self;
    (void)prompts;
    return ap_mean(c, x); /* [1], not [N] */
}
static ap_status create_bad(ap_ctx *c, const ap_reward_opts *opts, ap_reward **out) {
    (void)c;
    (void)opts;
    static ap_reward r = {.name = "test_bad_shape", .forward = bad_forward};
    *out = &r;
    return AP_OK;
}

static void check_err(ap_ctx *c, ap_status got, ap_status want, const char *w1, const char *w2) {
    const char *m = ap_last_error(c);
    CHECK_MSG(got == want && ap_last_status(c) == want && strstr(m, w1) && (!w2 || strstr(m, w2)),
              "expected status %d naming '%s' and '%s', got %d: '%s'", want, w1, w2 ? w2 : "", got, m);
    ap_clear_error(c);
}

static void test_specs(ap_ctx *c) {
    ap_reward_mix *m = parse(c, " brightness = 2 , saturation=0.5 ");
    char buf[128];
    if (m) {
        CHECK(m->n == 2 && m->weights[0] == 2.0f && m->weights[1] == 0.5f);
        CHECK_MSG(!strcmp(ap_reward_mix_str(m, buf, sizeof buf), "brightness=2,saturation=0.5"), "%s", buf);
    }
    ap_reward_mix_free(m);
    m = parse(c, "saturation");
    CHECK(m && m->n == 1 && m->weights[0] == 1.0f);
    ap_reward_mix_free(m);
    m = parse(c, "saturation=-1.5e-1,brightness=0");
    CHECK(m && m->n == 2 && m->weights[0] == -0.15f && m->weights[1] == 0.0f);
    ap_reward_mix_free(m);

    struct {
        const char *spec, *w1, *w2;
        ap_status st;
    } bad[] = {
        {"", "empty", NULL, AP_ERR_INVALID_ARG},
        {"   ", "empty", NULL, AP_ERR_INVALID_ARG},
        {"foo", "'foo'", "brightness", AP_ERR_NOT_FOUND},
        {"brightness=1,aesthetik=2", "'aesthetik'", "saturation", AP_ERR_NOT_FOUND},
        {"brightness=abc", "'abc'", "brightness", AP_ERR_INVALID_ARG},
        {"brightness=", "bad weight", "brightness", AP_ERR_INVALID_ARG},
        {"brightness=nan", "'nan'", NULL, AP_ERR_INVALID_ARG},
        {"brightness=inf", "'inf'", NULL, AP_ERR_INVALID_ARG},
        {"brightness=1e999", "'1e999'", NULL, AP_ERR_INVALID_ARG},
        {"brightness=0x10", "'0x10'", NULL, AP_ERR_INVALID_ARG},
        {"saturation=1=2", "'1=2'", "saturation", AP_ERR_INVALID_ARG},
        {"brightness,", "item 2", "no reward name", AP_ERR_INVALID_ARG},
        {"=1", "item 1", NULL, AP_ERR_INVALID_ARG},
        {"brightness,saturation,brightness=3", "'brightness' appears twice", NULL, AP_ERR_INVALID_ARG},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        m = (ap_reward_mix *)1;
        ap_status st = ap_reward_mix_parse(c, bad[i].spec, NULL, &m);
        CHECK_MSG(m == NULL, "spec '%s' gives no mixture", bad[i].spec);
        check_err(c, st, bad[i].st, bad[i].w1, bad[i].w2);
    }
    CHECK(ap_reward_mix_parse(c, NULL, NULL, &m) == AP_ERR_INVALID_ARG);
    ap_clear_error(c);

    ap_reward_loss l;
    const char *bad_loss[] = {"max", "target:", "target:x", "target=10", "target:1e999", "Maximize", ""};
    for (size_t i = 0; i < sizeof bad_loss / sizeof bad_loss[0]; i++) {
        ap_status st = ap_reward_loss_parse(c, bad_loss[i], &l);
        CHECK_MSG(st == AP_ERR_INVALID_ARG && strstr(ap_last_error(c), "loss") &&
                      strstr(ap_last_error(c), bad_loss[i]),
                  "loss '%s': %s", bad_loss[i], ap_last_error(c));
        ap_clear_error(c);
    }
    CHECK(ap_reward_loss_parse(c, "target:10", &l) == AP_OK && l.kind == AP_LOSS_TARGET && l.target == 10.0f);
    CHECK(ap_reward_loss_parse(c, "minimize", &l) == AP_OK && l.kind == AP_LOSS_MINIMIZE);
    CHECK(ap_reward_loss_parse(c, "maximize", &l) == AP_OK && l.kind == AP_LOSS_MAXIMIZE);
}

static void test_registry_and_inputs(ap_ctx *c) {
    int n0 = ap_reward_count();
    CHECK(n0 >= 2 && !strcmp(ap_reward_name(0), "brightness") && !strcmp(ap_reward_name(1), "saturation"));
    CHECK(ap_reward_name(-1) == NULL && ap_reward_name(n0) == NULL);
    CHECK(ap_reward_register(c, "test_bad_shape", create_bad) == AP_OK);
    CHECK(ap_reward_count() == n0 + 1 && !strcmp(ap_reward_name(n0), "test_bad_shape"));
    check_err(c, ap_reward_register(c, "brightness", create_bad), AP_ERR_INVALID_ARG, "already registered",
              "brightness");
    check_err(c, ap_reward_register(c, "bad name", create_bad), AP_ERR_INVALID_ARG, "bad name", NULL);
    check_err(c, ap_reward_register(c, "x", NULL), AP_ERR_INVALID_ARG, "create", NULL);
    ap_reward *r = (ap_reward *)1;
    check_err(c, ap_reward_create(c, "nope", NULL, &r), AP_ERR_NOT_FOUND, "'nope'", "test_bad_shape");
    CHECK(r == NULL);

    /* a registered reward returning the wrong shape is caught by the mixture */
    test_rng rng = {25};
    ap_tensor *x = test_rand(c, &rng, 4, (int64_t[]){2, 2, 2, 3}, -1, 1);
    ap_reward_mix *m = parse(c, "brightness,test_bad_shape=2");
    ap_tensor *parts[2] = {(ap_tensor *)1, (ap_tensor *)1};
    ap_tensor *y = ap_reward_mix_forward(c, m, x, NULL, parts);
    CHECK(y == NULL && parts[0] == NULL && parts[1] == NULL);
    check_err(c, y ? AP_OK : ap_last_status(c), AP_ERR_SHAPE, "test_bad_shape", "[1]");
    ap_reward_mix_free(m);

    /* bad images: wrong channels, wrong rank, dtype, NULL */
    m = parse(c, "brightness,saturation");
    ap_tensor *x4 = ap_tensor_zeros(c, AP_F32, 4, (int64_t[]){2, 4, 4, 4});
    ap_tensor *x3 = ap_tensor_zeros(c, AP_F32, 3, (int64_t[]){4, 4, 3});
    ap_tensor *xb = ap_tensor_zeros(c, AP_BF16, 4, (int64_t[]){1, 2, 2, 3});
    CHECK(ap_reward_mix_forward(c, m, x4, NULL, NULL) == NULL);
    check_err(c, ap_last_status(c), AP_ERR_SHAPE, "[2,4,4,4]", "[N,H,W,3]");
    CHECK(ap_reward_mix_forward(c, m, x3, NULL, NULL) == NULL);
    check_err(c, ap_last_status(c), AP_ERR_SHAPE, "[4,4,3]", NULL);
    CHECK(ap_reward_mix_forward(c, m, xb, NULL, NULL) == NULL);
    check_err(c, ap_last_status(c), AP_ERR_DTYPE, "images", "bf16");
    CHECK(ap_reward_mix_forward(c, m, NULL, NULL, NULL) == NULL);
    check_err(c, ap_last_status(c), AP_ERR_INVALID_ARG, "images", NULL);
    ap_reward *sat = make(c, "saturation");
    CHECK(sat->forward(c, sat, x4, NULL) == NULL);
    check_err(c, ap_last_status(c), AP_ERR_SHAPE, "saturation", "[2,4,4,4]");
    ap_reward_free(sat);
    /* loss input checks */
    ap_reward_loss l = {AP_LOSS_MAXIMIZE, 0};
    CHECK(ap_reward_loss_apply(c, &l, x) == NULL);
    check_err(c, ap_last_status(c), AP_ERR_SHAPE, "loss", "[2,2,2,3]");
    CHECK(ap_reward_loss_apply(c, &l, NULL) == NULL);
    check_err(c, ap_last_status(c), AP_ERR_INVALID_ARG, "loss", "rewards");
    /* sticky errors: nothing runs after a failure */
    CHECK(ap_reward_mix_forward(c, m, x4, NULL, NULL) == NULL);
    CHECK(ap_reward_mix_forward(c, m, x, NULL, NULL) == NULL);
    check_err(c, ap_last_status(c), AP_ERR_SHAPE, "[2,4,4,4]", NULL);
    ap_reward_mix_free(m);
    ap_tensor_release(x4);
    ap_tensor_release(x3);
    ap_tensor_release(xb);
    ap_tensor_release(x);
}

int main(void) {
    ap_ctx *c = test_ctx();
    test_values(c);
    test_gradcheck(c);
    test_mix_gradient(c);
    test_losses(c);
    test_specs(c);
    test_registry_and_inputs(c);
    CHECK(ap_tape_size(c) == 0);
    CHECK_MSG(ap_mem_in_use(c) == 0, "all tensors released (%zu bytes live)", ap_mem_in_use(c));
    ap_ctx_free(c);
    return test_summary("rewards");
}
