/* Euler ancestral (diffusers EulerAncestralDiscreteScheduler, epsilon prediction).
 *
 *   sigma(t) = sqrt((1 - acp[t]) / acp[t]), interpolated linearly at fractional t,
 *   sigmas = [sigma(t_0), ..., sigma(t_{N-1}), 0]
 *   model input = x / sqrt(sigma^2 + 1)
 *   x0 = x - sigma eps;  d = (x - x0) / sigma
 *   sigma_up   = sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2)
 *   sigma_down = sqrt(sigma_next^2 - sigma_up^2)
 *   x_prev = x + d (sigma_down - sigma) + sigma_up z     (z drawn at every step)
 * init_noise_sigma = max sigma ("linspace", "trailing") or sqrt(max^2 + 1) ("leading"). */
#include "diffusion/sampler_impl.h"

#include "core/internal.h"

#include <math.h>
#include <stdlib.h>

static ap_status euler_a_setup(ap_ctx *c, ap_sampler *s) {
    int N = s->num_steps, T = s->sched.n;
    double *t = malloc((size_t)(N + 1) * sizeof(double));
    float *table = ap_sigma_table_f32(&s->sched);
    s->sigmas = malloc((size_t)(N + 1) * sizeof(float));
    if (!t || !table || !s->sigmas) {
        free(t);
        free(table);
        return ap_seterr(c, AP_ERR_NOMEM, "euler_a: out of memory");
    }
    ap_status st = AP_OK;
    switch (s->cfg.spacing) {
    case AP_SPACING_LEADING: {
        int ratio = T / N;
        for (int k = 0; k < N; k++) t[k] = (double)((float)((double)(N - 1 - k) * ratio) + (float)s->cfg.steps_offset);
        break;
    }
    case AP_SPACING_TRAILING: {
        int n = ap_np_arange_down(NULL, T, (double)T / N);
        if (n != N) {
            st = ap_seterr(c, AP_ERR_UNSUPPORTED,
                           "euler_a: trailing spacing with %d steps gives %d timesteps in diffusers (numpy's "
                           "float arange); choose another step count",
                           N, n);
            break;
        }
        ap_np_arange_down(t, T, (double)T / N);
        for (int k = 0; k < N; k++) t[k] = (double)((float)rint(t[k]) - 1.0f);
        break;
    }
    default: /* linspace, in f32 */
        ap_np_linspace(t, 0, T - 1, N);
        for (int k = 0; k < N / 2; k++) {
            double v = t[k];
            t[k] = t[N - 1 - k];
            t[N - 1 - k] = v;
        }
        for (int k = 0; k < N; k++) t[k] = (double)(float)t[k];
        break;
    }
    if (st == AP_OK) {
        float max = 0;
        for (int k = 0; k < N; k++) {
            if (!(t[k] >= 0 && t[k] <= T - 1)) {
                st = ap_seterr(c, AP_ERR_INVALID_ARG, "euler_a: timestep %g out of range 0..%d (%d steps, %s spacing)",
                               t[k], T - 1, N, ap_spacing_name(s->cfg.spacing));
                break;
            }
            s->timesteps[k] = (float)t[k];
            s->sigmas[k] = (float)ap_interp_index(t[k], table, T);
            if (s->sigmas[k] > max) max = s->sigmas[k];
        }
        s->sigmas[N] = 0.0f;
        s->init_noise_sigma = s->cfg.spacing == AP_SPACING_LEADING ? sqrtf(ap_mulf_rn(max, max) + 1.0f) : max;
    }
    free(t);
    free(table);
    return st;
}

static float euler_a_divisor(const ap_sampler *s, int i) {
    float sigma = s->sigmas[i];
    return sqrtf(ap_mulf_rn(sigma, sigma) + 1.0f);
}

static void euler_a_coefs(const ap_sampler *s, int i, ap_step_coefs *o) {
    double sigma = s->sigmas[i], next = s->sigmas[i + 1];
    double up = sqrt(next * next * (sigma * sigma - next * next) / (sigma * sigma));
    double down2 = next * next - up * up;
    double down = sqrt(down2 > 0 ? down2 : 0);
    o->in_scale = 1 / sqrt(sigma * sigma + 1);
    o->x0_x = 1;
    o->x0_eps = -sigma;
    o->a = 1; /* d = (x - x0) / sigma = eps */
    o->b = down - sigma;
    o->c = 0;
    o->s = up;
    o->draws_noise = true;
}

static ap_status euler_a_step_f32(ap_ctx *c, ap_sampler *s, int i, const float *x, const float *eps,
                                  float *x_prev, ap_latent_shape sh, ap_rng *g) {
    float sigma = s->sigmas[i], next = s->sigmas[i + 1];
    float next2 = ap_mulf_rn(next, next), sigma2 = ap_mulf_rn(sigma, sigma);
    float up = sqrtf(ap_mulf_rn(next2, sigma2 - next2) / sigma2);
    float down = sqrtf(next2 - ap_mulf_rn(up, up));
    float dt = down - sigma;
    float *z = ap_step_noise(c, "euler_a", g, sh);
    if (!z) return c->status;
    int64_t n = sh.n * sh.h * sh.w * sh.c;
    for (int64_t k = 0; k < n; k++) {
        float xk = x[k];
        float x0 = xk - ap_mulf_rn(sigma, eps[k]);
        float d = (xk - x0) / sigma;
        float v = xk + ap_mulf_rn(d, dt);
        x_prev[k] = v + ap_mulf_rn(z[k], up);
    }
    free(z);
    return AP_OK;
}

const ap_sampler_ops ap_euler_a_ops = {
    .name = "euler_a",
    .setup = euler_a_setup,
    .coefs = euler_a_coefs,
    .step_f32 = euler_a_step_f32,
    .input_divisor = euler_a_divisor,
};
