/* The torch-compatible generator: mt19937, uniforms, and torch.randn's three paths.
 * Every rounding step below is the one PyTorch 1.13 performs; docs/samplers.md has
 * the derivation and what was checked against torch. */
#include "diffusion/rng.h"

#include "core/internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define AP_RNG_HAVE_AVX2 1
#endif

/* ------------------------------------------------------------ mt19937 */
enum { MT_M = 397 };

void ap_rng_seed(ap_rng *g, uint64_t seed) {
    g->seed = seed;
    g->mt[0] = (uint32_t)seed; /* torch keeps only the low 32 bits for the state */
    for (uint32_t j = 1; j < AP_MT_N; j++)
        g->mt[j] = 1812433253u * (g->mt[j - 1] ^ (g->mt[j - 1] >> 30)) + j;
    g->left = 1;
    g->next = 0;
    g->has_next_double = g->has_next_float = false;
    g->next_double = 0;
    g->next_float = 0;
}

void ap_rng_init(ap_rng *g, uint64_t seed) {
    ap_rng_seed(g, seed);
    g->kernel = AP_RANDN_TORCH_AVX2;
}

void ap_rng_set_kernel(ap_rng *g, ap_randn_kernel k) {
    if ((unsigned)k < AP_RANDN_KERNEL_COUNT_) g->kernel = k;
}

const char *ap_randn_kernel_name(ap_randn_kernel k) {
    static const char *const names[] = {"avx2", "scalar"};
    _Static_assert(sizeof names / sizeof names[0] == AP_RANDN_KERNEL_COUNT_, "kernel names");
    return (unsigned)k < AP_RANDN_KERNEL_COUNT_ ? names[k] : "unknown";
}

static inline uint32_t twist(uint32_t u, uint32_t v) {
    uint32_t y = (u & 0x80000000u) | (v & 0x7fffffffu);
    return (y >> 1) ^ ((v & 1u) ? 0x9908b0dfu : 0u);
}

static void next_state(ap_rng *g) {
    uint32_t *s = g->mt;
    int k = 0;
    for (; k < AP_MT_N - MT_M; k++) s[k] = s[k + MT_M] ^ twist(s[k], s[k + 1]);
    for (; k < AP_MT_N - 1; k++) s[k] = s[k + MT_M - AP_MT_N] ^ twist(s[k], s[k + 1]);
    s[k] = s[k + MT_M - AP_MT_N] ^ twist(s[k], s[0]);
    g->left = AP_MT_N;
    g->next = 0;
}

uint32_t ap_rng_random(ap_rng *g) {
    if (--g->left == 0) next_state(g);
    uint32_t y = g->mt[g->next++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

uint64_t ap_rng_random64(ap_rng *g) {
    uint64_t hi = ap_rng_random(g);
    uint64_t lo = ap_rng_random(g);
    return (hi << 32) | lo;
}

/* uniform_real_distribution<float>(0, 1): 24 bits, exact in f32 */
static inline float uniform_f32(ap_rng *g) {
    return (float)(ap_rng_random(g) & 0xffffffu) * (1.0f / 16777216.0f);
}

/* uniform_real_distribution<double>(0, 1): 53 bits of random64 */
static inline double uniform_f64(ap_rng *g) {
    return (double)(ap_rng_random64(g) & ((UINT64_C(1) << 53) - 1)) * (1.0 / 9007199254740992.0);
}

void ap_rng_rand(ap_rng *g, float *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = uniform_f32(g);
}

/* ------------------------------------------------------------ scalar path (< 16 elements)
 * normal_distribution<double>: Box-Muller over (u1, u2), the sine half cached. */
static float normal_scalar_path(ap_rng *g) {
    double v;
    if (g->has_next_double) {
        g->has_next_double = false;
        v = g->next_double;
    } else {
        double u1 = uniform_f64(g);
        double u2 = uniform_f64(g);
        double r = sqrt(-2.0 * log(1.0 - u2));
        double theta = 6.283185307179586 * u1; /* (2.0 * pi) folded first, as in C++ */
        g->next_double = r * sin(theta);
        g->has_next_double = true;
        v = r * cos(theta);
    }
    return (float)(v * 1.0 + 0.0); /* val*std + mean: turns -0 into +0 as torch does */
}

/* ------------------------------------------------------------ the 16-element transforms
 * Cephes-style float32 log and sincos with the operation order, and the fused
 * multiply-adds, of torch 1.13's AVX2 kernel as GCC compiled it for Debian (verified on
 * 4M values against torch). Constants are Cephes' single-precision coefficients. */
#define LOG_P0 7.0376836292E-2f
#define LOG_P1 -1.1514610310E-1f
#define LOG_P2 1.1676998740E-1f
#define LOG_P3 -1.2420140846E-1f
#define LOG_P4 1.4249322787E-1f
#define LOG_P5 -1.6668057665E-1f
#define LOG_P6 2.0000714765E-1f
#define LOG_P7 -2.4999993993E-1f
#define LOG_P8 3.3333331174E-1f
#define LOG_Q1 -2.12194440e-4f
#define LOG_Q2 0.693359375f
#define SQRTHF 0.707106781186547524f
#define FOPI 1.27323954473516f /* 4/pi */
#define DP1 -0.78515625f       /* -pi/4 split in three parts */
#define DP2 -2.4187564849853515625e-4f
#define DP3 -3.77489497744594108e-8f
#define COS_P0 2.443315711809948E-005f
#define COS_P1 -1.388731625493765E-003f
#define COS_P2 4.166664568298827E-002f
#define SIN_P0 -1.9515295891E-4f
#define SIN_P1 8.3321608736E-3f
#define SIN_P2 -1.6666654611E-1f
#define TWO_PI_F ((float)(2.0 * 3.14159265358979323846))

static inline uint32_t f2u(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static inline float u2f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* log for u in [2^-24, 1] (the kernel's inputs: no zeros, negatives or denormals) */
static float cephes_logf(float x) {
    int32_t e_int = (int32_t)(f2u(x) >> 23) - 0x7f;
    x = u2f((f2u(x) & ~0x7f800000u) | f2u(0.5f)); /* mantissa in [0.5, 1) */
    float e = (float)e_int + 1.0f;
    bool small = x < SQRTHF;
    float tmp = small ? x : 0.0f;
    x = x - 1.0f;
    e = e - (small ? 1.0f : 0.0f);
    x = x + tmp;
    float z = x * x;
    float y = LOG_P0;
    y = fmaf(y, x, LOG_P1);
    y = fmaf(y, x, LOG_P2);
    y = fmaf(y, x, LOG_P3);
    y = fmaf(y, x, LOG_P4);
    y = fmaf(y, x, LOG_P5);
    y = fmaf(y, x, LOG_P6);
    y = fmaf(y, x, LOG_P7);
    y = fmaf(y, x, LOG_P8);
    y = y * x;
    y = fmaf(y, z, e * LOG_Q1);
    y = fmaf(-z, 0.5f, y);
    x = x + y;
    return fmaf(e, LOG_Q2, x);
}

static void cephes_sincosf(float x, float *s, float *c) {
    uint32_t sign_sin = f2u(x) & 0x80000000u;
    x = u2f(f2u(x) & 0x7fffffffu);
    int32_t j = (int32_t)(x * FOPI); /* truncation, as cvttps2dq */
    j = (j + 1) & ~1;
    float y = (float)j;
    uint32_t swap_sin = (uint32_t)(j & 4) << 29;
    bool poly_sin = (j & 2) == 0; /* the sine polynomial gives sin on this octant pair */
    x = fmaf(y, DP1, x);
    x = fmaf(y, DP2, x);
    x = fmaf(y, DP3, x);
    uint32_t sign_cos = (uint32_t)(~(j - 2) & 4) << 29;
    sign_sin ^= swap_sin;
    float z = x * x;
    float yc = fmaf(COS_P0, z, COS_P1);
    yc = fmaf(yc, z, COS_P2);
    yc = fmaf(yc * z, z, -(z * 0.5f));
    yc = yc + 1.0f;
    float ys = fmaf(SIN_P0, z, SIN_P1);
    ys = fmaf(ys, z, SIN_P2);
    ys = fmaf(ys * z, x, x);
    /* the kernel selects with masks and adds the zeroed lane: keep its signed zeros */
    float s_from_sin = poly_sin ? ys : 0.0f, s_from_cos = poly_sin ? 0.0f : yc;
    float c_rest_sin = ys - s_from_sin, c_rest_cos = yc - s_from_cos;
    *s = u2f(f2u(s_from_cos + s_from_sin) ^ sign_sin);
    *c = u2f(f2u(c_rest_cos + c_rest_sin) ^ sign_cos);
}

static void transform16_avx2_portable(float *d) {
    float out[16];
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - d[j], u2 = d[j + 8];
        float r = sqrtf(-2.0f * cephes_logf(u1));
        float s, c;
        cephes_sincosf(TWO_PI_F * u2, &s, &c);
        out[j] = fmaf(r * c, 1.0f, 0.0f);
        out[j + 8] = fmaf(r * s, 1.0f, 0.0f);
    }
    memcpy(d, out, sizeof out);
}

#ifdef AP_RNG_HAVE_AVX2
#define SET1(v) _mm256_set1_ps(v)
#define SET1I(v) _mm256_set1_epi32(v)

static inline __m256 cephes_log8(__m256 x) {
    __m256 one = SET1(1.0f);
    __m256i e_int = _mm256_sub_epi32(_mm256_srli_epi32(_mm256_castps_si256(x), 23), SET1I(0x7f));
    x = _mm256_or_ps(_mm256_and_ps(x, _mm256_castsi256_ps(SET1I(~0x7f800000))), SET1(0.5f));
    __m256 e = _mm256_add_ps(_mm256_cvtepi32_ps(e_int), one);
    __m256 small = _mm256_cmp_ps(x, SET1(SQRTHF), _CMP_LT_OS);
    __m256 tmp = _mm256_and_ps(x, small);
    x = _mm256_sub_ps(x, one);
    e = _mm256_sub_ps(e, _mm256_and_ps(one, small));
    x = _mm256_add_ps(x, tmp);
    __m256 z = _mm256_mul_ps(x, x);
    __m256 y = SET1(LOG_P0);
    y = _mm256_fmadd_ps(y, x, SET1(LOG_P1));
    y = _mm256_fmadd_ps(y, x, SET1(LOG_P2));
    y = _mm256_fmadd_ps(y, x, SET1(LOG_P3));
    y = _mm256_fmadd_ps(y, x, SET1(LOG_P4));
    y = _mm256_fmadd_ps(y, x, SET1(LOG_P5));
    y = _mm256_fmadd_ps(y, x, SET1(LOG_P6));
    y = _mm256_fmadd_ps(y, x, SET1(LOG_P7));
    y = _mm256_fmadd_ps(y, x, SET1(LOG_P8));
    y = _mm256_mul_ps(y, x);
    y = _mm256_fmadd_ps(y, z, _mm256_mul_ps(e, SET1(LOG_Q1)));
    y = _mm256_fnmadd_ps(z, SET1(0.5f), y);
    x = _mm256_add_ps(x, y);
    return _mm256_fmadd_ps(e, SET1(LOG_Q2), x);
}

static inline void cephes_sincos8(__m256 x, __m256 *s, __m256 *c) {
    __m256 sign_mask = _mm256_castsi256_ps(SET1I((int)0x80000000u));
    __m256 sign_sin = _mm256_and_ps(x, sign_mask);
    x = _mm256_andnot_ps(sign_mask, x);
    __m256i j = _mm256_cvttps_epi32(_mm256_mul_ps(x, SET1(FOPI)));
    j = _mm256_and_si256(_mm256_add_epi32(j, SET1I(1)), SET1I(~1));
    __m256 y = _mm256_cvtepi32_ps(j);
    __m256 swap_sin = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_and_si256(j, SET1I(4)), 29));
    __m256 poly_sin = _mm256_castsi256_ps(
        _mm256_cmpeq_epi32(_mm256_and_si256(j, SET1I(2)), _mm256_setzero_si256()));
    x = _mm256_fmadd_ps(y, SET1(DP1), x);
    x = _mm256_fmadd_ps(y, SET1(DP2), x);
    x = _mm256_fmadd_ps(y, SET1(DP3), x);
    __m256 sign_cos = _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_andnot_si256(_mm256_sub_epi32(j, SET1I(2)), SET1I(4)), 29));
    sign_sin = _mm256_xor_ps(sign_sin, swap_sin);
    __m256 z = _mm256_mul_ps(x, x);
    __m256 yc = _mm256_fmadd_ps(SET1(COS_P0), z, SET1(COS_P1));
    yc = _mm256_fmadd_ps(yc, z, SET1(COS_P2));
    yc = _mm256_fmsub_ps(_mm256_mul_ps(yc, z), z, _mm256_mul_ps(z, SET1(0.5f)));
    yc = _mm256_add_ps(yc, SET1(1.0f));
    __m256 ys = _mm256_fmadd_ps(SET1(SIN_P0), z, SET1(SIN_P1));
    ys = _mm256_fmadd_ps(ys, z, SET1(SIN_P2));
    ys = _mm256_fmadd_ps(_mm256_mul_ps(ys, z), x, x);
    __m256 s_from_sin = _mm256_and_ps(poly_sin, ys), s_from_cos = _mm256_andnot_ps(poly_sin, yc);
    __m256 c_rest_sin = _mm256_sub_ps(ys, s_from_sin), c_rest_cos = _mm256_sub_ps(yc, s_from_cos);
    *s = _mm256_xor_ps(_mm256_add_ps(s_from_cos, s_from_sin), sign_sin);
    *c = _mm256_xor_ps(_mm256_add_ps(c_rest_cos, c_rest_sin), sign_cos);
}

static void transform16_avx2(float *d) {
    __m256 u1 = _mm256_sub_ps(SET1(1.0f), _mm256_loadu_ps(d));
    __m256 u2 = _mm256_loadu_ps(d + 8);
    __m256 r = _mm256_sqrt_ps(_mm256_mul_ps(SET1(-2.0f), cephes_log8(u1)));
    __m256 s, c;
    cephes_sincos8(_mm256_mul_ps(SET1(TWO_PI_F), u2), &s, &c);
    _mm256_storeu_ps(d, _mm256_fmadd_ps(_mm256_mul_ps(r, c), SET1(1.0f), _mm256_setzero_ps()));
    _mm256_storeu_ps(d + 8, _mm256_fmadd_ps(_mm256_mul_ps(r, s), SET1(1.0f), _mm256_setzero_ps()));
}
#endif

/* torch's scalar kernel: libm in float, theta rounded from a double product */
static void transform16_scalar(float *d) {
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - d[j], u2 = d[j + 8];
        float r = sqrtf(-2.0f * logf(u1));
        float theta = (float)(6.283185307179586 * (double)u2);
        float c = r * cosf(theta), s = r * sinf(theta);
        d[j] = c * 1.0f + 0.0f;
        d[j + 8] = s * 1.0f + 0.0f;
    }
}

void ap_randn_transform16(float d[16], ap_randn_kernel k, bool portable) {
    if (k == AP_RANDN_TORCH_SCALAR) {
        transform16_scalar(d);
        return;
    }
#ifdef AP_RNG_HAVE_AVX2
    if (!portable) {
        transform16_avx2(d);
        return;
    }
#endif
    (void)portable;
    transform16_avx2_portable(d);
}

void ap_rng_randn(ap_rng *g, float *out, int64_t n) {
    if (n <= 0) return;
    if (n < 16) {
        for (int64_t i = 0; i < n; i++) out[i] = normal_scalar_path(g);
        return;
    }
    ap_rng_rand(g, out, n);
    for (int64_t i = 0; i + 16 <= n; i += 16) ap_randn_transform16(out + i, g->kernel, false);
    if (n % 16) {
        float *tail = out + n - 16; /* overlaps the last full block: torch recomputes it */
        ap_rng_rand(g, tail, 16);
        ap_randn_transform16(tail, g->kernel, false);
    }
}

bool ap_rng_randn_nhwc(ap_rng *g, float *out, int64_t n, int64_t h, int64_t w, int64_t c) {
    int64_t plane = h * w, total = n * c * plane;
    if (total <= 0) return true;
    if (c == 1) {
        ap_rng_randn(g, out, total);
        return true;
    }
    float *nchw = malloc((size_t)total * sizeof(float)); /* [n,c,h,w] */
    if (!nchw) return false;
    ap_rng_randn(g, nchw, total);
    for (int64_t i = 0; i < n; i++)
        for (int64_t ch = 0; ch < c; ch++) {
            const float *src = nchw + (i * c + ch) * plane;
            float *dst = out + i * plane * c + ch;
            for (int64_t p = 0; p < plane; p++) dst[p * c] = src[p];
        }
    free(nchw);
    return true;
}

ap_tensor *ap_rng_randn_tensor(ap_ctx *c, ap_rng *g, int ndim, const int64_t *shape) {
    if (!c || ap_failed(c)) return NULL;
    if (!g) {
        ap_seterr(c, AP_ERR_INVALID_ARG, "randn: generator is NULL");
        return NULL;
    }
    ap_tensor *t = ap_tensor_new(c, AP_F32, ndim, shape);
    if (!t) return NULL;
    ap_rng_randn(g, ap_f32(t), t->numel);
    return t;
}

ap_tensor *ap_rng_randn_latents(ap_ctx *c, ap_rng *g, int64_t n, int64_t h, int64_t w,
                                int64_t ch) {
    if (!c || ap_failed(c)) return NULL;
    if (!g) {
        ap_seterr(c, AP_ERR_INVALID_ARG, "randn_latents: generator is NULL");
        return NULL;
    }
    ap_tensor *t = ap_tensor_new(c, AP_F32, 4, (int64_t[]){n, h, w, ch});
    if (!t) return NULL;
    if (!ap_rng_randn_nhwc(g, ap_f32(t), n, h, w, ch)) {
        ap_tensor_release(t);
        ap_seterr(c, AP_ERR_NOMEM, "randn_latents: out of memory");
        return NULL;
    }
    return t;
}

/* ------------------------------------------------------------ state
 * torch's CPUGeneratorImplState on x86-64, little-endian:
 *   0 u64 initial seed | 8 i32 left | 12 i32 seeded | 16 u64 next | 24 u64 state[624]
 *   5016 f64 normal_x | 5024 f64 normal_y (cached double) | 5032 f64 normal_rho
 *   5040 i32 normal_is_valid | 5048 f32 cached float | 5052 u8 float valid | pad to 5056 */
enum {
    ST_SEED = 0, ST_LEFT = 8, ST_SEEDED = 12, ST_NEXT = 16, ST_WORDS = 24,
    ST_NORMAL_Y = 5024, ST_NORMAL_VALID = 5040, ST_FLOAT = 5048, ST_FLOAT_VALID = 5052
};

static void put_le(uint8_t *p, uint64_t v, int nbytes) {
    for (int i = 0; i < nbytes; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint64_t get_le(const uint8_t *p, int nbytes) {
    uint64_t v = 0;
    for (int i = 0; i < nbytes; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

void ap_rng_get_state(const ap_rng *g, uint8_t out[AP_RNG_STATE_BYTES]) {
    memset(out, 0, AP_RNG_STATE_BYTES);
    put_le(out + ST_SEED, g->seed, 8);
    put_le(out + ST_LEFT, (uint32_t)g->left, 4);
    put_le(out + ST_SEEDED, 1, 4);
    put_le(out + ST_NEXT, g->next, 8);
    for (int j = 0; j < AP_MT_N; j++) put_le(out + ST_WORDS + 8 * j, g->mt[j], 8);
    if (g->has_next_double) {
        uint64_t bits;
        memcpy(&bits, &g->next_double, 8);
        put_le(out + ST_NORMAL_Y, bits, 8);
        put_le(out + ST_NORMAL_VALID, 1, 4);
    }
    if (g->has_next_float) {
        put_le(out + ST_FLOAT, f2u(g->next_float), 4);
        out[ST_FLOAT_VALID] = 1;
    }
}

ap_status ap_rng_set_state(ap_ctx *c, ap_rng *g, const void *state, size_t nbytes) {
    if (!c) return AP_ERR_INVALID_ARG;
    if (ap_failed(c)) return c->status;
    if (!g || !state)
        return ap_seterr(c, AP_ERR_INVALID_ARG, "rng_set_state: %s is NULL", g ? "state" : "generator");
    if (nbytes != AP_RNG_STATE_BYTES)
        return ap_seterr(c, AP_ERR_FORMAT, "rng_set_state: state has %zu bytes, expected %d", nbytes,
                         AP_RNG_STATE_BYTES);
    const uint8_t *p = state;
    int32_t left = (int32_t)(uint32_t)get_le(p + ST_LEFT, 4);
    uint64_t next = get_le(p + ST_NEXT, 8);
    if (get_le(p + ST_SEEDED, 4) != 1)
        return ap_seterr(c, AP_ERR_FORMAT, "rng_set_state: the state is not seeded");
    if (left < 1 || left > AP_MT_N || next > AP_MT_N)
        return ap_seterr(c, AP_ERR_FORMAT, "rng_set_state: bad position (left %d, next %llu)", left,
                         (unsigned long long)next);
    ap_rng t = *g;
    for (int j = 0; j < AP_MT_N; j++) {
        uint64_t w = get_le(p + ST_WORDS + 8 * j, 8);
        if (w > 0xffffffffu)
            return ap_seterr(c, AP_ERR_FORMAT, "rng_set_state: state word %d exceeds 32 bits", j);
        t.mt[j] = (uint32_t)w;
    }
    t.seed = get_le(p + ST_SEED, 8);
    t.left = left;
    t.next = (uint32_t)next;
    t.has_next_double = get_le(p + ST_NORMAL_VALID, 4) != 0;
    uint64_t bits = get_le(p + ST_NORMAL_Y, 8);
    memcpy(&t.next_double, &bits, 8);
    if (!t.has_next_double) t.next_double = 0;
    t.has_next_float = p[ST_FLOAT_VALID] != 0;
    t.next_float = t.has_next_float ? u2f((uint32_t)get_le(p + ST_FLOAT, 4)) : 0.0f;
    *g = t;
    return AP_OK;
}
