/* LoRA files in the formats people share (SD_FACTS section 7.3), merged into a
 * model's frozen weights for sampling: W += strength * (alpha / rank) * up @ down. */
#ifndef AP_MODELS_LORA_FILE_H
#define AP_MODELS_LORA_FILE_H

#include "models/sd.h"

typedef struct {
    float strength;  /* the strength used */
    int modules;     /* modules merged */
    int unused_keys; /* lora tensors in the file that matched no module */
    const char *format; /* "kohya", "diffusers", "diffusers-attn-procs", "peft" */
} ap_lora_merge_info;

/* The key names one LoRA module may have in a file, one triple per format. */
typedef struct {
    char down[600], up[600], alpha[600];
    const char *format; /* "kohya", "diffusers", "diffusers-attn-procs", "peft" */
} ap_lora_keys;

/* Fills up to max candidate key triples for the module at diffusers path P
 * (e.g. "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q") of
 * component comp ("unet" or "text_encoder"), most common format first; tab
 * (may be NULL) adds kohya keys in LDM naming. Returns how many. */
int ap_lora_key_candidates(const char *comp, const char *P, ap_lora_keys *k, int max, const ap_name_table *tab);

/* Merges the LoRA in path (safetensors or PyTorch) into m with the given
 * strength. Keys: kohya (lora_unet_<path>.lora_down/lora_up/.alpha, also LDM
 * paths, and lora_te_ for the text encoder), diffusers ([unet.]<path>.lora.down/up,
 * <attn>.processor.to_q_lora.down/up), peft ([unet.|base_model.model.]<path>.lora_A/lora_B).
 * A file in which no key matches a module is an error. */
ap_status ap_lora_merge_file(ap_ctx *c, ap_sd_model *m, const char *path, float strength, ap_lora_merge_info *info);
/* The command-line form "FILE[:STRENGTH]": when what follows the last ':' is a
 * number it is the strength (default 1), otherwise the whole text is the file. */
ap_status ap_lora_merge_spec(ap_ctx *c, ap_sd_model *m, const char *spec, ap_lora_merge_info *info);

#endif
