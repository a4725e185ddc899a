/* pipeline: text to image with a Stable Diffusion model and a sampler, with
 * classifier-free guidance (cond and uncond batched through one UNet call).
 * The layer between models/ + diffusion/ and the trainer. */
#ifndef AP_PIPELINE_TXT2IMG_H
#define AP_PIPELINE_TXT2IMG_H

#include <stdbool.h>
#include "diffusion/sampler.h"
#include "models/sd.h"

typedef void (*ap_progress_fn)(void *user, int done, int total);

typedef struct {
    const char *prompt;
    const char *negative;   /* "" when NULL */
    int steps;              /* 50 */
    float cfg;              /* 7.5; <= 1 disables guidance (no uncond pass) */
    float eta;              /* DDIM eta, 0 */
    ap_sampler_kind sampler;
    uint64_t seed;
    int width, height;      /* pixels; multiples of the model's total downsampling */
    int batch;              /* images per prompt */
    const char *dump_dir;   /* when set: token ids, text embeddings, latents per step, image as safetensors */
    bool release_models;    /* one-shot use: free the text encoder once the prompts are encoded and the UNet
                               after the last step (m->text, m->unet become NULL), so the peak holds the
                               weights of one stage at a time; m can then only decode */
    ap_progress_fn progress;
    void *progress_user;
} ap_txt2img_opts;

void ap_txt2img_defaults(ap_txt2img_opts *o);

/* Samples images [batch, H, W, 3] in [-1, 1] (NHWC f32; the VAE decoder's
 * output, not clamped; the image writers clamp). */
ap_status ap_txt2img(ap_ctx *c, ap_sd_model *m, const ap_txt2img_opts *o, ap_tensor **images);

/* Token ids [n, 77] (i32) of n prompts, SD1.x rules. */
ap_tensor *ap_tokenize_prompts(ap_ctx *c, ap_sd_model *m, int n, const char *const *prompts);
/* Text embeddings [n, 77, width] of token ids (no gradient). */
ap_tensor *ap_encode_ids(ap_ctx *c, ap_sd_model *m, ap_tensor *ids);
/* Text embeddings [n, 77, width] of n prompts (no gradient). */
ap_tensor *ap_encode_prompts(ap_ctx *c, ap_sd_model *m, int n, const char *const *prompts);

#endif
