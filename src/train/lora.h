/* Trainable LoRA adapters on the UNet's attention projections (SD_FACTS 7.2):
 * to_q, to_k, to_v and to_out.0 of attn1 and attn2 of every transformer block
 * (128 modules on SD1.5). Each adapter adds scale * up(down(x)) beside the
 * frozen weight (ap_linear_fwd does the adding when a layer's `lora` is set).
 *
 * The adapters are f32 leaves requiring a gradient, held in one registry
 * (ap_params) whatever the base model's precision, named
 *   "<module path>.lora_down.weight"  [r, in]
 *   "<module path>.lora_up.weight"    [out, r]
 * with the diffusers module path ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"). */
#ifndef AP_TRAIN_LORA_H
#define AP_TRAIN_LORA_H

#include "models/unet.h"

typedef struct {
    char path[160];
    int in, out;
} ap_lora_target;

/* The target modules of a UNet config, in a fixed order (down blocks, mid
 * block, up blocks; attn1 then attn2; q, k, v, out). Writes at most max
 * entries (out may be NULL with max 0) and returns the total count. Needs no
 * weights, so the SD1.5 list and size can be had without allocating 2 GB. */
int ap_lora_targets(const ap_unet_config *cfg, ap_lora_target *out, int max);
/* Number of trainable scalars at rank r: sum over targets of r * (in + out). */
int64_t ap_lora_param_count(const ap_unet_config *cfg, int rank);

typedef struct {
    ap_lora_target target;
    ap_lora lora;           /* down [r,in], up [out,r] (borrowed from params), scale alpha/r */
    ap_linear_layer *layer; /* the layer it is attached to, NULL when detached */
} ap_lora_module;

typedef struct {
    ap_ctx *ctx;
    ap_unet_config cfg; /* the UNet layout it was made for */
    int rank;
    float alpha;
    int n;
    ap_lora_module *m; /* [n] */
    ap_params params;  /* 2n tensors: down then up of each module, f32 */
    ap_unet *attached; /* NULL when detached */
} ap_lora_set;

/* Makes adapters for every target of cfg: down ~ N(0, std = 1/rank) (the
 * original AlignProp's diffusers LoRAAttnProcessor init; peft and kohya use
 * kaiming-uniform instead), up = 0, so the model starts unchanged. The draws
 * come from one torch-compatible generator seeded with seed, module by module
 * in target order (torch.manual_seed(seed); randn for each down in turn).
 * alpha <= 0 means alpha = rank (scale 1). Not attached yet. */
ap_status ap_lora_create(ap_ctx *c, const ap_unet_config *cfg, int rank, float alpha, uint64_t seed,
                         ap_lora_set **out);
void ap_lora_free(ap_lora_set *s); /* detaches first; accepts NULL */

/* Sets each target layer's `lora` pointer of u (whose config must have the
 * same layout); detach clears them. A set is attached to at most one UNet. */
ap_status ap_lora_attach(ap_ctx *c, ap_lora_set *s, ap_unet *u);
void ap_lora_detach(ap_lora_set *s);

/* The 2n trainable tensors, in registry order (down, up of module 0, ...),
 * borrowed, for an optimizer. Returns n tensors written to out[0..2n). */
int ap_lora_tensors(const ap_lora_set *s, ap_tensor **out /* [2n] */);

typedef enum {
    AP_LORA_KOHYA = 0, /* lora_unet_<path with _>.lora_down.weight / .lora_up.weight / .alpha */
    AP_LORA_DIFFUSERS, /* unet.<path>.lora.down.weight / .lora.up.weight */
    AP_LORA_PEFT,      /* <path>.lora_A.weight / .lora_B.weight, lora_alpha in metadata */
    AP_LORA_FORMAT_COUNT_
} ap_lora_format;
const char *ap_lora_format_name(ap_lora_format f); /* "kohya", "diffusers", "peft" */
/* Parses a name as above; returns -1 when unknown. */
int ap_lora_format_parse(const char *name);

/* Writes the adapters to a safetensors file atomically. kohya keeps up as is
 * and stores alpha per module (scale alpha/rank). diffusers and peft loaders
 * do not agree on where an alpha lives, so when scale != 1 those formats
 * store scale * up and declare alpha = rank: every loader then merges the same
 * W + scale * up @ down. */
ap_status ap_lora_save(ap_ctx *c, const ap_lora_set *s, const char *path, ap_lora_format fmt);
/* Loads adapters into s (for resuming, or to start training from a file):
 * kohya, diffusers or peft keys (ap_lora_key_candidates), in a safetensors or
 * PyTorch file; every module of s must be present with shapes [rank,in] /
 * [out,rank]; a per-module alpha (rank when absent or 0) sets each scale, so
 * diffusers and peft files, whose scale is folded into up, load with scale 1
 * and give the same merged weights. Values are copied in (the tensors stay the
 * same objects); a failed load leaves s unchanged. *format (may be NULL)
 * receives the format found. */
ap_status ap_lora_load(ap_ctx *c, ap_lora_set *s, const char *path, const char **format);

#endif
