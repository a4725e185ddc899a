/* DDIM (diffusers DDIMScheduler, epsilon prediction, no clipping or thresholding).
 *
 *   a_t = alphas_cumprod[t], a_prev = alphas_cumprod[t - T/N] (or the final alpha)
 *   x0     = (x - sqrt(1 - a_t) eps) / sqrt(a_t)
 *   var    = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
 *   std    = eta * sqrt(var)
 *   x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - std^2) eps + std z
 * The model input is not scaled and init_noise_sigma is 1. */
#include "diffusion/sampler_impl.h"

#include "core/internal.h"

#include <math.h>
#include <stdlib.h>

static ap_status ddim_setup(ap_ctx *c, ap_sampler *s) {
    int N = s->num_steps, T = s->sched.n;
    double *t = malloc((size_t)(N + 1) * sizeof(double));
    if (!t) return ap_seterr(c, AP_ERR_NOMEM, "ddim: out of memory");
    switch (s->cfg.spacing) {
    case AP_SPACING_LINSPACE:
        ap_np_linspace(t, 0, T - 1, N);
        for (int k = 0; k < N; k++) t[k] = rint(t[k]);
        break;
    case AP_SPACING_TRAILING: {
        int n = ap_np_arange_down(NULL, T, (double)T / N);
        if (n != N) {
            free(t);
            return ap_seterr(c, AP_ERR_UNSUPPORTED,
                             "ddim: trailing spacing with %d steps gives %d timesteps in diffusers (numpy's "
                             "float arange); choose another step count",
                             N, n);
        }
        ap_np_arange_down(t, T, (double)T / N);
        for (int k = 0; k < N; k++) t[k] = rint(t[k]) - 1;
        /* arange counts down already: undo the reversal below */
        for (int k = 0; k < N / 2; k++) {
            double v = t[k];
            t[k] = t[N - 1 - k];
            t[N - 1 - k] = v;
        }
        break;
    }
    default: { /* leading */
        int ratio = T / N;
        for (int k = 0; k < N; k++) t[k] = (double)k * ratio + s->cfg.steps_offset;
        break;
    }
    }
    for (int k = 0; k < N; k++) {
        double v = t[N - 1 - k]; /* [::-1]: the largest timestep first */
        if (!(v >= 0 && v <= T - 1)) {
            free(t);
            return ap_seterr(c, AP_ERR_INVALID_ARG,
                             "ddim: timestep %g out of range 0..%d (%d steps, %s spacing, steps_offset %d)", v,
                             T - 1, N, ap_spacing_name(s->cfg.spacing), s->cfg.steps_offset);
        }
        s->timesteps[k] = (float)v;
    }
    free(t);
    s->init_noise_sigma = 1.0f;
    return AP_OK;
}

static void alphas_of(const ap_sampler *s, int i, float *a_t, float *a_prev) {
    int t = (int)s->timesteps[i];
    int prev = t - s->sched.n / s->num_steps;
    *a_t = s->sched.alphas_cumprod[t];
    *a_prev = prev >= 0 ? s->sched.alphas_cumprod[prev]
                        : (s->cfg.set_alpha_to_one ? 1.0f : s->sched.alphas_cumprod[0]);
}

static void ddim_coefs(const ap_sampler *s, int i, ap_step_coefs *o) {
    float fa_t, fa_prev;
    alphas_of(s, i, &fa_t, &fa_prev);
    double a_t = fa_t, a_prev = fa_prev;
    double sa_t = sqrt(a_t), sb_t = sqrt(1 - a_t), sa_prev = sqrt(a_prev);
    double var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev);
    double std = (double)s->cfg.eta * sqrt(var);
    double dir2 = 1 - a_prev - std * std;
    double dir = sqrt(dir2 > 0 ? dir2 : 0);
    o->in_scale = 1;
    o->x0_x = 1 / sa_t;
    o->x0_eps = -sb_t / sa_t;
    o->a = sa_prev / sa_t;
    o->b = dir - sa_prev * sb_t / sa_t;
    o->c = 0;
    o->s = std;
    o->draws_noise = s->cfg.eta > 0;
}

/* diffusers' own f32 tensor ops, one rounding each */
static ap_status ddim_step_f32(ap_ctx *c, ap_sampler *s, int i, const float *x, const float *eps,
                               float *x_prev, ap_latent_shape sh, ap_rng *g) {
    float a_t, a_prev;
    alphas_of(s, i, &a_t, &a_prev);
    float b_t = 1.0f - a_t;
    float sb_t = sqrtf(b_t), sa_t = sqrtf(a_t), sa_prev = sqrtf(a_prev);
    float var = ((1.0f - a_prev) / b_t) * (1.0f - a_t / a_prev);
    float std = s->cfg.eta * sqrtf(var);
    float dir = sqrtf((1.0f - a_prev) - ap_mulf_rn(std, std));
    int64_t n = sh.n * sh.h * sh.w * sh.c;
    float *z = NULL;
    if (s->cfg.eta > 0 && !(z = ap_step_noise(c, "ddim", g, sh))) return c->status;
    for (int64_t k = 0; k < n; k++) {
        float e = eps[k];
        float x0 = (x[k] - ap_mulf_rn(sb_t, e)) / sa_t;
        float v = ap_mulf_rn(sa_prev, x0) + ap_mulf_rn(dir, e);
        if (z) v = v + ap_mulf_rn(std, z[k]);
        x_prev[k] = v;
    }
    free(z);
    return AP_OK;
}

const ap_sampler_ops ap_ddim_ops = {
    .name = "ddim",
    .setup = ddim_setup,
    .coefs = ddim_coefs,
    .step_f32 = ddim_step_f32,
    .input_divisor = NULL,
};
