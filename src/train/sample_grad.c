/* The AlignProp sampling chain with gradient. */
#include "sample_grad.h"

#include "core/internal.h"

#include <stdlib.h>

void ap_grad_sample_defaults(ap_grad_sample_opts *o) {
    memset(o, 0, sizeof *o);
    o->steps = 50;
    o->cfg = 7.5f;
    o->trunc.kind = AP_TRUNC_FIXED;
    o->trunc.k = 1;
    o->checkpoint = true;
}

typedef struct {
    ap_sd_model *m;
    float cfg;
    int64_t B;
} step_user;

/* eps = UNet guided: in = {x [B,h,w,C], t [2B or B], ctx}; cond and uncond in one call */
static ap_status guided_eps(ap_ctx *c, void *user, int n_in, ap_tensor *const *in, int n_out, ap_tensor **out) {
    step_user *su = user;
    if (su->cfg <= 1.0f) {
        out[0] = ap_unet_forward(c, su->m->unet, in[0], in[1], in[2]);
        return out[0] ? AP_OK : c->status;
    }
    ap_tensor *xx = ap_concat_batch(c, in[0], in[0]);
    ap_tensor *e = ap_unet_forward(c, su->m->unet, xx, in[1], in[2]);
    ap_tensor *un = ap_slice_batch(c, e, 0, su->B), *co = ap_slice_batch(c, e, su->B, su->B);
    /* uncond + cfg * (cond - uncond) */
    out[0] = ap_axpby(c, 1.0f - su->cfg, un, su->cfg, co);
    ap_tensor *ts[] = {xx, e, un, co};
    for (int i = 0; i < 4; i++) ap_tensor_release(ts[i]);
    return out[0] ? AP_OK : c->status;
}

static ap_status decode_fn(ap_ctx *c, void *user, int n_in, ap_tensor *const *in, int n_out, ap_tensor **out) {
    out[0] = ap_vae_decode(c, ((ap_sd_model *)user)->vae, in[0]);
    return out[0] ? AP_OK : c->status;
}

ap_status ap_sample_with_grad(ap_ctx *c, ap_sd_model *m, const ap_grad_sample_opts *o, ap_tensor *ctx, ap_tensor *x_T,
                              ap_rng *trunc_rng, ap_rng *noise_rng, ap_tensor **latents, ap_tensor **image,
                              bool *keep_out) {
    *latents = *image = NULL;
    if (ap_failed(c)) return c->status;
    if (!ctx || !x_T || x_T->ndim != 4)
        return ap_seterr(c, AP_ERR_INVALID_ARG, "sample with gradient: need text embeddings and latents [B,h,w,C]");
    int64_t B = x_T->shape[0];
    bool guided = o->cfg > 1.0f;
    if (ctx->shape[0] != (guided ? 2 * B : B))
        return ap_seterr(c, AP_ERR_SHAPE, "sample with gradient: %lld text embeddings for %lld latents (cfg %g needs %s)",
                         (long long)ctx->shape[0], (long long)B, o->cfg, guided ? "2B: uncond then cond" : "B");
    if (o->eta > 0 && !noise_rng) return ap_seterr(c, AP_ERR_INVALID_ARG, "sample with gradient: eta > 0 needs a noise stream");
    ap_sampler_config sc = ap_sampler_config_sd15(AP_SAMPLER_DDIM);
    sc.eta = o->eta;
    if (o->spacing != AP_SPACING_DEFAULT) sc.spacing = o->spacing;
    ap_sampler *s = ap_sampler_create(c, &sc, o->steps);
    bool *keep = malloc(sizeof(bool) * (size_t)(o->steps > 0 ? o->steps : 1));
    if (!s || !keep || ap_trunc_plan(c, &o->trunc, o->steps, trunc_rng, keep) != AP_OK) {
        ap_sampler_free(s);
        free(keep);
        return ap_failed(c) ? c->status : ap_seterr(c, AP_ERR_NOMEM, "out of memory");
    }
    if (keep_out) memcpy(keep_out, keep, sizeof(bool) * (size_t)o->steps);
    step_user su = {m, o->cfg, B};
    ap_tensor *x = ap_tensor_retain(x_T);
    for (int i = 0; i < o->steps && !ap_failed(c); i++) {
        ap_step_coefs k;
        if (ap_sampler_coefs(c, s, i, &k) != AP_OK) break;
        /* a new timestep tensor per step: a checkpoint keeps its inputs by
         * reference and recomputes from them during backward */
        ap_tensor *t = ap_tensor_new(c, AP_F32, 1, (int64_t[]){guided ? 2 * B : B});
        if (!t) break;
        for (int64_t j = 0; j < t->numel; j++) ap_f32(t)[j] = k.timestep;
        ap_tensor *xin = k.in_scale == 1.0 ? ap_tensor_retain(x) : ap_scale(c, x, (float)k.in_scale);
        ap_tensor *eps = NULL, *in[3] = {xin, t, ctx};
        if (keep[i]) {
            if (o->checkpoint)
                ap_checkpoint_copy(c, guided_eps, &su, sizeof su, 3, in, 1, &eps);
            else
                guided_eps(c, &su, 3, in, 1, &eps);
        } else if (o->replay && o->replay[i]) {
            eps = ap_tensor_retain(o->replay[i]);
        } else { /* the UNet output is detached: no recording at all */
            int prev = ap_set_grad_enabled(c, 0);
            guided_eps(c, &su, 3, in, 1, &eps);
            ap_set_grad_enabled(c, prev);
            if (o->record) o->record[i] = ap_tensor_retain(eps);
        }
        ap_tensor_release(xin);
        ap_tensor_release(t);
        ap_tensor *xn = ap_axpby(c, (float)k.a, x, (float)k.b, eps);
        ap_tensor_release(eps);
        if (k.draws_noise && noise_rng) {
            ap_tensor *z = ap_rng_randn_latents(c, noise_rng, B, x->shape[1], x->shape[2], x->shape[3]);
            if (k.s != 0.0 && z) {
                ap_tensor *zs = ap_scale(c, z, (float)k.s);
                xn = ap_swap(xn, ap_add(c, xn, zs));
                ap_tensor_release(zs);
            }
            ap_tensor_release(z);
        }
        ap_tensor_release(x);
        x = xn;
    }
    ap_tensor *img = NULL;
    if (!ap_failed(c)) {
        if (o->checkpoint)
            ap_checkpoint(c, decode_fn, m, 1, &x, 1, &img);
        else
            decode_fn(c, m, 1, &x, 1, &img);
    }
    ap_sampler_free(s);
    free(keep);
    if (ap_failed(c)) {
        ap_tensor_release(x);
        ap_tensor_release(img);
        return c->status;
    }
    *latents = x;
    *image = img;
    return AP_OK;
}

ap_status ap_sample_skip_draws(ap_ctx *c, const ap_grad_sample_opts *o, int64_t B, int64_t h, int64_t w, int64_t C,
                               ap_rng *lat_rng, ap_rng *trunc_rng, ap_rng *noise_rng) {
    if (ap_failed(c)) return c->status;
    int64_t n = B * h * w * C;
    /* the same calls with the same counts leave the same state (randn's
     * paths depend on the count, so no shortcut through a total) */
    float *buf = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1)); // [B,C,h,w]
    bool *keep = malloc(sizeof(bool) * (size_t)(o->steps > 0 ? o->steps : 1));
    ap_sampler *s = NULL;
    if (!buf || !keep) {
        ap_seterr(c, AP_ERR_NOMEM, "out of memory");
        goto out;
    }
    ap_rng_randn(lat_rng, buf, n);
    if (ap_trunc_plan(c, &o->trunc, o->steps, trunc_rng, keep) != AP_OK) goto out;
    if (o->eta > 0 && noise_rng) {
        ap_sampler_config sc = ap_sampler_config_sd15(AP_SAMPLER_DDIM);
        sc.eta = o->eta;
        s = ap_sampler_create(c, &sc, o->steps);
        for (int i = 0; s && i < o->steps && !ap_failed(c); i++) {
            ap_step_coefs k;
            if (ap_sampler_coefs(c, s, i, &k) != AP_OK) break;
            if (k.draws_noise) ap_rng_randn(noise_rng, buf, n);
        }
    }
out:
    ap_sampler_free(s);
    free(buf);
    free(keep);
    return c->status;
}
