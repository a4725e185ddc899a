/* Pretraining a latent diffusion model from scratch (`alignprop pretrain`):
 * full-parameter training of the VAE (reconstruction + KL), then of the UNet
 * and the CLIP text encoder together on the epsilon-prediction loss over
 * frozen VAE latents, with the SD1.5 noise schedule and caption dropout for
 * classifier-free guidance. Images come from a procedural, index-addressed
 * data stream, so a position in the stream is just a number (docs/pretrain.md). */
#ifndef AP_TRAIN_PRETRAIN_H
#define AP_TRAIN_PRETRAIN_H

#include "alignprop.h"

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Item `index` of a data stream: an image [size,size,3] in [-1,1] (NHWC, f32)
 * and its caption (NUL-terminated, at most cap bytes). Must be deterministic
 * in (user, index). */
typedef ap_status (*ap_pretrain_data_fn)(ap_ctx *c, void *user, uint64_t index, int size, float *rgb,
                                         char *caption, size_t cap);

typedef enum { AP_STAGE_VAE = 1, AP_STAGE_UNET = 2, AP_STAGE_ALL = 3 } ap_pretrain_stage;

typedef struct {
    const char *config;        /* model preset for a fresh model ("shapes64") */
    const char *init;          /* start from this model instead (a folder or file); NULL */
    const char *data;          /* "toy" (built in) or "shapes" (the captioned shapes dataset) */
    ap_pretrain_data_fn data_fn; /* overrides data when set (tests) */
    void *data_user;
    int image_size;            /* 64 */
    ap_pretrain_stage stage;   /* which stages run */
    const char *out_dir;       /* run directory */
    int vae_steps, unet_steps; /* optimizer steps of each stage */
    int batch;                 /* images per step (16) */
    double vae_lr, unet_lr;    /* 5e-4 each */
    int warmup;                /* linear learning-rate warm-up steps per stage (100) */
    double weight_decay, clip; /* 1e-4... 0.01 and 1.0 */
    double kl_weight;          /* per-image KL sum weight against per-image L1 sum (1e-6, as SD's VAE) */
    double l2_weight;          /* weight of the mean squared error added to the VAE's mean L1 (0) */
    float caption_dropout;     /* 0.1 */
    int scale_batches;         /* batches the latent std is measured on (8) */
    uint64_t seed;             /* model init, data stream and noise */
    ap_dtype save_dtype;       /* dtype of the final model folder (f32) */
    int save_every;            /* checkpoint every N steps (100; 0: at stage ends and on stop) */
    int keep_checkpoints;      /* 2; 0 keeps all */
    bool resume;
    volatile sig_atomic_t *stop; /* polled after each step, as in the trainer */
    void (*progress)(void *user, const char *stage, int step, int total, double loss);
    void *progress_user;
} ap_pretrain_opts;

void ap_pretrain_defaults(ap_pretrain_opts *o);
/* "vae", "unet", "all" -> stage, or 0. */
int ap_pretrain_stage_parse(const char *s);

/* Runs the stages and writes RUNDIR: config.json, log.jsonl (a line per step),
 * checkpoints/step_NNNNNN/ (model/ in f32, optimizer.safetensors, state.json,
 * DONE; steps are numbered across the stages: VAE steps first) and model/ (the
 * diffusers folder in save_dtype). With resume, the newest complete checkpoint
 * is loaded and the run continues bit for bit (to more UNet steps than it
 * was started with, too). */
ap_status ap_pretrain(ap_ctx *c, const ap_pretrain_opts *o);

/* The built-in toy stream: one circle or square, red, green or blue, on a grey
 * background, captioned "a red circle"; user points to a uint64_t seed. */
ap_status ap_pretrain_toy_data(ap_ctx *c, void *user, uint64_t index, int size, float *rgb, char *caption,
                               size_t cap);

/* The VAE's reparameterised sample, differentiable: moments [N,h,w,2z] (mean,
 * logvar; logvar clamped to [-30,20] as diffusers does), noise [N,h,w,z] ->
 * z = mean + exp(logvar/2) * noise, and *kl = mean over the batch of
 * 0.5 * sum(mean^2 + exp(logvar) - 1 - logvar) ([1]). */
ap_tensor *ap_vae_sample_kl(ap_ctx *c, ap_tensor *moments, ap_tensor *noise, ap_tensor **kl);

#endif
