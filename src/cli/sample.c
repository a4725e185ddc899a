/* alignprop sample: text to image. */
#include "io/image.h"
#include "models/lora_file.h"
#include "pipeline/txt2img.h"
#include "progress.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int ap_cli_parse_dtype(const char *s, ap_dtype *out);

static int usage(void) {
    fprintf(stderr,
            "usage: alignprop sample --model PATH --prompt TEXT -o OUT.png [options]\n"
            "  --negative TEXT        negative prompt (default empty)\n"
            "  --steps N              sampling steps (50)\n"
            "  --cfg S                classifier-free guidance scale (7.5; 1 disables)\n"
            "  --eta E                DDIM eta (0)\n"
            "  --sampler NAME         ddim | euler_a | dpmpp_2m (ddim)\n"
            "  --seed N               seed of the initial noise (0), as torch.manual_seed\n"
            "  --width W --height H   image size (512 x 512)\n"
            "  --batch N              images (1); written as one grid, or numbered files with --separate\n"
            "  --precision P          f32 | bf16 (default: AP_PRECISION or f32)\n"
            "  --weights-dtype D      dtype frozen weights are held in: bf16 (default) | f32 | f16\n"
            "  --lora FILE[:SCALE]    merge a LoRA (kohya, diffusers or peft keys) with a strength (1); repeatable\n"
            "  --dump DIR             write token ids, text embeddings, latents per step and the image\n"
            "                         as safetensors files (NCHW, to compare with diffusers)\n");
    return 2;
}

typedef struct {
    ap_progress bar;
} prog_state;

static void on_progress(void *u, int done, int total) { ap_progress_update(&((prog_state *)u)->bar, done, total, NULL); }

int ap_cli_sample(int argc, char **argv) {
    ap_txt2img_opts o;
    ap_txt2img_defaults(&o);
    const char *model = NULL, *out = NULL, *precision = NULL;
    int separate = 0, n_lora = 0;
    const char *loras[16];
    ap_dtype wdt = AP_BF16;
    long v;
    double d;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--separate")) { separate = 1; continue; }
        if (!val || a[0] != '-') {
            fprintf(stderr, "alignprop sample: unknown or incomplete option '%s'\n", a);
            return usage();
        }
        i++;
        if (!strcmp(a, "--model")) model = val;
        else if (!strcmp(a, "--prompt")) o.prompt = val;
        else if (!strcmp(a, "--negative")) o.negative = val;
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) out = val;
        else if (!strcmp(a, "--dump")) o.dump_dir = val;
        else if (!strcmp(a, "--lora")) {
            if (n_lora == 16) { fprintf(stderr, "alignprop sample: at most 16 --lora files\n"); return 2; }
            loras[n_lora++] = val;
        }
        else if (!strcmp(a, "--precision")) precision = val;
        else if (!strcmp(a, "--steps")) { if (ap_cli_int("sample", a, val, 1, 1000, &v)) return 2; o.steps = (int)v; }
        else if (!strcmp(a, "--width")) { if (ap_cli_int("sample", a, val, 8, 8192, &v)) return 2; o.width = (int)v; }
        else if (!strcmp(a, "--height")) { if (ap_cli_int("sample", a, val, 8, 8192, &v)) return 2; o.height = (int)v; }
        else if (!strcmp(a, "--batch")) { if (ap_cli_int("sample", a, val, 1, 256, &v)) return 2; o.batch = (int)v; }
        else if (!strcmp(a, "--seed")) {
            char *end;
            o.seed = strtoull(val, &end, 10);
            if (!*val || *end || val[0] == '-') { fprintf(stderr, "alignprop sample: --seed %s: expected a non-negative integer\n", val); return 2; }
        }
        else if (!strcmp(a, "--cfg")) { if (ap_cli_num("sample", a, val, 0, 100, &d)) return 2; o.cfg = (float)d; }
        else if (!strcmp(a, "--eta")) { if (ap_cli_num("sample", a, val, 0, 10, &d)) return 2; o.eta = (float)d; }
        else if (!strcmp(a, "--sampler")) {
            int k = ap_sampler_parse(val);
            if (k < 0) { fprintf(stderr, "alignprop sample: --sampler %s: expected ddim, euler_a or dpmpp_2m\n", val); return 2; }
            o.sampler = (ap_sampler_kind)k;
        }
        else if (!strcmp(a, "--weights-dtype")) {
            if (ap_cli_parse_dtype(val, &wdt)) { fprintf(stderr, "alignprop sample: --weights-dtype %s: expected bf16, f32 or f16\n", val); return 2; }
        }
        else { fprintf(stderr, "alignprop sample: unknown option '%s'\n", a); return usage(); }
    }
    if (!model || !o.prompt || !out) {
        fprintf(stderr, "alignprop sample: --model, --prompt and -o are required\n");
        return usage();
    }
    ap_ctx *c = NULL;
    if (ap_ctx_create_checked(&c) != AP_OK) {
        fprintf(stderr, "alignprop sample: %s\n", ap_last_error(c));
        ap_ctx_free(c);
        return 2;
    }
    if (precision) {
        if (!strcmp(precision, "f32")) ap_set_precision(c, AP_PREC_F32);
        else if (!strcmp(precision, "bf16")) ap_set_precision(c, AP_PREC_BF16);
        else { fprintf(stderr, "alignprop sample: --precision %s: expected f32 or bf16\n", precision); ap_ctx_free(c); return 2; }
    }
    ap_sd_model *m = NULL;
    double t0 = ap_now();
    if (ap_sd_load(c, model, wdt, &m) != AP_OK) {
        fprintf(stderr, "alignprop sample: %s\n", ap_last_error(c));
        ap_ctx_free(c);
        return 1;
    }
    for (int i = 0; i < n_lora; i++) {
        ap_lora_merge_info li;
        if (ap_lora_merge_spec(c, m, loras[i], &li) != AP_OK) {
            fprintf(stderr, "alignprop sample: %s\n", ap_last_error(c));
            ap_sd_free(m);
            ap_ctx_free(c);
            return 1;
        }
        fprintf(stderr, "merged %s (%s keys): %d modules, strength %g%s\n", loras[i], li.format, li.modules,
                li.strength, li.unused_keys ? " (some LoRA keys matched no module)" : "");
    }
    double t1 = ap_now();
    size_t weights = ap_mem_in_use(c); /* the model's tensors; what sampling adds is activations */
    ap_mem_reset_peak(c);
    prog_state ps;
    ap_progress_begin(&ps.bar, "sampling");
    o.progress = on_progress;
    o.progress_user = &ps;
    o.release_models = true; /* one image set per run: each stage's weights go when it is done */
    ap_tensor *img = NULL;
    ap_status st = ap_txt2img(c, m, &o, &img);
    ap_progress_end(&ps.bar);
    double t2 = ap_now();
    char params[1024];
    snprintf(params, sizeof params,
             "Negative prompt: %s\nSteps: %d, Sampler: %s, CFG scale: %g, Eta: %g, Seed: %llu, Size: %dx%d, "
             "Precision: %s, Model: %s, Generator: alignprop %s",
             o.negative ? o.negative : "", o.steps, ap_sampler_name(o.sampler), o.cfg, o.eta,
             (unsigned long long)o.seed, o.width, o.height, ap_get_precision(c) == AP_PREC_BF16 ? "bf16" : "f32", model,
             ap_version_string());
    const char *keys[] = {"prompt", "parameters"}, *vals[] = {o.prompt, params};
    if (st == AP_OK) {
        if (!separate || o.batch == 1) {
            st = ap_png_write_grid(c, out, img, 0, 2, keys, vals);
        } else {
            for (int i = 0; i < o.batch && st == AP_OK; i++) {
                char p[4096];
                const char *dot = strrchr(out, '.');
                int stem = dot ? (int)(dot - out) : (int)strlen(out);
                snprintf(p, sizeof p, "%.*s-%d%s", stem, out, i, dot ? dot : ".png");
                int64_t H = ap_tensor_dim(img, 1), W = ap_tensor_dim(img, 2);
                ap_tensor *one = ap_tensor_from_data(c, AP_F32, 4, (int64_t[]){1, H, W, 3},
                                                     (float *)ap_tensor_data(img) + (size_t)i * H * W * 3);
                st = ap_png_write_grid(c, p, one, 1, 2, keys, vals);
                ap_tensor_release(one);
            }
        }
    }
    if (st != AP_OK) {
        fprintf(stderr, "alignprop sample: %s\n", ap_last_error(c));
    } else {
        /* each stage's weights are freed when it is done (release_models), so the
         * peak of all tensors is the number that matters, not peak - weights */
        printf("wrote %s: %d image%s %dx%d, %d %s steps, load %.1fs, sampling %.1fs, memory: weights %.0f MiB, "
               "peak of all tensors %.1f MiB, packed weights %.0f MiB\n",
               out, o.batch, o.batch > 1 ? "s" : "", o.width, o.height, o.steps, ap_sampler_name(o.sampler), t1 - t0,
               t2 - t1, weights / 1048576.0, ap_mem_peak(c) / 1048576.0, ap_mem_packed(c) / 1048576.0);
    }
    ap_tensor_release(img);
    ap_sd_free(m);
    ap_ctx_free(c);
    return st == AP_OK ? 0 : 1;
}
