/* alignprop eval: the reward of a model (with LoRA adapters merged) on a
 * prompt set, sampled with fixed seeds. */
#include "io/image.h"
#include "models/lora_file.h"
#include "pipeline/txt2img.h"
#include "progress.h"
#include "rewards/reward.h"
#include "train/prompts.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int ap_cli_parse_dtype(const char *s, ap_dtype *out);

static int usage(void) {
    fprintf(stderr,
            "usage: alignprop eval --model PATH --reward SPEC --prompts SRC [options]\n"
            "  --lora FILE[:SCALE]    merge adapters first (repeatable)\n"
            "  --models-dir DIR       reward models' weights (AP_MODELS_DIR, else ~/.local/share/alignprop/models)\n"
            "  --reward-resize M      CLIP rewards' resize: bilinear (default) | bilinear-noaa | bicubic | bicubic-noaa\n"
            "  --per-prompt N         images per prompt, seeds 0..N-1 (1)\n"
            "  --steps N --cfg S --width W --height H --negative TEXT   sampling (50, 7.5, 512, 512, \"\")\n"
            "  --weights-dtype D      bf16 (default) | f32 | f16\n"
            "  --grid OUT.png         also write the images as one grid\n");
    return 2;
}

int ap_cli_eval(int argc, char **argv) {
    const char *model = NULL, *reward = NULL, *psrc = NULL, *grid = NULL, *loras[16];
    const char *models_dir = NULL, *resize = NULL;
    int n_lora = 0, per = 1;
    ap_dtype wdt = AP_BF16;
    ap_txt2img_opts o;
    ap_txt2img_defaults(&o);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!val) {
            fprintf(stderr, "alignprop eval: incomplete option '%s'\n", a);
            return usage();
        }
        i++;
        if (!strcmp(a, "--model")) model = val;
        else if (!strcmp(a, "--reward")) reward = val;
        else if (!strcmp(a, "--prompts")) psrc = val;
        else if (!strcmp(a, "--grid")) grid = val;
        else if (!strcmp(a, "--models-dir")) models_dir = val;
        else if (!strcmp(a, "--reward-resize")) resize = val;
        else if (!strcmp(a, "--negative")) o.negative = val;
        else if (!strcmp(a, "--lora") && n_lora < 16) loras[n_lora++] = val;
        else if (!strcmp(a, "--weights-dtype")) {
            if (ap_cli_parse_dtype(val, &wdt)) { fprintf(stderr, "alignprop eval: --weights-dtype %s: expected bf16, f32 or f16\n", val); return 2; }
        } else if (!strcmp(a, "--per-prompt") || !strcmp(a, "--steps") || !strcmp(a, "--width") || !strcmp(a, "--height")) {
            long v;
            if (ap_cli_int("eval", a, val, 1, 8192, &v)) return 2;
            if (!strcmp(a, "--per-prompt")) per = (int)v;
            else if (!strcmp(a, "--steps")) o.steps = (int)v;
            else if (!strcmp(a, "--width")) o.width = (int)v;
            else o.height = (int)v;
        } else if (!strcmp(a, "--cfg")) {
            double v;
            if (ap_cli_num("eval", a, val, 0, 100, &v)) return 2;
            o.cfg = (float)v;
        } else { fprintf(stderr, "alignprop eval: unknown option '%s'\n", a); return usage(); }
    }
    if (!model || !reward || !psrc) {
        fprintf(stderr, "alignprop eval: --model, --reward and --prompts are required\n");
        return usage();
    }
    ap_ctx *c = ap_ctx_create();
    ap_sd_model *m = NULL;
    ap_prompts ps = {0};
    ap_reward_mix *mix = NULL;
    ap_tensor *all = NULL;
    int rc = 1;
    ap_reward_opts ropts = {.models_dir = models_dir, .resize = resize, .weights_dtype = wdt};
    if (ap_sd_load(c, model, wdt, &m) != AP_OK || ap_prompts_load(c, psrc, &ps) != AP_OK ||
        ap_reward_mix_parse(c, reward, &ropts, &mix) != AP_OK)
        goto done;
    for (int i = 0; i < n_lora; i++) {
        ap_lora_merge_info li;
        if (ap_lora_merge_spec(c, m, loras[i], &li) != AP_OK) goto done;
    }
    int total = ps.n * per;
    double sum = 0, sum2 = 0;
    /* rewards' extra metrics (e.g. jpeg_kb, libjpeg's exact size), reported beside the reward */
    const char *mnames[AP_REWARD_METRICS_MAX];
    double mval[AP_REWARD_METRICS_MAX], msum[AP_REWARD_METRICS_MAX] = {0}, msum2[AP_REWARD_METRICS_MAX] = {0};
    int nm = 0;
    ap_progress bar;
    ap_progress_begin(&bar, "evaluating");
    ap_set_grad_enabled(c, 0);
    for (int p = 0; p < ps.n; p++) {
        double ps_sum = 0, ps_m[AP_REWARD_METRICS_MAX] = {0};
        for (int k = 0; k < per; k++) {
            o.prompt = ps.text[p];
            o.seed = (uint64_t)k;
            ap_tensor *img = NULL;
            if (ap_txt2img(c, m, &o, &img) != AP_OK) goto done;
            const char *pp[1] = {ps.text[p]};
            ap_tensor *r = ap_reward_mix_forward(c, mix, img, pp, NULL);
            if (!r) {
                ap_tensor_release(img);
                goto done;
            }
            double v = ((const float *)ap_tensor_cdata(r))[0];
            ap_tensor_release(r);
            sum += v, sum2 += v * v, ps_sum += v;
            nm = ap_reward_mix_metrics(c, mix, img, mnames, mval);
            if (nm < 0) {
                ap_tensor_release(img);
                goto done;
            }
            for (int j = 0; j < nm; j++) msum[j] += mval[j], msum2[j] += mval[j] * mval[j], ps_m[j] += mval[j];
            if (grid) {
                ap_tensor *cat = all ? ap_concat_batch(c, all, img) : ap_tensor_retain(img);
                ap_tensor_release(all);
                all = cat;
            }
            ap_tensor_release(img);
            ap_progress_update(&bar, p * per + k + 1, total, NULL);
        }
        printf("%8.5f  ", ps_sum / per);
        for (int j = 0; j < nm; j++) printf("%s=%.4g  ", mnames[j], ps_m[j] / per);
        printf("%s\n", ps.text[p]);
    }
    ap_progress_end(&bar);
    double mean = sum / total, sd = total > 1 ? sqrt(fmax(0, (sum2 - total * mean * mean) / (total - 1))) : 0;
    char spec[256];
    printf("reward %s over %d images (%d prompts x %d seeds): mean %.6g, std %.6g\n",
           ap_reward_mix_str(mix, spec, sizeof spec), total, ps.n, per, mean, sd);
    for (int j = 0; j < nm; j++) {
        double mm = msum[j] / total, ms = total > 1 ? sqrt(fmax(0, (msum2[j] - total * mm * mm) / (total - 1))) : 0;
        printf("  %s: mean %.6g, std %.6g\n", mnames[j], mm, ms);
    }
    if (grid) {
        const char *keys[] = {"prompt"}, *vals[] = {psrc};
        if (ap_png_write_grid(c, grid, all, per, 1, keys, vals) != AP_OK) goto done;
        printf("wrote %s\n", grid);
    }
    rc = 0;
done:
    if (rc) fprintf(stderr, "alignprop eval: %s\n", ap_last_error(c));
    ap_tensor_release(all);
    ap_reward_mix_free(mix);
    ap_prompts_free(&ps);
    ap_sd_free(m);
    ap_ctx_free(c);
    return rc;
}
