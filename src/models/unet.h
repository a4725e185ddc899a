/* The SD1.x UNet (diffusers UNet2DConditionModel), built from a config. */
#ifndef AP_MODELS_UNET_H
#define AP_MODELS_UNET_H

#include "nn/nn.h"

#define AP_UNET_MAX_LEVELS 4
#define AP_UNET_MAX_LAYERS 3

typedef struct {
    int in_channels, out_channels;
    int levels;                          /* len(block_out_channels) */
    int block_out[AP_UNET_MAX_LEVELS];   /* 320, 640, 1280, 1280 */
    int attention[AP_UNET_MAX_LEVELS];   /* level has cross-attention transformers (down order) */
    int layers_per_block;                /* 2 (up blocks get one more) */
    int heads;                           /* attention heads per transformer (SD1: 8) when head_dim is 0 */
    int head_dim;                        /* SD2-style fixed head width; 0 = use heads */
    int context_dim;                     /* 768 */
    int norm_groups;                     /* 32 */
    int use_linear_projection;           /* 0: proj_in/out are 1x1 convs (SD1) */
} ap_unet_config;

extern const ap_unet_config ap_unet_config_sd15;

typedef struct ap_resnet {
    ap_gn_layer norm1, norm2;
    ap_conv_layer conv1, conv2, shortcut;
    ap_linear_layer time_emb_proj;
    int has_shortcut, has_temb;
} ap_resnet;

typedef struct {
    ap_ln_layer norm1, norm2, norm3;
    ap_attn_layer attn1, attn2;
    ap_linear_layer ff_in, ff_out; /* ff.net.0.proj (GEGLU, 2F), ff.net.2 */
} ap_tblock;

typedef struct {
    ap_gn_layer norm;
    ap_linear_layer proj_in, proj_out; /* 1x1 conv weights [C,C,1,1] or linear [C,C]: same memory */
    ap_tblock block;
    int channels;
} ap_transformer;

typedef struct {
    ap_resnet resnets[AP_UNET_MAX_LAYERS];
    ap_transformer attns[AP_UNET_MAX_LAYERS];
    ap_conv_layer sampler; /* downsampler (down blocks) or upsampler conv (up blocks) */
    int n_layers, has_attn, has_sampler;
} ap_unet_block;

typedef struct {
    ap_unet_config cfg;
    ap_params params;
    ap_linear_layer time_linear_1, time_linear_2;
    ap_conv_layer conv_in, conv_out;
    ap_gn_layer norm_out;
    ap_unet_block down[AP_UNET_MAX_LEVELS], up[AP_UNET_MAX_LEVELS];
    ap_resnet mid_res[2];
    ap_transformer mid_attn;
} ap_unet;

/* Builds the model with zeroed parameters in weight dtype wdt. */
ap_status ap_unet_create(ap_ctx *c, const ap_unet_config *cfg, ap_dtype wdt, ap_unet **out);
void ap_unet_free(ap_unet *u);
/* eps = UNet(x [N,h,w,Cin] NHWC, t [N] f32 timesteps, ctx [N,S,context_dim]). */
ap_tensor *ap_unet_forward(ap_ctx *c, const ap_unet *u, ap_tensor *x, ap_tensor *t, ap_tensor *ctx);

/* Shared pieces (also used by the VAE): a resnet block. temb may be NULL. */
void ap_resnet_make(ap_resnet *r, ap_params *ps, const char *prefix, int in, int out, int temb_dim,
                    int groups, float eps);
ap_tensor *ap_resnet_fwd(ap_ctx *c, const ap_resnet *r, ap_tensor *x, ap_tensor *silu_temb);

#endif
