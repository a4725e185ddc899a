/* bench/sd: Stable Diffusion 1.5 at full size with random weights (made in
 * memory, as `alignprop init --config sd15` would): one UNet call with CFG
 * (batch 2, 64x64 latents, 77 text tokens), the VAE decode of one 512x512
 * image and the text encoder, in f32 and bf16; effective TFLOP/s from the
 * matrix-product flop count (ap_flops), the peak activation memory, and the
 * time of a whole 512x512 DDIM-50 sample: measured with --full, else estimated
 * as 50 UNet calls + one decode + one text encode.
 *
 * --pack-compare times only UNet calls, with a packed-weight cache that holds
 * every weight, then with none (each call then packs every weight into a
 * temporary): what the budget of ap_set_pack_cache costs at most.
 * --pack-cache BYTES sets that budget for the other measurements.
 *
 *   build/bench/sd [--runs N] [--full] [--precision f32|bf16] [--json FILE] [--pack-cache BYTES]
 *                  [--pack-compare]
 */
#include "bench.h"
#include "peaks.h"

#include "models/sd.h"
#include "pipeline/txt2img.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

static double max_rss_mib(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024.0;
}

static ap_tensor *rnd(ap_ctx *c, int ndim, const int64_t *shape, unsigned seed) {
    ap_tensor *t = ap_tensor_new(c, AP_F32, ndim, shape);
    float *d = ap_tensor_data(t);
    uint32_t s = seed * 2654435761u + 1;
    for (int64_t i = 0; i < ap_tensor_numel(t); i++) {
        s = s * 1664525u + 1013904223u;
        d[i] = ((float)(s >> 8) / 16777216.0f - 0.5f) * 2.0f;
    }
    return t;
}

static void die(ap_ctx *c, const char *what) {
    fprintf(stderr, "bench sd: %s: %s\n", what, ap_last_error(c));
    exit(1);
}

int main(int argc, char **argv) {
    int runs = 3, full = 0, compare = 0;
    const char *only = NULL, *json = NULL;
    long long pack_cache = -1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--full")) full = 1;
        else if (!strcmp(argv[i], "--precision") && i + 1 < argc) only = argv[++i];
        else if (!strcmp(argv[i], "--json") && i + 1 < argc) json = argv[++i];
        else if (!strcmp(argv[i], "--pack-cache") && i + 1 < argc) pack_cache = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--pack-compare")) compare = 1;
        else {
            fprintf(stderr,
                    "usage: %s [--runs N] [--full] [--precision f32|bf16] [--json FILE] [--pack-cache BYTES] "
                    "[--pack-compare]\n",
                    argv[0]);
            return 2;
        }
    }
    if (runs < 1 || runs > 50) runs = 3;
    ap_ctx *c = NULL;
    if (ap_ctx_create_checked(&c) != AP_OK) die(c, "context");
    if (pack_cache >= 0) ap_set_pack_cache(c, (size_t)pack_cache);
    double pf = peak_gflops(PEAK_FMA, 1000000), pd = peak_gflops(PEAK_BF16DP, 1000000),
           pa = peak_gflops(PEAK_AMX, 250000);
    double pbf = pa > 0 ? pa : pd;
    printf("bench/sd: SD1.5 random weights (bf16 storage), %d threads, median of %d\n", ap_get_num_threads(c), runs);
    printf("peaks now: f32 FMA %.0f GFLOP/s, bf16 %.0f GFLOP/s (%s)\n\n", pf, pbf, pa > 0 ? "AMX" : "AVX512-BF16 dot");

    ap_sd_config cfg;
    ap_sd_model *m = NULL;
    double t0 = bench_now();
    if (ap_sd_preset(c, "sd15", &cfg) != AP_OK || ap_sd_create(c, &cfg, AP_BF16, &m) != AP_OK ||
        ap_sd_init_random(c, m, 1) != AP_OK)
        die(c, "model");
    printf("model made in %.1f s: unet %lld, vae %lld, text %lld parameters\n\n", bench_now() - t0,
           (long long)ap_params_count(&m->unet->params), (long long)ap_params_count(&m->vae->params),
           (long long)ap_params_count(&m->text->params));
    ap_set_grad_enabled(c, 0);

    ap_tensor *x = rnd(c, 4, (int64_t[]){2, 64, 64, 4}, 1), *ctx = rnd(c, 3, (int64_t[]){2, 77, 768}, 2);
    ap_tensor *t = ap_tensor_new(c, AP_F32, 1, (int64_t[]){2});
    ((float *)ap_tensor_data(t))[0] = ((float *)ap_tensor_data(t))[1] = 501.0f;
    ap_tensor *z = rnd(c, 4, (int64_t[]){1, 64, 64, 4}, 3);
    if (compare) {
        ap_set_precision(c, only && !strcmp(only, "f32") ? AP_PREC_F32 : AP_PREC_BF16);
        double tc[50], tn[50];
        for (int k = 0; k < 2; k++) /* every weight cached (after a warm-up call that packs them), then none */
            for (int r = k ? 0 : -1; r < runs; r++) {
                ap_set_pack_cache(c, k ? 0 : SIZE_MAX);
                double a = bench_now();
                ap_tensor *e = ap_unet_forward(c, m->unet, x, t, ctx);
                double b = bench_now();
                if (!e) die(c, "unet");
                ap_tensor_release(e);
                if (r >= 0) (k ? tn : tc)[r] = b - a;
            }
        double mc = bench_median(tc, runs), mn = bench_median(tn, runs);
        printf("UNet call, CFG batch 2 @64x64, %s: every weight cached %.3f s (fastest %.3f), none cached %.3f s "
               "(fastest %.3f): repacking costs %+.3f s per call (%+.1f%%)\n",
               ap_get_precision(c) == AP_PREC_BF16 ? "bf16" : "f32", mc, tc[0], mn, tn[0], mn - mc,
               100.0 * (mn - mc) / mc);
        printf("max RSS %.0f MiB\n", max_rss_mib());
        return 0;
    }
    FILE *js = json ? fopen(json, "w") : NULL;
    if (js) fprintf(js, "{\"peak_f32\": %.1f, \"peak_bf16\": %.1f, \"results\": [", pf, pbf);
    for (int p = 0; p < 2; p++) {
        const char *pn = p ? "bf16" : "f32";
        if (only && strcmp(only, pn)) continue;
        ap_set_precision(c, p ? AP_PREC_BF16 : AP_PREC_F32);
        double tu[50], tv[50], tt[50], fl_u = 0, fl_v = 0;
        size_t mem_u = 0, mem_v = 0;
        for (int r = -1; r < runs; r++) { /* one warm-up: packs the weights */
            ap_mem_reset_peak(c);
            size_t base = ap_mem_in_use(c);
            ap_flops_reset(c);
            double a = bench_now();
            ap_tensor *e = ap_unet_forward(c, m->unet, x, t, ctx);
            double b = bench_now();
            if (!e) die(c, "unet");
            ap_tensor_release(e);
            fl_u = ap_flops(c);
            mem_u = ap_mem_peak(c) - base;
            ap_mem_reset_peak(c);
            base = ap_mem_in_use(c);
            ap_flops_reset(c);
            double d0 = bench_now();
            ap_tensor *img = ap_vae_decode(c, m->vae, z);
            double d1 = bench_now();
            if (!img) die(c, "vae");
            ap_tensor_release(img);
            fl_v = ap_flops(c);
            mem_v = ap_mem_peak(c) - base;
            double e0 = bench_now();
            const char *prompts[2] = {"", "an astronaut riding a horse on the moon"};
            ap_tensor *emb = ap_encode_prompts(c, m, 2, prompts);
            double e1 = bench_now();
            if (!emb) die(c, "text");
            ap_tensor_release(emb);
            if (r >= 0) tu[r] = b - a, tv[r] = d1 - d0, tt[r] = e1 - e0;
        }
        double mu = bench_median(tu, runs), mv = bench_median(tv, runs), mt = bench_median(tt, runs);
        double peak = p ? pbf : pf;
        printf("%-5s UNet call, CFG batch 2 @64x64: %8.3f s  %6.3f TFLOP/s effective (%4.1f%% of peak)  peak memory %.0f MiB\n",
               pn, mu, fl_u / mu / 1e12, 100.0 * fl_u / mu / 1e9 / peak, mem_u / 1048576.0);
        printf("%-5s VAE decode 512x512:             %8.3f s  %6.3f TFLOP/s effective (%4.1f%% of peak)  peak memory %.0f MiB\n",
               pn, mv, fl_v / mv / 1e12, 100.0 * fl_v / mv / 1e9 / peak, mem_v / 1048576.0);
        printf("%-5s text encoder, 2 prompts:        %8.3f s\n", pn, mt);
        printf("%-5s packed weight copies cached %.0f MiB (budget %.0f MiB), arena reserved %.0f MiB, max RSS %.0f MiB\n",
               pn, ap_mem_packed(c) / 1048576.0, ap_get_pack_cache(c) / 1048576.0, ap_mem_reserved(c) / 1048576.0,
               max_rss_mib());
        printf("%-5s 512x512 DDIM-50 sample, estimated: %.1f s (50 UNet calls + decode + text)\n", pn,
               50 * mu + mv + mt);
        if (js)
            fprintf(js, "%s\n {\"precision\": \"%s\", \"unet_cfg_s\": %.4f, \"unet_tflops\": %.4f, \"unet_flops\": %.4g, "
                        "\"unet_peak_mib\": %.1f, \"vae_decode_s\": %.4f, \"vae_tflops\": %.4f, \"vae_peak_mib\": %.1f, "
                        "\"text_s\": %.4f, \"sample50_estimated_s\": %.2f}",
                    p && !(only) ? "," : "", pn, mu, fl_u / mu / 1e12, fl_u, mem_u / 1048576.0, mv, fl_v / mv / 1e12,
                    mem_v / 1048576.0, mt, 50 * mu + mv + mt);
        if (full) {
            ap_txt2img_opts o;
            ap_txt2img_defaults(&o);
            o.prompt = "an astronaut riding a horse on the moon";
            ap_tensor *img = NULL;
            ap_mem_reset_peak(c);
            double a = bench_now();
            if (ap_txt2img(c, m, &o, &img) != AP_OK) die(c, "sample");
            double b = bench_now();
            ap_tensor_release(img);
            printf("%-5s 512x512 DDIM-50 sample, measured: %.1f s, peak activation memory %.0f MiB\n", pn, b - a,
                   ap_mem_peak(c) / 1048576.0);
        }
        printf("\n");
    }
    if (js) {
        fprintf(js, "\n]}\n");
        fclose(js);
    }
    ap_tensor_release(x);
    ap_tensor_release(ctx);
    ap_tensor_release(t);
    ap_tensor_release(z);
    ap_sd_free(m);
    ap_ctx_free(c);
    return 0;
}
