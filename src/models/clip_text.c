/* The CLIP text transformer: token + position embeddings, pre-LN layers with
 * causal self-attention and an MLP, and a final layer norm; optionally the
 * pooled, projected embedding. HF names. */
#include "clip_text.h"

#include "core/internal.h"

#include <stdio.h>
#include <stdlib.h>

const ap_clip_text_config ap_clip_text_config_sd15 = {
    .vocab = 49408, .max_positions = 77, .width = 768, .layers = 12, .heads = 12,
    .intermediate = 3072, .act = AP_ACT_QUICK_GELU, .eps = 1e-5f,
};

const ap_clip_text_config ap_clip_text_config_h14 = {
    .vocab = 49408, .max_positions = 77, .width = 1024, .layers = 24, .heads = 16,
    .intermediate = 4096, .act = AP_ACT_GELU, .eps = 1e-5f, .proj_dim = 1024,
};

void ap_clip_layer_make(ap_clip_layer *L, ap_params *ps, const char *prefix, int W, int mlp, float eps) {
    char b[512];
    AP_FMT(b, "%slayer_norm1.", prefix);
    ap_ln_make(&L->ln1, ps, b, W, eps);
    const char *nm[4] = {"q_proj.", "k_proj.", "v_proj.", "out_proj."};
    ap_linear_layer *ls[4] = {&L->attn.to_q, &L->attn.to_k, &L->attn.to_v, &L->attn.to_out};
    for (int i = 0; i < 4; i++) {
        AP_FMT(b, "%sself_attn.%s", prefix, nm[i]);
        ap_linear_make(ls[i], ps, b, W, W, true);
    }
    AP_FMT(b, "%slayer_norm2.", prefix);
    ap_ln_make(&L->ln2, ps, b, W, eps);
    AP_FMT(b, "%smlp.fc1.", prefix);
    ap_linear_make(&L->fc1, ps, b, W, mlp, true);
    AP_FMT(b, "%smlp.fc2.", prefix);
    ap_linear_make(&L->fc2, ps, b, mlp, W, true);
}

ap_tensor *ap_clip_layer_fwd(ap_ctx *c, const ap_clip_layer *L, int heads, ap_activation act, bool causal,
                             ap_tensor *h) {
    ap_attn_layer attn = L->attn;
    attn.heads = heads;
    ap_tensor *a = ap_ln_fwd(c, &L->ln1, h);
    a = ap_swap(a, ap_attn_fwd(c, &attn, a, NULL, causal));
    ap_tensor *h1 = ap_add(c, h, a);
    ap_drop(&a);
    a = ap_ln_fwd(c, &L->ln2, h1);
    a = ap_swap(a, ap_linear_fwd(c, &L->fc1, a));
    a = ap_swap(a, act == AP_ACT_GELU ? ap_gelu(c, a) : ap_quick_gelu(c, a));
    a = ap_swap(a, ap_linear_fwd(c, &L->fc2, a));
    ap_tensor *h2 = ap_add(c, h1, a);
    ap_tensor_release(a);
    ap_tensor_release(h1);
    return h2;
}

ap_status ap_clip_text_create(ap_ctx *c, const ap_clip_text_config *cfg, ap_dtype wdt, ap_clip_text **out) {
    *out = NULL;
    if (ap_failed(c)) return c->status;
    if (cfg->layers < 1 || cfg->layers > AP_CLIP_MAX_LAYERS || cfg->heads < 1 || cfg->width % cfg->heads ||
        cfg->vocab < 1 || cfg->max_positions < 1 || cfg->intermediate < 1 || cfg->proj_dim < 0)
        return ap_seterr(c, AP_ERR_INVALID_ARG, "clip text config: %d layers, width %d, %d heads: unsupported",
                         cfg->layers, cfg->width, cfg->heads);
    ap_clip_text *m = calloc(1, sizeof *m);
    if (!m) return ap_seterr(c, AP_ERR_NOMEM, "clip text: out of memory");
    m->cfg = *cfg;
    ap_params *ps = &m->params;
    ap_params_init(ps, c, wdt);
    int W = cfg->width;
    m->tok_emb = ap_params_add(ps, "text_model.embeddings.token_embedding.", "weight", AP_PARAM_EMBEDDING, 2,
                               (int64_t[]){cfg->vocab, W});
    m->pos_emb = ap_params_add(ps, "text_model.embeddings.position_embedding.", "weight", AP_PARAM_EMBEDDING, 2,
                               (int64_t[]){cfg->max_positions, W});
    char b[512];
    for (int l = 0; l < cfg->layers; l++) {
        AP_FMT(b, "text_model.encoder.layers.%d.", l);
        ap_clip_layer_make(&m->layer[l], ps, b, W, cfg->intermediate, cfg->eps);
    }
    ap_ln_make(&m->final_ln, ps, "text_model.final_layer_norm.", W, cfg->eps);
    if (cfg->proj_dim > 0) ap_linear_make(&m->proj, ps, "text_projection.", W, cfg->proj_dim, false);
    if (ap_failed(c)) {
        ap_clip_text_free(m);
        return c->status;
    }
    *out = m;
    return AP_OK;
}

void ap_clip_text_free(ap_clip_text *m) {
    if (!m) return;
    ap_params_free(&m->params);
    free(m);
}

ap_tensor *ap_clip_text_forward(ap_ctx *c, const ap_clip_text *m, ap_tensor *ids, int skip) {
    if (ap_failed(c)) return NULL;
    const ap_clip_text_config *cfg = &m->cfg;
    if (!ids || ap_tensor_ndim(ids) != 2 || ap_tensor_dim(ids, 1) > cfg->max_positions) {
        char b[64];
        ap_seterr(c, AP_ERR_SHAPE, "clip text: ids are %s, expected [B,T] with T <= %d",
                  ids ? ap_shape_str(ids, b, sizeof b) : "NULL", cfg->max_positions);
        return NULL;
    }
    if (skip < 0 || skip >= cfg->layers) {
        ap_seterr(c, AP_ERR_INVALID_ARG, "clip text: clip skip %d out of range 0..%d", skip, cfg->layers - 1);
        return NULL;
    }
    int64_t T = ap_tensor_dim(ids, 1);
    ap_tensor *h = ap_embedding(c, ids, m->tok_emb); /* [B,T,W] */
    /* positions 0..T-1: the first T rows of the table, broadcast over the batch */
    ap_tensor *pid = ap_tensor_new(c, AP_I64, 1, (int64_t[]){T});
    if (pid)
        for (int64_t i = 0; i < T; i++) ((int64_t *)ap_tensor_data(pid))[i] = i;
    ap_tensor *pos = ap_embedding(c, pid, m->pos_emb); /* [T,W] */
    ap_tensor_release(pid);
    h = ap_swap(h, ap_add(c, h, pos));
    ap_tensor_release(pos);
    for (int l = 0; l < cfg->layers - skip; l++)
        h = ap_swap(h, ap_clip_layer_fwd(c, &m->layer[l], cfg->heads, cfg->act, true, h));
    return ap_swap(h, ap_ln_fwd(c, &m->final_ln, h));
}

ap_tensor *ap_clip_text_embed(ap_ctx *c, const ap_clip_text *m, ap_tensor *ids) {
    ap_tensor *h = ap_clip_text_forward(c, m, ids, 0); /* [B,T,W] */
    if (!h) return NULL;
    int64_t B = ap_tensor_dim(h, 0), T = ap_tensor_dim(h, 1), W = ap_tensor_dim(h, 2);
    /* the rows b*T + argmax(ids[b]) of h viewed as [B*T,W] */
    ap_tensor *at = ap_tensor_new(c, AP_I64, 1, (int64_t[]){B});
    if (at) {
        const void *src = ap_tensor_cdata(ids);
        bool i32 = ap_tensor_dtype(ids) == AP_I32;
        for (int64_t b = 0; b < B; b++) {
            int64_t best = 0, bv = INT64_MIN;
            for (int64_t t = 0; t < T; t++) {
                int64_t v = i32 ? ((const int32_t *)src)[b * T + t] : ((const int64_t *)src)[b * T + t];
                if (v > bv) bv = v, best = t;
            }
            ((int64_t *)ap_tensor_data(at))[b] = b * T + best;
        }
    }
    ap_tensor *flat = ap_reshape(c, h, 2, (int64_t[]){B * T, W});
    ap_tensor_release(h);
    ap_tensor *pooled = ap_embedding(c, at, flat); /* [B,W] */
    ap_tensor_release(at);
    ap_tensor_release(flat);
    if (m->cfg.proj_dim > 0) pooled = ap_swap(pooled, ap_linear_fwd(c, &m->proj, pooled));
    return pooled;
}
