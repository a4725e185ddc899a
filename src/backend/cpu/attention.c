/* Fused multi-head attention (FlashAttention-2 style) and row softmax on CPUs.
 *
 * Layout of the tiles. Every score tile is held transposed, keys in rows and
 * queries in the 16 lanes of a vector: St[j][i] for key j, query i. The
 * softmax statistics of a query then live in one lane, so the row max, the
 * row sum, the log-sum-exp and the rescaling of the output are plain vertical
 * vector operations, never horizontal reductions.
 *
 * Every tile product is one call of a small GEMM, C[M][N] (+)= A[M][K] B[K][N],
 * on operands packed for it:
 *   f32:  A row-major (a scalar is broadcast), B row-major (a vector is loaded);
 *   bf16: A row-major bf16 (a pair of K elements is broadcast), B in pairs
 *         along K ("VNNI": [K/2][N][2]), which is exactly what both vdpbf16ps
 *         and the AMX tile product want.
 * The products (tile of BR queries i, BC keys j, d channels c):
 *   forward   S^T[j][i]  = K[j][c]    . (s2 Q)^T[c][i]
 *             O^T[c][i]  = alpha O^T + V^T[c][j] . P^T[j][i]
 *   backward  S^T, P^T as above; dP^T[j][i] = V[j][c] . dO^T[c][i]
 *             dS^T = scale P^T (dP^T - D)
 *             dV[j][c] += P^T[j][i]  . dO[i][c]
 *             dK[j][c] += dS^T[j][i] . Q[i][c]
 *             dQ^T[c][i] += K^T[c][j] . dS^T[j][i]
 * with s2 = scale*log2(e): scores are kept in base 2 so exp is exp2.
 *
 * Parallel work: forward items are (batch, head, range of query blocks),
 * backward items (batch, head, range of key blocks). A backward item owns its
 * keys, so dK and dV are written by exactly one thread; dQ is accumulated over
 * the item's key blocks in a fixed order, and when a head is split across
 * several items (only when there are fewer heads than threads) the partial dQs
 * are summed in split order afterwards. No atomics; results depend only on the
 * inputs and the thread count (the forward not even on that).
 *
 * Memory: no T x S matrix ever exists. Each thread holds its packed copies of
 * one head's Q/dO and K/V (O(T*d + S*d)) and a few BC x BR tiles.
 */
#include "backend/cpu/attention.h"

#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdbool.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define BR 64 /* queries per tile: 4 vectors of 16 lanes */
#define BC 64 /* keys per tile (a shorter S, up to 2*BC, is one tile) */
#define NV (BR / 16)
#define LOG2E 1.4426950408889634f

#define AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq")))
#define AVX512BF16 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx512bf16")))
#define AMXATTR __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bf16")))
#define INLINE static inline __attribute__((always_inline))

static inline int64_t rup(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

/* ================================================================ ISA */
static int g_isa_best = -1, g_isa = -1;

static int amx_os_enable(void) {
#ifdef SYS_arch_prctl
    /* ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA: the kernel refuses AMX tile
     * state to a process that has not asked for it. */
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#else
    return 0;
#endif
}

ap_attn_isa ap_attn_isa_best(void) {
    int b = __atomic_load_n(&g_isa_best, __ATOMIC_ACQUIRE);
    if (b >= 0) return (ap_attn_isa)b;
    __builtin_cpu_init();
    b = AP_ATTN_ISA_GENERIC;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
        b = AP_ATTN_ISA_AVX512;
        if (__builtin_cpu_supports("avx512bf16")) {
            b = AP_ATTN_ISA_AVX512_BF16;
            if (__builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16") &&
                amx_os_enable())
                b = AP_ATTN_ISA_AMX;
        }
    }
    __atomic_store_n(&g_isa_best, b, __ATOMIC_RELEASE);
    return (ap_attn_isa)b;
}

ap_attn_isa ap_attn_isa_get(void) {
    int i = __atomic_load_n(&g_isa, __ATOMIC_ACQUIRE);
    return i >= 0 ? (ap_attn_isa)i : ap_attn_isa_best();
}

ap_attn_isa ap_attn_isa_set(ap_attn_isa isa) {
    int best = ap_attn_isa_best(), want = isa;
    if (want == AP_ATTN_ISA_AMX_EMU)
        want = best >= AP_ATTN_ISA_AVX512_BF16 ? AP_ATTN_ISA_AMX_EMU : best;
    else if (want > best)
        want = best;
    if (want < 0) want = AP_ATTN_ISA_GENERIC;
    __atomic_store_n(&g_isa, want, __ATOMIC_RELEASE);
    return (ap_attn_isa)want;
}

const char *ap_attn_isa_name(ap_attn_isa isa) {
    static const char *const names[] = {"generic", "avx512", "avx512-bf16", "amx", "amx-emulated"};
    _Static_assert(sizeof names / sizeof names[0] == AP_ATTN_ISA_AMX_EMU + 1, "isa names");
    return (unsigned)isa <= AP_ATTN_ISA_AMX_EMU ? names[isa] : "unknown";
}

/* ================================================================ f32 GEMM
 * C[M][N] = mode 0: A.B;  1: C + A.B;  2: cs (.) C + A.B (cs per column).
 * N is a multiple of 8 (16 for AMX). Mode 0 never reads C. */
typedef void (*gemm_f32_fn)(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                            const float *B, int64_t ldb, float *C, int64_t ldc, int mode,
                            const float *cs);

/* Portable: 4 rows by 16 columns of C in a local block the compiler keeps in
 * (AVX2) registers; edges by plain loops. */
static void gemm_f32_generic(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                             const float *B, int64_t ldb, float *C, int64_t ldc, int mode,
                             const float *cs) {
    for (int64_t m0 = 0; m0 < M; m0 += 4)
        for (int64_t n0 = 0; n0 < N; n0 += 16) {
            int mr = (int)imin(4, M - m0), nn = (int)imin(16, N - n0);
            float acc[4][16] = {{0}};
            if (mr == 4 && nn == 16) {
                for (int64_t k = 0; k < K; k++) {
                    const float *b = B + k * ldb + n0;
#pragma GCC unroll 4
                    for (int r = 0; r < 4; r++) {
                        float a = A[(m0 + r) * lda + k];
#pragma GCC unroll 16
                        for (int n = 0; n < 16; n++) acc[r][n] += a * b[n];
                    }
                }
            } else if (mr == 4 && nn == 8) {
                for (int64_t k = 0; k < K; k++) {
                    const float *b = B + k * ldb + n0;
#pragma GCC unroll 4
                    for (int r = 0; r < 4; r++) {
                        float a = A[(m0 + r) * lda + k];
#pragma GCC unroll 8
                        for (int n = 0; n < 8; n++) acc[r][n] += a * b[n];
                    }
                }
            } else {
                for (int64_t k = 0; k < K; k++)
                    for (int r = 0; r < mr; r++)
                        for (int n = 0; n < nn; n++)
                            acc[r][n] += A[(m0 + r) * lda + k] * B[k * ldb + n0 + n];
            }
            for (int r = 0; r < mr; r++)
                for (int n = 0; n < nn; n++) {
                    float *c = C + (m0 + r) * ldc + n0 + n;
                    *c = mode == 0 ? acc[r][n] : mode == 1 ? *c + acc[r][n] : *c * cs[n0 + n] + acc[r][n];
                }
        }
}

/* The register-blocked micro-kernel: MR rows of C by NR vectors of 16, plus
 * (HALF) one column of 8 lanes, so that d = 40 costs 40 lanes, not 48. MR, NR
 * and HALF are constants after inlining, so the accumulators live in
 * registers. */
INLINE AVX512 void mk_f32(const int MR, const int NR, const int HALF, int64_t K,
                          const float *restrict A, int64_t lda, const float *restrict B,
                          int64_t ldb, float *restrict C, int64_t ldc, int mode, const float *cs) {
    __m512 acc[12][4];
    __m256 acch[12];
#pragma GCC unroll 12
    for (int m = 0; m < MR; m++) {
#pragma GCC unroll 4
        for (int n = 0; n < NR; n++) acc[m][n] = _mm512_setzero_ps();
        if (HALF) acch[m] = _mm256_setzero_ps();
    }
    for (int64_t k = 0; k < K; k++) {
        __m512 b[4];
        __m256 bh = _mm256_setzero_ps();
#pragma GCC unroll 4
        for (int n = 0; n < NR; n++) b[n] = _mm512_loadu_ps(B + k * ldb + 16 * n);
        if (HALF) bh = _mm256_loadu_ps(B + k * ldb + 16 * NR);
#pragma GCC unroll 12
        for (int m = 0; m < MR; m++) {
            __m512 a = _mm512_set1_ps(A[m * lda + k]);
#pragma GCC unroll 4
            for (int n = 0; n < NR; n++) acc[m][n] = _mm512_fmadd_ps(a, b[n], acc[m][n]);
            if (HALF) acch[m] = _mm256_fmadd_ps(_mm512_castps512_ps256(a), bh, acch[m]);
        }
    }
#pragma GCC unroll 12
    for (int m = 0; m < MR; m++) {
#pragma GCC unroll 4
        for (int n = 0; n < NR; n++) {
            float *c = C + m * ldc + 16 * n;
            __m512 r = acc[m][n];
            if (mode == 1)
                r = _mm512_add_ps(_mm512_loadu_ps(c), r);
            else if (mode == 2)
                r = _mm512_fmadd_ps(_mm512_loadu_ps(c), _mm512_loadu_ps(cs + 16 * n), r);
            _mm512_storeu_ps(c, r);
        }
        if (HALF) {
            float *c = C + m * ldc + 16 * NR;
            __m256 r = acch[m];
            if (mode == 1)
                r = _mm256_add_ps(_mm256_loadu_ps(c), r);
            else if (mode == 2)
                r = _mm256_fmadd_ps(_mm256_loadu_ps(c), _mm256_loadu_ps(cs + 16 * NR), r);
            _mm256_storeu_ps(c, r);
        }
    }
}

/* The bf16 twin: A row-major bf16 [M][2*K2], B pairs [K2][N] (32-bit words). */
INLINE AVX512BF16 void mk_bf16(const int MR, const int NR, const int HALF, int64_t K2,
                               const uint16_t *restrict A, int64_t lda,
                               const uint32_t *restrict B, int64_t ldb, float *restrict C,
                               int64_t ldc, int mode, const float *cs) {
    __m512 acc[12][4];
    __m256 acch[12];
#pragma GCC unroll 12
    for (int m = 0; m < MR; m++) {
#pragma GCC unroll 4
        for (int n = 0; n < NR; n++) acc[m][n] = _mm512_setzero_ps();
        if (HALF) acch[m] = _mm256_setzero_ps();
    }
    for (int64_t p = 0; p < K2; p++) {
        __m512i b[4];
        __m256i bh = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int n = 0; n < NR; n++) b[n] = _mm512_loadu_si512(B + p * ldb + 16 * n);
        if (HALF) bh = _mm256_loadu_si256((const __m256i *)(B + p * ldb + 16 * NR));
#pragma GCC unroll 12
        for (int m = 0; m < MR; m++) {
            int32_t w;
            memcpy(&w, A + m * lda + 2 * p, 4);
            __m512i a = _mm512_set1_epi32(w);
#pragma GCC unroll 4
            for (int n = 0; n < NR; n++)
                acc[m][n] = _mm512_dpbf16_ps(acc[m][n], (__m512bh)a, (__m512bh)b[n]);
            if (HALF)
                acch[m] = _mm256_dpbf16_ps(acch[m], (__m256bh)_mm512_castsi512_si256(a), (__m256bh)bh);
        }
    }
#pragma GCC unroll 12
    for (int m = 0; m < MR; m++) {
#pragma GCC unroll 4
        for (int n = 0; n < NR; n++) {
            float *c = C + m * ldc + 16 * n;
            __m512 r = acc[m][n];
            if (mode == 1)
                r = _mm512_add_ps(_mm512_loadu_ps(c), r);
            else if (mode == 2)
                r = _mm512_fmadd_ps(_mm512_loadu_ps(c), _mm512_loadu_ps(cs + 16 * n), r);
            _mm512_storeu_ps(c, r);
        }
        if (HALF) {
            float *c = C + m * ldc + 16 * NR;
            __m256 r = acch[m];
            if (mode == 1)
                r = _mm256_add_ps(_mm256_loadu_ps(c), r);
            else if (mode == 2)
                r = _mm256_fmadd_ps(_mm256_loadu_ps(c), _mm256_loadu_ps(cs + 16 * NR), r);
            _mm256_storeu_ps(c, r);
        }
    }
}

/* Instantiations: NR = 4 up to 6 rows, 3 up to 8, 2 and 1 up to 12 (24 or
 * fewer accumulators, leaving registers for B and the broadcast); with a
 * half column (H) the same by the number of columns it adds up to. */
#define MK_ARGS_F32                                                                               \
    int64_t K, const float *A, int64_t lda, const float *B, int64_t ldb, float *C, int64_t ldc,   \
        int mode, const float *cs
#define MK_ARGS_BF16                                                                              \
    int64_t K, const uint16_t *A, int64_t lda, const uint32_t *B, int64_t ldb, float *C,          \
        int64_t ldc, int mode, const float *cs
#define DEF_F32(MR, NR, H)                                                                        \
    static AVX512 void kf32_##MR##_##NR##_##H(MK_ARGS_F32) {                                      \
        mk_f32(MR, NR, H, K, A, lda, B, ldb, C, ldc, mode, cs);                                   \
    }
#define DEF_BF16(MR, NR, H)                                                                       \
    static AVX512BF16 void kbf16_##MR##_##NR##_##H(MK_ARGS_BF16) {                                \
        mk_bf16(MR, NR, H, K, A, lda, B, ldb, C, ldc, mode, cs);                                  \
    }
#define ROWS6(D, NR, H) D(1, NR, H) D(2, NR, H) D(3, NR, H) D(4, NR, H) D(5, NR, H) D(6, NR, H)
#define ROWS8(D, NR, H) ROWS6(D, NR, H) D(7, NR, H) D(8, NR, H)
#define ROWS12(D, NR, H) ROWS8(D, NR, H) D(9, NR, H) D(10, NR, H) D(11, NR, H) D(12, NR, H)
#define ALL_KERNELS(D)                                                                            \
    ROWS12(D, 1, 0) ROWS12(D, 2, 0) ROWS8(D, 3, 0) ROWS6(D, 4, 0)                                 \
    ROWS12(D, 0, 1) ROWS12(D, 1, 1) ROWS8(D, 2, 1) ROWS6(D, 3, 1)
ALL_KERNELS(DEF_F32)
ALL_KERNELS(DEF_BF16)

typedef void (*mk_f32_fn)(MK_ARGS_F32);
typedef void (*mk_bf16_fn)(MK_ARGS_BF16);
#define P6(P, NR, H) P##_1_##NR##_##H, P##_2_##NR##_##H, P##_3_##NR##_##H, P##_4_##NR##_##H,       \
                     P##_5_##NR##_##H, P##_6_##NR##_##H
#define P8(P, NR, H) P6(P, NR, H), P##_7_##NR##_##H, P##_8_##NR##_##H
#define P12(P, NR, H) P8(P, NR, H), P##_9_##NR##_##H, P##_10_##NR##_##H, P##_11_##NR##_##H,       \
                      P##_12_##NR##_##H
#define TABLE(P)                                                                                  \
    {{{0}, {0, P12(P, 1, 0)}, {0, P12(P, 2, 0)}, {0, P8(P, 3, 0)}, {0, P6(P, 4, 0)}},             \
     {{0, P12(P, 0, 1)}, {0, P12(P, 1, 1)}, {0, P8(P, 2, 1)}, {0, P6(P, 3, 1)}, {0}}}
static const mk_f32_fn tab_f32[2][5][13] = TABLE(kf32);
static const mk_bf16_fn tab_bf16[2][5][13] = TABLE(kbf16);
static const int mr_max[2][5] = {{0, 12, 12, 8, 6}, {12, 12, 8, 6, 0}};

/* Splits N into chunks of at most 4 vectors, evening them out (5 -> 3+2). */
static inline int nr_chunk(int64_t nvec_left) {
    if (nvec_left <= 4) return (int)nvec_left;
    int64_t chunks = (nvec_left + 3) / 4;
    return (int)((nvec_left + chunks - 1) / chunks);
}

/* Walks N (a multiple of 8) in register-block chunks: full vectors, with a
 * trailing half vector joined to the last chunk when it has room. */
#define FOR_CHUNKS(N, BODY)                                                                       \
    do {                                                                                          \
        int64_t nv_ = (N) / 16, n0 = 0;                                                           \
        int half_ = ((N) % 16) != 0;                                                              \
        while (nv_ > 0 || half_) {                                                                \
            int nr = nv_ > 0 ? nr_chunk(nv_) : 0, h = 0;                                          \
            if (half_ && nv_ == nr && nr <= 3) h = 1;                                             \
            BODY;                                                                                 \
            n0 += 16 * nr + 8 * h;                                                                \
            nv_ -= nr;                                                                            \
            if (h) half_ = 0;                                                                     \
        }                                                                                         \
    } while (0)

static void gemm_f32_avx512(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                            const float *B, int64_t ldb, float *C, int64_t ldc, int mode,
                            const float *cs) {
    FOR_CHUNKS(N, {
        int mmax = mr_max[h][nr];
        for (int64_t m0 = 0; m0 < M; m0 += mmax) {
            int mr = (int)imin(mmax, M - m0);
            tab_f32[h][nr][mr](K, A + m0 * lda, lda, B + n0, ldb, C + m0 * ldc + n0, ldc, mode,
                               cs ? cs + n0 : NULL);
        }
    });
}

/* ================================================================ bf16 GEMM
 * C[M][N] (mode as above) += A[M][2*K2] (bf16) . B[K2][N] (bf16 pairs). */
typedef void (*gemm_bf16_fn)(int64_t M, int64_t N, int64_t K2, const uint16_t *A, int64_t lda,
                             const uint32_t *B, int64_t ldb, float *C, int64_t ldc, int mode,
                             const float *cs);

static void gemm_bf16_dp(int64_t M, int64_t N, int64_t K2, const uint16_t *A, int64_t lda,
                         const uint32_t *B, int64_t ldb, float *C, int64_t ldc, int mode,
                         const float *cs) {
    FOR_CHUNKS(N, {
        int mmax = mr_max[h][nr];
        for (int64_t m0 = 0; m0 < M; m0 += mmax) {
            int mr = (int)imin(mmax, M - m0);
            tab_bf16[h][nr][mr](K2, A + m0 * lda, lda, B + n0, ldb, C + m0 * ldc + n0, ldc, mode,
                                cs ? cs + n0 : NULL);
        }
    });
}

/* ---------------------------------------------------------------- AMX
 * One tile configuration serves every product: 8 tiles of 16 rows x 64 bytes
 * (C: 16x16 f32; A: 16 rows x 32 bf16; B: 16 pairs x 16 columns). The
 * callers pad M and N to 16 and K2 to 16 pairs with zeros, so no tile is
 * ever partial. C tiles 0..3 hold a 32x32 block of C, A in tiles 4, 5 and B in
 * tiles 6, 7. */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((packed, aligned(64))) amx_tilecfg;
_Static_assert(sizeof(amx_tilecfg) == 64, "AMX tile config is 64 bytes");

static const amx_tilecfg amx_cfg = {
    .palette = 1,
    .colsb = {64, 64, 64, 64, 64, 64, 64, 64},
    .rows = {16, 16, 16, 16, 16, 16, 16, 16},
};

static void scale_cols(int64_t M, int64_t N, float *C, int64_t ldc, const float *cs) {
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) C[m * ldc + n] *= cs[n];
}

/* A software model of the eight tiles, so that the AMX code path (its
 * padding, tile decomposition and configuration) runs in tests on CPUs
 * without AMX. It checks the shape rules the hardware enforces. */
static _Thread_local struct {
    amx_tilecfg cfg;
    _Alignas(64) uint8_t t[8][16][64];
} emu;

/* Violations of the rules the hardware would fault on (counted, since the
 * library may not abort; tests read the count). */
static int emu_faults;
static bool emu_check(bool ok) {
    if (!ok) __atomic_add_fetch(&emu_faults, 1, __ATOMIC_RELAXED);
    return ok;
}
int ap_attn_amx_emu_faults(void) { return __atomic_load_n(&emu_faults, __ATOMIC_RELAXED); }

static void emu_loadconfig(const void *cfg) {
    memcpy(&emu.cfg, cfg, sizeof emu.cfg);
    emu_check(emu.cfg.palette == 1);
    memset(emu.t, 0, sizeof emu.t);
}
static void emu_release(void) { memset(&emu, 0, sizeof emu); }
static void emu_zero(int t) {
    if (!emu_check(emu.cfg.palette == 1)) return; /* not configured */
    memset(emu.t[t], 0, sizeof emu.t[t]);
}
static void emu_loadd(int t, const void *base, size_t stride) {
    if (!emu_check(emu.cfg.palette == 1 && emu.cfg.rows[t] <= 16 && emu.cfg.colsb[t] <= 64)) return;
    emu_zero(t);
    for (int r = 0; r < emu.cfg.rows[t]; r++)
        memcpy(emu.t[t][r], (const uint8_t *)base + (size_t)r * stride, emu.cfg.colsb[t]);
}
static void emu_stored(int t, void *base, size_t stride) {
    if (!emu_check(emu.cfg.palette == 1)) return;
    for (int r = 0; r < emu.cfg.rows[t]; r++)
        memcpy((uint8_t *)base + (size_t)r * stride, emu.t[t][r], emu.cfg.colsb[t]);
}
static float emu_bf(const uint8_t *p) {
    uint32_t u = (uint32_t)(p[0] | p[1] << 8) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static void emu_dpbf16ps(int c, int a, int b) {
    int M = emu.cfg.rows[c], N = emu.cfg.colsb[c] / 4, K = emu.cfg.colsb[a] / 4;
    if (!emu_check(emu.cfg.palette == 1 && emu.cfg.rows[a] == M && emu.cfg.rows[b] == K &&
                   emu.cfg.colsb[b] == emu.cfg.colsb[c]))
        return;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            float acc;
            memcpy(&acc, &emu.t[c][m][4 * n], 4);
            for (int k = 0; k < K; k++) {
                acc = fmaf(emu_bf(&emu.t[a][m][4 * k]), emu_bf(&emu.t[b][k][4 * n]), acc);
                acc = fmaf(emu_bf(&emu.t[a][m][4 * k + 2]), emu_bf(&emu.t[b][k][4 * n + 2]), acc);
            }
            memcpy(&emu.t[c][m][4 * n], &acc, 4);
        }
}

/* The AMX kernel, written once and instantiated on the real tiles and on the
 * model. The tile configuration is loaded once per thread and parallel region
 * (amx_begin), not per call: LDTILECFG is slow and zeroes every tile. The
 * compiler barriers keep ordinary stores to A, B and C ordered with the tile
 * instructions (the intrinsics' asm names no memory). */
#define AMX_GEMM_DEFINE(NAME, ATTR, TZERO, TLOAD, TSTORE, TDP)                                    \
    ATTR __attribute__((noinline)) static void NAME(                                              \
        int64_t M, int64_t N, int64_t K2, const uint16_t *A, int64_t lda, const uint32_t *B,      \
        int64_t ldb, float *C, int64_t ldc, int mode, const float *cs) {                          \
        if (M % 16 || N % 16 || K2 % 16) { /* callers pad; never reached */                       \
            emu_check(false);                                                                     \
            return;                                                                               \
        }                                                                                         \
        if (mode == 2) {                                                                          \
            scale_cols(M, N, C, ldc, cs);                                                         \
            mode = 1;                                                                             \
        }                                                                                         \
        __asm__ volatile("" ::: "memory");                                                        \
        size_t sa = (size_t)lda * 2, sb = (size_t)ldb * 4, sc = (size_t)ldc * 4;                  \
        for (int64_t n0 = 0; n0 < N; n0 += 32) {                                                  \
            int two_n = N - n0 >= 32;                                                             \
            for (int64_t m0 = 0; m0 < M; m0 += 32) {                                              \
                int two_m = M - m0 >= 32;                                                         \
                float *c0 = C + m0 * ldc + n0, *c1 = c0 + 16 * ldc;                               \
                if (mode == 0) {                                                                  \
                    TZERO(0);                                                                     \
                    TZERO(1);                                                                     \
                    TZERO(2);                                                                     \
                    TZERO(3);                                                                     \
                } else {                                                                          \
                    TLOAD(0, c0, sc);                                                             \
                    if (two_n) TLOAD(1, c0 + 16, sc);                                             \
                    if (two_m) TLOAD(2, c1, sc);                                                  \
                    if (two_m && two_n) TLOAD(3, c1 + 16, sc);                                    \
                }                                                                                 \
                for (int64_t p = 0; p < K2; p += 16) {                                            \
                    TLOAD(4, A + m0 * lda + 2 * p, sa);                                           \
                    TLOAD(6, B + p * ldb + n0, sb);                                               \
                    TDP(0, 4, 6);                                                                 \
                    if (two_n) {                                                                  \
                        TLOAD(7, B + p * ldb + n0 + 16, sb);                                      \
                        TDP(1, 4, 7);                                                             \
                    }                                                                             \
                    if (two_m) {                                                                  \
                        TLOAD(5, A + (m0 + 16) * lda + 2 * p, sa);                                \
                        TDP(2, 5, 6);                                                             \
                        if (two_n) TDP(3, 5, 7);                                                  \
                    }                                                                             \
                }                                                                                 \
                TSTORE(0, c0, sc);                                                                \
                if (two_n) TSTORE(1, c0 + 16, sc);                                                \
                if (two_m) TSTORE(2, c1, sc);                                                     \
                if (two_m && two_n) TSTORE(3, c1 + 16, sc);                                       \
            }                                                                                     \
        }                                                                                         \
        __asm__ volatile("" ::: "memory");                                                        \
    }

AMX_GEMM_DEFINE(gemm_bf16_amx, AMXATTR, _tile_zero, _tile_loadd, _tile_stored, _tile_dpbf16ps)
AMX_GEMM_DEFINE(gemm_bf16_amx_emu, , emu_zero, emu_loadd, emu_stored, emu_dpbf16ps)

AMXATTR static void amx_hw_begin(void) { _tile_loadconfig(&amx_cfg); }
AMXATTR static void amx_hw_end(void) { _tile_release(); }
static void amx_emu_begin(void) { emu_loadconfig(&amx_cfg); }

/* Called by each thread around its work in a parallel region. */
static void amx_begin(void) {
    ap_attn_isa isa = ap_attn_isa_get();
    if (isa == AP_ATTN_ISA_AMX)
        amx_hw_begin();
    else if (isa == AP_ATTN_ISA_AMX_EMU)
        amx_emu_begin();
}
static void amx_end(void) {
    ap_attn_isa isa = ap_attn_isa_get();
    if (isa == AP_ATTN_ISA_AMX)
        amx_hw_end();
    else if (isa == AP_ATTN_ISA_AMX_EMU)
        emu_release();
}

/* ================================================================ exp2
 * 2^x for x <= 0 (scores minus their max): round to n, 2^f on [-1/2, 1/2] by
 * the Cephes exp2f polynomial (relative error ~2e-7), scaled by 2^n. Masked
 * scores are MASKED (finite), so x is never -inf and needs no clamp: scalef
 * sends 2^-1e30 to 0, and NaN passes through. */
#define MASKED (-1e30f)
INLINE AVX512 __m512 exp2_ps(__m512 x) {
    __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(x, n);
    __m512 p = _mm512_set1_ps(1.535336188319500e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440266574e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357674640e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471162809e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791363012e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028550421e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* Degree 5 (Taylor, relative error < 3e-6) where the result is rounded to
 * bf16 (relative 2^-9) anyway. */
INLINE AVX512 __m512 exp2_ps5(__m512 x) {
    __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(x, n);
    __m512 p = _mm512_set1_ps(1.3333558146e-3f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108665e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650696e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718056e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

static inline float exp2_scalar(float x) { return x < -150.0f ? 0.0f : exp2f(x); }

/* ================================================================ tile elementwise
 * Forward: the online-softmax step on S^T [nk][BR] (base-2 scores, masked
 * entries -inf). Updates m, l per lane, sets alpha = 2^(m_old - m_new), and
 * writes P (f32 in place, or bf16 pairs along keys into Pv [nkp/2][BR][2],
 * rows nk..nkp-1 zero). */
static void fwd_softmax_generic(float *St, int64_t nk, float *m, float *l, float *alpha) {
    for (int i = 0; i < BR; i++) {
        float mx = m[i];
        for (int64_t j = 0; j < nk; j++) mx = fmaxf(mx, St[j * BR + i]);
        float a = exp2_scalar(m[i] - mx), s = 0;
        for (int64_t j = 0; j < nk; j++) {
            float p = exp2_scalar(St[j * BR + i] - mx);
            St[j * BR + i] = p;
            s += p;
        }
        alpha[i] = a;
        m[i] = mx;
        l[i] = l[i] * a + s;
    }
}

INLINE AVX512 void fwd_stats_avx512(const float *St, int64_t nk, float *m, float *alpha,
                                    __m512 mx[NV]) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) mx[v] = _mm512_loadu_ps(m + 16 * v);
    for (int64_t j = 0; j < nk; j++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) mx[v] = _mm512_max_ps(mx[v], _mm512_loadu_ps(St + j * BR + 16 * v));
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) {
        _mm512_storeu_ps(alpha + 16 * v, exp2_ps(_mm512_sub_ps(_mm512_loadu_ps(m + 16 * v), mx[v])));
        _mm512_storeu_ps(m + 16 * v, mx[v]);
    }
}

static AVX512 void fwd_softmax_avx512(float *St, int64_t nk, float *m, float *l, float *alpha) {
    __m512 mx[NV], s[NV];
    fwd_stats_avx512(St, nk, m, alpha, mx);
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) s[v] = _mm512_setzero_ps();
    for (int64_t j = 0; j < nk; j++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            __m512 p = exp2_ps(_mm512_sub_ps(_mm512_loadu_ps(St + j * BR + 16 * v), mx[v]));
            _mm512_storeu_ps(St + j * BR + 16 * v, p);
            s[v] = _mm512_add_ps(s[v], p);
        }
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++)
        _mm512_storeu_ps(l + 16 * v, _mm512_fmadd_ps(_mm512_loadu_ps(l + 16 * v),
                                                     _mm512_loadu_ps(alpha + 16 * v), s[v]));
}

/* Interleaves two rows of 16 f32 into 16 bf16 pairs (row0[i], row1[i]). */
INLINE AVX512BF16 __m512i pair_bf16(__m512 r0, __m512 r1) {
    const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24,
                                         8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    return _mm512_permutexvar_epi16(idx, (__m512i)_mm512_cvtne2ps_pbh(r1, r0));
}

static AVX512BF16 void fwd_softmax_bf16(const float *St, int64_t nk, int64_t nkp, float *m,
                                        float *l, float *alpha, uint16_t *Pv) {
    __m512 mx[NV], s[NV];
    fwd_stats_avx512(St, nk, m, alpha, mx);
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) s[v] = _mm512_setzero_ps();
    for (int64_t j = 0; j < nkp; j += 2)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            __m512 p0 = _mm512_setzero_ps(), p1 = _mm512_setzero_ps();
            if (j < nk) p0 = exp2_ps5(_mm512_sub_ps(_mm512_loadu_ps(St + j * BR + 16 * v), mx[v]));
            if (j + 1 < nk)
                p1 = exp2_ps5(_mm512_sub_ps(_mm512_loadu_ps(St + (j + 1) * BR + 16 * v), mx[v]));
            s[v] = _mm512_add_ps(s[v], _mm512_add_ps(p0, p1));
            _mm512_storeu_si512(Pv + j * BR + 32 * v, pair_bf16(p0, p1));
        }
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++)
        _mm512_storeu_ps(l + 16 * v, _mm512_fmadd_ps(_mm512_loadu_ps(l + 16 * v),
                                                     _mm512_loadu_ps(alpha + 16 * v), s[v]));
}

/* Backward: P = 2^(S - lse) and dS = scale * P * (dP - D) on tiles [nk][BR].
 * f32: P overwrites St, dS overwrites dPt (dPt NULL: only P). */
static void bwd_elem_generic(float *St, float *dPt, int64_t nk, const float *lse, const float *D,
                             float scale) {
    for (int64_t j = 0; j < nk; j++)
        for (int i = 0; i < BR; i++) {
            float p = exp2_scalar(St[j * BR + i] - lse[i]);
            St[j * BR + i] = p;
            if (dPt) dPt[j * BR + i] = scale * p * (dPt[j * BR + i] - D[i]);
        }
}

static AVX512 void bwd_elem_avx512(float *St, float *dPt, int64_t nk, const float *lse,
                                   const float *D, float scale) {
    __m512 L[NV], Dv[NV], sc = _mm512_set1_ps(scale);
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) {
        L[v] = _mm512_loadu_ps(lse + 16 * v);
        Dv[v] = _mm512_mul_ps(sc, _mm512_loadu_ps(D + 16 * v)); /* scale*D */
    }
    for (int64_t j = 0; j < nk; j++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            float *s = St + j * BR + 16 * v;
            __m512 p = exp2_ps(_mm512_sub_ps(_mm512_loadu_ps(s), L[v]));
            _mm512_storeu_ps(s, p);
            if (dPt) {
                float *g = dPt + j * BR + 16 * v;
                _mm512_storeu_ps(g, _mm512_mul_ps(p, _mm512_fmsub_ps(sc, _mm512_loadu_ps(g), Dv[v])));
            }
        }
}

/* bf16: P row-major into Pb [nkp][BR] (when Pb), dS row-major into dSb
 * [nkp][BR] (when dSb) and in key pairs into dSv [nkp/2][BR][2] (when dSv);
 * rows nk..nkp-1 zero. dPt is needed when dSb or dSv is. */
static AVX512BF16 void bwd_elem_bf16(const float *St, const float *dPt, int64_t nk, int64_t nkp,
                                     const float *lse, const float *D, float scale, uint16_t *Pb,
                                     uint16_t *dSb, uint16_t *dSv) {
    __m512 L[NV], Dv[NV], sc = _mm512_set1_ps(scale);
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) {
        L[v] = _mm512_loadu_ps(lse + 16 * v);
        Dv[v] = _mm512_mul_ps(sc, _mm512_loadu_ps(D + 16 * v)); /* scale*D */
    }
    bool need_ds = dSb || dSv;
    for (int64_t j = 0; j < nkp; j += 2)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            __m512 p[2], ds[2];
#pragma GCC unroll 4
            for (int r = 0; r < 2; r++) {
                p[r] = ds[r] = _mm512_setzero_ps();
                if (j + r >= nk) continue;
                p[r] = exp2_ps5(_mm512_sub_ps(_mm512_loadu_ps(St + (j + r) * BR + 16 * v), L[v]));
                if (need_ds)
                    ds[r] = _mm512_mul_ps(
                        p[r], _mm512_fmsub_ps(sc, _mm512_loadu_ps(dPt + (j + r) * BR + 16 * v), Dv[v]));
            }
#pragma GCC unroll 4
            for (int r = 0; r < 2; r++) {
                if (Pb)
                    _mm256_storeu_si256((__m256i *)(Pb + (j + r) * BR + 16 * v),
                                        (__m256i)_mm512_cvtneps_pbh(p[r]));
                if (dSb)
                    _mm256_storeu_si256((__m256i *)(dSb + (j + r) * BR + 16 * v),
                                        (__m256i)_mm512_cvtneps_pbh(ds[r]));
            }
            if (dSv) _mm512_storeu_si512(dSv + j * BR + 32 * v, pair_bf16(ds[0], ds[1]));
        }
}

/* Causal mask on a tile: key j0+j is hidden from query i0+i when j0+j > i0+i. */
static void causal_mask(float *St, int64_t nk, int64_t i0, int64_t j0) {
    for (int64_t j = 0; j < nk; j++) {
        int64_t hide = imin(BR, j0 + j - i0); /* lanes i < hide are masked */
        for (int64_t i = 0; i < hide; i++) St[j * BR + i] = MASKED;
    }
}

/* ================================================================ packing
 * Operand copies for one head. x points at the head's first channel of row 0;
 * ld is the row stride (H*d). Padding is zero. */

/* f32 X^T for rows r0..r0+n-1, times s: out [d][BR]. */
static void pack_t_f32_generic(const float *x, int64_t ld, int64_t n, int64_t d, float s, float *out,
                       int64_t ldo) {
    for (int64_t c = 0; c < d; c++) {
        for (int64_t i = 0; i < n; i++) out[c * ldo + i] = s * x[i * ld + c];
        for (int64_t i = n; i < ldo; i++) out[c * ldo + i] = 0.0f;
    }
}


/* f32 rows padded to dn columns: out [np][dn]. */
static void pack_rows_f32(const float *x, int64_t ld, int64_t n, int64_t np, int64_t d,
                          int64_t dn, float *out) {
    for (int64_t i = 0; i < np; i++)
        for (int64_t c = 0; c < dn; c++) out[i * dn + c] = (i < n && c < d) ? x[i * ld + c] : 0.0f;
}



/* Transposed: out [dm][np] (row stride ldo). */
static void pack_t_rows_f32_generic(const float *x, int64_t ld, int64_t n, int64_t np, int64_t d,
                            int64_t dm, float *out, int64_t ldo) {
    for (int64_t c = 0; c < dm; c++)
        for (int64_t i = 0; i < np; i++) out[c * ldo + i] = (i < n && c < d) ? x[i * ld + c] : 0.0f;
}

/* In-register transpose of 16 vectors of 16 32-bit lanes: r[i][j] -> r[j][i]
 * (32-bit, then 64-bit interleaves within 128-bit lanes, then two rounds of
 * 128-bit lane shuffles). */
INLINE AVX512 void transpose16(__m512i r[16]) {
    __m512i t[16];
#pragma GCC unroll 8
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 16; i += 4) { /* r[i + e]: column 4L+e of rows i..i+3, in lane L */
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
#pragma GCC unroll 4
    for (int e = 0; e < 4; e++) {
        __m512i v0 = _mm512_shuffle_i32x4(r[e], r[4 + e], 0x44), v1 = _mm512_shuffle_i32x4(r[e], r[4 + e], 0xee);
        __m512i w0 = _mm512_shuffle_i32x4(r[8 + e], r[12 + e], 0x44), w1 = _mm512_shuffle_i32x4(r[8 + e], r[12 + e], 0xee);
        t[e] = _mm512_shuffle_i32x4(v0, w0, 0x88);
        t[4 + e] = _mm512_shuffle_i32x4(v0, w0, 0xdd);
        t[8 + e] = _mm512_shuffle_i32x4(v1, w1, 0x88);
        t[12 + e] = _mm512_shuffle_i32x4(v1, w1, 0xdd);
    }
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) r[i] = t[i];
}

static inline __mmask16 mask_first(int64_t n) {
    return n >= 16 ? (__mmask16)0xffff : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

/* Channels c..c+15 of a row of d floats (zero beyond d). */
INLINE AVX512 __m512 load_row(const float *x, int64_t d, int64_t c) {
    __mmask16 k = mask_first(d - c);
    return _mm512_maskz_loadu_ps(k, x + (k ? c : 0));
}

/* Loads the 16x16 block at rows i0.., channels c0.. of x (zero outside n x d)
 * and transposes it: r[c] = channel c0+c of rows i0..i0+15, times s. */
INLINE AVX512 void load_block_t(const float *x, int64_t ld, int64_t n, int64_t d, int64_t i0,
                                int64_t c0, float s, __m512i r[16]) {
#pragma GCC unroll 16
    for (int k = 0; k < 16; k++)
        r[k] = _mm512_castps_si512(i0 + k < n ? _mm512_mul_ps(_mm512_set1_ps(s), load_row(x + (i0 + k) * ld, d, c0))
                                              : _mm512_setzero_ps());
    transpose16(r);
}

/* f32 X^T for rows 0..n-1, times s: out [d][ldo] (columns n..ldo-1 zero;
 * ldo a multiple of 16). */
static AVX512 void pack_t_f32_avx512(const float *x, int64_t ld, int64_t n, int64_t d, float s,
                                     float *out, int64_t ldo) {
    __m512i r[16];
    for (int64_t i0 = 0; i0 < ldo; i0 += 16)
        for (int64_t c0 = 0; c0 < d; c0 += 16) {
            load_block_t(x, ld, n, d, i0, c0, s, r);
            for (int64_t c = 0; c < imin(16, d - c0); c++)
                _mm512_storeu_si512(out + (c0 + c) * ldo + i0, r[c]);
        }
}

/* Pairs along channels: out [dk/2][BR][2] = s*x[i][c]. Converting 32
 * channels of a row gives 16 words that are already (c, c+1) pairs; a 16x16
 * transpose of the words puts queries in lanes. */
static AVX512BF16 void pack_cpairs_bf16(const float *x, int64_t ld, int64_t n, int64_t d,
                                        int64_t dk, float s, uint16_t *out) {
    __m512 sv = _mm512_set1_ps(s);
    __m512i r[16];
    for (int64_t i0 = 0; i0 < BR; i0 += 16)
        for (int64_t c0 = 0; c0 < dk; c0 += 32) {
            for (int k = 0; k < 16; k++) {
                __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
                if (i0 + k < n) {
                    lo = _mm512_mul_ps(sv, load_row(x + (i0 + k) * ld, d, c0));
                    hi = _mm512_mul_ps(sv, load_row(x + (i0 + k) * ld, d, c0 + 16));
                }
                r[k] = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
            }
            transpose16(r);
            for (int64_t k = 0; k < imin(16, (dk - c0) / 2); k++)
                _mm512_storeu_si512(out + ((c0 / 2 + k) * BR + i0) * 2, r[k]);
        }
}

/* Transposed: out [dm][ldo] bf16 from rows 0..n-1 (zero beyond n and d; np a
 * multiple of 16). */
static AVX512BF16 void pack_t_rows_bf16(const float *x, int64_t ld, int64_t n, int64_t np,
                                        int64_t d, int64_t dm, uint16_t *out, int64_t ldo) {
    __m512i r[16];
    for (int64_t i0 = 0; i0 < np; i0 += 16)
        for (int64_t c0 = 0; c0 < dm; c0 += 16) {
            load_block_t(x, ld, n, d, i0, c0, 1.0f, r);
            for (int64_t c = 0; c < imin(16, dm - c0); c++)
                _mm256_storeu_si256((__m256i *)(out + (c0 + c) * ldo + i0),
                                    (__m256i)_mm512_cvtneps_pbh(_mm512_castsi512_ps(r[c])));
        }
}

/* Rows padded to dk columns: out [np][dk]. */
static AVX512BF16 void pack_rows_bf16(const float *x, int64_t ld, int64_t n, int64_t np,
                                      int64_t d, int64_t dk, uint16_t *out) {
    for (int64_t i = 0; i < np; i++)
        for (int64_t c = 0; c < dk; c += 16) {
            __m512 a = i < n ? load_row(x + i * ld, d, c) : _mm512_setzero_ps();
            _mm256_mask_storeu_epi16(out + i * dk + c, mask_first(dk - c),
                                     (__m256i)_mm512_cvtneps_pbh(a));
        }
}

/* Pairs along rows: out [np/2][dn][2]. */
static AVX512BF16 void pack_rpairs_bf16(const float *x, int64_t ld, int64_t n, int64_t np,
                                        int64_t d, int64_t dn, uint16_t *out) {
    for (int64_t i = 0; i < np; i += 2)
        for (int64_t c = 0; c < dn; c += 16) {
            __m512 a = i < n ? load_row(x + i * ld, d, c) : _mm512_setzero_ps();
            __m512 b = i + 1 < n ? load_row(x + (i + 1) * ld, d, c) : _mm512_setzero_ps();
            _mm512_storeu_si512(out + (i / 2) * dn * 2 + c * 2, pair_bf16(a, b));
        }
}

/* rows (stride ld) [n][d] = beta*rows + s[i] * src^T, src [d][lds] (queries in
 * columns); s NULL means 1. The output transposes of the forward and of dQ. */
static AVX512 void write_rows_t_avx512(float *dst, int64_t ld, const float *src, int64_t lds,
                                       int64_t n, int64_t d, float beta, const float *s) {
    __m512i r[16];
    for (int64_t i0 = 0; i0 < n; i0 += 16)
        for (int64_t c0 = 0; c0 < d; c0 += 16) {
#pragma GCC unroll 16
            for (int k = 0; k < 16; k++)
                r[k] = c0 + k < d ? _mm512_loadu_si512(src + (c0 + k) * lds + i0) : _mm512_setzero_si512();
            transpose16(r);
            __mmask16 m = mask_first(d - c0);
            for (int64_t i = 0; i < imin(16, n - i0); i++) {
                float *o = dst + (i0 + i) * ld + c0;
                __m512 v = _mm512_castsi512_ps(r[i]);
                if (s) v = _mm512_mul_ps(v, _mm512_set1_ps(s[i0 + i]));
                if (beta != 0.0f) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, o));
                _mm512_mask_storeu_ps(o, m, v);
            }
        }
}

/* D[i] = sum_c dO[i][c] O[i][c] for rows 0..n-1. */
static AVX512 void rowdot_avx512(const float *a, const float *b, int64_t ld, int64_t n, int64_t d,
                                 float *D) {
    for (int64_t i = 0; i < n; i++) {
        __m512 acc = _mm512_setzero_ps();
        for (int64_t c = 0; c < d; c += 16)
            acc = _mm512_fmadd_ps(load_row(a + i * ld, d, c), load_row(b + i * ld, d, c), acc);
        D[i] = _mm512_reduce_add_ps(acc);
    }
}

/* The f32 transposes and reductions, vectorised where the CPU allows. */
static void pack_t_f32(const float *x, int64_t ld, int64_t n, int64_t d, float s, float *out,
                       int64_t ldo) {
    if (ap_attn_isa_get() >= AP_ATTN_ISA_AVX512)
        pack_t_f32_avx512(x, ld, n, d, s, out, ldo);
    else
        pack_t_f32_generic(x, ld, n, d, s, out, ldo);
}
/* out [d][ldo] = x^T (ldo >= np, a multiple of 16; f32 path, so dm = d) */
static void pack_t_rows_f32(const float *x, int64_t ld, int64_t n, int64_t np, int64_t d,
                            int64_t dm, float *out, int64_t ldo) {
    if (ap_attn_isa_get() >= AP_ATTN_ISA_AVX512 && dm == d)
        pack_t_f32_avx512(x, ld, n, d, 1.0f, out, ldo);
    else
        pack_t_rows_f32_generic(x, ld, n, np, d, dm, out, ldo);
}
static void rowdot(const float *a, const float *b, int64_t ld, int64_t n, int64_t d, float *D) {
    if (ap_attn_isa_get() >= AP_ATTN_ISA_AVX512) {
        rowdot_avx512(a, b, ld, n, d, D);
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        float s = 0;
        for (int64_t c = 0; c < d; c++) s += a[i * ld + c] * b[i * ld + c];
        D[i] = s;
    }
}

/* ================================================================ configuration */
typedef struct {
    int bf16;            /* bf16 tile products */
    int amx;             /* bf16 through AMX tiles (real or emulated) */
    gemm_f32_fn gf;      /* f32 products */
    gemm_bf16_fn gb;     /* bf16 products */
    int64_t dk;          /* d padded for the products that reduce over d */
    int64_t dm;          /* d padded as the M of [d][*] products */
    int64_t dn;          /* d padded to 16: row stride of the [*][d] buffers */
    int64_t nd;          /* d padded as the N of [*][d] products (8, AMX 16) */
    int64_t kunit;       /* reductions over keys or queries padded to this */
    int64_t munit;       /* M over keys padded to this */
    int64_t Tp, Sp;      /* T, S padded to whole tiles */
    int64_t ldS, ldT;    /* row strides of the [d][S] and [d][T] buffers: a power of two
                            would put every row in the same L1 set */
    int64_t bc;          /* keys per tile (a multiple of 32) */
    int64_t nqb, nkb;    /* query and key tiles */
    float s2;            /* scale * log2(e) */
} cfg_t;

static cfg_t make_cfg(const ap_attn_problem *p) {
    cfg_t g;
    memset(&g, 0, sizeof g);
    ap_attn_isa isa = ap_attn_isa_get();
    g.gf = isa >= AP_ATTN_ISA_AVX512 ? gemm_f32_avx512 : gemm_f32_generic;
    g.bf16 = p->bf16 && isa >= AP_ATTN_ISA_AVX512_BF16;
    g.amx = g.bf16 && isa >= AP_ATTN_ISA_AMX;
    g.gb = isa == AP_ATTN_ISA_AMX ? gemm_bf16_amx
         : isa == AP_ATTN_ISA_AMX_EMU ? gemm_bf16_amx_emu : gemm_bf16_dp;
    int64_t d = p->d;
    g.dk = g.amx ? rup(d, 32) : g.bf16 ? rup(d, 2) : d;
    g.dm = g.amx ? rup(d, 16) : d;
    g.dn = rup(d, 16);
    g.nd = g.amx ? g.dn : rup(d, 8);
    g.kunit = g.amx ? 32 : g.bf16 ? 2 : 1;
    g.munit = g.amx ? 16 : 1;
    g.Tp = rup(p->T, BR);
    /* cross-attention to 77 text tokens: one tile of 96, not 64 + 13 */
    g.bc = p->S <= 2 * BC ? imax(32, rup(p->S, 32)) : BC;
    g.Sp = rup(p->S, g.bc);
    g.ldS = g.Sp + 32;
    g.ldT = g.Tp + 16;
    g.nqb = g.Tp / BR;
    g.nkb = g.Sp / g.bc;
    g.s2 = p->scale * LOG2E;
    return g;
}

/* A bump allocator over a scratch buffer; with base NULL it only measures. */
typedef struct {
    char *base;
    size_t off;
} carver;
static void *carve(carver *cv, size_t bytes) {
    size_t o = cv->off;
    cv->off += (bytes + 63) & ~(size_t)63;
    return cv->base ? cv->base + o : NULL;
}

/* ================================================================ forward */
typedef struct {
    uint16_t *Kp; /* [Sp][dk] bf16 */
    void *Vt;     /* [dm][Sp] bf16, or [d][Sp] f32 */
    void *Qb;     /* [dk/2][BR][2] bf16, or [d][BR] f32 */
    float *St;    /* [bc][BR] */
    uint16_t *Pv; /* [bc/2][BR][2] */
    float *Ot;    /* [dm][BR] */
    float *m, *l, *alpha; /* [BR] */
} fwd_ws;

static size_t fwd_layout(const cfg_t *g, const ap_attn_problem *p, char *base, fwd_ws *w) {
    carver cv = {base, 0};
    size_t es = g->bf16 ? 2 : 4;
    w->Kp = g->bf16 ? carve(&cv, (size_t)g->Sp * g->dk * 2) : NULL;
    w->Vt = carve(&cv, (size_t)g->dm * g->ldS * es);
    w->Qb = carve(&cv, (size_t)g->dk * BR * es);
    w->St = carve(&cv, (size_t)g->bc * BR * 4);
    w->Pv = g->bf16 ? carve(&cv, (size_t)g->bc * BR * 2) : NULL;
    w->Ot = carve(&cv, (size_t)g->dm * BR * 4);
    w->m = carve(&cv, BR * 4);
    w->l = carve(&cv, BR * 4);
    w->alpha = carve(&cv, BR * 4);
    (void)p;
    return cv.off;
}

static int64_t fwd_splits(const cfg_t *g, const ap_attn_problem *p) {
    int64_t bh = p->B * p->H;
    return imin(g->nqb, imax(1, (2 * (int64_t)p->nthreads + bh - 1) / bh));
}

size_t ap_attn_forward_scratch(const ap_attn_problem *p) {
    cfg_t g = make_cfg(p);
    fwd_ws w;
    return fwd_layout(&g, p, NULL, &w) * (size_t)p->nthreads;
}

/* One query tile of one head: all its key tiles, then the normalised output. */
static void fwd_tile(const cfg_t *g, const ap_attn_problem *p, const fwd_ws *w, const float *q,
                     const float *k, float *out, float *lse, int64_t qb) {
    const int64_t C = p->H * p->d, d = p->d;
    int64_t i0 = qb * BR, nq = imin(BR, p->T - i0);
    ap_attn_isa isa = ap_attn_isa_get();
    if (g->bf16)
        pack_cpairs_bf16(q + i0 * C, C, nq, d, g->dk, g->s2, w->Qb);
    else
        pack_t_f32(q + i0 * C, C, nq, d, g->s2, w->Qb, BR);
    for (int i = 0; i < BR; i++) {
        w->m[i] = MASKED;
        w->l[i] = 0.0f;
    }
    int64_t jend = p->causal ? imin(p->S, i0 + nq) : p->S;
    for (int64_t j0 = 0; j0 < jend; j0 += g->bc) {
        int64_t nk = imin(g->bc, jend - j0);
        int mode = j0 == 0 ? 0 : 2;
        if (g->bf16) {
            g->gb(rup(nk, g->munit), BR, g->dk / 2, w->Kp + j0 * g->dk, g->dk, w->Qb, BR, w->St,
                  BR, 0, NULL);
            if (p->causal && j0 + nk - 1 > i0) causal_mask(w->St, nk, i0, j0);
            int64_t nkp = rup(nk, g->kunit);
            fwd_softmax_bf16(w->St, nk, nkp, w->m, w->l, w->alpha, w->Pv);
            g->gb(g->dm, BR, nkp / 2, (const uint16_t *)w->Vt + j0, g->ldS, (const uint32_t *)w->Pv,
                  BR, w->Ot, BR, mode, w->alpha);
        } else {
            g->gf(nk, BR, d, k + j0 * C, C, w->Qb, BR, w->St, BR, 0, NULL);
            if (p->causal && j0 + nk - 1 > i0) causal_mask(w->St, nk, i0, j0);
            if (isa >= AP_ATTN_ISA_AVX512)
                fwd_softmax_avx512(w->St, nk, w->m, w->l, w->alpha);
            else
                fwd_softmax_generic(w->St, nk, w->m, w->l, w->alpha);
            g->gf(d, BR, nk, (const float *)w->Vt + j0, g->ldS, w->St, BR, w->Ot, BR, mode,
                  w->alpha);
        }
    }
    float *inv = w->alpha; /* free now */
    for (int64_t i = 0; i < nq; i++) {
        float l = w->l[i];
        inv[i] = l != 0.0f ? 1.0f / l : 0.0f; /* NaN stays NaN */
        if (lse) lse[i0 + i] = w->m[i] + log2f(l);
    }
    if (isa >= AP_ATTN_ISA_AVX512) {
        write_rows_t_avx512(out + i0 * C, C, w->Ot, BR, nq, d, 0.0f, inv);
    } else {
        for (int64_t i = 0; i < nq; i++)
            for (int64_t c = 0; c < d; c++) out[(i0 + i) * C + c] = w->Ot[c * BR + i] * inv[i];
    }
}

void ap_attn_forward(const ap_attn_problem *p, const float *q, const float *k, const float *v,
                     float *out, float *lse, void *scratch) {
    if (p->B == 0 || p->T == 0 || p->H == 0 || p->d == 0) return;
    cfg_t g = make_cfg(p);
    fwd_ws w0;
    size_t per = fwd_layout(&g, p, NULL, &w0);
    int64_t nsplit = fwd_splits(&g, p), items = p->B * p->H * nsplit;
    const int64_t C = p->H * p->d, d = p->d;
#pragma omp parallel num_threads(p->nthreads)
    {
        fwd_ws w;
        fwd_layout(&g, p, (char *)scratch + per * (size_t)omp_get_thread_num(), &w);
        int64_t last_bh = -1;
        if (g.amx) amx_begin();
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < items; it++) {
            int64_t bh = it / nsplit, sp = it % nsplit, b = bh / p->H, h = bh % p->H;
            const float *kh = k + b * p->S * C + h * d, *vh = v + b * p->S * C + h * d;
            if (bh != last_bh) { /* consecutive items of a head reuse its packed K, V */
                if (g.bf16) {
                    pack_rows_bf16(kh, C, p->S, g.Sp, d, g.dk, w.Kp);
                    pack_t_rows_bf16(vh, C, p->S, g.Sp, d, g.dm, w.Vt, g.ldS);
                } else {
                    pack_t_rows_f32(vh, C, p->S, g.Sp, d, d, w.Vt, g.ldS);
                }
                last_bh = bh;
            }
            int64_t q0 = sp * g.nqb / nsplit, q1 = (sp + 1) * g.nqb / nsplit;
            for (int64_t qb = q0; qb < q1; qb++)
                fwd_tile(&g, p, &w, q + b * p->T * C + h * d, kh, out + b * p->T * C + h * d,
                         lse ? lse + bh * p->T : NULL, qb);
        }
        if (g.amx) amx_end();
    }
}

/* ================================================================ backward */
typedef struct {
    /* query side, whole head */
    void *Qb;     /* [nqb][dk/2][BR][2] bf16 or [nqb][d][BR] f32 (scaled by s2) */
    void *dOb;    /* same layout, unscaled */
    void *Qr;     /* [Tp/2][dn][2] bf16 or [Tp][dn] f32 */
    void *dOr;    /* same */
    float *lse;   /* [Tp] */
    float *D;     /* [Tp] */
    /* key side, the item's key range */
    uint16_t *Kp, *Vp; /* [Si][dk] bf16 */
    void *Kt;          /* [dm][Si] bf16 or [d][Si] f32 */
    /* tiles */
    float *St, *dPt;   /* [bc][BR] */
    uint16_t *Pb, *dSb, *dSv; /* [bc][BR] bf16; dSv in key pairs */
    float *dKacc, *dVacc;     /* [bc][dn] */
    float *dQt;               /* [dm][Tp] (own, when heads are not split) */
} bwd_ws;

typedef struct {
    int need_q, need_k, need_v;
    int64_t nsplit, Si; /* key-range splits per head, keys per split (padded) */
    int64_t ldK;        /* row stride of Kt */
} bwd_plan;

static bwd_plan bwd_make_plan(const cfg_t *g, const ap_attn_problem *p, int nq, int nk, int nv) {
    bwd_plan pl = {nq, nk, nv, 1, 0, 0};
    int64_t bh = p->B * p->H;
    /* split heads only when there are fewer heads than threads: each split
     * costs a partial dQ [d][T] */
    pl.nsplit = imin(g->nkb, imax(1, ((int64_t)p->nthreads + bh - 1) / bh));
    pl.Si = (g->nkb + pl.nsplit - 1) / pl.nsplit * g->bc;
    pl.ldK = pl.Si + 32;
    return pl;
}

static size_t bwd_layout(const cfg_t *g, const bwd_plan *pl, char *base, bwd_ws *w) {
    carver cv = {base, 0};
    size_t es = g->bf16 ? 2 : 4;
    int need_ds = pl->need_q || pl->need_k;
    memset(w, 0, sizeof *w);
    w->Qb = carve(&cv, (size_t)g->nqb * g->dk * BR * es);
    w->dOb = need_ds ? carve(&cv, (size_t)g->nqb * g->dk * BR * es) : NULL;
    w->Qr = pl->need_k ? carve(&cv, (size_t)g->Tp * g->dn * es) : NULL;
    w->dOr = pl->need_v ? carve(&cv, (size_t)g->Tp * g->dn * es) : NULL;
    w->lse = carve(&cv, (size_t)g->Tp * 4);
    w->D = carve(&cv, (size_t)g->Tp * 4);
    if (g->bf16) {
        w->Kp = carve(&cv, (size_t)pl->Si * g->dk * 2);
        w->Vp = need_ds ? carve(&cv, (size_t)pl->Si * g->dk * 2) : NULL;
    }
    w->Kt = pl->need_q ? carve(&cv, (size_t)g->dm * pl->ldK * es) : NULL;
    w->St = carve(&cv, (size_t)g->bc * BR * 4);
    w->dPt = need_ds ? carve(&cv, (size_t)g->bc * BR * 4) : NULL;
    if (g->bf16) {
        w->Pb = pl->need_v ? carve(&cv, (size_t)g->bc * BR * 2) : NULL;
        w->dSb = pl->need_k ? carve(&cv, (size_t)g->bc * BR * 2) : NULL;
        w->dSv = pl->need_q ? carve(&cv, (size_t)g->bc * BR * 2) : NULL;
    }
    w->dKacc = pl->need_k ? carve(&cv, (size_t)g->bc * g->dn * 4) : NULL;
    w->dVacc = pl->need_v ? carve(&cv, (size_t)g->bc * g->dn * 4) : NULL;
    w->dQt = (pl->need_q && pl->nsplit == 1) ? carve(&cv, (size_t)g->dm * g->ldT * 4) : NULL;
    return cv.off;
}

static size_t bwd_shared_bytes(const cfg_t *g, const ap_attn_problem *p, const bwd_plan *pl) {
    if (!pl->need_q || pl->nsplit == 1) return 0;
    return (size_t)p->B * p->H * pl->nsplit * g->dm * g->ldT * 4;
}

size_t ap_attn_backward_scratch(const ap_attn_problem *p, int need_q, int need_k, int need_v) {
    cfg_t g = make_cfg(p);
    bwd_plan pl = bwd_make_plan(&g, p, need_q, need_k, need_v);
    bwd_ws w;
    return bwd_shared_bytes(&g, p, &pl) + bwd_layout(&g, &pl, NULL, &w) * (size_t)p->nthreads;
}

/* Packs one head's query side: Q, dO in their layouts, lse and D. */
static void bwd_pack_q(const cfg_t *g, const ap_attn_problem *p, const bwd_plan *pl,
                       const bwd_ws *w, const float *qh, const float *oh, const float *doh,
                       const float *lseh) {
    const int64_t C = p->H * p->d, d = p->d, T = p->T;
    size_t es = g->bf16 ? 2 : 4;
    for (int64_t qb = 0; qb < g->nqb; qb++) {
        int64_t i0 = qb * BR, nq = imin(BR, T - i0);
        char *qdst = (char *)w->Qb + (size_t)qb * g->dk * BR * es;
        char *ddst = w->dOb ? (char *)w->dOb + (size_t)qb * g->dk * BR * es : NULL;
        if (g->bf16) {
            pack_cpairs_bf16(qh + i0 * C, C, nq, d, g->dk, g->s2, (uint16_t *)qdst);
            if (ddst) pack_cpairs_bf16(doh + i0 * C, C, nq, d, g->dk, 1.0f, (uint16_t *)ddst);
        } else {
            pack_t_f32(qh + i0 * C, C, nq, d, g->s2, (float *)qdst, BR);
            if (ddst) pack_t_f32(doh + i0 * C, C, nq, d, 1.0f, (float *)ddst, BR);
        }
    }
    if (g->bf16) {
        if (w->Qr) pack_rpairs_bf16(qh, C, T, g->Tp, d, g->dn, w->Qr);
        if (w->dOr) pack_rpairs_bf16(doh, C, T, g->Tp, d, g->dn, w->dOr);
    } else {
        if (w->Qr) pack_rows_f32(qh, C, T, g->Tp, d, g->dn, w->Qr);
        if (w->dOr) pack_rows_f32(doh, C, T, g->Tp, d, g->dn, w->dOr);
    }
    if (pl->need_q || pl->need_k)
        rowdot(doh, oh, C, T, d, w->D);
    else
        memset(w->D, 0, (size_t)T * 4); /* unused without dS */
    for (int64_t i = 0; i < g->Tp; i++) {
        if (i < T) {
            w->lse[i] = lseh[i];
        } else {
            w->D[i] = 0.0f;
            w->lse[i] = -MASKED; /* padded queries get P = 0 */
        }
    }
}

/* One (key tile, query tile) step of the backward. */
static void bwd_tile(const cfg_t *g, const ap_attn_problem *p, const bwd_plan *pl,
                     const bwd_ws *w, const float *kh, const float *vh, float *dQt, int64_t ldq,
                     int64_t jl, int64_t nk, int64_t j0, int64_t qb) {
    const int64_t C = p->H * p->d, d = p->d;
    int64_t i0 = qb * BR, nq = imin(BR, p->T - i0);
    int need_ds = pl->need_q || pl->need_k;
    size_t es = g->bf16 ? 2 : 4;
    const char *Qb = (const char *)w->Qb + (size_t)qb * g->dk * BR * es;
    const char *dOb = w->dOb ? (const char *)w->dOb + (size_t)qb * g->dk * BR * es : NULL;
    bool mask = p->causal && j0 + nk - 1 > i0;
    if (g->bf16) {
        int64_t mk = rup(nk, g->munit), nkp = rup(nk, g->kunit), nqp = rup(nq, g->kunit);
        g->gb(mk, BR, g->dk / 2, w->Kp + jl * g->dk, g->dk, (const uint32_t *)Qb, BR, w->St, BR,
              0, NULL);
        if (mask) causal_mask(w->St, nk, i0, j0);
        if (need_ds)
            g->gb(mk, BR, g->dk / 2, w->Vp + jl * g->dk, g->dk, (const uint32_t *)dOb, BR, w->dPt,
                  BR, 0, NULL);
        /* rows up to mk: AMX reads whole 16-row tiles of P and dS */
        bwd_elem_bf16(w->St, w->dPt, nk, imax(nkp, mk), w->lse + i0, w->D + i0, p->scale, w->Pb,
                      w->dSb, w->dSv);
        if (pl->need_v)
            g->gb(mk, g->nd, nqp / 2, w->Pb, BR, (const uint32_t *)w->dOr + (i0 / 2) * g->dn,
                  g->dn, w->dVacc, g->dn, 1, NULL);
        if (pl->need_k)
            g->gb(mk, g->nd, nqp / 2, w->dSb, BR, (const uint32_t *)w->Qr + (i0 / 2) * g->dn,
                  g->dn, w->dKacc, g->dn, 1, NULL);
        if (pl->need_q)
            g->gb(g->dm, BR, nkp / 2, (const uint16_t *)w->Kt + jl, pl->ldK,
                  (const uint32_t *)w->dSv, BR, dQt + i0, ldq, 1, NULL);
    } else {
        g->gf(nk, BR, d, kh + j0 * C, C, (const float *)Qb, BR, w->St, BR, 0, NULL);
        if (mask) causal_mask(w->St, nk, i0, j0);
        if (need_ds) g->gf(nk, BR, d, vh + j0 * C, C, (const float *)dOb, BR, w->dPt, BR, 0, NULL);
        if (ap_attn_isa_get() >= AP_ATTN_ISA_AVX512)
            bwd_elem_avx512(w->St, need_ds ? w->dPt : NULL, nk, w->lse + i0, w->D + i0, p->scale);
        else
            bwd_elem_generic(w->St, need_ds ? w->dPt : NULL, nk, w->lse + i0, w->D + i0, p->scale);
        if (pl->need_v)
            g->gf(nk, g->nd, nq, w->St, BR, (const float *)w->dOr + i0 * g->dn, g->dn, w->dVacc,
                  g->dn, 1, NULL);
        if (pl->need_k)
            g->gf(nk, g->nd, nq, w->dPt, BR, (const float *)w->Qr + i0 * g->dn, g->dn, w->dKacc,
                  g->dn, 1, NULL);
        if (pl->need_q)
            g->gf(d, BR, nk, (const float *)w->Kt + jl, pl->ldK, w->dPt, BR, dQt + i0, ldq, 1,
                  NULL);
    }
}

/* dst rows (stride ld) = beta*dst + src rows [n][lds], d columns. */
static void write_rows(float *dst, int64_t ld, const float *src, int64_t lds, int64_t n,
                       int64_t d, float beta) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t c = 0; c < d; c++)
            dst[i * ld + c] = beta != 0.0f ? dst[i * ld + c] + src[i * lds + c] : src[i * lds + c];
}

/* dst rows = beta*dst + the transpose of src [d][lds] (n columns). */
static void write_rows_t(float *dst, int64_t ld, const float *src, int64_t lds, int64_t n,
                         int64_t d, float beta) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t c = 0; c < d; c++)
            dst[i * ld + c] = beta != 0.0f ? dst[i * ld + c] + src[c * lds + i] : src[c * lds + i];
}

void ap_attn_backward(const ap_attn_problem *p, const float *q, const float *k, const float *v,
                      const float *out, const float *lse, const float *dout, float *dq,
                      float beta_q, float *dk, float beta_k, float *dv, float beta_v,
                      void *scratch) {
    if (p->B == 0 || p->T == 0 || p->H == 0 || p->d == 0 || (!dq && !dk && !dv)) return;
    cfg_t g = make_cfg(p);
    bwd_plan pl = bwd_make_plan(&g, p, dq != NULL, dk != NULL, dv != NULL);
    bwd_ws w0;
    size_t per = bwd_layout(&g, &pl, NULL, &w0), shared = bwd_shared_bytes(&g, p, &pl);
    float *dQp = shared ? (float *)scratch : NULL; /* [B*H][nsplit][dm][ldT] */
    const int64_t C = p->H * p->d, d = p->d, T = p->T, S = p->S;
    const int64_t items = p->B * p->H * pl.nsplit, dqsz = g.dm * g.ldT;
#pragma omp parallel num_threads(p->nthreads)
    {
        bwd_ws w;
        bwd_layout(&g, &pl, (char *)scratch + shared + per * (size_t)omp_get_thread_num(), &w);
        int64_t last_bh = -1;
        if (g.amx) amx_begin();
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < items; it++) {
            int64_t bh = it / pl.nsplit, sp = it % pl.nsplit, b = bh / p->H, h = bh % p->H;
            int64_t hoff_q = b * T * C + h * d, hoff_k = b * S * C + h * d;
            const float *kh = k + hoff_k, *vh = v + hoff_k;
            if (bh != last_bh) {
                bwd_pack_q(&g, p, &pl, &w, q + hoff_q, out + hoff_q, dout + hoff_q, lse + bh * T);
                last_bh = bh;
            }
            int64_t kb0 = sp * g.nkb / pl.nsplit, kb1 = (sp + 1) * g.nkb / pl.nsplit;
            int64_t jb = kb0 * g.bc, nkr = imin(S, kb1 * g.bc) - jb; /* this item's keys */
            if (g.bf16) {
                pack_rows_bf16(kh + jb * C, C, nkr, pl.Si, d, g.dk, w.Kp);
                if (w.Vp) pack_rows_bf16(vh + jb * C, C, nkr, pl.Si, d, g.dk, w.Vp);
                if (w.Kt) pack_t_rows_bf16(kh + jb * C, C, nkr, pl.Si, d, g.dm, w.Kt, pl.ldK);
            } else if (w.Kt) {
                pack_t_rows_f32(kh + jb * C, C, nkr, pl.Si, d, g.dm, w.Kt, pl.ldK);
            }
            float *dQt = pl.need_q ? (dQp ? dQp + it * dqsz : w.dQt) : NULL;
            if (dQt) memset(dQt, 0, (size_t)dqsz * 4);
            for (int64_t kb = kb0; kb < kb1; kb++) {
                int64_t j0 = kb * g.bc, nk = imin(g.bc, S - j0);
                if (w.dKacc) memset(w.dKacc, 0, (size_t)g.bc * g.dn * 4);
                if (w.dVacc) memset(w.dVacc, 0, (size_t)g.bc * g.dn * 4);
                int64_t qstart = p->causal ? j0 / BR : 0;
                for (int64_t qb = qstart; qb < g.nqb; qb++)
                    bwd_tile(&g, p, &pl, &w, kh, vh, dQt, g.ldT, j0 - jb, nk, j0, qb);
                if (dk) write_rows(dk + hoff_k + j0 * C, C, w.dKacc, g.dn, nk, d, beta_k);
                if (dv) write_rows(dv + hoff_k + j0 * C, C, w.dVacc, g.dn, nk, d, beta_v);
            }
            if (dq && !dQp) {
                if (ap_attn_isa_get() >= AP_ATTN_ISA_AVX512)
                    write_rows_t_avx512(dq + hoff_q, C, dQt, g.ldT, T, d, beta_q, NULL);
                else
                    write_rows_t(dq + hoff_q, C, dQt, g.ldT, T, d, beta_q);
            }
        }
        if (g.amx) amx_end();
        if (dq && dQp) {
            /* sum the split partials of each head in split order */
#pragma omp for schedule(static)
            for (int64_t t = 0; t < p->B * p->H * g.nqb; t++) {
                int64_t bh = t / g.nqb, qb = t % g.nqb, b = bh / p->H, h = bh % p->H;
                int64_t i0 = qb * BR, nq = imin(BR, T - i0);
                const float *part = dQp + bh * pl.nsplit * dqsz;
                float *dst = dq + b * T * C + h * d + i0 * C;
                for (int64_t i = 0; i < nq; i++)
                    for (int64_t c = 0; c < d; c++) {
                        float s = 0;
                        for (int64_t sp = 0; sp < pl.nsplit; sp++)
                            s += part[sp * dqsz + c * g.ldT + i0 + i];
                        dst[i * C + c] = beta_q != 0.0f ? dst[i * C + c] + s : s;
                    }
            }
        }
    }
}

/* ================================================================ softmax rows
 * e^x = 2^n * e^r with n = round(x log2 e), r = x - n ln2 in two parts
 * (Cody-Waite), e^r by the Cephes expf polynomial (about 1 ulp). */
INLINE AVX512 __m512 exp_ps(__m512 x) {
    x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(LOG2E)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    __m512 r2 = _mm512_mul_ps(r, r);
    p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

static AVX512 void softmax_row_avx512(const float *x, float *y, int64_t n) {
    __m512 mx = _mm512_set1_ps(-INFINITY);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(x + i));
    __mmask16 tail = (__mmask16)((1u << (n - i)) - 1);
    if (tail) mx = _mm512_mask_max_ps(mx, tail, mx, _mm512_maskz_loadu_ps(tail, x + i));
    __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx)), s = _mm512_setzero_ps();
    for (i = 0; i + 16 <= n; i += 16) {
        __m512 e = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), m));
        _mm512_storeu_ps(y + i, e);
        s = _mm512_add_ps(s, e);
    }
    if (tail) {
        __m512 e = _mm512_maskz_mov_ps(tail, exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, x + i), m)));
        _mm512_mask_storeu_ps(y + i, tail, e);
        s = _mm512_add_ps(s, e);
    }
    __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(s));
    for (i = 0; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_loadu_ps(y + i), inv));
    if (tail) _mm512_mask_storeu_ps(y + i, tail, _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, y + i), inv));
}

static void softmax_row_generic(const float *x, float *y, int64_t n) {
    float m = -INFINITY, s = 0;
    for (int64_t i = 0; i < n; i++) m = fmaxf(m, x[i]);
    for (int64_t i = 0; i < n; i++) s += (y[i] = expf(x[i] - m));
    float inv = 1.0f / s;
    for (int64_t i = 0; i < n; i++) y[i] *= inv;
}

void ap_softmax_rows_forward(const float *x, float *y, int64_t rows, int64_t n, int nthreads) {
    if (n <= 0) return;
    bool simd = ap_attn_isa_get() >= AP_ATTN_ISA_AVX512;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (rows * n > 32768)
    for (int64_t r = 0; r < rows; r++) {
        if (simd)
            softmax_row_avx512(x + r * n, y + r * n, n);
        else
            softmax_row_generic(x + r * n, y + r * n, n);
    }
}

void ap_softmax_rows_backward(const float *y, const float *dy, float *dx, float beta, int64_t rows,
                              int64_t n, int nthreads) {
    if (n <= 0) return;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (rows * n > 32768)
    for (int64_t r = 0; r < rows; r++) {
        const float *yr = y + r * n, *gr = dy + r * n;
        float *o = dx + r * n;
        float dot = 0;
        for (int64_t i = 0; i < n; i++) dot += yr[i] * gr[i];
        if (beta != 0.0f)
            for (int64_t i = 0; i < n; i++) o[i] += yr[i] * (gr[i] - dot);
        else
            for (int64_t i = 0; i < n; i++) o[i] = yr[i] * (gr[i] - dot);
    }
}
