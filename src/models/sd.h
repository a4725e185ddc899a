/* A Stable Diffusion 1.x model: UNet, VAE, CLIP text encoder and tokenizer,
 * from the layouts people have (a diffusers folder; a single-file LDM
 * checkpoint as .safetensors or .ckpt) or made with random weights. */
#ifndef AP_MODELS_SD_H
#define AP_MODELS_SD_H

#include "models/clip_text.h"
#include "models/names.h"
#include "models/tokenizer.h"
#include "models/unet.h"
#include "models/vae.h"

typedef struct {
    ap_unet_config unet;
    ap_vae_config vae;
    ap_clip_text_config text;
} ap_sd_config;

/* "tiny" (tests), "small" (demos, issue 6 sizes), "shapes64" (what `alignprop pretrain`
 * trains for the shipped model) or "sd15". */
ap_status ap_sd_preset(ap_ctx *c, const char *name, ap_sd_config *out);

typedef enum { AP_SD_FORMAT_NONE = 0, AP_SD_FORMAT_DIFFUSERS, AP_SD_FORMAT_LDM_SAFETENSORS, AP_SD_FORMAT_LDM_CKPT } ap_sd_format;
const char *ap_sd_format_name(ap_sd_format f);

typedef struct {
    ap_sd_config cfg;
    ap_unet *unet;
    ap_vae *vae;
    ap_clip_text *text;
    ap_tokenizer *tok;
    ap_sd_format format;
} ap_sd_model;

/* A model with zeroed weights of dtype wdt (the tokenizer is the bundled one). */
ap_status ap_sd_create(ap_ctx *c, const ap_sd_config *cfg, ap_dtype wdt, ap_sd_model **out);
/* Loads path: a diffusers folder, or a single .safetensors / .ckpt file. Frozen
 * weights are held in wdt (bf16 by default in the tools). */
ap_status ap_sd_load(ap_ctx *c, const char *path, ap_dtype wdt, ap_sd_model **out);
void ap_sd_free(ap_sd_model *m);

/* Random weights (deterministic in seed). */
ap_status ap_sd_init_random(ap_ctx *c, ap_sd_model *m, uint64_t seed);

/* Writes a diffusers folder (model_index.json, unet/, vae/, text_encoder/,
 * tokenizer/, scheduler/). */
ap_status ap_sd_save_diffusers(ap_ctx *c, const ap_sd_model *m, const char *dir);
/* Writes one LDM-named safetensors file; the config goes in its metadata. */
ap_status ap_sd_save_ldm(ap_ctx *c, const ap_sd_model *m, const char *path);

/* The name table of this model's layout (for LDM files). Caller frees. */
ap_status ap_sd_name_table(ap_ctx *c, const ap_sd_config *cfg, ap_name_table **out);

/* JSON of the whole config (for metadata and run directories); free with free(). */
char *ap_sd_config_json(const ap_sd_config *cfg);
ap_status ap_sd_config_from_json(ap_ctx *c, const char *text, const char *where, ap_sd_config *out);

#endif
