/* bench/ops: the core ops at Stable Diffusion 1.5 shapes (batch 2), forward and
 * input-gradient, f32 and bf16, as achieved GFLOP/s or GB/s and as a fraction
 * of this machine's peaks measured in the same run (an FMA loop, an AMX loop,
 * a copy loop). Medians of --runs runs (default 7). Writes JSON with --json.
 *
 *   build/bench/ops [--runs N] [--json out.json] [--quick] [--only conv|attn|norm|elem]
 */
#include "bench.h"
#include "peaks.h"

#include "alignprop.h"

#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int g_runs = 7, g_quick = 0;
static const char *g_only = NULL;
static FILE *g_json = NULL;
static int g_json_first = 1;

typedef struct {
    double min, med, max;
} stats;

static stats summarize(double *t, int n) {
    double med = bench_median(t, n);
    stats s = {t[0], med, t[n - 1]};
    return s;
}

/* ------------------------------------------------------------ helpers */
static ap_tensor *rnd(ap_ctx *c, int ndim, const int64_t *shape, float scale, unsigned seed) {
    ap_tensor *t = ap_tensor_new(c, AP_F32, ndim, shape);
    float *d = ap_tensor_data(t);
    int64_t n = ap_tensor_numel(t);
    uint32_t s = seed * 2654435761u + 1;
    for (int64_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        d[i] = scale * ((float)(s >> 8) / 16777216.0f - 0.5f);
    }
    return t;
}

static void die_if(ap_ctx *c, const char *what) {
    if (ap_last_status(c) != AP_OK) {
        fprintf(stderr, "bench %s: %s\n", what, ap_last_error(c));
        exit(1);
    }
}

static void report(const char *name, const char *prec, const char *pass, stats s, double work,
                   const char *unit, double peak, const char *peak_name) {
    double rate = work / s.med / 1e9;
    printf("%-34s %-5s %-9s %9.3f ms %9.1f %-7s %6.1f%% of %s\n", name, prec, pass, s.med * 1e3, rate,
           unit, peak > 0 ? 100.0 * rate / peak : 0.0, peak_name);
    if (g_json) {
        fprintf(g_json,
                "%s\n  {\"op\": \"%s\", \"precision\": \"%s\", \"pass\": \"%s\", \"median_ms\": %.4f, "
                "\"min_ms\": %.4f, \"max_ms\": %.4f, \"rate\": %.2f, \"unit\": \"%s\", \"peak\": %.2f, "
                "\"fraction_of_peak\": %.4f}",
                bench_json_sep(&g_json_first), name, prec, pass, s.med * 1e3, s.min * 1e3, s.max * 1e3, rate,
                unit, peak, peak > 0 ? rate / peak : 0.0);
    }
    fflush(stdout);
}

typedef ap_tensor *(*fwd_fn)(ap_ctx *c, void *u, ap_tensor **in);

/* Times forward (no grad) and the input-gradient backward (inputs[0..n_grad-1]
 * require grad; weights stay frozen), medians of g_runs after one warm-up. */
static void time_op(ap_ctx *c, const char *name, fwd_fn f, void *u, ap_tensor **in, int n_in,
                    int n_grad, double flops_fwd, double flops_bwd, const char *unit, double peak,
                    const char *peak_name) {
    const char *prec = ap_get_precision(c) == AP_PREC_BF16 ? "bf16" : "f32";
    double tf[64], tb[64];
    int runs = g_runs > 64 ? 64 : g_runs;
    int prev = ap_set_grad_enabled(c, 0);
    for (int r = -1; r < runs; r++) {
        double t0 = bench_now();
        ap_tensor *y = f(c, u, in);
        double t1 = bench_now();
        die_if(c, name);
        ap_tensor_release(y);
        if (r >= 0) tf[r] = t1 - t0;
    }
    ap_set_grad_enabled(c, prev);
    report(name, prec, "forward", summarize(tf, runs), flops_fwd, unit, peak, peak_name);
    if (flops_bwd <= 0) return;
    for (int i = 0; i < n_grad; i++) ap_tensor_set_requires_grad(in[i], 1);
    for (int r = -1; r < runs; r++) {
        ap_tensor *y = f(c, u, in);
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
    report(name, prec, "input-grad", summarize(tb, runs), flops_bwd, unit, peak, peak_name);
}

/* ------------------------------------------------------------ ops */
static ap_tensor *conv_f(ap_ctx *c, void *u, ap_tensor **in) {
    (void)u;
    return ap_conv2d(c, in[0], in[1], in[2], (ap_conv_params){1, {1, 1, 1, 1}});
}

static void bench_conv(ap_ctx *c, double peak_f32, double peak_amx, const char *bf_name) {
    static const int cfg[][2] = {{320, 64}, {640, 32}, {1280, 16}, {1280, 8}};
    for (int i = 0; i < 4; i++) {
        int C = cfg[i][0], HW = cfg[i][1];
        int64_t N = 2;
        ap_tensor *in[3] = {rnd(c, 4, (int64_t[]){N, HW, HW, C}, 2.0f, 1),
                            rnd(c, 4, (int64_t[]){C, C, 3, 3}, 0.05f, 2), rnd(c, 1, (int64_t[]){C}, 0.1f, 3)};
        die_if(c, "conv setup");
        double flops = 2.0 * N * HW * HW * C * C * 9;
        char name[64];
        snprintf(name, sizeof name, "conv3x3 %dch %dx%d", C, HW, HW);
        for (int p = 0; p < 2; p++) {
            ap_set_precision(c, p ? AP_PREC_BF16 : AP_PREC_F32);
            time_op(c, name, conv_f, NULL, in, 3, 1, flops, flops, "GFLOP/s", p ? peak_amx : peak_f32,
                    p ? bf_name : "FMA");
        }
        for (int k = 0; k < 3; k++) ap_tensor_release(in[k]);
    }
    ap_set_precision(c, AP_PREC_F32);
}

typedef struct {
    int heads;
} attn_u;

static ap_tensor *attn_f(ap_ctx *c, void *u, ap_tensor **in) {
    return ap_attention(c, in[0], in[1], in[2], ((attn_u *)u)->heads, 0.0f, 0);
}

static void bench_attn(ap_ctx *c, double peak_f32, double peak_amx, const char *bf_name) {
    static const int cfg[][3] = {{4096, 40, 4096}, {4096, 40, 77}, {1024, 80, 1024}, {1024, 80, 77}};
    attn_u u = {8};
    for (int i = 0; i < 4; i++) {
        int T = cfg[i][0], d = cfg[i][1], S = cfg[i][2];
        if (g_quick && T == 4096 && S == 4096) T = S = 2048;
        int64_t B = 2, C = 8 * d;
        ap_tensor *in[3] = {rnd(c, 3, (int64_t[]){B, T, C}, 2.0f, 4), rnd(c, 3, (int64_t[]){B, S, C}, 2.0f, 5),
                            rnd(c, 3, (int64_t[]){B, S, C}, 2.0f, 6)};
        die_if(c, "attention setup");
        double f = 4.0 * B * 8 * T * S * d;
        char name[64];
        snprintf(name, sizeof name, "attention %s T=%d S=%d d=%d", S == T ? "self" : "cross", T, S, d);
        for (int p = 0; p < 2; p++) {
            ap_set_precision(c, p ? AP_PREC_BF16 : AP_PREC_F32);
            /* backward counted as 2.5x forward (FlashAttention's convention) */
            time_op(c, name, attn_f, &u, in, 3, 3, f, 2.5 * f, "GFLOP/s", p ? peak_amx : peak_f32,
                    p ? bf_name : "FMA");
        }
        for (int k = 0; k < 3; k++) ap_tensor_release(in[k]);
    }
    ap_set_precision(c, AP_PREC_F32);
}

static ap_tensor *gn_f(ap_ctx *c, void *u, ap_tensor **in) {
    return ap_group_norm(c, in[0], 32, in[1], in[2], 1e-5f);
}
static ap_tensor *silu_f(ap_ctx *c, void *u, ap_tensor **in) { return ap_silu(c, in[0]); }
static ap_tensor *add_f(ap_ctx *c, void *u, ap_tensor **in) { return ap_add(c, in[0], in[1]); }

static void bench_memory_ops(ap_ctx *c, double peak_bw) {
    int64_t shape[4] = {2, 64, 64, 320};
    ap_tensor *x = rnd(c, 4, shape, 2.0f, 8), *y = rnd(c, 4, shape, 2.0f, 9);
    ap_tensor *g = rnd(c, 1, (int64_t[]){320}, 1.0f, 10), *b = rnd(c, 1, (int64_t[]){320}, 1.0f, 11);
    die_if(c, "norm setup");
    double nb = (double)ap_tensor_numel(x) * 4;
    ap_tensor *gin[3] = {x, g, b}, *ein[2] = {x, y};
    /* bytes that must move: forward reads x, writes y; backward reads x and dy, writes dx */
    if (!g_only || !strcmp(g_only, "norm"))
        time_op(c, "group_norm 32g 320ch 64x64", gn_f, NULL, gin, 3, 1, 2 * nb, 3 * nb, "GB/s", peak_bw, "copy");
    if (!g_only || !strcmp(g_only, "elem")) {
        time_op(c, "silu 320ch 64x64", silu_f, NULL, ein, 1, 1, 2 * nb, 3 * nb, "GB/s", peak_bw, "copy");
        time_op(c, "add 320ch 64x64", add_f, NULL, ein, 2, 2, 3 * nb, 3 * nb, "GB/s", peak_bw, "copy");
    }
    ap_tensor_release(x);
    ap_tensor_release(y);
    ap_tensor_release(g);
    ap_tensor_release(b);
}

int main(int argc, char **argv) {
    const char *json_path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--runs") && i + 1 < argc)
            g_runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json") && i + 1 < argc)
            json_path = argv[++i];
        else if (!strcmp(argv[i], "--quick"))
            g_quick = 1;
        else if (!strcmp(argv[i], "--only") && i + 1 < argc)
            g_only = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--runs N] [--json FILE] [--quick] [--only conv|attn|norm|elem]\n", argv[0]);
            return 2;
        }
    }
    if (g_runs < 5) g_runs = 5;
    ap_ctx *c = NULL;
    if (ap_ctx_create_checked(&c) != AP_OK) {
        fprintf(stderr, "bench: %s\n", c ? ap_last_error(c) : "out of memory");
        return 1;
    }
    if (json_path && !(g_json = fopen(json_path, "w"))) {
        fprintf(stderr, "bench: cannot write %s\n", json_path);
        return 1;
    }
    int threads = ap_get_num_threads(c);
    long it = g_quick ? 500000 : 2000000;
    double pf = peak_gflops(PEAK_FMA, it), pa = peak_gflops(PEAK_AMX, it / 4), pd = peak_gflops(PEAK_BF16DP, it);
    double pb = peak_copy_gbs(g_quick ? (size_t)16 << 20 : (size_t)64 << 20);
    /* the bf16 peak is AMX's where the CPU has it, else AVX512-BF16 dot products */
    double pbf = pa > 0 ? pa : pd;
    const char *pbf_name = pa > 0 ? "AMX" : "BF16DP";
    printf("alignprop %s bench/ops: %d threads, %d runs per figure (median)\n", ap_version_string(), threads, g_runs);
    char cpu[128] = "unknown CPU";
    FILE *ci = fopen("/proc/cpuinfo", "r");
    for (char line[512]; ci && fgets(line, sizeof line, ci);)
        if (!strncmp(line, "model name", 10)) {
            char *v = strchr(line, ':');
            if (v) snprintf(cpu, sizeof cpu, "%s", v + 2);
            cpu[strcspn(cpu, "\n")] = 0;
            break;
        }
    if (ci) fclose(ci);
    printf("CPU: %s\n", cpu);
    printf("machine peaks measured now: FMA f32 %.1f GFLOP/s, AMX bf16 %.1f GFLOP/s%s, AVX512-BF16 dot %.1f GFLOP/s, "
           "copy %.1f GB/s\n\n",
           pf, pa, pa > 0 ? "" : " (no AMX on this CPU)", pd, pb);
    printf("%-34s %-5s %-9s %12s %9s %-7s %s\n", "op (batch 2)", "prec", "pass", "median", "rate", "unit", "fraction");
    if (g_json)
        fprintf(g_json, "{\"threads\": %d, \"runs\": %d, \"peak_fma_gflops\": %.2f, \"peak_amx_gflops\": %.2f, "
                        "\"peak_bf16dp_gflops\": %.2f, \"peak_copy_gbs\": %.2f, \"cpu\": \"%s\", \"results\": [",
                threads, g_runs, pf, pa, pd, pb, cpu);
    if (!g_only || !strcmp(g_only, "conv")) bench_conv(c, pf, pbf, pbf_name);
    if (!g_only || !strcmp(g_only, "attn")) bench_attn(c, pf, pbf, pbf_name);
    if (!g_only || !strcmp(g_only, "norm") || !strcmp(g_only, "elem")) bench_memory_ops(c, pb);
    if (g_json) {
        fprintf(g_json, "\n]}\n");
        fclose(g_json);
    }
    printf("\npeak activation memory: %.1f MiB\n", ap_mem_peak(c) / 1048576.0);
    ap_ctx_free(c);
    return 0;
}
