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
 * its mean). K is x's own value, so the backward reads it from x again; its
 * sums are centred on the f32-rounded mean, with the rounding added back in
 * double.
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

#define MULTIVERSION AP_CPU_MULTIVERSION

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

/* ------------------------------------------------------------ group norm
 * Samples are processed one after the other, each with a statistics pass and
 * a normalising (dx) pass over its blocks in parallel: the second pass then
 * re-reads data touched one sample ago (5 MB at SD shapes), which the L3
 * cache still holds, instead of the whole batch. */

/* Scratch that lives for one call: per-thread f32 sub-block sums (2C floats)
 * and f64 channel sums (2C doubles), indexed by omp_get_thread_num(). */
typedef struct {
    float *f;
    double *d;
} gn_scratch;

static int scratch_alloc(gn_scratch *s, int64_t C, bool par) {
    int nt = par ? omp_get_max_threads() : 1;
    s->f = malloc((size_t)(nt * 2 * C) * sizeof(float));
    s->d = malloc((size_t)(nt * 2 * C) * sizeof(double));
    return s->f && s->d ? 0 : -1;
}

int ap_cpu_group_norm_fwd(float *y, float *mean, float *rstd, const float *x, const float *gamma,
                          const float *beta, int64_t N, int64_t S, int64_t C, int64_t G, float eps) {
    const int64_t cpg = C / G, bs = gn_block(S), nblk = (S + bs - 1) / bs;
    const bool v512 = ap_cpu_has_avx512(), par = S * C > PAR_MIN;
    const double cnt = (double)S * (double)cpg;
    /* K (the shift of each channel's group), A, B: [C] each; part: [nblk, 2G] */
    float *pc = malloc((size_t)(3 * C) * sizeof(float));
    double *part = malloc((size_t)(nblk * 2 * G) * sizeof(double));
    gn_scratch sc;
    int err = scratch_alloc(&sc, C, par);
    if (!pc || !part || err) {
        err = -1;
        goto done;
    }
    float *K = pc, *A = pc + C, *B = A + C;
    for (int64_t n = 0; n < N; n++) {
        const float *xs = x + n * S * C;
        float *ys = y + n * S * C;
        for (int64_t c = 0; c < C; c++) K[c] = xs[(c / cpg) * cpg];
#pragma omp parallel for schedule(static) if (par)
        for (int64_t k = 0; k < nblk; k++) {
            int t = omp_get_thread_num();
            float *f = sc.f + t * 2 * C;
            double *d = sc.d + t * 2 * C, *pp = part + k * 2 * G;
            int64_t p0 = k * bs, p1 = min64(S, p0 + bs);
            if (v512)
                gn_stats_512(d, d + C, f, f + C, xs, K, p0, p1, C);
            else
                gn_stats_v3(d, d + C, f, f + C, xs, K, p0, p1, C);
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
        for (int64_t g = 0; g < G; g++) {
            double s1 = 0, s2 = 0;
            for (int64_t k = 0; k < nblk; k++) {
                s1 += part[k * 2 * G + g];
                s2 += part[k * 2 * G + G + g];
            }
            double dm = s1 / cnt, var = s2 / cnt - dm * dm;
            if (var < 0) var = 0;
            double r = 1.0 / sqrt(var + (double)eps);
            mean[n * G + g] = (float)dm;
            rstd[n * G + g] = (float)r;
            /* y = (x - mean) * r * gamma + beta = (x - K) * A + B */
            for (int64_t c = g * cpg; c < (g + 1) * cpg; c++) {
                double a = r * (gamma ? (double)gamma[c] : 1.0);
                A[c] = (float)a;
                B[c] = (float)((beta ? (double)beta[c] : 0.0) - (double)(float)dm * a);
            }
        }
#pragma omp parallel for schedule(static) if (par)
        for (int64_t k = 0; k < nblk; k++) {
            int64_t p0 = k * bs, p1 = min64(S, p0 + bs);
            if (v512)
                gn_norm_512(ys, xs, K, A, B, p0, p1, C);
            else
                gn_norm_v3(ys, xs, K, A, B, p0, p1, C);
        }
    }
done:
    free(pc);
    free(part);
    free(sc.f);
    free(sc.d);
    return err;
}

int ap_cpu_group_norm_bwd(float *dx, float *dgamma, float *dbeta, const float *dy, const float *x,
                          const float *mean, const float *rstd, const float *gamma, int64_t N,
                          int64_t S, int64_t C, int64_t G, float acc_dx, float acc_dgamma,
                          float acc_dbeta) {
    if (!dx && !dgamma && !dbeta) return 0;
    const int64_t cpg = C / G, bs = gn_block(S), nblk = (S + bs - 1) / bs;
    const bool v512 = ap_cpu_has_avx512(), par = S * C > PAR_MIN;
    const double cnt = (double)S * (double)cpg;
    /* M, P, Q, R: [C] each for the current sample; part: [nblk, 2C];
     * sd, sdx: [N, C] (sums of dy and dy (x - mean)); mfix: [G] */
    float *pc = malloc((size_t)(4 * C) * sizeof(float));
    double *part = malloc((size_t)(nblk * 2 * C + 2 * N * C + G) * sizeof(double));
    gn_scratch sc;
    int err = scratch_alloc(&sc, C, par);
    if (!pc || !part || err) {
        err = -1;
        goto done;
    }
    float *M = pc, *P = M + C, *Q = P + C, *R = Q + C;
    double *sd = part + nblk * 2 * C, *sdx = sd + N * C, *mfix = sdx + N * C;
    for (int64_t n = 0; n < N; n++) {
        const size_t off = (size_t)(n * S * C);
        const float *xs = x + off, *gs = dy + off;
        /* M: the group's mean rounded to f32 (mf). Sums of dy (x - mf) are
         * centred (no cancellation against sum dy times a far shift); the
         * rounding mf - mean = (mf - K) - offset is exact in double and is
         * added back. */
        for (int64_t g = 0; g < G; g++) {
            double K = xs[g * cpg], o = mean[n * G + g];
            float mf = (float)(K + o);
            mfix[g] = ((double)mf - K) - o;
            for (int64_t c = g * cpg; c < (g + 1) * cpg; c++) M[c] = mf;
        }
#pragma omp parallel for schedule(static) if (par)
        for (int64_t k = 0; k < nblk; k++) {
            float *f = sc.f + omp_get_thread_num() * 2 * C;
            double *pp = part + k * 2 * C;
            int64_t p0 = k * bs, p1 = min64(S, p0 + bs);
            if (v512)
                gn_bstats_512(pp, pp + C, f, f + C, gs, xs, M, p0, p1, C);
            else
                gn_bstats_v3(pp, pp + C, f, f + C, gs, xs, M, p0, p1, C);
        }
        for (int64_t c = 0; c < C; c++) {
            double a = 0, b = 0;
            for (int64_t k = 0; k < nblk; k++) {
                a += part[k * 2 * C + c];
                b += part[k * 2 * C + C + c];
            }
            sd[n * C + c] = a;
            sdx[n * C + c] = b + mfix[c / cpg] * a; /* sum dy (x - mf) -> sum dy (x - mean) */
        }
        if (!dx) continue;
        for (int64_t g = 0; g < G; g++) {
            double a1 = 0, a2 = 0, r = rstd[n * G + g];
            for (int64_t c = g * cpg; c < (g + 1) * cpg; c++) {
                double gm = gamma ? gamma[c] : 1.0;
                a1 += gm * sd[n * C + c];
                a2 += gm * sdx[n * C + c];
            }
            /* dx = dy P + (x - mean) Q + R = dy P + (x - mf) Q + (R + (mf - mean) Q) */
            double q = -r * r * r * a2 / cnt, rr = -r * a1 / cnt + mfix[g] * q;
            for (int64_t c = g * cpg; c < (g + 1) * cpg; c++) {
                P[c] = (float)(r * (gamma ? gamma[c] : 1.0));
                Q[c] = (float)q;
                R[c] = (float)rr;
            }
        }
        float *dxs = dx + off;
#pragma omp parallel for schedule(static) if (par)
        for (int64_t k = 0; k < nblk; k++) {
            int64_t p0 = k * bs, p1 = min64(S, p0 + bs);
            if (v512)
                gn_dx_512(dxs, gs, xs, M, P, Q, R, p0, p1, C, acc_dx);
            else
                gn_dx_v3(dxs, gs, xs, M, P, Q, R, p0, p1, C, acc_dx);
        }
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
done:
    free(pc);
    free(part);
    free(sc.f);
    free(sc.d);
    return err;
}

/* ------------------------------------------------------------ layer norm
 * Rows are short (C <= a few thousand) and sit in L1, so each row is read
 * twice for an exact two-pass variance. Row sums use fixed lanes combined in
 * a fixed order. The backward's dgamma/dbeta sum over rows in blocks fixed by
 * the shape (at most LN_MAX_BLOCKS), in f32 over SUB rows, then in double,
 * and the blocks are combined in order. */
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

/* Rows [r0, r1): y = ((x - K) - mean) * rstd * gamma + beta, K = the row's first value. */
AI void ln_fwd_rows_body(float *restrict y, float *restrict mean, float *restrict rstd, const float *restrict x,
                         const float *restrict gamma, const float *restrict beta, int64_t r0, int64_t r1,
                         int64_t C, float eps) {
    for (int64_t r = r0; r < r1; r++) {
        const float *restrict xr = x + r * C;
        float *restrict yr = y + r * C;
        double mu = ap_cpu_dsum(xr, NULL, C) / (double)C;
        double var = sq_dev(xr, mu, C) / (double)C;
        const float K = xr[0], m = (float)(mu - (double)K), rs = (float)(1.0 / sqrt(var + (double)eps));
        mean[r] = m;
        rstd[r] = rs;
#pragma omp simd
        for (int64_t c = 0; c < C; c++) yr[c] = ((xr[c] - K) - m) * rs * gamma[c] + beta[c];
    }
}

/* s1 = sum of g, s2 = sum of g * xhat over a row (g = dy * gamma): 16 f32
 * lanes (a lane sums at most a few hundred terms), combined in double. */
AI void ln_row_sums(const float *restrict dy, const float *restrict x, const float *restrict gamma, float K,
                    float m, float rs, int64_t C, double *s1, double *s2) {
    float a[16] = {0}, b[16] = {0};
    int64_t c = 0;
    for (; c + 16 <= C; c += 16)
#pragma omp simd
        for (int k = 0; k < 16; k++) {
            float g = dy[c + k] * gamma[c + k], xh = ((x[c + k] - K) - m) * rs;
            a[k] += g;
            b[k] += g * xh;
        }
    for (int k = 0; c < C; c++, k++) {
        float g = dy[c] * gamma[c], xh = ((x[c] - K) - m) * rs;
        a[k] += g;
        b[k] += g * xh;
    }
    double sa = 0, sb = 0;
    for (int k = 0; k < 16; k++) {
        sa += a[k];
        sb += b[k];
    }
    *s1 = sa;
    *s2 = sb;
}

/* Rows [r0, r1): dx (when not NULL), and, when pg is not NULL, the block's
 * sums of dy * xhat and dy into pg, pb [C] (double; fg, fb [C] f32 scratch). */
AI void ln_bwd_rows_body(float *restrict dx, double *restrict pg, double *restrict pb, float *restrict fg,
                         float *restrict fb, const float *restrict dy, const float *restrict x,
                         const float *restrict mean, const float *restrict rstd, const float *restrict gamma,
                         int64_t r0, int64_t r1, int64_t C, float acc) {
    if (pg)
        for (int64_t c = 0; c < C; c++) pg[c] = pb[c] = 0.0;
    for (int64_t q = r0; q < r1; q += SUB) {
        const int64_t qe = q + SUB < r1 ? q + SUB : r1;
        if (pg)
            for (int64_t c = 0; c < C; c++) fg[c] = fb[c] = 0.0f;
        for (int64_t r = q; r < qe; r++) {
            const float *restrict xr = x + r * C, *restrict gr = dy + r * C;
            const float K = xr[0], m = mean[r], rs = rstd[r];
            if (dx) {
                double s1, s2;
                ln_row_sums(gr, xr, gamma, K, m, rs, C, &s1, &s2);
                const float a = (float)(s1 / (double)C), b = (float)(s2 / (double)C);
                float *restrict d = dx + r * C;
                if (acc == 0.0f) {
#pragma omp simd
                    for (int64_t c = 0; c < C; c++) d[c] = rs * (gr[c] * gamma[c] - a - ((xr[c] - K) - m) * rs * b);
                } else {
#pragma omp simd
                    for (int64_t c = 0; c < C; c++) d[c] += rs * (gr[c] * gamma[c] - a - ((xr[c] - K) - m) * rs * b);
                }
            }
            if (pg) {
#pragma omp simd
                for (int64_t c = 0; c < C; c++) {
                    fg[c] += gr[c] * (((xr[c] - K) - m) * rs);
                    fb[c] += gr[c];
                }
            }
        }
        if (pg)
#pragma omp simd
            for (int64_t c = 0; c < C; c++) {
                pg[c] += (double)fg[c];
                pb[c] += (double)fb[c];
            }
    }
}

MULTIVERSION(ln_fwd_rows,
             (float *restrict y, float *restrict mean, float *restrict rstd, const float *restrict x,
              const float *restrict gamma, const float *restrict beta, int64_t r0, int64_t r1, int64_t C, float eps),
             (y, mean, rstd, x, gamma, beta, r0, r1, C, eps))
MULTIVERSION(ln_bwd_rows,
             (float *restrict dx, double *restrict pg, double *restrict pb, float *restrict fg, float *restrict fb,
              const float *restrict dy, const float *restrict x, const float *restrict mean,
              const float *restrict rstd, const float *restrict gamma, int64_t r0, int64_t r1, int64_t C, float acc),
             (dx, pg, pb, fg, fb, dy, x, mean, rstd, gamma, r0, r1, C, acc))

/* gamma and beta with NULL replaced by 1 and 0 ([2C] scratch), so the
 * loops have no branches. */
static float *ln_affine(const float **gamma, const float **beta, int64_t C) {
    if (*gamma && *beta) return NULL;
    float *ab = malloc((size_t)(2 * C) * sizeof(float));
    if (!ab) return NULL;
    for (int64_t c = 0; c < C; c++) {
        ab[c] = 1.0f;
        ab[C + c] = 0.0f;
    }
    if (!*gamma) *gamma = ab;
    if (!*beta) *beta = ab + C;
    return ab;
}

int ap_cpu_layer_norm_fwd(float *y, float *mean, float *rstd, const float *x, const float *gamma,
                          const float *beta, int64_t R, int64_t C, float eps) {
    float *ab = ln_affine(&gamma, &beta, C);
    if (!gamma || !beta) return -1;
    const bool v512 = ap_cpu_has_avx512();
    const int64_t rc = C >= 4096 ? 1 : 4096 / C, nch = (R + rc - 1) / rc;
#pragma omp parallel for schedule(static) if (R * C > PAR_MIN)
    for (int64_t k = 0; k < nch; k++) {
        int64_t r0 = k * rc, r1 = min64(R, r0 + rc);
        if (v512)
            ln_fwd_rows_512(y, mean, rstd, x, gamma, beta, r0, r1, C, eps);
        else
            ln_fwd_rows_v3(y, mean, rstd, x, gamma, beta, r0, r1, C, eps);
    }
    free(ab);
    return 0;
}

int ap_cpu_layer_norm_bwd(float *dx, float *dgamma, float *dbeta, const float *dy, const float *x,
                          const float *mean, const float *rstd, const float *gamma, int64_t R,
                          int64_t C, float acc_dx, float acc_dgamma, float acc_dbeta) {
    const bool wantp = dgamma || dbeta, v512 = ap_cpu_has_avx512(), par = R * C > PAR_MIN;
    if (!dx && !wantp) return 0;
    const float *beta_unused = NULL;
    float *ab = ln_affine(&gamma, &beta_unused, C);
    const int64_t rb = (R + LN_MAX_BLOCKS - 1) / LN_MAX_BLOCKS, nblk = rb ? (R + rb - 1) / rb : 0;
    const int nt = par ? omp_get_max_threads() : 1;
    double *part = wantp ? malloc((size_t)(nblk * 2 * C + 1) * sizeof(double)) : NULL;
    float *fs = wantp ? malloc((size_t)(nt * 2 * C) * sizeof(float)) : NULL;
    if (!gamma || (wantp && (!part || !fs))) {
        free(ab);
        free(part);
        free(fs);
        return -1;
    }
#pragma omp parallel for schedule(static) if (par)
    for (int64_t k = 0; k < nblk; k++) {
        double *pg = part ? part + k * 2 * C : NULL, *pb = pg ? pg + C : NULL;
        float *fg = fs ? fs + omp_get_thread_num() * 2 * C : NULL, *fb = fg ? fg + C : NULL;
        int64_t r0 = k * rb, r1 = min64(R, r0 + rb);
        if (v512)
            ln_bwd_rows_512(dx, pg, pb, fg, fb, dy, x, mean, rstd, gamma, r0, r1, C, acc_dx);
        else
            ln_bwd_rows_v3(dx, pg, pb, fg, fb, dy, x, mean, rstd, gamma, r0, r1, C, acc_dx);
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
    free(ab);
    free(part);
    free(fs);
    return 0;
}
