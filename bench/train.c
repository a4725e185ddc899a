/* bench/train: one AlignProp training step at SD1.5 size (random weights made
 * in memory, bf16 storage, LoRA rank 4 on the 128 attention projections,
 * brightness reward), for several truncation depths K: the tensor memory peak
 * above the weights (activations, gradients, checkpoints), the process's
 * maximum RSS, and the seconds per training sample beside those of a plain
 * (no-gradient) sample with the same settings.
 *
 * The maximum RSS only grows within a process: to see one configuration's
 * own, run it alone (--ks 1 --no-plain). Beside it: the packed weight copies
 * cached (ap_mem_packed, within --pack-cache BYTES or the default budget) and
 * the arena's reserved bytes (live tensors plus its cache) after the step.
 *
 *   build/bench/train [--size 256] [--sample-steps 4] [--ks 1,2,4] [--precision bf16|f32] [--no-plain]
 *                     [--pack-cache BYTES]
 */
#include "bench.h"

#include "models/sd.h"
#include "pipeline/txt2img.h"
#include "rewards/reward.h"
#include "train/lora.h"
#include "train/sample_grad.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

static void die(ap_ctx *c, const char *what) {
    fprintf(stderr, "bench train: %s: %s\n", what, ap_last_error(c));
    exit(1);
}

static double max_rss_mib(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024.0;
}

int main(int argc, char **argv) {
    int size = 256, steps = 4, plain = 1;
    long long pack_cache = -1;
    const char *ks = "1,2,4", *prec = "bf16";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--size") && i + 1 < argc) size = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--sample-steps") && i + 1 < argc) steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--ks") && i + 1 < argc) ks = argv[++i];
        else if (!strcmp(argv[i], "--precision") && i + 1 < argc) prec = argv[++i];
        else if (!strcmp(argv[i], "--no-plain")) plain = 0;
        else if (!strcmp(argv[i], "--pack-cache") && i + 1 < argc) pack_cache = atoll(argv[++i]);
        else {
            fprintf(stderr,
                    "usage: %s [--size 256] [--sample-steps 4] [--ks 1,2,4] [--precision bf16|f32] [--no-plain] "
                    "[--pack-cache BYTES]\n",
                    argv[0]);
            return 2;
        }
    }
    ap_ctx *c = NULL;
    if (ap_ctx_create_checked(&c) != AP_OK) die(c, "context");
    ap_set_precision(c, strcmp(prec, "f32") ? AP_PREC_BF16 : AP_PREC_F32);
    if (pack_cache >= 0) ap_set_pack_cache(c, (size_t)pack_cache);
    ap_sd_config cfg;
    ap_sd_model *m = NULL;
    ap_lora_set *lora = NULL;
    ap_reward_mix *mix = NULL;
    ap_reward_loss loss;
    if (ap_sd_preset(c, "sd15", &cfg) != AP_OK || ap_sd_create(c, &cfg, AP_BF16, &m) != AP_OK ||
        ap_sd_init_random(c, m, 1) != AP_OK || ap_lora_create(c, &cfg.unet, 4, 0, 1, &lora) != AP_OK ||
        ap_lora_attach(c, lora, m->unet) != AP_OK || ap_reward_mix_parse(c, "brightness", NULL, &mix) != AP_OK ||
        ap_reward_loss_parse(c, "maximize", &loss) != AP_OK)
        die(c, "setup");
    /* a nonzero up so that every adapter gets a gradient, as after the first steps */
    ap_tensor *ts[256];
    int n = ap_lora_tensors(lora, ts);
    for (int i = 1; i < n; i += 2) {
        float *u = ap_tensor_data(ts[i]);
        for (int64_t k = 0; k < ap_tensor_numel(ts[i]); k++) u[k] = 1e-3f * (float)((k % 7) - 3);
        ap_tensor_touch(ts[i]);
    }
    size_t weights = ap_mem_in_use(c);
    printf("bench/train: SD1.5 random weights, %dx%d, %d DDIM steps, CFG 7.5, batch 1, %s, %d threads\n", size, size,
           steps, prec, ap_get_num_threads(c));
    printf("tensor memory of the model: %.0f MiB; LoRA: %d tensors\n\n", weights / 1048576.0, n);

    const char *prompts[2] = {"", "a photo of a cat"};
    ap_tensor *ctx = ap_encode_prompts(c, m, 2, prompts);
    if (!ctx) die(c, "text");
    int f = 8;
    /* plain sample (no gradient) for comparison */
    ap_txt2img_opts so;
    ap_txt2img_defaults(&so);
    so.prompt = prompts[1];
    so.steps = steps;
    so.width = so.height = size;
    ap_tensor *img0 = NULL;
    double t0;
    if (plain) {
        t0 = bench_now();
        ap_mem_reset_peak(c);
        if (ap_txt2img(c, m, &so, &img0) != AP_OK) die(c, "plain sample");
        double t_plain = bench_now() - t0;
        printf("plain sample (no gradient):        %7.1f s, tensor peak above weights %7.0f MiB, max RSS %6.0f MiB\n",
               t_plain, (ap_mem_peak(c) - weights) / 1048576.0, max_rss_mib());
        ap_tensor_release(img0);
    }

    for (const char *p = ks; *p;) {
        int K = atoi(p);
        ap_grad_sample_opts go;
        ap_grad_sample_defaults(&go);
        go.steps = steps;
        go.trunc.kind = K >= steps ? AP_TRUNC_FULL : AP_TRUNC_FIXED;
        go.trunc.k = K;
        ap_rng g1, g2;
        ap_rng_init(&g1, 1);
        ap_rng_init(&g2, 2);
        ap_tensor *xT = ap_rng_randn_latents(c, &g1, 1, size / f, size / f, 4), *lat = NULL, *img = NULL;
        for (int i = 0; i < n; i++) ap_tensor_zero_grad(ts[i]);
        ap_mem_reset_peak(c);
        t0 = bench_now();
        if (ap_sample_with_grad(c, m, &go, ctx, xT, &g2, NULL, &lat, &img, NULL) != AP_OK) die(c, "chain");
        ap_tensor *r = ap_reward_mix_forward(c, mix, img, prompts + 1, NULL);
        ap_tensor *l = ap_reward_loss_apply(c, &loss, r);
        if (!l || ap_backward(c, l, NULL) != AP_OK) die(c, "backward");
        double t = bench_now() - t0;
        printf("training step, %-8s K = %-3d      %7.1f s, tensor peak above weights %7.0f MiB, max RSS %6.0f MiB\n",
               K >= steps ? "full," : "fixed:", K, t, (ap_mem_peak(c) - weights) / 1048576.0, max_rss_mib());
        printf("  packed copies cached %.0f MiB, arena reserved %.0f MiB (in use %.0f MiB)\n",
               ap_mem_packed(c) / 1048576.0, ap_mem_reserved(c) / 1048576.0, ap_mem_in_use(c) / 1048576.0);
        ap_tensor *rel[] = {xT, lat, img, r, l};
        for (int i = 0; i < 5; i++) ap_tensor_release(rel[i]);
        while (*p && *p != ',') p++;
        if (*p == ',') p++;
    }
    ap_tensor_release(ctx);
    ap_reward_mix_free(mix);
    ap_lora_free(lora);
    ap_sd_free(m);
    ap_ctx_free(c);
    return 0;
}
