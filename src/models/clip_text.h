/* The CLIP text transformer, in Hugging Face's names (CLIPTextModel), and the
 * pre-LN layer it shares with the CLIP vision tower.
 *
 * One config covers SD1.x's text encoder (no projection; its last hidden state
 * conditions the UNet), HF CLIPTextModelWithProjection (PickScore's text side)
 * and OpenCLIP's text tower (HPSv2; loaded from OpenCLIP names through the map
 * of models/clip.h): the last two pool the final-LN feature at the end-of-text
 * token (the first position holding the largest id) and project it. */
#ifndef AP_MODELS_CLIP_TEXT_H
#define AP_MODELS_CLIP_TEXT_H

#include "nn/nn.h"

#define AP_CLIP_MAX_LAYERS 48

typedef enum { AP_ACT_QUICK_GELU = 0, AP_ACT_GELU = 1 } ap_activation;

typedef struct {
    int vocab;         /* 49408 */
    int max_positions; /* 77 */
    int width;         /* 768 */
    int layers;        /* 12 */
    int heads;         /* 12 */
    int intermediate;  /* 3072 */
    ap_activation act; /* quick_gelu */
    float eps;         /* 1e-5 */
    int proj_dim;      /* text_projection [proj_dim, width] (no bias); 0 = none (SD1.x) */
} ap_clip_text_config;

extern const ap_clip_text_config ap_clip_text_config_sd15;
/* OpenCLIP ViT-H/14's text tower (HPSv2), = PickScore's (HF layout): 24 layers,
 * width 1024, 16 heads, MLP 4096, GELU, projection to 1024. */
extern const ap_clip_text_config ap_clip_text_config_h14;

/* A pre-LN transformer layer: h += out_proj(attn(ln1(h))); h += fc2(act(fc1(ln2(h)))). */
typedef struct {
    ap_ln_layer ln1, ln2;
    ap_attn_layer attn; /* q_proj, k_proj, v_proj, out_proj, all with bias */
    ap_linear_layer fc1, fc2;
} ap_clip_layer;

/* Registers prefix + {layer_norm1, self_attn.{q,k,v,out}_proj, layer_norm2, mlp.fc1, mlp.fc2}. */
void ap_clip_layer_make(ap_clip_layer *L, ap_params *ps, const char *prefix, int width, int mlp, float eps);
/* h [B,T,W] -> [B,T,W] (a new reference; h is not released). */
ap_tensor *ap_clip_layer_fwd(ap_ctx *c, const ap_clip_layer *L, int heads, ap_activation act, bool causal,
                             ap_tensor *h);

typedef struct {
    ap_clip_text_config cfg;
    ap_params params;
    ap_tensor *tok_emb, *pos_emb;
    ap_clip_layer layer[AP_CLIP_MAX_LAYERS];
    ap_ln_layer final_ln;
    ap_linear_layer proj; /* text_projection (cfg.proj_dim > 0) */
} ap_clip_text;

ap_status ap_clip_text_create(ap_ctx *c, const ap_clip_text_config *cfg, ap_dtype wdt, ap_clip_text **out);
void ap_clip_text_free(ap_clip_text *m);
/* ids [B,T] (i32 or i64, T <= max_positions) -> last hidden state [B,T,width]
 * after the final layer norm. skip > 0 stops skip layers early (clip skip). */
ap_tensor *ap_clip_text_forward(ap_ctx *c, const ap_clip_text *m, ap_tensor *ids, int skip);
/* ids [B,T] -> text embeds [B,proj_dim] (not normalised): the final-LN feature
 * at each row's end-of-text token (argmax of the ids: the first position with
 * the largest id, as OpenCLIP and HF do), through text_projection. A tower
 * without a projection returns the pooled feature [B,width]. */
ap_tensor *ap_clip_text_embed(ap_ctx *c, const ap_clip_text *m, ap_tensor *ids);

#endif
