/* alignprop demo: until the shipped demo model exists (a later issue), the
 * most complete job there is, end to end: a tiny Stable Diffusion model made
 * on the spot (random weights), written in both layouts, loaded back, and
 * sampled with classifier-free guidance into a PNG grid. It says so. */
#include "io/image.h"
#include "models/sd.h"
#include "pipeline/txt2img.h"
#include "progress.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static void on_progress(void *u, int done, int total) { ap_progress_update(u, done, total, NULL); }

int ap_cli_demo(int argc, char **argv) {
    const char *out = "runs/demo";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-o") && i + 1 < argc)
            out = argv[++i];
        else {
            fprintf(stderr, "usage: alignprop demo [-o DIR]   (default runs/demo)\n");
            return 2;
        }
    }
    ap_ctx *c = NULL;
    if (ap_ctx_create_checked(&c) != AP_OK) {
        fprintf(stderr, "alignprop demo: %s\n", c ? ap_last_error(c) : "out of memory");
        ap_ctx_free(c);
        return 1;
    }
    printf("alignprop %s demo\n", ap_version_string());
    printf("NOTE: the shipped demo model and the AlignProp trainer do not exist yet. This demo runs the most\n"
           "complete job there is: a tiny SD1.x-architecture model with random weights, made now, written as a\n"
           "diffusers folder and a single file, loaded back, and sampled (DDIM, classifier-free guidance).\n"
           "Its images are noise-like: the weights are random.\n\n");
    printf("threads %d, precision %s, bf16 hardware %s\n", ap_get_num_threads(c),
           ap_get_precision(c) == AP_PREC_BF16 ? "bf16" : "f32", ap_cpu_has_bf16() ? "yes" : "no");
    char model_dir[4096], ldm[4096], png[4096];
    snprintf(model_dir, sizeof model_dir, "%s/model", out);
    snprintf(ldm, sizeof ldm, "%s/model/model.safetensors", out);
    snprintf(png, sizeof png, "%s/samples.png", out);
    mkdir("runs", 0755);
    mkdir(out, 0755);
    double t0 = ap_now();
    ap_sd_config cfg;
    ap_sd_model *m = NULL, *loaded = NULL;
    ap_tensor *img = NULL;
    int rc = 1;
    if (ap_sd_preset(c, "tiny", &cfg) != AP_OK || ap_sd_create(c, &cfg, AP_F32, &m) != AP_OK ||
        ap_sd_init_random(c, m, 42) != AP_OK || ap_sd_save_diffusers(c, m, model_dir) != AP_OK ||
        ap_sd_save_ldm(c, m, ldm) != AP_OK || ap_sd_load(c, ldm, AP_BF16, &loaded) != AP_OK)
        goto done;
    printf("model: %s (diffusers folder) and %s, %lld parameters, made and reloaded in %.1f s\n", model_dir, ldm,
           (long long)(ap_params_count(&m->unet->params) + ap_params_count(&m->vae->params) +
                       ap_params_count(&m->text->params)),
           ap_now() - t0);
    ap_txt2img_opts o;
    ap_txt2img_defaults(&o);
    o.prompt = "two red circles and a blue square";
    o.steps = 20;
    o.width = o.height = 64;
    o.batch = 4;
    o.seed = 1;
    ap_progress bar;
    ap_progress_begin(&bar, "sampling");
    o.progress = on_progress;
    o.progress_user = &bar;
    double t1 = ap_now();
    size_t base = ap_mem_in_use(c);
    ap_mem_reset_peak(c);
    if (ap_txt2img(c, loaded, &o, &img) != AP_OK) goto done;
    ap_progress_end(&bar);
    const char *keys[] = {"prompt", "parameters"}, *vals[] = {o.prompt, "alignprop demo: tiny random model, DDIM 20 steps, CFG 7.5, seed 1"};
    if (ap_png_write_grid(c, png, img, 2, 2, keys, vals) != AP_OK) goto done;
    printf("sampled 4 images 64x64 (20 DDIM steps, CFG 7.5) in %.1f s, activation peak %.1f MiB\n", ap_now() - t1,
           (ap_mem_peak(c) - base) / 1048576.0);
    printf("wrote %s\n", png);
    rc = 0;
done:
    if (rc) fprintf(stderr, "alignprop demo: %s\n", ap_last_error(c));
    ap_tensor_release(img);
    ap_sd_free(m);
    ap_sd_free(loaded);
    ap_ctx_free(c);
    return rc;
}
