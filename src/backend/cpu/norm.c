/* Group norm and layer norm kernels, forward and backward (llm.c style: the
 * forward saves mean and rstd, not the normalised activations).
 *
 * Group norm on NHWC: a group is C/G contiguous channels of every position,
 * so both passes stream x row by row, with per-channel accumulators (the
 * inner loop runs over contiguous channels and vectorises). Work is split
 * into blocks of positions fixed by the shape (at most GN_MAX_BLOCKS per
 * sample); within a block, sums run in f32 over SUB positions and are then
 * added in double, and block results are combined in block order, so the
 * result is independent of the thread count.
 *
 * Everything is computed relative to a shift K, the group's (row's) first
 * value: the sums of x - K and (x - K)^2 have no E[x^2] - E[x]^2
 * cancellation, and the saved mean is the offset mean - K, so x - mean is
 * evaluated as (x - K) - offset without the f32 rounding of a large mean
 * (which would cost |mean|/std ulps when a group's spread is small next to
 * its mean). K is x's own value, so the backward reads it from x again.
 *
 * Accumulation rule: parameter gradients (dgamma, dbeta) and dx each come
 * with their own acc: 0 writes (never reads), 1 adds. */
#include "backend/cpu/cpu_kernels.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#define AI static inline __attribute__((always_inline))
#define SUB 64            /* positions summed in f32 before going to double */
#define GN_MAX_BLOCKS 32  /* position blocks per sample */
#define PAR_MIN 32768

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Positions per block: a multiple of SUB giving at most GN_MAX_BLOCKS blocks. */
static int64_t gn_block(int64_t S) {
    int64_t b = (S + GN_MAX_BLOCKS - 1) / GN_MAX_BLOCKS;
    return (b + SUB - 1) / SUB * SUB;
}

/* ------------------------------------------------------------ group norm: item bodies */
/* Per-channel sums of d = x - K[c] and d^2 over positions [p0, p1) of one
 * sample x [S, C], into s1, s2 [C] (double). f1, f2 [C] are scratch. */
AI void gn_stats_body(double *restrict s1, double *restrict s2, float *restrict f1,
                      float *restrict f2, const float *restrict x, const float *restrict K,
                      int64_t p0, int64_t p1, int64_t C) {
    for (int64_t c = 0; c < C; c++) s1[c] = s2[c] = 0.0;
    for (int64_t q = p0; q < p1; q += SUB) {
        int64_t qe = min64(p1, q + SUB);
        for (int64_t c = 0; c < C; c++) f1[c] = f2[c] = 0.0f;
        for (int64_t p = q; p < qe; p++) {
            const float *restrict row = x + p * C;
#pragma omp simd
            for (int64_t c = 0; c < C; c++) {
                float d = row[c] - K[c];
                f1[c] += d;
                f2[c] += d * d;
            }
        }
#pragma omp simd
        for (int64_t c = 0; c < C; c++) {
            s1[c] += (double)f1[c];
            s2[c] += (double)f2[c];
        }
    }
}

/* y = (x - m[c]) * A[c] + B[c] over positions [p0, p1) of one sample. */
AI void gn_norm_body(float *restrict y, const float *restrict x, const float *restrict m,
                     const float *restrict A, const float *restrict B, int64_t p0, int64_t p1,
                     int64_t C) {
    for (int64_t p = p0; p < p1; p++) {
        const float *restrict row = x + p * C;
        float *restrict out = y + p * C;
#pragma omp simd
        for (int64_t c = 0; c < C; c++) out[c] = (row[c] - m[c]) * A[c] + B[c];
    }
}

/* Per-channel sums of dy and dy * (x - m[c]) over positions [p0, p1). */
AI void gn_bstats_body(double *restrict s1, double *restrict s2, float *restrict f1,
                       float *restrict f2, const float *restrict dy, const float *restrict x,
                       const float *restrict m, int64_t p0, int64_t p1, int64_t C) {
    for (int64_t c = 0; c < C; c++) s1[c] = s2[c] = 0.0;
    for (int64_t q = p0; q < p1; q += SUB) {
        int64_t qe = min64(p1, q + SUB);
        for (int64_t c = 0; c < C; c++) f1[c] = f2[c] = 0.0f;
        for (int64_t p = q; p < qe; p++) {
            const float *restrict xr = x + p * C, *restrict gr = dy + p * C;
#pragma omp simd
            for (int64_t c = 0; c < C; c++) {
                f1[c] += gr[c];
                f2[c] += gr[c] * (xr[c] - m[c]);
            }
        }
#pragma omp simd
        for (int64_t c = 0; c < C; c++) {
            s1[c] += (double)f1[c];
            s2[c] += (double)f2[c];
        }
    }
}

/* dx = acc*dx + dy*P[c] + (x - m[c])*Q[c] + R[c] over positions [p0, p1). */
AI void gn_dx_body(float *restrict dx, const float *restrict dy, const float *restrict x,
                   const float *restrict m, const float *restrict P, const float *restrict Q,
                   const float *restrict R, int64_t p0, int64_t p1, int64_t C, float acc) {
    for (int64_t p = p0; p < p1; p++) {
        const float *restrict xr = x + p * C, *restrict gr = dy + p * C;
        float *restrict d = dx + p * C;
        if (acc == 0.0f) {
#pragma omp simd
            for (int64_t c = 0; c < C; c++) d[c] = gr[c] * P[c] + ((xr[c] - m[c]) * Q[c] + R[c]);
        } else {
#pragma omp simd
            for (int64_t c = 0; c < C; c++) d[c] += gr[c] * P[c] + ((xr[c] - m[c]) * Q[c] + R[c]);
        }
    }
}

#define MULTIVERSION(name, params, args)                                               \
    static void name##_v3 params { name##_body args; }                                 \
    AP_CPU_AVX512 static void name##_512 params { name##_body args; }

MULTIVERSION(gn_stats,
             (double *restrict s1, double *restrict s2, float *restrict f1, float *restrict f2,
              const float *restrict x, const float *restrict K, int64_t p0, int64_t p1, int64_t C),
             (s1, s2, f1, f2, x, K, p0, p1, C))
MULTIVERSION(gn_norm,
             (float *restrict y, const float *restrict x, const float *restrict m, const float *restrict A,
              const float *restrict B, int64_t p0, int64_t p1, int64_t C),
             (y, x, m, A, B, p0, p1, C))
MULTIVERSION(gn_bstats,
             (double *restrict s1, double *restrict s2, float *restrict f1, float *restrict f2,
              const float *restrict dy, const float *restrict x, const float *restrict m, int64_t p0,
              int64_t p1, int64_t C),
             (s1, s2, f1, f2, dy, x, m, p0, p1, C))
MULTIVERSION(gn_dx,
             (float *restrict dx, const float *restrict dy, const float *restrict x, const float *restrict m,
              const float *restrict P, const float *restrict Q, const float *restrict R, int64_t p0,
              int64_t p1, int64_t C, float acc),
             (dx, dy, x, m, P, Q, R, p0, p1, C, acc))

/* ------------------------------------------------------------ group norm */
int ap_cpu_group_norm_fwd(float *y, float *mean, float *rstd, const float *x, const float *gamma,
                          const float *beta, int64_t N, int64_t S, int64_t C, int64_t G, float eps) {
    const int64_t cpg = C / G, bs = gn_block(S), nblk = (S + bs - 1) / bs, items = N * nblk;
    const bool v512 = ap_cpu_has_avx512();
    /* K (the shift of each channel's group), A, B: [N, C] each; part: [items, 2G] */
    float *pc = malloc((size_t)(3 * N * C) * sizeof(float));
    double *part = malloc((size_t)(items * 2 * G) * sizeof(double));
    if (!pc || !part) {
        free(pc);
        free(part);
        return -1;
    }
    float *K = pc, *A = pc + N * C, *B = A + N * C;
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++) K[n * C + c] = x[n * S * C + (c / cpg) * cpg];

    int failed = 0;
    const bool par = N * S * C > PAR_MIN;
#pragma omp parallel if (par)
    {
        float *f = malloc((size_t)(2 * C) * sizeof(float));
        double *d = malloc((size_t)(2 * C) * sizeof(double));
        if (!f || !d) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t it = 0; it < items; it++) {
            if (!f || !d) continue;
            int64_t n = it / nblk, p0 = (it % nblk) * bs, p1 = min64(S, p0 + bs);
            const float *xs = x + n * S * C;
            if (v512)
                gn_stats_512(d, d + C, f, f + C, xs, K + n * C, p0, p1, C);
            else
                gn_stats_v3(d, d + C, f, f + C, xs, K + n * C, p0, p1, C);
            double *pp = part + it * 2 * G;
            for (int64_t g = 0; g < G; g++) {
                double a = 0, b = 0;
                for (int64_t c = g * cpg; c < (g + 1) * cpg; c++) {
                    a += d[c];
                    b += d[C + c];
                }
                pp[g] = a;
                pp[G + g] = b;
            }
        }
        free(f);
        free(d);
    }
    if (failed) {
        free(pc);
        free(part);
        return -1;
    }
    const double cnt = (double)S * (double)cpg;
    for (int64_t n = 0; n < N; n++) {
        for (int64_t g = 0; g < G; g++) {
            double s1 = 0, s2 = 0;
            for (int64_t k = 0; k < nblk; k++) {
                s1 += part[(n * nblk + k) * 2 * G + g];
                s2 += part[(n * nblk + k) * 2 * G + G + g];
            }
            double dm = s1 / cnt, var = s2 / cnt - dm * dm;
            if (var < 0) var = 0;
            double r = 1.0 / sqrt(var + (double)eps);
            mean[n * G + g] = (float)dm;
            rstd[n * G + g] = (float)r;
            /* y = (x - mean) * r * gamma + beta = (x - K) * A + B */
            for (int64_t c = g * cpg; c < (g + 1) * cpg; c++) {
                double a = r * (gamma ? (double)gamma[c] : 1.0);
                A[n * C + c] = (float)a;
                B[n * C + c] = (float)((beta ? (double)beta[c] : 0.0) - (double)(float)dm * a);
            }
        }
    }
#pragma omp parallel for schedule(static) if (par)
    for (int64_t it = 0; it < items; it++) {
        int64_t n = it / nblk, p0 = (it % nblk) * bs, p1 = min64(S, p0 + bs);
        const float *xs = x + n * S * C;
        float *ys = y + n * S * C;
        if (v512)
            gn_norm_512(ys, xs, K + n * C, A + n * C, B + n * C, p0, p1, C);
        else
            gn_norm_v3(ys, xs, K + n * C, A + n * C, B + n * C, p0, p1, C);
    }
    free(pc);
    free(part);
    return 0;
}

int ap_cpu_group_norm_bwd(float *dx, float *dgamma, float *dbeta, const float *dy, const float *x,
                          const float *mean, const float *rstd, const float *gamma, int64_t N,
                          int64_t S, int64_t C, int64_t G, float acc_dx, float acc_dgamma,
                          float acc_dbeta) {
    if (!dx && !dgamma && !dbeta) return 0;
    const int64_t cpg = C / G, bs = gn_block(S), nblk = (S + bs - 1) / bs, items = N * nblk;
    const bool v512 = ap_cpu_has_avx512();
    /* m, P, Q, R: [N, C] each; part: [items, 2C]; sd, sdx: [N, C] */
    float *pc = malloc((size_t)(4 * N * C) * sizeof(float));
    double *part = malloc((size_t)(items * 2 * C + 2 * N * C) * sizeof(double));
    if (!pc || !part) {
        free(pc);
        free(part);
        return -1;
    }
    /* M: the group's mean rounded to f32 (mf), per channel. Sums of dy (x - mf)
     * are centred (no cancellation against sum dy times a far shift); the
     * rounding mf - mean = (mf - K) - offset is exact in double and added back. */
    float *M = pc, *P = M + N * C, *Q = P + N * C, *R = Q + N * C;
    double *sd = part + items * 2 * C, *sdx = sd + N * C, *mfix = malloc((size_t)(N * G) * sizeof(double));
    if (!mfix) {
        free(pc);
        free(part);
        return -1;
    }
    for (int64_t n = 0; n < N; n++)
        for (int64_t g = 0; g < G; g++) {
            double K = x[n * S * C + g * cpg], off = mean[n * G + g];
            float mf = (float)(K + off);
            mfix[n * G + g] = ((double)mf - K) - off; /* mf - mean */
            for (int64_t c = g * cpg; c < (g + 1) * cpg; c++) M[n * C + c] = mf;
        }

    const bool par = N * S * C > PAR_MIN;
    int failed = 0;
#pragma omp parallel if (par)
    {
        float *f = malloc((size_t)(2 * C) * sizeof(float));
        if (!f) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t it = 0; it < items; it++) {
            if (!f) continue;
            int64_t n = it / nblk, p0 = (it % nblk) * bs, p1 = min64(S, p0 + bs);
            const size_t off = (size_t)(n * S * C);
            double *pp = part + it * 2 * C;
            if (v512)
                gn_bstats_512(pp, pp + C, f, f + C, dy + off, x + off, M + n * C, p0, p1, C);
            else
                gn_bstats_v3(pp, pp + C, f, f + C, dy + off, x + off, M + n * C, p0, p1, C);
        }
        free(f);
    }
    if (failed) {
        free(pc);
        free(part);
        free(mfix);
        return -1;
    }
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++) {
            double a = 0, b = 0;
            for (int64_t k = 0; k < nblk; k++) {
                a += part[(n * nblk + k) * 2 * C + c];
                b += part[(n * nblk + k) * 2 * C + C + c];
            }
            sd[n * C + c] = a;
            sdx[n * C + c] = b + mfix[n * G + c / cpg] * a; /* sum dy (x - mf) -> sum dy (x - mean) */
        }
    if (dbeta)
        for (int64_t c = 0; c < C; c++) {
            double s = 0;
            for (int64_t n = 0; n < N; n++) s += sd[n * C + c];
            dbeta[c] = (acc_dbeta != 0.0f ? dbeta[c] : 0.0f) + (float)s;
        }
    if (dgamma)
        for (int64_t c = 0; c < C; c++) {
            double s = 0;
            for (int64_t n = 0; n < N; n++) s += (double)rstd[n * G + c / cpg] * sdx[n * C + c];
            dgamma[c] = (acc_dgamma != 0.0f ? dgamma[c] : 0.0f) + (float)s;
        }
    if (dx) {
        const double cnt = (double)S * (double)cpg;
        for (int64_t n = 0; n < N; n++)
            for (int64_t g = 0; g < G; g++) {
                double a1 = 0, a2 = 0, r = rstd[n * G + g];
                for (int64_t c = g * cpg; c < (g + 1) * cpg; c++) {
                    double gm = gamma ? gamma[c] : 1.0;
                    a1 += gm * sd[n * C + c];
                    a2 += gm * sdx[n * C + c];
                }
                /* dx = dy P + (x - mean) Q + R = dy P + (x - mf) Q + (R + (mf - mean) Q) */
                double q = -r * r * r * a2 / cnt, rr = -r * a1 / cnt + mfix[n * G + g] * q;
                for (int64_t c = g * cpg; c < (g + 1) * cpg; c++) {
                    P[n * C + c] = (float)(r * (gamma ? gamma[c] : 1.0));
                    Q[n * C + c] = (float)q;
                    R[n * C + c] = (float)rr;
                }
            }
#pragma omp parallel for schedule(static) if (par)
        for (int64_t it = 0; it < items; it++) {
            int64_t n = it / nblk, p0 = (it % nblk) * bs, p1 = min64(S, p0 + bs);
            const size_t off = (size_t)(n * S * C);
            const int64_t o = n * C;
            if (v512)
                gn_dx_512(dx + off, dy + off, x + off, M + o, P + o, Q + o, R + o, p0, p1, C, acc_dx);
            else
                gn_dx_v3(dx + off, dy + off, x + off, M + o, P + o, Q + o, R + o, p0, p1, C, acc_dx);
        }
    }
    free(pc);
    free(part);
    free(mfix);
    return 0;
}

/* ------------------------------------------------------------ layer norm
 * Rows are short (C <= a few thousand) and sit in L1, so each row is read
 * twice for an exact two-pass variance. Row sums use 8 double lanes in a
 * fixed order. The backward's dgamma/dbeta sum over rows in blocks fixed by
 * the shape (at most LN_MAX_BLOCKS), combined in order. */
#define LN_MAX_BLOCKS 32

/* Sum of (x - mu)^2 in double. */
static double sq_dev(const float *restrict x, double mu, int64_t n) {
    double l[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) {
            double d = (double)x[i + k] - mu;
            l[k] += d * d;
        }
    for (int k = 0; i < n; i++, k++) {
        double d = (double)x[i] - mu;
        l[k] += d * d;
    }
    return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

void ap_cpu_layer_norm_fwd(float *y, float *mean, float *rstd, const float *x, const float *gamma,
                           const float *beta, int64_t R, int64_t C, float eps) {
#pragma omp parallel for schedule(static) if (R * C > PAR_MIN)
    for (int64_t r = 0; r < R; r++) {
        const float *restrict xr = x + r * C;
        float *restrict yr = y + r * C;
        double mu = ap_cpu_dsum(xr, NULL, C) / (double)C;
        double var = sq_dev(xr, mu, C) / (double)C;
        const float K = xr[0], m = (float)(mu - (double)K), rs = (float)(1.0 / sqrt(var + (double)eps));
        mean[r] = m;
        rstd[r] = rs;
        if (gamma) {
#pragma omp simd
            for (int64_t c = 0; c < C; c++) yr[c] = ((xr[c] - K) - m) * rs * gamma[c];
        } else {
#pragma omp simd
            for (int64_t c = 0; c < C; c++) yr[c] = ((xr[c] - K) - m) * rs;
        }
        if (beta) {
#pragma omp simd
            for (int64_t c = 0; c < C; c++) yr[c] += beta[c];
        }
    }
}

/* s1 = sum of g, s2 = sum of g * xhat over a row, g = dy * gamma, in double. */
static void ln_row_sums(const float *restrict dy, const float *restrict x, const float *restrict gamma,
                        float K, float m, float rs, int64_t C, double *s1, double *s2) {
    double a[8] = {0}, b[8] = {0};
    int64_t c = 0;
    for (; c + 8 <= C; c += 8)
        for (int k = 0; k < 8; k++) {
            float g = dy[c + k] * (gamma ? gamma[c + k] : 1.0f), xh = ((x[c + k] - K) - m) * rs;
            a[k] += (double)g;
            b[k] += (double)g * (double)xh;
        }
    for (int k = 0; c < C; c++, k++) {
        float g = dy[c] * (gamma ? gamma[c] : 1.0f), xh = ((x[c] - K) - m) * rs;
        a[k] += (double)g;
        b[k] += (double)g * (double)xh;
    }
    *s1 = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    *s2 = ((b[0] + b[1]) + (b[2] + b[3])) + ((b[4] + b[5]) + (b[6] + b[7]));
}

int ap_cpu_layer_norm_bwd(float *dx, float *dgamma, float *dbeta, const float *dy, const float *x,
                          const float *mean, const float *rstd, const float *gamma, int64_t R,
                          int64_t C, float acc_dx, float acc_dgamma, float acc_dbeta) {
    const bool wantp = dgamma || dbeta;
    if (!dx && !wantp) return 0;
    const int64_t rb = (R + LN_MAX_BLOCKS - 1) / LN_MAX_BLOCKS, nblk = rb ? (R + rb - 1) / rb : 0;
    double *part = NULL;
    if (wantp) {
        part = calloc((size_t)(nblk * 2 * C) + 1, sizeof *part);
        if (!part) return -1;
    }
#pragma omp parallel for schedule(static) if (R * C > PAR_MIN)
    for (int64_t k = 0; k < nblk; k++) {
        double *restrict pg = part ? part + k * 2 * C : NULL, *restrict pb = pg ? pg + C : NULL;
        for (int64_t r = k * rb; r < min64(R, (k + 1) * rb); r++) {
            const float *restrict xr = x + r * C, *restrict gr = dy + r * C;
            const float K = xr[0], m = mean[r], rs = rstd[r];
            if (dx) {
                double s1, s2;
                ln_row_sums(gr, xr, gamma, K, m, rs, C, &s1, &s2);
                const float a = (float)(s1 / (double)C), b = (float)(s2 / (double)C);
                float *restrict d = dx + r * C;
                if (acc_dx == 0.0f) {
#pragma omp simd
                    for (int64_t c = 0; c < C; c++)
                        d[c] = rs * (gr[c] * (gamma ? gamma[c] : 1.0f) - a - ((xr[c] - K) - m) * rs * b);
                } else {
#pragma omp simd
                    for (int64_t c = 0; c < C; c++)
                        d[c] += rs * (gr[c] * (gamma ? gamma[c] : 1.0f) - a - ((xr[c] - K) - m) * rs * b);
                }
            }
            if (pg) {
#pragma omp simd
                for (int64_t c = 0; c < C; c++) {
                    pg[c] += (double)(gr[c] * (((xr[c] - K) - m) * rs));
                    pb[c] += (double)gr[c];
                }
            }
        }
    }
    for (int64_t c = 0; c < C && wantp; c++) {
        double sg = 0, sb = 0;
        for (int64_t k = 0; k < nblk; k++) {
            sg += part[k * 2 * C + c];
            sb += part[k * 2 * C + C + c];
        }
        if (dgamma) dgamma[c] = (acc_dgamma != 0.0f ? dgamma[c] : 0.0f) + (float)sg;
        if (dbeta) dbeta[c] = (acc_dbeta != 0.0f ? dbeta[c] : 0.0f) + (float)sb;
    }
    free(part);
    return 0;
}
