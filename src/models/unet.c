/* The SD1.x UNet: diffusers UNet2DConditionModel with CrossAttnDownBlock2D /
 * DownBlock2D, UNetMidBlock2DCrossAttn and UpBlock2D / CrossAttnUpBlock2D,
 * on NHWC activations. Module and parameter names are diffusers'. */
#include "unet.h"

#include "core/internal.h"

#include <stdio.h>
#include <stdlib.h>

const ap_unet_config ap_unet_config_sd15 = {
    .in_channels = 4,
    .out_channels = 4,
    .levels = 4,
    .block_out = {320, 640, 1280, 1280},
    .attention = {1, 1, 1, 0},
    .layers_per_block = 2,
    .heads = 8,
    .head_dim = 0,
    .context_dim = 768,
    .norm_groups = 32,
    .use_linear_projection = 0,
};

static const int PAD1[4] = {1, 1, 1, 1}, PAD0[4] = {0, 0, 0, 0};

/* ------------------------------------------------------------ resnet */
void ap_resnet_make(ap_resnet *r, ap_params *ps, const char *prefix, int in, int out, int temb_dim,
                    int groups, float eps) {
    char b[512];
    memset(r, 0, sizeof *r);
    AP_FMT(b, "%snorm1.", prefix);
    ap_gn_make(&r->norm1, ps, b, in, groups, eps);
    AP_FMT(b, "%sconv1.", prefix);
    ap_conv_make(&r->conv1, ps, b, in, out, 3, 1, PAD1);
    if (temb_dim > 0) {
        r->has_temb = 1;
        AP_FMT(b, "%stime_emb_proj.", prefix);
        ap_linear_make(&r->time_emb_proj, ps, b, temb_dim, out, true);
    }
    AP_FMT(b, "%snorm2.", prefix);
    ap_gn_make(&r->norm2, ps, b, out, groups, eps);
    AP_FMT(b, "%sconv2.", prefix);
    ap_conv_make(&r->conv2, ps, b, out, out, 3, 1, PAD1);
    if (in != out) {
        r->has_shortcut = 1;
        AP_FMT(b, "%sconv_shortcut.", prefix);
        ap_conv_make(&r->shortcut, ps, b, in, out, 1, 1, PAD0);
    }
}

ap_tensor *ap_resnet_fwd(ap_ctx *c, const ap_resnet *r, ap_tensor *x, ap_tensor *silu_temb) {
    ap_tensor *h = ap_gn_fwd(c, &r->norm1, x);
    h = ap_swap(h, ap_silu(c, h));
    h = ap_swap(h, ap_conv_fwd(c, &r->conv1, h));
    if (r->has_temb && silu_temb) {
        ap_tensor *t = ap_linear_fwd(c, &r->time_emb_proj, silu_temb); /* [N, C] */
        ap_tensor *t4 = t ? ap_reshape(c, t, 4, (int64_t[]){ap_tensor_dim(t, 0), 1, 1, ap_tensor_dim(t, 1)}) : NULL;
        h = ap_swap(h, ap_add(c, h, t4));
        ap_tensor_release(t);
        ap_tensor_release(t4);
    }
    h = ap_swap(h, ap_gn_fwd(c, &r->norm2, h));
    h = ap_swap(h, ap_silu(c, h));
    h = ap_swap(h, ap_conv_fwd(c, &r->conv2, h));
    if (r->has_shortcut) {
        ap_tensor *s = ap_conv_fwd(c, &r->shortcut, x);
        h = ap_swap(h, ap_add(c, s, h));
        ap_tensor_release(s);
    } else {
        h = ap_swap(h, ap_add(c, x, h));
    }
    return h;
}

/* ------------------------------------------------------------ transformer */
static void transformer_make(ap_transformer *t, ap_params *ps, const char *prefix, int C, int heads,
                             int context_dim, int groups, int linear_proj) {
    char b[512];
    t->channels = C;
    AP_FMT(b, "%snorm.", prefix);
    ap_gn_make(&t->norm, ps, b, C, groups, 1e-6f);
    /* SD1 stores proj_in/proj_out as 1x1 conv weights [C,C,1,1]: the same bytes as a
     * [C,C] linear weight, and on NHWC tokens a 1x1 conv is that linear. */
    AP_FMT(b, "%sproj_in.", prefix);
    ap_linear_make(&t->proj_in, ps, b, C, C, true);
    ap_tblock *k = &t->block;
    AP_FMT(b, "%stransformer_blocks.0.norm1.", prefix);
    ap_ln_make(&k->norm1, ps, b, C, 1e-5f);
    AP_FMT(b, "%stransformer_blocks.0.attn1.", prefix);
    ap_attn_make(&k->attn1, ps, b, C, C, heads, false);
    AP_FMT(b, "%stransformer_blocks.0.norm2.", prefix);
    ap_ln_make(&k->norm2, ps, b, C, 1e-5f);
    AP_FMT(b, "%stransformer_blocks.0.attn2.", prefix);
    ap_attn_make(&k->attn2, ps, b, C, context_dim, heads, false);
    AP_FMT(b, "%stransformer_blocks.0.norm3.", prefix);
    ap_ln_make(&k->norm3, ps, b, C, 1e-5f);
    AP_FMT(b, "%stransformer_blocks.0.ff.net.0.proj.", prefix);
    ap_linear_make(&k->ff_in, ps, b, C, 8 * C, true);
    AP_FMT(b, "%stransformer_blocks.0.ff.net.2.", prefix);
    ap_linear_make(&k->ff_out, ps, b, 4 * C, C, true);
    AP_FMT(b, "%sproj_out.", prefix);
    ap_linear_make(&t->proj_out, ps, b, C, C, true);
    if (!linear_proj) {
        ap_params_mark_conv1x1(ps, t->proj_in.w);
        ap_params_mark_conv1x1(ps, t->proj_out.w);
    }
}

static ap_tensor *tblock_fwd(ap_ctx *c, const ap_tblock *k, ap_tensor *x, ap_tensor *ctx) {
    ap_tensor *h = ap_ln_fwd(c, &k->norm1, x);
    ap_tensor *a = ap_attn_fwd(c, &k->attn1, h, NULL, false);
    ap_tensor *x1 = ap_add(c, x, a);
    ap_drop(&h);
    ap_drop(&a);
    h = ap_ln_fwd(c, &k->norm2, x1);
    a = ap_attn_fwd(c, &k->attn2, h, ctx, false);
    ap_tensor *x2 = ap_add(c, x1, a);
    ap_drop(&h);
    ap_drop(&a);
    ap_drop(&x1);
    h = ap_ln_fwd(c, &k->norm3, x2);
    h = ap_swap(h, ap_linear_fwd(c, &k->ff_in, h));
    h = ap_swap(h, ap_geglu(c, h));
    h = ap_swap(h, ap_linear_fwd(c, &k->ff_out, h));
    ap_tensor *y = ap_add(c, x2, h);
    ap_drop(&h);
    ap_drop(&x2);
    return y;
}

/* x [N,H,W,C] -> [N,H,W,C] */
static ap_tensor *transformer_fwd(ap_ctx *c, const ap_transformer *t, ap_tensor *x, ap_tensor *ctx) {
    if (!x) return NULL;
    int64_t N = ap_tensor_dim(x, 0), H = ap_tensor_dim(x, 1), W = ap_tensor_dim(x, 2), C = ap_tensor_dim(x, 3);
    ap_tensor *h = ap_gn_fwd(c, &t->norm, x);
    h = ap_swap(h, ap_reshape(c, h, 3, (int64_t[]){N, H * W, C})); /* NHWC is already the token matrix */
    h = ap_swap(h, ap_linear(c, h, t->proj_in.w, t->proj_in.b));
    h = ap_swap(h, tblock_fwd(c, &t->block, h, ctx));
    h = ap_swap(h, ap_linear(c, h, t->proj_out.w, t->proj_out.b));
    h = ap_swap(h, ap_reshape(c, h, 4, (int64_t[]){N, H, W, C}));
    return ap_swap(h, ap_add(c, h, x));
}

/* ------------------------------------------------------------ the model */
static int heads_for(const ap_unet_config *cfg, int C) {
    return cfg->head_dim > 0 ? C / cfg->head_dim : cfg->heads;
}

ap_status ap_unet_create(ap_ctx *c, const ap_unet_config *cfg, ap_dtype wdt, ap_unet **out) {
    *out = NULL;
    if (ap_failed(c)) return c->status;
    if (cfg->levels < 1 || cfg->levels > AP_UNET_MAX_LEVELS || cfg->layers_per_block < 1 ||
        cfg->layers_per_block + 1 > AP_UNET_MAX_LAYERS || cfg->norm_groups < 1)
        return ap_seterr(c, AP_ERR_INVALID_ARG, "unet config: %d levels, %d layers per block: unsupported",
                         cfg->levels, cfg->layers_per_block);
    for (int l = 0; l < cfg->levels; l++) {
        int C = cfg->block_out[l];
        if (C <= 0 || C % cfg->norm_groups || (cfg->attention[l] && C % heads_for(cfg, C)))
            return ap_seterr(c, AP_ERR_INVALID_ARG,
                             "unet config: level %d has %d channels, not divisible by %d groups / heads", l, C,
                             cfg->norm_groups);
    }
    ap_unet *u = calloc(1, sizeof *u);
    if (!u) return ap_seterr(c, AP_ERR_NOMEM, "unet: out of memory");
    u->cfg = *cfg;
    ap_params *ps = &u->params;
    ap_params_init(ps, c, wdt);
    int C0 = cfg->block_out[0], temb = 4 * C0, G = cfg->norm_groups;
    char b[512];
    ap_linear_make(&u->time_linear_1, ps, "time_embedding.linear_1.", C0, temb, true);
    ap_linear_make(&u->time_linear_2, ps, "time_embedding.linear_2.", temb, temb, true);
    ap_conv_make(&u->conv_in, ps, "conv_in.", cfg->in_channels, C0, 3, 1, PAD1);

    int ch = C0;
    for (int l = 0; l < cfg->levels; l++) {
        ap_unet_block *d = &u->down[l];
        int C = cfg->block_out[l];
        d->n_layers = cfg->layers_per_block;
        d->has_attn = cfg->attention[l];
        for (int j = 0; j < d->n_layers; j++) {
            AP_FMT(b, "down_blocks.%d.resnets.%d.", l, j);
            ap_resnet_make(&d->resnets[j], ps, b, j == 0 ? ch : C, C, temb, G, 1e-5f);
            if (d->has_attn) {
                AP_FMT(b, "down_blocks.%d.attentions.%d.", l, j);
                transformer_make(&d->attns[j], ps, b, C, heads_for(cfg, C), cfg->context_dim, G,
                                 cfg->use_linear_projection);
            }
        }
        if (l < cfg->levels - 1) {
            d->has_sampler = 1;
            AP_FMT(b, "down_blocks.%d.downsamplers.0.conv.", l);
            ap_conv_make(&d->sampler, ps, b, C, C, 3, 2, PAD1);
        }
        ch = C;
    }
    int Cm = cfg->block_out[cfg->levels - 1];
    ap_resnet_make(&u->mid_res[0], ps, "mid_block.resnets.0.", Cm, Cm, temb, G, 1e-5f);
    transformer_make(&u->mid_attn, ps, "mid_block.attentions.0.", Cm, heads_for(cfg, Cm), cfg->context_dim, G,
                     cfg->use_linear_projection);
    ap_resnet_make(&u->mid_res[1], ps, "mid_block.resnets.1.", Cm, Cm, temb, G, 1e-5f);

    /* up blocks: level order reversed; each resnet eats one skip (the skips are
     * popped in reverse order of pushing) */
    int skip_ch[1 + AP_UNET_MAX_LEVELS * (AP_UNET_MAX_LAYERS + 1)], ns = 0;
    skip_ch[ns++] = C0;
    for (int l = 0; l < cfg->levels; l++) {
        for (int j = 0; j < cfg->layers_per_block; j++) skip_ch[ns++] = cfg->block_out[l];
        if (l < cfg->levels - 1) skip_ch[ns++] = cfg->block_out[l];
    }
    ch = Cm;
    for (int i = 0; i < cfg->levels; i++) {
        int l = cfg->levels - 1 - i, C = cfg->block_out[l];
        ap_unet_block *up = &u->up[i];
        up->n_layers = cfg->layers_per_block + 1;
        up->has_attn = cfg->attention[l];
        for (int j = 0; j < up->n_layers; j++) {
            int skip = skip_ch[--ns];
            AP_FMT(b, "up_blocks.%d.resnets.%d.", i, j);
            ap_resnet_make(&up->resnets[j], ps, b, ch + skip, C, temb, G, 1e-5f);
            ch = C;
            if (up->has_attn) {
                AP_FMT(b, "up_blocks.%d.attentions.%d.", i, j);
                transformer_make(&up->attns[j], ps, b, C, heads_for(cfg, C), cfg->context_dim, G,
                                 cfg->use_linear_projection);
            }
        }
        if (i < cfg->levels - 1) {
            up->has_sampler = 1;
            AP_FMT(b, "up_blocks.%d.upsamplers.0.conv.", i);
            ap_conv_make(&up->sampler, ps, b, C, C, 3, 1, PAD1);
        }
    }
    ap_gn_make(&u->norm_out, ps, "conv_norm_out.", C0, G, 1e-5f);
    ap_conv_make(&u->conv_out, ps, "conv_out.", C0, cfg->out_channels, 3, 1, PAD1);
    if (ap_failed(c)) {
        ap_unet_free(u);
        return c->status;
    }
    *out = u;
    return AP_OK;
}

void ap_unet_free(ap_unet *u) {
    if (!u) return;
    ap_params_free(&u->params);
    free(u);
}

ap_tensor *ap_unet_forward(ap_ctx *c, const ap_unet *u, ap_tensor *x, ap_tensor *t, ap_tensor *ctx) {
    if (ap_failed(c)) return NULL;
    const ap_unet_config *cfg = &u->cfg;
    char sa[64], sb[64], sc[64];
    if (!x || !t || !ctx) {
        ap_seterr(c, AP_ERR_INVALID_ARG, "unet: %s is NULL", !x ? "x" : !t ? "t" : "ctx");
        return NULL;
    }
    if (ap_tensor_ndim(x) != 4 || ap_tensor_dim(x, 3) != cfg->in_channels) {
        ap_seterr(c, AP_ERR_SHAPE, "unet: x is %s, expected latents [N,h,w,%d] (NHWC)", ap_shape_str(x, sa, sizeof sa),
                  cfg->in_channels);
        return NULL;
    }
    if (ap_tensor_ndim(ctx) != 3 || ap_tensor_dim(ctx, 2) != cfg->context_dim ||
        ap_tensor_dim(ctx, 0) != ap_tensor_dim(x, 0) || ap_tensor_numel(t) != ap_tensor_dim(x, 0)) {
        ap_seterr(c, AP_ERR_SHAPE, "unet: x is %s, t %s and ctx %s: expected t [%lld] and ctx [%lld,S,%d]",
                  ap_shape_str(x, sa, sizeof sa), ap_shape_str(t, sb, sizeof sb),
                  ap_shape_str(ctx, sc, sizeof sc), (long long)ap_tensor_dim(x, 0),
                  (long long)ap_tensor_dim(x, 0), cfg->context_dim);
        return NULL;
    }
    int64_t H = ap_tensor_dim(x, 1), W = ap_tensor_dim(x, 2);
    int64_t f = (int64_t)1 << (cfg->levels - 1);
    if (H % f || W % f) {
        ap_seterr(c, AP_ERR_SHAPE, "unet: latent %lldx%lld must be a multiple of %lld", (long long)H,
                  (long long)W, (long long)f);
        return NULL;
    }
    /* time embedding */
    int C0 = cfg->block_out[0];
    ap_tensor *temb = ap_timestep_embedding(c, t, C0, 1, 0.0f, 10000.0f);
    temb = ap_swap(temb, ap_linear_fwd(c, &u->time_linear_1, temb));
    temb = ap_swap(temb, ap_silu(c, temb));
    temb = ap_swap(temb, ap_linear_fwd(c, &u->time_linear_2, temb));
    ap_tensor *st = ap_silu(c, temb); /* every resnet applies SiLU first: do it once */
    ap_drop(&temb);

    ap_tensor *skips[1 + AP_UNET_MAX_LEVELS * (AP_UNET_MAX_LAYERS + 1)];
    int ns = 0;
    ap_tensor *h = ap_conv_fwd(c, &u->conv_in, x);
    skips[ns++] = ap_tensor_retain(h);
    for (int l = 0; l < cfg->levels; l++) {
        const ap_unet_block *d = &u->down[l];
        for (int j = 0; j < d->n_layers; j++) {
            h = ap_swap(h, ap_resnet_fwd(c, &d->resnets[j], h, st));
            if (d->has_attn) h = ap_swap(h, transformer_fwd(c, &d->attns[j], h, ctx));
            skips[ns++] = ap_tensor_retain(h);
        }
        if (d->has_sampler) {
            h = ap_swap(h, ap_conv_fwd(c, &d->sampler, h));
            skips[ns++] = ap_tensor_retain(h);
        }
    }
    h = ap_swap(h, ap_resnet_fwd(c, &u->mid_res[0], h, st));
    h = ap_swap(h, transformer_fwd(c, &u->mid_attn, h, ctx));
    h = ap_swap(h, ap_resnet_fwd(c, &u->mid_res[1], h, st));
    for (int i = 0; i < cfg->levels; i++) {
        const ap_unet_block *up = &u->up[i];
        for (int j = 0; j < up->n_layers; j++) {
            ap_tensor *s = skips[--ns];
            h = ap_swap(h, ap_concat_channels(c, h, s)); /* current first, skip second */
            ap_tensor_release(s);
            h = ap_swap(h, ap_resnet_fwd(c, &up->resnets[j], h, st));
            if (up->has_attn) h = ap_swap(h, transformer_fwd(c, &up->attns[j], h, ctx));
        }
        if (up->has_sampler) {
            h = ap_swap(h, ap_upsample_nearest2x(c, h));
            h = ap_swap(h, ap_conv_fwd(c, &up->sampler, h));
        }
    }
    while (ns > 0) ap_tensor_release(skips[--ns]); /* only on error paths */
    ap_drop(&st);
    h = ap_swap(h, ap_gn_fwd(c, &u->norm_out, h));
    h = ap_swap(h, ap_silu(c, h));
    h = ap_swap(h, ap_conv_fwd(c, &u->conv_out, h));
    return h;
}
