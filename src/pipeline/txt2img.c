/* Text to image: encode, sample with guidance, decode. */
#include "txt2img.h"

#include "core/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

void ap_txt2img_defaults(ap_txt2img_opts *o) {
    memset(o, 0, sizeof *o);
    o->negative = "";
    o->steps = 50;
    o->cfg = 7.5f;
    o->sampler = AP_SAMPLER_DDIM;
    o->width = o->height = 512;
    o->batch = 1;
}

ap_tensor *ap_tokenize_prompts(ap_ctx *c, ap_sd_model *m, int n, const char *const *prompts) {
    if (ap_failed(c)) return NULL;
    if (!m->tok) {
        ap_seterr(c, AP_ERR_STATE, "model has no tokenizer");
        return NULL;
    }
    int T = m->cfg.text.max_positions < AP_TOK_CONTEXT ? m->cfg.text.max_positions : AP_TOK_CONTEXT;
    ap_tensor *ids = ap_tensor_new(c, AP_I32, 2, (int64_t[]){n, T});
    if (!ids) return NULL;
    ap_tok_opts to = ap_tok_opts_sd1;
    to.context = T;
    for (int i = 0; i < n && !ap_failed(c); i++)
        ap_tokenize_seq(c, m->tok, prompts[i], &to, (int32_t *)ap_data(ids) + (size_t)i * T, NULL);
    if (ap_failed(c)) ap_drop(&ids);
    return ids;
}

ap_tensor *ap_encode_ids(ap_ctx *c, ap_sd_model *m, ap_tensor *ids) {
    int prev = ap_set_grad_enabled(c, 0);
    ap_tensor *ctx = ap_clip_text_forward(c, m->text, ids, 0);
    ap_set_grad_enabled(c, prev);
    return ctx;
}

ap_tensor *ap_encode_prompts(ap_ctx *c, ap_sd_model *m, int n, const char *const *prompts) {
    ap_tensor *ids = ap_tokenize_prompts(c, m, n, prompts);
    ap_tensor *ctx = ids ? ap_encode_ids(c, m, ids) : NULL;
    ap_tensor_release(ids);
    return ctx;
}

/* [n,h,w,ch] NHWC -> a new NCHW copy, for dumps diffusers users can compare with */
static ap_tensor *to_nchw(ap_ctx *c, ap_tensor *x) {
    int64_t n = x->shape[0], h = x->shape[1], w = x->shape[2], ch = x->shape[3];
    ap_tensor *y = ap_tensor_new(c, AP_F32, 4, (int64_t[]){n, ch, h, w});
    if (!y) return NULL;
    const float *s = ap_cf32(x);
    float *d = ap_f32(y);
    for (int64_t a = 0; a < n; a++)
        for (int64_t i = 0; i < h * w; i++)
            for (int64_t k = 0; k < ch; k++) d[(a * ch + k) * h * w + i] = s[(a * h * w + i) * ch + k];
    return y;
}

static ap_status dump(ap_ctx *c, const char *dir, const char *name, ap_tensor *t, bool nchw) {
    if (!dir || ap_failed(c)) return c->status;
    char p[4096];
    snprintf(p, sizeof p, "%s/%s.safetensors", dir, name);
    ap_tensor *u = nchw ? to_nchw(c, t) : ap_tensor_retain(t);
    const char *k[] = {"layout"}, *v[] = {nchw ? "NCHW (as diffusers)" : "as computed"};
    ap_status st = u ? ap_st_save(c, p, 1, (const char *[]){name}, &u, 1, k, v) : c->status;
    ap_tensor_release(u);
    return st;
}

ap_status ap_txt2img(ap_ctx *c, ap_sd_model *m, const ap_txt2img_opts *o, ap_tensor **images) {
    *images = NULL;
    if (ap_failed(c)) return c->status;
    int f = 1 << (m->cfg.vae.levels - 1), uf = 1 << (m->cfg.unet.levels - 1);
    if (o->width <= 0 || o->height <= 0 || o->width % (f * uf) || o->height % (f * uf))
        return ap_seterr(c, AP_ERR_INVALID_ARG, "image size %dx%d: width and height must be positive multiples of %d",
                         o->width, o->height, f * uf);
    if (o->batch < 1 || o->batch > 256) return ap_seterr(c, AP_ERR_INVALID_ARG, "batch %d: must be 1..256", o->batch);
    if (o->steps < 1 || o->steps > 1000) return ap_seterr(c, AP_ERR_INVALID_ARG, "steps %d: must be 1..1000", o->steps);
    if (!m->text || !m->unet || !m->vae)
        return ap_seterr(c, AP_ERR_STATE, "text to image: the model's %s was released by an earlier one-shot call",
                         !m->text ? "text encoder" : !m->unet ? "UNet" : "VAE");
    if (o->dump_dir && mkdir(o->dump_dir, 0755) != 0) {
        struct stat s;
        if (stat(o->dump_dir, &s) != 0 || !S_ISDIR(s.st_mode))
            return ap_seterr(c, AP_ERR_IO, "%s: cannot create the dump folder", o->dump_dir);
    }
    int B = o->batch;
    bool guided = o->cfg > 1.0f;
    int nb = guided ? 2 * B : B;
    const char **prompts = malloc(sizeof *prompts * (size_t)nb);
    if (!prompts) return ap_seterr(c, AP_ERR_NOMEM, "out of memory");
    for (int i = 0; i < B; i++) {
        if (guided) prompts[i] = o->negative ? o->negative : "";
        prompts[nb - B + i] = o->prompt ? o->prompt : "";
    }
    int prev = ap_set_grad_enabled(c, 0);
    ap_tensor *ids = ap_tokenize_prompts(c, m, nb, prompts); /* uncond first, as diffusers concatenates */
    free(prompts);
    dump(c, o->dump_dir, "token_ids", ids, false);
    ap_tensor *ctx = ids ? ap_encode_ids(c, m, ids) : NULL;
    ap_tensor_release(ids);
    dump(c, o->dump_dir, "text_embeddings", ctx, false);
    if (o->release_models) {
        ap_clip_text_free(m->text);
        m->text = NULL;
    }

    ap_sampler_config sc = ap_sampler_config_sd15(o->sampler);
    sc.eta = o->eta;
    ap_sampler *s = ap_failed(c) ? NULL : ap_sampler_create(c, &sc, o->steps);
    int64_t h = o->height / f, w = o->width / f, ch = m->cfg.unet.in_channels;
    ap_latent_shape ls = {B, h, w, ch};
    ap_tensor *x = ap_tensor_new(c, AP_F32, 4, (int64_t[]){B, h, w, ch});
    ap_tensor *xin = ap_tensor_new(c, AP_F32, 4, (int64_t[]){nb, h, w, ch});
    ap_tensor *t = ap_tensor_new(c, AP_F32, 1, (int64_t[]){nb});
    ap_tensor *eps = ap_tensor_new(c, AP_F32, 4, (int64_t[]){B, h, w, ch});
    ap_rng g;
    ap_rng_init(&g, o->seed);
    if (s && x) ap_sampler_init_latents_f32(c, s, &g, ap_f32(x), ls);
    dump(c, o->dump_dir, "latents_init", x, true);
    size_t per = (size_t)B * h * w * ch;
    for (int i = 0; i < o->steps && !ap_failed(c); i++) {
        ap_sampler_scale_input_f32(c, s, i, ap_f32(x), ap_f32(xin), (int64_t)per);
        if (guided) memcpy(ap_f32(xin) + per, ap_f32(xin), per * sizeof(float));
        float ts = ap_sampler_timestep(s, i);
        for (int k = 0; k < nb; k++) ap_f32(t)[k] = ts;
        ap_tensor *e = ap_unet_forward(c, m->unet, xin, t, ctx);
        if (!e) break;
        const float *pe = ap_cf32(e);
        float *pd = ap_f32(eps), g_ = o->cfg;
        if (guided) /* noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond) */
            for (size_t k = 0; k < per; k++) pd[k] = pe[k] + g_ * (pe[per + k] - pe[k]);
        else
            memcpy(pd, pe, per * sizeof(float));
        ap_tensor_release(e);
        ap_sampler_step_f32(c, s, i, ap_f32(x), pd, ap_f32(x), ls, &g);
        if (o->dump_dir) {
            char nm[64];
            snprintf(nm, sizeof nm, "latents_%03d", i + 1);
            dump(c, o->dump_dir, nm, x, true);
        }
        if (o->progress) o->progress(o->progress_user, i + 1, o->steps);
    }
    if (o->release_models) {
        ap_unet_free(m->unet);
        m->unet = NULL;
    }
    ap_tensor *img = ap_failed(c) ? NULL : ap_vae_decode(c, m->vae, x);
    dump(c, o->dump_dir, "image", img, true);
    ap_set_grad_enabled(c, prev);
    ap_sampler_free(s);
    ap_tensor *tmp[] = {ctx, x, xin, t, eps};
    for (int i = 0; i < 5; i++) ap_tensor_release(tmp[i]);
    if (ap_failed(c)) {
        ap_tensor_release(img);
        return c->status;
    }
    *images = img;
    return AP_OK;
}
