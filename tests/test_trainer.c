/* The trainer end to end on the tiny model: a run directory with its config,
 * one log line per step, the adapters and the optimizer state; the reward
 * rises under `maximize brightness`; the same seed gives the same adapters bit
 * for bit; the adapters load back into `sample` through the LoRA merge. */
#include "core/internal.h"
#include "io/json.h"
#include "models/lora_file.h"
#include "test.h"
#include "train/trainer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
    fclose(f);
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
    ap_sd_free(m);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
    ap_ctx_free(c);
    return test_summary("trainer");
}
