/* The training noise schedule (betas and alphas_cumprod), computed with the same f32
 * roundings as diffusers on CPU, and the small numeric helpers the samplers share. */
#ifndef AP_DIFFUSION_SCHEDULE_H
#define AP_DIFFUSION_SCHEDULE_H

#include "alignprop.h"

#include <stdbool.h>
#include <stdint.h>

typedef enum {
    AP_BETA_LINEAR = 0,        /* linspace(beta_start, beta_end) */
    AP_BETA_SCALED_LINEAR = 1, /* linspace(sqrt(beta_start), sqrt(beta_end))^2: SD 1.x */
    AP_BETA_SCHEDULE_COUNT_
} ap_beta_schedule;

typedef struct {
    int num_train_timesteps; /* 1000 */
    double beta_start;       /* 0.00085 */
    double beta_end;         /* 0.012 */
    ap_beta_schedule beta_schedule;
} ap_schedule_config;

typedef struct {
    int n;                 /* num_train_timesteps */
    float *betas;          /* [n] */
    float *alphas_cumprod; /* [n] */
} ap_schedule;

#define AP_MAX_TRAIN_TIMESTEPS 100000

/* SD 1.x: scaled_linear 0.00085 .. 0.012 over 1000 steps. */
ap_schedule_config ap_schedule_config_sd15(void);

/* Fills s (allocating its arrays). diffusers builds the schedule on the CPU in f32:
 * betas from torch.linspace (f32, fused multiply-adds as torch's AVX2 kernel does),
 * squared; alphas = 1 - betas; alphas_cumprod = torch.cumprod, which on the CPU
 * accumulates in double and rounds each prefix to f32. */
ap_status ap_schedule_init(ap_ctx *c, ap_schedule *s, const ap_schedule_config *cfg);
void ap_schedule_free(ap_schedule *s);

/* torch.linspace(start, end, steps, dtype=float32) on the CPU, bit for bit. */
void ap_linspace_f32(float *out, float start, float end, int64_t steps); /* out: [steps] */

/* np.interp(x, arange(n), fp) in double, as numpy evaluates it. */
double ap_interp_index(double x, const float *fp, int n);

/* Float and double arithmetic rounded op by op: PyTorch runs every tensor op as its own
 * kernel, so a product is rounded before it is added. GCC contracts a*b+c into a fused
 * multiply-add by default (-ffp-contract=fast in gnu11), which would change the last
 * bit; the empty asm hides the product from that pass. */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define AP_FP_OPAQUE(v) __asm__("" : "+x"(v))
#elif defined(__GNUC__) && defined(__aarch64__)
#define AP_FP_OPAQUE(v) __asm__("" : "+w"(v))
#else
#define AP_FP_OPAQUE(v) ((void)0)
#endif
static inline float ap_mulf_rn(float a, float b) {
    float r = a * b;
    AP_FP_OPAQUE(r);
    return r;
}
static inline double ap_mul_rn(double a, double b) {
    double r = a * b;
    AP_FP_OPAQUE(r);
    return r;
}

#endif
