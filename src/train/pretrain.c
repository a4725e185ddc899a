/* Pretraining from scratch: the VAE stage, the latent scale factor, and the
 * UNet + text encoder stage. Every step draws its noise from a generator
 * seeded by (seed, stage, step) and its images from the data stream at
 * positions fixed by the step, so a checkpoint needs only the weights, the
 * optimizer and the step to continue bit for bit. */
#include "train/pretrain.h"

#include "core/internal.h"
#include "diffusion/rng.h"
#include "diffusion/schedule.h"
#include "io/json.h"
#include "models/sd.h"
#include "pipeline/txt2img.h"
#include "train/checkpoint.h"
#include "train/optim.h"
#include "train/shapes.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>

void ap_pretrain_defaults(ap_pretrain_opts *o) {
    memset(o, 0, sizeof *o);
    o->config = "shapes64";
    o->data = "toy";
    o->image_size = 64;
    o->stage = AP_STAGE_ALL;
    o->out_dir = "runs/pretrain";
    o->vae_steps = 1000;
    o->unet_steps = 1000;
    o->batch = 16;
    o->vae_lr = o->unet_lr = 5e-4;
    o->warmup = 100;
    o->weight_decay = 0.01;
    o->clip = 1.0;
    o->kl_weight = 1e-6;
    o->caption_dropout = 0.1f;
    o->scale_batches = 8;
    o->save_dtype = AP_F32;
    o->save_every = 100;
    o->keep_checkpoints = 2;
}

int ap_pretrain_stage_parse(const char *s) {
    if (!s) return 0;
    if (!strcmp(s, "vae")) return AP_STAGE_VAE;
    if (!strcmp(s, "unet")) return AP_STAGE_UNET;
    if (!strcmp(s, "all")) return AP_STAGE_ALL;
    return 0;
}

static const char *stage_name(ap_pretrain_stage s) {
    return s == AP_STAGE_VAE ? "vae" : s == AP_STAGE_UNET ? "unet" : "all";
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* ------------------------------------------------------------ the toy stream */
ap_status ap_pretrain_toy_data(ap_ctx *c, void *user, uint64_t index, int size, float *rgb, char *caption,
                               size_t cap) {
    static const char *const COLOR[3] = {"red", "green", "blue"};
    static const float RGB[3][3] = {{0.9f, -0.8f, -0.8f}, {-0.8f, 0.8f, -0.8f}, {-0.8f, -0.8f, 0.9f}};
    uint64_t h = mix64(*(const uint64_t *)user * 0x9e3779b97f4a7c15ull + index + 1);
    int color = (int)(h % 3), square = (int)((h >> 8) & 1);
    double r = size * (0.18 + 0.14 * (double)((h >> 16) & 255) / 255.0);
    double cx = r + (size - 2 * r) * (double)((h >> 24) & 255) / 255.0;
    double cy = r + (size - 2 * r) * (double)((h >> 32) & 255) / 255.0;
    for (int y = 0; y < size; y++)
        for (int x = 0; x < size; x++) {
            double dx = x + 0.5 - cx, dy = y + 0.5 - cy;
            bool in = square ? fabs(dx) <= r * 0.85 && fabs(dy) <= r * 0.85 : dx * dx + dy * dy <= r * r;
            for (int k = 0; k < 3; k++) rgb[((size_t)y * size + x) * 3 + k] = in ? RGB[color][k] : 0.1f;
        }
    snprintf(caption, cap, "a %s %s", COLOR[color], square ? "square" : "circle");
    (void)c;
    return AP_OK;
}

/* The captioned shapes dataset (docs/data.md), stream `seed`. */
static ap_status shapes_data(ap_ctx *c, void *user, uint64_t index, int size, float *rgb, char *caption, size_t cap) {
    if (size != AP_SHAPES_SIZE)
        return ap_seterr(c, AP_ERR_INVALID_ARG, "pretrain: the shapes dataset is %dx%d, not %dx%d", AP_SHAPES_SIZE,
                         AP_SHAPES_SIZE, size, size);
    ap_shapes_item it;
    ap_shapes_item_make(*(const uint64_t *)user, index, &it);
    ap_shapes_render_f32(&it, rgb);
    snprintf(caption, cap, "%s", it.caption);
    return AP_OK;
}

/* ------------------------------------------------------------ the VAE's sample and KL */
static void vae_sample_kl_backward(ap_ctx *c, ap_node *n) {
    float beta;
    ap_tensor *gm = ap_grad_acc(c, n, 0, &beta);
    if (!gm) return;
    const ap_tensor *gz_t = ap_node_gout(n, 0), *gk_t = ap_node_gout(n, 1);
    const float *mo = ap_cf32(n->saved[0]);               // [P, 2z]
    const float *eps = ap_cf32(n->saved[1]);              // [P, z]
    const float *gz = gz_t ? ap_cf32(gz_t) : NULL;        // [P, z]
    float gk = gk_t ? ap_cf32(gk_t)[0] / (float)n->i[2] : 0.0f; /* d loss / d kl, over the batch mean */
    int64_t P = n->i[0], Z = n->i[1];
    float *g = ap_f32(gm); // [P, 2z]
#pragma omp parallel for schedule(static) if (P * Z > 32768)
    for (int64_t p = 0; p < P; p++)
        for (int64_t k = 0; k < Z; k++) {
            float m = mo[p * 2 * Z + k], lv = mo[p * 2 * Z + Z + k];
            bool inside = lv >= -30.0f && lv <= 20.0f;
            float lvc = fminf(fmaxf(lv, -30.0f), 20.0f);
            float sd = expf(0.5f * lvc), var = sd * sd;
            float dz = gz ? gz[p * Z + k] : 0.0f;
            float dm = dz + gk * m;
            float dlv = inside ? dz * 0.5f * sd * eps[p * Z + k] + gk * 0.5f * (var - 1.0f) : 0.0f;
            float *gm_p = g + p * 2 * Z;
            if (beta == 0.0f) {
                gm_p[k] = dm;
                gm_p[Z + k] = dlv;
            } else {
                gm_p[k] += dm;
                gm_p[Z + k] += dlv;
            }
        }
}

ap_tensor *ap_vae_sample_kl(ap_ctx *c, ap_tensor *moments, ap_tensor *noise, ap_tensor **kl) {
    *kl = NULL;
    if (!ap_check_input(c, "vae_sample_kl", "moments", moments, AP_F32) ||
        !ap_check_input(c, "vae_sample_kl", "noise", noise, AP_F32))
        return NULL;
    char a[64], b[64];
    int64_t C = moments->shape[moments->ndim - 1];
    if (moments->ndim != 4 || noise->ndim != 4 || C % 2 || noise->shape[3] != C / 2 ||
        noise->shape[0] != moments->shape[0] || noise->shape[1] != moments->shape[1] ||
        noise->shape[2] != moments->shape[2]) {
        ap_seterr(c, AP_ERR_SHAPE, "vae_sample_kl: moments %s and noise %s: expected [N,h,w,2z] and [N,h,w,z]",
                  ap_shape_str(moments, a, sizeof a), ap_shape_str(noise, b, sizeof b));
        return NULL;
    }
    int64_t N = moments->shape[0], Z = C / 2, P = moments->numel / C;
    ap_tensor *z = ap_tensor_new_shape(c, AP_F32, 4, noise->shape);
    ap_tensor *k = ap_tensor_new_shape(c, AP_F32, 1, (int64_t[]){1});
    if (!z || !k) {
        ap_tensor_release(z);
        ap_tensor_release(k);
        return NULL;
    }
    const float *mo = ap_cf32(moments), *e = ap_cf32(noise); // [P,2z], [P,z]
    float *pz = ap_f32(z);                                    // [P,z]
    double s = 0; /* sequential: the same sum whatever the thread count */
    for (int64_t p = 0; p < P; p++)
        for (int64_t j = 0; j < Z; j++) {
            float m = mo[p * 2 * Z + j], lv = fminf(fmaxf(mo[p * 2 * Z + Z + j], -30.0f), 20.0f);
            float sd = expf(0.5f * lv);
            pz[p * Z + j] = m + sd * e[p * Z + j];
            s += 0.5 * ((double)m * m + (double)sd * sd - 1.0 - lv);
        }
    ap_f32(k)[0] = (float)(s / (double)N);
    ap_node *n = ap_node_begin(c, "vae_sample_kl", vae_sample_kl_backward, 1, &moments);
    if (n) {
        n->i[0] = P;
        n->i[1] = Z;
        n->i[2] = N;
        ap_node_save(n, 0, moments);
        ap_node_save(n, 1, noise);
        ap_node_output(n, 0, z);
        ap_node_output(n, 1, k);
    }
    *kl = k;
    return z;
}

/* ------------------------------------------------------------ a run */
typedef struct {
    ap_ctx *c;
    const ap_pretrain_opts *o;
    ap_pretrain_data_fn data;
    void *data_user;
    uint64_t data_seed;
    ap_sd_model *m;
    ap_schedule sched;
    FILE *log;
    int64_t total; /* vae steps + unet steps of the stages that run */
    int64_t vae_end; /* last global step of the VAE stage (0 when it does not run) */
    /* The scale factor the VAE stage decodes with (the model's at the start of
     * the run: the latent is multiplied by it and the decoder divides it out,
     * with f32 roundings that a continuation must repeat). The measured one
     * replaces it in the model at the stage's end. */
    float vae_train_sf;
} run;

static float scalar(const ap_tensor *t) { return t ? ap_cf32(t)[0] : NAN; }

/* A batch of images [B,S,S,3] from the stream at positions base..base+B-1, and their captions. */
static ap_tensor *load_batch(run *r, uint64_t base, char (*caps)[256]) {
    ap_ctx *c = r->c;
    int S = r->o->image_size, B = r->o->batch;
    ap_tensor *img = ap_tensor_new(c, AP_F32, 4, (int64_t[]){B, S, S, 3});
    if (!img) return NULL;
    char dummy[256];
    for (int i = 0; i < B && !ap_failed(c); i++)
        r->data(c, r->data_user, base + (uint64_t)i, S, ap_f32(img) + (size_t)i * S * S * 3, caps ? caps[i] : dummy,
                256);
    if (ap_failed(c)) ap_drop(&img);
    return img;
}

/* Stream positions: each stage reads its own range, so the stages see different images. */
static uint64_t stream_base(int stage, int64_t stage_step, int batch) {
    return ((uint64_t)stage << 40) + (uint64_t)(stage_step - 1) * (uint64_t)batch;
}

static void step_rng(ap_rng *g, uint64_t seed, int stage, int64_t step) {
    ap_rng_init(g, mix64(seed * 0x100000001b3ull + (uint64_t)stage * 0x9e3779b97f4a7c15ull + (uint64_t)step) &
                       0xffffffffu);
}

static double lr_at(const ap_pretrain_opts *o, double lr, int64_t stage_step) {
    return o->warmup > 0 && stage_step <= o->warmup ? lr * (double)stage_step / o->warmup : lr;
}

static int collect_params(ap_params *ps, ap_tensor **out, int n, bool on) {
    for (int i = 0; i < ps->n; i++) {
        ap_tensor_set_requires_grad(ps->p[i].t, on);
        if (out) out[n + i] = ps->p[i].t;
    }
    return n + ps->n;
}

/* Latent moments of images without recording; z sampled with noise from g. */
static ap_tensor *encode_latents(run *r, ap_tensor *img, ap_rng *g) {
    ap_ctx *c = r->c;
    int prev = ap_set_grad_enabled(c, 0);
    ap_tensor *mo = ap_vae_encode_moments(c, r->m->vae, img);
    ap_tensor *z = NULL, *kl = NULL;
    if (mo) {
        int64_t N = mo->shape[0], h = mo->shape[1], w = mo->shape[2], zc = mo->shape[3] / 2;
        ap_tensor *e = ap_tensor_new(c, AP_F32, 4, (int64_t[]){N, h, w, zc});
        if (e) ap_rng_randn_nhwc(g, ap_f32(e), N, h, w, zc);
        z = e ? ap_vae_sample_kl(c, mo, e, &kl) : NULL;
        ap_tensor_release(e);
    }
    ap_tensor_release(mo);
    ap_tensor_release(kl);
    ap_set_grad_enabled(c, prev);
    return z;
}

static ap_status vae_step(run *r, int64_t stage_step, double *loss, double *rec, double *kl_out) {
    ap_ctx *c = r->c;
    ap_rng g;
    step_rng(&g, r->o->seed, 1, stage_step);
    ap_tensor *img = load_batch(r, stream_base(1, stage_step, r->o->batch), NULL);
    ap_tensor *mo = ap_vae_encode_moments(c, r->m->vae, img);
    ap_tensor *e = NULL, *z = NULL, *kl = NULL, *zs = NULL, *out = NULL, *d = NULL, *ad = NULL, *l1 = NULL,
              *klw = NULL, *l = NULL;
    if (mo) {
        e = ap_tensor_new(c, AP_F32, 4, (int64_t[]){mo->shape[0], mo->shape[1], mo->shape[2], mo->shape[3] / 2});
        if (e) ap_rng_randn_nhwc(&g, ap_f32(e), mo->shape[0], mo->shape[1], mo->shape[2], mo->shape[3] / 2);
    }
    if (e) z = ap_vae_sample_kl(c, mo, e, &kl);
    /* the decoder divides by the scale factor; training sees the unscaled latent */
    if (z) zs = ap_scale(c, z, r->m->vae->cfg.scaling_factor);
    if (zs) out = ap_vae_decode(c, r->m->vae, zs);
    if (out) d = ap_sub(c, out, img);
    if (d) ad = ap_abs(c, d);
    if (ad) l1 = ap_mean(c, ad);
    /* optional squared error: its gradient grows with the error, so the few
     * pixels of a shape whose colour is wrong outweigh the many background
     * pixels that are nearly right (L1 weighs every pixel's sign alike) */
    ap_tensor *sq = NULL, *l2 = NULL, *rl = l1 ? ap_tensor_retain(l1) : NULL;
    if (d && r->o->l2_weight > 0) {
        sq = ap_square(c, d);
        if (sq) l2 = ap_mean(c, sq);
        rl = ap_swap(rl, l2 && rl ? ap_axpby(c, 1.0f, rl, (float)r->o->l2_weight, l2) : NULL);
    }
    /* SD's VAE: sum|x - x'| / N + w * KL / N; divided by the pixels per image to be a per-pixel mean */
    double pix = (double)r->o->image_size * r->o->image_size * 3;
    if (kl) klw = ap_scale(c, kl, (float)(r->o->kl_weight / pix));
    if (rl && klw) l = ap_add(c, rl, klw);
    if (l) ap_backward(c, l, NULL);
    *loss = scalar(l);
    *rec = scalar(l1);
    *kl_out = scalar(kl);
    ap_tensor *ts[] = {img, mo, e, z, kl, zs, out, d, ad, l1, klw, l, sq, l2, rl};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) ap_tensor_release(ts[i]);
    ap_tape_clear(c);
    return c->status;
}

static ap_status unet_step(run *r, int64_t stage_step, double *loss) {
    ap_ctx *c = r->c;
    const ap_pretrain_opts *o = r->o;
    ap_rng g;
    step_rng(&g, o->seed, 2, stage_step);
    int B = o->batch;
    char(*caps)[256] = malloc(sizeof *caps * (size_t)B);
    const char **pp = malloc(sizeof *pp * (size_t)B);
    if (!caps || !pp) {
        free(caps);
        free(pp);
        return ap_seterr(c, AP_ERR_NOMEM, "pretrain: out of memory");
    }
    ap_tensor *img = load_batch(r, stream_base(2, stage_step, B), caps);
    ap_tensor *x0 = img ? encode_latents(r, img, &g) : NULL, *eps = NULL, *xt = NULL, *t = NULL, *ids = NULL,
              *ctx = NULL, *pred = NULL, *d = NULL, *sq = NULL, *l = NULL;
    if (x0) {
        float sf = r->m->vae->cfg.scaling_factor;
        int64_t h = x0->shape[1], w = x0->shape[2], zc = x0->shape[3], per = h * w * zc;
        eps = ap_tensor_new(c, AP_F32, 4, x0->shape);
        xt = ap_tensor_new(c, AP_F32, 4, x0->shape);
        t = ap_tensor_new(c, AP_F32, 1, (int64_t[]){B});
        if (eps && xt && t) {
            ap_rng_randn_nhwc(&g, ap_f32(eps), B, h, w, zc);
            for (int i = 0; i < B; i++) {
                int ti = (int)(ap_rng_random(&g) % (uint32_t)r->sched.n);
                bool drop = (double)(ap_rng_random(&g) >> 8) * 0x1.0p-24 < o->caption_dropout;
                pp[i] = drop ? "" : caps[i];
                ap_f32(t)[i] = (float)ti;
                float a = sqrtf(r->sched.alphas_cumprod[ti]), s = sqrtf(1.0f - r->sched.alphas_cumprod[ti]);
                const float *px = ap_cf32(x0) + i * per, *pe = ap_cf32(eps) + i * per;
                float *py = ap_f32(xt) + i * per;
                for (int64_t k = 0; k < per; k++) py[k] = a * (sf * px[k]) + s * pe[k];
            }
        }
    }
    if (t) ids = ap_tokenize_prompts(c, r->m, B, pp);
    if (ids) ctx = ap_clip_text_forward(c, r->m->text, ids, 0);
    if (ctx) pred = ap_unet_forward(c, r->m->unet, xt, t, ctx);
    if (pred) d = ap_sub(c, pred, eps);
    if (d) sq = ap_square(c, d);
    if (sq) l = ap_mean(c, sq);
    if (l) ap_backward(c, l, NULL);
    *loss = scalar(l);
    ap_tensor *ts[] = {img, x0, eps, xt, t, ids, ctx, pred, d, sq, l};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) ap_tensor_release(ts[i]);
    ap_tape_clear(c);
    free(caps);
    free(pp);
    return c->status;
}

/* 1 / std of the sampled, unscaled latents of scale_batches batches (the
 * diffusers recipe for a VAE's scaling_factor), stored in the VAE's config. */
static ap_status measure_scale(run *r) {
    ap_ctx *c = r->c;
    double s = 0, s2 = 0;
    int64_t n = 0;
    for (int b = 1; b <= r->o->scale_batches && !ap_failed(c); b++) {
        ap_rng g;
        step_rng(&g, r->o->seed, 3, b);
        ap_tensor *img = load_batch(r, stream_base(3, b, r->o->batch), NULL);
        ap_tensor *z = img ? encode_latents(r, img, &g) : NULL;
        if (z) {
            const float *p = ap_cf32(z);
            for (int64_t i = 0; i < z->numel; i++) s += p[i], s2 += (double)p[i] * p[i];
            n += z->numel;
        }
        ap_tensor_release(img);
        ap_tensor_release(z);
    }
    if (ap_failed(c)) return c->status;
    double mean = s / (double)n, var = s2 / (double)n - mean * mean;
    if (!(var > 1e-20)) return ap_seterr(c, AP_ERR_STATE, "pretrain: the VAE's latents have no spread (std 0)");
    float sf = (float)(1.0 / sqrt(var));
    r->m->vae->cfg.scaling_factor = sf;
    r->m->cfg.vae.scaling_factor = sf;
    fprintf(r->log, "{\"step\": %lld, \"stage\": \"vae\", \"latent_mean\": %.6g, \"latent_std\": %.6g, "
                    "\"scaling_factor\": %.9g}\n",
            (long long)r->vae_end, mean, sqrt(var), (double)sf);
    fflush(r->log);
    return AP_OK;
}

/* ------------------------------------------------------------ config, checkpoints */
static ap_json *config_json(ap_ctx *c, const ap_pretrain_opts *o, const ap_sd_model *m) {
    ap_json *j = ap_json_new_object();
    ap_json_add_str(j, "alignprop_version", ap_version_string());
    ap_json_add_str(j, "config", o->init ? "" : o->config);
    ap_json_add_str(j, "init", o->init ? o->init : "");
    ap_json_add_str(j, "data", o->data_fn ? "custom" : o->data);
    ap_json_add_str(j, "stage", stage_name(o->stage));
    ap_json_add_int(j, "image_size", o->image_size);
    ap_json_add_int(j, "vae_steps", o->stage & AP_STAGE_VAE ? o->vae_steps : 0);
    ap_json_add_int(j, "unet_steps", o->stage & AP_STAGE_UNET ? o->unet_steps : 0);
    ap_json_add_int(j, "batch", o->batch);
    ap_json_add_num(j, "vae_lr", o->vae_lr);
    ap_json_add_num(j, "unet_lr", o->unet_lr);
    ap_json_add_int(j, "warmup", o->warmup);
    ap_json_add_num(j, "weight_decay", o->weight_decay);
    ap_json_add_num(j, "clip", o->clip);
    ap_json_add_num(j, "kl_weight", o->kl_weight);
    ap_json_add_num(j, "l2_weight", o->l2_weight);
    ap_json_add_num(j, "caption_dropout", o->caption_dropout);
    ap_json_add_int(j, "scale_batches", o->scale_batches);
    ap_json_add_int(j, "seed", (int64_t)o->seed);
    ap_json_add_str(j, "save_dtype", ap_dtype_name(o->save_dtype));
    ap_json_add_str(j, "precision", ap_get_precision(c) == AP_PREC_BF16 ? "bf16" : "f32");
    ap_json_add_int(j, "threads", ap_get_num_threads(c));
    if (m) {
        char *mc = ap_sd_config_json(&m->cfg);
        char err[128];
        ap_json *mj = mc ? ap_json_parse(mc, strlen(mc), err, sizeof err) : NULL;
        free(mc);
        if (mj) ap_json_add(j, "model", mj);
        ap_json_add_int(j, "parameters", ap_params_count(&m->unet->params) + ap_params_count(&m->vae->params) +
                                             ap_params_count(&m->text->params));
    }
    return j;
}

/* What a resumed run must share with its checkpoint (the learning rates,
 * warm-up, clip, weight decay and checkpoint settings may change; so may the
 * UNet's steps, and the VAE's while the checkpoint is inside the VAE stage:
 * nothing before a stage's end depends on its length). */
static const char *const COMPAT_KEYS[] = {"config", "init", "data", "stage", "image_size", "batch",
                                          "kl_weight", "caption_dropout", "scale_batches", "seed"};

static ap_status save_checkpoint(run *r, int64_t step, ap_adamw *opt) {
    ap_ctx *c = r->c;
    char tmp[4200], p[4400];
    ap_status st = ap_ckpt_begin(c, r->o->out_dir, step, tmp, sizeof tmp);
    if (st != AP_OK) return st;
    snprintf(p, sizeof p, "%s/model", tmp);
    st = ap_sd_save_diffusers(c, r->m, p);
    if (st == AP_OK && opt) {
        snprintf(p, sizeof p, "%s/optimizer.safetensors", tmp);
        st = ap_adamw_save(opt, p);
    }
    if (st == AP_OK) {
        ap_json *j = ap_json_new_object(), *cj = config_json(c, r->o, NULL);
        bool ok = j && cj && ap_json_add_int(j, "step", step) &&
                  ap_json_add_num(j, "vae_train_scaling_factor", r->vae_train_sf) && ap_json_add(j, "config", cj);
        if (!ok) {
            ap_json_free(cj);
            ap_seterr(c, AP_ERR_NOMEM, "out of memory");
        }
        st = ap_ckpt_commit(c, r->o->out_dir, step, tmp, r->o->keep_checkpoints, j);
        ap_json_free(j);
        return st;
    }
    ap_rm_tree(tmp);
    return st;
}

/* The newest checkpoint: checks its config against this run's, loads its
 * model (f32) into r->m and returns its step and directory. */
static ap_status load_checkpoint(run *r, int64_t *step, char *dir, size_t n) {
    ap_ctx *c = r->c;
    char p[4400];
    if (ap_ckpt_latest(c, r->o->out_dir, "pretrain", dir, n, step) != AP_OK) return c->status;
    snprintf(p, sizeof p, "%s/state.json", dir);
    ap_json *j = ap_json_load(c, p);
    if (!j) return c->status;
    const ap_json *saved = ap_json_get(j, "config");
    int64_t js = -1;
    ap_status st = AP_OK;
    if (!saved || !ap_json_int(ap_json_get(j, "step"), 0, INT64_MAX, &js) || js != *step)
        st = ap_seterr(c, AP_ERR_FORMAT, "%s: step or config missing", p);
    ap_json *cur = st == AP_OK ? config_json(c, r->o, NULL) : NULL;
    if (st == AP_OK)
        st = ap_ckpt_check_config(c, "pretrain", p, saved, cur, COMPAT_KEYS, (int)(sizeof COMPAT_KEYS / sizeof *COMPAT_KEYS));
    int64_t sv = 0, nv = r->vae_end;
    if (st == AP_OK && (!ap_json_int(ap_json_get(saved, "vae_steps"), 0, INT64_MAX, &sv) ||
                        (sv != nv && (*step > sv || *step > nv))))
        st = ap_seterr(c, AP_ERR_INVALID_ARG,
                       "pretrain --resume: the checkpoint %s (step %lld) was made with vae_steps = %lld, this run "
                       "has %lld: the VAE's steps can change only up to the end of the VAE stage",
                       p, (long long)*step, (long long)sv, (long long)nv);
    double tsf = 0;
    bool has_tsf = ap_json_num(ap_json_get(j, "vae_train_scaling_factor"), &tsf);
    ap_json_free(cur);
    ap_json_free(j);
    if (st != AP_OK) return st;
    ap_sd_free(r->m);
    r->m = NULL;
    snprintf(p, sizeof p, "%s/model", dir);
    if (ap_sd_load(c, p, AP_F32, &r->m) != AP_OK) return c->status;
    r->vae_train_sf = has_tsf ? (float)tsf : r->m->vae->cfg.scaling_factor;
    return AP_OK;
}

/* The model in dt (f32 shares the weights' bytes; other dtypes convert). */
static ap_status save_model(ap_ctx *c, const ap_sd_model *m, ap_dtype dt, const char *dir) {
    if (dt == AP_F32) return ap_sd_save_diffusers(c, m, dir);
    ap_sd_model *o = NULL;
    if (ap_sd_create(c, &m->cfg, dt, &o) != AP_OK) return c->status;
    const ap_params *src[3] = {&m->unet->params, &m->vae->params, &m->text->params};
    ap_params *dst[3] = {&o->unet->params, &o->vae->params, &o->text->params};
    ap_status st = AP_OK;
    for (int k = 0; k < 3 && st == AP_OK; k++)
        for (int i = 0; i < src[k]->n && st == AP_OK; i++) {
            ap_tensor *s = src[k]->p[i].t, *d = dst[k]->p[i].t;
            st = ap_convert(ap_data(d), d->dtype, ap_data(s), s->dtype, s->numel);
            ap_tensor_touch(d);
        }
    o->vae->cfg = m->vae->cfg;
    if (st == AP_OK) st = ap_sd_save_diffusers(c, o, dir);
    else ap_seterr(c, st, "pretrain: cannot convert the weights to %s", ap_dtype_name(dt));
    ap_sd_free(o);
    return st;
}

/* ------------------------------------------------------------ the loop */
static ap_status run_stage(run *r, int stage, int64_t first, int64_t last, bool resumed, const char *ckdir,
                           bool *stopped) {
    ap_ctx *c = r->c;
    const ap_pretrain_opts *o = r->o;
    int64_t offset = stage == 1 ? 0 : r->vae_end; /* global step of this stage's step 0 */
    ap_params *ps[2] = {NULL, NULL};
    if (stage == 1) {
        ps[0] = &r->m->vae->params;
        r->m->vae->cfg.scaling_factor = r->m->cfg.vae.scaling_factor = r->vae_train_sf;
    } else {
        ps[0] = &r->m->unet->params;
        ps[1] = &r->m->text->params;
    }
    int np = 0;
    for (int k = 0; k < 2; k++) np += ps[k] ? ps[k]->n : 0;
    ap_tensor **params = malloc(sizeof *params * (size_t)(np ? np : 1));
    if (!params) return ap_seterr(c, AP_ERR_NOMEM, "pretrain: out of memory");
    /* everything else is frozen: no weight-gradient kernels for it */
    collect_params(&r->m->unet->params, NULL, 0, false);
    collect_params(&r->m->vae->params, NULL, 0, false);
    collect_params(&r->m->text->params, NULL, 0, false);
    int k = 0;
    for (int i = 0; i < 2; i++)
        if (ps[i]) k = collect_params(ps[i], params, k, true);
    ap_adamw_config ac;
    ap_adamw_defaults(&ac);
    double lr = stage == 1 ? o->vae_lr : o->unet_lr;
    ac.lr = lr;
    ac.weight_decay = o->weight_decay;
    ac.max_grad_norm = o->clip;
    ap_adamw *opt = NULL;
    ap_status st = ap_adamw_create(c, &ac, np, params, &opt);
    if (st == AP_OK && resumed) {
        char p[4400];
        snprintf(p, sizeof p, "%s/optimizer.safetensors", ckdir);
        st = ap_adamw_load(opt, p);
        opt->cfg.weight_decay = o->weight_decay;
        opt->cfg.max_grad_norm = o->clip;
    }
    const char *name = stage == 1 ? "vae" : "unet";
    for (int64_t s = first; s <= last && st == AP_OK && !*stopped; s++) {
        double t0 = now_s(), loss = 0, rec = 0, kl = 0, gnorm = 0;
        ap_adamw_zero_grad(opt);
        ap_mem_reset_peak(c);
        st = stage == 1 ? vae_step(r, s, &loss, &rec, &kl) : unet_step(r, s, &loss);
        if (st == AP_OK && !isfinite(loss))
            st = ap_seterr(c, AP_ERR_STATE, "pretrain: the %s loss is %g at step %lld (lower the learning rate)",
                           name, loss, (long long)s);
        opt->cfg.lr = lr_at(o, lr, s);
        /* a gradient with an inf or NaN (seen once in a bf16 UNet step whose loss was
         * finite) would poison every weight through AdamW's moments: such a step is
         * skipped and logged, as mixed-precision trainers skip overflowed steps */
        bool skipped = false;
        if (st == AP_OK) {
            gnorm = ap_clip_grad_norm(np, params, 0.0);
            skipped = !isfinite(gnorm);
            if (!skipped) st = ap_adamw_step(opt, &gnorm);
        }
        if (st != AP_OK) break;
        int64_t gs = offset + s;
        double dt = now_s() - t0;
        fprintf(r->log, "{\"step\": %lld, \"stage\": \"%s\", \"stage_step\": %lld, \"loss\": %.6g", (long long)gs, name,
                (long long)s, loss);
        if (stage == 1) fprintf(r->log, ", \"rec_l1\": %.6g, \"kl\": %.6g", rec, kl);
        if (skipped) fprintf(r->log, ", \"skipped\": \"non-finite gradient\"");
        fprintf(r->log, ", \"grad_norm\": %.6g, \"lr\": %.6g, \"seconds\": %.4f, \"peak_memory_mib\": %.1f}\n",
                isfinite(gnorm) ? gnorm : -1.0, opt->cfg.lr, dt, ap_mem_peak(c) / 1048576.0);
        fflush(r->log);
        if (o->progress) o->progress(o->progress_user, name, (int)gs, (int)r->total, loss);
        *stopped = o->stop && *o->stop;
        bool end = s == last;
        if (end && stage == 1) st = measure_scale(r);
        if (st == AP_OK && (end || *stopped || (o->save_every > 0 && gs % o->save_every == 0)))
            st = save_checkpoint(r, gs, opt);
    }
    ap_adamw_free(opt);
    free(params);
    collect_params(&r->m->unet->params, NULL, 0, false);
    collect_params(&r->m->vae->params, NULL, 0, false);
    collect_params(&r->m->text->params, NULL, 0, false);
    return st == AP_OK ? c->status : st;
}

ap_status ap_pretrain(ap_ctx *c, const ap_pretrain_opts *o) {
    if (ap_failed(c)) return c->status;
    if (o->stage < AP_STAGE_VAE || o->stage > AP_STAGE_ALL)
        return ap_seterr(c, AP_ERR_INVALID_ARG, "pretrain: stage must be vae, unet or all");
    if (o->batch < 1 || o->image_size < 8 || ((o->stage & AP_STAGE_VAE) && o->vae_steps < 1) ||
        ((o->stage & AP_STAGE_UNET) && o->unet_steps < 1) || o->scale_batches < 1)
        return ap_seterr(c, AP_ERR_INVALID_ARG, "pretrain: steps, batch and scale batches must be >= 1, image size >= 8");
    if (!(o->caption_dropout >= 0 && o->caption_dropout <= 1) || !(o->kl_weight >= 0) || !(o->l2_weight >= 0))
        return ap_seterr(c, AP_ERR_INVALID_ARG, "pretrain: caption dropout must be in [0,1] and the KL and L2 weights >= 0");
    run r = {.c = c, .o = o, .data = o->data_fn, .data_user = o->data_user, .data_seed = o->seed};
    if (!r.data) {
        if (!o->data || (strcmp(o->data, "toy") != 0 && strcmp(o->data, "shapes") != 0))
            return ap_seterr(c, AP_ERR_INVALID_ARG, "pretrain: unknown data '%s' (expected shapes or toy)",
                             o->data ? o->data : "(none)");
        r.data = !strcmp(o->data, "shapes") ? shapes_data : ap_pretrain_toy_data;
        r.data_user = &r.data_seed;
    }
    if (mkdir(o->out_dir, 0755) != 0 && errno != EEXIST)
        return ap_seterr(c, AP_ERR_IO, "%s: cannot create the run directory: %s", o->out_dir, strerror(errno));
    ap_schedule_config sc = ap_schedule_config_sd15();
    ap_status st = ap_schedule_init(c, &r.sched, &sc);
    if (st != AP_OK) return st;
    r.vae_end = o->stage & AP_STAGE_VAE ? o->vae_steps : 0;
    r.total = r.vae_end + (o->stage & AP_STAGE_UNET ? o->unet_steps : 0);
    char ck[4200] = "", path[4400];
    int64_t done = 0;
    if (o->resume) {
        st = load_checkpoint(&r, &done, ck, sizeof ck);
    } else if (o->init) {
        st = ap_sd_load(c, o->init, AP_F32, &r.m);
    } else {
        ap_sd_config cfg;
        st = ap_sd_preset(c, o->config, &cfg);
        if (st == AP_OK) st = ap_sd_create(c, &cfg, AP_F32, &r.m);
        if (st == AP_OK) st = ap_sd_init_random(c, r.m, o->seed);
    }
    if (st == AP_OK && !o->resume) r.vae_train_sf = r.m->vae->cfg.scaling_factor;
    if (st == AP_OK) {
        int f = 1 << (r.m->cfg.vae.levels - 1);
        if (o->image_size % f)
            st = ap_seterr(c, AP_ERR_INVALID_ARG, "pretrain: image size %d is not a multiple of the VAE's %d",
                           o->image_size, f);
        else if (!r.m->tok)
            st = ap_seterr(c, AP_ERR_INVALID_ARG, "pretrain: the model has no tokenizer (vocabulary %d)",
                           r.m->cfg.text.vocab);
    }
    if (st == AP_OK) {
        ap_json *j = config_json(c, o, r.m);
        snprintf(path, sizeof path, "%s/config.json", o->out_dir);
        st = ap_json_save(c, path, j, true);
        ap_json_free(j);
    }
    if (st == AP_OK) {
        snprintf(path, sizeof path, "%s/log.jsonl", o->out_dir);
        if (o->resume) st = ap_log_trim(c, path, done);
        r.log = st == AP_OK ? fopen(path, o->resume ? "a" : "w") : NULL;
        if (st == AP_OK && !r.log) st = ap_seterr(c, AP_ERR_IO, "%s: cannot write", path);
    }
    bool stopped = false;
    if (st == AP_OK && r.vae_end > done)
        st = run_stage(&r, 1, done + 1, r.vae_end, done > 0, ck, &stopped);
    if (st == AP_OK && !stopped && (o->stage & AP_STAGE_UNET) && r.total > done) {
        int64_t first = done > r.vae_end ? done - r.vae_end + 1 : 1;
        st = run_stage(&r, 2, first, o->unet_steps, first > 1, ck, &stopped);
    }
    if (st == AP_OK && !stopped) {
        snprintf(path, sizeof path, "%s/model", o->out_dir);
        st = save_model(c, r.m, o->save_dtype, path);
    }
    if (r.log) fclose(r.log);
    ap_schedule_free(&r.sched);
    ap_sd_free(r.m);
    return st == AP_OK ? c->status : st;
}
