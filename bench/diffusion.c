/* Speed of the Gaussian stream and the sampler steps (make bench; build/bench/diffusion).
 * Prints the median of several runs. These are far from the UNet's cost; the numbers
 * exist to show that they stay negligible. */
#include "bench.h"
#include "diffusion/rng.h"
#include "diffusion/sampler.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RUNS 9

int main(void) {
    enum { N = 2, H = 64, W = 64, C = 4 };
    int64_t n = (int64_t)N * H * W * C;
    float *buf = malloc(n * sizeof(float)), *eps = malloc(n * sizeof(float));
    double t[RUNS];
    printf("%-44s %12s %14s\n", "what", "median", "per element");

    for (int k = 0; k < AP_RANDN_KERNEL_COUNT_; k++) {
        ap_rng g;
        ap_rng_init(&g, 1);
        ap_rng_set_kernel(&g, (ap_randn_kernel)k);
        for (int r = 0; r < RUNS; r++) {
            double t0 = bench_now();
            for (int rep = 0; rep < 20; rep++) ap_rng_randn(&g, buf, n);
            t[r] = (bench_now() - t0) / 20;
        }
        double m = bench_median(t, RUNS);
        printf("randn [2,4,64,64], %-25s %9.1f us %11.2f ns\n", ap_randn_kernel_name((ap_randn_kernel)k), m * 1e6,
               m * 1e9 / n);
    }
    {
        ap_rng g;
        ap_rng_init(&g, 1);
        float blk[16];
        for (int r = 0; r < RUNS; r++) {
            double t0 = bench_now();
            for (int64_t i = 0; i < n; i += 16) {
                ap_rng_rand(&g, blk, 16);
                ap_randn_transform16(blk, AP_RANDN_TORCH_AVX2, true);
            }
            t[r] = bench_now() - t0;
        }
        double m = bench_median(t, RUNS);
        printf("randn [2,4,64,64], %-25s %9.1f us %11.2f ns\n", "avx2 (portable emulation)", m * 1e6, m * 1e9 / n);
    }
    {
        ap_rng g;
        ap_rng_init(&g, 1);
        for (int r = 0; r < RUNS; r++) {
            double t0 = bench_now();
            for (int rep = 0; rep < 20; rep++) ap_rng_randn_nhwc(&g, buf, N, H, W, C);
            t[r] = (bench_now() - t0) / 20;
        }
        double m = bench_median(t, RUNS);
        printf("randn_nhwc [2,64,64,4] (draw + permute)      %9.1f us %11.2f ns\n", m * 1e6, m * 1e9 / n);
    }

    ap_ctx *c = ap_ctx_create();
    for (int kind = 0; kind < AP_SAMPLER_COUNT_; kind++) {
        ap_sampler_config cfg = ap_sampler_config_sd15((ap_sampler_kind)kind);
        cfg.eta = 1.0f;
        int steps = 50;
        ap_sampler *s = ap_sampler_create(c, &cfg, steps);
        ap_rng g;
        ap_rng_init(&g, 2);
        ap_latent_shape sh = {N, H, W, C};
        for (int64_t i = 0; i < n; i++) eps[i] = (float)(i % 17) * 0.01f - 0.08f;
        for (int r = 0; r < RUNS; r++) {
            ap_sampler_init_latents_f32(c, s, &g, buf, sh);
            double t0 = bench_now();
            for (int i = 0; i < steps; i++) ap_sampler_step_f32(c, s, i, buf, eps, buf, sh, &g);
            t[r] = (bench_now() - t0) / steps;
        }
        double m = bench_median(t, RUNS);
        char label[64];
        snprintf(label, sizeof label, "%s step (f32, eta 1)", ap_sampler_name((ap_sampler_kind)kind));
        printf("%-44s %9.1f us %11.2f ns\n", label, m * 1e6, m * 1e9 / n);
        ap_sampler_free(s);
    }
    if (ap_last_status(c) != AP_OK) printf("error: %s\n", ap_last_error(c));
    ap_ctx_free(c);
    free(buf);
    free(eps);
    return 0;
}
