/* alignprop train-counter: trains the counting model behind the count reward
 * on the shapes stream and reports its held-out accuracy. */
#include "progress.h"
#include "train/counter_train.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int ap_cli_parse_dtype(const char *s, ap_dtype *out);

static int usage(void) {
    fprintf(stderr,
            "usage: alignprop train-counter [--steps N] [--batch B] [--lr LR] [--seed S] [--eval N]\n"
            "                               [--dtype f16|bf16|f32] [--no-augment] -o FILE.safetensors\n"
            "       alignprop train-counter --evaluate FILE.safetensors [--eval N]\n"
            "  trains the counting model (count reward) on the shapes stream: N steps (600) of B images (32),\n"
            "  AdamW at peak LR (2e-3); then the accuracy on N held-out images (1000), clean and augmented.\n"
            "  Weights are written as dtype (f16). --evaluate only measures the held-out accuracy of FILE.\n");
    return 2;
}

typedef struct {
    ap_progress bar;
    double avg;
    int log_every;
} progress_state;

static void on_step(void *user, int step, int steps, double loss) {
    progress_state *p = user;
    p->avg = step == 1 ? loss : 0.95 * p->avg + 0.05 * loss;
    char extra[64];
    snprintf(extra, sizeof extra, "loss %.4f", p->avg);
    ap_progress_update(&p->bar, step, steps, extra);
    if (!p->bar.tty && (step % p->log_every == 0 || step == steps))
        printf("step %d/%d loss %.4f (%.1fs)\n", step, steps, p->avg, ap_now() - p->bar.start);
}

int ap_cli_train_counter(int argc, char **argv) {
    ap_counter_train_opts o;
    ap_counter_train_defaults(&o);
    const char *out = NULL, *evaluate = NULL;
    long v, eval_n = 1000;
    ap_dtype dt = AP_F16;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has = i + 1 < argc;
        if (!strcmp(a, "--steps") && has) {
            if (ap_cli_int("train-counter", a, argv[++i], 1, 10000000, &v)) return 2;
            o.steps = (int)v;
        } else if (!strcmp(a, "--batch") && has) {
            if (ap_cli_int("train-counter", a, argv[++i], 1, 256, &v)) return 2;
            o.batch = (int)v;
        } else if (!strcmp(a, "--eval") && has) {
            if (ap_cli_int("train-counter", a, argv[++i], 0, 1000000, &v)) return 2;
            eval_n = v;
        } else if (!strcmp(a, "--seed") && has) {
            char *end;
            errno = 0;
            o.seed = strtoull(argv[++i], &end, 10);
            if (!*argv[i] || *end || errno || argv[i][0] == '-') {
                fprintf(stderr, "alignprop train-counter: --seed %s: expected a non-negative integer\n", argv[i]);
                return 2;
            }
        } else if (!strcmp(a, "--lr") && has) {
            char *end;
            o.lr = strtod(argv[++i], &end);
            if (!*argv[i] || *end || !(o.lr > 0) || !isfinite(o.lr)) {
                fprintf(stderr, "alignprop train-counter: --lr %s: expected a positive number\n", argv[i]);
                return 2;
            }
        } else if (!strcmp(a, "--dtype") && has) {
            if (ap_cli_parse_dtype(argv[++i], &dt)) {
                fprintf(stderr, "alignprop train-counter: --dtype %s: expected f16, bf16 or f32\n", argv[i]);
                return 2;
            }
        } else if (!strcmp(a, "--no-augment"))
            o.augment = 0;
        else if (!strcmp(a, "-o") && has)
            out = argv[++i];
        else if (!strcmp(a, "--evaluate") && has)
            evaluate = argv[++i];
        else {
            fprintf(stderr, "alignprop train-counter: unknown or incomplete option '%s'\n", a);
            return usage();
        }
    }
    if (!out && !evaluate) {
        fprintf(stderr, "alignprop train-counter: -o FILE is required\n");
        return usage();
    }
    ap_ctx *c = ap_ctx_create();
    ap_counter *m = NULL;
    if (evaluate) {
        double acc, mae, acc_aug, mae_aug, acc_neg, mae_neg;
        if (eval_n < 1) eval_n = 1000;
        if (ap_counter_load(c, evaluate, &m) != AP_OK ||
            ap_counter_evaluate(c, m, AP_COUNTER_EVAL_SEED, (int)eval_n, 0, &acc, &mae) != AP_OK ||
            ap_counter_evaluate(c, m, AP_COUNTER_EVAL_SEED, (int)eval_n, 1, &acc_aug, &mae_aug) != AP_OK ||
            ap_counter_evaluate(c, m, AP_COUNTER_EVAL_SEED, (int)eval_n, 2, &acc_neg, &mae_neg) != AP_OK) {
            fprintf(stderr, "alignprop train-counter: %s\n", ap_last_error(c));
            ap_counter_free(m);
            ap_ctx_free(c);
            return 1;
        }
        printf("%s, held-out (%ld images of seed %llu): accuracy %.1f%% (count error %.3f), augmented %.1f%% (%.3f), "
               "no-shapes pictures %.1f%% (%.3f)\n",
               evaluate, eval_n, (unsigned long long)AP_COUNTER_EVAL_SEED, 100 * acc, mae, 100 * acc_aug, mae_aug,
               100 * acc_neg, mae_neg);
        ap_counter_free(m);
        ap_ctx_free(c);
        return 0;
    }
    progress_state ps = {.log_every = o.steps >= 10 ? o.steps / 10 : 1};
    o.on_step = on_step;
    o.user = &ps;
    int rc = 1;
    if (ap_counter_create(c, AP_F32, &m) != AP_OK || ap_counter_init_random(m, o.seed) != AP_OK) goto fail;
    printf("train-counter: %lld parameters, %d steps of %d images, seed %llu, lr %g, augment %s, %d threads\n",
           (long long)ap_params_count(&m->params), o.steps, o.batch, (unsigned long long)o.seed, o.lr,
           o.augment ? "on" : "off", ap_get_num_threads(c));
    ap_progress_begin(&ps.bar, "train-counter");
    if (ap_counter_train(c, m, &o, NULL) != AP_OK) {
        ap_progress_end(&ps.bar);
        goto fail;
    }
    ap_progress_end(&ps.bar);
    double secs = ap_now() - ps.bar.start;
    char acc_s[64] = "not measured", acc_aug_s[64] = "not measured", mae_s[64] = "", steps_s[32], seed_s[32],
         time_s[32], loss_s[32];
    if (eval_n > 0) {
        double acc, mae, acc_aug, mae_aug, acc_neg, mae_neg;
        if (ap_counter_evaluate(c, m, AP_COUNTER_EVAL_SEED, (int)eval_n, 0, &acc, &mae) != AP_OK ||
            ap_counter_evaluate(c, m, AP_COUNTER_EVAL_SEED, (int)eval_n, 1, &acc_aug, &mae_aug) != AP_OK ||
            ap_counter_evaluate(c, m, AP_COUNTER_EVAL_SEED, (int)eval_n, 2, &acc_neg, &mae_neg) != AP_OK)
            goto fail;
        snprintf(acc_s, sizeof acc_s, "%.4f", acc);
        snprintf(acc_aug_s, sizeof acc_aug_s, "%.4f", acc_aug);
        snprintf(mae_s, sizeof mae_s, "%.4f", mae);
        printf("held-out (%ld images of seed %llu): accuracy %.1f%% (count error %.3f), augmented %.1f%% (%.3f), "
               "no-shapes pictures %.1f%% (%.3f)\n",
               eval_n, (unsigned long long)AP_COUNTER_EVAL_SEED, 100 * acc, mae, 100 * acc_aug, mae_aug, 100 * acc_neg,
               mae_neg);
    }
    snprintf(steps_s, sizeof steps_s, "%d", o.steps);
    snprintf(seed_s, sizeof seed_s, "%llu", (unsigned long long)o.seed);
    snprintf(time_s, sizeof time_s, "%.1f", secs);
    snprintf(loss_s, sizeof loss_s, "%.5f", ps.avg);
    char batch_s[32];
    snprintf(batch_s, sizeof batch_s, "%d", o.batch);
    const char *keys[] = {"steps", "batch", "seed", "train_seconds", "final_loss", "heldout_accuracy",
                          "heldout_accuracy_augmented", "heldout_mae"};
    const char *vals[] = {steps_s, batch_s, seed_s, time_s, loss_s, acc_s, acc_aug_s, mae_s};
    if (ap_counter_save(m, out, dt, 8, keys, vals) != AP_OK) goto fail;
    printf("wrote %s (%s) after %.1fs\n", out, ap_dtype_name(dt), secs);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "alignprop train-counter: %s\n", ap_last_error(c));
done:
    ap_counter_free(m);
    ap_ctx_free(c);
    return rc;
}
