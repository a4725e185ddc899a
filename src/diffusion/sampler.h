/* Samplers behind one interface: DDIM, Euler ancestral and DPM-Solver++ 2M, each as in
 * diffusers (versions and every rounding detail in docs/samplers.md).
 *
 * A sampler is made for N inference steps and is then read step by step:
 *   - the timestep the UNet gets at step i (float: Euler's are fractional),
 *   - init_noise_sigma (the initial latents are torch.randn * this),
 *   - the step as a linear combination of tensors the caller holds (ap_step_coefs),
 *     for running it through differentiable core ops in training;
 *   - or the whole step on float arrays, reproducing diffusers' own sequence of f32
 *     tensor ops (bit for bit for DDIM and Euler ancestral; DPM++ within a few ulps
 *     because torch's f32 log/exp are its own vectorised ones).
 *
 * Noise: Euler ancestral draws torch.randn(latent shape) from the generator at every
 * step (the last one too, where it is multiplied by 0); DDIM draws only when eta > 0.
 * Drawing from the same ap_rng as the initial latents reproduces diffusers' stream.
 *
 * Latent arrays are NHWC [n,h,w,c]; noise is drawn in torch's NCHW order and permuted
 * (ap_rng_randn_nhwc), so results match diffusers element for element. */
#ifndef AP_DIFFUSION_SAMPLER_H
#define AP_DIFFUSION_SAMPLER_H

#include "alignprop.h"
#include "diffusion/rng.h"
#include "diffusion/schedule.h"

#include <stdbool.h>
#include <stdint.h>

typedef enum {
    AP_SAMPLER_DDIM = 0,
    AP_SAMPLER_EULER_A = 1,
    AP_SAMPLER_DPMPP_2M = 2,
    AP_SAMPLER_COUNT_
} ap_sampler_kind;

typedef enum {
    AP_SPACING_DEFAULT = 0, /* each sampler's diffusers default: DDIM leading, the others linspace */
    AP_SPACING_LEADING,
    AP_SPACING_LINSPACE,
    AP_SPACING_TRAILING,
    AP_SPACING_COUNT_
} ap_timestep_spacing;

typedef struct {
    ap_sampler_kind kind;
    ap_schedule_config schedule;
    ap_timestep_spacing spacing;
    int steps_offset;      /* added to "leading" timesteps (SD 1.x: 1) */
    float eta;             /* DDIM: 0 deterministic, 1 DDPM-like; ignored by the others */
    bool set_alpha_to_one; /* DDIM: the alpha before t = 0 is 1 (else alphas_cumprod[0]; SD: false) */
} ap_sampler_config;

/* The SD 1.x scheduler config (runwayml scheduler_config.json) for a sampler kind. */
ap_sampler_config ap_sampler_config_sd15(ap_sampler_kind kind);

const char *ap_sampler_name(ap_sampler_kind k); /* "ddim", "euler_a", "dpmpp_2m" */
/* Parses a name (also "euler_ancestral", "dpm++2m", "dpmpp2m"); -1 when unknown. */
int ap_sampler_parse(const char *name);
const char *ap_spacing_name(ap_timestep_spacing s);

/* Step i as a linear combination of tensors the caller holds:
 *   model input = in_scale * x                      (scale_model_input)
 *   x0          = x0_x * x + x0_eps * eps           (this step's data prediction)
 *   x_prev      = a * x + b * eps + c * m_prev + s * noise
 * eps is the (guided) model output at step i, m_prev the previous step's x0 (DPM++ 2M's
 * second-order steps; c = 0 otherwise) and noise ~ N(0, I). When draws_noise the
 * sampler consumes one latent-shaped draw from the generator at this step even if s is
 * 0, so the stream stays aligned with diffusers. Computed in double from the f32 schedule
 * and sigmas. */
typedef struct {
    float timestep; /* what the UNet gets */
    double in_scale;
    double x0_x, x0_eps;
    double a, b, c, s;
    int order; /* DPM++: 1 or 2; 1 for the others */
    bool draws_noise;
} ap_step_coefs;

typedef struct ap_sampler ap_sampler;

/* A sampler for num_steps inference steps (1..num_train_timesteps). */
ap_sampler *ap_sampler_create(ap_ctx *c, const ap_sampler_config *cfg, int num_steps);
void ap_sampler_free(ap_sampler *s);

ap_sampler_kind ap_sampler_kind_of(const ap_sampler *s);
int ap_sampler_num_steps(const ap_sampler *s);
const ap_schedule *ap_sampler_schedule(const ap_sampler *s);
float ap_sampler_timestep(const ap_sampler *s, int i); /* step i's UNet timestep */
/* sigmas[0..N] (Euler, DPM++: f32 as diffusers stores them); NULL for DDIM. */
const float *ap_sampler_sigmas(const ap_sampler *s);
float ap_sampler_init_noise_sigma(const ap_sampler *s);

/* Coefficients of step i (0 <= i < N). */
ap_status ap_sampler_coefs(ap_ctx *c, const ap_sampler *s, int i, ap_step_coefs *out);

/* scale_model_input on floats: out[k] = x[k] / divisor exactly as diffusers (a copy when
 * the sampler does not scale). out may alias x. */
ap_status ap_sampler_scale_input_f32(ap_ctx *c, const ap_sampler *s, int i, const float *x,
                                     float *out, int64_t n);

/* Latent shape of the float path (NHWC). */
typedef struct {
    int64_t n, h, w, c;
} ap_latent_shape;

/* Step i on floats: x_prev from the sample x and the model output eps, all [n,h,w,c],
 * drawing noise from g when the step needs it (g may be NULL otherwise). x_prev may
 * alias x. DPM++ keeps the data prediction of the last step inside the sampler, so its
 * steps must run in order 0, 1, ..., N-1 on the same shape (step 0 restarts). */
ap_status ap_sampler_step_f32(ap_ctx *c, ap_sampler *s, int i, const float *x, const float *eps,
                              float *x_prev, ap_latent_shape shape, ap_rng *g);

/* Initial latents for the sampler: torch.randn([n,c,h,w]) * init_noise_sigma, as NHWC
 * (the multiplication in f32, as diffusers' prepare_latents). */
ap_status ap_sampler_init_latents_f32(ap_ctx *c, const ap_sampler *s, ap_rng *g, float *out,
                                      ap_latent_shape shape);

/* TODO(after the core ops land): ap_sampler_step_tensor(), the same step on ap_tensor
 * through ap_axpby/ap_scale/ap_add so it is differentiable w.r.t. x and eps (and m_prev);
 * it is a direct use of ap_step_coefs. */

#endif
