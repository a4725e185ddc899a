/* alignprop: align text-to-image diffusion models to differentiable rewards.
 *
 * The one public header. Everything is prefixed ap_; handles are opaque; every
 * destructor accepts NULL. Library functions never exit the process: they
 * return a status (or NULL) and leave a message in the context, readable with
 * ap_last_error().
 *
 * Errors are sticky per context: once an op fails, later ops on that context
 * return NULL until ap_clear_error(), so model code can run a whole forward
 * pass and check once at the end.
 *
 * Tensors are reference counted (ap_tensor_retain / ap_tensor_release). Every
 * function that returns an ap_tensor* returns a new reference the caller owns.
 * Activations are NHWC: an image batch is [N, H, W, C], a token batch [B, T, C].
 */
#ifndef ALIGNPROP_H
#define ALIGNPROP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define AP_VERSION_MAJOR 0
#define AP_VERSION_MINOR 1
#define AP_VERSION_PATCH 0
#define AP_VERSION_NUMBER (AP_VERSION_MAJOR * 10000 + AP_VERSION_MINOR * 100 + AP_VERSION_PATCH)
#define AP_VERSION_STRING "0.1.0"

/* Runtime version, to compare with AP_VERSION_NUMBER. */
unsigned ap_version(void);
const char *ap_version_string(void);

/* ---------------------------------------------------------------- status */
typedef enum {
    AP_OK = 0,
    AP_ERR_INVALID_ARG,  /* a bad argument or flag */
    AP_ERR_SHAPE,        /* tensor shapes do not fit together */
    AP_ERR_DTYPE,        /* unsupported or mismatched dtype */
    AP_ERR_NOMEM,        /* out of memory */
    AP_ERR_IO,           /* a file could not be opened, read or written */
    AP_ERR_FORMAT,       /* a file is malformed */
    AP_ERR_NOT_FOUND,    /* a named tensor or file is missing */
    AP_ERR_UNSUPPORTED,  /* valid, but not supported by this build or CPU */
    AP_ERR_BACKEND,      /* the compute library (oneDNN) refused or failed */
    AP_ERR_STATE,        /* call made in the wrong state (e.g. backward twice) */
    AP_ERR_COUNT_
} ap_status;

/* A fixed description of a status code ("shape mismatch", ...). */
const char *ap_strerror(ap_status s);

/* ---------------------------------------------------------------- context */
typedef struct ap_ctx ap_ctx;

typedef enum {
    AP_PREC_F32 = 0, /* everything in f32 */
    AP_PREC_BF16 = 1 /* conv, matmul and attention in bf16 with f32 accumulation */
} ap_precision;

/* Creates a context. Reads AP_NUM_THREADS and AP_PRECISION (f32|bf16) from the
 * environment; an invalid value is reported by ap_ctx_create_checked. */
ap_ctx *ap_ctx_create(void);
/* As ap_ctx_create, but returns the status of parsing the environment; on a bad
 * value *out is still created (with defaults) and its last error names the
 * variable. */
ap_status ap_ctx_create_checked(ap_ctx **out);
void ap_ctx_free(ap_ctx *c);

ap_status ap_last_status(const ap_ctx *c);
const char *ap_last_error(const ap_ctx *c); /* "" when there is none */
void ap_clear_error(ap_ctx *c);

ap_status ap_set_precision(ap_ctx *c, ap_precision p);
ap_precision ap_get_precision(const ap_ctx *c);
/* 1 when this CPU runs bf16 matrix products in hardware (AMX or AVX512-BF16). */
int ap_cpu_has_bf16(void);
ap_status ap_set_num_threads(ap_ctx *c, int n);
int ap_get_num_threads(const ap_ctx *c);

/* Tensor memory (every tensor of the context: weights, activations, gradients,
 * oneDNN scratch): bytes in live tensors now, the peak since the last reset,
 * and bytes reserved from the system (live plus cached for reuse). The
 * activation peak of a computation is ap_mem_peak() - ap_mem_in_use() taken
 * before it, after ap_mem_reset_peak(). Packed weight copies live outside. */
size_t ap_mem_in_use(const ap_ctx *c);
size_t ap_mem_peak(const ap_ctx *c);
size_t ap_mem_reserved(const ap_ctx *c);
void ap_mem_reset_peak(ap_ctx *c);
/* Returns cached, unused blocks to the system. */
void ap_mem_trim(ap_ctx *c);
/* Packed weight copies (each weight in the layout the conv/matmul kernels
 * want, per layout: forward and backward data may differ) are cached on the
 * weights while the cached bytes stay within this budget; a weight that does
 * not fit is packed into a temporary tensor for each call that uses it.
 * Default: AP_PACK_CACHE from the environment (bytes, with an optional K, M
 * or G suffix, binary; "all" for no limit) or AP_PACK_CACHE_DEFAULT. Lowering
 * the budget frees cached copies. ap_mem_packed is the bytes cached now
 * (outside ap_mem_in_use). */
#define AP_PACK_CACHE_DEFAULT ((size_t)1 << 30)
ap_status ap_set_pack_cache(ap_ctx *c, size_t bytes);
size_t ap_get_pack_cache(ap_ctx *c);
size_t ap_mem_packed(ap_ctx *c);

/* Floating-point operations of the matrix products (convolution, linear,
 * matmul, attention: 2 per multiply-add) run by forward ops since the last
 * reset: what "effective FLOP/s" in the benchmarks divides by. */
double ap_flops(const ap_ctx *c);
void ap_flops_reset(ap_ctx *c);

/* ---------------------------------------------------------------- tensors */
typedef enum { AP_F32 = 0, AP_BF16, AP_F16, AP_I32, AP_I64, AP_DTYPE_COUNT_ } ap_dtype;
#define AP_MAX_DIMS 6

typedef struct ap_tensor ap_tensor;

const char *ap_dtype_name(ap_dtype dt);
size_t ap_dtype_size(ap_dtype dt);

/* New tensor with uninitialised (new) or zeroed (zeros) contents. */
ap_tensor *ap_tensor_new(ap_ctx *c, ap_dtype dt, int ndim, const int64_t *shape);
ap_tensor *ap_tensor_zeros(ap_ctx *c, ap_dtype dt, int ndim, const int64_t *shape);
/* New tensor holding a copy of data (ndim dims of shape, dtype dt). */
ap_tensor *ap_tensor_from_data(ap_ctx *c, ap_dtype dt, int ndim, const int64_t *shape,
                               const void *data);
/* A copy converted to dtype dt (floating types convert with round-to-nearest-even). */
ap_tensor *ap_tensor_convert(ap_ctx *c, const ap_tensor *t, ap_dtype dt);

ap_tensor *ap_tensor_retain(ap_tensor *t);
void ap_tensor_release(ap_tensor *t); /* accepts NULL */

ap_dtype ap_tensor_dtype(const ap_tensor *t);
int ap_tensor_ndim(const ap_tensor *t);
int64_t ap_tensor_dim(const ap_tensor *t, int i); /* negative i counts from the end */
int64_t ap_tensor_numel(const ap_tensor *t);
void *ap_tensor_data(ap_tensor *t);
const void *ap_tensor_cdata(const ap_tensor *t);
size_t ap_tensor_nbytes(const ap_tensor *t);
/* Optional name (parameters carry their module path). */
ap_status ap_tensor_set_name(ap_tensor *t, const char *name);
const char *ap_tensor_name(const ap_tensor *t);
/* Call after writing to a tensor's data in place (e.g. an optimizer step):
 * drops cached packed copies of it. */
void ap_tensor_touch(ap_tensor *t);

/* ---------------------------------------------------------------- autograd
 * A reverse-mode tape. While gradients are enabled, every op that has an input
 * requiring a gradient records a node. ap_backward walks the tape in reverse:
 * gradients of leaf tensors (parameters, or inputs marked with
 * ap_tensor_set_requires_grad) accumulate (+=) into their grad tensor;
 * gradients of intermediate tensors live only during backward. Frozen tensors
 * (requires_grad 0) get no gradient and no weight-gradient kernel runs for
 * them. After backward the tape is cleared. */
ap_status ap_tensor_set_requires_grad(ap_tensor *t, int on); /* leaves only */
int ap_tensor_requires_grad(const ap_tensor *t);
/* The accumulated gradient of a leaf (f32, same shape), or NULL if none yet.
 * Borrowed reference. */
ap_tensor *ap_tensor_grad(ap_tensor *t);
/* Marks the gradient as zero without touching memory (the next backward
 * overwrites instead of adding). */
void ap_tensor_zero_grad(ap_tensor *t);

/* Returns the previous setting. With 0, ops record nothing (no-grad scope). */
int ap_set_grad_enabled(ap_ctx *c, int on);
int ap_grad_enabled(const ap_ctx *c);

/* Backpropagates from y. grad_y may be NULL when y has one element (seed 1). */
ap_status ap_backward(ap_ctx *c, ap_tensor *y, const ap_tensor *grad_y);
/* Backpropagates from several outputs at once, each with its seed gradient. */
ap_status ap_backward_multi(ap_ctx *c, int n, ap_tensor *const *ys, ap_tensor *const *grad_ys);
/* Drops everything recorded so far (no backward). */
void ap_tape_clear(ap_ctx *c);
/* Number of nodes currently on the tape (for tests and diagnostics). */
size_t ap_tape_size(const ap_ctx *c);

/* The checkpoint primitive. fn computes n_out outputs from n_in inputs (it may
 * also use parameters it reaches through user). ap_checkpoint runs fn without
 * recording, keeps only the inputs, and during backward runs fn again on a
 * nested tape and backpropagates through it. fn must be deterministic, user
 * must stay valid until backward, and the inputs are kept by reference: do not
 * write into them afterwards. fn returns AP_OK or an error status. */
typedef ap_status (*ap_checkpoint_fn)(ap_ctx *c, void *user, int n_in, ap_tensor *const *in,
                                      int n_out, ap_tensor **out);
ap_status ap_checkpoint(ap_ctx *c, ap_checkpoint_fn fn, void *user, int n_in,
                        ap_tensor *const *in, int n_out, ap_tensor **out);
/* As ap_checkpoint, but the recorded node keeps its own copy of user_size bytes
 * at user (a small struct of pointers and settings), so user may be a local
 * variable of the caller. */
ap_status ap_checkpoint_copy(ap_ctx *c, ap_checkpoint_fn fn, const void *user, size_t user_size, int n_in,
                             ap_tensor *const *in, int n_out, ap_tensor **out);

/* ---------------------------------------------------------------- ops
 * Each returns a new tensor (NULL on error, with the reason in the context).
 * Float inputs are f32 unless said otherwise; weights may be f32, bf16 or f16.
 * All have backward passes except where marked forward-only. */

/* Shape */
ap_tensor *ap_reshape(ap_ctx *c, ap_tensor *x, int ndim, const int64_t *shape); /* view; one dim may be -1 */
ap_tensor *ap_detach(ap_ctx *c, ap_tensor *x); /* shares data, no gradient */
ap_tensor *ap_copy(ap_ctx *c, ap_tensor *x);   /* a new buffer with the same values (gradient passes) */

/* Elementwise and broadcasting. Binary ops broadcast b to a when b's shape is
 * a suffix of a's shape with some dims equal to 1 (numpy rules for the
 * patterns the models need: [N,H,W,C] op [C], op [N,1,1,C], op [N,H,W,C]). */
ap_tensor *ap_add(ap_ctx *c, ap_tensor *a, ap_tensor *b);
ap_tensor *ap_sub(ap_ctx *c, ap_tensor *a, ap_tensor *b);
ap_tensor *ap_mul(ap_ctx *c, ap_tensor *a, ap_tensor *b);
ap_tensor *ap_scale(ap_ctx *c, ap_tensor *x, float s);               /* s*x */
ap_tensor *ap_axpby(ap_ctx *c, float alpha, ap_tensor *a, float beta, ap_tensor *b); /* same shapes */
ap_tensor *ap_silu(ap_ctx *c, ap_tensor *x);
ap_tensor *ap_gelu(ap_ctx *c, ap_tensor *x);       /* exact, erf */
ap_tensor *ap_quick_gelu(ap_ctx *c, ap_tensor *x); /* x*sigmoid(1.702x) */
ap_tensor *ap_geglu(ap_ctx *c, ap_tensor *x);      /* [...,2F] -> [...,F]: x[..,:F]*gelu(x[..,F:]) */
ap_tensor *ap_clamp(ap_ctx *c, ap_tensor *x, float lo, float hi);
ap_tensor *ap_softmax(ap_ctx *c, ap_tensor *x); /* over the last dim */
ap_tensor *ap_sum(ap_ctx *c, ap_tensor *x);     /* all elements -> [1] */
ap_tensor *ap_mean(ap_ctx *c, ap_tensor *x);    /* all elements -> [1] */
ap_tensor *ap_concat_channels(ap_ctx *c, ap_tensor *a, ap_tensor *b); /* on the last dim */
ap_tensor *ap_upsample_nearest2x(ap_ctx *c, ap_tensor *x);           /* [N,H,W,C] -> [N,2H,2W,C] */
/* Batch (first dim) concatenation [Na,...] + [Nb,...] -> [Na+Nb,...], and the
 * slice x[start : start+count] of the first dim (what classifier-free guidance
 * needs to run cond and uncond through one call with gradients). */
ap_tensor *ap_concat_batch(ap_ctx *c, ap_tensor *a, ap_tensor *b);
ap_tensor *ap_slice_batch(ap_ctx *c, ap_tensor *x, int64_t start, int64_t count);

/* Normalisation. x is [N, ..., C]: statistics per sample over all but the batch
 * dim for group norm (channels split into G contiguous groups), over the last
 * dim for layer norm. gamma, beta: [C] or NULL. */
ap_tensor *ap_group_norm(ap_ctx *c, ap_tensor *x, int groups, ap_tensor *gamma, ap_tensor *beta,
                         float eps);
ap_tensor *ap_layer_norm(ap_ctx *c, ap_tensor *x, ap_tensor *gamma, ap_tensor *beta, float eps);

/* Matrix products. linear: x [..., in], w [out, in], bias [out] or NULL -> [..., out].
 * matmul: a [..., M, K] (or [..., K, M] with trans_a), b [..., K, N] (or [..., N, K]
 * with trans_b); leading dims equal, or b has none (shared). */
ap_tensor *ap_linear(ap_ctx *c, ap_tensor *x, ap_tensor *w, ap_tensor *bias);
ap_tensor *ap_matmul(ap_ctx *c, ap_tensor *a, ap_tensor *b, int trans_a, int trans_b);

/* 2-D convolution, NHWC. x [N,H,W,Cin], w [Cout,Cin,kh,kw] (PyTorch order, as
 * stored in checkpoints), bias [Cout] or NULL. pad = {top, bottom, left, right}
 * (the VAE encoder's stride-2 convs use {0,1,0,1}). */
typedef struct {
    int stride;
    int pad[4];
} ap_conv_params;
ap_tensor *ap_conv2d(ap_ctx *c, ap_tensor *x, ap_tensor *w, ap_tensor *bias, ap_conv_params p);

/* Multi-head scaled dot-product attention, fused and tiled: never holds a full
 * T x S matrix. q [B,T,H*d], k and v [B,S,H*d]; head h uses channels h*d..h*d+d-1.
 * scale 0 means 1/sqrt(d). causal masks key s > query t (needs T == S). */
ap_tensor *ap_attention(ap_ctx *c, ap_tensor *q, ap_tensor *k, ap_tensor *v, int heads,
                        float scale, int causal);

/* Image resize, NHWC [N,H,W,C] -> [N,oh,ow,C], align_corners false, as
 * torch.nn.functional.interpolate with antialias (which only matters when
 * shrinking). */
typedef enum { AP_RESIZE_BILINEAR = 0, AP_RESIZE_BICUBIC = 1 } ap_resize_mode;
ap_tensor *ap_resize(ap_ctx *c, ap_tensor *x, int oh, int ow, ap_resize_mode mode, int antialias);

/* Forward-only. Sinusoidal timestep embedding: t [B] (f32) -> [B, dim];
 * freq_i = exp(-ln(max_period) * i / (dim/2 - shift)); flip_sin_to_cos puts the
 * cos half first (SD: flip 1, shift 0, max_period 10000). */
ap_tensor *ap_timestep_embedding(ap_ctx *c, ap_tensor *t, int dim, int flip_sin_to_cos,
                                 float shift, float max_period);
/* Embedding lookup: ids (i32 or i64) [...] , table [V, C] -> [..., C]. The
 * table gets a gradient when it requires one. */
ap_tensor *ap_embedding(ap_ctx *c, ap_tensor *ids, ap_tensor *table);

/* Reductions over the last dim and small pointwise ops (the rewards' building
 * blocks). sum_rows / mean_rows: x [..., K] -> [...] (a 1-D x gives [1]); each
 * row is summed in double in a fixed order, so results do not depend on the
 * thread count. abs: gradient sign(x), 0 at 0. sqrt: gradient 0.5/sqrt(x)
 * (+inf at 0; NaN below 0). log1p: log(1 + x), gradient 1/(1 + x) (NaN below
 * -1). add_scalar: x + s. */
ap_tensor *ap_sum_rows(ap_ctx *c, ap_tensor *x);
ap_tensor *ap_mean_rows(ap_ctx *c, ap_tensor *x);
ap_tensor *ap_abs(ap_ctx *c, ap_tensor *x);
ap_tensor *ap_square(ap_ctx *c, ap_tensor *x);
ap_tensor *ap_sqrt(ap_ctx *c, ap_tensor *x);
ap_tensor *ap_log1p(ap_ctx *c, ap_tensor *x);
ap_tensor *ap_add_scalar(ap_ctx *c, ap_tensor *x, float s);

/* What the CLIP rewards need beyond those. crop: x [N,H,W,C] -> the window
 * [N,h,w,C] whose top-left pixel is x[:, top, left] (it must fit inside x).
 * l2_normalize: each row of the last dim divided by max(its L2 norm, 1e-12),
 * as torch.nn.functional.normalize. */
ap_tensor *ap_crop(ap_ctx *c, ap_tensor *x, int64_t top, int64_t left, int64_t h, int64_t w);
ap_tensor *ap_l2_normalize(ap_ctx *c, ap_tensor *x);

/* ---------------------------------------------------------------- safetensors */
typedef struct ap_safetensors ap_safetensors;

/* Opens and validates a file (mmap). Every malformation is an error naming the
 * file and, where there is one, the tensor. */
ap_status ap_st_open(ap_ctx *c, const char *path, ap_safetensors **out);
void ap_st_close(ap_safetensors *st);
int ap_st_count(const ap_safetensors *st);
const char *ap_st_name(const ap_safetensors *st, int i);
int ap_st_find(const ap_safetensors *st, const char *name); /* index or -1 */
/* Stored dtype as a safetensors string ("F16", ...), ndim and shape of tensor i. */
const char *ap_st_dtype(const ap_safetensors *st, int i);
int ap_st_shape(const ap_safetensors *st, int i, int64_t *shape /* [AP_MAX_DIMS] */);
/* Raw stored bytes of tensor i (inside the mapping) and their length. */
const void *ap_st_raw(const ap_safetensors *st, int i, size_t *nbytes);
/* Loads tensor `name`, converting to dtype dt. */
ap_status ap_st_load(ap_ctx *c, const ap_safetensors *st, const char *name, ap_dtype dt,
                     ap_tensor **out);
/* __metadata__ value for key, or NULL. */
const char *ap_st_metadata(const ap_safetensors *st, const char *key);
int ap_st_metadata_count(const ap_safetensors *st);
const char *ap_st_metadata_key(const ap_safetensors *st, int i);

/* Writes n tensors (names[i] -> ts[i], stored in their own dtype) and optional
 * metadata (n_meta key/value pairs) atomically: a temporary file, flushed, then
 * renamed over path. */
ap_status ap_st_save(ap_ctx *c, const char *path, int n, const char *const *names,
                     ap_tensor *const *ts, int n_meta, const char *const *meta_keys,
                     const char *const *meta_values);

#ifdef __cplusplus
}
#endif
#endif /* ALIGNPROP_H */
