/* The oneDNN backend: convolutions and matrix products, f32 or bf16 with f32
 * accumulation, called by core/ops_conv.c and core/ops_linear.c.
 *
 * Activations come in and go out as dense f32 (NHWC for convolutions). In bf16
 * mode (ap_dnnl_use_bf16) the backend converts sources and incoming gradients
 * to bf16 temporaries itself; outputs stay f32. Weights arrive as ap_tensor
 * (f32, bf16 or f16, PyTorch layout) and are packed once into the layout the
 * chosen oneDNN implementation wants, cached on the tensor (ap_tensor_packed)
 * until ap_tensor_touch bumps its version.
 *
 * Every output pointer comes with a beta (the rule of core/internal.h): 0
 * writes without reading the destination, 1 adds to it. A NULL output means
 * "not wanted" and its kernel does not run.
 *
 * All functions return AP_OK or set the context's error (AP_ERR_BACKEND for a
 * oneDNN failure, with the op and shapes in the message) and return it. */
#ifndef AP_BACKEND_CPU_DNNL_H
#define AP_BACKEND_CPU_DNNL_H

#include "backend/cpu/convert.h" /* ap_cpu_f32_to_bf16 */
#include "core/internal.h"

/* Geometry of one 2-D convolution; x [n,h,w,cin] NHWC, w [cout,cin,kh,kw],
 * y [n,oh,ow,cout] with oh = (h + pad[0] + pad[1] - kh) / stride + 1 (and the
 * same for ow with pad[2], pad[3]). */
typedef struct {
    int64_t n, h, w, cin;
    int64_t cout, kh, kw;
    int64_t oh, ow;
    int64_t stride;
    int64_t pad[4]; /* top, bottom, left, right */
} ap_conv_geom;

/* y = conv(x, w) + bias. bias [cout] f32 or NULL. */
ap_status ap_dnnl_conv_forward(ap_ctx *c, const ap_conv_geom *g, const float *x /* [n,h,w,cin] */, ap_tensor *w,
                               const float *bias /* [cout] */, float *y /* [n,oh,ow,cout] */);

/* The gradients of a convolution from dy, each only when its pointer is
 * non-NULL: dx (needs w), dw (needs x; layout [cout,cin,kh,kw]) and db. dy is
 * converted to bf16 once for all of them in bf16 mode. */
ap_status ap_dnnl_conv_backward(ap_ctx *c, const ap_conv_geom *g, const float *dy /* [n,oh,ow,cout] */,
                                ap_tensor *w, float *dx /* [n,h,w,cin] */, float beta_x,
                                const float *x /* [n,h,w,cin] */, float *dw /* [cout,cin,kh,kw] */, float beta_w,
                                float *db /* [cout] */, float beta_b);

/* One operand of ap_dnnl_matmul: element (b, r, col) is at
 * data[b*sb + r*sr + col*sc]; sb 0 shares one matrix across the batch. One of
 * sr, sc must be 1. dtype is AP_F32 or AP_BF16. */
typedef struct {
    const void *data;
    ap_dtype dtype;
    int64_t sb, sr, sc;
} ap_dnnl_mat;

/* out[b] = beta*out[b] + a[b] (m x k) * b[b] (k x n) (+ bias, broadcast over
 * rows). out is dense [batch, m, n] f32; bias [n] f32 or NULL. In f32 mode a
 * bf16 operand is widened; in bf16 mode an f32 one is narrowed. op names the
 * calling op in error messages. */
ap_status ap_dnnl_matmul(ap_ctx *c, const char *op, int64_t batch, int64_t m, int64_t n, int64_t k,
                         const ap_dnnl_mat *a, const ap_dnnl_mat *b, const float *bias, float *out, float beta);

/* y = x w^T + bias with w [out,in] a weight tensor (packed and cached).
 * bias [out] f32 or NULL. */
ap_status ap_dnnl_linear_forward(ap_ctx *c, int64_t rows, int64_t in, int64_t out, const float *x /* [rows,in] */,
                                 ap_tensor *w, const float *bias /* [out] */, float *y /* [rows,out] */);

/* Gradients of ap_dnnl_linear_forward, each only when its pointer is
 * non-NULL: dx = dy w (needs w), dw = dy^T x (needs x), db = column sums of dy. */
ap_status ap_dnnl_linear_backward(ap_ctx *c, int64_t rows, int64_t in, int64_t out,
                                  const float *dy /* [rows,out] */, ap_tensor *w, float *dx /* [rows,in] */,
                                  float beta_x, const float *x /* [rows,in] */, float *dw /* [out,in] */,
                                  float beta_w, float *db /* [out] */, float beta_b);

/* True when the context computes conv and matmul in bf16: bf16 precision and
 * a CPU with bf16 dot products (AVX512-BF16 or AMX); otherwise f32. */
bool ap_dnnl_use_bf16(const ap_ctx *c);

/* dst = beta*dst + column sums of src, in a fixed order (deterministic for
 * any thread count). */
void ap_cpu_sum_rows(float *dst /* [cols] */, const float *src /* [rows,cols] */, int64_t rows, int64_t cols,
                     float beta);

/* Counters, for tests and benchmarks: primitives executed by kind, primitive
 * cache hits and misses; weight packings into the cache (packs) and into
 * per-call temporaries (packs_transient, when the budget of ap_set_pack_cache
 * has no room), lookups served by the cache (pack_hits), cached copies freed
 * to make room (pack_evictions), the bytes cached now (pack_bytes) and the
 * size of the buffer that per-call packings reuse (pack_scratch_bytes). */
typedef struct {
    int64_t conv_fwd, conv_bwd_data, conv_bwd_weights, matmul;
    int64_t cache_hits, cache_misses, packs;
    int64_t packs_transient, pack_hits, pack_evictions, pack_bytes, pack_scratch_bytes;
} ap_dnnl_stats;
ap_dnnl_stats ap_dnnl_get_stats(ap_ctx *c);
/* Turns this context's primitive cache on (default) or off (every call then
 * builds and destroys its primitive; for measuring what the cache saves). */
void ap_dnnl_set_cache(ap_ctx *c, bool on);
/* The name of the oneDNN implementation the last executed primitive used
 * ("brgconv:avx512_core_bf16", ...), or "" (for tests and benchmarks). */
const char *ap_dnnl_last_impl(ap_ctx *c);

#endif
