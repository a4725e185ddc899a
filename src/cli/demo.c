/* alignprop demo: AlignProp on the shipped model, end to end (docs/demo.md).
 *
 * The shipped model (assets/shapes64, made by `alignprop pretrain`) draws
 * 64x64 pictures of coloured shapes from captions. The demo fine-tunes LoRA
 * adapters on it with the counting reward (`count`, loss |count - 3|) on
 * captions that name no count, then measures, on held-out captions and fixed
 * seeds, how many images hold exactly the target number of shapes, before and
 * after: counted by the reward's own model and, independently, by a
 * model-free reading of the pixels (ap_shapes_analyze). It writes the before
 * and after grids and report.html, and says where they are.
 *
 * Without a shipped model it falls back to the most complete job there is
 * without one (a random tiny model through init, save, load and sampling), and
 * says so. */
#include "io/image.h"
#include "models/sd.h"
#include "pipeline/txt2img.h"
#include "progress.h"
#include "rewards/counter.h"
#include "train/shapes.h"
#include "train/trainer.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void on_progress(void *u, int done, int total) { ap_progress_update(u, done, total, NULL); }

static int demo_random(const char *out) {
    ap_ctx *c = NULL;
    if (ap_ctx_create_checked(&c) != AP_OK) {
        fprintf(stderr, "alignprop demo: %s\n", c ? ap_last_error(c) : "out of memory");
        ap_ctx_free(c);
        return 1;
    }
    printf("alignprop %s demo\n", ap_version_string());
    printf("NOTE: no shipped demo model was found (%s). This demo runs what it can without one: a tiny\n"
           "SD1.x-architecture model with random weights, made now, written as a diffusers folder and a single\n"
           "file, loaded back, and sampled (DDIM, classifier-free guidance). Its images are noise-like.\n\n",
           "see `alignprop demo --help`");
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

static bool is_model_dir(const char *dir) {
    char p[2 * PATH_MAX];
    snprintf(p, sizeof p, "%s/model_index.json", dir);
    return access(p, R_OK) == 0;
}

/* The shipped model: $AP_DEMO_MODEL, else the source tree's assets (a build
 * run in place), else <prefix>/share/alignprop/shapes64 next to the installed
 * binary. Writes what it looked at into tried. */
static const char *find_model(char *buf, size_t n, char *tried, size_t tn) {
    const char *env = getenv("AP_DEMO_MODEL");
    tried[0] = 0;
    if (env && *env) {
        snprintf(tried, tn, "AP_DEMO_MODEL=%s", env);
        if (is_model_dir(env)) return env;
        return NULL;
    }
#ifdef AP_ASSETS_DIR
    snprintf(buf, n, "%s/shapes64", AP_ASSETS_DIR);
    snprintf(tried + strlen(tried), tn - strlen(tried), "%s", buf);
    if (is_model_dir(buf)) return buf;
#endif
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len > 0) {
        exe[len] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) *slash = 0;
        snprintf(buf, n, "%s/../share/alignprop/shapes64", exe);
        snprintf(tried + strlen(tried), tn - strlen(tried), "%s%s", tried[0] ? ", " : "", buf);
        if (is_model_dir(buf)) return buf;
    }
    return NULL;
}

typedef struct {
    int images, hit_model, hit_pixels;
    double mean_count; /* the counter's expected count */
    double mean_loss;  /* mean |count - target|: the training loss on these images */
} count_stats;

/* What the trainer's evaluation hook fills: the counts of the images of the
 * evaluation before training (step 0) and at its end, and their grids. */
typedef struct {
    ap_counter *counter;
    int target, steps, height, width, per_prompt;
    const char *png[2]; /* before.png, after.png */
    count_stats s[2];
    bool have[2];
} demo_eval;

/* The trainer's evaluation images (every held-out caption with seeds
 * 0..per_prompt-1, sampled once with the adapters of that step): counted two
 * ways, by the reward's own model (its most likely count) and by a
 * model-free reading of the pixels, and written as a grid. */
static ap_status on_eval(void *u, ap_ctx *c, int step, const float *images, int n) {
    demo_eval *d = u;
    int k = step == 0 ? 0 : step == d->steps ? 1 : -1;
    if (k < 0 || n <= 0) return AP_OK;
    count_stats *s = &d->s[k];
    memset(s, 0, sizeof *s);
    const int64_t per = (int64_t)d->height * d->width * 3;
    enum { CHUNK = 64 }; /* images per pass of the counting model */
    for (int i0 = 0; i0 < n && ap_last_status(c) == AP_OK; i0 += CHUNK) {
        int m = n - i0 < CHUNK ? n - i0 : CHUNK;
        ap_tensor *x = ap_tensor_from_data(c, AP_F32, 4, (int64_t[]){m, d->height, d->width, 3}, images + i0 * per);
        ap_tensor *logits = x ? ap_counter_logits(c, d->counter, x) : NULL;
        ap_tensor *ex = logits ? ap_counter_expected(c, d->counter, logits, NULL) : NULL;
        if (ex) {
            const float *lg = ap_tensor_cdata(logits), *e = ap_tensor_cdata(ex);
            for (int i = 0; i < m; i++) {
                int best = 0;
                for (int j = 1; j < AP_COUNTER_CLASSES; j++)
                    if (lg[i * AP_COUNTER_CLASSES + j] > lg[i * AP_COUNTER_CLASSES + best]) best = j;
                s->hit_model += best == d->target;
                s->mean_count += e[i];
                s->mean_loss += fabs(e[i] - d->target);
                s->hit_pixels += ap_shapes_analyze(images + (i0 + i) * per, d->height, d->width, NULL) == d->target;
                s->images++;
            }
        }
        ap_tensor_release(x);
        ap_tensor_release(logits);
        ap_tensor_release(ex);
    }
    if (ap_last_status(c) != AP_OK) return ap_last_status(c);
    s->mean_count /= n;
    s->mean_loss /= n;
    const char *keys[] = {"alignprop", "prompts"};
    const char *vals[] = {k ? "demo: after training" : "demo: before training", "builtin:shapes_eval"};
    ap_tensor *all = ap_tensor_from_data(c, AP_F32, 4, (int64_t[]){n, d->height, d->width, 3}, images);
    if (all && ap_png_write_grid(c, d->png[k], all, d->per_prompt, 2, keys, vals) == AP_OK) d->have[k] = true;
    ap_tensor_release(all);
    return ap_last_status(c);
}

static void on_train_progress(void *u, int step, int total, double r) {
    char extra[64];
    snprintf(extra, sizeof extra, "count %.3g", r);
    ap_progress_update(u, step, total, extra);
}

static int usage(void) {
    fprintf(stderr,
            "usage: alignprop demo [-o DIR] [--model PATH] [--steps N] [--target N] [--eval-per-prompt K]\n"
            "                      [--sample-steps S] [--truncation SPEC] [--lr X] [--batch N] [--cfg X] [--seed N]\n"
            "                      [--count-temperature T]\n"
            "  AlignProp on the shipped shapes model: LoRA adapters trained with the count reward toward\n"
            "  --target shapes (3) for --steps steps (120), on count-free captions naming three groups;\n"
            "  the fraction of held-out images (K seeds per caption, 16) with the target count, before and\n"
            "  after. Output in DIR (runs/demo): before.png, after.png, run/report.html. DDIM steps S (10),\n"
            "  truncation (full), lr (2e-3, cosine decay), batch (4), CFG (3). --model overrides the shipped\n"
            "  model (also AP_DEMO_MODEL). --seed: the training's seed (0); the held-out images' seeds are fixed.\n"
            "  --count-temperature: the count reward's gradient temperature (docs/rewards.md).\n"
            "  docs/demo.md.\n");
    return 2;
}

int ap_cli_demo(int argc, char **argv) {
    const char *out = "runs/demo", *model = NULL;
    /* defaults: docs/demo.md, "What the experiments showed" */
    const char *trunc = "full";
    long steps = 120, target = 3, per_prompt = 16, sample_steps = 10, batch = 4;
    long seed = 0;
    double temp = 0; /* the count reward's default */
    double lr = 2e-3, cfg = 3.0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return usage();
        if (!v) {
            fprintf(stderr, "alignprop demo: %s needs a value\n", a);
            return usage();
        }
        i++;
        if (!strcmp(a, "-o") || !strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--steps")) { if (ap_cli_int("demo", a, v, 1, 100000, &steps)) return 2; }
        else if (!strcmp(a, "--target")) { if (ap_cli_int("demo", a, v, 1, 5, &target)) return 2; }
        else if (!strcmp(a, "--sample-steps")) { if (ap_cli_int("demo", a, v, 1, 1000, &sample_steps)) return 2; }
        else if (!strcmp(a, "--eval-per-prompt")) { if (ap_cli_int("demo", a, v, 1, 64, &per_prompt)) return 2; }
        else if (!strcmp(a, "--batch")) { if (ap_cli_int("demo", a, v, 1, 256, &batch)) return 2; }
        else if (!strcmp(a, "--lr")) { if (ap_cli_num("demo", a, v, 0, 1, &lr)) return 2; }
        else if (!strcmp(a, "--cfg")) { if (ap_cli_num("demo", a, v, 0, 100, &cfg)) return 2; }
        else if (!strcmp(a, "--seed")) { if (ap_cli_int("demo", a, v, 0, LONG_MAX, &seed)) return 2; }
        else if (!strcmp(a, "--count-temperature")) { if (ap_cli_num("demo", a, v, 1e-3, 1e3, &temp)) return 2; }
        else if (!strcmp(a, "--truncation")) trunc = v;
        else {
            fprintf(stderr, "alignprop demo: unknown option %s\n", a);
            return usage();
        }
    }
    char found[PATH_MAX + 64], tried[3 * PATH_MAX];
    if (!model) model = find_model(found, sizeof found, tried, sizeof tried);
    else snprintf(tried, sizeof tried, "%s", model);
    if (!model || !is_model_dir(model)) {
        if (argc > 1 && strcmp(argv[1], "-o")) { /* asked for something the fallback cannot do */
            fprintf(stderr, "alignprop demo: no model folder (model_index.json) at %s\n", tried);
            return 1;
        }
        printf("alignprop demo: no shipped demo model found (looked at %s)\n", tried[0] ? tried : "nothing");
        return demo_random(out);
    }

    ap_ctx *c = NULL;
    if (ap_ctx_create_checked(&c) != AP_OK) {
        fprintf(stderr, "alignprop demo: %s\n", c ? ap_last_error(c) : "out of memory");
        ap_ctx_free(c);
        return 1;
    }
    printf("alignprop %s demo: AlignProp on the shipped shapes model\n", ap_version_string());
    const char *wp = getenv("OMP_WAIT_POLICY"), *spin = getenv("GOMP_SPINCOUNT");
    printf("model %s; %d threads (waiting: %s%s), precision %s\n", model, ap_get_num_threads(c),
           wp ? wp : spin ? "spin " : "default", wp ? "" : spin ? spin : "",
           ap_get_precision(c) == AP_PREC_BF16 ? "bf16" : "f32");
    if (mkdir(out, 0755) != 0 && errno != EEXIST) {
        char parent[PATH_MAX];
        snprintf(parent, sizeof parent, "%s", out);
        char *sl = strrchr(parent, '/');
        if (sl) *sl = 0, mkdir(parent, 0755);
        mkdir(out, 0755);
    }
    char run[PATH_MAX + 16], before_png[PATH_MAX + 16], after_png[PATH_MAX + 16], lora[PATH_MAX + 48], tgt[32];
    snprintf(run, sizeof run, "%s/run", out);
    snprintf(before_png, sizeof before_png, "%s/before.png", out);
    snprintf(after_png, sizeof after_png, "%s/after.png", out);
    snprintf(lora, sizeof lora, "%s/lora.safetensors", run);
    snprintf(tgt, sizeof tgt, "target:%ld", target);

    ap_train_opts t;
    ap_train_defaults(&t);
    t.model = model;
    t.out_dir = run;
    t.reward = "count";
    t.loss = tgt;
    t.prompts = "builtin:shapes";
    t.eval_prompts = "builtin:shapes_eval";
    t.eval_per_prompt = (int)per_prompt;
    t.eval_every = 0; /* before and at the end */
    t.steps = (int)steps;
    t.batch = (int)batch;
    t.sample_steps = (int)sample_steps;
    t.cfg = (float)cfg;
    t.width = t.height = 64;
    t.lr = lr;
    t.lr_schedule.kind = AP_LR_COSINE;
    if (ap_trunc_parse(c, trunc, &t.trunc) != AP_OK) {
        fprintf(stderr, "alignprop demo: --truncation: %s\n", ap_last_error(c));
        ap_ctx_free(c);
        return 2;
    }
    t.loss_coeff = 1.0;
    t.weights_dtype = AP_F32;
    t.save_every = 0;
    t.seed = (uint64_t)seed;
    t.count_temperature = (float)temp;
    printf("training: reward count, loss |count - %ld|, %ld steps of %d images (DDIM %d steps, CFG %.1f, "
           "truncation %s, lr %g cosine), prompts builtin:shapes\n",
           target, steps, t.batch, t.sample_steps, t.cfg, trunc, t.lr);

    demo_eval d = {.target = (int)target, .steps = (int)steps, .height = t.height, .width = t.width,
                   .per_prompt = t.eval_per_prompt, .png = {before_png, after_png}};
    int rc = 1;
    double t0 = ap_now();
    if (ap_counter_load_default(c, NULL, &d.counter) != AP_OK) goto done;
    t.on_eval = on_eval;
    t.on_eval_user = &d;

    ap_progress bar;
    ap_progress_begin(&bar, "AlignProp");
    t.progress = on_train_progress;
    t.progress_user = &bar;
    t.stop = &ap_cli_stop_signal;
    ap_cli_stop stop;
    ap_cli_stop_begin(&stop);
    double t1 = ap_now();
    ap_status st = ap_train(c, &t);
    double train_s = ap_now() - t1;
    ap_cli_stop_end(&stop);
    ap_progress_end(&bar);
    if (st != AP_OK) goto done;
    if (ap_cli_stop_signal) {
        fprintf(stderr, "alignprop demo: interrupted; the run so far is in %s\n", run);
        rc = 128 + (int)ap_cli_stop_signal;
        goto done;
    }
    if (!d.have[0] || !d.have[1]) {
        fprintf(stderr, "alignprop demo: the training ran no evaluation before and after (a bug)\n");
        goto done;
    }
    const count_stats *before = &d.s[0], *after = &d.s[1];
    printf("\n%d held-out images (%d captions x %d seeds), target %ld shapes:\n", before->images,
           before->images / t.eval_per_prompt, t.eval_per_prompt, target);
    printf("                                   before    after\n");
    printf("  mean count (reward model)        %6.2f   %6.2f\n", before->mean_count, after->mean_count);
    printf("  exactly %ld shapes (reward model)  %5.1f%%   %5.1f%%\n", target,
           100.0 * before->hit_model / before->images, 100.0 * after->hit_model / after->images);
    printf("  exactly %ld shapes (pixel count)   %5.1f%%   %5.1f%%\n", target,
           100.0 * before->hit_pixels / before->images, 100.0 * after->hit_pixels / after->images);
    printf("  loss mean |count - %ld|            %6.3f   %6.3f\n", target, before->mean_loss, after->mean_loss);
    printf("\ntrained %ld steps and evaluated before and after in %.0f s (%.0f s in all)\n", steps, train_s,
           ap_now() - t0);
    printf("wrote %s and %s (a row per caption), and %s/report.html (curves, grids); adapters %s\n", before_png,
           after_png, run, lora);
    rc = 0;
done:
    if (rc == 1) fprintf(stderr, "alignprop demo: %s\n", ap_last_error(c));
    ap_counter_free(d.counter);
    ap_ctx_free(c);
    return rc;
}
