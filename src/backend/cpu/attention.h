/* CPU kernels for fused multi-head attention and row softmax.
 *
 * The backend knows nothing of tensors or the tape: it takes plain pointers,
 * dimensions and a scratch buffer the caller allocates (so the caller's
 * allocator accounts for it). All float data is f32; bf16 is used only inside
 * the kernels, for the tile products, when the problem asks for it.
 *
 * Layouts: q [B,T,H*d], k and v [B,S,H*d], out [B,T,H*d] (head h uses channels
 * h*d .. h*d+d-1), lse [B,H,T]. The log-sum-exp is kept in base-2 units of the
 * scaled scores (log2(sum_s 2^(scale*log2(e)*q.k_s))), which is what the
 * backward consumes; it is an internal quantity.
 */
#ifndef AP_BACKEND_CPU_ATTENTION_H
#define AP_BACKEND_CPU_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int64_t B, T, S, H, d;
    float scale;  /* resolved (never 0) */
    int causal;   /* mask key s > query t; needs T == S */
    int bf16;     /* tile products in bf16 with f32 accumulation, when the CPU can */
    int nthreads; /* OpenMP threads to use (>= 1) */
} ap_attn_problem;

/* Scratch bytes the forward needs (64-byte aligned buffer). */
size_t ap_attn_forward_scratch(const ap_attn_problem *p);
/* out [B,T,H*d]; lse [B,H,T] or NULL when no backward will follow. */
void ap_attn_forward(const ap_attn_problem *p, const float *q, const float *k, const float *v,
                     float *out, float *lse, void *scratch);

/* Scratch bytes the backward needs for the gradients asked for. */
size_t ap_attn_backward_scratch(const ap_attn_problem *p, int need_q, int need_k, int need_v);
/* FlashAttention-2 style backward. dq/dk/dv may be NULL (not needed); each is
 * written (beta 0: never read) or added to (beta 1). */
void ap_attn_backward(const ap_attn_problem *p, const float *q, const float *k, const float *v,
                      const float *out, const float *lse, const float *dout, float *dq, float beta_q,
                      float *dk, float beta_k, float *dv, float beta_v, void *scratch);

/* Softmax over rows of n elements: y [rows, n]. */
void ap_softmax_rows_forward(const float *x, float *y, int64_t rows, int64_t n, int nthreads);
/* dx = beta*dx + y*(dy - sum(dy*y)) per row. */
void ap_softmax_rows_backward(const float *y, const float *dy, float *dx, float beta, int64_t rows,
                              int64_t n, int nthreads);

/* Instruction-set paths of the attention kernels. The best one the CPU has is
 * used; tests lower it to exercise the fallbacks. AMX_EMU runs the AMX tile
 * code on a software model of the tiles (tests only: very slow). */
typedef enum {
    AP_ATTN_ISA_GENERIC = 0, /* portable C, f32 only */
    AP_ATTN_ISA_AVX512 = 1,  /* AVX-512F f32 */
    AP_ATTN_ISA_AVX512_BF16 = 2, /* + vdpbf16ps for bf16 tile products */
    AP_ATTN_ISA_AMX = 3,     /* + AMX-BF16 tiles for bf16 tile products */
    AP_ATTN_ISA_AMX_EMU = 4  /* AMX tile code on emulated tiles */
} ap_attn_isa;

/* The best path this CPU (and OS) supports. */
ap_attn_isa ap_attn_isa_best(void);
/* The path in use. */
ap_attn_isa ap_attn_isa_get(void);
/* Sets the path (clamped to what the CPU supports, except AMX_EMU which any
 * AVX512-BF16 CPU can run); returns the one now in use. Not thread-safe: for
 * tests and benchmarks, between calls. */
ap_attn_isa ap_attn_isa_set(ap_attn_isa isa);
const char *ap_attn_isa_name(ap_attn_isa isa);
/* Tile-rule violations the AMX model has seen (a tile used before its
 * configuration, mismatched tile shapes, unpadded operands); 0 when correct. */
int ap_attn_amx_emu_faults(void);

#endif
