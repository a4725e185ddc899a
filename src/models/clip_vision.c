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
    for (int l = 0; l < cfg->layers; l++)
        h = ap_swap(h, ap_clip_layer_fwd(c, &m->layer[l], cfg->heads, cfg->act, false, h));
    /* the class tokens: rows b*T of h viewed as [B*T,W] */
    ap_tensor *rows = ap_tensor_new(c, AP_I64, 1, (int64_t[]){B});
    if (rows)
        for (int64_t b = 0; b < B; b++) ((int64_t *)ap_tensor_data(rows))[b] = b * T;
    ap_tensor *hf = ap_reshape(c, h, 2, (int64_t[]){B * T, W});
    ap_tensor_release(h);
    ap_tensor *pooled = ap_embedding(c, rows, hf); /* [B,W] */
    ap_tensor_release(rows);
    ap_tensor_release(hf);
    pooled = ap_swap(pooled, ap_ln_fwd(c, &m->post_ln, pooled));
    return ap_swap(pooled, ap_linear_fwd(c, &m->proj, pooled));
}

double ap_clip_vision_flops(const ap_clip_vision_config *cfg, int B) {
    double S = cfg->image_size, P = cfg->patch, W = cfg->width, G = S / P, T = 1 + G * G, M = cfg->mlp;
    double patch = 2.0 * G * G * W * 3 * P * P;
    double layer = 2.0 * T * W * W * 4 + 2.0 * T * W * M * 2 + 2.0 * 2 * T * T * W;
    return B * (patch + cfg->layers * layer + 2.0 * W * cfg->proj_dim);
}
