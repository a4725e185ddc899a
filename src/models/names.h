/* Tensor names: the original LDM single-file names (CompVis / A1111 / .ckpt)
 * and the diffusers module paths the program uses inside, for SD1.x's UNet,
 * VAE and CLIP text encoder.
 *
 * Internal names carry their component as a prefix, as a diffusers folder
 * implies: "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
 * "vae.decoder.conv_in.weight", "text_encoder.text_model.final_layer_norm.bias".
 * The LDM names are the single-file keys: "model.diffusion_model.…",
 * "first_stage_model.…", "cond_stage_model.transformer.…".
 *
 * One table per model layout (levels, blocks per level, which levels have
 * attention, ...), generated from a handful of prefix pairs (SD_FACTS 1.7, 2.5,
 * 3.2): the mapping is exact both ways, and a name the layout does not have
 * (an index past the end, a shortcut conv a block without a channel change
 * lacks, a misspelt leaf) is AP_ERR_NOT_FOUND.
 */
#ifndef AP_MODELS_NAMES_H
#define AP_MODELS_NAMES_H

#include "alignprop.h"

#include <stddef.h>

/* Flags of a mapped name. */
#define AP_NAME_SQUEEZE 1u    /* LDM holds [C,C,1,1] (a 1x1 conv), diffusers [C,C] (a linear):
                                 same bytes, reshape (the VAE mid attention's q, k, v, proj_out) */
#define AP_NAME_DEPRECATED 2u /* the diffusers name was an old alias (VAE query/key/value/proj_attn) */

#define AP_NAME_MAX_LEVELS 8

typedef struct {
    int unet_levels;                      /* 4 */
    int unet_mult[AP_NAME_MAX_LEVELS];    /* channel multiplier per level: 1, 2, 4, 4 */
    int unet_layers;                      /* resnets per down level (up levels have one more): 2 */
    unsigned unet_attn;                   /* bit i: level i has transformers: 0x7 */
    int unet_depth;                       /* transformer blocks per transformer: 1 */
    int vae_levels;                       /* 4 */
    int vae_mult[AP_NAME_MAX_LEVELS];     /* 1, 2, 4, 4 */
    int vae_layers;                       /* 2 */
    int text_layers;                      /* 12 */
} ap_name_layout;

extern const ap_name_layout ap_name_layout_sd1;

typedef struct ap_name_table ap_name_table;

/* A table for a layout (AP_ERR_INVALID_ARG for counts out of range). */
ap_status ap_name_table_new(const ap_name_layout *l, ap_name_table **out);
void ap_name_table_free(ap_name_table *t); /* accepts NULL */
/* The SD1.x table, built on first use (thread-safe), never freed. */
const ap_name_table *ap_name_table_sd1(void);

/* LDM name -> internal (diffusers) name, and back. Write a NUL-terminated name
 * into out (n bytes) and the flags into *flags (may be NULL). Return AP_OK,
 * AP_ERR_NOT_FOUND for a name the layout does not have, AP_ERR_INVALID_ARG
 * when out is too small. to_ldm also accepts the deprecated VAE attention
 * names (flag AP_NAME_DEPRECATED). */
ap_status ap_name_to_diffusers(const ap_name_table *t, const char *ldm, char *out, size_t n, unsigned *flags);
ap_status ap_name_to_ldm(const ap_name_table *t, const char *name, char *out, size_t n, unsigned *flags);

/* The same with the SD1.x table. */
ap_status ap_name_ldm_to_diffusers(const char *ldm, char *out, size_t n, unsigned *flags);
ap_status ap_name_diffusers_to_ldm(const char *name, char *out, size_t n, unsigned *flags);

/* Every tensor of the layout: count, and the i-th pair (0 <= i < count), in a
 * fixed order (component, then module order). */
int ap_name_table_count(const ap_name_table *t);
ap_status ap_name_table_get(const ap_name_table *t, int i, char *ldm, size_t nl, char *name, size_t nn,
                            unsigned *flags);

/* 1 for keys of LDM single files that hold no model weight and are skipped on
 * load (SD_FACTS 1.9): EMA copies (model_ema.*), the diffusion schedule
 * buffers, scale_factor, the text encoder's position_ids. */
int ap_name_ldm_ignored(const char *ldm);
/* 1 for keys of diffusers folders that are skipped (text_encoder's position_ids). */
int ap_name_diffusers_ignored(const char *name);

#endif
