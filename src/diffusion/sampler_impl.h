/* What the sampler files share: the sampler object, the per-kind operations, and the
 * numpy-exact timestep helpers. Not for use outside src/diffusion/. */
#ifndef AP_DIFFUSION_SAMPLER_IMPL_H
#define AP_DIFFUSION_SAMPLER_IMPL_H

#include "diffusion/sampler.h"

typedef struct {
    const char *name;
    /* fills timesteps, sigmas and init_noise_sigma */
    ap_status (*setup)(ap_ctx *c, ap_sampler *s);
    void (*coefs)(const ap_sampler *s, int i, ap_step_coefs *out);
    ap_status (*step_f32)(ap_ctx *c, ap_sampler *s, int i, const float *x, const float *eps,
                          float *x_prev, ap_latent_shape shape, ap_rng *g);
    /* divisor of scale_model_input at step i, or 0 when the input is not scaled */
    float (*input_divisor)(const ap_sampler *s, int i);
} ap_sampler_ops;

struct ap_sampler {
    ap_sampler_config cfg; /* spacing resolved (never AP_SPACING_DEFAULT) */
    const ap_sampler_ops *ops;
    ap_schedule sched;
    int num_steps;
    float *timesteps; /* [num_steps] */
    float *sigmas;    /* [num_steps + 1] (Euler, DPM++), NULL for DDIM */
    float init_noise_sigma;
    /* DPM++ 2M float path: data predictions of the previous and the current step */
    float *m_prev, *m_cur; /* [m_len] */
    int64_t m_len;
    int m_step; /* step whose prediction m_prev holds, -1 none */
};

extern const ap_sampler_ops ap_ddim_ops, ap_euler_a_ops, ap_dpmpp_2m_ops;

/* numpy.linspace(start, stop, num) (endpoint included), in double: i*step + start, the
 * last element exactly stop. */
void ap_np_linspace(double *out, double start, double stop, int num);
/* numpy.arange(start, 0, -step) for step > 0: its element count (ceil of the ratio,
 * which can exceed the intended count by one) and, when out is not NULL, its elements
 * start + i*((start - step) - start). */
int ap_np_arange_down(double *out, double start, double step);

/* sqrt((1 - acp) / acp) in f32 for every training step: diffusers' sigma table. */
float *ap_sigma_table_f32(const ap_schedule *sch); /* [n], malloc'd */

/* The NHWC noise of one step: torch.randn(latent shape) from g. NULL (with an error) on
 * bad arguments or out of memory. */
float *ap_step_noise(ap_ctx *c, const char *who, ap_rng *g, ap_latent_shape shape);

#endif
