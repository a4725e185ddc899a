/* AdamW against a double-precision transcription of torch.optim.AdamW's
 * update, clip_grad_norm_ against a double norm, and save / load resuming bit
 * for bit. */
#include "core/internal.h"
#include "test.h"
#include "train/optim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NT 3
static const int64_t SHAPES[NT][2] = {{3, 5}, {7, 1}, {2, 11}};

/* Gives leaf p the gradient g (through a copy op's backward). */
static void set_grad(ap_ctx *c, ap_tensor *p, const float *g) {
    ap_tensor_zero_grad(p);
    ap_tensor *y = ap_copy(c, p);
    ap_tensor *gy = ap_tensor_from_data(c, AP_F32, ap_tensor_ndim(p), (int64_t[]){ap_tensor_dim(p, 0), ap_tensor_dim(p, 1)}, g);
    CHECK(ap_backward(c, y, gy) == AP_OK);
    ap_tensor_release(y);
    ap_tensor_release(gy);
}

typedef struct {
    double *p, *m, *v;
    int64_t n;
} ref_param;

/* torch.optim.AdamW, single tensor, in double; g already clipped */
static void ref_step(ref_param *r, const float *g, const ap_adamw_config *k, int64_t t) {
    double bc1 = 1 - pow(k->beta1, (double)t), bc2 = 1 - pow(k->beta2, (double)t);
    for (int64_t e = 0; e < r->n; e++) {
        r->p[e] *= 1 - k->lr * k->weight_decay;
        r->m[e] = k->beta1 * r->m[e] + (1 - k->beta1) * g[e];
        r->v[e] = k->beta2 * r->v[e] + (1 - k->beta2) * (double)g[e] * g[e];
        double denom = sqrt(r->v[e]) / sqrt(bc2) + k->eps;
        r->p[e] -= k->lr / bc1 * r->m[e] / denom;
    }
}

static void make_params(ap_ctx *c, test_rng *r, ap_tensor **ps) {
    for (int i = 0; i < NT; i++) ps[i] = test_rand_leaf(c, r, 2, SHAPES[i], -1, 1);
}

static void rand_grads(test_rng *r, float **g, float scale) {
    for (int i = 0; i < NT; i++)
        for (int64_t e = 0; e < SHAPES[i][0] * SHAPES[i][1]; e++)
            g[i][e] = (float)(scale * (2 * test_rng_uniform(r) - 1));
}

static void test_against_reference(ap_ctx *c, double max_norm, float gscale, const char *label) {
    test_rng r = {7};
    ap_tensor *ps[NT];
    make_params(c, &r, ps);
    ap_adamw_config k = {.lr = 3e-2, .beta1 = 0.8, .beta2 = 0.95, .eps = 1e-6, .weight_decay = 0.5,
                         .max_grad_norm = max_norm};
    ap_adamw *o = NULL;
    CHECK(ap_adamw_create(c, &k, NT, ps, &o) == AP_OK);
    ref_param ref[NT];
    float *g[NT];
    for (int i = 0; i < NT; i++) {
        int64_t n = ap_tensor_numel(ps[i]);
        ref[i] = (ref_param){calloc(n, 8), calloc(n, 8), calloc(n, 8), n};
        g[i] = malloc(n * sizeof(float));
        for (int64_t e = 0; e < n; e++) ref[i].p[e] = ap_f32(ps[i])[e];
    }
    for (int t = 1; t <= 6; t++) {
        rand_grads(&r, g, gscale);
        double ss = 0;
        for (int i = 0; i < NT; i++)
            for (int64_t e = 0; e < ref[i].n; e++) ss += (double)g[i][e] * g[i][e];
        double norm = sqrt(ss), coef = (max_norm > 0 && norm > max_norm) ? max_norm / (norm + 1e-6) : 1.0;
        for (int i = 0; i < NT; i++) set_grad(c, ps[i], g[i]);
        double got_norm = -1;
        CHECK(ap_adamw_step(o, &got_norm) == AP_OK);
        CHECK_MSG(fabs(got_norm - norm) <= 1e-12 * norm, "%s: norm %.17g vs %.17g", label, got_norm, norm);
        for (int i = 0; i < NT; i++) {
            float *gc = malloc(ref[i].n * sizeof(float));
            for (int64_t e = 0; e < ref[i].n; e++) gc[e] = (float)(g[i][e] * coef);
            if (coef != 1.0) {
                /* the gradient was clipped in place */
                double *gd = malloc(ref[i].n * sizeof(double));
                for (int64_t e = 0; e < ref[i].n; e++) gd[e] = g[i][e] * coef;
                test_close("clipped grad", ap_f32(ap_tensor_grad(ps[i])), gd, ref[i].n, 1e-6, 0);
                free(gd);
            }
            ref_step(&ref[i], gc, &k, t);
            free(gc);
        }
    }
    CHECK(o->step == 6);
    char lab[64];
    for (int i = 0; i < NT; i++) {
        snprintf(lab, sizeof lab, "%s param %d", label, i);
        test_close(lab, ap_f32(ps[i]), ref[i].p, ref[i].n, 1e-5, 1e-6);
        double *mv = malloc(ref[i].n * sizeof(double));
        for (int64_t e = 0; e < ref[i].n; e++) mv[e] = ref[i].v[e];
        snprintf(lab, sizeof lab, "%s v %d", label, i);
        test_close(lab, o->v + o->off[i], mv, ref[i].n, 1e-5, 1e-9);
        snprintf(lab, sizeof lab, "%s m %d", label, i);
        test_close(lab, o->m + o->off[i], ref[i].m, ref[i].n, 1e-5, 1e-7);
        free(mv);
        free(ref[i].p);
        free(ref[i].m);
        free(ref[i].v);
        free(g[i]);
        ap_tensor_release(ps[i]);
    }
    ap_adamw_free(o);
}

static void test_defaults_and_skip(ap_ctx *c) {
    ap_adamw_config k;
    ap_adamw_defaults(&k);
    CHECK(k.lr == 1e-3 && k.beta1 == 0.9 && k.beta2 == 0.999 && k.eps == 1e-8 && k.weight_decay == 1e-4 &&
          k.max_grad_norm == 1.0);
    test_rng r = {3};
    ap_tensor *ps[NT];
    make_params(c, &r, ps);
    ap_adamw *o = NULL;
    CHECK(ap_adamw_create(c, NULL, NT, ps, &o) == AP_OK);
    float before[15];
    memcpy(before, ap_f32(ps[1]), 7 * sizeof(float));
    float g0[15];
    for (int e = 0; e < 15; e++) g0[e] = 0.5f;
    set_grad(c, ps[0], g0);
    ap_tensor_zero_grad(ps[1]); /* no gradient: skipped, not even decayed */
    ap_tensor_zero_grad(ps[2]);
    double norm = 0;
    CHECK(ap_adamw_step(o, &norm) == AP_OK);
    CHECK(fabs(norm - sqrt(15 * 0.25)) < 1e-12);
    CHECK(!memcmp(before, ap_f32(ps[1]), 7 * sizeof(float)));
    ap_adamw_free(o);
    for (int i = 0; i < NT; i++) ap_tensor_release(ps[i]);
}

/* Three steps, save, then both a continuing optimizer and a fresh one loaded
 * from the file run three more steps on the same gradients: bit-identical. */
static void test_resume(ap_ctx *c) {
    char path[128];
    snprintf(path, sizeof path, "/tmp/ap_adamw_test_%d.safetensors", (int)getpid());
    test_rng r = {5};
    ap_tensor *a[NT], *b[NT];
    make_params(c, &r, a);
    ap_adamw *oa = NULL, *ob = NULL;
    ap_adamw_config k;
    ap_adamw_defaults(&k);
    k.lr = 1e-2;
    k.max_grad_norm = 0.5;
    CHECK(ap_adamw_create(c, &k, NT, a, &oa) == AP_OK);
    float *g[NT];
    for (int i = 0; i < NT; i++) g[i] = malloc(SHAPES[i][0] * SHAPES[i][1] * sizeof(float));
    for (int t = 0; t < 3; t++) {
        rand_grads(&r, g, 1.0f);
        for (int i = 0; i < NT; i++) set_grad(c, a[i], g[i]);
        CHECK(ap_adamw_step(oa, NULL) == AP_OK);
    }
    CHECK(ap_adamw_save(oa, path) == AP_OK);
    for (int i = 0; i < NT; i++) {
        b[i] = ap_tensor_from_data(c, AP_F32, 2, SHAPES[i], ap_f32(a[i]));
        ap_tensor_set_requires_grad(b[i], 1);
    }
    ap_adamw_config other;
    ap_adamw_defaults(&other); /* the file's hyper-parameters replace these */
    CHECK(ap_adamw_create(c, &other, NT, b, &ob) == AP_OK);
    CHECK(ap_adamw_load(ob, path) == AP_OK);
    CHECK_OK(c);
    CHECK(ob->step == 3 && ob->cfg.lr == k.lr && ob->cfg.max_grad_norm == k.max_grad_norm);
    for (int t = 0; t < 3; t++) {
        rand_grads(&r, g, 1.0f);
        for (int i = 0; i < NT; i++) {
            set_grad(c, a[i], g[i]);
            set_grad(c, b[i], g[i]);
        }
        CHECK(ap_adamw_step(oa, NULL) == AP_OK);
        CHECK(ap_adamw_step(ob, NULL) == AP_OK);
    }
    for (int i = 0; i < NT; i++)
        CHECK_MSG(!memcmp(ap_f32(a[i]), ap_f32(b[i]), ap_tensor_nbytes(a[i])), "param %d differs after resume", i);
    CHECK(!memcmp(oa->m, ob->m, oa->off[NT] * sizeof(float)) && !memcmp(oa->v, ob->v, oa->off[NT] * sizeof(float)));

    /* a state file for other parameters is refused and changes nothing */
    ap_tensor *wrong = test_rand_leaf(c, &r, 2, (int64_t[]){4, 4}, -1, 1);
    ap_adamw *ow = NULL;
    CHECK(ap_adamw_create(c, NULL, 1, &wrong, &ow) == AP_OK);
    CHECK(ap_adamw_load(ow, path) == AP_ERR_SHAPE);
    CHECK(strstr(ap_last_error(c), "adamw load") != NULL);
    CHECK(ow->step == 0);
    ap_clear_error(c);
    CHECK(ap_adamw_load(ow, "/nonexistent/state.safetensors") != AP_OK);
    ap_clear_error(c);
    ap_adamw_free(ow);
    ap_tensor_release(wrong);

    for (int i = 0; i < NT; i++) {
        free(g[i]);
        ap_tensor_release(a[i]);
        ap_tensor_release(b[i]);
    }
    ap_adamw_free(oa);
    ap_adamw_free(ob);
    unlink(path);
}

static void test_errors(ap_ctx *c) {
    ap_tensor *h = ap_tensor_zeros(c, AP_BF16, 1, (int64_t[]){4});
    ap_adamw *o = (ap_adamw *)1;
    CHECK(ap_adamw_create(c, NULL, 1, &h, &o) == AP_ERR_DTYPE && o == NULL);
    CHECK(strstr(ap_last_error(c), "adamw") && strstr(ap_last_error(c), "f32"));
    ap_clear_error(c);
    ap_tensor *f = ap_tensor_zeros(c, AP_F32, 1, (int64_t[]){4});
    ap_tensor *two[2] = {f, f};
    CHECK(ap_adamw_create(c, NULL, 2, two, &o) == AP_ERR_INVALID_ARG);
    ap_clear_error(c);
    ap_adamw_config k;
    ap_adamw_defaults(&k);
    k.beta2 = 1.0;
    CHECK(ap_adamw_create(c, &k, 1, &f, &o) == AP_ERR_INVALID_ARG);
    CHECK(strstr(ap_last_error(c), "betas") != NULL);
    ap_clear_error(c);
    ap_tensor_release(h);
    ap_tensor_release(f);
}

/* schedules against the transformers definitions written out by hand */
static void test_lr_schedules(void) {
    const int T = 10, W = 3;
    for (int k = 0; k < 3; k++) {
        ap_lr_schedule s = {.kind = (ap_lr_kind)k, .warmup = W};
        CHECK(ap_lr_kind_parse(ap_lr_kind_name(s.kind)) == k);
        for (int d = 0; d < T; d++) {
            double f = d < W ? d / 3.0 : k == 0 ? 1.0 : k == 1 ? (T - d) / 7.0 : 0.5 * (1 + cos(M_PI * (d - W) / 7.0));
            double got = ap_lr_at(&s, 2e-3, d, T);
            CHECK_MSG(fabs(got - 2e-3 * f) <= 1e-15, "%s: update %d: %g vs %g", ap_lr_kind_name(s.kind), d, got,
                      2e-3 * f);
        }
    }
    ap_lr_schedule none = {AP_LR_LINEAR, 0};
    CHECK(ap_lr_at(&none, 1.0, 0, 4) == 1.0 && ap_lr_at(&none, 1.0, 3, 4) == 0.25);
    CHECK(ap_lr_kind_parse("exponential") == -1 && ap_lr_kind_parse(NULL) == -1);
}

int main(void) {
    ap_ctx *c = test_ctx();
    test_lr_schedules();
    test_against_reference(c, 0.0, 1.0f, "no clip");
    test_against_reference(c, 1.0, 3.0f, "clip 1.0");
    test_defaults_and_skip(c);
    test_resume(c);
    test_errors(c);
    CHECK_OK(c);
    ap_ctx_free(c);
    return test_summary("optim");
}
