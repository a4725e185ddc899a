/* The CLIP text transformer (HF CLIPTextModel; SD1.x's ViT-L/14 text tower). */
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
} ap_clip_text_config;

extern const ap_clip_text_config ap_clip_text_config_sd15;

typedef struct {
    ap_ln_layer ln1, ln2;
    ap_attn_layer attn; /* q_proj, k_proj, v_proj, out_proj, all with bias */
    ap_linear_layer fc1, fc2;
} ap_clip_layer;

typedef struct {
    ap_clip_text_config cfg;
    ap_params params;
    ap_tensor *tok_emb, *pos_emb;
    ap_clip_layer layer[AP_CLIP_MAX_LAYERS];
    ap_ln_layer final_ln;
} ap_clip_text;

ap_status ap_clip_text_create(ap_ctx *c, const ap_clip_text_config *cfg, ap_dtype wdt, ap_clip_text **out);
void ap_clip_text_free(ap_clip_text *m);
/* ids [B,T] (i32 or i64, T <= max_positions) -> last hidden state [B,T,width]
 * after the final layer norm. skip > 0 stops skip layers early (clip skip). */
ap_tensor *ap_clip_text_forward(ap_ctx *c, const ap_clip_text *m, ap_tensor *ids, int skip);

#endif
