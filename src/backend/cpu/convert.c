/* Float dtype conversions (see convert.h for the contract).
 *
 * Model loading is mostly these (f32 -> bf16 for frozen weights, f16 -> f32 /
 * bf16 for half checkpoints) and so are the bf16 operands of every matmul, so
 * they run at memory speed. Why each step is exact:
 * - bf16 -> f32 is a shift; f32 -> bf16 is integer arithmetic (add 0x7fff plus
 *   the kept lsb, shift), which no MXCSR mode touches. AVX512-BF16's
 *   vcvtneps2bf16 rounds the same way but always flushes subnormal inputs, so
 *   vectors holding one take the integer result for those lanes.
 * - f16 <-> f32 use F16C (vcvtph2ps / vcvtps2ph with an explicit rounding
 *   immediate), which convert subnormals exactly with FTZ and DAZ on (tests
 *   check every f16 value under FTZ/DAZ). An f32 subnormal always becomes a
 *   signed f16 zero, DAZ or not.
 * - NaN: the hardware keeps payload bits that the scalar functions drop (and
 *   quiets f16 signalling NaNs), so a vector holding a NaN where that matters
 *   is redone by the scalar code, which defines the bits.
 * Tails shorter than a vector go through the scalar code too. */
#include "backend/cpu/convert.h"

#include <assert.h>
#include <immintrin.h>
#include <stdbool.h>
#include <string.h>

/* ------------------------------------------------------------ portable */
static inline uint16_t ld_u16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return h;
}

/* Element i of s (dtype sd), widened by bit manipulation only: a float
 * instruction would obey DAZ and flush subnormals. */
static inline float load_one(const uint8_t *s, ap_dtype sd, int64_t i) {
    float f;
    switch (sd) {
    case AP_BF16: return ap_bf16_to_f32(ld_u16(s + 2 * i));
    case AP_F16: return ap_f16_to_f32(ld_u16(s + 2 * i));
    default: memcpy(&f, s + 4 * i, 4); return f;
    }
}

static inline void store_one(void *d, ap_dtype dd, int64_t i, float f) {
    switch (dd) {
    case AP_BF16: ((uint16_t *)d)[i] = ap_f32_to_bf16(f); break;
    case AP_F16: ((uint16_t *)d)[i] = ap_f32_to_f16(f); break;
    default: ((float *)d)[i] = f; break;
    }
}

/* Elements [i0, i1). */
static void convert_portable(void *d, ap_dtype dd, const uint8_t *s, ap_dtype sd, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i++) store_one(d, dd, i, load_one(s, sd, i));
}

/* ------------------------------------------------------------ AVX2 + F16C */
#define AVX2_TARGET __attribute__((target("avx2,f16c"), always_inline)) static inline

/* 8 elements at p (dtype sd) as f32 bits; *nan set when the f16 source holds a NaN. */
AVX2_TARGET __m256i load8(const uint8_t *p, ap_dtype sd, bool *nan) {
    if (sd == AP_F32) return _mm256_loadu_si256((const __m256i *)p);
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    if (sd == AP_BF16) return _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
    __m128i isnan = _mm_cmpgt_epi16(_mm_and_si128(h, _mm_set1_epi16(0x7fff)), _mm_set1_epi16(0x7c00));
    *nan |= _mm_movemask_epi8(isnan) != 0;
    return _mm256_castps_si256(_mm256_cvtph_ps(h));
}

AVX2_TARGET bool has_nan8(__m256i u) {
    __m256i m = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)), _mm256_set1_epi32(0x7f800000));
    return _mm256_movemask_epi8(m) != 0;
}

/* f32 bits -> bf16 in the low halves, nearest even, NaN quieted like ap_f32_to_bf16 */
AVX2_TARGET __m256i bf16_round8(__m256i u) {
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb)), 16);
    __m256i nan =
        _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)), _mm256_set1_epi32(0x7f800000));
    __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
    return _mm256_blendv_epi8(r, quiet, nan);
}

__attribute__((target("avx2,f16c"))) static void convert_avx2(void *dst, ap_dtype dd, const uint8_t *s, ap_dtype sd,
                                                              int64_t n) {
    size_t es = ap_dtype_size(sd);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const uint8_t *p = s + (size_t)i * es;
        bool nan = false;
        __m256i a = load8(p, sd, &nan), b = load8(p + 8 * es, sd, &nan);
        if (dd == AP_F16) nan = nan || has_nan8(a) || has_nan8(b);
        if (nan) {
            convert_portable(dst, dd, s, sd, i, i + 16);
        } else if (dd == AP_F32) {
            _mm256_storeu_si256((__m256i *)((float *)dst + i), a);
            _mm256_storeu_si256((__m256i *)((float *)dst + i + 8), b);
        } else if (dd == AP_BF16) {
            __m256i r = _mm256_packus_epi32(bf16_round8(a), bf16_round8(b)); /* lanes ordered a0 b0 a1 b1 */
            _mm256_storeu_si256((__m256i *)((uint16_t *)dst + i), _mm256_permute4x64_epi64(r, 0xd8));
        } else {
            uint16_t *d = (uint16_t *)dst + i;
            _mm_storeu_si128((__m128i *)d, _mm256_cvtps_ph(_mm256_castsi256_ps(a), _MM_FROUND_TO_NEAREST_INT));
            _mm_storeu_si128((__m128i *)(d + 8), _mm256_cvtps_ph(_mm256_castsi256_ps(b), _MM_FROUND_TO_NEAREST_INT));
        }
    }
    convert_portable(dst, dd, s, sd, i, n);
}

/* ------------------------------------------------------------ AVX-512 (+ BF16) */
#define AVX512_ISA "avx512f,avx512bw,avx512vl,avx512bf16"

__attribute__((target(AVX512_ISA))) static void convert_avx512(void *dst, ap_dtype dd, const uint8_t *s, ap_dtype sd,
                                                               int64_t n) {
    const __m512i abs = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
    size_t es = ap_dtype_size(sd);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const uint8_t *p = s + (size_t)i * es;
        bool nan = false;
        __m512i u; /* 16 f32 bit patterns */
        if (sd == AP_F32) {
            u = _mm512_loadu_si512(p);
        } else {
            __m256i h = _mm256_loadu_si256((const __m256i *)p);
            if (sd == AP_BF16) {
                u = _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
            } else {
                nan = _mm256_cmpgt_epi16_mask(_mm256_and_si256(h, _mm256_set1_epi16(0x7fff)),
                                              _mm256_set1_epi16(0x7c00)) != 0;
                u = _mm512_castps_si512(_mm512_cvtph_ps(h));
            }
        }
        if (dd == AP_F16) nan = nan || _mm512_cmpgt_epi32_mask(_mm512_and_si512(u, abs), inf) != 0;
        if (nan) {
            convert_portable(dst, dd, s, sd, i, i + 16);
        } else if (dd == AP_F32) {
            _mm512_storeu_si512((float *)dst + i, u);
        } else if (dd == AP_BF16) {
            __m256i r = (__m256i)_mm512_cvtneps_pbh(_mm512_castsi512_ps(u));
            __mmask16 sub = _mm512_testn_epi32_mask(u, inf); /* zero exponent: flushed by vcvtneps2bf16 */
            if (sub) {
                __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
                __m512i ri = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb)), 16);
                r = _mm256_mask_blend_epi16(sub, r, _mm512_cvtepi32_epi16(ri));
            }
            _mm256_storeu_si256((__m256i *)((uint16_t *)dst + i), r);
        } else {
            _mm256_storeu_si256((__m256i *)((uint16_t *)dst + i),
                                _mm512_cvtps_ph(_mm512_castsi512_ps(u), _MM_FROUND_TO_NEAREST_INT));
        }
    }
    convert_portable(dst, dd, s, sd, i, n);
}

/* ------------------------------------------------------------ dispatch */
ap_cvt_isa ap_cpu_convert_isa(void) {
    static int best = -1; /* racing first calls store the same value */
    if (best < 0) {
        __builtin_cpu_init();
        int b = AP_CVT_PORTABLE;
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c")) b = AP_CVT_AVX2;
        if (b == AP_CVT_AVX2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16"))
            b = AP_CVT_AVX512BF16;
        best = b;
    }
    return (ap_cvt_isa)best;
}

void ap_cpu_convert_at(ap_cvt_isa isa, void *dst, ap_dtype dd, const void *src, ap_dtype sd, int64_t n) {
    assert(dd <= AP_F16 && sd <= AP_F16 && isa <= ap_cpu_convert_isa());
    if (n <= 0) return;
    if (dd == sd) {
        memcpy(dst, src, (size_t)n * ap_dtype_size(dd));
        return;
    }
    switch (isa) {
    case AP_CVT_AVX512BF16: convert_avx512(dst, dd, src, sd, n); break;
    case AP_CVT_AVX2: convert_avx2(dst, dd, src, sd, n); break;
    default: convert_portable(dst, dd, src, sd, 0, n); break;
    }
}

void ap_cpu_convert(void *dst, ap_dtype dd, const void *src, ap_dtype sd, int64_t n) {
    ap_cpu_convert_at(ap_cpu_convert_isa(), dst, dd, src, sd, n);
}
