/* Sampling with gradient: the DDIM chain of AlignProp, with classifier-free
 * guidance (cond and uncond through one UNet call), every UNet call whose
 * gradient the truncation policy keeps run under the checkpoint primitive,
 * the others without recording, and the VAE decoder checkpointed. The result
 * is an image whose gradient reaches the LoRA weights (and anything else that
 * requires one) through the kept steps. */
#ifndef AP_TRAIN_SAMPLE_GRAD_H
#define AP_TRAIN_SAMPLE_GRAD_H

#include "diffusion/sampler.h"
#include "models/sd.h"
#include "train/truncation.h"

typedef struct {
    int steps;               /* 50 */
    float cfg;               /* 7.5 (<= 1: no uncond pass) */
    float eta;               /* DDIM eta (0; > 0 adds noise drawn from noise_rng as a constant) */
    ap_trunc_policy trunc;   /* fixed:1 by default */
    bool checkpoint;         /* run kept UNet calls and the decoder under ap_checkpoint (true) */
    ap_timestep_spacing spacing; /* DDIM timesteps: default (= leading with offset 1, as SD 1.x and AlignProp) */
    /* For tests of truncated gradients: when record is set, the (constant) UNet
     * outputs of the steps whose gradient is not kept are stored there (steps
     * entries, new references; NULL for kept steps); when replay is set, those
     * steps use the stored outputs instead of running the UNet. A replayed chain
     * is the function whose exact derivative the truncated gradient is. */
    ap_tensor **record;
    ap_tensor *const *replay;
} ap_grad_sample_opts;

void ap_grad_sample_defaults(ap_grad_sample_opts *o);

/* ctx: text embeddings [2B,S,W] (uncond first) when cfg > 1, else [B,S,W];
 * x_T: initial latents [B,h,w,C] (no gradient). trunc_rng draws the truncation
 * plan; noise_rng the DDIM noise when eta > 0 (may be NULL otherwise). Returns
 * the final latents and the decoded image [B,H,W,3] in [-1,1], both recorded
 * on the tape. keep_out (optional, steps entries) receives the plan. */
ap_status ap_sample_with_grad(ap_ctx *c, ap_sd_model *m, const ap_grad_sample_opts *o, ap_tensor *ctx, ap_tensor *x_T,
                              ap_rng *trunc_rng, ap_rng *noise_rng, ap_tensor **latents, ap_tensor **image,
                              bool *keep_out);

/* Consumes from the streams exactly what drawing the initial latents of a
 * chain of B latents [B,h,w,C] (from lat_rng) and ap_sample_with_grad with the
 * same options (from trunc_rng, and noise_rng when eta > 0) would, without
 * sampling anything. Data-parallel ranks use it to step over the chains of
 * the other ranks, so every rank's streams stay those of one process running
 * every chain. */
ap_status ap_sample_skip_draws(ap_ctx *c, const ap_grad_sample_opts *o, int64_t B, int64_t h, int64_t w, int64_t C,
                               ap_rng *lat_rng, ap_rng *trunc_rng, ap_rng *noise_rng);

#endif
