/* bench/stio: safetensors speed on a synthetic UNet-like checkpoint (conv,
 * linear and norm tensors at SD widths 320/640/1280): save (with fsync), open
 * (header parse and validation), and load of every tensor with each
 * conversion a model load uses, as GB/s of bytes read + written beside this
 * machine's copy bandwidth measured in the same run. The files sit in the
 * page cache (just written), so loads measure conversion and mapping, not the
 * disk. Medians of --runs runs (default 5), wall time and process CPU time
 * (this VM is shared: CPU time shows what contention adds to the wall time).
 * The generic element-by-element path (ap_tensor_convert) is timed on the
 * same data for comparison. Writes JSON with --json.
 *
 *   build/bench/stio [--runs N] [--mb MB_OF_F16] [--dir DIR] [--json out.json]
 */
#include "bench.h"
#include "alignprop.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int g_runs = 5;
static FILE *g_json;
static int g_json_first = 1;

static double g_min; /* the fastest run of the last median() */
static double median(double *t, int n) {
    double m = bench_median(t, n);
    g_min = t[0];
    return m;
}

/* Copy bandwidth (bytes read + written per second) over n bytes, all threads. */
static double copy_peak(size_t n) {
    char *a = malloc(n), *b = malloc(n);
    memset(a, 1, n);
    memset(b, 2, n);
    double t[7];
    for (int r = 0; r < 7; r++) {
        double t0 = bench_now();
        int nt = omp_get_max_threads();
#pragma omp parallel for schedule(static)
        for (int k = 0; k < nt; k++) {
            size_t lo = n / (size_t)nt * (size_t)k, hi = k == nt - 1 ? n : n / (size_t)nt * (size_t)(k + 1);
            memcpy(b + lo, a + lo, hi - lo);
        }
        t[r] = bench_now() - t0;
    }
    double bw = 2.0 * (double)n / median(t, 7);
    free(a);
    free(b);
    return bw;
}

/* One result line: median wall ms (and the fastest run), GB/s from the
 * median, % of copy bandwidth, process CPU ms (all threads). */
static void row(const char *what, double sec, double best, double cpu, double bytes, double peak) {
    double gbs = bytes / sec / 1e9;
    printf("%-36s %9.2f ms (best %8.2f) %7.2f GB/s", what, sec * 1e3, best * 1e3, gbs);
    if (peak > 0) printf(" %6.1f%% of copy", 100.0 * bytes / sec / peak);
    if (cpu > 0) printf("   (cpu %.2f ms)", cpu * 1e3);
    printf("\n");
    if (g_json) {
        fprintf(g_json, "%s\n  {\"what\": \"%s\", \"ms\": %.4f, \"cpu_ms\": %.4f, \"gb_per_s\": %.4f}",
                bench_json_sep(&g_json_first), what, sec * 1e3, cpu * 1e3, gbs);
    }
}

int main(int argc, char **argv) {
    const char *json_path = NULL, *dir = getenv("TMPDIR");
    double mb = 384; /* well beyond any L3 share this VM may get */
    if (!dir || !*dir) dir = "/tmp";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--runs") && i + 1 < argc)
            g_runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--mb") && i + 1 < argc)
            mb = atof(argv[++i]);
        else if (!strcmp(argv[i], "--dir") && i + 1 < argc)
            dir = argv[++i];
        else if (!strcmp(argv[i], "--json") && i + 1 < argc)
            json_path = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--runs N] [--mb MB] [--dir DIR] [--json FILE]\n", argv[0]);
            return 2;
        }
    }
    if (g_runs < 1) g_runs = 1;
    if (json_path && !(g_json = fopen(json_path, "w"))) {
        fprintf(stderr, "bench: cannot write %s\n", json_path);
        return 2;
    }
    ap_ctx *c = ap_ctx_create();

    /* A UNet-like list: per block a 3x3 conv, a 1x1 conv, two linears, norms. */
    enum { MAXT = 4096 };
    static ap_tensor *t16[MAXT];
    static char *names[MAXT];
    int n = 0;
    static const int widths[] = {320, 640, 1280, 1280, 640, 320};
    size_t total = 0, target = (size_t)(mb * 1e6);
    uint64_t s = 12345;
    for (int blk = 0; total < target && n + 6 < MAXT; blk++) {
        int w = widths[blk % 6];
        int64_t shapes[6][4] = {{w, w, 3, 3}, {w, w, 1, 1}, {w, w}, {4 * w, w}, {w}, {w}};
        const char *kinds[6] = {"conv1.weight",   "conv_shortcut.weight", "attn.to_q.weight",
                                "ff.proj.weight", "norm.weight",          "norm.bias"};
        int nd[6] = {4, 4, 2, 2, 1, 1};
        for (int k = 0; k < 6; k++) {
            ap_tensor *t = ap_tensor_new(c, AP_F16, nd[k], shapes[k]);
            uint16_t *p = ap_tensor_data(t);
            for (int64_t i = 0; i < ap_tensor_numel(t); i++) {
                s = s * 6364136223846793005ull + 1442695040888963407ull;
                p[i] =
                    (uint16_t)(0x2000 + ((s >> 33) % 0x1c00)) | (uint16_t)((s >> 20) & 0x8000); /* |x| < 2 */
            }
            char nm[96];
            snprintf(nm, sizeof nm, "down_blocks.%d.%s", blk, kinds[k]);
            names[n] = strdup(nm);
            t16[n++] = t;
            total += ap_tensor_nbytes(t);
        }
    }
    printf("synthetic checkpoint: %d tensors, %.1f MB as f16; %d threads\n", n, (double)total / 1e6,
           omp_get_max_threads());
    double peak = copy_peak(total);
    printf("copy bandwidth (read + write): %.2f GB/s\n\n", peak / 1e9);
    if (g_json)
        fprintf(g_json, "{\"tensors\": %d, \"f16_bytes\": %zu, \"copy_gb_per_s\": %.4f, \"rows\": [", n,
                total, peak / 1e9);

    /* the same tensors stored as f16, bf16 and f32 */
    static const ap_dtype stored[3] = {AP_F16, AP_BF16, AP_F32};
    char paths[3][512];
    for (int f = 0; f < 3; f++) {
        static ap_tensor *ts[MAXT];
        for (int i = 0; i < n; i++)
            ts[i] = stored[f] == AP_F16 ? ap_tensor_retain(t16[i]) : ap_tensor_convert(c, t16[i], stored[f]);
        snprintf(paths[f], sizeof paths[f], "%s/ap_bench_stio_%d_%s.safetensors", dir, (int)getpid(),
                 ap_dtype_name(stored[f]));
        const char *mk = "format", *mv = "pt";
        double t0 = bench_now();
        if (ap_st_save(c, paths[f], n, (const char *const *)names, ts, 1, &mk, &mv) != AP_OK) {
            fprintf(stderr, "save: %s\n", ap_last_error(c));
            return 1;
        }
        double sec = bench_now() - t0;
        char what[64];
        snprintf(what, sizeof what, "save %s (write + fsync)", ap_dtype_name(stored[f]));
        row(what, sec, sec, 0, (double)total * (double)ap_dtype_size(stored[f]) / 2, 0);
        for (int i = 0; i < n; i++) ap_tensor_release(ts[i]);
    }

    double *tm = malloc(sizeof *tm * (size_t)g_runs), *tc = malloc(sizeof *tc * (size_t)g_runs);
    /* open: a header-heavy file, 1130 small tensors with SD-length names (the
     * tensor count of SD 1.5's UNet + VAE + text encoder) */
    {
        enum { NH = 1130 };
        static ap_tensor *hs[NH];
        static char *hn[NH];
        for (int i = 0; i < NH; i++) {
            char nm[128];
            snprintf(nm, sizeof nm,
                     "model.diffusion_model.output_blocks.%d.1.transformer_blocks.0.attn%d.to_q.weight",
                     i / 2, i % 2 + 1);
            hn[i] = strdup(nm);
            hs[i] = ap_tensor_zeros(c, AP_F16, 2, (int64_t[]){2, 2});
        }
        char hp[512];
        snprintf(hp, sizeof hp, "%s/ap_bench_stio_%d_header.safetensors", dir, (int)getpid());
        if (ap_st_save(c, hp, NH, (const char *const *)hn, hs, 0, NULL, NULL) != AP_OK) {
            fprintf(stderr, "save: %s\n", ap_last_error(c));
            return 1;
        }
        for (int r = 0; r < g_runs; r++) {
            double t0 = bench_now();
            ap_safetensors *st = NULL;
            if (ap_st_open(c, hp, &st) != AP_OK) {
                fprintf(stderr, "open: %s\n", ap_last_error(c));
                return 1;
            }
            tm[r] = bench_now() - t0;
            ap_st_close(st);
        }
        double so = median(tm, g_runs);
        printf("%-36s %9.3f ms %7.2f us per tensor\n", "open 1130 tensors (parse, validate)", so * 1e3,
               so * 1e6 / NH);
        if (g_json) {
            fprintf(g_json, "%s\n  {\"what\": \"open 1130 tensors\", \"ms\": %.4f}", bench_json_sep(&g_json_first),
                    so * 1e3);
        }
        unlink(hp);
        for (int i = 0; i < NH; i++) {
            ap_tensor_release(hs[i]);
            free(hn[i]);
        }
    }

    static const struct {
        int file;
        ap_dtype to;
    } loads[] = {{0, AP_F16}, {0, AP_F32}, {0, AP_BF16}, {1, AP_F32}, {2, AP_BF16}, {2, AP_F16}, {2, AP_F32}};
    for (size_t l = 0; l < sizeof loads / sizeof loads[0]; l++) {
        ap_safetensors *st = NULL;
        ap_st_open(c, paths[loads[l].file], &st);
        size_t in_bytes = total * ap_dtype_size(stored[loads[l].file]) / 2,
               out_bytes = total * ap_dtype_size(loads[l].to) / 2;
        for (int r = 0; r < g_runs; r++) {
            double t0 = bench_now(), c0 = bench_cpu_now();
            for (int i = 0; i < n; i++) {
                ap_tensor *t = NULL;
                if (ap_st_load(c, st, names[i], loads[l].to, &t) != AP_OK) {
                    fprintf(stderr, "load: %s\n", ap_last_error(c));
                    return 1;
                }
                ap_tensor_release(t);
            }
            tm[r] = bench_now() - t0;
            tc[r] = bench_cpu_now() - c0;
        }
        char what[64];
        snprintf(what, sizeof what, "load %s file as %s", ap_dtype_name(stored[loads[l].file]),
                 ap_dtype_name(loads[l].to));
        double med = median(tm, g_runs), best = g_min;
        row(what, med, best, median(tc, g_runs), (double)(in_bytes + out_bytes), peak);
        ap_st_close(st);

        /* the generic path on the same conversion, from tensors in memory */
        if (stored[loads[l].file] == loads[l].to) continue;
        static ap_tensor *src[MAXT];
        for (int i = 0; i < n; i++)
            src[i] = stored[loads[l].file] == AP_F16 ? ap_tensor_retain(t16[i])
                                                     : ap_tensor_convert(c, t16[i], stored[loads[l].file]);
        for (int r = 0; r < g_runs; r++) {
            double t0 = bench_now(), c0 = bench_cpu_now();
            for (int i = 0; i < n; i++) ap_tensor_release(ap_tensor_convert(c, src[i], loads[l].to));
            tm[r] = bench_now() - t0;
            tc[r] = bench_cpu_now() - c0;
        }
        snprintf(what, sizeof what, "  ap_tensor_convert %s to %s", ap_dtype_name(stored[loads[l].file]),
                 ap_dtype_name(loads[l].to));
        med = median(tm, g_runs);
        best = g_min;
        row(what, med, best, median(tc, g_runs), (double)(in_bytes + out_bytes), peak);
        for (int i = 0; i < n; i++) ap_tensor_release(src[i]);
    }
    if (g_json) {
        fprintf(g_json, "\n]}\n");
        fclose(g_json);
    }
    for (int f = 0; f < 3; f++) unlink(paths[f]);
    for (int i = 0; i < n; i++) {
        ap_tensor_release(t16[i]);
        free(names[i]);
    }
    free(tm);
    free(tc);
    ap_ctx_free(c);
    return 0;
}
