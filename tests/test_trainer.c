/* The trainer end to end on the tiny model: a run directory with its config,
 * one log line per step, the adapters and the optimizer state; the reward
 * rises under `maximize brightness`; the same seed gives the same adapters bit
 * for bit; the adapters load back into `sample` through the LoRA merge. */
#include "core/internal.h"
#include "io/json.h"
#include "models/lora_file.h"
#include "test.h"
#include "train/prompts.h"
#include "train/trainer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

static int read_log(const char *path, double *rewards, int max) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[2048];
    int n = 0;
    while (fgets(line, sizeof line, f) && n < max) {
        char err[128];
        ap_json *j = ap_json_parse(line, strlen(line), err, sizeof err);
        double r = 0, gn = -1;
        int64_t step = 0;
        CHECK_MSG(j && ap_json_num(ap_json_get(j, "reward_mean"), &r) && ap_json_num(ap_json_get(j, "grad_norm"), &gn) &&
                      ap_json_int(ap_json_get(j, "step"), 1, 1000000, &step) && step == n + 1 &&
                      ap_json_get(j, "loss") && ap_json_get(j, "seconds") && ap_json_get(j, "peak_memory_mib"),
                  "log line %d: %s", n + 1, line);
        CHECK(gn > 0);
        ap_json_free(j);
        rewards[n++] = r;
    }
    fclose(f);
    return n;
}

static void slurp(const char *path, char **buf, size_t *len) {
    FILE *f = fopen(path, "rb");
    *buf = NULL;
    *len = 0;
    if (!f) return;
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    *buf = malloc(*len + 1);
    if (fread(*buf, 1, *len, f) != *len) *len = 0;
    (*buf)[*len] = 0;
    fclose(f);
}

static volatile sig_atomic_t g_stop;
static void stop_at_3(void *u, int step, int total, double r) {
    (void)u, (void)total, (void)r;
    if (step == 3) g_stop = SIGINT; /* as the CLI's signal handler would */
}

static bool exists(const char *run, const char *rel) {
    char p[600];
    snprintf(p, sizeof p, "%s/%s", run, rel);
    return access(p, F_OK) == 0;
}

static bool same_file(const char *pa, const char *pb) {
    char *a, *b;
    size_t la, lb;
    slurp(pa, &a, &la);
    slurp(pb, &b, &lb);
    bool same = a && b && la > 0 && la == lb && !memcmp(a, b, la);
    free(a);
    free(b);
    return same;
}

/* Checkpoints and resume: an interrupted run (stopped after step 3, with a
 * crashed step_000004.tmp and a step_000005 without DONE left behind) resumed
 * to 6 steps gives the adapters of an uninterrupted 6-step run bit for bit. */
static void test_resume(ap_ctx *c, const char *dir, const char *model) {
    char full[300], part[300], p[400], q[400];
    snprintf(full, sizeof full, "%s/full", dir);
    snprintf(part, sizeof part, "%s/part", dir);
    ap_train_opts o;
    ap_train_defaults(&o);
    o.model = model;
    o.reward = "brightness";
    o.steps = 6;
    o.batch = 2;
    o.sample_steps = 2;
    o.width = o.height = 16;
    o.lr = 3e-2;
    o.loss_coeff = 1.0;
    o.weights_dtype = AP_F32;
    o.seed = 5;
    o.eta = 0.5f; /* draws from the DDIM noise stream too */
    CHECK(ap_trunc_parse(c, "rand:1:2", &o.trunc) == AP_OK);
    o.out_dir = full;
    o.save_every = 0;
    CHECK_MSG(ap_train(c, &o) == AP_OK, "%s", ap_last_error(c));
    CHECK_MSG(exists(full, "checkpoints/step_000006/DONE"), "the last step is checkpointed");
    CHECK(!exists(full, "checkpoints/step_000003"));

    o.out_dir = part;
    o.save_every = 2;
    o.keep_checkpoints = 2;
    o.stop = &g_stop;
    o.progress = stop_at_3;
    CHECK_MSG(ap_train(c, &o) == AP_OK, "%s", ap_last_error(c));
    double r[16];
    snprintf(p, sizeof p, "%s/log.jsonl", part);
    CHECK_MSG(read_log(p, r, 16) == 3, "a stop after step 3 ends the run there");
    CHECK(exists(part, "checkpoints/step_000002/DONE") && exists(part, "checkpoints/step_000003/DONE"));
    /* what a crash mid-write and a killed run past the checkpoint leave behind */
    snprintf(p, sizeof p, "%s/checkpoints/step_000004.tmp", part);
    CHECK(mkdir(p, 0755) == 0);
    snprintf(p, sizeof p, "%s/checkpoints/step_000005", part);
    CHECK(mkdir(p, 0755) == 0);
    snprintf(p, sizeof p, "%s/checkpoints/step_000005/lora.safetensors", part);
    FILE *f = fopen(p, "w");
    CHECK(f && fputs("not a safetensors file", f) >= 0 && fclose(f) == 0);
    snprintf(p, sizeof p, "%s/log.jsonl", part);
    f = fopen(p, "a");
    CHECK(f && fputs("{\"step\": 4, \"reward_mean\": 0}\n", f) >= 0 && fclose(f) == 0);

    /* incompatible settings are refused, naming the field */
    g_stop = 0;
    o.progress = NULL;
    o.resume = true;
    o.batch = 1;
    CHECK_MSG(ap_train(c, &o) != AP_OK && strstr(ap_last_error(c), "batch"), "%s", ap_last_error(c));
    ap_clear_error(c);
    o.batch = 2;
    o.width = 24;
    CHECK(ap_train(c, &o) != AP_OK && strstr(ap_last_error(c), "width"));
    ap_clear_error(c);
    o.width = 16;
    o.accum = 2; /* other chains per step (ranks x accumulation) */
    CHECK_MSG(ap_train(c, &o) != AP_OK && strstr(ap_last_error(c), "1 = 1 chains per step, this run has 1 x 2 = 2"),
              "%s", ap_last_error(c));
    ap_clear_error(c);
    o.accum = 1;
    o.out_dir = dir; /* no checkpoints there */
    CHECK(ap_train(c, &o) != AP_OK && strstr(ap_last_error(c), "no complete checkpoint"));
    ap_clear_error(c);

    o.out_dir = part;
    CHECK_MSG(ap_train(c, &o) == AP_OK, "%s", ap_last_error(c));
    snprintf(p, sizeof p, "%s/lora.safetensors", full);
    snprintf(q, sizeof q, "%s/lora.safetensors", part);
    CHECK_MSG(same_file(p, q), "stopped at 3 and resumed to 6 = 6 steps, bit for bit");
    snprintf(p, sizeof p, "%s/optimizer.safetensors", full);
    snprintf(q, sizeof q, "%s/optimizer.safetensors", part);
    CHECK(same_file(p, q));
    snprintf(p, sizeof p, "%s/log.jsonl", part);
    CHECK_MSG(read_log(p, r, 16) == 6, "the log keeps one line per step (the stale step 4 line dropped)");
    /* keep 2: steps 4 and 6 remain, the crash leftovers are replaced or ignored */
    CHECK(exists(part, "checkpoints/step_000004/DONE") && exists(part, "checkpoints/step_000006/DONE"));
    CHECK(!exists(part, "checkpoints/step_000002") && !exists(part, "checkpoints/step_000003"));
    CHECK(!exists(part, "checkpoints/step_000004.tmp"));
    /* resuming a finished run to the same count changes nothing */
    CHECK_MSG(ap_train(c, &o) == AP_OK, "%s", ap_last_error(c));
    snprintf(p, sizeof p, "%s/lora.safetensors", full);
    snprintf(q, sizeof q, "%s/lora.safetensors", part);
    CHECK(same_file(p, q));
}

/* --init-lora starts from a file's adapters (here unchanged by a step at lr 0),
 * and the logged learning rate follows the schedule. */
static void test_init_lora_and_schedule(ap_ctx *c, const ap_train_opts *base, const char *dir, const char *from) {
    ap_train_opts o = *base;
    char run[300], p[400], q[400];
    snprintf(run, sizeof run, "%s/run_init", dir);
    o.out_dir = run;
    o.init_lora = from;
    o.steps = 1;
    o.lr = 0;
    CHECK_MSG(ap_train(c, &o) == AP_OK, "%s", ap_last_error(c));
    snprintf(q, sizeof q, "%s/lora.safetensors", run);
    CHECK_MSG(same_file(from, q), "--init-lora then a step at lr 0 keeps the adapters bit for bit");
    o.init_lora = "/nonexistent/lora.safetensors";
    CHECK(ap_train(c, &o) != AP_OK && strstr(ap_last_error(c), "/nonexistent/lora.safetensors"));
    ap_clear_error(c);

    o = *base;
    snprintf(run, sizeof run, "%s/run_cosine", dir);
    o.out_dir = run;
    o.steps = 6;
    o.lr_schedule.kind = AP_LR_COSINE;
    o.lr_schedule.warmup = 2;
    CHECK_MSG(ap_train(c, &o) == AP_OK, "%s", ap_last_error(c));
    snprintf(p, sizeof p, "%s/log.jsonl", run);
    char *text = NULL;
    size_t len = 0;
    slurp(p, &text, &len);
    /* update s (0-based) of T = 6 with W = 2: s/W, then (1 + cos(pi (s-W)/(T-W)))/2 */
    const double want[6] = {0, 0.5, 1, 0.5 * (1 + cos(M_PI * 0.25)), 0.5, 0.5 * (1 + cos(M_PI * 0.75))};
    const char *at = text;
    for (int s = 0; s < 6; s++) {
        at = at ? strstr(at, "\"lr\": ") : NULL;
        double lr = at ? strtod(at + 6, NULL) : -1;
        CHECK_MSG(fabs(lr - base->lr * want[s]) <= 1e-5 * base->lr, "step %d: lr %g, expected %g", s + 1, lr,
                  base->lr * want[s]);
        if (at) at++;
    }
    free(text);
}

/* The evaluation hook sees each evaluation's images (before training and at
 * its end), and an error it returns ends the training with that error. */
typedef struct {
    int calls, steps[4], n[4];
    bool in_range, grad_off; /* in_range: every value finite */
    int fail_at; /* -1: never */
} hook_rec;
static ap_status eval_hook(void *u, ap_ctx *c, int step, const float *images, int n) {
    hook_rec *h = u;
    if (h->calls < 4) h->steps[h->calls] = step, h->n[h->calls] = n;
    h->calls++;
    for (int64_t i = 0; i < (int64_t)n * 16 * 16 * 3; i++)
        if (!isfinite(images[i])) h->in_range = false;
    if (ap_grad_enabled(c)) h->grad_off = false;
    if (step == h->fail_at) return ap_seterr(c, AP_ERR_INVALID_ARG, "hook refuses step %d", step);
    return AP_OK;
}
static void test_eval_hook(ap_ctx *c, const ap_train_opts *base, const char *dir) {
    char run[320];
    snprintf(run, sizeof run, "%s/run_hook", dir);
    ap_train_opts o = *base;
    o.out_dir = run;
    o.steps = 3;
    o.eval_prompts = "builtin:eval_simple_animals";
    o.eval_per_prompt = 2;
    hook_rec h = {.in_range = true, .grad_off = true, .fail_at = -1};
    o.on_eval = eval_hook;
    o.on_eval_user = &h;
    ap_prompts ep;
    CHECK(ap_prompts_load(c, o.eval_prompts, &ep) == AP_OK);
    CHECK_MSG(ap_train(c, &o) == AP_OK, "%s", ap_last_error(c));
    CHECK_MSG(h.calls == 2 && h.steps[0] == 0 && h.steps[1] == 3, "hook called before and at the end (%d calls)",
              h.calls);
    CHECK(h.n[0] == ep.n * 2 && h.n[1] == ep.n * 2);
    CHECK(h.in_range);
    CHECK(h.grad_off);
    ap_prompts_free(&ep);
    snprintf(run, sizeof run, "%s/run_hook2", dir);
    h = (hook_rec){.in_range = true, .grad_off = true, .fail_at = 0};
    CHECK(ap_train(c, &o) == AP_ERR_INVALID_ARG && strstr(ap_last_error(c), "hook refuses step 0") && h.calls == 1);
    ap_clear_error(c);
}

int main(void) {
    ap_ctx *c = test_ctx();
    char dir[256], model[300], run1[300], run2[300], path[400];
    snprintf(dir, sizeof dir, "/tmp/ap_trainer_%d", (int)getpid());
    snprintf(model, sizeof model, "%s/model", dir);
    snprintf(run1, sizeof run1, "%s/run1", dir);
    snprintf(run2, sizeof run2, "%s/run2", dir);
    ap_sd_config cfg;
    ap_sd_model *m = NULL;
    CHECK(ap_sd_preset(c, "tiny", &cfg) == AP_OK && ap_sd_create(c, &cfg, AP_F32, &m) == AP_OK &&
          ap_sd_init_random(c, m, 1) == AP_OK && ap_sd_save_diffusers(c, m, model) == AP_OK);
    CHECK_OK(c);

    ap_train_opts o;
    ap_train_defaults(&o);
    o.model = model;
    o.out_dir = run1;
    o.reward = "brightness";
    o.loss = "maximize";
    o.prompts = "builtin:simple_animals";
    o.steps = 8;
    o.batch = 2;
    o.sample_steps = 2;
    o.width = o.height = 16;
    o.lr = 3e-2;
    o.loss_coeff = 1.0;
    o.weights_dtype = AP_F32;
    o.seed = 3;
    CHECK_MSG(ap_train(c, &o) == AP_OK, "%s", ap_last_error(c));
    double r[16];
    snprintf(path, sizeof path, "%s/log.jsonl", run1);
    int n = read_log(path, r, 16);
    CHECK_MSG(n == 8, "8 log lines, got %d", n);
    double first = (r[0] + r[1] + r[2]) / 3, last = (r[5] + r[6] + r[7]) / 3;
    printf("brightness: first steps %.5f, last steps %.5f\n", first, last);
    CHECK_MSG(last > first, "maximising brightness raises it (%.5f -> %.5f)", first, last);
    const char *files[] = {"config.json", "lora.safetensors", "optimizer.safetensors"};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", run1, files[i]);
        CHECK_MSG(access(path, R_OK) == 0, "run directory has %s", files[i]);
    }
    /* the same seed gives the same adapters, bit for bit */
    o.out_dir = run2;
    CHECK(ap_train(c, &o) == AP_OK);
    char *a, *b;
    size_t la, lb;
    snprintf(path, sizeof path, "%s/lora.safetensors", run1);
    slurp(path, &a, &la);
    snprintf(path, sizeof path, "%s/lora.safetensors", run2);
    slurp(path, &b, &lb);
    CHECK(la > 0 && la == lb && !memcmp(a, b, la));
    free(a);
    free(b);
    /* the adapters merge into the model for sampling (kohya keys) */
    ap_lora_merge_info li;
    snprintf(path, sizeof path, "%s/lora.safetensors", run1);
    CHECK_MSG(ap_lora_merge_file(c, m, path, 1.0f, &li) == AP_OK, "%s", ap_last_error(c));
    CHECK_MSG(li.modules == 32 && li.unused_keys == 0, "32 attention projections merged, got %d", li.modules);
    /* bad options are errors that name them */
    o.reward = "brightnes";
    CHECK(ap_train(c, &o) != AP_OK && strstr(ap_last_error(c), "brightnes"));
    ap_clear_error(c);
    o.reward = "brightness";
    o.model = "/nonexistent/model";
    CHECK(ap_train(c, &o) != AP_OK && strstr(ap_last_error(c), "/nonexistent/model"));
    ap_clear_error(c);
    test_resume(c, dir, model);
    snprintf(path, sizeof path, "%s/lora.safetensors", run1);
    o.model = model;
    test_init_lora_and_schedule(c, &o, dir, path);
    test_eval_hook(c, &o, dir);
    ap_sd_free(m);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
    ap_ctx_free(c);
    return test_summary("trainer");
}
