/* bench/elementwise: the memory-bound ops at Stable Diffusion shapes
 * ([2,64,64,320] activations, batch 2), forward and backward, as effective
 * GB/s and as a fraction of this machine's copy bandwidth (bench/peaks.h) measured in
 * the same run. Medians of --runs runs (default 9) after one warm-up.
 *
 * Bytes counted are those an op must move at least: forward reads its inputs
 * and writes its output; backward reads the output gradient and what it saved
 * and writes the input gradients. (Group norm reads x twice in each
 * direction, so its DRAM traffic is higher than the bytes counted; the
 * "traffic" column shows the bytes actually streamed.) Backward times are
 * those of ap_backward, so they include the tape's copy of the seed gradient
 * (one more read and write of the output's size, not counted).
 *
 * At [2,64,64,320] a tensor is 10.5 MB, which a large L3 holds: rates there
 * can exceed the copy bandwidth. The [1,256,256,256] rows (64 MiB) are DRAM-bound.
 *
 *   build/bench/elementwise [--runs N] [--json out.json]
 */
#include "bench.h"
#include "peaks.h"

#include "alignprop.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int g_runs = 9;
static FILE *g_json;
static int g_first = 1;

static void die_if(ap_ctx *c, const char *what) {
    if (ap_last_status(c) != AP_OK) {
        fprintf(stderr, "%s: %s\n", what, ap_last_error(c));
        exit(1);
    }
}

static ap_tensor *rnd(ap_ctx *c, int nd, const int64_t *s, float scale, unsigned seed) {
    ap_tensor *t = ap_tensor_new(c, AP_F32, nd, s);
    die_if(c, "alloc");
    float *d = ap_tensor_data(t);
    uint64_t z = seed * 0x9e3779b97f4a7c15ull + 1;
    for (int64_t i = 0; i < ap_tensor_numel(t); i++) {
        z ^= z << 13;
        z ^= z >> 7;
        z ^= z << 17;
        d[i] = scale * ((float)(z >> 40) / (float)(1 << 24) - 0.5f);
    }
    return t;
}

typedef ap_tensor *(*fwd_fn)(ap_ctx *c, ap_tensor **in);

/* t: the run times (sorted here); the median is the figure, the minimum
 * shows what the op does when the shared machine leaves it alone. */
static void report(const char *name, const char *pass, double *t, int n, double bytes, double traffic, double peak) {
    double med = bench_median(t, n), mn = t[0], gbs = bytes / med / 1e9;
    printf("%-30s %-9s %8.3f ms %6.1f GB/s %4.0f%% of copy  | min %7.3f ms %6.1f GB/s | traffic %6.1f GB/s\n", name,
           pass, med * 1e3, gbs, 100.0 * gbs / peak, mn * 1e3, bytes / mn / 1e9, traffic / med / 1e9);
    if (g_json) {
        fprintf(g_json,
                "%s\n  {\"op\": \"%s\", \"pass\": \"%s\", \"median_ms\": %.4f, \"min_ms\": %.4f, \"gbs\": %.2f, "
                "\"traffic_gbs\": %.2f, \"copy_gbs\": %.2f}",
                bench_json_sep(&g_first), name, pass, med * 1e3, mn * 1e3, gbs, traffic / med / 1e9, peak);
    }
    fflush(stdout);
}

/* Times f forward (grad off) and backward with inputs in[0..n_grad-1]
 * requiring gradients. Bytes: fb/bb counted, ft/bt actually streamed. */
static void time_op(ap_ctx *c, const char *name, fwd_fn f, ap_tensor **in, int n_grad, double fb, double ft,
                    double bb, double bt, double peak) {
    double tf[64], tb[64];
    int runs = g_runs > 64 ? 64 : g_runs;
    int prev = ap_set_grad_enabled(c, 0);
    for (int r = -1; r < runs; r++) {
        double t0 = bench_now();
        ap_tensor *y = f(c, in);
        double t1 = bench_now();
        die_if(c, name);
        ap_tensor_release(y);
        if (r >= 0) tf[r] = t1 - t0;
    }
    ap_set_grad_enabled(c, prev);
    report(name, "forward", tf, runs, fb, ft, peak);
    if (bb <= 0) return;
    for (int i = 0; i < n_grad; i++) ap_tensor_set_requires_grad(in[i], 1);
    for (int r = -1; r < runs; r++) {
        ap_tensor *y = f(c, in);
        die_if(c, name);
        ap_tensor *g = rnd(c, 1, (int64_t[]){ap_tensor_numel(y)}, 1.0f, 7);
        double t0 = bench_now();
        ap_backward(c, y, g);
        double t1 = bench_now();
        die_if(c, name);
        ap_tensor_release(y);
        ap_tensor_release(g);
        for (int i = 0; i < n_grad; i++) ap_tensor_zero_grad(in[i]);
        if (r >= 0) tb[r] = t1 - t0;
    }
    for (int i = 0; i < n_grad; i++) ap_tensor_set_requires_grad(in[i], 0);
    report(name, "backward", tb, runs, bb, bt, peak);
}

static ap_tensor *gn_f(ap_ctx *c, ap_tensor **in) { return ap_group_norm(c, in[0], 32, in[1], in[2], 1e-5f); }
static ap_tensor *ln_f(ap_ctx *c, ap_tensor **in) { return ap_layer_norm(c, in[0], in[1], in[2], 1e-5f); }
static ap_tensor *silu_f(ap_ctx *c, ap_tensor **in) { return ap_silu(c, in[0]); }
static ap_tensor *gelu_f(ap_ctx *c, ap_tensor **in) { return ap_gelu(c, in[0]); }
static ap_tensor *geglu_f(ap_ctx *c, ap_tensor **in) { return ap_geglu(c, in[0]); }
static ap_tensor *add_f(ap_ctx *c, ap_tensor **in) { return ap_add(c, in[0], in[1]); }
static ap_tensor *mul_f(ap_ctx *c, ap_tensor **in) { return ap_mul(c, in[0], in[1]); }
static ap_tensor *up_f(ap_ctx *c, ap_tensor **in) { return ap_upsample_nearest2x(c, in[0]); }
static ap_tensor *cat_f(ap_ctx *c, ap_tensor **in) { return ap_concat_channels(c, in[0], in[1]); }

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--runs") && i + 1 < argc)
            g_runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json") && i + 1 < argc)
            g_json = fopen(argv[++i], "w");
        else {
            fprintf(stderr, "usage: %s [--runs N] [--json FILE]\n", argv[0]);
            return 2;
        }
    }
    if (g_runs < 5) g_runs = 5;
    ap_ctx *c = NULL;
    if (ap_ctx_create_checked(&c) != AP_OK) {
        fprintf(stderr, "context: %s\n", c ? ap_last_error(c) : "out of memory");
        return 1;
    }
    double peak = peak_copy_gbs((size_t)32 << 20); /* 2 x 128 MiB */
    printf("threads %d, copy bandwidth (read + write) measured now: %.1f GB/s; medians of %d runs\n\n", ap_get_num_threads(c), peak, g_runs);
    if (g_json) fprintf(g_json, "[");

    int64_t s[4] = {2, 64, 64, 320};
    ap_tensor *x = rnd(c, 4, s, 4.0f, 1), *y = rnd(c, 4, s, 4.0f, 2);
    ap_tensor *gamma = rnd(c, 1, (int64_t[]){320}, 1.0f, 3), *beta = rnd(c, 1, (int64_t[]){320}, 1.0f, 4);
    ap_tensor *bc = rnd(c, 1, (int64_t[]){320}, 1.0f, 5), *bn = rnd(c, 4, (int64_t[]){2, 1, 1, 320}, 1.0f, 6);
    double nb = (double)ap_tensor_numel(x) * 4;

    ap_tensor *gin[3] = {x, gamma, beta};
    time_op(c, "group_norm 32g [2,64,64,320]", gn_f, gin, 1, 2 * nb, 3 * nb, 3 * nb, 5 * nb, peak);
    time_op(c, "  + dgamma, dbeta", gn_f, gin, 3, 2 * nb, 3 * nb, 3 * nb, 5 * nb, peak);
    ap_tensor *xt = rnd(c, 3, (int64_t[]){2, 4096, 320}, 4.0f, 8);
    ap_tensor *lin[3] = {xt, gamma, beta};
    time_op(c, "layer_norm [2,4096,320]", ln_f, lin, 1, 2 * nb, 2 * nb, 3 * nb, 3 * nb, peak);
    ap_tensor *e1[2] = {x, y};
    time_op(c, "silu", silu_f, e1, 1, 2 * nb, 2 * nb, 3 * nb, 3 * nb, peak);
    time_op(c, "gelu", gelu_f, e1, 1, 2 * nb, 2 * nb, 3 * nb, 3 * nb, peak);
    time_op(c, "add same shape", add_f, e1, 2, 3 * nb, 3 * nb, 3 * nb, 3 * nb, peak);
    time_op(c, "mul same shape", mul_f, e1, 2, 3 * nb, 3 * nb, 5 * nb, 5 * nb, peak);
    ap_tensor *e2[2] = {x, bc};
    time_op(c, "add [C] bias", add_f, e2, 2, 2 * nb, 2 * nb, 2 * nb, 3 * nb, peak);
    ap_tensor *e3[2] = {x, bn};
    time_op(c, "add [N,1,1,C] (temb)", add_f, e3, 2, 2 * nb, 2 * nb, 2 * nb, 3 * nb, peak);
    time_op(c, "mul [N,1,1,C]", mul_f, e3, 2, 2 * nb, 2 * nb, 3 * nb, 3 * nb, peak);
    ap_tensor *gx = rnd(c, 4, (int64_t[]){2, 64, 32, 640}, 4.0f, 9); /* [..., 2F] with F = 320 */
    ap_tensor *e4[1] = {gx};
    time_op(c, "geglu [2,64,32,640]", geglu_f, e4, 1, 1.5 * nb, 1.5 * nb, 2.5 * nb, 2.5 * nb, peak);
    ap_tensor *ux = rnd(c, 4, (int64_t[]){2, 32, 32, 320}, 4.0f, 10);
    ap_tensor *e5[1] = {ux};
    time_op(c, "upsample2x [2,32,32,320]", up_f, e5, 1, 1.25 * nb, 1.25 * nb, 1.25 * nb, 1.25 * nb, peak);
    ap_tensor *e6[2] = {x, y};
    time_op(c, "concat_channels 320+320", cat_f, e6, 2, 4 * nb, 4 * nb, 4 * nb, 4 * nb, peak);

    /* a VAE-decoder shape, 64 MiB per tensor: beyond the caches, DRAM-bound */
    int64_t sv[4] = {1, 256, 256, 256};
    ap_tensor *vx = rnd(c, 4, sv, 4.0f, 11), *vg = rnd(c, 1, (int64_t[]){256}, 1.0f, 12),
              *vb = rnd(c, 1, (int64_t[]){256}, 1.0f, 13);
    double vn = (double)ap_tensor_numel(vx) * 4;
    ap_tensor *vin[3] = {vx, vg, vb};
    time_op(c, "group_norm 32g [1,256,256,256]", gn_f, vin, 1, 2 * vn, 3 * vn, 3 * vn, 5 * vn, peak);
    time_op(c, "silu [1,256,256,256]", silu_f, vin, 1, 2 * vn, 2 * vn, 3 * vn, 3 * vn, peak);
    ap_tensor_release(vx);
    ap_tensor_release(vg);
    ap_tensor_release(vb);

    if (g_json) {
        fprintf(g_json, "\n]\n");
        fclose(g_json);
    }
    ap_tensor *ts[] = {x, y, gamma, beta, bc, bn, xt, gx, ux};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) ap_tensor_release(ts[i]);
    ap_ctx_free(c);
    return 0;
}
