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

/* Where a parameter's values lie in a file when it is not a whole tensor of
 * the same shape: checkpoints that fuse several of our parameters into one
 * tensor (OpenCLIP's attn.in_proj_weight [3W,W] = rows [q; k; v]) or store a
 * projection as x @ P ([in,out], the transpose of our linear weight [out,in]). */
typedef struct {
    char name[512];     /* the tensor's name in the file */
    int64_t row0, rows; /* rows: 0 = the whole tensor; else rows [row0, row0+rows) of dim 0 */
    int64_t file_rows;  /* with rows: dim 0 the file tensor must have (its other dims are the parameter's) */
    int transpose;      /* the file holds the 2-D parameter transposed */
} ap_name_target;

/* Maps a parameter's registry name to where it lies in a file; out arrives
 * zeroed. Returns 0, or non-zero when the file cannot hold it. */
typedef int (*ap_name_map_ex_fn)(void *user, const char *param, ap_name_target *out);

/* ap_params_load with slices and transposes. The shape check is against the
 * file tensor the target implies ([file_rows, ...] for a slice, the swapped
 * dims for a transpose); a mismatch names the file and the tensor. */
ap_status ap_params_load_ex(ap_ctx *c, ap_params *ps, const ap_weights *w, ap_name_map_ex_fn map, void *user);

/* Writes every parameter of ps to a safetensors file (atomically), named
 * map(param) (identity when NULL), in the checkpoint's shapes (1x1 conv weights
 * as [C,C,1,1]), with metadata pairs. */
ap_status ap_params_save(ap_ctx *c, const ap_params *ps, const char *path, ap_name_map_fn map, void *user,
                         int n_meta, const char *const *keys, const char *const *values);

#endif
