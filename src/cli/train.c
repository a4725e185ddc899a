/* alignprop train: AlignProp reward backpropagation into LoRA adapters. */
#include "progress.h"
#include "train/dist.h"
#include "train/trainer.h"

#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int ap_cli_parse_dtype(const char *s, ap_dtype *out);

/* Under mpirun every rank parses the same arguments and agrees on training
 * errors (rank 0 holds the message), so only rank 0 speaks. */
static bool g_talk = true;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
    if (!g_talk) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
}

static int usage(void) {
    say("usage: alignprop train --model PATH --reward SPEC --out RUNDIR [options]\n"
            "  --reward SPEC          reward or weighted mixture: brightness | saturation | jpeg | count | aesthetic |\n"
            "                         hps | pickscore | a=1,b=0.5\n"
            "  --loss maximize|minimize|target:T   (the reward's default: target:10 for aesthetic, else maximize)\n"
            "  --models-dir DIR       reward models' weights (AP_MODELS_DIR, else ~/.local/share/alignprop/models)\n"
            "  --reward-resize M      CLIP rewards' resize to 224: bilinear (default) | bilinear-noaa | bicubic |\n"
            "                         bicubic-noaa\n"
            "  --count-temperature T  the count reward's gradient temperature (4; 1: the plain expected count's)\n"
            "  --prompts SRC          prompt file (one per line) or builtin:simple_animals (default),\n"
            "                         builtin:hps_v2_all, builtin:eval_simple_animals, builtin:hps_v2_all_eval,\n"
            "                         builtin:shapes, builtin:shapes_eval (count-free captions of the shapes data)\n"
            "  --negative TEXT        negative prompt (empty)\n"
            "  --eval-prompts SRC     evaluate on this prompt set before training, every --eval-every N steps\n"
            "                         and at the end (eval.jsonl, eval/step_N.png); --eval-per-prompt K seeds (1)\n"
            "  --steps N              optimizer steps (100)\n"
            "  --batch-size N         images per chain (1)\n"
            "  --grad-accum N         chains per optimizer step (1)\n"
            "  --sample-steps N       DDIM steps (50)\n"
            "  --cfg S                guidance scale (7.5)\n"
            "  --eta E                DDIM eta (0)\n"
            "  --truncation SPEC      fixed:K | rand-step:MIN:MAX | rand:MIN:MAX | gaussian:MEAN:STD | full (fixed:1)\n"
            "  --width W --height H   image size (512)\n"
            "  --lora-rank R --alpha A  LoRA rank (4) and alpha (rank)\n"
            "  --lr X --weight-decay X --clip X --loss-coeff X   (1e-3, 1e-4, 1.0, 0.01)\n"
            "  --lr-schedule S        constant (default) | linear | cosine, after --warmup-steps N (0)\n"
            "  --init-lora FILE       start from these adapters (kohya, diffusers or peft; same rank)\n"
            "  --seed N               (0)\n"
            "  --weights-dtype D      bf16 (default) | f32 | f16\n"
            "  --precision P          f32 | bf16 (default: AP_PRECISION or f32)\n"
            "  --lora-format F        kohya (default) | diffusers | peft\n"
            "  --save-every N         checkpoint every N steps (50; 0: only at the end)\n"
            "  --keep-checkpoints K   complete checkpoints kept (3; 0: all)\n"
            "  --resume [RUNDIR]      continue RUNDIR (or -o) from its newest complete checkpoint\n"
            "Ctrl-C (or SIGTERM, SIGUSR1) finishes the current step, writes a checkpoint and exits 130 (143, 138).\n"
            "Data-parallel: mpirun -np N alignprop train ... (docs/distributed.md); the global batch is\n"
            "N x --batch-size x --grad-accum.\n");
    return 2;
}

static int g_last_step;
static int g_exit_rank = -1, g_exit_step = -1; /* AP_TEST_DIST_EXIT=RANK:STEP */

static void on_progress(void *u, int step, int total, double r) {
    g_last_step = step;
    /* for the tests: a rank that dies in the middle of a run */
    if (step == g_exit_step && ap_dist_rank() == g_exit_rank) _exit(3);
    if (!g_talk) return;
    char extra[64];
    snprintf(extra, sizeof extra, "reward %.4g", r);
    ap_progress_update(u, step, total, extra);
}

static int train_main(int argc, char **argv) {
    ap_train_opts o;
    ap_train_defaults(&o);
    o.out_dir = NULL;
    o.reward = NULL;
    const char *precision = NULL, *trunc = NULL, *resume_dir = NULL;
    double v;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--resume")) { /* takes an optional RUNDIR */
            o.resume = true;
            if (val && val[0] != '-') resume_dir = argv[++i];
            continue;
        }
        if (!val || a[0] != '-') {
            say("alignprop train: unknown or incomplete option '%s'\n", a);
            return usage();
        }
        i++;
        if (!strcmp(a, "--model")) o.model = val;
        else if (!strcmp(a, "--reward")) o.reward = val;
        else if (!strcmp(a, "--loss")) o.loss = val;
        else if (!strcmp(a, "--models-dir")) o.models_dir = val;
        else if (!strcmp(a, "--reward-resize")) o.reward_resize = val;
        else if (!strcmp(a, "--count-temperature")) {
            double v;
            if (ap_cli_num("train", a, val, 1e-3, 1e6, &v)) return 2;
            o.count_temperature = (float)v;
        }
        else if (!strcmp(a, "--prompts")) o.prompts = val;
        else if (!strcmp(a, "--eval-prompts")) o.eval_prompts = val;
        else if (!strcmp(a, "--eval-every")) { if (ap_cli_num("train", a, val, 0, 1e7, &v)) return 2; o.eval_every = (int)v; }
        else if (!strcmp(a, "--eval-per-prompt")) { if (ap_cli_num("train", a, val, 1, 1024, &v)) return 2; o.eval_per_prompt = (int)v; }
        else if (!strcmp(a, "--negative")) o.negative = val;
        else if (!strcmp(a, "-o") || !strcmp(a, "--out") || !strcmp(a, "--output")) o.out_dir = val;
        else if (!strcmp(a, "--truncation")) trunc = val;
        else if (!strcmp(a, "--precision")) precision = val;
        else if (!strcmp(a, "--steps")) { if (ap_cli_num("train", a, val, 1, 1e7, &v)) return 2; o.steps = (int)v; }
        else if (!strcmp(a, "--batch") || !strcmp(a, "--batch-size")) { if (ap_cli_num("train", a, val, 1, 256, &v)) return 2; o.batch = (int)v; }
        else if (!strcmp(a, "--accum") || !strcmp(a, "--grad-accum")) { if (ap_cli_num("train", a, val, 1, 1024, &v)) return 2; o.accum = (int)v; }
        else if (!strcmp(a, "--sample-steps")) { if (ap_cli_num("train", a, val, 1, 1000, &v)) return 2; o.sample_steps = (int)v; }
        else if (!strcmp(a, "--width")) { if (ap_cli_num("train", a, val, 8, 8192, &v)) return 2; o.width = (int)v; }
        else if (!strcmp(a, "--height")) { if (ap_cli_num("train", a, val, 8, 8192, &v)) return 2; o.height = (int)v; }
        else if (!strcmp(a, "--rank") || !strcmp(a, "--lora-rank")) { if (ap_cli_num("train", a, val, 1, 1024, &v)) return 2; o.rank = (int)v; }
        else if (!strcmp(a, "--alpha")) { if (ap_cli_num("train", a, val, 0, 1e6, &v)) return 2; o.alpha = (float)v; }
        else if (!strcmp(a, "--cfg")) { if (ap_cli_num("train", a, val, 0, 100, &v)) return 2; o.cfg = (float)v; }
        else if (!strcmp(a, "--eta")) { if (ap_cli_num("train", a, val, 0, 10, &v)) return 2; o.eta = (float)v; }
        else if (!strcmp(a, "--lr")) { if (ap_cli_num("train", a, val, 0, 10, &v)) return 2; o.lr = v; }
        else if (!strcmp(a, "--warmup-steps")) { if (ap_cli_num("train", a, val, 0, 1e7, &v)) return 2; o.lr_schedule.warmup = (int)v; }
        else if (!strcmp(a, "--init-lora")) o.init_lora = val;
        else if (!strcmp(a, "--lr-schedule")) {
            int k = ap_lr_kind_parse(val);
            if (k < 0) { fprintf(stderr, "alignprop train: --lr-schedule %s: expected constant, linear or cosine\n", val); return 2; }
            o.lr_schedule.kind = (ap_lr_kind)k;
        }
        else if (!strcmp(a, "--weight-decay")) { if (ap_cli_num("train", a, val, 0, 10, &v)) return 2; o.weight_decay = v; }
        else if (!strcmp(a, "--clip")) { if (ap_cli_num("train", a, val, 0, 1e9, &v)) return 2; o.clip = v; }
        else if (!strcmp(a, "--loss-coeff")) { if (ap_cli_num("train", a, val, -1e6, 1e6, &v)) return 2; o.loss_coeff = v; }
        else if (!strcmp(a, "--save-every")) { if (ap_cli_num("train", a, val, 0, 1e7, &v)) return 2; o.save_every = (int)v; }
        else if (!strcmp(a, "--keep-checkpoints")) { if (ap_cli_num("train", a, val, 0, 1e6, &v)) return 2; o.keep_checkpoints = (int)v; }
        else if (!strcmp(a, "--seed")) { if (ap_cli_num("train", a, val, 0, 1e18, &v)) return 2; o.seed = (uint64_t)v; }
        else if (!strcmp(a, "--weights-dtype")) {
            if (ap_cli_parse_dtype(val, &o.weights_dtype)) { say("alignprop train: --weights-dtype %s: expected bf16, f32 or f16\n", val); return 2; }
        } else if (!strcmp(a, "--lora-format")) {
            int f = ap_lora_format_parse(val);
            if (f < 0) { say("alignprop train: --lora-format %s: expected kohya, diffusers or peft\n", val); return 2; }
            o.export_format = (ap_lora_format)f;
        } else { say("alignprop train: unknown option '%s'\n", a); return usage(); }
    }
    if (resume_dir && o.out_dir && strcmp(resume_dir, o.out_dir)) {
        say("alignprop train: --resume %s and -o %s name different run directories\n", resume_dir, o.out_dir);
        return 2;
    }
    if (resume_dir) o.out_dir = resume_dir;
    if (!o.model || !o.reward || !o.out_dir) {
        say("alignprop train: --model, --reward and -o are required\n");
        return usage();
    }
    ap_ctx *c = NULL;
    if (ap_ctx_create_checked(&c) != AP_OK) { /* local to this rank: it speaks */
        fprintf(stderr, "alignprop train: %s\n", ap_last_error(c));
        ap_ctx_free(c);
        return 2;
    }
    if (precision && strcmp(precision, "f32") && strcmp(precision, "bf16")) {
        say("alignprop train: --precision %s: expected f32 or bf16\n", precision);
        ap_ctx_free(c);
        return 2;
    }
    if (precision) ap_set_precision(c, !strcmp(precision, "bf16") ? AP_PREC_BF16 : AP_PREC_F32);
    if (trunc && ap_trunc_parse(c, trunc, &o.trunc) != AP_OK) {
        say("alignprop train: --truncation: %s\n", ap_last_error(c));
        ap_ctx_free(c);
        return 2;
    }
    int ranks = ap_dist_size();
    if (g_talk)
        printf("alignprop train: global batch %d = %d rank%s x batch %d x accumulation %d%s%s\n",
               ranks * o.batch * o.accum, ranks, ranks == 1 ? "" : "s", o.batch, o.accum, ranks > 1 ? "; " : "",
               ap_dist_library());
    fflush(stdout);
    ap_progress bar;
    if (g_talk) ap_progress_begin(&bar, "training");
    o.progress = on_progress;
    o.progress_user = &bar;
    o.stop = &ap_cli_stop_signal;
    ap_cli_stop stop;
    ap_cli_stop_begin(&stop);
    double t0 = ap_now();
    ap_status st = ap_train(c, &o);
    ap_cli_stop_end(&stop);
    if (g_talk) ap_progress_end(&bar);
    if (st != AP_OK) {
        say("alignprop train: %s\n", ap_last_error(c));
        ap_ctx_free(c);
        return 1;
    }
    if (ap_cli_stop_signal) {
        say("alignprop train: interrupted (%s) after step %d; checkpoint written in %s/checkpoints; "
            "continue with --resume %s\n",
            ap_cli_signal_name(ap_cli_stop_signal), g_last_step, o.out_dir, o.out_dir);
        ap_ctx_free(c);
        return 128 + (int)ap_cli_stop_signal;
    }
    if (g_talk)
        printf("trained %d steps in %.1f s; run directory %s (config.json, log.jsonl, lora.safetensors, checkpoints/, "
               "optimizer.safetensors)\n", o.steps, ap_now() - t0, o.out_dir);
    ap_ctx_free(c);
    return 0;
}

int ap_cli_train(int argc, char **argv) {
    /* under an MPI launcher this process is one rank of the job; otherwise
     * nothing happens and the run is single-process */
    if (ap_dist_init(NULL) != AP_OK) {
        fprintf(stderr, "alignprop train: cannot join the MPI job (MPI_Init failed)\n");
        return 1;
    }
    g_talk = ap_dist_rank() == 0;
    const char *ex = getenv("AP_TEST_DIST_EXIT");
    if (ex && sscanf(ex, "%d:%d", &g_exit_rank, &g_exit_step) != 2) g_exit_rank = g_exit_step = -1;
    int rc = train_main(argc, argv);
    ap_dist_finalize();
    return rc;
}
