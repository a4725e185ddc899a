/* CLIP checkpoints as users have them, for the reward models.
 *
 * Layouts (detected from the tensor names, never from the file name):
 *   AP_CLIP_HF        Hugging Face transformers CLIPModel (model.safetensors or
 *                     pytorch_model.bin): vision_model.*, visual_projection.weight,
 *                     text_model.*, text_projection.weight, logit_scale; also a
 *                     vision-only (CLIPVisionModelWithProjection) or text-only file.
 *                     openai/clip-vit-large-patch14 (aesthetic), PickScore_v1.
 *   AP_CLIP_OPENCLIP  OpenCLIP / OpenAI names (open_clip_pytorch_model.bin,
 *                     HPS_v2_compressed.pt, HPS_v2.1_compressed.pt): visual.*,
 *                     token_embedding.weight, transformer.resblocks.*, ln_final,
 *                     text_projection, logit_scale. Attention q, k, v are one fused
 *                     in_proj (rows [q; k; v]), split at load; visual.proj and
 *                     text_projection are [width,out] (x @ P), transposed at load.
 * A common prefix on every name ("module.", from DataParallel) is detected and
 * skipped; a torch file's 'state_dict' wrapper is unwrapped by the reader.
 *
 * The towers (clip_vision.h, clip_text.h) use HF names inside; each layout is a
 * name map onto them, and all loading goes through ap_params_load_ex.
 *
 * Typical use (the rewards):
 *   ap_clip_file *f;  ap_clip_open(c, "HPS_v2_compressed.pt", &f);
 *   ap_clip_vision *v; ap_clip_load_vision(c, f, NULL, AP_BF16, &v);   // config from the shapes
 *   ap_clip_text *t;   ap_clip_load_text(c, f, NULL, AP_BF16, &t);
 *   float ls;          ap_clip_logit_scale(c, f, &ls);                  // log of the scale: use expf(ls)
 *   ap_clip_close(f);                                                   // the towers own their weights
 *   emb = ap_clip_vision_forward(c, v, pixels);   txt = ap_clip_text_embed(c, t, ids);
 */
#ifndef AP_MODELS_CLIP_H
#define AP_MODELS_CLIP_H

#include "clip_text.h"
#include "clip_vision.h"
#include "weights.h"

typedef enum { AP_CLIP_HF = 0, AP_CLIP_OPENCLIP = 1 } ap_clip_layout;

typedef struct ap_clip_file ap_clip_file;

/* Opens a checkpoint: a file (safetensors or torch zip), or a folder holding
 * model.safetensors, pytorch_model.bin, open_clip_model.safetensors or
 * open_clip_pytorch_model.bin (first found; a config.json beside it supplies
 * heads and activations). A file with neither layout's names is
 * AP_ERR_FORMAT naming the file. */
ap_status ap_clip_open(ap_ctx *c, const char *path, ap_clip_file **out);
void ap_clip_close(ap_clip_file *f); /* accepts NULL */

ap_clip_layout ap_clip_layout_of(const ap_clip_file *f);
const char *ap_clip_layout_name(ap_clip_layout l); /* "transformers", "open_clip" */
const ap_weights *ap_clip_weights(const ap_clip_file *f);
const char *ap_clip_prefix(const ap_clip_file *f); /* the skipped common prefix, "" when none */
int ap_clip_has_vision(const ap_clip_file *f);
int ap_clip_has_text(const ap_clip_file *f);

/* Tower configs read from the tensor shapes (widths, layers, patch, image
 * size, MLP, projection). Heads and activation are not in the weights: they
 * come from config.json when there is one; else a known tower's (ViT-L/14
 * vision: 16 heads, quick_gelu; ViT-H/14: 16 heads, GELU; text 768 wide, 12
 * layers: OpenAI's, quick_gelu), else width/64 heads and the layout's default
 * activation (HF: quick_gelu, its config default; OpenCLIP: GELU). Pass an
 * explicit config to the loaders when a checkpoint differs. */
ap_status ap_clip_vision_config_of(ap_ctx *c, const ap_clip_file *f, ap_clip_vision_config *out);
ap_status ap_clip_text_config_of(ap_ctx *c, const ap_clip_file *f, ap_clip_text_config *out);

/* Build a tower and load its weights (wdt: AP_BF16 for frozen towers, or
 * AP_F32). cfg NULL = ap_clip_*_config_of. A missing or mis-shaped tensor is an
 * error naming the file and the tensor. */
ap_status ap_clip_load_vision(ap_ctx *c, const ap_clip_file *f, const ap_clip_vision_config *cfg, ap_dtype wdt,
                              ap_clip_vision **out);
ap_status ap_clip_load_text(ap_ctx *c, const ap_clip_file *f, const ap_clip_text_config *cfg, ap_dtype wdt,
                            ap_clip_text **out);
/* Scalars the file holds for a tower (vision 1, text 0), integer buffers
 * (position_ids) not counted; the fused in_proj counts as q, k and v. */
int64_t ap_clip_param_count(const ap_clip_file *f, int vision);

/* The stored logit_scale (its log: the scale is expf(*out), 100 for trained models). */
ap_status ap_clip_logit_scale(ap_ctx *c, const ap_clip_file *f, float *out);

#endif
