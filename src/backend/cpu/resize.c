/* Resize kernels: per-axis tables built the way ATen builds them, applied
 * separably (width, then height, as torch does), and their transposes for the
 * backward.
 *
 *  - bilinear: src = scale*(dst+0.5)-0.5 clamped at 0; neighbours i0 and
 *    min(i0+1, in-1) (UpSample.h compute_source_index_and_lambda); when
 *    in == out, a copy.
 *  - bicubic: the same src without the clamp at 0, i0 = floor(src), Keys
 *    cubic with A = -0.75 on t = src - i0; taps i0-1..i0+2 clamped to the
 *    border (HelperInterpCubic::compute_indices_weights).
 *  - antialias (PIL's separable resampling, _compute_weights_aa): windows
 *    around center = scale*(dst+0.5), half width support = taps/2 * max(scale, 1),
 *    xmin = max(trunc(center-support+0.5), 0), xmax = min(trunc(center+support+0.5), in);
 *    the filter (triangle, or PIL's bicubic with a = -0.5) at
 *    (j + xmin - center + 0.5) / max(scale, 1), normalised to sum 1.
 *
 * The tables reproduce torch 1.13's arithmetic step by step (which steps run
 * in double and which in float; where its build fuses multiply-adds), found
 * by extracting torch's per-axis weight matrices (interpolating identity
 * images) for hundreds of sizes: they are bit-identical. Outputs accumulate
 * w0*x0 + w1*x1 + ... in tap order like ATen's loops; whether ATen's compiled
 * loops fuse those steps varies, so about two thirds of outputs are
 * bit-identical to torch and the rest are an ulp or two away. */
#include "backend/cpu/resize.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ filters
 * Where ATen's compiled code (GCC, AVX2+FMA build, as Debian ships torch)
 * fuses a multiply-add we call fmaf; where it rounds the product first we put
 * the product through rounded(), which the compiler cannot contract. The
 * choice of each was checked against torch's weights over hundreds of sizes:
 * with it the tables are bit-identical. */
static inline float rounded(float v) {
#if defined(__x86_64__) || defined(__i386__)
    __asm__("" : "+x"(v));
#else
    volatile float t = v;
    v = t;
#endif
    return v;
}

static inline double rounded_d(double v) {
#if defined(__x86_64__) || defined(__i386__)
    __asm__("" : "+x"(v));
#else
    volatile double t = v;
    v = t;
#endif
    return v;
}

static float filter_triangle(float x) {
    x = fabsf(x);
    return x < 1.0f ? (float)(1.0 - (double)x) : 0.0f;
}

/* PIL's bicubic (a = -0.5) as ATen 1.13 has it: the inner piece in double, the
 * outer one in float times a double a. */
static float filter_cubic_aa(float x) {
    const double a = -0.5;
    x = fabsf(x);
    if (x < 1.0f) {
        double xd = x, p = rounded_d(rounded_d((a + 2.0) * xd) - (a + 3.0));
        return (float)(rounded_d(rounded_d(p * xd) * xd) + 1);
    }
    if (x < 2.0f) {
        float w = fmaf(fmaf(x - 5.0f, x, 8.0f), x, -4.0f);
        return (float)((double)w * a);
    }
    return 0.0f;
}

/* Keys cubic convolution for the non-antialiased bicubic, A = -0.75:
 * |x| <= 1 and 1 < |x| < 2 pieces (UpSample.h cubic_convolution1/2). */
static float cubic1(float x, float A) {
    float p = fmaf(A + 2, x, -(A + 3));
    return rounded(rounded(p * x) * x) + 1;
}
static float cubic2(float x, float A) {
    float p = fmaf(fmaf(A, x, -(5 * A)), x, 8 * A);
    return rounded(p * x) - 4 * A;
}

/* src = scale*(dst+0.5)-0.5 in double (ATen keeps it in double; scale itself
 * is an f32 quotient). */
static double source_index(float scale, int dst) {
    return rounded_d((double)scale * ((double)dst + 0.5)) - 0.5;
}

/* ------------------------------------------------------------ tables */
void ap_resize_axis_free(ap_resize_axis *a) {
    if (!a) return;
    free(a->count);
    free(a->idx);
    free(a->w);
    free(a->t_count);
    free(a->start);
    free(a->t_start);
    free(a->dw);
    free(a->t_dw);
    free(a->t_out);
    free(a->t_w);
    memset(a, 0, sizeof *a);
}

static void table_linear(ap_resize_axis *a, float scale) {
    for (int o = 0; o < a->out; o++) {
        int32_t *id = a->idx + (int64_t)o * 2;
        float *w = a->w + (int64_t)o * 2;
        a->count[o] = 2;
        if (a->identity) {
            id[0] = id[1] = o;
            w[0] = 1.0f;
            w[1] = 0.0f;
            continue;
        }
        double src = source_index(scale, o);
        if (src < 0.0) src = 0.0;
        int64_t i0 = (int64_t)src;
        id[0] = (int32_t)i0;
        id[1] = (int32_t)(i0 + (i0 < a->in - 1 ? 1 : 0));
        w[1] = (float)(src - (double)i0);
        w[0] = 1.0f - w[1];
    }
}

static int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; }

static void table_cubic(ap_resize_axis *a, float scale) {
    const float A = -0.75f;
    for (int o = 0; o < a->out; o++) {
        int32_t *id = a->idx + (int64_t)o * 4;
        float *w = a->w + (int64_t)o * 4;
        a->count[o] = 4;
        double src = source_index(scale, o);
        int64_t i0 = (int64_t)floorf((float)src); /* floorf on the f32-rounded src, as ATen */
        float t = (float)(src - (double)i0);
        float t2 = (float)(1.0 - (double)t);
        w[0] = cubic2((float)((double)t + 1.0), A);
        w[1] = cubic1(t, A);
        w[2] = cubic1(t2, A);
        w[3] = cubic2((float)((double)t2 + 1.0), A);
        for (int j = 0; j < 4; j++) id[j] = (int32_t)clamp64(i0 + j - 1, 0, a->in - 1);
    }
}

static void table_aa(ap_resize_axis *a, float scale, float support, float (*filter)(float)) {
    const int K = a->taps;
    const float invscale = scale >= 1.0f ? (float)(1.0 / (double)scale) : 1.0f;
    for (int o = 0; o < a->out; o++) {
        int32_t *id = a->idx + (int64_t)o * K;
        float *w = a->w + (int64_t)o * K;
        float center = (float)((double)scale * ((double)o + 0.5));
        /* truncation toward zero, then the clamp, as in ATen */
        int64_t xmin = (int64_t)((double)(center - support) + 0.5);
        if (xmin < 0) xmin = 0;
        int64_t xmax = (int64_t)((double)(center + support) + 0.5);
        if (xmax > a->in) xmax = a->in;
        int64_t xsize = clamp64(xmax - xmin, 0, K);
        float total = 0.0f;
        for (int64_t j = 0; j < xsize; j++) {
            float d = (float)(j + xmin) - center; /* int - float is float in C++ too */
            w[j] = filter((float)(((double)d + 0.5) * (double)invscale));
            total += w[j];
        }
        if (total != 0.0f)
            for (int64_t j = 0; j < xsize; j++) w[j] /= total;
        for (int64_t j = 0; j < K; j++) {
            id[j] = (int32_t)(j < xsize ? xmin + j : (xsize ? xmin : 0));
            if (j >= xsize) w[j] = 0.0f;
        }
        a->count[o] = (int32_t)xsize;
    }
}

/* Re-expresses a table of `rows` rows (K taps, indices into 0..range-1) as
 * dense windows when every row's taps are consecutive. A window is shifted
 * left at the far border so that it stays inside the range; the taps it
 * gains there weigh 0. Returns 0 (done), 1 (not expressible: left NULL) or
 * -1 (out of memory). */
static int densify(int rows, int K, int range, const int32_t *count, const int32_t *idx,
                   const float *w, int32_t **start, float **dw) {
    if (range < K) return 1;
    for (int r = 0; r < rows; r++)
        for (int j = 1; j < count[r]; j++)
            if (idx[(int64_t)r * K + j] != idx[(int64_t)r * K] + j) return 1;
    *start = malloc((size_t)rows * sizeof **start);
    *dw = calloc((size_t)rows * (size_t)K, sizeof **dw);
    if (!*start || !*dw) return -1;
    for (int r = 0; r < rows; r++) {
        int32_t first = count[r] ? idx[(int64_t)r * K] : 0;
        int32_t s0 = first + K > range ? range - K : first;
        (*start)[r] = s0;
        for (int j = 0; j < count[r]; j++) (*dw)[(int64_t)r * K + first - s0 + j] = w[(int64_t)r * K + j];
    }
    return 0;
}

int ap_resize_axis_init(ap_resize_axis *a, int in, int out, int mode, int antialias) {
    memset(a, 0, sizeof *a);
    a->in = in;
    a->out = out;
    a->identity = in == out;
    const int interp = mode == 1 ? 4 : 2;
    /* area_pixel_compute_scale: float(in) / out, in float */
    const float scale = (float)in / (float)out;
    float support = 0.0f;
    if (antialias) {
        support = (float)(scale >= 1.0f ? (interp * 0.5) * (double)scale : interp * 0.5);
        /* ATen's window width; no window holds more than `in` pixels, so
         * capping it there changes nothing and keeps it in range */
        int64_t taps = (int64_t)ceilf(support) * 2 + 1;
        a->taps = (int)(taps < in ? taps : in);
    } else {
        a->taps = interp;
    }
    a->count = malloc((size_t)out * sizeof *a->count);
    a->idx = malloc((size_t)out * (size_t)a->taps * sizeof *a->idx);
    a->w = malloc((size_t)out * (size_t)a->taps * sizeof *a->w);
    if (!a->count || !a->idx || !a->w) return -1;
    if (antialias)
        table_aa(a, scale, support, mode == 1 ? filter_cubic_aa : filter_triangle);
    else if (mode == 1)
        table_cubic(a, scale);
    else
        table_linear(a, scale);
    return densify(a->out, a->taps, a->in, a->count, a->idx, a->w, &a->start, &a->dw) < 0 ? -1 : 0;
}

int ap_resize_axis_transpose(ap_resize_axis *a) {
    if (a->t_count) return 0;
    const int K = a->taps;
    a->t_count = calloc((size_t)a->in, sizeof *a->t_count);
    if (!a->t_count) return -1;
    for (int o = 0; o < a->out; o++)
        for (int j = 0; j < a->count[o]; j++) a->t_count[a->idx[(int64_t)o * K + j]]++;
    int E = 1;
    for (int i = 0; i < a->in; i++) E = a->t_count[i] > E ? a->t_count[i] : E;
    a->t_taps = E;
    a->t_out = malloc((size_t)a->in * (size_t)E * sizeof *a->t_out);
    a->t_w = malloc((size_t)a->in * (size_t)E * sizeof *a->t_w);
    if (!a->t_out || !a->t_w) return -1;
    memset(a->t_count, 0, (size_t)a->in * sizeof *a->t_count);
    for (int o = 0; o < a->out; o++)
        for (int j = 0; j < a->count[o]; j++) {
            int64_t k = (int64_t)o * K + j;
            int32_t i = a->idx[k];
            int64_t e = (int64_t)i * E + a->t_count[i]++;
            a->t_out[e] = o;
            a->t_w[e] = a->w[k];
        }
    for (int i = 0; i < a->in; i++)
        for (int e = a->t_count[i]; e < E; e++) {
            a->t_out[(int64_t)i * E + e] = a->t_count[i] ? a->t_out[(int64_t)i * E] : 0;
            a->t_w[(int64_t)i * E + e] = 0.0f;
        }
    return densify(a->in, E, a->out, a->t_count, a->t_out, a->t_w, &a->t_start, &a->t_dw) < 0 ? -1 : 0;
}

/* ------------------------------------------------------------ forward */
/* One row along W: y[o,:] = sum_j w[o,j] * x[idx[o,j],:], x [W*C], y [OW*C].
 * For C <= 4 (images) it is inlined with C a constant and runs two outputs
 * side by side: each output's sum is a chain of dependent multiply-adds, and
 * two independent chains hide their latency. */
static inline __attribute__((always_inline)) void hrow_small(const float *restrict x,
                                                             float *restrict y, const int C,
                                                             const int32_t *idx, const float *w,
                                                             int out, int K) {
    int o = 0;
    for (; o + 1 < out; o += 2) {
        const int32_t *ia = idx + (int64_t)o * K, *ib = ia + K;
        const float *wa = w + (int64_t)o * K, *wb = wa + K;
        float a[4], b[4];
        _Pragma("GCC unroll 4") for (int c = 0; c < C; c++) {
            a[c] = x[(int64_t)ia[0] * C + c] * wa[0];
            b[c] = x[(int64_t)ib[0] * C + c] * wb[0];
        }
        for (int j = 1; j < K; j++)
            _Pragma("GCC unroll 4") for (int c = 0; c < C; c++) {
                a[c] += x[(int64_t)ia[j] * C + c] * wa[j];
                b[c] += x[(int64_t)ib[j] * C + c] * wb[j];
            }
        _Pragma("GCC unroll 4") for (int c = 0; c < C; c++) {
            y[(int64_t)o * C + c] = a[c];
            y[(int64_t)(o + 1) * C + c] = b[c];
        }
    }
    for (; o < out; o++) {
        const int32_t *ia = idx + (int64_t)o * K;
        const float *wa = w + (int64_t)o * K;
        float a[4];
        _Pragma("GCC unroll 4") for (int c = 0; c < C; c++) a[c] = x[(int64_t)ia[0] * C + c] * wa[0];
        for (int j = 1; j < K; j++)
            _Pragma("GCC unroll 4") for (int c = 0; c < C; c++) a[c] += x[(int64_t)ia[j] * C + c] * wa[j];
        _Pragma("GCC unroll 4") for (int c = 0; c < C; c++) y[(int64_t)o * C + c] = a[c];
    }
}

/* The same over dense windows: output o reads x[start[o] .. start[o]+K-1]. */
static inline __attribute__((always_inline)) void hrow_dense_small(const float *restrict x,
                                                                   float *restrict y, const int C,
                                                                   const int32_t *start,
                                                                   const float *w, int out, int K) {
    int o = 0;
    for (; o + 1 < out; o += 2) {
        const float *pa = x + (int64_t)start[o] * C, *pb = x + (int64_t)start[o + 1] * C;
        const float *wa = w + (int64_t)o * K, *wb = wa + K;
        float a[4], b[4];
        _Pragma("GCC unroll 4") for (int c = 0; c < C; c++) {
            a[c] = pa[c] * wa[0];
            b[c] = pb[c] * wb[0];
        }
        for (int j = 1; j < K; j++)
            _Pragma("GCC unroll 4") for (int c = 0; c < C; c++) {
                a[c] += pa[j * C + c] * wa[j];
                b[c] += pb[j * C + c] * wb[j];
            }
        _Pragma("GCC unroll 4") for (int c = 0; c < C; c++) {
            y[(int64_t)o * C + c] = a[c];
            y[(int64_t)(o + 1) * C + c] = b[c];
        }
    }
    for (; o < out; o++) {
        const float *pa = x + (int64_t)start[o] * C;
        const float *wa = w + (int64_t)o * K;
        float a[4];
        _Pragma("GCC unroll 4") for (int c = 0; c < C; c++) a[c] = pa[c] * wa[0];
        for (int j = 1; j < K; j++)
            _Pragma("GCC unroll 4") for (int c = 0; c < C; c++) a[c] += pa[j * C + c] * wa[j];
        _Pragma("GCC unroll 4") for (int c = 0; c < C; c++) y[(int64_t)o * C + c] = a[c];
    }
}

/* Any C: the channel loop is the vector loop. */
static void hrow_wide(const float *restrict x, float *restrict y, int64_t C, const int32_t *idx,
                      const float *w, int out, int K) {
    for (int o = 0; o < out; o++) {
        const int32_t *ia = idx + (int64_t)o * K;
        const float *wa = w + (int64_t)o * K;
        float *yo = y + (int64_t)o * C;
        const float *p = x + (int64_t)ia[0] * C;
        for (int64_t c = 0; c < C; c++) yo[c] = p[c] * wa[0];
        for (int j = 1; j < K; j++) {
            p = x + (int64_t)ia[j] * C;
            for (int64_t c = 0; c < C; c++) yo[c] += p[c] * wa[j];
        }
    }
}

/* Applies a fixed-width table along W to one row: dense windows (start, dw)
 * when there are some, else indices (idx, w). */
static void hrow(const float *x, float *y, int64_t C, const int32_t *start, const float *dw,
                 const int32_t *idx, const float *w, int out, int K) {
    if (start && C <= 4) {
        switch (C) {
        case 1: hrow_dense_small(x, y, 1, start, dw, out, K); return;
        case 2: hrow_dense_small(x, y, 2, start, dw, out, K); return;
        case 3: hrow_dense_small(x, y, 3, start, dw, out, K); return;
        default: hrow_dense_small(x, y, 4, start, dw, out, K); return;
        }
    }
    switch (C) {
    case 1: hrow_small(x, y, 1, idx, w, out, K); break;
    case 2: hrow_small(x, y, 2, idx, w, out, K); break;
    case 3: hrow_small(x, y, 3, idx, w, out, K); break;
    case 4: hrow_small(x, y, 4, idx, w, out, K); break;
    default: hrow_wide(x, y, C, idx, w, out, K); break;
    }
}

/* One output row along H: y = sum_j w[j] * rows[idx[j]] over n taps, rows of
 * L floats. Columns go in blocks held in registers across all taps, so each
 * tap costs one load per element instead of a load and a store of y too. */
#define VBLOCK 32
static void vrow(const float *restrict rows, float *restrict y, int64_t L, const int32_t *id,
                 const float *w, int n) {
    if (n == 0) {
        memset(y, 0, (size_t)L * sizeof *y);
        return;
    }
    int64_t l = 0;
    for (; l + VBLOCK <= L; l += VBLOCK) {
        float acc[VBLOCK];
        const float *r = rows + (int64_t)id[0] * L + l;
        for (int k = 0; k < VBLOCK; k++) acc[k] = r[k] * w[0];
        for (int j = 1; j < n; j++) {
            r = rows + (int64_t)id[j] * L + l;
            for (int k = 0; k < VBLOCK; k++) acc[k] += r[k] * w[j];
        }
        for (int k = 0; k < VBLOCK; k++) y[l + k] = acc[k];
    }
    for (; l < L; l++) {
        float acc = rows[(int64_t)id[0] * L + l] * w[0];
        for (int j = 1; j < n; j++) acc += rows[(int64_t)id[j] * L + l] * w[j];
        y[l] = acc;
    }
}

/* Parallel when there is enough work to pay for waking threads. */
#define PAR_MIN_WORK 32768

void ap_resize_forward_f32(const float *x, float *tmp, float *y, int64_t n, int64_t c,
                           const ap_resize_axis *ah, const ap_resize_axis *aw) {
    const int64_t H = ah->in, OH = ah->out, W = aw->in, OW = aw->out;
    if (ah->identity && aw->identity) {
        memcpy(y, x, (size_t)(n * H * W * c) * sizeof *y);
        return;
    }
    /* horizontal pass: [N,H,W,C] -> [N,H,OW,C] (straight into y when H is kept) */
    const float *src = x;
    if (!aw->identity) {
        float *dst = ah->identity ? y : tmp;
        const int64_t rows = n * H;
        const int64_t work = rows * OW * c * aw->taps;
#pragma omp parallel for schedule(static) if (work > PAR_MIN_WORK)
        for (int64_t r = 0; r < rows; r++)
            hrow(x + r * W * c, dst + r * OW * c, c, aw->start, aw->dw, aw->idx, aw->w, aw->out,
                 aw->taps);
        if (ah->identity) return;
        src = tmp;
    }
    /* vertical pass: [N,H,OW,C] -> [N,OH,OW,C] */
    const int64_t L = OW * c, rows = n * OH;
    const int64_t work = rows * L * ah->taps;
#pragma omp parallel for schedule(static) if (work > PAR_MIN_WORK)
    for (int64_t r = 0; r < rows; r++) {
        const int64_t b = r / OH, o = r % OH;
        vrow(src + b * H * L, y + r * L, L, ah->idx + o * ah->taps, ah->w + o * ah->taps,
             ah->count[o]);
    }
}

/* ------------------------------------------------------------ backward */
static void row_store(float *restrict gx, const float *restrict g, float beta, int64_t L) {
    if (beta == 0.0f)
        memcpy(gx, g, (size_t)L * sizeof *gx);
    else
        for (int64_t l = 0; l < L; l++) gx[l] += g[l];
}

static void row_zero(float *gx, float beta, int64_t L) {
    if (beta == 0.0f) memset(gx, 0, (size_t)L * sizeof *gx);
}

int ap_resize_backward_f32(const float *gy, float *gx, float beta, int64_t n, int64_t c,
                           const ap_resize_axis *ah, const ap_resize_axis *aw) {
    const int64_t H = ah->in, OH = ah->out, W = aw->in, OW = aw->out;
    const int64_t L = OW * c, rows = n * H;
    if (ah->identity && aw->identity) {
        row_store(gx, gy, beta, n * H * W * c);
        return 0;
    }
    /* Each thread owns whole input rows: the vertical transpose of gy into a
     * scratch row [OW*C], then the horizontal transpose (a gather, like the
     * forward, with the transposed table) into a second scratch row [W*C]
     * that is stored or added into gx. */
    const int64_t work = rows * (L * (ah->identity ? 1 : ah->t_taps) + W * c * aw->t_taps);
    const int nt = work > PAR_MIN_WORK ? omp_get_max_threads() : 1;
    const int64_t per = (ah->identity ? 0 : L) + (aw->identity || beta == 0.0f ? 0 : W * c);
    float *scratch = NULL;
    if (per > 0) {
        scratch = malloc((size_t)nt * (size_t)per * sizeof *scratch);
        if (!scratch) return -1;
    }
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t r = 0; r < rows; r++) {
        const int64_t b = r / H, i = r % H;
        float *gxr = gx + r * W * c;
        float *s = scratch ? scratch + (int64_t)omp_get_thread_num() * per : NULL;
        const float *g;
        if (ah->identity) {
            g = gy + r * L;
        } else {
            if (ah->t_count[i] == 0) { /* no output reads this row */
                row_zero(gxr, beta, W * c);
                continue;
            }
            vrow(gy + b * OH * L, s, L, ah->t_out + i * ah->t_taps, ah->t_w + i * ah->t_taps,
                 ah->t_count[i]);
            g = s;
        }
        if (aw->identity) {
            row_store(gxr, g, beta, L);
        } else if (beta == 0.0f) {
            hrow(g, gxr, c, aw->t_start, aw->t_dw, aw->t_out, aw->t_w, aw->in, aw->t_taps);
        } else {
            float *h = s + (ah->identity ? 0 : L);
            hrow(g, h, c, aw->t_start, aw->t_dw, aw->t_out, aw->t_w, aw->in, aw->t_taps);
            row_store(gxr, h, 1.0f, W * c);
        }
    }
    free(scratch);
    return 0;
}
