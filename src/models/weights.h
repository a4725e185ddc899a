/* A file of named tensors, whatever its format: safetensors, or a PyTorch zip
 * checkpoint (.ckpt/.pt/.pth/.bin), detected from the bytes, not the name. And
 * the one loader that fills a model's parameter registry from such a file. */
#ifndef AP_MODELS_WEIGHTS_H
#define AP_MODELS_WEIGHTS_H

#include "nn/nn.h"

typedef struct ap_weights ap_weights;

typedef enum { AP_WEIGHTS_SAFETENSORS = 0, AP_WEIGHTS_TORCH = 1 } ap_weights_format;

ap_status ap_weights_open(ap_ctx *c, const char *path, ap_weights **out);
void ap_weights_close(ap_weights *w); /* accepts NULL */
ap_weights_format ap_weights_format_of(const ap_weights *w);
const char *ap_weights_path(const ap_weights *w);
int ap_weights_count(const ap_weights *w);
const char *ap_weights_name(const ap_weights *w, int i);
int ap_weights_find(const ap_weights *w, const char *name); /* index or -1 */
int ap_weights_shape(const ap_weights *w, int i, int64_t *shape /* [AP_MAX_DIMS] */);
const char *ap_weights_dtype(const ap_weights *w, int i); /* "F32", "BF16", ... */
/* safetensors __metadata__ value (NULL for other formats or when absent). */
const char *ap_weights_metadata(const ap_weights *w, const char *key);
ap_status ap_weights_load(ap_ctx *c, const ap_weights *w, int i, ap_dtype dt, ap_tensor **out);

/* Maps a parameter's registry name to its name in a file; returns 0 and writes
 * out, or non-zero when the file cannot hold it. */
typedef int (*ap_name_map_fn)(void *user, const char *param, char *out, size_t n);

/* Fills every parameter of ps from w: the file name of each is map(param name)
 * (identity when map is NULL). A missing tensor or a wrong shape is an error
 * naming the file and the tensor. Values convert to each parameter's dtype. */
ap_status ap_params_load(ap_ctx *c, ap_params *ps, const ap_weights *w, ap_name_map_fn map, void *user);

/* Writes every parameter of ps to a safetensors file (atomically), named
 * map(param) (identity when NULL), in the checkpoint's shapes (1x1 conv weights
 * as [C,C,1,1]), with metadata pairs. */
ap_status ap_params_save(ap_ctx *c, const ap_params *ps, const char *path, ap_name_map_fn map, void *user,
                         int n_meta, const char *const *keys, const char *const *values);

#endif
