/* alignprop pretrain: train a tiny latent diffusion model from scratch. */
#include "progress.h"
#include "train/pretrain.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int ap_cli_parse_dtype(const char *s, ap_dtype *out);

static int usage(void) {
    fprintf(stderr,
            "usage: alignprop pretrain -o RUNDIR [options]\n"
            "  --config NAME          model preset for a fresh model (shapes64; also tiny, small)\n"
            "  --init PATH            start from this model instead (e.g. a VAE trained by --stage vae)\n"
            "  --data NAME            training images: shapes (captioned shapes) | toy (one shape) (toy)\n"
            "  --stage S              vae | unet | all (all: the VAE, then the UNet and text encoder)\n"
            "  --steps N              optimizer steps of each stage that runs (1000)\n"
            "  --vae-steps N --unet-steps N   per stage\n"
            "  --batch N              images per step (16)\n"
            "  --lr X                 peak learning rate of both stages (5e-4); --vae-lr, --unet-lr per stage\n"
            "  --warmup N             linear warm-up steps per stage (100)\n"
            "  --weight-decay X --clip X      AdamW decay (0.01), global gradient-norm clip (1.0)\n"
            "  --kl-weight X          VAE KL weight against the summed L1 reconstruction (1e-6)\n"
            "  --l2-weight X          VAE: add X * mean squared error to the mean L1 error (0)\n"
            "  --caption-dropout P    empty-prompt rate of the UNet stage (0.1)\n"
            "  --scale-batches N      batches the latent scale factor is measured on (8)\n"
            "  --image-size N         (64)\n"
            "  --seed N               model init, data and noise (0)\n"
            "  --save-dtype D         f32 (default) | f16 | bf16: the final RUNDIR/model\n"
            "  --precision P          f32 | bf16 (default: AP_PRECISION or f32)\n"
            "  --save-every N         checkpoint every N steps (100; 0: at stage ends only)\n"
            "  --keep-checkpoints K   complete checkpoints kept (2; 0: all)\n"
            "  --resume [RUNDIR]      continue RUNDIR (or -o) from its newest complete checkpoint\n"
            "Ctrl-C (or SIGTERM, SIGUSR1) finishes the current step, writes a checkpoint and exits 130 (143, 138).\n");
    return 2;
}

static int g_last_step;

static void on_progress(void *u, const char *stage, int step, int total, double loss) {
    g_last_step = step;
    char extra[64];
    snprintf(extra, sizeof extra, "%s loss %.4g", stage, loss);
    ap_progress_update(u, step, total, extra);
}

int ap_cli_pretrain(int argc, char **argv) {
    ap_pretrain_opts o;
    ap_pretrain_defaults(&o);
    o.out_dir = NULL;
    const char *precision = NULL, *resume_dir = NULL;
    double v;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--resume")) {
            o.resume = true;
            if (val && val[0] != '-') resume_dir = argv[++i];
            continue;
        }
        if (!val || a[0] != '-') {
            fprintf(stderr, "alignprop pretrain: unknown or incomplete option '%s'\n", a);
            return usage();
        }
        i++;
        if (!strcmp(a, "--config")) o.config = val;
        else if (!strcmp(a, "--init")) o.init = val;
        else if (!strcmp(a, "--data")) o.data = val;
        else if (!strcmp(a, "-o") || !strcmp(a, "--out")) o.out_dir = val;
        else if (!strcmp(a, "--precision")) precision = val;
        else if (!strcmp(a, "--stage")) {
            int s = ap_pretrain_stage_parse(val);
            if (!s) { fprintf(stderr, "alignprop pretrain: --stage %s: expected vae, unet or all\n", val); return 2; }
            o.stage = (ap_pretrain_stage)s;
        }
        else if (!strcmp(a, "--steps")) { if (ap_cli_num("pretrain", a, val, 1, 1e8, &v)) return 2; o.vae_steps = o.unet_steps = (int)v; }
        else if (!strcmp(a, "--vae-steps")) { if (ap_cli_num("pretrain", a, val, 1, 1e8, &v)) return 2; o.vae_steps = (int)v; }
        else if (!strcmp(a, "--unet-steps")) { if (ap_cli_num("pretrain", a, val, 1, 1e8, &v)) return 2; o.unet_steps = (int)v; }
        else if (!strcmp(a, "--batch") || !strcmp(a, "--batch-size")) { if (ap_cli_num("pretrain", a, val, 1, 4096, &v)) return 2; o.batch = (int)v; }
        else if (!strcmp(a, "--lr")) { if (ap_cli_num("pretrain", a, val, 0, 10, &v)) return 2; o.vae_lr = o.unet_lr = v; }
        else if (!strcmp(a, "--vae-lr")) { if (ap_cli_num("pretrain", a, val, 0, 10, &v)) return 2; o.vae_lr = v; }
        else if (!strcmp(a, "--unet-lr")) { if (ap_cli_num("pretrain", a, val, 0, 10, &v)) return 2; o.unet_lr = v; }
        else if (!strcmp(a, "--warmup")) { if (ap_cli_num("pretrain", a, val, 0, 1e8, &v)) return 2; o.warmup = (int)v; }
        else if (!strcmp(a, "--weight-decay")) { if (ap_cli_num("pretrain", a, val, 0, 10, &v)) return 2; o.weight_decay = v; }
        else if (!strcmp(a, "--clip")) { if (ap_cli_num("pretrain", a, val, 0, 1e9, &v)) return 2; o.clip = v; }
        else if (!strcmp(a, "--kl-weight")) { if (ap_cli_num("pretrain", a, val, 0, 1e6, &v)) return 2; o.kl_weight = v; }
        else if (!strcmp(a, "--l2-weight")) { if (ap_cli_num("pretrain", a, val, 0, 1e6, &v)) return 2; o.l2_weight = v; }
        else if (!strcmp(a, "--caption-dropout")) { if (ap_cli_num("pretrain", a, val, 0, 1, &v)) return 2; o.caption_dropout = (float)v; }
        else if (!strcmp(a, "--scale-batches")) { if (ap_cli_num("pretrain", a, val, 1, 1e6, &v)) return 2; o.scale_batches = (int)v; }
        else if (!strcmp(a, "--image-size")) { if (ap_cli_num("pretrain", a, val, 8, 4096, &v)) return 2; o.image_size = (int)v; }
        else if (!strcmp(a, "--seed")) { if (ap_cli_num("pretrain", a, val, 0, 1e18, &v)) return 2; o.seed = (uint64_t)v; }
        else if (!strcmp(a, "--save-every")) { if (ap_cli_num("pretrain", a, val, 0, 1e8, &v)) return 2; o.save_every = (int)v; }
        else if (!strcmp(a, "--keep-checkpoints")) { if (ap_cli_num("pretrain", a, val, 0, 1e6, &v)) return 2; o.keep_checkpoints = (int)v; }
        else if (!strcmp(a, "--save-dtype")) {
            if (ap_cli_parse_dtype(val, &o.save_dtype)) { fprintf(stderr, "alignprop pretrain: --save-dtype %s: expected f32, f16 or bf16\n", val); return 2; }
        } else { fprintf(stderr, "alignprop pretrain: unknown option '%s'\n", a); return usage(); }
    }
    if (resume_dir && o.out_dir && strcmp(resume_dir, o.out_dir)) {
        fprintf(stderr, "alignprop pretrain: --resume %s and -o %s name different run directories\n", resume_dir,
                o.out_dir);
        return 2;
    }
    if (resume_dir) o.out_dir = resume_dir;
    if (!o.out_dir) {
        fprintf(stderr, "alignprop pretrain: -o RUNDIR is required\n");
        return usage();
    }
    if (o.stage == AP_STAGE_UNET && !o.init && !o.resume)
        fprintf(stderr, "alignprop pretrain: warning: --stage unet without --init trains on the latents of an "
                        "untrained VAE\n");
    ap_ctx *c = NULL;
    if (ap_ctx_create_checked(&c) != AP_OK) {
        fprintf(stderr, "alignprop pretrain: %s\n", ap_last_error(c));
        ap_ctx_free(c);
        return 2;
    }
    if (precision && strcmp(precision, "f32") && strcmp(precision, "bf16")) {
        fprintf(stderr, "alignprop pretrain: --precision %s: expected f32 or bf16\n", precision);
        ap_ctx_free(c);
        return 2;
    }
    if (precision) ap_set_precision(c, !strcmp(precision, "bf16") ? AP_PREC_BF16 : AP_PREC_F32);
    ap_progress bar;
    ap_progress_begin(&bar, "pretraining");
    o.progress = on_progress;
    o.progress_user = &bar;
    o.stop = &ap_cli_stop_signal;
    ap_cli_stop stop;
    ap_cli_stop_begin(&stop);
    double t0 = ap_now();
    ap_status st = ap_pretrain(c, &o);
    ap_cli_stop_end(&stop);
    ap_progress_end(&bar);
    if (st != AP_OK) {
        fprintf(stderr, "alignprop pretrain: %s\n", ap_last_error(c));
        ap_ctx_free(c);
        return 1;
    }
    if (ap_cli_stop_signal) {
        fprintf(stderr,
                "alignprop pretrain: interrupted (%s) after step %d; checkpoint written in %s/checkpoints; "
                "continue with --resume %s\n",
                ap_cli_signal_name(ap_cli_stop_signal), g_last_step, o.out_dir, o.out_dir);
        ap_ctx_free(c);
        return 128 + (int)ap_cli_stop_signal;
    }
    printf("pretrained in %.1f s; run directory %s (config.json, log.jsonl, checkpoints/, model/)\n", ap_now() - t0,
           o.out_dir);
    ap_ctx_free(c);
    return 0;
}
