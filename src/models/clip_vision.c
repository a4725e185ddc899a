/* The CLIP vision transformer (see clip_vision.h). HF names. */
#include "clip_vision.h"

#include "core/internal.h"

#include <stdio.h>
#include <stdlib.h>

const ap_clip_vision_config ap_clip_vision_config_l14 = {
    .image_size = 224, .patch = 14, .width = 1024, .layers = 24, .heads = 16, .mlp = 4096,
    .act = AP_ACT_QUICK_GELU, .eps = 1e-5f, .proj_dim = 768,
};
const ap_clip_vision_config ap_clip_vision_config_h14 = {
    .image_size = 224, .patch = 14, .width = 1280, .layers = 32, .heads = 16, .mlp = 5120,
    .act = AP_ACT_GELU, .eps = 1e-5f, .proj_dim = 1024,
};
const ap_clip_vision_config ap_clip_vision_config_tiny = {
    .image_size = 30, .patch = 6, .width = 32, .layers = 2, .heads = 4, .mlp = 72,
    .act = AP_ACT_QUICK_GELU, .eps = 1e-5f, .proj_dim = 16,
};

ap_status ap_clip_vision_preset(ap_ctx *c, const char *name, ap_clip_vision_config *out) {
    if (ap_failed(c)) return c->status;
    if (!strcmp(name, "vit_l14")) *out = ap_clip_vision_config_l14;
    else if (!strcmp(name, "vit_h14")) *out = ap_clip_vision_config_h14;
    else if (!strcmp(name, "tiny")) *out = ap_clip_vision_config_tiny;
    else return ap_seterr(c, AP_ERR_INVALID_ARG, "clip vision: unknown preset '%s' (vit_l14, vit_h14, tiny)", name);
    return AP_OK;
}

ap_status ap_clip_vision_create(ap_ctx *c, const ap_clip_vision_config *cfg, ap_dtype wdt, ap_clip_vision **out) {
    *out = NULL;
    if (ap_failed(c)) return c->status;
    if (cfg->layers < 1 || cfg->layers > AP_CLIP_MAX_LAYERS || cfg->heads < 1 || cfg->width < 1 ||
        cfg->width % cfg->heads || cfg->patch < 1 || cfg->image_size < cfg->patch ||
        cfg->image_size % cfg->patch || cfg->mlp < 1 || cfg->proj_dim < 1)
        return ap_seterr(c, AP_ERR_INVALID_ARG,
                         "clip vision config: image %d, patch %d, %d layers, width %d, %d heads, mlp %d, proj %d: "
                         "unsupported", cfg->image_size, cfg->patch, cfg->layers, cfg->width, cfg->heads, cfg->mlp,
                         cfg->proj_dim);
    ap_clip_vision *m = calloc(1, sizeof *m);
    if (!m) return ap_seterr(c, AP_ERR_NOMEM, "clip vision: out of memory");
    m->cfg = *cfg;
    ap_params *ps = &m->params;
    ap_params_init(ps, c, wdt);
    int W = cfg->width, P = cfg->patch, G = cfg->image_size / P;
    m->class_emb = ap_params_add(ps, "vision_model.embeddings.", "class_embedding", AP_PARAM_EMBEDDING, 1,
                                 (int64_t[]){W});
    m->patch_w = ap_params_add(ps, "vision_model.embeddings.patch_embedding.", "weight", AP_PARAM_WEIGHT, 4,
                               (int64_t[]){W, 3, P, P});
    m->pos_emb = ap_params_add(ps, "vision_model.embeddings.position_embedding.", "weight", AP_PARAM_EMBEDDING, 2,
                               (int64_t[]){1 + (int64_t)G * G, W});
    ap_ln_make(&m->pre_ln, ps, "vision_model.pre_layrnorm.", W, cfg->eps);
    char b[512];
    for (int l = 0; l < cfg->layers; l++) {
        AP_FMT(b, "vision_model.encoder.layers.%d.", l);
        ap_clip_layer_make(&m->layer[l], ps, b, W, cfg->mlp, cfg->eps);
    }
    ap_ln_make(&m->post_ln, ps, "vision_model.post_layernorm.", W, cfg->eps);
    ap_linear_make(&m->proj, ps, "visual_projection.", W, cfg->proj_dim, false);
    if (ap_failed(c)) {
        ap_clip_vision_free(m);
        return c->status;
    }
    *out = m;
    return AP_OK;
}

void ap_clip_vision_free(ap_clip_vision *m) {
    if (!m) return;
    ap_params_free(&m->params);
    free(m);
}

/* Rows b*T of x [B,T,W] (each image's class token) -> [B,1,W]; a gather, so
 * the gradient flows back into those rows. */
static ap_tensor *class_rows(ap_ctx *c, ap_tensor *x) {
    if (!x) return NULL;
    int64_t B = ap_tensor_dim(x, 0), T = ap_tensor_dim(x, 1), W = ap_tensor_dim(x, 2);
    ap_tensor *rows = ap_tensor_new(c, AP_I64, 2, (int64_t[]){B, 1});
    if (rows)
        for (int64_t b = 0; b < B; b++) ((int64_t *)ap_tensor_data(rows))[b] = b * T;
    ap_tensor *flat = ap_reshape(c, x, 2, (int64_t[]){B * T, W});
    ap_tensor *y = ap_embedding(c, rows, flat);
    ap_tensor_release(rows);
    ap_tensor_release(flat);
    return y;
}

/* The last layer for the class token alone: only its output is pooled, so its
 * query, the attention output, the MLP and the residuals run on one token per
 * image; keys and values still come from every token. Equal to running the
 * whole layer and taking token 0 (the tests compare with the reference). */
static ap_tensor *last_layer_class_token(ap_ctx *c, const ap_clip_layer *L, const ap_clip_vision_config *cfg,
                                         ap_tensor *h) {
    ap_tensor *a = ap_ln_fwd(c, &L->ln1, h); /* [B,T,W] */
    ap_tensor *a0 = class_rows(c, a);        /* [B,1,W] */
    ap_tensor *q = ap_linear_fwd(c, &L->attn.to_q, a0);
    ap_tensor *k = ap_linear_fwd(c, &L->attn.to_k, a);
    ap_tensor *v = ap_linear_fwd(c, &L->attn.to_v, a);
    ap_tensor_release(a);
    ap_tensor_release(a0);
    ap_tensor *o = ap_attention(c, q, k, v, cfg->heads, 0.0f, 0);
    ap_tensor_release(q);
    ap_tensor_release(k);
    ap_tensor_release(v);
    o = ap_swap(o, ap_linear_fwd(c, &L->attn.to_out, o));
    ap_tensor *h0 = class_rows(c, h);
    ap_tensor *h1 = ap_add(c, h0, o);
    ap_tensor_release(h0);
    ap_tensor_release(o);
    ap_tensor *m = ap_ln_fwd(c, &L->ln2, h1);
    m = ap_swap(m, ap_linear_fwd(c, &L->fc1, m));
    m = ap_swap(m, cfg->act == AP_ACT_GELU ? ap_gelu(c, m) : ap_quick_gelu(c, m));
    m = ap_swap(m, ap_linear_fwd(c, &L->fc2, m));
    ap_tensor *out = ap_add(c, h1, m);
    ap_tensor_release(h1);
    ap_tensor_release(m);
    return out;
}

ap_tensor *ap_clip_vision_forward(ap_ctx *c, const ap_clip_vision *m, ap_tensor *x) {
    if (ap_failed(c)) return NULL;
    const ap_clip_vision_config *cfg = &m->cfg;
    int64_t S = cfg->image_size, P = cfg->patch, G = S / P, W = cfg->width, T = 1 + G * G;
    if (!x || ap_tensor_ndim(x) != 4 || ap_tensor_dim(x, 1) != S || ap_tensor_dim(x, 2) != S ||
        ap_tensor_dim(x, 3) != 3 || ap_tensor_dtype(x) != AP_F32) {
        char b[64];
        ap_seterr(c, AP_ERR_SHAPE, "clip vision: pixels are %s%s%s, expected f32 [B,%lld,%lld,3]",
                  x ? ap_shape_str(x, b, sizeof b) : "NULL", x ? " " : "", x ? ap_dtype_name(ap_tensor_dtype(x)) : "",
                  (long long)S, (long long)S);
        return NULL;
    }
    int64_t B = ap_tensor_dim(x, 0);
    ap_tensor *pt = ap_conv2d(c, x, m->patch_w, NULL, (ap_conv_params){.stride = (int)P}); /* [B,G,G,W] */
    ap_tensor *flat = ap_reshape(c, pt, 2, (int64_t[]){B, G * G * W});
    ap_tensor_release(pt);
    /* the class token leads each image's tokens: concatenate [B,W] and [B,G*G*W] rows */
    ap_tensor *cls = ap_tensor_new(c, AP_F32, 2, (int64_t[]){B, W});
    if (cls)
        for (int64_t b = 0; b < B; b++)
            ap_convert(ap_f32(cls) + b * W, AP_F32, ap_data(m->class_emb), m->class_emb->dtype, W);
    ap_tensor *tok = ap_concat_channels(c, cls, flat);
    ap_tensor_release(cls);
    ap_tensor_release(flat);
    ap_tensor *h = ap_reshape(c, tok, 3, (int64_t[]){B, T, W});
    ap_tensor_release(tok);
    ap_tensor *pid = ap_tensor_new(c, AP_I64, 1, (int64_t[]){T});
    if (pid)
        for (int64_t i = 0; i < T; i++) ((int64_t *)ap_tensor_data(pid))[i] = i;
    ap_tensor *pos = ap_embedding(c, pid, m->pos_emb); /* [T,W] */
    ap_tensor_release(pid);
    h = ap_swap(h, ap_add(c, h, pos));
    ap_tensor_release(pos);
    h = ap_swap(h, ap_ln_fwd(c, &m->pre_ln, h));
    for (int l = 0; l < cfg->layers - 1; l++)
        h = ap_swap(h, ap_clip_layer_fwd(c, &m->layer[l], cfg->heads, cfg->act, false, h));
    ap_tensor *pooled = last_layer_class_token(c, &m->layer[cfg->layers - 1], cfg, h); /* [B,1,W] */
    ap_tensor_release(h);
    pooled = ap_swap(pooled, ap_reshape(c, pooled, 2, (int64_t[]){B, W}));
    pooled = ap_swap(pooled, ap_ln_fwd(c, &m->post_ln, pooled));
    return ap_swap(pooled, ap_linear_fwd(c, &m->proj, pooled));
}

double ap_clip_vision_flops(const ap_clip_vision_config *cfg, int B) {
    double S = cfg->image_size, P = cfg->patch, W = cfg->width, G = S / P, T = 1 + G * G, M = cfg->mlp;
    double patch = 2.0 * G * G * W * 3 * P * P;
    double layer = 2.0 * T * W * W * 4 + 2.0 * T * W * M * 2 + 2.0 * 2 * T * T * W;
    /* the last layer: keys and values of every token, the rest for the class token */
    double last = 2.0 * T * W * W * 2 + 2.0 * W * W * 2 + 2.0 * W * M * 2 + 2.0 * 2 * T * W;
    return B * (patch + (cfg->layers - 1) * layer + last + 2.0 * W * cfg->proj_dim);
}
