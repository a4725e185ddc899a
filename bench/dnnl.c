/* Speed of the oneDNN backend: convolutions (forward, input gradient, weight
 * gradient) at the UNet's shapes, linear at a transformer block's shape, in
 * f32 and bf16, beside this machine's measured peak; and what the primitive
 * cache saves on small calls. Times are medians of 7 samples (AP_BENCH_SAMPLES)
 * after warm-up; the fastest sample is printed beside it, since a shared VM
 * inflates medians.
 *
 *   make bench && build/bench/dnnl [out.json]
 *
 * Threads from AP_NUM_THREADS (default: all). */
#include "bench.h"
#include "peaks.h"

#include "backend/cpu/dnnl.h"

#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Wall time, or with AP_BENCH_CLOCK=cpu the process's CPU time: on a VM
 * shared with other jobs, one thread's CPU time is what the call would take
 * alone (with several threads it also counts time spent waiting at barriers). */
static clockid_t clock_id = CLOCK_MONOTONIC;
static double now(void) {
    struct timespec t;
    clock_gettime(clock_id, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Median seconds per call of fn over 7 samples; each sample repeats fn until
 * it has run 20 ms, so short calls are not timer noise. */
typedef void (*bench_fn)(void *);
static double last_best; /* the fastest sample of the last median_time: this VM is shared */
static int nsamples = 7;
static double median_time(bench_fn fn, void *u) {
    fn(u), fn(u); /* warm-up: primitives, packed weights, arena blocks */
    double t0 = now();
    fn(u);
    double one = now() - t0;
    int reps = one > 0.02 ? 1 : (int)(0.02 / fmax(one, 1e-7)) + 1;
    double s[64];
    for (int k = 0; k < nsamples; k++) {
        t0 = now();
        for (int i = 0; i < reps; i++) fn(u);
        s[k] = (now() - t0) / reps;
    }
    double med = bench_median(s, nsamples);
    last_best = s[0];
    return med;
}

/* ------------------------------------------------------------ cases */
typedef struct {
    ap_ctx *c;
    ap_conv_geom g;
    ap_tensor *x, *w, *y, *dy, *dx, *dw, *b;
    ap_tensor *xl, *wl, *yl, *dyl, *dxl, *dwl;
    int64_t rows, in, out;
} bench;

static void conv_fwd(void *u) {
    bench *b = u;
    ap_dnnl_conv_forward(b->c, &b->g, ap_tensor_cdata(b->x), b->w, ap_tensor_cdata(b->b), ap_tensor_data(b->y));
}
static void conv_bwd_data(void *u) {
    bench *b = u;
    ap_dnnl_conv_backward(b->c, &b->g, ap_tensor_cdata(b->dy), b->w, ap_tensor_data(b->dx), 0.0f, NULL, NULL, 0.0f,
                          NULL, 0.0f);
}
static void conv_bwd_weights(void *u) {
    bench *b = u;
    ap_dnnl_conv_backward(b->c, &b->g, ap_tensor_cdata(b->dy), b->w, NULL, 0.0f, ap_tensor_cdata(b->x),
                          ap_tensor_data(b->dw), 0.0f, NULL, 0.0f);
}
static void conv_api(void *u) { /* through ap_conv2d: output allocation and op checks included */
    bench *b = u;
    ap_tensor_release(ap_conv2d(b->c, b->x, b->w, b->b, (ap_conv_params){1, {1, 1, 1, 1}}));
}
static void lin_fwd(void *u) {
    bench *b = u;
    ap_dnnl_linear_forward(b->c, b->rows, b->in, b->out, ap_tensor_cdata(b->xl), b->wl, NULL,
                           ap_tensor_data(b->yl));
}
static void lin_bwd_data(void *u) {
    bench *b = u;
    ap_dnnl_linear_backward(b->c, b->rows, b->in, b->out, ap_tensor_cdata(b->dyl), b->wl, ap_tensor_data(b->dxl),
                            0.0f, NULL, NULL, 0.0f, NULL, 0.0f);
}
static void lin_bwd_weights(void *u) {
    bench *b = u;
    ap_dnnl_linear_backward(b->c, b->rows, b->in, b->out, ap_tensor_cdata(b->dyl), b->wl, NULL, 0.0f,
                            ap_tensor_cdata(b->xl), ap_tensor_data(b->dwl), 0.0f, NULL, 0.0f);
}
static void lin_api(void *u) {
    bench *b = u;
    ap_tensor_release(ap_linear(b->c, b->xl, b->wl, NULL));
}
static void to_bf16(void *u) {
    bench *b = u;
    ap_cpu_f32_to_bf16(ap_tensor_data(b->dx), ap_tensor_cdata(b->x), ap_tensor_numel(b->x));
}

static ap_tensor *rnd(ap_ctx *c, int nd, const int64_t *s, float scale, uint64_t seed) {
    ap_tensor *t = ap_tensor_new(c, AP_F32, nd, s);
    float *p = ap_tensor_data(t);
    for (int64_t i = 0; i < ap_tensor_numel(t); i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        p[i] = scale * ((float)(seed >> 40) / (float)(1 << 24) * 2.0f - 1.0f);
    }
    return t;
}

static FILE *js;
static int js_first = 1;
static void record(const char *name, const char *prec, double sec, double flops, double pk) {
    double gf = flops / sec * 1e-9, gb = flops / last_best * 1e-9;
    printf("%-34s %-5s %9.3f ms %7.0f GFLOP/s %4.0f%% of peak | best %7.0f GFLOP/s\n", name, prec, sec * 1e3, gf,
           100 * gf / pk, gb);
    if (js)
        fprintf(js,
                "%s\n  {\"case\": \"%s\", \"precision\": \"%s\", \"ms\": %.4f, \"gflops\": %.1f, \"gflops_best\": "
                "%.1f, \"peak_gflops\": %.1f}",
                bench_json_sep(&js_first), name, prec, sec * 1e3, gf, gb, pk);
}

int main(int argc, char **argv) {
    ap_ctx *c = ap_ctx_create();
    if (!c || ap_last_status(c) != AP_OK) {
        fprintf(stderr, "context: %s\n", c ? ap_last_error(c) : "out of memory");
        return 1;
    }
    const char *ck = getenv("AP_BENCH_CLOCK");
    if (ck && !strcmp(ck, "cpu")) clock_id = CLOCK_PROCESS_CPUTIME_ID;
    const char *ns = getenv("AP_BENCH_SAMPLES");
    if (ns && atoi(ns) >= 5 && atoi(ns) <= 64) nsamples = atoi(ns);
    int bf = ap_cpu_has_bf16();
    __builtin_cpu_init();
    int avx512 = __builtin_cpu_supports("avx512f");
    double pk32 = avx512 ? peak_gflops(PEAK_FMA, 1000000L) : 0, pk16 = bf && avx512 ? peak_gflops(PEAK_BF16DP, 1000000L) : 0;
    printf("threads %d, %s time; measured peak: f32 FMA %.0f GFLOP/s, bf16 dot %.0f GFLOP/s\n",
           ap_get_num_threads(c), clock_id == CLOCK_MONOTONIC ? "wall" : "CPU", pk32, pk16);
    js = fopen(argc > 1 ? argv[1] : "dnnl_bench.json", "w");
    if (js)
        fprintf(js, "{\"threads\": %d, \"clock\": \"%s\", \"peak_f32\": %.1f, \"peak_bf16\": %.1f, \"results\": [",
                ap_get_num_threads(c), clock_id == CLOCK_MONOTONIC ? "wall" : "cpu", pk32, pk16);

    const int convs[][2] = {{320, 64}, {640, 32}, {1280, 16}, {1280, 8}};
    for (size_t k = 0; k < sizeof convs / sizeof *convs; k++) {
        int ch = convs[k][0], hw = convs[k][1];
        bench b = {.c = c};
        b.g = (ap_conv_geom){2, hw, hw, ch, ch, 3, 3, hw, hw, 1, {1, 1, 1, 1}};
        int64_t xs[4] = {2, hw, hw, ch}, ws[4] = {ch, ch, 3, 3};
        b.x = rnd(c, 4, xs, 1.0f, 1), b.y = rnd(c, 4, xs, 1.0f, 2), b.dy = rnd(c, 4, xs, 1.0f, 3);
        b.dx = rnd(c, 4, xs, 1.0f, 4), b.w = rnd(c, 4, ws, 0.02f, 5), b.dw = rnd(c, 4, ws, 1.0f, 6);
        b.b = rnd(c, 1, (int64_t[]){ch}, 1.0f, 7);
        double flops = 2.0 * 2 * hw * hw * ch * ch * 9;
        char name[64];
        for (int p = 0; p < 1 + bf; p++) {
            ap_set_precision(c, p ? AP_PREC_BF16 : AP_PREC_F32);
            const char *pn = p ? "bf16" : "f32";
            double pkp = p ? pk16 : pk32;
            snprintf(name, sizeof name, "conv3x3 %d@%dx%d fwd", ch, hw, hw);
            record(name, pn, median_time(conv_fwd, &b), flops, pkp);
            snprintf(name, sizeof name, "conv3x3 %d@%dx%d fwd (ap_conv2d)", ch, hw, hw);
            int prev = ap_set_grad_enabled(c, 0);
            record(name, pn, median_time(conv_api, &b), flops, pkp);
            ap_set_grad_enabled(c, prev);
            snprintf(name, sizeof name, "conv3x3 %d@%dx%d bwd data", ch, hw, hw);
            record(name, pn, median_time(conv_bwd_data, &b), flops, pkp);
            snprintf(name, sizeof name, "conv3x3 %d@%dx%d bwd weights", ch, hw, hw);
            record(name, pn, median_time(conv_bwd_weights, &b), flops, pkp);
        }
        if (k == 0) {
            double t = median_time(to_bf16, &b);
            printf("f32->bf16 of x [2,64,64,320]: %.3f ms (%.1f GB/s)\n", t * 1e3,
                   (double)ap_tensor_numel(b.x) * 6 / t * 1e-9);
        }
        ap_tensor *ts[] = {b.x, b.y, b.dy, b.dx, b.w, b.dw, b.b};
        for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) ap_tensor_release(ts[i]);
        if (ap_last_status(c) != AP_OK) fprintf(stderr, "error: %s\n", ap_last_error(c));
    }

    /* linear 8192 x 320 -> 320; CLIP's 2x77 tokens; the time embedding (2 rows),
     * where per-call overhead dominates */
    const int64_t lins[][3] = {{8192, 320, 320}, {154, 768, 768}, {2, 1280, 1280}};
    for (size_t k = 0; k < sizeof lins / sizeof *lins; k++) {
        bench b = {.c = c, .rows = lins[k][0], .in = lins[k][1], .out = lins[k][2]};
        b.xl = rnd(c, 2, (int64_t[]){b.rows, b.in}, 1.0f, 11),
        b.wl = rnd(c, 2, (int64_t[]){b.out, b.in}, 0.05f, 12);
        b.yl = rnd(c, 2, (int64_t[]){b.rows, b.out}, 1.0f, 13),
        b.dyl = rnd(c, 2, (int64_t[]){b.rows, b.out}, 1.0f, 14);
        b.dxl = rnd(c, 2, (int64_t[]){b.rows, b.in}, 1.0f, 15),
        b.dwl = rnd(c, 2, (int64_t[]){b.out, b.in}, 1.0f, 16);
        double flops = 2.0 * b.rows * b.in * b.out;
        char name[64];
        for (int p = 0; p < 1 + bf; p++) {
            ap_set_precision(c, p ? AP_PREC_BF16 : AP_PREC_F32);
            const char *pn = p ? "bf16" : "f32";
            double pkp = p ? pk16 : pk32;
            snprintf(name, sizeof name, "linear %lldx%lld->%lld fwd", (long long)b.rows, (long long)b.in,
                     (long long)b.out);
            record(name, pn, median_time(lin_fwd, &b), flops, pkp);
            snprintf(name, sizeof name, "linear %lldx%lld->%lld bwd data", (long long)b.rows, (long long)b.in,
                     (long long)b.out);
            record(name, pn, median_time(lin_bwd_data, &b), flops, pkp);
            snprintf(name, sizeof name, "linear %lldx%lld->%lld bwd weights", (long long)b.rows, (long long)b.in,
                     (long long)b.out);
            record(name, pn, median_time(lin_bwd_weights, &b), flops, pkp);
            if (k > 0) { /* what our primitive cache saves (oneDNN's own cache stays on) */
                int prev = ap_set_grad_enabled(c, 0);
                double on = median_time(lin_api, &b);
                ap_dnnl_set_cache(c, false);
                double off = median_time(lin_api, &b);
                ap_dnnl_set_cache(c, true);
                ap_set_grad_enabled(c, prev);
                printf("primitive cache, ap_linear %lldx%lld->%lld %s: %.1f us with, %.1f us without\n",
                       (long long)b.rows, (long long)b.in, (long long)b.out, pn, on * 1e6, off * 1e6);
                if (js)
                    fprintf(js,
                            ",\n  {\"case\": \"cache ap_linear %lldx%lld->%lld\", \"precision\": \"%s\", "
                            "\"us_cached\": %.2f, \"us_uncached\": %.2f}",
                            (long long)b.rows, (long long)b.in, (long long)b.out, pn, on * 1e6, off * 1e6);
            }
        }
        ap_tensor *ts[] = {b.xl, b.wl, b.yl, b.dyl, b.dxl, b.dwl};
        for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) ap_tensor_release(ts[i]);
    }
    /* the cache on a small convolution (VAE / UNet 8x8 level shapes) */
    {
        bench b = {.c = c};
        b.g = (ap_conv_geom){1, 8, 8, 64, 64, 3, 3, 8, 8, 1, {1, 1, 1, 1}};
        b.x = rnd(c, 4, (int64_t[]){1, 8, 8, 64}, 1.0f, 21), b.w = rnd(c, 4, (int64_t[]){64, 64, 3, 3}, 0.05f, 22);
        b.b = rnd(c, 1, (int64_t[]){64}, 1.0f, 23);
        int prev = ap_set_grad_enabled(c, 0);
        for (int p = 0; p < 1 + bf; p++) {
            ap_set_precision(c, p ? AP_PREC_BF16 : AP_PREC_F32);
            double on = median_time(conv_api, &b);
            ap_dnnl_set_cache(c, false);
            double off = median_time(conv_api, &b);
            ap_dnnl_set_cache(c, true);
            printf("primitive cache, ap_conv2d [1,8,8,64] 3x3 %s: %.1f us with, %.1f us without\n",
                   p ? "bf16" : "f32", on * 1e6, off * 1e6);
            if (js)
                fprintf(js,
                        ",\n  {\"case\": \"cache conv3x3 64@8x8\", \"precision\": \"%s\", \"us_cached\": %.2f, "
                        "\"us_uncached\": %.2f}",
                        p ? "bf16" : "f32", on * 1e6, off * 1e6);
        }
        ap_set_grad_enabled(c, prev);
        ap_tensor_release(b.x), ap_tensor_release(b.w), ap_tensor_release(b.b);
    }
    if (js) {
        fprintf(js, "\n]}\n");
        fclose(js);
    }
    int rc = ap_last_status(c) != AP_OK;
    if (rc) fprintf(stderr, "error: %s\n", ap_last_error(c));
    ap_ctx_free(c);
    return rc;
}
