/* DPM-Solver++ 2M (diffusers DPMSolverMultistepScheduler: algorithm_type "dpmsolver++",
 * solver_order 2, solver_type "midpoint", lower_order_final, final_sigmas_type "zero",
 * epsilon prediction), in its sigma formulation (diffusers >= 0.26).
 *
 *   for sigma: alpha = 1 / sqrt(sigma^2 + 1), s = sigma alpha, lambda = ln alpha - ln s
 *   data prediction m = (x - s_i eps) / alpha_i            (at sigma_i)
 *   h = lambda_{i+1} - lambda_i,  B = alpha_{i+1} (e^-h - 1)
 *   first order:  x_prev = (s_{i+1} / s_i) x - B m_i
 *   second order: r = (lambda_i - lambda_{i-1}) / h,  D1 = (m_i - m_{i-1}) / r
 *                 x_prev = (s_{i+1} / s_i) x - B m_i - B D1 / 2
 * Step 0 is first order (no history); the last step too (its sigma is 0, where the
 * update returns m exactly). init_noise_sigma is 1; the input is not scaled. */
#include "diffusion/sampler_impl.h"

#include "core/internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static ap_status dpm_setup(ap_ctx *c, ap_sampler *s) {
    int N = s->num_steps, T = s->sched.n;
    double *t = malloc((size_t)(N + 2) * sizeof(double));
    float *table = ap_sigma_table_f32(&s->sched);
    s->sigmas = malloc((size_t)(N + 1) * sizeof(float));
    if (!t || !table || !s->sigmas) {
        free(t);
        free(table);
        return ap_seterr(c, AP_ERR_NOMEM, "dpmpp_2m: out of memory");
    }
    /* lambda_min_clipped is -inf, so diffusers' last_timestep is T */
    ap_status st = AP_OK;
    switch (s->cfg.spacing) {
    case AP_SPACING_LEADING: {
        int ratio = T / (N + 1);
        for (int k = 0; k < N; k++) t[k] = (double)(N - k) * ratio + s->cfg.steps_offset;
        break;
    }
    case AP_SPACING_TRAILING: {
        int n = ap_np_arange_down(NULL, T, (double)T / N);
        if (n != N) {
            st = ap_seterr(c, AP_ERR_UNSUPPORTED,
                           "dpmpp_2m: trailing spacing with %d steps gives %d timesteps in diffusers (numpy's "
                           "float arange); choose another step count",
                           N, n);
            break;
        }
        ap_np_arange_down(t, T, (double)T / N);
        for (int k = 0; k < N; k++) t[k] = rint(t[k]) - 1;
        break;
    }
    default: /* linspace over N + 1 points, reversed, the last (0) dropped */
        ap_np_linspace(t, 0, T - 1, N + 1);
        for (int k = 0; k <= N; k++) t[k] = rint(t[k]);
        for (int k = 0; k < (N + 1) / 2; k++) {
            double v = t[k];
            t[k] = t[N - k];
            t[N - k] = v;
        }
        break;
    }
    for (int k = 0; st == AP_OK && k < N; k++) {
        if (!(t[k] >= 0 && t[k] <= T - 1)) {
            st = ap_seterr(c, AP_ERR_INVALID_ARG, "dpmpp_2m: timestep %g out of range 0..%d (%d steps, %s spacing)",
                           t[k], T - 1, N, ap_spacing_name(s->cfg.spacing));
            break;
        }
        s->timesteps[k] = (float)t[k];
        s->sigmas[k] = (float)ap_interp_index(t[k], table, T);
    }
    s->sigmas[N] = 0.0f;
    s->init_noise_sigma = 1.0f;
    free(t);
    free(table);
    return st;
}

static int order_of(const ap_sampler *s, int i) {
    /* no history at step 0; the final sigma is zero, so the last step is first order */
    return i == 0 || i == s->num_steps - 1 ? 1 : 2;
}

/* alpha, s and lambda of a sigma, in double */
static void ast(double sigma, double *alpha, double *st, double *lambda) {
    *alpha = 1 / sqrt(sigma * sigma + 1);
    *st = sigma * *alpha;
    *lambda = log(*alpha) - log(*st);
}

static void dpm_coefs(const ap_sampler *s, int i, ap_step_coefs *o) {
    double a0, s0, l0, a1 = 1, s1 = 0, l1 = 0;
    ast(s->sigmas[i], &a0, &s0, &l0);
    o->in_scale = 1;
    o->x0_x = 1 / a0;
    o->x0_eps = -s0 / a0;
    o->order = order_of(s, i);
    double A, B; /* x_prev = A x - B m_i (- B D1 / 2) */
    if (s->sigmas[i + 1] == 0.0f) {
        A = 0;
        B = -1; /* alpha 1, e^-inf = 0: x_prev = m_i */
    } else {
        ast(s->sigmas[i + 1], &a1, &s1, &l1);
        A = s1 / s0;
        B = a1 * expm1(-(l1 - l0));
    }
    if (o->order == 1) {
        o->a = A - B * o->x0_x;
        o->b = -B * o->x0_eps;
        o->c = 0;
    } else {
        double ap, sp, lp;
        ast(s->sigmas[i - 1], &ap, &sp, &lp);
        double h = l1 - l0, r = (l0 - lp) / h; /* order 2 never reaches the zero sigma */
        double w = 1 + 0.5 / r; /* m_i - B D1/2 expanded: -B (1 + 1/(2r)) m_i + B/(2r) m_{i-1} */
        o->a = A - B * w * o->x0_x;
        o->b = -B * w * o->x0_eps;
        o->c = B * 0.5 / r;
    }
    o->s = 0;
    o->draws_noise = false;
}

/* f32 log and exp: torch evaluates these with its own vectorised kernels, which are
 * within an ulp of the correctly rounded values used here */
static float logf_rn(float v) { return (float)log((double)v); }
static float expf_rn(float v) { return (float)exp((double)v); }

static void ast_f32(float sigma, float *alpha, float *st) {
    *alpha = (1.0f / sqrtf(ap_mulf_rn(sigma, sigma) + 1.0f)) * 1.0f; /* reciprocal, then * 1 */
    *st = sigma * *alpha;
}

static ap_status dpm_step_f32(ap_ctx *c, ap_sampler *s, int i, const float *x, const float *eps,
                              float *x_prev, ap_latent_shape sh, ap_rng *g) {
    (void)g;
    int64_t n = sh.n * sh.h * sh.w * sh.c;
    int order = order_of(s, i);
    if (i == 0) s->m_step = -1;
    if (order == 2 && (s->m_step != i - 1 || s->m_len != n))
        return ap_seterr(c, AP_ERR_STATE,
                         "dpmpp_2m: step %d needs step %d's data prediction for this shape; run the steps in order",
                         i, i - 1);
    if (s->m_len != n) {
        free(s->m_prev);
        free(s->m_cur);
        s->m_prev = malloc((size_t)n * sizeof(float));
        s->m_cur = malloc((size_t)n * sizeof(float));
        s->m_len = (s->m_prev && s->m_cur) ? n : 0;
        s->m_step = -1;
        if (!s->m_len) {
            free(s->m_prev);
            free(s->m_cur);
            s->m_prev = s->m_cur = NULL;
            return ap_seterr(c, AP_ERR_NOMEM, "dpmpp_2m: out of memory");
        }
    }
    /* convert_model_output at sigma_i */
    float alpha0, st0;
    ast_f32(s->sigmas[i], &alpha0, &st0);
    float *m0 = s->m_cur, *m1 = s->m_prev;
    for (int64_t k = 0; k < n; k++) m0[k] = (x[k] - ap_mulf_rn(st0, eps[k])) / alpha0;

    float alpha_t, st_t;
    ast_f32(s->sigmas[i + 1], &alpha_t, &st_t);
    float lambda_t = logf_rn(alpha_t) - logf_rn(st_t), lambda_0 = logf_rn(alpha0) - logf_rn(st0);
    float h = lambda_t - lambda_0;
    float A = st_t / st0, B = alpha_t * (expf_rn(-h) - 1.0f);
    if (order == 1) {
        for (int64_t k = 0; k < n; k++) x_prev[k] = ap_mulf_rn(A, x[k]) - ap_mulf_rn(B, m0[k]);
    } else {
        float alpha1, st1;
        ast_f32(s->sigmas[i - 1], &alpha1, &st1);
        float lambda_1 = logf_rn(alpha1) - logf_rn(st1);
        float h0 = lambda_0 - lambda_1, r0 = h0 / h;
        float inv_r0 = (1.0f / r0) * 1.0f, halfB = 0.5f * B;
        for (int64_t k = 0; k < n; k++) {
            float d1 = inv_r0 * (m0[k] - m1[k]);
            x_prev[k] = (ap_mulf_rn(A, x[k]) - ap_mulf_rn(B, m0[k])) - ap_mulf_rn(halfB, d1);
        }
    }
    s->m_cur = m1; /* this step's prediction becomes the history */
    s->m_prev = m0;
    s->m_step = i;
    return AP_OK;
}

const ap_sampler_ops ap_dpmpp_2m_ops = {
    .name = "dpmpp_2m",
    .setup = dpm_setup,
    .coefs = dpm_coefs,
    .step_f32 = dpm_step_f32,
    .input_divisor = NULL,
};
