/* Pretraining on the tiny model and the toy stream: the VAE's sample-and-KL op
 * against a double reference and finite differences; both stages lower their
 * loss; the same seed gives the same model bit for bit; a run stopped (as by
 * Ctrl-C) and resumed ends bit-identical to one that ran through, also when
 * it is extended to more UNet steps; the scale factor is measured and
 * written; the VAE stays frozen while the UNet trains; the model folder loads
 * and samples, in f32 and f16; bad options give messages. */
#include "core/internal.h"
#include "gradcheck.h"
#include "io/json.h"
#include "models/sd.h"
#include "pipeline/txt2img.h"
#include "test.h"
#include "train/checkpoint.h"
#include "train/pretrain.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------ the VAE's sample and KL */
static ap_tensor *sample_fn(ap_ctx *c, void *user, int n, ap_tensor **in) {
    (void)n;
    ap_tensor *kl = NULL;
    ap_tensor *z = ap_vae_sample_kl(c, in[0], user, &kl);
    ap_tensor_release(kl);
    return z;
}

static ap_tensor *kl_fn(ap_ctx *c, void *user, int n, ap_tensor **in) {
    (void)n;
    ap_tensor *kl = NULL;
    ap_tensor *z = ap_vae_sample_kl(c, in[0], user, &kl);
    ap_tensor_release(z);
    return kl;
}

/* both outputs at once: z * 0.5 + kl (kl broadcast), so both gradients meet in one accumulator */
static ap_tensor *both_fn(ap_ctx *c, void *user, int n, ap_tensor **in) {
    (void)n;
    ap_tensor *kl = NULL;
    ap_tensor *z = ap_vae_sample_kl(c, in[0], user, &kl);
    ap_tensor *k4 = kl ? ap_reshape(c, kl, 4, (int64_t[]){1, 1, 1, 1}) : NULL;
    ap_tensor *zs = z ? ap_scale(c, z, 0.5f) : NULL;
    ap_tensor *y = zs && k4 ? ap_add(c, zs, k4) : NULL;
    ap_tensor_release(kl);
    ap_tensor_release(k4);
    ap_tensor_release(z);
    ap_tensor_release(zs);
    return y;
}

static void test_sample_kl(ap_ctx *c) {
    test_rng r = {11};
    int N = 3, h = 3, w = 5, Z = 2;
    ap_tensor *mo = test_rand_leaf(c, &r, 4, (int64_t[]){N, h, w, 2 * Z}, -1.5f, 1.5f);
    ap_tensor *e = test_rand(c, &r, 4, (int64_t[]){N, h, w, Z}, -2, 2);
    /* one logvar past each clamp: no gradient there, and the value uses the clamp */
    ap_f32(mo)[Z] = 25.0f;
    ap_f32(mo)[2 * Z + Z] = -31.0f;
    ap_tensor *kl = NULL;
    ap_tensor *z = ap_vae_sample_kl(c, mo, e, &kl);
    CHECK_OK(c);
    if (z && kl) {
        double *ref = calloc((size_t)N * h * w * Z, sizeof *ref), klr = 0;
        const float *m = ap_cf32(mo), *pe = ap_cf32(e);
        for (int64_t p = 0; p < (int64_t)N * h * w; p++)
            for (int k = 0; k < Z; k++) {
                double mu = m[p * 2 * Z + k], lv = fmin(fmax(m[p * 2 * Z + Z + k], -30.0), 20.0);
                ref[p * Z + k] = mu + exp(0.5 * lv) * pe[p * Z + k];
                klr += 0.5 * (mu * mu + exp(lv) - 1 - lv);
            }
        klr /= N;
        test_close("vae_sample_kl z", ap_cf32(z), ref, ap_tensor_numel(z), 1e-5, 1e-6);
        test_close("vae_sample_kl kl", ap_cf32(kl), &klr, 1, 1e-5, 1e-6);
        free(ref);
    }
    ap_tensor_release(z);
    ap_tensor_release(kl);
    ap_tape_clear(c);
    /* finite differences away from the clamps (a kink there) */
    ap_f32(mo)[Z] = 0.5f;
    ap_f32(mo)[2 * Z + Z] = -0.5f;
    gc_opts go = {.eps = 1e-3, .max_elems = -1};
    gradcheck(c, "vae_sample_kl z", sample_fn, e, 1, &mo, &go);
    gradcheck(c, "vae_sample_kl kl", kl_fn, e, 1, &mo, &go);
    gradcheck(c, "vae_sample_kl z and kl", both_fn, e, 1, &mo, &go);
    /* a clamped logvar gets no gradient */
    ap_f32(mo)[Z] = 25.0f;
    ap_tensor_zero_grad(mo);
    z = ap_vae_sample_kl(c, mo, e, &kl);
    ap_tensor *s = kl ? ap_sum(c, z) : NULL;
    ap_tensor *t = s ? ap_add(c, s, kl) : NULL;
    if (t) ap_backward(c, t, NULL);
    CHECK_OK(c);
    ap_tensor *g = ap_tensor_grad(mo);
    CHECK(g && ap_cf32(g)[Z] == 0.0f && ap_cf32(g)[0] != 0.0f);
    ap_tensor *ts[] = {z, kl, s, t};
    for (int i = 0; i < 4; i++) ap_tensor_release(ts[i]);
    /* errors */
    ap_tensor *bad = test_rand(c, &r, 4, (int64_t[]){N, h, w, Z + 1}, -1, 1);
    z = ap_vae_sample_kl(c, mo, bad, &kl);
    CHECK(z == NULL && kl == NULL && ap_last_status(c) == AP_ERR_SHAPE);
    CHECK_MSG(strstr(ap_last_error(c), "vae_sample_kl") && strstr(ap_last_error(c), "noise"), "%s", ap_last_error(c));
    ap_clear_error(c);
    ap_tensor_release(bad);
    ap_tensor_release(mo);
    ap_tensor_release(e);
}

/* ------------------------------------------------------------ runs */
typedef struct {
    int n;
    int stage[256];   /* 1 vae, 2 unet, 0 other lines */
    double loss[256];
    double scale;
} run_log;

static void read_log(const char *dir, run_log *l) {
    char p[600], line[4096];
    memset(l, 0, sizeof *l);
    snprintf(p, sizeof p, "%s/log.jsonl", dir);
    FILE *f = fopen(p, "r");
    CHECK_MSG(f != NULL, "%s missing", p);
    while (f && fgets(line, sizeof line, f) && l->n < 256) {
        char err[128];
        ap_json *j = ap_json_parse(line, strlen(line), err, sizeof err);
        CHECK_MSG(j != NULL, "bad log line %s", line);
        const char *st = ap_json_str(ap_json_get(j, "stage"));
        double v;
        if (ap_json_num(ap_json_get(j, "scaling_factor"), &v)) {
            l->scale = v;
        } else if (ap_json_num(ap_json_get(j, "loss"), &v)) {
            l->stage[l->n] = st && !strcmp(st, "vae") ? 1 : 2;
            l->loss[l->n++] = v;
        }
        ap_json_free(j);
    }
    if (f) fclose(f);
}

static double mean_of(const run_log *l, int stage, int first, int count) {
    double s = 0;
    int k = 0, seen = 0;
    for (int i = 0; i < l->n; i++) {
        if (l->stage[i] != stage) continue;
        if (seen++ >= first && k < count) s += l->loss[i], k++;
    }
    return k ? s / k : NAN;
}

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    *len = 0;
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) n = 0;
    fclose(f);
    *len = (size_t)n;
    return b;
}

static bool same_file(const char *a, const char *b) {
    size_t na, nb;
    char *x = slurp(a, &na), *y = slurp(b, &nb);
    bool same = x && y && na == nb && memcmp(x, y, na) == 0;
    free(x);
    free(y);
    return same;
}

static const char *const MODEL_FILES[] = {"unet/diffusion_pytorch_model.safetensors",
                                          "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                                          "vae/config.json"};

static bool same_models(const char *a, const char *b) {
    char p[600], q[600];
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/%s", a, MODEL_FILES[i]);
        snprintf(q, sizeof q, "%s/%s", b, MODEL_FILES[i]);
        if (!same_file(p, q)) {
            fprintf(stderr, "differ: %s %s\n", p, q);
            return false;
        }
    }
    return true;
}

static uint64_t g_toy_seed = 3;

static void tiny_opts(ap_pretrain_opts *o, const char *dir) {
    ap_pretrain_defaults(o);
    o->config = "tiny";
    o->data_fn = ap_pretrain_toy_data;
    o->data_user = &g_toy_seed;
    o->image_size = 16;
    o->out_dir = dir;
    o->vae_steps = 14;
    o->unet_steps = 14;
    o->batch = 4;
    o->vae_lr = 3e-3;
    o->unet_lr = 2e-3;
    o->warmup = 4;
    o->scale_batches = 2;
    o->save_every = 10;
    o->keep_checkpoints = 0;
    o->seed = 5;
}

static volatile sig_atomic_t g_stop;
static int g_stop_at;
static void stop_at(void *u, const char *stage, int step, int total, double loss) {
    (void)u, (void)stage, (void)total, (void)loss;
    if (step == g_stop_at) g_stop = SIGINT;
}

static void test_runs(ap_ctx *c, const char *root) {
    char a[512], b[512], p[700], q[700];
    snprintf(a, sizeof a, "%s/a", root);
    snprintf(b, sizeof b, "%s/b", root);
    ap_pretrain_opts o;

    /* A: both stages through */
    tiny_opts(&o, a);
    CHECK(ap_pretrain(c, &o) == AP_OK);
    CHECK_OK(c);
    ap_clear_error(c);
    run_log la;
    read_log(a, &la);
    CHECK_MSG(la.n == 28, "%d log lines with a loss", la.n);
    double v0 = mean_of(&la, 1, 0, 3), v1 = mean_of(&la, 1, 11, 3);
    double u0 = mean_of(&la, 2, 0, 3), u1 = mean_of(&la, 2, 11, 3);
    CHECK_MSG(v1 < 0.7 * v0, "VAE loss %g -> %g", v0, v1);
    CHECK_MSG(u1 < 0.8 * u0, "UNet loss %g -> %g", u0, u1);
    fprintf(stderr, "VAE loss %.4f -> %.4f, UNet loss %.4f -> %.4f, scale factor %.5f\n", v0, v1, u0, u1, la.scale);
    /* the measured scale factor is in the model's config */
    snprintf(p, sizeof p, "%s/model", a);
    ap_sd_model *m = NULL;
    CHECK(ap_sd_load(c, p, AP_F32, &m) == AP_OK);
    CHECK_OK(c);
    if (m) {
        CHECK(la.scale > 0 && fabs(m->cfg.vae.scaling_factor - la.scale) < 1e-6 * la.scale);
        CHECK(m->cfg.vae.scaling_factor != 0.18215f);
        /* it samples */
        ap_txt2img_opts to;
        ap_txt2img_defaults(&to);
        to.prompt = "a red circle";
        to.steps = 3;
        to.width = to.height = 16;
        ap_tensor *img = NULL;
        CHECK(ap_txt2img(c, m, &to, &img) == AP_OK);
        CHECK_OK(c);
        bool finite = img != NULL;
        for (int64_t i = 0; img && i < ap_tensor_numel(img); i++) finite = finite && isfinite(ap_cf32(img)[i]);
        CHECK_MSG(finite, "the sample is finite");
        ap_tensor_release(img);
    }
    ap_sd_free(m);
    /* the VAE did not move during the UNet stage: the checkpoint at the stage end has the same VAE */
    snprintf(p, sizeof p, "%s/checkpoints/step_000014/model/vae/diffusion_pytorch_model.safetensors", a);
    snprintf(q, sizeof q, "%s/model/vae/diffusion_pytorch_model.safetensors", a);
    CHECK_MSG(same_file(p, q), "the VAE is frozen in the UNet stage");
    snprintf(p, sizeof p, "%s/checkpoints/step_000014/model/unet/diffusion_pytorch_model.safetensors", a);
    snprintf(q, sizeof q, "%s/model/unet/diffusion_pytorch_model.safetensors", a);
    CHECK_MSG(!same_file(p, q), "the UNet trains in the UNet stage");

    /* B: stopped at step 8 (VAE stage), resumed, stopped at 19 (UNet stage), resumed: A bit for bit */
    tiny_opts(&o, b);
    o.save_every = 0;
    g_stop = 0;
    o.stop = &g_stop;
    o.progress = stop_at;
    g_stop_at = 8;
    CHECK(ap_pretrain(c, &o) == AP_OK);
    CHECK_OK(c);
    snprintf(p, sizeof p, "%s/checkpoints/step_000008/DONE", b);
    CHECK_MSG(access(p, F_OK) == 0, "a checkpoint on stop");
    snprintf(p, sizeof p, "%s/model", b);
    CHECK_MSG(access(p, F_OK) != 0, "no final model from a stopped run");
    g_stop = 0;
    g_stop_at = 19;
    o.resume = true;
    CHECK(ap_pretrain(c, &o) == AP_OK);
    CHECK_OK(c);
    g_stop = 0;
    g_stop_at = -1;
    CHECK(ap_pretrain(c, &o) == AP_OK);
    CHECK_OK(c);
    snprintf(p, sizeof p, "%s/model", a);
    snprintf(q, sizeof q, "%s/model", b);
    CHECK_MSG(same_models(p, q), "stopped and resumed twice = run through");
    run_log lb;
    read_log(b, &lb);
    CHECK_MSG(lb.n == 28 && !memcmp(lb.loss, la.loss, sizeof la.loss), "the resumed log has the same losses");

    /* the VAE stage extended past its end (its scale factor already measured): D stopped at
     * the end of a 10-step VAE stage, resumed with 14 VAE steps, equals A */
    snprintf(q, sizeof q, "%s/d", root);
    tiny_opts(&o, q);
    o.vae_steps = 10;
    o.save_every = 0;
    g_stop = 0;
    o.stop = &g_stop;
    o.progress = stop_at;
    g_stop_at = 10;
    CHECK(ap_pretrain(c, &o) == AP_OK);
    CHECK_OK(c);
    o.vae_steps = 14;
    o.resume = true;
    g_stop = 0;
    g_stop_at = -1;
    CHECK(ap_pretrain(c, &o) == AP_OK);
    CHECK_OK(c);
    snprintf(p, sizeof p, "%s/model", a);
    snprintf(q, sizeof q, "%s/d/model", root);
    CHECK_MSG(same_models(p, q), "a VAE stage extended past its end = a longer stage");
    /* but not once the UNet stage has begun */
    snprintf(q, sizeof q, "%s/d", root);
    tiny_opts(&o, q);
    o.vae_steps = 20;
    o.resume = true;
    CHECK(ap_pretrain(c, &o) == AP_ERR_INVALID_ARG);
    CHECK_MSG(strstr(ap_last_error(c), "vae_steps"), "%s", ap_last_error(c));
    ap_clear_error(c);

    /* extending: B resumed to 18 UNet steps equals a fresh run of 18 */
    tiny_opts(&o, b);
    o.resume = true;
    o.unet_steps = 18;
    o.save_dtype = AP_F16;
    CHECK(ap_pretrain(c, &o) == AP_OK);
    CHECK_OK(c);
    snprintf(a, sizeof a, "%s/c", root);
    tiny_opts(&o, a);
    o.unet_steps = 18;
    o.save_dtype = AP_F16;
    CHECK(ap_pretrain(c, &o) == AP_OK);
    CHECK_OK(c);
    snprintf(p, sizeof p, "%s/model", a);
    snprintf(q, sizeof q, "%s/model", b);
    CHECK_MSG(same_models(p, q), "resumed to more UNet steps = a longer run");
    /* the f16 folder holds f16 weights and loads */
    snprintf(p, sizeof p, "%s/model/unet/diffusion_pytorch_model.safetensors", a);
    ap_safetensors *st = NULL;
    CHECK(ap_st_open(c, p, &st) == AP_OK);
    if (st) {
        int k = ap_st_find(st, "conv_in.weight");
        CHECK(k >= 0 && !strcmp(ap_st_dtype(st, k), "F16"));
    }
    ap_st_close(st);
    snprintf(p, sizeof p, "%s/model", a);
    m = NULL;
    CHECK(ap_sd_load(c, p, AP_BF16, &m) == AP_OK);
    CHECK_OK(c);
    ap_sd_free(m);

    /* a resumed run must match the checkpoint's settings */
    tiny_opts(&o, b);
    o.seed = 6;
    o.resume = true;
    CHECK(ap_pretrain(c, &o) != AP_OK);
    CHECK_MSG(strstr(ap_last_error(c), "seed"), "%s", ap_last_error(c));
    ap_clear_error(c);
}

static void test_errors(ap_ctx *c, const char *root) {
    char d[512];
    snprintf(d, sizeof d, "%s/err", root);
    ap_pretrain_opts o;
    tiny_opts(&o, d);
    o.image_size = 15;
    CHECK(ap_pretrain(c, &o) == AP_ERR_INVALID_ARG);
    CHECK_MSG(strstr(ap_last_error(c), "image size 15"), "%s", ap_last_error(c));
    ap_clear_error(c);
    tiny_opts(&o, d);
    o.data_fn = NULL;
    o.data = "mnist";
    CHECK(ap_pretrain(c, &o) == AP_ERR_INVALID_ARG);
    CHECK_MSG(strstr(ap_last_error(c), "mnist"), "%s", ap_last_error(c));
    ap_clear_error(c);
    tiny_opts(&o, d);
    o.config = "huge";
    CHECK(ap_pretrain(c, &o) != AP_OK);
    CHECK_MSG(strstr(ap_last_error(c), "huge"), "%s", ap_last_error(c));
    ap_clear_error(c);
    tiny_opts(&o, d);
    o.resume = true;
    CHECK(ap_pretrain(c, &o) == AP_ERR_NOT_FOUND);
    CHECK_MSG(strstr(ap_last_error(c), "no complete checkpoint"), "%s", ap_last_error(c));
    ap_clear_error(c);
    tiny_opts(&o, d);
    o.batch = 0;
    CHECK(ap_pretrain(c, &o) == AP_ERR_INVALID_ARG);
    ap_clear_error(c);
    CHECK(ap_pretrain_stage_parse("unet") == AP_STAGE_UNET && ap_pretrain_stage_parse("x") == 0);
}

int main(void) {
    ap_ctx *c = test_ctx();
    test_sample_kl(c);
    char root[] = "/tmp/ap_pretrain_XXXXXX";
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    test_runs(c, root);
    test_errors(c, root);
    ap_rm_tree(root);
    ap_ctx_free(c);
    return test_summary("pretrain");
}
