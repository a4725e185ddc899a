/* nn: layers as plain structs with forward functions, and the parameter
 * registry every model fills.
 *
 * A model creates its parameters through ap_params_add(), named by their
 * diffusers module path within the component ("down_blocks.0.resnets.0.conv1.weight").
 * The registry owns them; layers hold borrowed pointers. Loading and saving
 * walk the registry, so a model file never lists its tensors twice.
 *
 * Layers work on NHWC activations. Every forward returns a new reference and
 * follows the context's sticky-error rule (NULL in, NULL out). */
#ifndef AP_NN_H
#define AP_NN_H

#include "alignprop.h"

#include <stdbool.h>
#include <stdio.h>

/* ------------------------------------------------------------ parameters */
typedef enum {
    AP_PARAM_WEIGHT = 0, /* conv / linear weight: stored in the model's weight dtype */
    AP_PARAM_BIAS,       /* biases: f32 */
    AP_PARAM_NORM_GAIN,  /* norm gamma: f32, initialised to 1 */
    AP_PARAM_NORM_BIAS,  /* norm beta: f32, initialised to 0 */
    AP_PARAM_EMBEDDING,  /* embedding tables: weight dtype, N(0, 0.02) */
} ap_param_kind;

typedef struct {
    char *name;
    ap_tensor *t;
    ap_param_kind kind;
    int64_t fan_in; /* for initialisation */
    /* The shape checkpoints store it with, when it differs from the compute
     * shape (SD1 proj_in/proj_out and VAE attention: 1x1 conv weights
     * [C,C,1,1] used as linear [C,C], the same bytes). 0 = same. */
    int file_ndim;
    int64_t file_shape[AP_MAX_DIMS];
} ap_param;

typedef struct {
    ap_ctx *ctx;
    ap_dtype weight_dtype; /* dtype of weights and embeddings (f32 or bf16) */
    int n, cap;
    ap_param *p;
} ap_params;

void ap_params_init(ap_params *ps, ap_ctx *c, ap_dtype weight_dtype);
void ap_params_free(ap_params *ps);
/* Creates a parameter named prefix + name (zeroed). NULL on error (set in ctx). */
ap_tensor *ap_params_add(ap_params *ps, const char *prefix, const char *name, ap_param_kind kind,
                         int ndim, const int64_t *shape);
ap_param *ap_params_find(const ap_params *ps, const char *name);
/* Records that the last linear weight registered for t is stored as a 1x1 conv [out,in,1,1]. */
void ap_params_mark_conv1x1(ap_params *ps, ap_tensor *w);
int64_t ap_params_count(const ap_params *ps); /* number of scalars */
/* Deterministic random initialisation in the style of PyTorch's defaults:
 * weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)), norms 1 and 0,
 * embeddings N(0, 0.02). Each tensor's stream is derived from seed and its
 * name, so adding a parameter does not change the others. */
ap_status ap_params_init_random(ap_params *ps, uint64_t seed);

/* ------------------------------------------------------------ layers */
typedef struct {
    ap_tensor *down; /* [r, in] f32, trainable */
    ap_tensor *up;   /* [out, r] f32, trainable */
    float scale;     /* alpha / r */
} ap_lora;

typedef struct {
    ap_tensor *w; /* [out, in] */
    ap_tensor *b; /* [out] or NULL */
    ap_lora *lora; /* optional adapter (not owned) */
    int in, out;
} ap_linear_layer;

typedef struct {
    ap_tensor *w; /* [out, in, k, k] */
    ap_tensor *b; /* [out] */
    ap_conv_params p;
    int in, out, k;
} ap_conv_layer;

typedef struct {
    ap_tensor *g, *b; /* [C] */
    int groups;
    float eps;
} ap_gn_layer;

typedef struct {
    ap_tensor *g, *b; /* [C] */
    float eps;
} ap_ln_layer;

/* Make and register. prefix ends with '.' (e.g. "down_blocks.0.resnets.0.conv1."). */
void ap_linear_make(ap_linear_layer *l, ap_params *ps, const char *prefix, int in, int out, bool bias);
void ap_conv_make(ap_conv_layer *l, ap_params *ps, const char *prefix, int in, int out, int k,
                  int stride, const int pad[4]);
void ap_gn_make(ap_gn_layer *l, ap_params *ps, const char *prefix, int channels, int groups, float eps);
void ap_ln_make(ap_ln_layer *l, ap_params *ps, const char *prefix, int channels, float eps);

ap_tensor *ap_linear_fwd(ap_ctx *c, const ap_linear_layer *l, ap_tensor *x);
ap_tensor *ap_conv_fwd(ap_ctx *c, const ap_conv_layer *l, ap_tensor *x);
ap_tensor *ap_gn_fwd(ap_ctx *c, const ap_gn_layer *l, ap_tensor *x);
ap_tensor *ap_ln_fwd(ap_ctx *c, const ap_ln_layer *l, ap_tensor *x);

/* diffusers `Attention`: to_q, to_k, to_v (bias optional), to_out.0 (bias). */
typedef struct {
    ap_linear_layer to_q, to_k, to_v, to_out;
    int heads;
} ap_attn_layer;

void ap_attn_make(ap_attn_layer *a, ap_params *ps, const char *prefix, int query_dim, int context_dim,
                  int heads, bool qkv_bias);
/* x [B,T,C]; ctx [B,S,Cctx] or NULL for self-attention. */
ap_tensor *ap_attn_fwd(ap_ctx *c, const ap_attn_layer *a, ap_tensor *x, ap_tensor *ctx, bool causal);

/* snprintf into a char array, for parameter names (which fit: the return value
 * is used only to tell the compiler truncation was considered). */
void ap_name_fmt(char *out, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
#define AP_FMT(buf, ...) ap_name_fmt((buf), sizeof(buf), __VA_ARGS__)

/* Releases *t and sets it to NULL. */
static inline void ap_drop(ap_tensor **t) {
    ap_tensor_release(*t);
    *t = NULL;
}
/* Releases old and returns new: h = ap_swap(h, op(c, h, ...)). */
static inline ap_tensor *ap_swap(ap_tensor *old, ap_tensor *new_) {
    ap_tensor_release(old);
    return new_;
}

#endif
