/* CPU kernels for the elementwise, reduction, normalisation and embedding ops.
 *
 * Plain functions with explicit dimensions; pointers carry their shapes in
 * comments. Gradient kernels take `acc` (the beta of ap_grad_acc): 0 means
 * write the destination without reading it (it is uninitialised), 1 means add
 * to it. Every kernel is deterministic and independent of the thread count:
 * reductions run over fixed blocks (chosen from the shape only) whose partial
 * sums are combined in a fixed order, in double.
 *
 * Kernels that need scratch memory return 0 on success and -1 when it could
 * not be allocated (the op turns that into an AP_ERR_NOMEM message). */
#ifndef AP_BACKEND_CPU_KERNELS_H
#define AP_BACKEND_CPU_KERNELS_H

#include <stdbool.h>
#include <stdint.h>

/* AVX-512 copies of hot loops are compiled with this attribute and chosen at
 * run time when ap_cpu_has_avx512() (the baseline build is x86-64-v3).
 * AP_CPU_ISA=avx2 in the environment, or ap_cpu_force_baseline(true) (for
 * tests), selects the baseline copies; both give the same bits, since no
 * kernel's summation order depends on the vector width. */
#define AP_CPU_AVX512 \
    __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,prefer-vector-width=512")))
bool ap_cpu_has_avx512(void);
void ap_cpu_force_baseline(bool on);
/* Defines name_v3 (baseline) and name_512 (AVX-512) from one always-inline
 * function name_body; callers pick one on the calling thread, before their
 * parallel loop. */
#define AP_CPU_MULTIVERSION(name, params, args)                                        \
    static void name##_v3 params { name##_body args; }                                 \
    AP_CPU_AVX512 static void name##_512 params { name##_body args; }

/* ------------------------------------------------------------ unary activations */
typedef enum {
    AP_ACT_SILU = 0,  /* x * sigmoid(x) */
    AP_ACT_GELU,      /* x * Phi(x), exact (erf) */
    AP_ACT_QUICK_GELU, /* x * sigmoid(1.702 x) */
    AP_ACT_CLAMP,     /* min(max(x, lo), hi); NaN passes through */
} ap_act;

/* y = act(x) over n elements. lo, hi are used by AP_ACT_CLAMP only. */
void ap_cpu_act_fwd(ap_act act, float *y, const float *x, int64_t n, float lo, float hi);
/* dx = acc*dx + dy * act'(x). For clamp, act' is 1 on [lo, hi] (inclusive), 0 outside. */
void ap_cpu_act_bwd(ap_act act, float *dx, const float *dy, const float *x, int64_t n, float lo,
                    float hi, float acc);

/* GEGLU: x [R, 2F] -> y [R, F], y = x[:, :F] * gelu(x[:, F:]). */
void ap_cpu_geglu_fwd(float *y, const float *x, int64_t R, int64_t F);
/* dx [R, 2F] = acc*dx + gradient of the above for dy [R, F]. */
void ap_cpu_geglu_bwd(float *dx, const float *dy, const float *x, int64_t R, int64_t F, float acc);

/* ------------------------------------------------------------ binary ops with broadcasting */
typedef enum { AP_BIN_ADD = 0, AP_BIN_SUB, AP_BIN_MUL } ap_binop;

/* a's shape collapsed into runs of dims where b is either present (bstride > 0)
 * or broadcast (bstride 0); adjacent runs alternate. size[nd-1] is the
 * innermost run; its bstride is 1 (b varies along it) or 0. b's offset for a's
 * flat row r (rows of length size[nd-1]) is the mixed-radix dot product of r's
 * digits with bstride[0..nd-2]. */
typedef struct {
    int nd;
    int64_t size[6];
    int64_t bstride[6];
    int64_t numel;   /* product of size */
    int64_t b_numel; /* elements of b */
} ap_bcast;

/* y [numel] = acc*y + (a op b), b broadcast to a's shape by p. */
void ap_cpu_binary(ap_binop op, float *y, const float *a, const float *b, const ap_bcast *p, float acc);
/* y = acc*y + s*x over n elements. */
void ap_cpu_scale_acc(float *y, const float *x, float s, int64_t n, float acc);
/* y = alpha*a + beta*b over n elements. */
void ap_cpu_axpby(float *y, float alpha, const float *a, float beta, const float *b, int64_t n);
/* The gradient of b in a broadcast op: db [b_numel] = acc*db + s * sum over the
 * broadcast dims of g (times m, when m is not NULL; g and m have a's shape). */
int ap_cpu_bcast_reduce(float *db, const float *g, const float *m, float s, const ap_bcast *p,
                        float acc);

/* ------------------------------------------------------------ reductions */
/* Sum of x [n] in double: fixed blocks summed in parallel, combined in order. */
double ap_cpu_sum(const float *x, int64_t n);
/* Sum of x[i] (* m[i] when m is not NULL) over n elements in double, on the
 * calling thread, in an order that depends on n only. */
double ap_cpu_dsum(const float *x, const float *m, int64_t n);
/* dx [n] = acc*dx + v. */
void ap_cpu_fill_acc(float *dx, float v, int64_t n, float acc);

/* ------------------------------------------------------------ layout */
/* y [R, Ca+Cb] = [a [R, Ca], b [R, Cb]] along the last dim. */
void ap_cpu_concat_fwd(float *y, const float *a, const float *b, int64_t R, int64_t Ca, int64_t Cb);
/* da [R, Ca] and db [R, Cb] (either may be NULL) from dy [R, Ca+Cb]. */
void ap_cpu_concat_bwd(float *da, float *db, const float *dy, int64_t R, int64_t Ca, int64_t Cb,
                       float acc_a, float acc_b);
/* y [N, 2H, 2W, C] = x [N, H, W, C] repeated 2x2. */
void ap_cpu_upsample2x_fwd(float *y, const float *x, int64_t N, int64_t H, int64_t W, int64_t C);
/* dx [N, H, W, C] = acc*dx + sum of the 2x2 block of dy [N, 2H, 2W, C]. */
void ap_cpu_upsample2x_bwd(float *dx, const float *dy, int64_t N, int64_t H, int64_t W, int64_t C,
                           float acc);

/* ------------------------------------------------------------ normalisation */
/* Group norm, NHWC. x, y [N, S, C] (S = all spatial positions); G groups of
 * C/G contiguous channels; gamma, beta [C] f32 or NULL (1 and 0). Saves
 * rstd [N, G] (biased variance, as torch.nn.GroupNorm) and mean [N, G] as an
 * offset from the group's first value x[n, 0, g*C/G], which keeps x - mean
 * exact to f32 rounding of the deviation. One statistics pass over x, one
 * normalising pass. */
int ap_cpu_group_norm_fwd(float *y, float *mean, float *rstd, const float *x, const float *gamma,
                          const float *beta, int64_t N, int64_t S, int64_t C, int64_t G, float eps);
/* Gradients of the above from dy [N, S, C], x and the saved mean, rstd. Any of
 * dx [N, S, C], dgamma [C], dbeta [C] may be NULL (not wanted: not computed);
 * each has its own accumulation factor. One reduction pass over (dy, x), one
 * pass writing dx. */
int ap_cpu_group_norm_bwd(float *dx, float *dgamma, float *dbeta, const float *dy, const float *x,
                          const float *mean, const float *rstd, const float *gamma, int64_t N,
                          int64_t S, int64_t C, int64_t G, float acc_dx, float acc_dgamma,
                          float acc_dbeta);

/* Layer norm over the last dim: x, y [R, C]; rstd [R]; mean [R] as an offset
 * from the row's first value x[r, 0] (as for group norm). */
int ap_cpu_layer_norm_fwd(float *y, float *mean, float *rstd, const float *x, const float *gamma,
                          const float *beta, int64_t R, int64_t C, float eps);
int ap_cpu_layer_norm_bwd(float *dx, float *dgamma, float *dbeta, const float *dy, const float *x,
                          const float *mean, const float *rstd, const float *gamma, int64_t R,
                          int64_t C, float acc_dx, float acc_dgamma, float acc_dbeta);

/* ------------------------------------------------------------ embeddings */
/* out [B, dim]: diffusers get_timestep_embedding of t [B]. */
void ap_cpu_timestep_embedding(float *out, const float *t, int64_t B, int64_t dim, int flip_sin_to_cos,
                               float shift, float max_period);
/* out [T, C] = table [V, C] rows ids [T]; the table is f32, bf16 or f16
 * (dtype an ap_dtype); ids are already checked to lie in [0, V). */
void ap_cpu_embedding_fwd(float *out, const int64_t *ids, const void *table, int table_dtype,
                          int64_t T, int64_t C);
/* dtable [V, C] = acc*dtable + scatter-add of dout [T, C] into rows ids [T],
 * in token order for every row (deterministic). */
void ap_cpu_embedding_bwd(float *dtable, const float *dout, const int64_t *ids, int64_t T,
                          int64_t V, int64_t C, float acc);

#endif
