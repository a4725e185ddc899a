/* The AlignProp trainer: LoRA adapters on the UNet's attention projections,
 * trained by backpropagating a differentiable reward through the VAE decoder
 * and the DDIM chain (truncated and checkpointed), with AdamW. */
#ifndef AP_TRAIN_TRAINER_H
#define AP_TRAIN_TRAINER_H

#include "train/lora.h"
#include "train/optim.h"
#include "train/truncation.h"

#include <signal.h>
#include <stdbool.h>

typedef struct {
    const char *model;       /* model folder or file */
    const char *prompts;     /* file or builtin:NAME */
    const char *negative;    /* "" */
    const char *reward;      /* mixture spec ("brightness", "aesthetic=1,hps=0.5") */
    const char *loss;        /* maximize | minimize | target:T; NULL: the reward's default (ap_reward_mix_default_loss) */
    const char *models_dir;  /* reward models' weights (NULL: AP_MODELS_DIR or the default, see ap_reward_models_dir) */
    const char *reward_resize; /* CLIP rewards' resize: bilinear (NULL) | bilinear-noaa | bicubic | bicubic-noaa */
    float count_temperature; /* the count reward's gradient temperature (0: its default, AP_COUNT_GRAD_TEMPERATURE) */
    const char *out_dir;     /* run directory */
    int steps;               /* optimizer steps */
    int batch;               /* images per chain */
    int accum;               /* chains per optimizer step */
    int sample_steps;        /* DDIM steps (50) */
    float cfg;               /* 7.5 */
    float eta;               /* 0 */
    ap_trunc_policy trunc;   /* fixed:1 */
    int width, height;       /* 512 */
    int rank;                /* 4 */
    float alpha;             /* rank */
    double lr, weight_decay, clip, loss_coeff; /* 1e-3, 1e-4, 1.0, 0.01 */
    ap_lr_schedule lr_schedule; /* constant, no warmup */
    const char *init_lora;   /* start the adapters from this file (any format, rank must match); NULL: random */
    uint64_t seed;
    ap_dtype weights_dtype;  /* bf16 */
    ap_lora_format export_format; /* kohya */
    const char *eval_prompts; /* evaluation prompt set (file or builtin:NAME); NULL: no evaluation */
    int eval_every;          /* evaluate before training, every N steps and at the end (0: only before and at the end) */
    int eval_per_prompt;     /* images per evaluation prompt, seeds 0..N-1 (1) */
    int save_every;          /* checkpoint every N steps (50); 0: only at the end (and on stop) */
    int keep_checkpoints;    /* complete checkpoints kept (3); 0 keeps all */
    bool resume;             /* continue from out_dir's newest complete checkpoint */
    /* Polled after every step (may be NULL): when it reads non-zero, the loop
     * writes a checkpoint of the step just finished and returns AP_OK early.
     * A signal handler may set it (a plain store is async-signal-safe). */
    volatile sig_atomic_t *stop;
    void (*progress)(void *user, int step, int total, double reward_mean);
    void *progress_user;
    /* Called at rank 0 after each evaluation (may be NULL) with its n images
     * [n][height][width][3] (the decoder's output, nominally in [-1,1], as
     * the reward sees it), prompt-major (image i: evaluation
     * prompt i / eval_per_prompt, seed i % eval_per_prompt), the ones the
     * grid shows. Gradients are off during the call. A status other than
     * AP_OK (with the context's error set) ends the training with it. */
    ap_status (*on_eval)(void *user, ap_ctx *c, int step, const float *images, int n);
    void *on_eval_user;
} ap_train_opts;

void ap_train_defaults(ap_train_opts *o);
/* Runs a whole training and writes the run directory: config.json, log.jsonl
 * (one line per step), lora.safetensors (the adapters), optimizer.safetensors,
 * and checkpoints/step_NNNNNN/ (lora.safetensors in kohya form,
 * optimizer.safetensors, state.json, DONE), each written in a .tmp directory,
 * synced and renamed into place. With o->resume the newest complete
 * checkpoint is loaded (its config must match: an error names the first
 * field that differs) and the run continues bit for bit from there. */
ap_status ap_train(ap_ctx *c, const ap_train_opts *o);

#endif
