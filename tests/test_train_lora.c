/* Trainable LoRA: the SD1.5 target list and size against the spec's file,
 * init, attach / detach, export in every format merged by the sampling-time
 * loader (weights and UNet outputs agree with the attached adapters), kohya
 * import for resume, the UNet's gradient w.r.t. down and up, and errors. */
#include "core/internal.h"
#include "gradcheck.h"
#include "models/lora_file.h"
#include "test.h"
#include "train/lora.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void test_sd15_targets(void) {
    int n = ap_lora_targets(&ap_unet_config_sd15, NULL, 0);
    CHECK(n == 128);
    CHECK(ap_lora_param_count(&ap_unet_config_sd15, 4) == 797184);
    ap_lora_target *t = calloc(n, sizeof *t);
    CHECK(ap_lora_targets(&ap_unet_config_sd15, t, n) == n);
    size_t len = 0;
    char *text = test_read_file("../shared/spec/sd15_lora_targets.txt", &len);
    if (!text) text = test_read_file("/work/shared/spec/sd15_lora_targets.txt", &len);
    CHECK_MSG(text != NULL, "sd15_lora_targets.txt not found");
    if (text) {
        CHECK(strstr(text, "797184") != NULL);
        /* lines 3.. are "<diffusers path> <ldm path> out=O in=I"; compare as sets */
        int found = 0, lines = 0;
        char *save = NULL;
        for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
            char path[200], ldm[200];
            int o, i;
            if (sscanf(line, "%199s %199s out=%d in=%d", path, ldm, &o, &i) != 4) continue;
            lines++;
            for (int k = 0; k < n; k++)
                if (!strcmp(t[k].path, path)) {
                    CHECK_MSG(t[k].in == i && t[k].out == o, "%s: in %d out %d vs %d %d", path, t[k].in, t[k].out,
                              i, o);
                    found++;
                }
        }
        CHECK_MSG(lines == 128 && found == 128, "%d lines, %d matched", lines, found);
        free(text);
    }
    free(t);
}

typedef struct {
    ap_sd_model *m;
    ap_tensor *x, *t, *ctx;
} unet_call;

static ap_tensor *unet_fn(ap_ctx *c, void *user, int n, ap_tensor **in) {
    (void)n;
    (void)in; /* the leaves are the adapters the UNet reaches */
    unet_call *u = user;
    return ap_unet_forward(c, u->m->unet, u->x, u->t, u->ctx);
}

/* W' = W + scale * up @ down in double, against a merged model's weight. */
static void check_merged(ap_ctx *c, ap_sd_model *base, ap_sd_model *merged, const ap_lora_set *s,
                         const char *label) {
    int bad = 0;
    for (int i = 0; i < s->n; i++) {
        const ap_lora_module *m = &s->m[i];
        char name[256];
        snprintf(name, sizeof name, "%s.weight", m->target.path);
        ap_param *pw = ap_params_find(&base->unet->params, name), *pm = ap_params_find(&merged->unet->params, name);
        if (!pw || !pm) {
            bad++;
            continue;
        }
        int O = m->target.out, I = m->target.in, R = s->rank;
        double *ref = malloc((size_t)O * I * sizeof(double));
        const float *w = ap_f32(pw->t), *dn = ap_f32(m->lora.down), *up = ap_f32(m->lora.up);
        for (int o = 0; o < O; o++)
            for (int k = 0; k < I; k++) {
                double acc = 0;
                for (int r = 0; r < R; r++) acc += (double)up[o * R + r] * dn[r * I + k];
                ref[o * I + k] = w[o * I + k] + (double)m->lora.scale * acc;
            }
        char lab[300];
        snprintf(lab, sizeof lab, "%s merged %s", label, m->target.path);
        if (!test_close(lab, ap_f32(pm->t), ref, (int64_t)O * I, 1e-5, 1e-6)) bad++;
        free(ref);
    }
    (void)c;
    CHECK_MSG(bad == 0, "%s: %d modules differ", label, bad);
}

static double max_rel(const float *a, const float *b, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num = fmax(num, fabs((double)a[i] - b[i]));
        den = fmax(den, fabs((double)b[i]));
    }
    return num / (den > 0 ? den : 1);
}

static void test_tiny(ap_ctx *c) {
    ap_sd_config cfg;
    CHECK(ap_sd_preset(c, "tiny", &cfg) == AP_OK);
    const int R = 3;
    const float ALPHA = 1.5f; /* scale 0.5, so the formats' alpha handling matters */
    ap_sd_model *m = NULL;
    CHECK(ap_sd_create(c, &cfg, AP_F32, &m) == AP_OK && ap_sd_init_random(c, m, 21) == AP_OK);
    ap_lora_set *s = NULL, *s2 = NULL;
    CHECK(ap_lora_create(c, &cfg.unet, R, ALPHA, 99, &s) == AP_OK);
    CHECK(ap_lora_create(c, &cfg.unet, R, ALPHA, 99, &s2) == AP_OK);
    if (!s || !s2 || !m) return;
    CHECK(s->n == 32 && s->params.n == 64);
    CHECK(ap_params_count(&s->params) == ap_lora_param_count(&cfg.unet, R));

    /* init: deterministic, N(0, 1/r) downs, zero ups, f32 leaves, named by path */
    double sum = 0, sq = 0;
    int64_t cnt = 0;
    int same = 1, zero_up = 1, leaves = 1;
    for (int i = 0; i < s->n; i++) {
        ap_tensor *d = s->m[i].lora.down, *u = s->m[i].lora.up;
        same &= !memcmp(ap_f32(d), ap_f32(s2->m[i].lora.down), ap_tensor_nbytes(d));
        for (int64_t e = 0; e < ap_tensor_numel(d); e++) {
            sum += ap_f32(d)[e];
            sq += (double)ap_f32(d)[e] * ap_f32(d)[e];
            cnt++;
        }
        for (int64_t e = 0; e < ap_tensor_numel(u); e++) zero_up &= ap_f32(u)[e] == 0.0f;
        leaves &= ap_tensor_requires_grad(d) && ap_tensor_requires_grad(u) && ap_tensor_dtype(d) == AP_F32;
        CHECK(s->m[i].lora.scale == ALPHA / R);
    }
    double mean = sum / cnt, sd = sqrt(sq / cnt - mean * mean);
    CHECK_MSG(fabs(mean) < 0.02 && fabs(sd - 1.0 / R) < 0.02, "init mean %g std %g (want 0, %g) over %lld", mean, sd,
              1.0 / R, (long long)cnt);
    CHECK(same && zero_up && leaves);
    CHECK(ap_params_find(&s->params, "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_down.weight"));
    CHECK(ap_params_find(&s->params, "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0.lora_up.weight"));
    ap_lora_free(s2);
    s2 = NULL;

    /* attach: with up = 0 the output is unchanged; then random ups */
    test_rng r = {5};
    unet_call uc = {m, test_rand(c, &r, 4, (int64_t[]){2, 8, 8, 4}, -1, 1), NULL,
                    test_rand(c, &r, 3, (int64_t[]){2, 5, 32}, -1, 1)};
    uc.t = ap_tensor_from_data(c, AP_F32, 1, (int64_t[]){2}, (float[]){10.0f, 500.0f});
    int prev = ap_set_grad_enabled(c, 0);
    ap_tensor *y0 = ap_unet_forward(c, m->unet, uc.x, uc.t, uc.ctx);
    CHECK(ap_lora_attach(c, s, m->unet) == AP_OK);
    CHECK(m->unet->down[0].attns[0].block.attn2.to_k.lora == &s->m[5].lora);
    CHECK(m->unet->mid_attn.block.attn1.to_q.lora != NULL);
    ap_tensor *y1 = ap_unet_forward(c, m->unet, uc.x, uc.t, uc.ctx);
    CHECK(y0 && y1 && !memcmp(ap_f32(y0), ap_f32(y1), ap_tensor_nbytes(y0)));
    for (int i = 0; i < s->n; i++) {
        ap_tensor *u = s->m[i].lora.up;
        for (int64_t e = 0; e < ap_tensor_numel(u); e++) ap_f32(u)[e] = (float)(0.5 * test_rng_normal(&r));
        ap_tensor_touch(u);
    }
    ap_tensor *ya = ap_unet_forward(c, m->unet, uc.x, uc.t, uc.ctx);
    CHECK(ya && max_rel(ap_f32(ya), ap_f32(y0), ap_tensor_numel(ya)) > 1e-3); /* the adapters do something */

    /* export, merge into a fresh copy, compare weights and outputs */
    for (int f = 0; f < AP_LORA_FORMAT_COUNT_; f++) {
        char path[128];
        snprintf(path, sizeof path, "/tmp/ap_train_lora_%d_%s.safetensors", (int)getpid(), ap_lora_format_name(f));
        CHECK(ap_lora_format_parse(ap_lora_format_name(f)) == f);
        CHECK_MSG(ap_lora_save(c, s, path, (ap_lora_format)f) == AP_OK, "%s", ap_last_error(c));
        ap_sd_model *fresh = NULL;
        CHECK(ap_sd_create(c, &cfg, AP_F32, &fresh) == AP_OK && ap_sd_init_random(c, fresh, 21) == AP_OK);
        ap_lora_merge_info info = {0};
        CHECK_MSG(ap_lora_merge_file(c, fresh, path, 1.0f, &info) == AP_OK, "%s", ap_last_error(c));
        CHECK_MSG(info.modules == 32 && info.unused_keys == 0, "%s: %d modules, %d unused", ap_lora_format_name(f),
                  info.modules, info.unused_keys);
        CHECK_MSG(info.format && !strcmp(info.format, ap_lora_format_name(f)), "format %s vs %s",
                  info.format ? info.format : "?", ap_lora_format_name(f));
        check_merged(c, m, fresh, s, ap_lora_format_name(f));
        ap_tensor *ym = ap_unet_forward(c, fresh->unet, uc.x, uc.t, uc.ctx);
        double rel = ym && ya ? max_rel(ap_f32(ym), ap_f32(ya), ap_tensor_numel(ya)) : 1;
        CHECK_MSG(rel <= 1e-5, "%s: merged output differs from attached by %g (max relative)", ap_lora_format_name(f),
                  rel);
        ap_tensor_release(ym);
        ap_sd_free(fresh);
        {
            /* load back (resume, --init-lora): kohya gives bit-identical adapters
             * and scales; diffusers and peft fold the scale into up, so they load
             * with scale 1 and the same scale * up, bit for bit */
            ap_lora_set *sl = NULL;
            const char *found = NULL;
            CHECK(ap_lora_create(c, &cfg.unet, R, 0, 1234, &sl) == AP_OK);
            CHECK_MSG(ap_lora_load(c, sl, path, &found) == AP_OK, "%s", ap_last_error(c));
            CHECK_MSG(found && !strcmp(found, ap_lora_format_name(f)), "loaded as %s", found ? found : "?");
            int eq = 1;
            for (int i = 0; sl && i < s->n; i++) {
                const ap_lora *a = &s->m[i].lora, *b = &sl->m[i].lora;
                eq &= !memcmp(ap_f32(a->down), ap_f32(b->down), ap_tensor_nbytes(a->down));
                for (int64_t e = 0; e < ap_tensor_numel(a->up); e++) {
                    float ua = f == AP_LORA_KOHYA ? ap_f32(a->up)[e] : a->scale * ap_f32(a->up)[e];
                    float ub = f == AP_LORA_KOHYA ? ap_f32(b->up)[e] : b->scale * ap_f32(b->up)[e];
                    eq &= ua == ub;
                }
                eq &= f == AP_LORA_KOHYA ? b->scale == a->scale : b->scale == 1.0f;
            }
            CHECK_MSG(eq && sl && sl->alpha == (f == AP_LORA_KOHYA ? ALPHA : (float)R), "%s round trip",
                      ap_lora_format_name(f));
            ap_lora_free(sl);
        }
        if (f == AP_LORA_KOHYA) {
            CHECK(ap_lora_create(c, &cfg.unet, R, 0, 1234, &s2) == AP_OK);
            CHECK_MSG(ap_lora_load(c, s2, path, NULL) == AP_OK, "%s", ap_last_error(c));
            /* wrong rank: refused, naming the file */
            ap_lora_set *s4 = NULL;
            CHECK(ap_lora_create(c, &cfg.unet, 4, 0, 1, &s4) == AP_OK);
            CHECK(ap_lora_load(c, s4, path, NULL) == AP_ERR_SHAPE);
            CHECK(strstr(ap_last_error(c), "lora load") && strstr(ap_last_error(c), path));
            ap_clear_error(c);
            ap_lora_free(s4);
        }
        unlink(path);
    }
    ap_set_grad_enabled(c, prev);

    /* gradient of the UNet output w.r.t. two modules' down and up (up nonzero).
     * The f32 forward's rounding noise, divided by 2 eps, swamps these small
     * gradients below eps ~3e-2 (at 1e-2 one element in 12 was 6% off; at
     * 1e-3 most were); at 5e-2 the worst ratios measured were 0.06-0.24 of
     * the tolerance (test_sd_models uses 8e-2 for its LoRA for the same reason). */
    ap_tensor *in[4] = {s->m[0].lora.down, s->m[0].lora.up, s->m[13].lora.down, s->m[13].lora.up};
    gc_opts go = {.eps = 5e-2, .rtol = 2e-2, .atol = 2e-3, .max_elems = 12, .seed = 3, .verbose = 1};
    CHECK(gradcheck(c, "unet wrt lora", unet_fn, &uc, 4, in, &go));
    /* the frozen base weights got no gradient */
    CHECK(ap_tensor_grad(m->unet->down[0].attns[0].block.attn1.to_q.w) == NULL);

    /* detach restores the base model */
    ap_lora_detach(s);
    CHECK(m->unet->down[0].attns[0].block.attn1.to_q.lora == NULL && s->attached == NULL);
    prev = ap_set_grad_enabled(c, 0);
    ap_tensor *yd = ap_unet_forward(c, m->unet, uc.x, uc.t, uc.ctx);
    CHECK(yd && !memcmp(ap_f32(yd), ap_f32(y0), ap_tensor_nbytes(y0)));
    ap_set_grad_enabled(c, prev);

    /* errors */
    ap_lora_set *bad = (ap_lora_set *)1;
    CHECK(ap_lora_create(c, &cfg.unet, 0, 0, 1, &bad) == AP_ERR_INVALID_ARG && bad == NULL);
    CHECK(strstr(ap_last_error(c), "rank") != NULL);
    ap_clear_error(c);
    CHECK(ap_lora_attach(c, s, m->unet) == AP_OK);
    CHECK(ap_lora_attach(c, s, m->unet) == AP_ERR_STATE);
    ap_clear_error(c);
    ap_sd_config small;
    CHECK(ap_sd_preset(c, "small", &small) == AP_OK);
    ap_lora_set *ss = NULL;
    CHECK(ap_lora_create(c, &small.unet, R, 0, 1, &ss) == AP_OK);
    CHECK(ap_lora_attach(c, ss, m->unet) == AP_ERR_SHAPE);
    CHECK(strstr(ap_last_error(c), "lora attach") != NULL);
    ap_clear_error(c);
    CHECK(ap_lora_load(c, s2, "/nonexistent/x.safetensors", NULL) != AP_OK);
    ap_clear_error(c);
    CHECK(ap_lora_save(c, s, "/tmp/x.safetensors", (ap_lora_format)7) == AP_ERR_INVALID_ARG);
    ap_clear_error(c);
    CHECK(ap_lora_format_parse("lycoris") == -1);

    ap_lora_free(ss);
    ap_lora_free(s2);
    ap_lora_free(s); /* detaches */
    CHECK(m->unet->down[0].attns[0].block.attn1.to_q.lora == NULL);
    ap_tensor_release(y0);
    ap_tensor_release(y1);
    ap_tensor_release(ya);
    ap_tensor_release(yd);
    ap_tensor_release(uc.x);
    ap_tensor_release(uc.t);
    ap_tensor_release(uc.ctx);
    ap_sd_free(m);
}

int main(void) {
    ap_ctx *c = test_ctx();
    test_sd15_targets();
    test_tiny(c);
    CHECK_OK(c);
    ap_ctx_free(c);
    return test_summary("train_lora");
}
