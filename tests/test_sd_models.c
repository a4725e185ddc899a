/* The tiny Stable Diffusion model against the PyTorch reference
 * (tests/ref/gen_sd.py -> tests/ref/sd/tiny_seed1.safetensors), and gradient
 * checks through its UNet, VAE decoder and text encoder.
 *
 * The model is made in memory (ap_sd_create + ap_sd_init_random with the
 * fixture's seed, which is what `alignprop init --config tiny` writes); a CRC
 * of its weights is compared with the one the reference recorded, so a change
 * in initialisation shows as such and not as a numerical mismatch.
 *
 * Agreement is measured as max|got - ref| / max|ref| over each output.
 * f32: at most 1e-4. bf16 (bf16 weights, AP_PREC_BF16): the tolerances below,
 * set from measurements with a margin; see TOL_BF16_*. The reference tensors are
 * NCHW (PyTorch); ours are NHWC. */
#include "core/internal.h"
#include "gradcheck.h"
#include "models/sd.h"
#include "pipeline/txt2img.h"
#include "test.h"

#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#define FIXTURE "tests/ref/sd/tiny_seed1.safetensors"

#define TOL_F32 1e-4
/* bf16 rounds every conv / matmul / attention operand to 8 bits of mantissa
 * (relative 2^-9 per value); through the layers of the random tiny model
 * that compounds to 0.6-0.8% of the output range (measured on AMX: text
 * 6.9e-3, UNet 6.9e-3, VAE decode 5.6e-3, encode 7.9e-3), and guidance 7.5
 * over three DDIM steps doubles it in the latents (1.4e-2). The tolerances
 * leave a factor of 3-4 for other bf16 kernels (AVX512-BF16, emulation). */
#define TOL_BF16 3e-2
#define TOL_BF16_DDIM 5e-2

typedef struct {
    ap_safetensors *st;
    uint64_t seed;
} fixture;

static ap_tensor *fx(ap_ctx *c, const fixture *f, const char *name, ap_dtype dt) {
    ap_tensor *t = NULL;
    if (ap_st_load(c, f->st, name, dt, &t) != AP_OK) {
        CHECK_MSG(0, "fixture tensor %s: %s", name, ap_last_error(c));
        return NULL;
    }
    return t;
}

/* [N,C,H,W] -> [N,H,W,C] */
static ap_tensor *to_nhwc(ap_ctx *c, ap_tensor *x) {
    int64_t n = ap_tensor_dim(x, 0), ch = ap_tensor_dim(x, 1), h = ap_tensor_dim(x, 2), w = ap_tensor_dim(x, 3);
    ap_tensor *y = ap_tensor_new(c, AP_F32, 4, (int64_t[]){n, h, w, ch});
    const float *s = ap_tensor_cdata(x);
    float *d = ap_tensor_data(y);
    for (int64_t a = 0; a < n; a++)
        for (int64_t k = 0; k < ch; k++)
            for (int64_t i = 0; i < h * w; i++) d[(a * h * w + i) * ch + k] = s[(a * ch + k) * h * w + i];
    return y;
}

/* Compares got with ref; nhwc_vs_nchw: got is [N,H,W,C] and ref [N,C,H,W]. Prints
 * the agreement; passes when max|got-ref| <= tol * max|ref|. */
static double compare(const char *label, ap_tensor *got, ap_tensor *ref, int nhwc_vs_nchw, double tol) {
    if (!got || !ref) {
        CHECK_MSG(0, "%s: missing output", label);
        return INFINITY;
    }
    ap_tensor *r = nhwc_vs_nchw ? to_nhwc(got->ctx, ref) : ap_tensor_retain(ref);
    int same = ap_tensor_ndim(got) == ap_tensor_ndim(r);
    for (int i = 0; same && i < ap_tensor_ndim(r); i++) same = ap_tensor_dim(got, i) == ap_tensor_dim(r, i);
    if (!same) {
        char a[96], b[96];
        CHECK_MSG(0, "%s: shape %s, reference %s", label, ap_shape_str(got, a, sizeof a), ap_shape_str(r, b, sizeof b));
        ap_tensor_release(r);
        return INFINITY;
    }
    const float *g = ap_tensor_cdata(got), *e = ap_tensor_cdata(r);
    double err = 0, mx = 0;
    int64_t wi = 0;
    for (int64_t i = 0; i < ap_tensor_numel(r); i++) {
        double d = fabs((double)g[i] - e[i]);
        if (!(d <= err)) err = d, wi = i;
        mx = fmax(mx, fabs((double)e[i]));
    }
    double rel = err / fmax(mx, 1e-30);
    printf("  %-30s max abs err %.3e  max|ref| %.3e  rel %.3e  (tol %.0e)\n", label, err, mx, rel, tol);
    CHECK_MSG(rel <= tol, "%s: rel error %.3e > %.0e (worst [%lld] got %.7g want %.7g)", label, rel, tol,
              (long long)wi, g[wi], e[wi]);
    ap_tensor_release(r);
    return rel;
}

/* ------------------------------------------------------------ the model */
static ap_sd_model *make_model(ap_ctx *c, ap_dtype wdt, uint64_t seed) {
    ap_sd_config cfg;
    ap_sd_model *m = NULL;
    if (ap_sd_preset(c, "tiny", &cfg) != AP_OK || ap_sd_create(c, &cfg, wdt, &m) != AP_OK ||
        ap_sd_init_random(c, m, seed) != AP_OK) {
        CHECK_MSG(0, "tiny model: %s", ap_last_error(c));
        ap_sd_free(m);
        return NULL;
    }
    return m;
}

static int by_name(const void *a, const void *b) {
    return strcmp((*(const ap_param *const *)a)->name, (*(const ap_param *const *)b)->name);
}

/* CRC-32 of a component as gen_sd.py computes it: sorted names, each name then its f32 bytes. */
static uint32_t params_crc(const ap_params *ps) {
    const ap_param **v = malloc(sizeof *v * (size_t)ps->n);
    for (int i = 0; i < ps->n; i++) v[i] = &ps->p[i];
    qsort(v, (size_t)ps->n, sizeof *v, by_name);
    uLong crc = crc32(0L, Z_NULL, 0);
    for (int i = 0; i < ps->n; i++) {
        crc = crc32(crc, (const Bytef *)v[i]->name, (uInt)strlen(v[i]->name));
        crc = crc32(crc, ap_tensor_cdata(v[i]->t), (uInt)ap_tensor_nbytes(v[i]->t));
    }
    free(v);
    return (uint32_t)crc;
}

static void test_weights(ap_ctx *c, const fixture *f, ap_sd_model *m) {
    const ap_params *ps[3] = {&m->unet->params, &m->vae->params, &m->text->params};
    const char *nm[3] = {"unet", "vae", "text_encoder"};
    for (int i = 0; i < 3; i++) {
        char key[64];
        snprintf(key, sizeof key, "crc_%s", nm[i]);
        const char *want = ap_st_metadata(f->st, key);
        snprintf(key, sizeof key, "params_%s", nm[i]);
        const char *count = ap_st_metadata(f->st, key);
        char got[16];
        snprintf(got, sizeof got, "%08x", params_crc(ps[i]));
        CHECK_MSG(want && !strcmp(want, got), "%s weights CRC %s, the reference's %s: the tiny model's "
                  "initialisation changed (regenerate with make fixtures)", nm[i], got, want ? want : "(none)");
        CHECK_MSG(count && atoll(count) == ap_params_count(ps[i]), "%s: %lld parameters, the reference %s", nm[i],
                  (long long)ap_params_count(ps[i]), count ? count : "(none)");
    }
    (void)c;
}

/* ------------------------------------------------------------ forward agreement */
static void test_text(ap_ctx *c, const fixture *f, ap_sd_model *m, double tol) {
    ap_tensor *ids = fx(c, f, "text.ids", AP_I64), *ref = fx(c, f, "text.out", AP_F32);
    ap_tensor *out = ap_clip_text_forward(c, m->text, ids, 0);
    CHECK_OK(c);
    compare("text encoder [2,77,32]", out, ref, 0, tol);
    ap_tensor_release(ids);
    ap_tensor_release(ref);
    ap_tensor_release(out);
}

static void test_tokens(ap_ctx *c, const fixture *f, ap_sd_model *m) {
    /* the reference's ids are the spec's test vectors; our tokenizer must give them */
    ap_tensor *ids = fx(c, f, "text.ids", AP_I32);
    const char *prompts[2] = {"", ap_st_metadata(f->st, "ddim.prompt")};
    for (int i = 0; i < 2 && ids && prompts[i]; i++) {
        int32_t got[77];
        CHECK(ap_tokenize_seq(c, m->tok, prompts[i], NULL, got, NULL) == AP_OK);
        CHECK_MSG(!memcmp(got, (const int32_t *)ap_tensor_cdata(ids) + 77 * i, sizeof got), "tokens of '%s'",
                  prompts[i]);
    }
    ap_tensor_release(ids);
}

static void test_unet(ap_ctx *c, const fixture *f, ap_sd_model *m, double tol) {
    ap_tensor *x0 = fx(c, f, "unet.x", AP_F32), *t = fx(c, f, "unet.t", AP_F32);
    ap_tensor *ctx = fx(c, f, "text.out", AP_F32), *ref = fx(c, f, "unet.out", AP_F32);
    ap_tensor *x = x0 ? to_nhwc(c, x0) : NULL;
    ap_tensor *out = ap_unet_forward(c, m->unet, x, t, ctx);
    CHECK_OK(c);
    compare("unet [2,16,12,4]", out, ref, 1, tol);
    ap_tensor *ts[] = {x0, x, t, ctx, ref, out};
    for (int i = 0; i < 6; i++) ap_tensor_release(ts[i]);
}

static void test_vae(ap_ctx *c, const fixture *f, ap_sd_model *m, double tol) {
    ap_tensor *z0 = fx(c, f, "vae.dec.latent", AP_F32), *ref = fx(c, f, "vae.dec.image", AP_F32);
    ap_tensor *z = z0 ? to_nhwc(c, z0) : NULL;
    ap_tensor *img = ap_vae_decode(c, m->vae, z);
    CHECK_OK(c);
    compare("vae decode [2,20,12,3]", img, ref, 1, tol);
    ap_tensor *i0 = fx(c, f, "vae.enc.image", AP_F32), *mref = fx(c, f, "vae.enc.moments", AP_F32);
    ap_tensor *im = i0 ? to_nhwc(c, i0) : NULL;
    ap_tensor *mom = ap_vae_encode_moments(c, m->vae, im);
    CHECK_OK(c);
    compare("vae encode moments [1,8,6,8]", mom, mref, 1, tol);
    ap_tensor *ts[] = {z0, z, ref, img, i0, mref, im, mom};
    for (int i = 0; i < 8; i++) ap_tensor_release(ts[i]);
}

static ap_tensor *load_dump(ap_ctx *c, const char *dir, const char *name) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s.safetensors", dir, name);
    ap_safetensors *st = NULL;
    ap_tensor *t = NULL;
    if (ap_st_open(c, p, &st) == AP_OK) ap_st_load(c, st, name, AP_F32, &t);
    CHECK_MSG(t != NULL, "dump %s: %s", p, ap_last_error(c));
    ap_st_close(st);
    return t;
}

static void rm_dir(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *e;
    char p[512];
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    if (d) closedir(d);
    rmdir(dir);
}

/* The whole txt2img pipeline: tokenizer, text encoder, torch-compatible
 * initial noise, batched guidance, DDIM, VAE decode; the dump gives the
 * latents of every step. */
static void test_ddim(ap_ctx *c, const fixture *f, ap_sd_model *m, double tol_text, double tol) {
    const char *meta_w = ap_st_metadata(f->st, "ddim.width"), *meta_h = ap_st_metadata(f->st, "ddim.height");
    const char *meta_s = ap_st_metadata(f->st, "ddim.seed"), *meta_n = ap_st_metadata(f->st, "ddim.steps");
    const char *meta_g = ap_st_metadata(f->st, "ddim.cfg");
    CHECK(meta_w && meta_h && meta_s && meta_n && meta_g);
    if (!(meta_w && meta_h && meta_s && meta_n && meta_g)) return;
    char dir[] = "/tmp/ap_sd_ddim_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    ap_txt2img_opts o;
    ap_txt2img_defaults(&o);
    o.prompt = ap_st_metadata(f->st, "ddim.prompt");
    o.negative = "";
    o.steps = atoi(meta_n);
    o.cfg = (float)atof(meta_g);
    o.eta = 0;
    o.sampler = AP_SAMPLER_DDIM;
    o.seed = strtoull(meta_s, NULL, 10);
    o.width = atoi(meta_w);
    o.height = atoi(meta_h);
    o.dump_dir = dir;
    ap_tensor *img = NULL;
    CHECK(ap_txt2img(c, m, &o, &img) == AP_OK);
    CHECK_OK(c);
    ap_tensor *ref = fx(c, f, "text.out", AP_F32);
    ap_tensor *emb = load_dump(c, dir, "text_embeddings");
    compare("ddim: text embeddings", emb, ref, 0, tol_text);
    ap_tensor_release(ref);
    ap_tensor_release(emb);
    /* initial noise: the dump is NCHW, as the reference */
    ref = fx(c, f, "ddim.init", AP_F32);
    ap_tensor *init = load_dump(c, dir, "latents_init");
    compare("ddim: initial latents", init, ref, 0, 1e-6);
    ap_tensor_release(ref);
    ap_tensor_release(init);
    ap_tensor *lat = fx(c, f, "ddim.latents", AP_F32);
    for (int i = 0; lat && i < o.steps; i++) {
        char nm[32], label[64];
        snprintf(nm, sizeof nm, "latents_%03d", i + 1);
        ap_tensor *got = load_dump(c, dir, nm);
        int64_t per = ap_tensor_numel(lat) / o.steps;
        ap_tensor *r = ap_tensor_from_data(c, AP_F32, 4,
                                           (int64_t[]){ap_tensor_dim(lat, 1), ap_tensor_dim(lat, 2),
                                                       ap_tensor_dim(lat, 3), ap_tensor_dim(lat, 4)},
                                           (const float *)ap_tensor_cdata(lat) + per * i);
        snprintf(label, sizeof label, "ddim: latents after step %d", i + 1);
        compare(label, got, r, 0, tol);
        ap_tensor_release(got);
        ap_tensor_release(r);
    }
    ap_tensor_release(lat);
    ref = fx(c, f, "ddim.image", AP_F32);
    compare("ddim: decoded image [1,32,24,3]", img, ref, 1, tol);
    ap_tensor_release(ref);
    ap_tensor_release(img);
    rm_dir(dir);
}

/* A one-shot call that frees each stage when done gives the same image and
 * leaves a model that refuses to sample again. */
static void test_release(ap_ctx *c, ap_sd_model *m, uint64_t seed) {
    ap_txt2img_opts o;
    ap_txt2img_defaults(&o);
    o.prompt = "a red circle";
    o.steps = 2;
    o.width = 24;
    o.height = 32;
    ap_tensor *a = NULL, *b = NULL;
    CHECK(ap_txt2img(c, m, &o, &a) == AP_OK);
    ap_sd_model *m2 = make_model(c, AP_F32, seed);
    size_t before = ap_mem_in_use(c);
    o.release_models = true;
    CHECK(m2 && ap_txt2img(c, m2, &o, &b) == AP_OK);
    CHECK(a && b && ap_tensor_nbytes(a) == ap_tensor_nbytes(b) && !memcmp(ap_tensor_cdata(a), ap_tensor_cdata(b), ap_tensor_nbytes(a)));
    CHECK(m2 && m2->text == NULL && m2->unet == NULL && m2->vae != NULL);
    CHECK_MSG(ap_mem_in_use(c) < before, "the released weights are freed (%zu -> %zu)", before, ap_mem_in_use(c));
    ap_tensor *again = NULL;
    CHECK(m2 && ap_txt2img(c, m2, &o, &again) == AP_ERR_STATE && again == NULL && strstr(ap_last_error(c), "released"));
    ap_clear_error(c);
    ap_tensor_release(a);
    ap_tensor_release(b);
    ap_sd_free(m2);
}

/* ------------------------------------------------------------ errors */
static void expect_error(ap_ctx *c, ap_tensor *y, const char *what, const char *needle) {
    CHECK_MSG(y == NULL, "%s: expected an error", what);
    CHECK_MSG(ap_last_status(c) != AP_OK && strstr(ap_last_error(c), needle), "%s: error '%s' should name '%s'",
              what, ap_last_error(c), needle);
    ap_tensor_release(y);
    ap_clear_error(c);
}

static void test_errors(ap_ctx *c, ap_sd_model *m) {
    ap_tensor *x3 = ap_tensor_zeros(c, AP_F32, 4, (int64_t[]){1, 8, 8, 3});
    ap_tensor *x = ap_tensor_zeros(c, AP_F32, 4, (int64_t[]){1, 8, 8, 4});
    ap_tensor *x_odd = ap_tensor_zeros(c, AP_F32, 4, (int64_t[]){1, 7, 8, 4});
    ap_tensor *x2 = ap_tensor_zeros(c, AP_F32, 4, (int64_t[]){2, 8, 8, 4});
    ap_tensor *t = ap_tensor_zeros(c, AP_F32, 1, (int64_t[]){1});
    ap_tensor *ctx = ap_tensor_zeros(c, AP_F32, 3, (int64_t[]){1, 5, 32});
    ap_tensor *ctx_w = ap_tensor_zeros(c, AP_F32, 3, (int64_t[]){1, 5, 16});
    expect_error(c, ap_unet_forward(c, m->unet, x3, t, ctx), "unet 3-channel latent", "unet");
    expect_error(c, ap_unet_forward(c, m->unet, x, t, ctx_w), "unet context width", "ctx");
    expect_error(c, ap_unet_forward(c, m->unet, x2, t, ctx), "unet batch mismatch", "unet");
    expect_error(c, ap_unet_forward(c, m->unet, x_odd, t, ctx), "unet odd latent", "multiple of 2");
    expect_error(c, ap_unet_forward(c, m->unet, x, NULL, ctx), "unet without t", "unet");
    expect_error(c, ap_vae_decode(c, m->vae, x3), "vae decode 3 channels", "vae decode");
    expect_error(c, ap_vae_encode_moments(c, m->vae, x), "vae encode 4 channels", "vae encode");
    ap_tensor *img_odd = ap_tensor_zeros(c, AP_F32, 4, (int64_t[]){1, 7, 8, 3});
    expect_error(c, ap_vae_encode_moments(c, m->vae, img_odd), "vae encode odd size", "multiples of 2");
    ap_tensor *ids = ap_tensor_zeros(c, AP_I32, 2, (int64_t[]){1, 78});
    expect_error(c, ap_clip_text_forward(c, m->text, ids, 0), "clip text 78 tokens", "T <= 77");
    ap_tensor *ids1 = ap_tensor_zeros(c, AP_I32, 2, (int64_t[]){1, 4});
    expect_error(c, ap_clip_text_forward(c, m->text, ids1, 2), "clip skip 2 of 2 layers", "clip skip");
    /* errors are sticky: a model call after a failure returns NULL at once */
    ap_unet_forward(c, m->unet, x3, t, ctx);
    ap_tensor *y = ap_vae_decode(c, m->vae, x);
    CHECK(y == NULL && ap_last_status(c) != AP_OK);
    ap_tensor_release(y);
    ap_clear_error(c);
    ap_tensor *ts[] = {x3, x, x_odd, x2, t, ctx, ctx_w, img_odd, ids, ids1};
    for (int i = 0; i < 10; i++) ap_tensor_release(ts[i]);
}

/* ------------------------------------------------------------ gradients */
/* Makes parameter `name` a trainable f32 leaf (converting it from the model's
 * weight dtype), in the registry and in the layer that uses it. */
static ap_tensor *make_trainable(ap_ctx *c, ap_params *ps, const char *name, ap_tensor **slot) {
    ap_param *p = ap_params_find(ps, name);
    CHECK_MSG(p && *slot == p->t, "parameter %s", name);
    if (!p || *slot != p->t) return NULL;
    ap_tensor *t = ap_tensor_convert(c, p->t, AP_F32);
    if (!t) return NULL;
    ap_tensor_set_name(t, name);
    ap_tensor_set_requires_grad(t, 1);
    ap_tensor_release(p->t);
    p->t = t;
    *slot = t;
    return t;
}

/* The UNet on fixed inputs; the leaves checked are whatever the caller lists
 * (inputs and parameters alike). */
typedef struct {
    const ap_unet *u;
    ap_tensor *x, *t, *ctx;
} unet_gc;

static ap_tensor *unet_fn(ap_ctx *c, void *user, int n, ap_tensor **in) {
    unet_gc *g = user;
    (void)n;
    (void)in;
    return ap_unet_forward(c, g->u, g->x, g->t, g->ctx);
}

static ap_tensor *vae_fn(ap_ctx *c, void *user, int n, ap_tensor **in) {
    (void)n;
    return ap_vae_decode(c, user, in[0]);
}

typedef struct {
    const ap_clip_text *m;
    ap_tensor *ids;
} text_gc;

static ap_tensor *text_fn(ap_ctx *c, void *user, int n, ap_tensor **in) {
    text_gc *g = user;
    (void)n;
    (void)in;
    return ap_clip_text_forward(c, g->m, g->ids, 0);
}

static void fill_normal(ap_tensor *t, test_rng *r, double scale) {
    float *d = ap_tensor_data(t);
    for (int64_t i = 0; i < ap_tensor_numel(t); i++) d[i] = (float)(scale * test_rng_normal(r));
    ap_tensor_touch(t);
}

/* UNet: w.r.t. the latent, the text context, an attention to_q weight, a conv
 * weight (both made f32 leaves of a bf16-weight model), and a LoRA pair on an
 * attention output projection.
 *
 * The forward is f32, so the loss carries noise of about 1e-6 of its value
 * (measured: ~5e-6 on a loss of ~5), which a central difference divides by
 * 2 eps. The latent, context and conv weight have large gradients but feel a
 * large eps (the conv weights are only ~0.06 in magnitude: eps 5e-2 is off by
 * 7% on some elements), so they take eps 2e-2; the to_q and LoRA gradients
 * are 10-100x smaller and drown in the noise below eps ~3e-2, so they take
 * 8e-2 (worst ratios measured then: 0.07-0.37 and 0.16-0.28 of the
 * tolerance). */
static void test_unet_grad(ap_ctx *c, uint64_t seed) {
    ap_sd_model *m = make_model(c, AP_BF16, seed);
    if (!m) return;
    ap_unet *u = m->unet;
    test_rng r = {seed * 7 + 3};
    ap_tensor *wq = make_trainable(c, &u->params, "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight",
                                   &u->up[1].attns[0].block.attn1.to_q.w);
    ap_tensor *wc = make_trainable(c, &u->params, "down_blocks.1.resnets.0.conv1.weight",
                                   &u->down[1].resnets[0].conv1.w);
    ap_lora lora = {.scale = 0.5f};
    ap_linear_layer *lq = &u->down[0].attns[0].block.attn1.to_out;
    lora.down = test_rand_leaf(c, &r, 2, (int64_t[]){2, lq->in}, -0.3f, 0.3f);
    lora.up = test_rand_leaf(c, &r, 2, (int64_t[]){lq->out, 2}, -0.3f, 0.3f);
    ap_tensor_set_name(lora.down, "lora.down");
    ap_tensor_set_name(lora.up, "lora.up");
    lq->lora = &lora;
    ap_tensor *x = ap_tensor_new(c, AP_F32, 4, (int64_t[]){1, 8, 8, 4});
    ap_tensor *ctx = ap_tensor_new(c, AP_F32, 3, (int64_t[]){1, 5, 32});
    fill_normal(x, &r, 1.0);
    fill_normal(ctx, &r, 1.0);
    ap_tensor_set_requires_grad(x, 1);
    ap_tensor_set_requires_grad(ctx, 1);
    ap_tensor_set_name(x, "x");
    ap_tensor_set_name(ctx, "ctx");
    ap_tensor *t = ap_tensor_from_data(c, AP_F32, 1, (int64_t[]){1}, (float[]){501.0f});
    unet_gc g = {u, x, t, ctx};
    CHECK_OK(c);
    ap_tensor *in1[] = {x, ctx, wc};
    gc_opts o1 = {.eps = 2e-2, .rtol = 2e-2, .atol = 2e-3, .max_elems = 24, .seed = 11, .verbose = 1};
    gradcheck(c, "unet", unet_fn, &g, 3, in1, &o1);
    ap_tensor *in2[] = {wq, lora.down, lora.up};
    gc_opts o2 = {.eps = 8e-2, .rtol = 2e-2, .atol = 2e-3, .max_elems = 24, .seed = 14, .verbose = 1};
    gradcheck(c, "unet", unet_fn, &g, 3, in2, &o2);
    CHECK_OK(c);
    /* frozen weights got nothing */
    CHECK(ap_tensor_grad(u->down[1].resnets[0].conv2.w) == NULL);
    CHECK(ap_tensor_grad(u->up[1].attns[0].block.attn1.to_k.w) == NULL);
    lq->lora = NULL;
    ap_tensor *ts[] = {x, ctx, t, lora.down, lora.up};
    for (int i = 0; i < 5; i++) ap_tensor_release(ts[i]);
    ap_sd_free(m);
}

static void test_vae_grad(ap_ctx *c, uint64_t seed) {
    ap_sd_model *m = make_model(c, AP_F32, seed);
    if (!m) return;
    test_rng r = {seed * 7 + 5};
    ap_tensor *z = ap_tensor_new(c, AP_F32, 4, (int64_t[]){1, 8, 8, 4});
    fill_normal(z, &r, 1.0);
    ap_tensor_set_requires_grad(z, 1);
    ap_tensor_set_name(z, "latent");
    ap_tensor *in[] = {z};
    gc_opts o = {.eps = 1e-2, .rtol = 2e-2, .atol = 2e-3, .max_elems = 48, .seed = 12, .verbose = 1};
    gradcheck(c, "vae decoder", vae_fn, m->vae, 1, in, &o);
    CHECK_OK(c);
    ap_tensor_release(z);
    ap_sd_free(m);
}

static void test_text_grad(ap_ctx *c, uint64_t seed) {
    ap_sd_model *m = make_model(c, AP_F32, seed);
    if (!m) return;
    ap_clip_text *tm = m->text;
    ap_tensor *wq = make_trainable(c, &tm->params, "text_model.encoder.layers.0.self_attn.q_proj.weight",
                                   &tm->layer[0].attn.to_q.w);
    ap_tensor *w1 = make_trainable(c, &tm->params, "text_model.encoder.layers.1.mlp.fc1.weight", &tm->layer[1].fc1.w);
    int32_t id[7] = {49406, 320, 1125, 539, 320, 2368, 49407};
    text_gc g = {tm, ap_tensor_from_data(c, AP_I32, 2, (int64_t[]){1, 7}, id)};
    ap_tensor *in[] = {wq, w1};
    gc_opts o = {.eps = 1e-2, .rtol = 2e-2, .atol = 2e-3, .max_elems = 48, .seed = 13, .verbose = 1};
    gradcheck(c, "text encoder", text_fn, &g, 2, in, &o);
    CHECK_OK(c);
    ap_tensor_release(g.ids);
    ap_sd_free(m);
}

int main(void) {
    ap_ctx *c = test_ctx();
    fixture f = {0};
    if (ap_st_open(c, test_path(FIXTURE), &f.st) != AP_OK) {
        fprintf(stderr, "cannot open the fixture: %s\n", ap_last_error(c));
        return 1;
    }
    const char *seed = ap_st_metadata(f.st, "seed");
    CHECK(seed != NULL);
    f.seed = seed ? strtoull(seed, NULL, 10) : 1;

    printf("f32 (tolerance %.0e of max|ref|):\n", TOL_F32);
    ap_sd_model *m = make_model(c, AP_F32, f.seed);
    if (m) {
        test_weights(c, &f, m);
        test_tokens(c, &f, m);
        test_text(c, &f, m, TOL_F32);
        test_unet(c, &f, m, TOL_F32);
        test_vae(c, &f, m, TOL_F32);
        test_ddim(c, &f, m, TOL_F32, TOL_F32);
        test_release(c, m, f.seed);
        test_errors(c, m);
    }
    ap_sd_free(m);

    /* bf16 runs on every CPU (in hardware where ap_cpu_has_bf16()) */
    printf("bf16 weights, AP_PREC_BF16 (tolerance %.0e, DDIM %.0e; bf16 hardware: %d):\n", TOL_BF16, TOL_BF16_DDIM,
           ap_cpu_has_bf16());
    ap_set_precision(c, AP_PREC_BF16);
    m = make_model(c, AP_BF16, f.seed);
    if (m) {
        test_text(c, &f, m, TOL_BF16);
        test_unet(c, &f, m, TOL_BF16);
        test_vae(c, &f, m, TOL_BF16);
        test_ddim(c, &f, m, TOL_BF16, TOL_BF16_DDIM);
    }
    ap_sd_free(m);
    ap_set_precision(c, AP_PREC_F32);

    printf("gradient checks:\n");
    test_unet_grad(c, f.seed);
    test_vae_grad(c, f.seed);
    test_text_grad(c, f.seed);

    ap_st_close(f.st);
    ap_ctx_free(c);
    return test_summary("test_sd_models");
}
