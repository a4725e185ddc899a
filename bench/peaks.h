/* This machine's peaks, measured in the same run as the benchmarks that quote
 * fractions of them: f32 FMA, AVX512-BF16 dot products, AMX TDPBF16PS, and the
 * read+write bandwidth of a copy. Each is the best of 7 runs of all threads
 * (other jobs may share the cores; a peak is a best case). Header-only: each
 * benchmark is its own program. */
#ifndef AP_BENCH_PEAKS_H
#define AP_BENCH_PEAKS_H

#define _GNU_SOURCE
#include "bench.h"

#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* 12 independent chains spelled out, so they stay in registers (a loop over an
 * array of accumulators is kept in memory by the compiler). */
#define PEAK_CHAINS(OP) OP(0) OP(1) OP(2) OP(3) OP(4) OP(5) OP(6) OP(7) OP(8) OP(9) OP(10) OP(11)
#define PEAK_DECL(i) __m512 a##i = _mm512_set1_ps((float)(i + 1));
#define PEAK_SUM(i) s += _mm512_reduce_add_ps(a##i);

__attribute__((target("avx512f"), noinline)) static float peak_fma_thread(long iters) {
    __m512 x = _mm512_set1_ps(1e-7f), y = _mm512_set1_ps(0.999f);
    PEAK_CHAINS(PEAK_DECL)
#define PEAK_STEP(i) a##i = _mm512_fmadd_ps(a##i, y, x);
    for (long it = 0; it < iters; it++) {
        PEAK_CHAINS(PEAK_STEP)
        __asm__ volatile("" ::: "memory");
    }
#undef PEAK_STEP
    float s = 0;
    PEAK_CHAINS(PEAK_SUM)
    return s;
}

__attribute__((target("avx512f,avx512bf16"), noinline)) static float peak_bf16dp_thread(long iters) {
    __m512bh p = (__m512bh)_mm512_set1_epi16(0x3c00), q = (__m512bh)_mm512_set1_epi16(0x3c00);
    PEAK_CHAINS(PEAK_DECL)
#define PEAK_STEP(i) a##i = _mm512_dpbf16_ps(a##i, p, q);
    for (long it = 0; it < iters; it++) {
        PEAK_CHAINS(PEAK_STEP)
        __asm__ volatile("" ::: "memory");
    }
#undef PEAK_STEP
    float s = 0;
    PEAK_CHAINS(PEAK_SUM)
    return s;
}

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} peak_tilecfg;

__attribute__((target("amx-tile,amx-bf16"), noinline)) static void peak_amx_thread(long iters) {
    peak_tilecfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 8; i++) cfg.rows[i] = 16, cfg.colsb[i] = 64;
    _tile_loadconfig(&cfg);
    static __thread uint16_t buf[16 * 32] __attribute__((aligned(64)));
    static __thread float out[16 * 16] __attribute__((aligned(64)));
    for (int i = 0; i < 16 * 32; i++) buf[i] = 0x3f80;
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    _tile_loadd(4, buf, 64);
    _tile_loadd(5, buf, 64);
    _tile_loadd(6, buf, 64);
    _tile_loadd(7, buf, 64);
    for (long it = 0; it < iters; it++) {
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, out, 64);
    _tile_release();
}

enum { PEAK_FMA, PEAK_BF16DP, PEAK_AMX };

/* GFLOP/s of all threads; 0 when the CPU lacks the instructions. */
static inline double peak_gflops(int kind, long iters) {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f")) return 0;
    if (kind == PEAK_BF16DP && !__builtin_cpu_supports("avx512bf16")) return 0;
    if (kind == PEAK_AMX &&
        (!__builtin_cpu_supports("amx-bf16") || syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18) != 0))
        return 0;
    double per_iter = kind == PEAK_FMA ? 12 * 32.0 : kind == PEAK_BF16DP ? 12 * 64.0 : 4 * 16 * 16 * 32 * 2.0;
    double best = 0;
    for (int k = 0; k < 7; k++) {
        float sink = 0;
        double t0 = bench_now();
#pragma omp parallel reduction(+ : sink)
        {
            if (kind == PEAK_FMA)
                sink += peak_fma_thread(iters);
            else if (kind == PEAK_BF16DP)
                sink += peak_bf16dp_thread(iters);
            else
                peak_amx_thread(iters);
        }
        double t = bench_now() - t0;
        if (sink == 12345.0f) t += 1e-9; /* keep sink alive */
        best = fmax(best, per_iter * iters * omp_get_max_threads() / t * 1e-9);
    }
    return best;
}

/* Read + write bandwidth (GB/s) of a parallel copy-with-scale over two buffers
 * of n floats (out of cache when n is large). */
static inline double peak_copy_gbs(size_t n) {
    float *a = aligned_alloc(64, n * 4), *b = aligned_alloc(64, n * 4);
    if (!a || !b) {
        free(a);
        free(b);
        return 0;
    }
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) a[i] = (float)i, b[i] = 0;
    double best = 0;
    for (int r = 0; r < 7; r++) {
        double t0 = bench_now();
#pragma omp parallel for simd schedule(static)
        for (size_t i = 0; i < n; i++) b[i] = a[i] * 1.0001f;
        best = fmax(best, 2.0 * (double)n * 4 / (bench_now() - t0) / 1e9);
    }
    volatile float sink = b[n / 3];
    (void)sink;
    free(a);
    free(b);
    return best;
}

#endif
