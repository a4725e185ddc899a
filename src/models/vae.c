/* The SD1.x VAE: diffusers Encoder / Decoder with DownEncoderBlock2D,
 * UNetMidBlock2D (one single-head attention) and UpDecoderBlock2D, NHWC. */
#include "vae.h"

#include "core/internal.h"

#include <stdio.h>
#include <stdlib.h>

const ap_vae_config ap_vae_config_sd15 = {
    .in_channels = 3,
    .out_channels = 3,
    .latent_channels = 4,
    .levels = 4,
    .block_out = {128, 256, 512, 512},
    .layers_per_block = 2,
    .norm_groups = 32,
    .scaling_factor = 0.18215f,
};

static const int PAD1[4] = {1, 1, 1, 1}, PAD0[4] = {0, 0, 0, 0};
/* the encoder's downsampler pads one zero row and column at the bottom and right, then stride 2 */
static const int PAD_DOWN[4] = {0, 1, 0, 1};

static void attn_make(ap_vae_attn *a, ap_params *ps, const char *prefix, int C, int groups) {
    char b[512];
    AP_FMT(b, "%sgroup_norm.", prefix);
    ap_gn_make(&a->norm, ps, b, C, groups, 1e-6f);
    ap_linear_layer *ls[4] = {&a->to_q, &a->to_k, &a->to_v, &a->to_out};
    const char *nm[4] = {"to_q.", "to_k.", "to_v.", "to_out.0."};
    for (int i = 0; i < 4; i++) {
        AP_FMT(b, "%s%s", prefix, nm[i]);
        ap_linear_make(ls[i], ps, b, C, C, true);
    }
}

static ap_tensor *attn_fwd(ap_ctx *c, const ap_vae_attn *a, ap_tensor *x) {
    if (!x) return NULL;
    int64_t N = ap_tensor_dim(x, 0), H = ap_tensor_dim(x, 1), W = ap_tensor_dim(x, 2), C = ap_tensor_dim(x, 3);
    ap_tensor *h = ap_gn_fwd(c, &a->norm, x);
    h = ap_swap(h, ap_reshape(c, h, 3, (int64_t[]){N, H * W, C}));
    ap_tensor *q = ap_linear_fwd(c, &a->to_q, h), *k = ap_linear_fwd(c, &a->to_k, h),
              *v = ap_linear_fwd(c, &a->to_v, h);
    ap_drop(&h);
    h = ap_attention(c, q, k, v, 1, 0.0f, 0);
    ap_drop(&q);
    ap_drop(&k);
    ap_drop(&v);
    h = ap_swap(h, ap_linear_fwd(c, &a->to_out, h));
    h = ap_swap(h, ap_reshape(c, h, 4, (int64_t[]){N, H, W, C}));
    return ap_swap(h, ap_add(c, x, h));
}

static void mid_make(ap_vae_coder *m, ap_params *ps, const char *prefix, int C, int G) {
    char b[512];
    AP_FMT(b, "%smid_block.resnets.0.", prefix);
    ap_resnet_make(&m->mid_res[0], ps, b, C, C, 0, G, 1e-6f);
    AP_FMT(b, "%smid_block.attentions.0.", prefix);
    attn_make(&m->mid_attn, ps, b, C, G);
    AP_FMT(b, "%smid_block.resnets.1.", prefix);
    ap_resnet_make(&m->mid_res[1], ps, b, C, C, 0, G, 1e-6f);
}

static ap_tensor *mid_fwd(ap_ctx *c, const ap_vae_coder *m, ap_tensor *h) {
    h = ap_resnet_fwd(c, &m->mid_res[0], h, NULL);
    h = ap_swap(h, attn_fwd(c, &m->mid_attn, h));
    return ap_swap(h, ap_resnet_fwd(c, &m->mid_res[1], h, NULL));
}

ap_status ap_vae_create(ap_ctx *c, const ap_vae_config *cfg, ap_dtype wdt, ap_vae **out) {
    *out = NULL;
    if (ap_failed(c)) return c->status;
    if (cfg->levels < 1 || cfg->levels > AP_VAE_MAX_LEVELS || cfg->layers_per_block < 1 ||
        cfg->layers_per_block + 1 > AP_VAE_MAX_LAYERS || cfg->norm_groups < 1)
        return ap_seterr(c, AP_ERR_INVALID_ARG, "vae config: %d levels, %d layers per block: unsupported",
                         cfg->levels, cfg->layers_per_block);
    for (int l = 0; l < cfg->levels; l++)
        if (cfg->block_out[l] <= 0 || cfg->block_out[l] % cfg->norm_groups)
            return ap_seterr(c, AP_ERR_INVALID_ARG, "vae config: level %d has %d channels, not divisible by %d groups",
                             l, cfg->block_out[l], cfg->norm_groups);
    ap_vae *v = calloc(1, sizeof *v);
    if (!v) return ap_seterr(c, AP_ERR_NOMEM, "vae: out of memory");
    v->cfg = *cfg;
    ap_params *ps = &v->params;
    ap_params_init(ps, c, wdt);
    int G = cfg->norm_groups, L = cfg->levels, Ctop = cfg->block_out[L - 1], zc = cfg->latent_channels;
    char b[512];

    /* encoder */
    ap_vae_coder *e = &v->enc;
    ap_conv_make(&e->conv_in, ps, "encoder.conv_in.", cfg->in_channels, cfg->block_out[0], 3, 1, PAD1);
    int ch = cfg->block_out[0];
    for (int l = 0; l < L; l++) {
        ap_vae_block *bk = &e->blocks[l];
        int C = cfg->block_out[l];
        bk->n_layers = cfg->layers_per_block;
        for (int j = 0; j < bk->n_layers; j++) {
            AP_FMT(b, "encoder.down_blocks.%d.resnets.%d.", l, j);
            ap_resnet_make(&bk->resnets[j], ps, b, j ? C : ch, C, 0, G, 1e-6f);
        }
        ch = C;
        if (l < L - 1) {
            bk->has_sampler = 1;
            AP_FMT(b, "encoder.down_blocks.%d.downsamplers.0.conv.", l);
            ap_conv_make(&bk->sampler, ps, b, C, C, 3, 2, PAD_DOWN);
        }
    }
    mid_make(e, ps, "encoder.", Ctop, G);
    ap_gn_make(&e->norm_out, ps, "encoder.conv_norm_out.", Ctop, G, 1e-6f);
    ap_conv_make(&e->conv_out, ps, "encoder.conv_out.", Ctop, 2 * zc, 3, 1, PAD1);
    ap_conv_make(&v->quant_conv, ps, "quant_conv.", 2 * zc, 2 * zc, 1, 1, PAD0);

    /* decoder */
    ap_conv_make(&v->post_quant_conv, ps, "post_quant_conv.", zc, zc, 1, 1, PAD0);
    ap_vae_coder *d = &v->dec;
    ap_conv_make(&d->conv_in, ps, "decoder.conv_in.", zc, Ctop, 3, 1, PAD1);
    mid_make(d, ps, "decoder.", Ctop, G);
    ch = Ctop;
    for (int i = 0; i < L; i++) {
        int C = cfg->block_out[L - 1 - i];
        ap_vae_block *bk = &d->blocks[i];
        bk->n_layers = cfg->layers_per_block + 1;
        for (int j = 0; j < bk->n_layers; j++) {
            AP_FMT(b, "decoder.up_blocks.%d.resnets.%d.", i, j);
            ap_resnet_make(&bk->resnets[j], ps, b, j ? C : ch, C, 0, G, 1e-6f);
        }
        ch = C;
        if (i < L - 1) {
            bk->has_sampler = 1;
            AP_FMT(b, "decoder.up_blocks.%d.upsamplers.0.conv.", i);
            ap_conv_make(&bk->sampler, ps, b, C, C, 3, 1, PAD1);
        }
    }
    ap_gn_make(&d->norm_out, ps, "decoder.conv_norm_out.", cfg->block_out[0], G, 1e-6f);
    ap_conv_make(&d->conv_out, ps, "decoder.conv_out.", cfg->block_out[0], cfg->out_channels, 3, 1, PAD1);
    /* the attention projections are 1x1 convs in LDM files: accept both shapes */
    ap_vae_attn *as[2] = {&e->mid_attn, &d->mid_attn};
    for (int i = 0; i < 2; i++) {
        ap_params_mark_conv1x1(ps, as[i]->to_q.w);
        ap_params_mark_conv1x1(ps, as[i]->to_k.w);
        ap_params_mark_conv1x1(ps, as[i]->to_v.w);
        ap_params_mark_conv1x1(ps, as[i]->to_out.w);
    }
    if (ap_failed(c)) {
        ap_vae_free(v);
        return c->status;
    }
    *out = v;
    return AP_OK;
}

void ap_vae_free(ap_vae *v) {
    if (!v) return;
    ap_params_free(&v->params);
    free(v);
}

ap_tensor *ap_vae_decode(ap_ctx *c, const ap_vae *v, ap_tensor *latent) {
    if (ap_failed(c)) return NULL;
    if (!latent || ap_tensor_ndim(latent) != 4 || ap_tensor_dim(latent, 3) != v->cfg.latent_channels) {
        char b[64];
        ap_seterr(c, AP_ERR_SHAPE, "vae decode: latent is %s, expected [N,h,w,%d] (NHWC)",
                  latent ? ap_shape_str(latent, b, sizeof b) : "NULL", v->cfg.latent_channels);
        return NULL;
    }
    const ap_vae_coder *d = &v->dec;
    ap_tensor *h = ap_scale(c, latent, 1.0f / v->cfg.scaling_factor);
    h = ap_swap(h, ap_conv_fwd(c, &v->post_quant_conv, h));
    h = ap_swap(h, ap_conv_fwd(c, &d->conv_in, h));
    h = ap_swap(h, mid_fwd(c, d, h));
    for (int i = 0; i < v->cfg.levels; i++) {
        const ap_vae_block *bk = &d->blocks[i];
        for (int j = 0; j < bk->n_layers; j++) h = ap_swap(h, ap_resnet_fwd(c, &bk->resnets[j], h, NULL));
        if (bk->has_sampler) {
            h = ap_swap(h, ap_upsample_nearest2x(c, h));
            h = ap_swap(h, ap_conv_fwd(c, &bk->sampler, h));
        }
    }
    h = ap_swap(h, ap_gn_fwd(c, &d->norm_out, h));
    h = ap_swap(h, ap_silu(c, h));
    return ap_swap(h, ap_conv_fwd(c, &d->conv_out, h));
}

ap_tensor *ap_vae_encode_moments(ap_ctx *c, const ap_vae *v, ap_tensor *image) {
    if (ap_failed(c)) return NULL;
    int64_t f = (int64_t)1 << (v->cfg.levels - 1);
    if (!image || ap_tensor_ndim(image) != 4 || ap_tensor_dim(image, 3) != v->cfg.in_channels ||
        ap_tensor_dim(image, 1) % f || ap_tensor_dim(image, 2) % f) {
        char b[64];
        ap_seterr(c, AP_ERR_SHAPE, "vae encode: image is %s, expected [N,H,W,%d] (NHWC) with H and W multiples of %lld",
                  image ? ap_shape_str(image, b, sizeof b) : "NULL", v->cfg.in_channels, (long long)f);
        return NULL;
    }
    const ap_vae_coder *e = &v->enc;
    ap_tensor *h = ap_conv_fwd(c, &e->conv_in, image);
    for (int l = 0; l < v->cfg.levels; l++) {
        const ap_vae_block *bk = &e->blocks[l];
        for (int j = 0; j < bk->n_layers; j++) h = ap_swap(h, ap_resnet_fwd(c, &bk->resnets[j], h, NULL));
        if (bk->has_sampler) h = ap_swap(h, ap_conv_fwd(c, &bk->sampler, h));
    }
    h = ap_swap(h, mid_fwd(c, e, h));
    h = ap_swap(h, ap_gn_fwd(c, &e->norm_out, h));
    h = ap_swap(h, ap_silu(c, h));
    h = ap_swap(h, ap_conv_fwd(c, &e->conv_out, h));
    return ap_swap(h, ap_conv_fwd(c, &v->quant_conv, h));
}
