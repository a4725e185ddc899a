/* CLIP vision towers at full size (random weights, bf16 storage and compute):
 * forward plus the gradient with respect to the pixels (what the aesthetic,
 * HPS and PickScore rewards cost per training step), batch 2 at 224x224.
 *
 * Effective TFLOP/s = matrix-product flops / measured time. The forward's are
 * what the ops count (ap_flops: patch conv, linears, attention with
 * FlashAttention's 4*B*H*T*S*d). ap_flops counts forwards only, so the
 * backward's are derived: the input gradient of a conv or linear costs what
 * its forward did (no weight gradients: the weights are frozen), attention's
 * backward 2.5x its forward (FlashAttention's convention, as bench/attention);
 * backward = forward + 1.5 * attention. Median of the runs after one warm-up
 * (which packs the weights).
 *
 * usage: clip [--runs N] [--tower vit_l14|vit_h14|tiny] [--json FILE] */
#include "bench.h"
#include "clip_flops.h"
#include "peaks.h"

#include "alignprop.h"
#include "models/clip_vision.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void die(ap_ctx *c, const char *what) {
    fprintf(stderr, "bench/clip: %s: %s\n", what, c ? ap_last_error(c) : "no context");
    exit(1);
}

static ap_tensor *rnd(ap_ctx *c, int nd, const int64_t *shape, unsigned seed) {
    ap_tensor *t = ap_tensor_new(c, AP_F32, nd, shape);
    if (!t) die(c, "tensor");
    float *p = ap_tensor_data(t);
    for (int64_t i = 0; i < ap_tensor_numel(t); i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = ((seed >> 8) * (1.0f / 16777216.0f) - 0.5f) * 3.0f;
    }
    return t;
}

int main(int argc, char **argv) {
    int runs = 3;
    const char *only = NULL, *json = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--tower") && i + 1 < argc) only = argv[++i];
        else if (!strcmp(argv[i], "--json") && i + 1 < argc) json = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--runs N] [--tower vit_l14|vit_h14] [--json FILE]\n", argv[0]);
            return 2;
        }
    }
    if (runs < 1 || runs > 50) runs = 3;
    ap_ctx *c = NULL;
    if (ap_ctx_create_checked(&c) != AP_OK) die(c, "context");
    double pd = peak_gflops(PEAK_BF16DP, 1000000), pa = peak_gflops(PEAK_AMX, 250000);
    double pbf = pa > 0 ? pa : pd;
    printf("bench/clip: CLIP vision towers, random weights (bf16), bf16 compute, batch 2 at 224x224, "
           "%d threads, median of %d after a warm-up\n", ap_get_num_threads(c), runs);
    printf("peak now: bf16 %.0f GFLOP/s (%s)\n\n", pbf, pa > 0 ? "AMX" : "AVX512-BF16 dot");
    ap_set_precision(c, AP_PREC_BF16);
    FILE *js = json ? fopen(json, "w") : NULL;
    if (js) fprintf(js, "{\"peak_bf16\": %.1f, \"runs\": %d, \"results\": [", pbf, runs);
    int first = 1;
    const char *towers[3] = {"vit_l14", "vit_h14", "tiny"};
    for (int k = 0; k < 3; k++) {
        if (only ? strcmp(only, towers[k]) : k == 2) continue; /* tiny: a quick check of the program */
        ap_clip_vision_config cfg;
        ap_clip_vision *m = NULL;
        if (ap_clip_vision_preset(c, towers[k], &cfg) != AP_OK || ap_clip_vision_create(c, &cfg, AP_BF16, &m) != AP_OK ||
            ap_params_init_random(&m->params, 1) != AP_OK)
            die(c, towers[k]);
        ap_tensor *x = rnd(c, 4, (int64_t[]){2, cfg.image_size, cfg.image_size, 3}, 7), *gy = rnd(c, 2, (int64_t[]){2, cfg.proj_dim}, 9);
        ap_tensor_set_requires_grad(x, 1);
        double tf[50], tb[50], tt[50], fl = 0, flf = 0;
        size_t mem = 0;
        for (int r = -1; r < runs; r++) {
            ap_tensor_zero_grad(x);
            ap_mem_reset_peak(c);
            size_t base = ap_mem_in_use(c);
            ap_flops_reset(c);
            double a = bench_now();
            ap_tensor *y = ap_clip_vision_forward(c, m, x);
            double b = bench_now();
            if (!y) die(c, "forward");
            flf = ap_flops(c);
            if (ap_backward(c, y, gy) != AP_OK) die(c, "backward");
            double e = bench_now();
            fl = ap_flops(c);
            mem = ap_mem_peak(c) - base;
            ap_tensor_release(y);
            ap_tape_clear(c);
            if (r >= 0) tf[r] = b - a, tb[r] = e - b, tt[r] = e - a;
        }
        double mf = bench_median(tf, runs), mb = bench_median(tb, runs), mt = bench_median(tt, runs);
        fl = clip_fwd_bwd_flops(flf, &cfg, 2);
        double flb = fl - flf;
        printf("%s (%lld parameters): forward %.3f s (%.3f TFLOP/s), pixel backward %.3f s (%.3f TFLOP/s), "
               "total %.3f s: %.3f TFLOP/s effective (%.0f%% of peak), %.4g GFLOP counted (forward %.4g, model formula %.4g), peak activations %.0f MiB\n",
               towers[k], (long long)ap_params_count(&m->params), mf, flf / mf / 1e12, mb, flb / mb / 1e12, mt,
               fl / mt / 1e12, 100.0 * fl / mt / 1e9 / pbf, fl / 1e9, flf / 1e9, ap_clip_vision_flops(&cfg, 2) / 1e9,
               mem / 1048576.0);
        if (js)
            fprintf(js, "%s\n {\"tower\": \"%s\", \"forward_s\": %.4f, \"backward_s\": %.4f, \"total_s\": %.4f, "
                        "\"gflop\": %.2f, \"tflops\": %.4f, \"peak_mib\": %.1f}",
                    bench_json_sep(&first), towers[k], mf, mb, mt, fl / 1e9, fl / mt / 1e12, mem / 1048576.0);
        ap_tensor_release(x);
        ap_tensor_release(gy);
        ap_clip_vision_free(m);
    }
    if (js) {
        fprintf(js, "\n]}\n");
        fclose(js);
    }
    ap_ctx_free(c);
    return 0;
}
