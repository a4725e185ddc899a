/* ap_resize speed: the reward preprocessing shape, 2x512x512x3 -> 224x224,
 * forward alone and forward+backward, median of several runs, 1 and 2 threads.
 * Prints a table with the effective memory traffic beside the machine's DRAM
 * bandwidth (the kernels are light on arithmetic: ~10 taps per output per
 * pass; the 6 MB input and 2.8 MB intermediate mostly stay in cache, so the
 * figure can exceed DRAM speed), and writes JSON to argv[1] (default
 * bench_resize.json). */
#include "bench.h"
#include "alignprop.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RUNS 15
#define DRAM_GBS 26.0 /* measured triad bandwidth of the development machine */

typedef struct {
    const char *mode;
    int antialias, threads;
    double fwd_ms, fwdbwd_ms;
} result;

static result run(ap_ctx *c, ap_tensor *x, ap_tensor *g, ap_resize_mode mode, int aa, int threads) {
    result r = {mode == AP_RESIZE_BICUBIC ? "bicubic" : "bilinear", aa, threads, 0, 0};
    ap_set_num_threads(c, threads);
    double t[RUNS];
    int prev = ap_set_grad_enabled(c, 0);
    for (int i = -2; i < RUNS; i++) { /* two warm-up runs fill the arena's caches */
        double t0 = (1e3 * bench_now());
        ap_tensor *y = ap_resize(c, x, 224, 224, mode, aa);
        if (i >= 0) t[i] = (1e3 * bench_now()) - t0;
        ap_tensor_release(y);
    }
    r.fwd_ms = bench_median(t, RUNS);
    ap_set_grad_enabled(c, prev);
    for (int i = -2; i < RUNS; i++) {
        ap_tensor_zero_grad(x);
        double t0 = (1e3 * bench_now());
        ap_tensor *y = ap_resize(c, x, 224, 224, mode, aa);
        ap_backward(c, y, g);
        if (i >= 0) t[i] = (1e3 * bench_now()) - t0;
        ap_tensor_release(y);
    }
    r.fwdbwd_ms = bench_median(t, RUNS);
    return r;
}

int main(int argc, char **argv) {
    const char *json = argc > 1 ? argv[1] : "bench_resize.json";
    ap_ctx *c = ap_ctx_create();
    const int64_t xs[4] = {2, 512, 512, 3}, ys[4] = {2, 224, 224, 3};
    ap_tensor *x = ap_tensor_new(c, AP_F32, 4, xs), *g = ap_tensor_new(c, AP_F32, 4, ys);
    float *px = ap_tensor_data(x), *pg = ap_tensor_data(g);
    for (int64_t i = 0; i < ap_tensor_numel(x); i++) px[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1;
    for (int64_t i = 0; i < ap_tensor_numel(g); i++) pg[i] = (float)((i * 40503u) % 1000) / 500.0f - 1;
    ap_tensor_set_requires_grad(x, 1);
    int max_threads = ap_get_num_threads(c);
    result res[16];
    int nr = 0;
    for (int threads = 1; threads <= (max_threads < 2 ? max_threads : 2); threads++)
        for (int mode = 1; mode >= 0; mode--)
            for (int aa = 1; aa >= 0; aa--) res[nr++] = run(c, x, g, (ap_resize_mode)mode, aa, threads);
    if (ap_last_status(c) != AP_OK) {
        fprintf(stderr, "resize bench: %s\n", ap_last_error(c));
        return 1;
    }
    /* traffic: forward reads x, writes+reads the [2,512,224,3] intermediate,
     * writes y; backward the same in reverse */
    const double mb_fwd = (2.0 * 512 * 512 * 3 + 2 * 2.0 * 512 * 224 * 3 + 2.0 * 224 * 224 * 3) * 4 / 1e6;
    printf("ap_resize 2x512x512x3 -> 224x224 (median of %d runs; DRAM triad %.0f GB/s, data mostly "
           "cache-resident)\n",
           RUNS, DRAM_GBS);
    printf("%-9s %3s %7s %10s %12s %10s\n", "mode", "aa", "threads", "fwd ms", "fwd+bwd ms", "fwd GB/s");
    for (int i = 0; i < nr; i++)
        printf("%-9s %3d %7d %10.3f %12.3f %10.1f\n", res[i].mode, res[i].antialias, res[i].threads,
               res[i].fwd_ms, res[i].fwdbwd_ms, mb_fwd / res[i].fwd_ms);
    FILE *f = fopen(json, "w");
    if (f) {
        fprintf(f, "{\"bench\": \"resize\", \"shape\": [2,512,512,3], \"out\": [224,224], \"runs\": %d, "
                   "\"dram_gbs\": %.1f, \"results\": [",
                RUNS, DRAM_GBS);
        for (int i = 0; i < nr; i++)
            fprintf(f, "%s{\"mode\": \"%s\", \"antialias\": %d, \"threads\": %d, \"fwd_ms\": %.4f, "
                       "\"fwd_bwd_ms\": %.4f}",
                    i ? ", " : "", res[i].mode, res[i].antialias, res[i].threads, res[i].fwd_ms,
                    res[i].fwdbwd_ms);
        fprintf(f, "]}\n");
        fclose(f);
    }
    ap_tensor_release(x);
    ap_tensor_release(g);
    ap_ctx_free(c);
    return 0;
}
