/* The SD1.x VAE (diffusers AutoencoderKL), built from a config. */
#ifndef AP_MODELS_VAE_H
#define AP_MODELS_VAE_H

#include "models/unet.h"

#define AP_VAE_MAX_LEVELS 4
#define AP_VAE_MAX_LAYERS 3

typedef struct {
    int in_channels, out_channels, latent_channels;
    int levels;
    int block_out[AP_VAE_MAX_LEVELS]; /* 128, 256, 512, 512 */
    int layers_per_block;             /* 2 (decoder blocks get one more) */
    int norm_groups;                  /* 32 */
    float scaling_factor;             /* 0.18215 */
} ap_vae_config;

extern const ap_vae_config ap_vae_config_sd15;

typedef struct {
    ap_gn_layer norm;
    ap_linear_layer to_q, to_k, to_v, to_out; /* single head */
} ap_vae_attn;

typedef struct {
    ap_resnet resnets[AP_VAE_MAX_LAYERS];
    ap_conv_layer sampler;
    int n_layers, has_sampler;
} ap_vae_block;

typedef struct {
    ap_conv_layer conv_in, conv_out;
    ap_vae_block blocks[AP_VAE_MAX_LEVELS];
    ap_resnet mid_res[2];
    ap_vae_attn mid_attn;
    ap_gn_layer norm_out;
} ap_vae_coder;

typedef struct {
    ap_vae_config cfg;
    ap_params params;
    ap_vae_coder enc, dec;
    ap_conv_layer quant_conv, post_quant_conv;
} ap_vae;

ap_status ap_vae_create(ap_ctx *c, const ap_vae_config *cfg, ap_dtype wdt, ap_vae **out);
void ap_vae_free(ap_vae *v);
/* image [N,H,W,3] in [-1,1] = decode(latent [N,h,w,4] scaled by scaling_factor). */
ap_tensor *ap_vae_decode(ap_ctx *c, const ap_vae *v, ap_tensor *latent);
/* Encoder moments [N,h,w,2*latent] (mean, logvar), before sampling and scaling. */
ap_tensor *ap_vae_encode_moments(ap_ctx *c, const ap_vae *v, ap_tensor *image);

#endif
