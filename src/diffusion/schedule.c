/* The training schedule in diffusers' f32 roundings. */
#include "diffusion/schedule.h"

#include "core/internal.h"

#include <math.h>
#include <stdlib.h>

ap_schedule_config ap_schedule_config_sd15(void) {
    return (ap_schedule_config){.num_train_timesteps = 1000,
                                .beta_start = 0.00085,
                                .beta_end = 0.012,
                                .beta_schedule = AP_BETA_SCALED_LINEAR};
}

/* torch's CPU linspace kernel in f32: step = (end - start) / (steps - 1); the first half
 * counts up from start, the second half down from end. Its AVX2 build fills 8-lane
 * vectors, each lane base + k*step, with the base and the lanes fused multiply-adds;
 * the last (steps % 16) elements go through the scalar form (also fused). */
void ap_linspace_f32(float *out, float start, float end, int64_t steps) {
    if (steps <= 0) return;
    if (steps == 1) {
        out[0] = start;
        return;
    }
    float step = (end - start) / (float)(steps - 1);
    int64_t halfway = steps / 2, i = 0;
    for (; i + 16 <= steps; i += 8) {
        float base = i < halfway ? fmaf(step, (float)i, start) : fmaf(-step, (float)(steps - i - 1), end);
        out[i] = base;
        for (int k = 1; k < 8; k++) out[i + k] = fmaf((float)k, step, base);
    }
    for (; i < steps; i++)
        out[i] = i < halfway ? fmaf(step, (float)i, start) : fmaf(-step, (float)(steps - i - 1), end);
}

/* numpy's interp on xp = 0, 1, ..., n-1: the exact sample at a grid point, the right end
 * value at or past the end, else slope*(x - j) + fp[j] with the product rounded. */
double ap_interp_index(double x, const float *fp, int n) {
    if (n <= 0) return NAN;
    if (!(x > 0)) return fp[0]; /* at or left of the first point (and NaN: not reached) */
    if (x >= (double)(n - 1)) return fp[n - 1];
    int j = (int)x; /* floor for x > 0 */
    if ((double)j == x) return fp[j];
    double slope = ((double)fp[j + 1] - (double)fp[j]) / 1.0;
    return ap_mul_rn(slope, x - (double)j) + (double)fp[j];
}

ap_status ap_schedule_init(ap_ctx *c, ap_schedule *s, const ap_schedule_config *cfg) {
    if (!c) return AP_ERR_INVALID_ARG;
    if (ap_failed(c)) return c->status;
    if (!s || !cfg) return ap_seterr(c, AP_ERR_INVALID_ARG, "schedule: %s is NULL", s ? "config" : "schedule");
    s->n = 0;
    s->betas = s->alphas_cumprod = NULL;
    int n = cfg->num_train_timesteps;
    if (n < 2 || n > AP_MAX_TRAIN_TIMESTEPS)
        return ap_seterr(c, AP_ERR_INVALID_ARG, "schedule: num_train_timesteps %d (must be 2..%d)", n,
                         AP_MAX_TRAIN_TIMESTEPS);
    if (!(cfg->beta_start > 0) || !(cfg->beta_end >= cfg->beta_start) || !(cfg->beta_end < 1))
        return ap_seterr(c, AP_ERR_INVALID_ARG,
                         "schedule: betas %g..%g (need 0 < beta_start <= beta_end < 1)", cfg->beta_start,
                         cfg->beta_end);
    if ((unsigned)cfg->beta_schedule >= AP_BETA_SCHEDULE_COUNT_)
        return ap_seterr(c, AP_ERR_INVALID_ARG, "schedule: unknown beta_schedule %d", (int)cfg->beta_schedule);
    float *betas = malloc((size_t)n * sizeof(float)), *acp = malloc((size_t)n * sizeof(float));
    if (!betas || !acp) {
        free(betas);
        free(acp);
        return ap_seterr(c, AP_ERR_NOMEM, "schedule: out of memory");
    }
    if (cfg->beta_schedule == AP_BETA_SCALED_LINEAR) {
        /* python's beta**0.5 is a double; torch.linspace takes it as an f32 */
        ap_linspace_f32(betas, (float)sqrt(cfg->beta_start), (float)sqrt(cfg->beta_end), n);
        for (int i = 0; i < n; i++) betas[i] = betas[i] * betas[i];
    } else {
        ap_linspace_f32(betas, (float)cfg->beta_start, (float)cfg->beta_end, n);
    }
    double prod = 1.0;
    for (int i = 0; i < n; i++) {
        prod *= (double)(1.0f - betas[i]);
        acp[i] = (float)prod;
    }
    s->n = n;
    s->betas = betas;
    s->alphas_cumprod = acp;
    return AP_OK;
}

void ap_schedule_free(ap_schedule *s) {
    if (!s) return;
    free(s->betas);
    free(s->alphas_cumprod);
    s->betas = s->alphas_cumprod = NULL;
    s->n = 0;
}
