/* The CLIP vision transformer (HF CLIPVisionModelWithProjection; OpenCLIP's
 * VisionTransformer loads into it through models/clip.h), in HF's names:
 *
 *   pixels [B,S,S,3] -> patch conv (k = stride = patch, no bias) -> [class; patches]
 *   + position embedding -> pre_layrnorm -> pre-LN layers (no mask)
 *   -> post_layernorm of the class token -> visual_projection (no bias) -> [B,proj]
 *
 * Weights are frozen: the tower is differentiable with respect to the pixels
 * only (the reward models backpropagate into the image). */
#ifndef AP_MODELS_CLIP_VISION_H
#define AP_MODELS_CLIP_VISION_H

#include "clip_text.h" /* ap_activation, ap_clip_layer */

typedef struct {
    int image_size;    /* S: 224 */
    int patch;         /* 14 */
    int width;         /* 1024 */
    int layers;        /* 24 */
    int heads;         /* 16 */
    int mlp;           /* 4096 */
    ap_activation act; /* quick_gelu (OpenAI-trained) or gelu (LAION / OpenCLIP) */
    float eps;         /* 1e-5 */
    int proj_dim;      /* 768 */
} ap_clip_vision_config;

/* openai/clip-vit-large-patch14 (the LAION aesthetic predictor's tower). */
extern const ap_clip_vision_config ap_clip_vision_config_l14;
/* OpenCLIP ViT-H/14 (HPSv2, PickScore): 32 layers, width 1280, 16 heads, MLP 5120, GELU, projection 1024. */
extern const ap_clip_vision_config ap_clip_vision_config_h14;
/* A tiny tower for tests: 30x30 pixels, patch 6 (25 patches), width 32, 2 layers, 4 heads, MLP 72, quick_gelu, 16. */
extern const ap_clip_vision_config ap_clip_vision_config_tiny;
/* "vit_l14", "vit_h14", "tiny" -> config (AP_ERR_INVALID_ARG for other names). */
ap_status ap_clip_vision_preset(ap_ctx *c, const char *name, ap_clip_vision_config *out);

typedef struct {
    ap_clip_vision_config cfg;
    ap_params params;
    ap_tensor *class_emb; /* [W] */
    ap_tensor *patch_w;   /* [W,3,P,P] */
    ap_tensor *pos_emb;   /* [1+(S/P)^2, W] */
    ap_ln_layer pre_ln, post_ln;
    ap_clip_layer layer[AP_CLIP_MAX_LAYERS];
    ap_linear_layer proj; /* visual_projection [proj, W] */
} ap_clip_vision;

ap_status ap_clip_vision_create(ap_ctx *c, const ap_clip_vision_config *cfg, ap_dtype wdt, ap_clip_vision **out);
void ap_clip_vision_free(ap_clip_vision *m); /* accepts NULL */
/* pixels [B,S,S,3] f32, normalised with CLIP's mean and std -> image embeds
 * [B,proj_dim] (not normalised). Records the tape when pixels need a gradient. */
ap_tensor *ap_clip_vision_forward(ap_ctx *c, const ap_clip_vision *m, ap_tensor *pixels);
/* Multiply-adds x2 of one forward for a batch of B (for benchmarks). */
double ap_clip_vision_flops(const ap_clip_vision_config *cfg, int B);

#endif
