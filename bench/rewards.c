/* The CLIP rewards at full size (random tower weights, bf16 storage and
 * compute): forward plus the gradient with respect to the images, batch 2 of
 * 512x512 images in [-1,1], what one training step's reward costs:
 *   aesthetic  preprocessing (512 -> 224) + CLIP ViT-L/14 vision + the real LAION head
 *   hps        preprocessing + OpenCLIP ViT-H/14 vision + cosine with the ViT-H/14 text
 *              embedding of the prompt (cached after its first use, as in training:
 *              the timed runs hit the cache; the text tower's one-off cost on two
 *              prompts is timed apart)
 *
 * Effective TFLOP/s = matrix-product flops / the measured wall time of the
 * whole reward forward + backward (preprocessing included). The forward's are
 * what the ops counted (ap_flops: patch conv, linears, attention); ap_flops
 * counts forward ops only, so the backward's are derived as bench/clip does:
 * the input gradient of a conv or linear costs what its forward did (dX = dY W;
 * no weight gradients, the weights are frozen), attention's backward 2.5x its
 * forward (FlashAttention's convention, as bench/attention); backward =
 * forward + 1.5 * attention, attention's forward being 4 T^2 W per layer and
 * image. Median of the runs after one warm-up (which packs the weights). The
 * complement of bench/clip (the bare towers at 224x224).
 *
 * usage: rewards [--runs N] [--reward aesthetic|hps] [--json FILE] */
#include "bench.h"
#include "clip_flops.h"
#include "peaks.h"

#include "alignprop.h"
#include "models/clip.h"
#include "rewards/clip_rewards.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void die(ap_ctx *c, const char *what) {
    fprintf(stderr, "bench/rewards: %s: %s\n", what, c ? ap_last_error(c) : "no context");
    exit(1);
}

/* images in [-1, 1] */
static ap_tensor *rnd_images(ap_ctx *c, int n, int s, unsigned seed) {
    ap_tensor *t = ap_tensor_new(c, AP_F32, 4, (int64_t[]){n, s, s, 3});
    if (!t) die(c, "tensor");
    float *p = ap_tensor_data(t);
    for (int64_t i = 0; i < ap_tensor_numel(t); i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = (seed >> 8) * (2.0f / 16777216.0f) - 1.0f;
    }
    return t;
}

static ap_reward *make(ap_ctx *c, const char *name, double *text_s, double *text_gflop) {
    ap_reward *r = NULL;
    ap_clip_vision *v = NULL;
    if (!strcmp(name, "aesthetic")) {
        ap_aesthetic_head head;
        if (ap_clip_vision_create(c, &ap_clip_vision_config_l14, AP_BF16, &v) != AP_OK ||
            ap_params_init_random(&v->params, 1) != AP_OK || ap_aesthetic_head_builtin(c, &head) != AP_OK ||
            ap_reward_aesthetic_from(c, v, &head, NULL, &r) != AP_OK)
            die(c, name);
        *text_s = *text_gflop = 0;
        return r;
    }
    ap_clip_text *t = NULL;
    if (ap_clip_vision_create(c, &ap_clip_vision_config_h14, AP_BF16, &v) != AP_OK ||
        ap_params_init_random(&v->params, 1) != AP_OK ||
        ap_clip_text_create(c, &ap_clip_text_config_h14, AP_BF16, &t) != AP_OK ||
        ap_params_init_random(&t->params, 2) != AP_OK)
        die(c, name);
    /* the text tower on two prompts' ids, without gradient: what the reward
     * runs once per prompt before its cache has it (second call: weights packed) */
    int32_t ids[2 * 77] = {0};
    for (int b = 0; b < 2; b++) {
        ids[b * 77] = 49406;
        for (int i = 1; i < 8 + 4 * b; i++) ids[b * 77 + i] = 320 + 7 * i;
        ids[b * 77 + 8 + 4 * b] = 49407;
    }
    ap_tensor *tid = ap_tensor_from_data(c, AP_I32, 2, (int64_t[]){2, 77}, ids);
    int prev = ap_set_grad_enabled(c, 0);
    for (int i = 0; i < 2; i++) {
        ap_flops_reset(c);
        double a = bench_now();
        ap_tensor *y = ap_clip_text_embed(c, t, tid);
        *text_s = bench_now() - a;
        *text_gflop = ap_flops(c) / 1e9;
        if (!y) die(c, "hps text");
        ap_tensor_release(y);
    }
    ap_set_grad_enabled(c, prev);
    ap_tensor_release(tid);
    if (ap_reward_clip_score_from(c, AP_CLIP_SCORE_HPS, v, t, 1.0f, NULL, &r) != AP_OK) die(c, name);
    return r;
}

int main(int argc, char **argv) {
    int runs = 3;
    const char *only = NULL, *json = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reward") && i + 1 < argc) only = argv[++i];
        else if (!strcmp(argv[i], "--json") && i + 1 < argc) json = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--runs N] [--reward aesthetic|hps] [--json FILE]\n", argv[0]);
            return 2;
        }
    }
    if (runs < 1 || runs > 50) runs = 3;
    ap_ctx *c = NULL;
    if (ap_ctx_create_checked(&c) != AP_OK) die(c, "context");
    double pd = peak_gflops(PEAK_BF16DP, 1000000), pa = peak_gflops(PEAK_AMX, 250000);
    double pbf = pa > 0 ? pa : pd;
    printf("bench/rewards: CLIP rewards, random tower weights (bf16), bf16 compute, batch 2 of 512x512 images, "
           "forward + image gradient, %d threads, median of %d after a warm-up\n", ap_get_num_threads(c), runs);
    printf("peak now: bf16 %.0f GFLOP/s (%s)\n\n", pbf, pa > 0 ? "AMX" : "AVX512-BF16 dot");
    ap_set_precision(c, AP_PREC_BF16);
    FILE *js = json ? fopen(json, "w") : NULL;
    if (js) fprintf(js, "{\"peak_bf16\": %.1f, \"runs\": %d, \"results\": [", pbf, runs);
    int first = 1;
    const char *names[2] = {"aesthetic", "hps"};
    const char *prompts[2] = {"a photo of a cat", "An astronaut riding a horse on the moon."};
    for (int k = 0; k < 2; k++) {
        if (only && strcmp(only, names[k])) continue;
        double text_s, text_gf;
        ap_reward *r = make(c, names[k], &text_s, &text_gf);
        ap_tensor *x = rnd_images(c, 2, 512, 7);
        ap_tensor_set_requires_grad(x, 1);
        ap_tensor *gy = ap_tensor_from_data(c, AP_F32, 1, (int64_t[]){2}, (float[]){1.0f, -0.5f});
        double tf[50], tb[50], tt[50], fl = 0, flf = 0;
        size_t mem = 0;
        for (int i = -1; i < runs; i++) {
            ap_tensor_zero_grad(x);
            ap_mem_reset_peak(c);
            size_t base = ap_mem_in_use(c);
            ap_flops_reset(c);
            double a = bench_now();
            ap_tensor *y = r->forward(c, r, x, prompts);
            double b = bench_now();
            if (!y) die(c, "forward");
            flf = ap_flops(c);
            if (ap_backward(c, y, gy) != AP_OK) die(c, "backward");
            double e = bench_now();
            fl = clip_fwd_bwd_flops(flf, k ? &ap_clip_vision_config_h14 : &ap_clip_vision_config_l14, 2);
            mem = ap_mem_peak(c) - base;
            ap_tensor_release(y);
            ap_tape_clear(c);
            if (i >= 0) tf[i] = b - a, tb[i] = e - b, tt[i] = e - a;
        }
        double mf = bench_median(tf, runs), mb = bench_median(tb, runs), mt = bench_median(tt, runs);
        printf("%s: forward %.3f s (%.3f TFLOP/s), image backward %.3f s (%.3f TFLOP/s), total %.3f s: "
               "%.3f TFLOP/s effective (%.0f%% of peak), %.1f GFLOP counted, peak activations %.0f MiB",
               names[k], mf, flf / mf / 1e12, mb, (fl - flf) / mb / 1e12, mt, fl / mt / 1e12,
               100.0 * fl / mt / 1e9 / pbf, fl / 1e9, mem / 1048576.0);
        if (text_gf > 0)
            printf("; the text tower (once per prompt, then cached): %.3f s for 2 prompts, %.1f GFLOP, %.3f TFLOP/s",
                   text_s, text_gf, text_gf / text_s / 1e3);
        printf("\n");
        if (js)
            fprintf(js, "%s\n {\"reward\": \"%s\", \"forward_s\": %.4f, \"backward_s\": %.4f, \"total_s\": %.4f, "
                        "\"gflop\": %.2f, \"tflops\": %.4f, \"peak_mib\": %.1f, \"text_once_s\": %.4f}",
                    bench_json_sep(&first), names[k], mf, mb, mt, fl / 1e9, fl / mt / 1e12, mem / 1048576.0, text_s);
        ap_tensor_release(x);
        ap_tensor_release(gy);
        ap_reward_free(r);
    }
    if (js) {
        fprintf(js, "\n]}\n");
        fclose(js);
    }
    ap_ctx_free(c);
    return 0;
}
