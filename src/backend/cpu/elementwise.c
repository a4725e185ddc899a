/* Elementwise, broadcast, reduction, layout and embedding kernels.
 *
 * These ops are memory-bound at Stable Diffusion shapes, so every kernel is
 * one streaming pass. Work is split into fixed chunks of CHUNK elements
 * (statically scheduled, so each thread streams one contiguous range); arrays
 * under PAR_MIN elements stay on the calling thread because waking the OpenMP
 * team costs more than the work.
 *
 * The transcendental functions (exp, the normal CDF) are written out as
 * polynomials so the compiler vectorises them: a call to libm's expf in the
 * loop would make silu compute-bound at a few GB/s. Each hot loop body is
 * compiled twice, for the x86-64-v3 baseline (AVX2) and for AVX-512, and the
 * AVX-512 copy is chosen at run time when the CPU has it.
 *
 * Accumulation rule (see core/internal.h): a gradient kernel with acc == 0
 * writes its destination and never reads it; with acc == 1 it adds. */
#include "backend/cpu/cpu_kernels.h"

#include "alignprop.h"

#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK 16384
#define PAR_MIN 32768

#define AI static inline __attribute__((always_inline))
#define MULTIVERSION AP_CPU_MULTIVERSION

static int g_avx512 = -1; /* -1: not yet detected */

bool ap_cpu_has_avx512(void) {
    if (g_avx512 < 0) { /* first call comes from the calling thread, before any parallel region */
        __builtin_cpu_init();
        const char *isa = getenv("AP_CPU_ISA");
        g_avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                   __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                   !(isa && !strcmp(isa, "avx2"));
    }
    return g_avx512 != 0;
}

void ap_cpu_force_baseline(bool on) { g_avx512 = on ? 0 : -1; }

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* ------------------------------------------------------------ vector math
 * exp: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, and a degree-6
 * polynomial for e^r (the Cephes expf coefficients, ~1 ulp). n is rounded
 * with the 1.5*2^23 trick and 2^n is built from the bits, so the loop needs
 * no libm call and no float->int conversion. */

/* e^(a + b), where a may be large and b is small (|b| < ~4): the reduction
 * is done on a alone (n ln2 is subtracted exactly) and b is added to the
 * reduced argument, so a sum a + b that is not representable loses nothing.
 * The polynomial runs on a + b clamped to [-87, 88] (2^n stays a normal
 * float); outside it the result is 0 or +inf, so that x / (1 + exp(-x)) and
 * x * exp(-x*x) go to 0 without overflowing into NaN. NaN stays NaN. Values
 * below ~1e-37 are lost, which no use here can see. */
AI float vexp2(float a, float b) {
    float s = a + b;
    float sc = s < -87.0f ? -87.0f : s;
    sc = sc > 88.0f ? 88.0f : sc;
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float t = sc * 1.44269504088896341f + magic;
    float n = t - magic;
    float r = (a - n * 0.693359375f) - n * -2.12194440e-4f + b;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float e = p * (r * r) + r + 1.0f;
    uint32_t bits;
    memcpy(&bits, &t, 4);
    bits = (bits - 0x4B400000u + 127u) << 23; /* n + 127 in [1, 254] (unsigned: NaN wraps harmlessly) */
    float sf;
    memcpy(&sf, &bits, 4);
    e *= sf;
    e = s < -87.0f ? 0.0f : e;
    return s > 88.0f ? INFINITY : e;
}

AI float vexp(float x) { return vexp2(x, 0.0f); }

/* e^x for |x| < 2 (no range handling). */
AI float vexp_small(float x) {
    const float magic = 12582912.0f;
    float t = x * 1.44269504088896341f + magic;
    float n = t - magic;
    float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float e = p * (r * r) + r + 1.0f;
    uint32_t bits;
    memcpy(&bits, &t, 4);
    bits = (bits - 0x4B400000u + 127u) << 23;
    float sf;
    memcpy(&sf, &bits, 4);
    return e * sf;
}

AI float vsigmoid(float x) { return 1.0f / (1.0f + vexp(-x)); }

/* The standard normal CDF Phi(x) = erfc(-x/sqrt2)/2 must stay accurate in
 * relative terms in both tails (gelu(x) = x Phi(x) for x << 0). erfc(z) =
 * t exp(-z^2 + P(t)), t = 1/(1 + z/2), with the Chebyshev fit P of Numerical
 * Recipes' erfcc (fractional error < 1.2e-7 for all z >= 0). z^2 = x^2/2 is
 * split exactly into h/2 + l/2 (l by FMA) and handed to vexp2 as the large
 * and the small part, so the rounding of x^2 costs nothing in the tails. */
typedef struct {
    float t, p, h, l; /* t, P(t), x*x = h + l */
} erfc_parts;

AI erfc_parts verfc_parts(float x) {
    erfc_parts e;
    float z = fabsf(x) * 0.70710678118654752f;
    e.t = 1.0f / (1.0f + 0.5f * z);
    float p = 0.17087277f, t = e.t;
    p = p * t - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    e.p = p * t - 1.26551223f;
    e.h = x * x;
    e.l = fmaf(x, x, -e.h);
    e.l = e.h < 256.0f ? e.l : 0.0f; /* beyond, the result is 0 (and l may be inf) */
    return e;
}

AI float vgelu(float x) {
    erfc_parts e = verfc_parts(x);
    float half_erfc = 0.5f * e.t * vexp2(-0.5f * e.h, e.p - 0.5f * e.l);
    return x * (x < 0.0f ? half_erfc : 1.0f - half_erfc);
}

/* Phi(x) and the density phi(x), sharing exp(-x^2/2). */
AI float vcdf_pdf(float x, float *pdf) {
    erfc_parts e = verfc_parts(x);
    float g = vexp2(-0.5f * e.h, -0.5f * e.l); /* exp(-x^2/2) */
    float half_erfc = 0.5f * e.t * vexp_small(e.p) * g;
    *pdf = 0.39894228040143268f * g;
    return x < 0.0f ? half_erfc : 1.0f - half_erfc;
}

/* d/dx x Phi(x) = Phi(x) + x phi(x) */
AI float vgelu_grad(float x) {
    float pdf, cdf = vcdf_pdf(x, &pdf);
    return cdf + x * pdf;
}

/* Emits the write loop (acc == 0: never reads dst) and the add loop. */
#define ACC_LOOP(n, acc, dst, EXPR)                                                    \
    do {                                                                               \
        if ((acc) == 0.0f) {                                                           \
            _Pragma("omp simd") for (int64_t i = 0; i < (n); i++)(dst)[i] = (EXPR);     \
        } else {                                                                       \
            _Pragma("omp simd") for (int64_t i = 0; i < (n); i++)(dst)[i] += (EXPR);    \
        }                                                                              \
    } while (0)

/* ------------------------------------------------------------ activations */
AI void act_fwd_body(ap_act act, float *restrict y, const float *restrict x, int64_t n, float lo,
                     float hi) {
    switch (act) {
    case AP_ACT_SILU:
#pragma omp simd
        for (int64_t i = 0; i < n; i++) y[i] = x[i] / (1.0f + vexp(-x[i]));
        break;
    case AP_ACT_GELU:
#pragma omp simd
        for (int64_t i = 0; i < n; i++) y[i] = vgelu(x[i]);
        break;
    case AP_ACT_QUICK_GELU:
#pragma omp simd
        for (int64_t i = 0; i < n; i++) y[i] = x[i] / (1.0f + vexp(-1.702f * x[i]));
        break;
    case AP_ACT_CLAMP:
#pragma omp simd
        for (int64_t i = 0; i < n; i++) y[i] = x[i] < lo ? lo : (x[i] > hi ? hi : x[i]);
        break;
    }
}

AI float silu_grad(float x) {
    float s = vsigmoid(x);
    return s * (1.0f + x * (1.0f - s));
}
AI float quick_gelu_grad(float x) {
    float s = vsigmoid(1.702f * x);
    return s + x * (1.702f * s * (1.0f - s)); /* x * 0, not inf * 0, for x << 0 */
}

AI void act_bwd_body(ap_act act, float *restrict dx, const float *restrict dy,
                     const float *restrict x, int64_t n, float lo, float hi, float acc) {
    switch (act) {
    case AP_ACT_SILU: ACC_LOOP(n, acc, dx, dy[i] * silu_grad(x[i])); break;
    case AP_ACT_GELU: ACC_LOOP(n, acc, dx, dy[i] * vgelu_grad(x[i])); break;
    case AP_ACT_QUICK_GELU: ACC_LOOP(n, acc, dx, dy[i] * quick_gelu_grad(x[i])); break;
    case AP_ACT_CLAMP: ACC_LOOP(n, acc, dx, (x[i] >= lo && x[i] <= hi) ? dy[i] : 0.0f); break;
    }
}

MULTIVERSION(act_fwd, (ap_act act, float *restrict y, const float *restrict x, int64_t n, float lo, float hi),
             (act, y, x, n, lo, hi))
MULTIVERSION(act_bwd,
             (ap_act act, float *restrict dx, const float *restrict dy, const float *restrict x,
              int64_t n, float lo, float hi, float acc),
             (act, dx, dy, x, n, lo, hi, acc))

void ap_cpu_act_fwd(ap_act act, float *y, const float *x, int64_t n, float lo, float hi) {
    void (*f)(ap_act, float *restrict, const float *restrict, int64_t, float, float) =
        ap_cpu_has_avx512() ? act_fwd_512 : act_fwd_v3;
    int64_t nch = (n + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (int64_t k = 0; k < nch; k++) {
        int64_t s = k * CHUNK;
        f(act, y + s, x + s, min64(CHUNK, n - s), lo, hi);
    }
}

void ap_cpu_act_bwd(ap_act act, float *dx, const float *dy, const float *x, int64_t n, float lo,
                    float hi, float acc) {
    void (*f)(ap_act, float *restrict, const float *restrict, const float *restrict, int64_t, float,
              float, float) = ap_cpu_has_avx512() ? act_bwd_512 : act_bwd_v3;
    int64_t nch = (n + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (int64_t k = 0; k < nch; k++) {
        int64_t s = k * CHUNK;
        f(act, dx + s, dy + s, x + s, min64(CHUNK, n - s), lo, hi, acc);
    }
}

/* ------------------------------------------------------------ geglu */
AI void geglu_fwd_body(float *restrict y, const float *restrict x, int64_t r0, int64_t r1, int64_t F) {
    for (int64_t r = r0; r < r1; r++) {
        const float *h = x + r * 2 * F, *g = h + F;
        float *o = y + r * F;
#pragma omp simd
        for (int64_t i = 0; i < F; i++) o[i] = h[i] * vgelu(g[i]);
    }
}

AI void geglu_bwd_body(float *restrict dx, const float *restrict dy, const float *restrict x,
                       int64_t r0, int64_t r1, int64_t F, float acc) {
    for (int64_t r = r0; r < r1; r++) {
        const float *restrict h = x + r * 2 * F, *restrict g = h + F, *restrict d = dy + r * F;
        float *restrict dh = dx + r * 2 * F, *restrict dg = dh + F;
        /* one erfc evaluation serves gelu(g) (for dh) and gelu'(g) (for dg) */
        if (acc == 0.0f) {
#pragma omp simd
            for (int64_t i = 0; i < F; i++) {
                float pdf, cdf = vcdf_pdf(g[i], &pdf);
                dh[i] = d[i] * (g[i] * cdf);
                dg[i] = d[i] * h[i] * (cdf + g[i] * pdf);
            }
        } else {
#pragma omp simd
            for (int64_t i = 0; i < F; i++) {
                float pdf, cdf = vcdf_pdf(g[i], &pdf);
                dh[i] += d[i] * (g[i] * cdf);
                dg[i] += d[i] * h[i] * (cdf + g[i] * pdf);
            }
        }
    }
}

MULTIVERSION(geglu_fwd, (float *restrict y, const float *restrict x, int64_t r0, int64_t r1, int64_t F),
             (y, x, r0, r1, F))
MULTIVERSION(geglu_bwd,
             (float *restrict dx, const float *restrict dy, const float *restrict x, int64_t r0,
              int64_t r1, int64_t F, float acc),
             (dx, dy, x, r0, r1, F, acc))

/* Rows per parallel chunk so a chunk holds about CHUNK elements. */
static int64_t rows_per_chunk(int64_t row_len) { return row_len >= CHUNK ? 1 : CHUNK / (row_len ? row_len : 1); }

void ap_cpu_geglu_fwd(float *y, const float *x, int64_t R, int64_t F) {
    void (*f)(float *restrict, const float *restrict, int64_t, int64_t, int64_t) =
        ap_cpu_has_avx512() ? geglu_fwd_512 : geglu_fwd_v3;
    int64_t rc = rows_per_chunk(3 * F), nch = (R + rc - 1) / rc;
#pragma omp parallel for schedule(static) if (R * F > PAR_MIN / 2)
    for (int64_t k = 0; k < nch; k++) f(y, x, k * rc, min64(R, (k + 1) * rc), F);
}

void ap_cpu_geglu_bwd(float *dx, const float *dy, const float *x, int64_t R, int64_t F, float acc) {
    void (*f)(float *restrict, const float *restrict, const float *restrict, int64_t, int64_t, int64_t,
              float) = ap_cpu_has_avx512() ? geglu_bwd_512 : geglu_bwd_v3;
    int64_t rc = rows_per_chunk(5 * F), nch = (R + rc - 1) / rc;
#pragma omp parallel for schedule(static) if (R * F > PAR_MIN / 4)
    for (int64_t k = 0; k < nch; k++) f(dx, dy, x, k * rc, min64(R, (k + 1) * rc), F, acc);
}

/* ------------------------------------------------------------ binary ops */
/* b's offset for a's row r (rows of length size[nd-1]). */
static inline int64_t bcast_row_offset(const ap_bcast *p, int64_t r) {
    int64_t off = 0;
    for (int k = p->nd - 2; k >= 0; k--) {
        off += (r % p->size[k]) * p->bstride[k];
        r /= p->size[k];
    }
    return off;
}

AI void binary_row(ap_binop op, float *restrict y, const float *restrict a, const float *restrict b,
                   bool bvec, int64_t n, float acc) {
    if (bvec) {
        switch (op) {
        case AP_BIN_ADD: ACC_LOOP(n, acc, y, a[i] + b[i]); break;
        case AP_BIN_SUB: ACC_LOOP(n, acc, y, a[i] - b[i]); break;
        case AP_BIN_MUL: ACC_LOOP(n, acc, y, a[i] * b[i]); break;
        }
    } else {
        const float v = b[0];
        switch (op) {
        case AP_BIN_ADD: ACC_LOOP(n, acc, y, a[i] + v); break;
        case AP_BIN_SUB: ACC_LOOP(n, acc, y, a[i] - v); break;
        case AP_BIN_MUL: ACC_LOOP(n, acc, y, a[i] * v); break;
        }
    }
}

/* Elements [s, e) of y = acc*y + a op b, walking a's rows. */
AI void binary_body(ap_binop op, float *restrict y, const float *restrict a, const float *restrict b,
                    const ap_bcast *p, float acc, int64_t s, int64_t e) {
    const int64_t L = p->size[p->nd - 1];
    const bool bvec = p->bstride[p->nd - 1] != 0;
    int64_t r = s / L, j = s % L;
    while (s < e) {
        int64_t len = min64(L - j, e - s);
        binary_row(op, y + s, a + s, b + bcast_row_offset(p, r) + (bvec ? j : 0), bvec, len, acc);
        s += len;
        r++;
        j = 0;
    }
}

MULTIVERSION(binary,
             (ap_binop op, float *restrict y, const float *restrict a, const float *restrict b,
              const ap_bcast *p, float acc, int64_t s, int64_t e),
             (op, y, a, b, p, acc, s, e))

void ap_cpu_binary(ap_binop op, float *y, const float *a, const float *b, const ap_bcast *p, float acc) {
    void (*f)(ap_binop, float *restrict, const float *restrict, const float *restrict, const ap_bcast *,
              float, int64_t, int64_t) = ap_cpu_has_avx512() ? binary_512 : binary_v3;
    int64_t n = p->numel, nch = (n + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (int64_t k = 0; k < nch; k++) f(op, y, a, b, p, acc, k * CHUNK, min64(n, (k + 1) * CHUNK));
}

void ap_cpu_scale_acc(float *y, const float *x, float s, int64_t n, float acc) {
    int64_t nch = (n + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (int64_t k = 0; k < nch; k++) {
        int64_t b = k * CHUNK, m = min64(CHUNK, n - b);
        float *restrict yy = y + b;
        const float *restrict xx = x + b;
        ACC_LOOP(m, acc, yy, s * xx[i]);
    }
}

void ap_cpu_axpby(float *y, float alpha, const float *a, float beta, const float *b, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) y[i] = alpha * a[i] + beta * b[i];
}

void ap_cpu_fill_acc(float *dx, float v, int64_t n, float acc) {
    int64_t nch = (n + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (int64_t k = 0; k < nch; k++) {
        float *restrict d = dx + k * CHUNK;
        ACC_LOOP(min64(CHUNK, n - k * CHUNK), acc, d, v);
    }
}

/* ------------------------------------------------------------ reductions */
/* 8 independent lanes combined in a fixed tree: the order depends only on n. */
double ap_cpu_dsum(const float *restrict x, const float *restrict m, int64_t n) {
    double l[8] = {0};
    int64_t i = 0;
    if (m) {
        for (; i + 8 <= n; i += 8)
            for (int k = 0; k < 8; k++) l[k] += (double)x[i + k] * (double)m[i + k];
        for (int k = 0; i < n; i++, k++) l[k] += (double)x[i] * (double)m[i];
    } else {
        for (; i + 8 <= n; i += 8)
            for (int k = 0; k < 8; k++) l[k] += (double)x[i + k];
        for (int k = 0; i < n; i++, k++) l[k] += (double)x[i];
    }
    return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

/* At most 256 blocks of at least CHUNK elements: the block size depends on n
 * only, so the result is the same for any thread count. */
static double sum_blocked(const float *x, const float *m, int64_t n) {
    int64_t bs = (n + 255) / 256;
    if (bs < CHUNK) bs = CHUNK;
    int64_t nb = (n + bs - 1) / bs;
    double part[256];
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (int64_t k = 0; k < nb; k++) {
        int64_t s = k * bs;
        part[k] = ap_cpu_dsum(x + s, m ? m + s : NULL, min64(bs, n - s));
    }
    double t = 0;
    for (int64_t k = 0; k < nb; k++) t += part[k];
    return t;
}

double ap_cpu_sum(const float *x, int64_t n) { return sum_blocked(x, NULL, n); }

/* db = acc*db + s * (sum of g (*m) over the broadcast dims). Three shapes:
 *  - no broadcast: elementwise;
 *  - b varies along a's rows ([C], [N,1,1,C], [N,1,C]): every b element sums
 *    its column over a's rows in row order; threads own disjoint column
 *    ranges, so the order (and result) does not depend on the thread count;
 *  - b is constant along a's rows (a scalar, [N,H,W,1]): row sums first (in
 *    parallel, each in a fixed order), then added into b in row order. */
int ap_cpu_bcast_reduce(float *db, const float *g, const float *m, float s, const ap_bcast *p,
                        float acc) {
    const int64_t n = p->numel, nb = p->b_numel, L = p->size[p->nd - 1];
    if (n == 0) {
        ap_cpu_fill_acc(db, 0.0f, nb, acc); /* acc*db + 0 */
        return 0;
    }
    if (p->nd == 1 && p->bstride[0] == 1) { /* same shape */
        if (m) {
            int64_t nch = (n + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
            for (int64_t k = 0; k < nch; k++) {
                int64_t b = k * CHUNK, len = min64(CHUNK, n - b);
                float *restrict d = db + b;
                const float *restrict gg = g + b, *restrict mm = m + b;
                ACC_LOOP(len, acc, d, s * (gg[i] * mm[i]));
            }
        } else {
            ap_cpu_scale_acc(db, g, s, n, acc);
        }
        return 0;
    }
    const int64_t rows = n / L;
    double *dacc = calloc((size_t)nb, sizeof *dacc);
    if (!dacc) return -1;
    if (p->bstride[p->nd - 1] != 0) {
#pragma omp parallel if (n > PAR_MIN && L >= 64)
        {
            int nt = omp_get_num_threads(), t = omp_get_thread_num();
            int64_t c0 = L * t / nt, c1 = L * (t + 1) / nt;
            for (int64_t r = 0; r < rows; r++) {
                const float *gr = g + r * L, *mr = m ? m + r * L : NULL;
                double *d = dacc + bcast_row_offset(p, r);
                if (mr) {
#pragma omp simd
                    for (int64_t j = c0; j < c1; j++) d[j] += (double)gr[j] * (double)mr[j];
                } else {
#pragma omp simd
                    for (int64_t j = c0; j < c1; j++) d[j] += (double)gr[j];
                }
            }
        }
    } else if (rows == 1) {
        dacc[0] = sum_blocked(g, m, n);
    } else {
        double *rs = malloc((size_t)rows * sizeof *rs);
        if (!rs) {
            free(dacc);
            return -1;
        }
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
        for (int64_t r = 0; r < rows; r++) rs[r] = ap_cpu_dsum(g + r * L, m ? m + r * L : NULL, L);
        for (int64_t r = 0; r < rows; r++) dacc[bcast_row_offset(p, r)] += rs[r];
        free(rs);
    }
    if (acc == 0.0f)
        for (int64_t k = 0; k < nb; k++) db[k] = (float)(s * dacc[k]);
    else
        for (int64_t k = 0; k < nb; k++) db[k] += (float)(s * dacc[k]);
    free(dacc);
    return 0;
}

/* ------------------------------------------------------------ layout */
void ap_cpu_concat_fwd(float *y, const float *a, const float *b, int64_t R, int64_t Ca, int64_t Cb) {
    const int64_t C = Ca + Cb;
#pragma omp parallel for schedule(static) if (R * C > PAR_MIN)
    for (int64_t r = 0; r < R; r++) {
        memcpy(y + r * C, a + r * Ca, (size_t)Ca * sizeof(float));
        memcpy(y + r * C + Ca, b + r * Cb, (size_t)Cb * sizeof(float));
    }
}

void ap_cpu_concat_bwd(float *da, float *db, const float *dy, int64_t R, int64_t Ca, int64_t Cb,
                       float acc_a, float acc_b) {
    const int64_t C = Ca + Cb;
#pragma omp parallel for schedule(static) if (R * C > PAR_MIN)
    for (int64_t r = 0; r < R; r++) {
        const float *src = dy + r * C;
        if (da) {
            float *restrict d = da + r * Ca;
            ACC_LOOP(Ca, acc_a, d, src[i]);
        }
        if (db) {
            float *restrict d = db + r * Cb;
            const float *restrict s2 = src + Ca;
            ACC_LOOP(Cb, acc_b, d, s2[i]);
        }
    }
}

void ap_cpu_upsample2x_fwd(float *y, const float *x, int64_t N, int64_t H, int64_t W, int64_t C) {
    const int64_t row = 2 * W * C; /* one output row */
#pragma omp parallel for schedule(static) if (N * H * W * C > PAR_MIN / 4)
    for (int64_t nh = 0; nh < N * H; nh++) {
        const float *src = x + nh * W * C;
        float *dst = y + nh * 2 * row;
        for (int64_t w = 0; w < W; w++) {
            memcpy(dst + (2 * w) * C, src + w * C, (size_t)C * sizeof(float));
            memcpy(dst + (2 * w + 1) * C, src + w * C, (size_t)C * sizeof(float));
        }
        memcpy(dst + row, dst, (size_t)row * sizeof(float));
    }
}

void ap_cpu_upsample2x_bwd(float *dx, const float *dy, int64_t N, int64_t H, int64_t W, int64_t C,
                           float acc) {
    const int64_t row = 2 * W * C;
#pragma omp parallel for schedule(static) if (N * H * W * C > PAR_MIN / 4)
    for (int64_t nh = 0; nh < N * H; nh++) {
        const float *t = dy + nh * 2 * row, *u = t + row;
        for (int64_t w = 0; w < W; w++) {
            const float *restrict t0 = t + 2 * w * C, *restrict t1 = t0 + C, *restrict u0 = u + 2 * w * C,
                                  *restrict u1 = u0 + C;
            float *restrict d = dx + (nh * W + w) * C;
            ACC_LOOP(C, acc, d, (t0[i] + t1[i]) + (u0[i] + u1[i]));
        }
    }
}

/* ------------------------------------------------------------ embeddings */
/* Follows diffusers' get_timestep_embedding step by step in f32 (exponent,
 * exp, t * freq), so the angle is the one PyTorch feeds to sin/cos; sin and
 * cos of that angle are then computed in double and rounded once. */
void ap_cpu_timestep_embedding(float *out, const float *t, int64_t B, int64_t dim, int flip_sin_to_cos,
                               float shift, float max_period) {
    const int64_t half = dim / 2;
    const float neg_log = -logf(max_period), denom = (float)half - shift;
    for (int64_t b = 0; b < B; b++) {
        float *o = out + b * dim;
        for (int64_t i = 0; i < half; i++) {
            float freq = expf(neg_log * (float)i / denom);
            double ang = (double)(t[b] * freq);
            float sv = (float)sin(ang), cv = (float)cos(ang);
            o[i] = flip_sin_to_cos ? cv : sv;
            o[half + i] = flip_sin_to_cos ? sv : cv;
        }
        if (dim & 1) o[dim - 1] = 0.0f;
    }
}

static inline float f16_to_f32(uint16_t h) { return _cvtsh_ss(h); }
static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

void ap_cpu_embedding_fwd(float *out, const int64_t *ids, const void *table, int table_dtype,
                          int64_t T, int64_t C) {
#pragma omp parallel for schedule(static) if (T * C > PAR_MIN)
    for (int64_t t = 0; t < T; t++) {
        float *o = out + t * C;
        if (table_dtype == AP_F32) {
            memcpy(o, (const float *)table + ids[t] * C, (size_t)C * sizeof(float));
        } else {
            const uint16_t *src = (const uint16_t *)table + ids[t] * C;
            if (table_dtype == AP_BF16)
                for (int64_t c = 0; c < C; c++) o[c] = bf16_to_f32(src[c]);
            else
                for (int64_t c = 0; c < C; c++) o[c] = f16_to_f32(src[c]);
        }
    }
}

void ap_cpu_embedding_bwd(float *dtable, const float *dout, const int64_t *ids, int64_t T, int64_t V,
                          int64_t C, float acc) {
    if (acc == 0.0f) memset(dtable, 0, (size_t)(V * C) * sizeof(float));
    /* threads own disjoint channel ranges and add tokens in order */
#pragma omp parallel if (T * C > PAR_MIN && C >= 64)
    {
        int nt = omp_get_num_threads(), th = omp_get_thread_num();
        int64_t c0 = C * th / nt, c1 = C * (th + 1) / nt;
        for (int64_t t = 0; t < T; t++) {
            float *restrict d = dtable + ids[t] * C;
            const float *restrict s = dout + t * C;
#pragma omp simd
            for (int64_t c = c0; c < c1; c++) d[c] += s[c];
        }
    }
}
