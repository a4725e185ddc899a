/* Context, status strings, version, tensors, dtype conversions and the arena. */
#include "backend/cpu/convert.h"
#include "core/internal.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void test_version_status(void) {
    CHECK(ap_version() == AP_VERSION_NUMBER);
    CHECK(!strcmp(ap_version_string(), AP_VERSION_STRING));
    for (int s = 0; s < AP_ERR_COUNT_; s++) CHECK(ap_strerror((ap_status)s)[0] != 0);
    CHECK(!strcmp(ap_strerror(AP_ERR_COUNT_), "unknown status"));
    CHECK(!strcmp(ap_strerror(AP_OK), "ok"));
}

static void test_env(void) {
    ap_ctx *c = NULL;
    setenv("AP_NUM_THREADS", "zero", 1);
    CHECK(ap_ctx_create_checked(&c) == AP_ERR_INVALID_ARG);
    CHECK(c && strstr(ap_last_error(c), "AP_NUM_THREADS") != NULL);
    ap_ctx_free(c);
    setenv("AP_NUM_THREADS", "1", 1);
    setenv("AP_PRECISION", "fp8", 1);
    CHECK(ap_ctx_create_checked(&c) == AP_ERR_INVALID_ARG);
    CHECK(strstr(ap_last_error(c), "AP_PRECISION") != NULL);
    ap_ctx_free(c);
    setenv("AP_PRECISION", "bf16", 1);
    CHECK(ap_ctx_create_checked(&c) == AP_OK);
    CHECK(ap_get_precision(c) == AP_PREC_BF16 && ap_get_num_threads(c) == 1);
    CHECK(ap_set_num_threads(c, 0) == AP_ERR_INVALID_ARG);
    ap_clear_error(c);
    CHECK(ap_set_precision(c, (ap_precision)7) == AP_ERR_INVALID_ARG);
    ap_ctx_free(c);
    unsetenv("AP_PRECISION");
    setenv("AP_NUM_THREADS", "2", 1);
    ap_ctx_free(NULL); /* destructors accept NULL */
    ap_tensor_release(NULL);
}

static void test_tensors(ap_ctx *c) {
    ap_tensor *t = ap_tensor_zeros(c, AP_F32, 3, (int64_t[]){2, 3, 4});
    CHECK(t && ap_tensor_numel(t) == 24 && ap_tensor_dim(t, -1) == 4 && ap_tensor_dim(t, 0) == 2);
    CHECK(ap_tensor_nbytes(t) == 96);
    CHECK(ap_tensor_dim(t, 5) == 0);
    ap_tensor *v = ap_reshape(c, t, 2, (int64_t[]){-1, 8});
    CHECK(v && ap_tensor_dim(v, 0) == 3 && ap_tensor_data(v) == ap_tensor_data(t));
    CHECK(ap_reshape(c, t, 2, (int64_t[]){5, -1}) == NULL);
    CHECK(ap_last_status(c) == AP_ERR_SHAPE);
    ap_clear_error(c);
    CHECK(ap_tensor_new(c, AP_F32, 7, (int64_t[]){1, 1, 1, 1, 1, 1, 1}) == NULL);
    ap_clear_error(c);
    CHECK(ap_tensor_new(c, AP_F32, 1, (int64_t[]){-3}) == NULL);
    ap_clear_error(c);
    CHECK(ap_tensor_new(c, (ap_dtype)99, 1, (int64_t[]){3}) == NULL);
    CHECK(ap_last_status(c) == AP_ERR_DTYPE);
    ap_clear_error(c);
    /* a scalar (0 dims) has one element; an empty tensor none */
    ap_tensor *s = ap_tensor_zeros(c, AP_F32, 0, NULL), *e = ap_tensor_zeros(c, AP_F32, 2, (int64_t[]){0, 5});
    CHECK(s && ap_tensor_numel(s) == 1 && e && ap_tensor_numel(e) == 0);
    CHECK(ap_tensor_set_name(t, "down_blocks.0.weight") == AP_OK && !strcmp(ap_tensor_name(t), "down_blocks.0.weight"));
    ap_tensor_release(s);
    ap_tensor_release(e);
    ap_tensor_release(v);
    ap_tensor_release(t);
}

static void test_conversions(ap_ctx *c) {
    /* bf16: round to nearest even on the low 16 bits */
    CHECK(ap_f32_to_bf16(1.0f) == 0x3f80);
    float f;
    uint32_t u = 0x3f808000u; /* exactly halfway between 0x3f80 and 0x3f81: ties to even 0x3f80 */
    memcpy(&f, &u, 4);
    CHECK(ap_f32_to_bf16(f) == 0x3f80);
    u = 0x3f818000u; /* halfway, odd below: rounds up to 0x3f82 */
    memcpy(&f, &u, 4);
    CHECK(ap_f32_to_bf16(f) == 0x3f82);
    u = 0x3f808001u;
    memcpy(&f, &u, 4);
    CHECK(ap_f32_to_bf16(f) == 0x3f81);
    CHECK(isnan(ap_bf16_to_f32(ap_f32_to_bf16(NAN))));
    CHECK(ap_bf16_to_f32(ap_f32_to_bf16(INFINITY)) == INFINITY);
    /* f16: every one of the 65536 values round-trips through f32 */
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float x = ap_f16_to_f32((uint16_t)h);
        if (isnan(x)) {
            bad += !isnan(ap_f16_to_f32(ap_f32_to_f16(x)));
            continue;
        }
        bad += ap_f32_to_f16(x) != h;
    }
    CHECK_MSG(bad == 0, "%d f16 values do not round-trip", bad);
    CHECK(ap_f16_to_f32(0x3c00) == 1.0f && ap_f16_to_f32(0x0001) == ldexpf(1.0f, -24));
    CHECK(ap_f32_to_f16(65520.0f) == 0x7c00); /* rounds to infinity */
    CHECK(ap_f32_to_f16(65519.0f) == 0x7bff);
    CHECK(ap_f32_to_f16(ldexpf(1.0f, -25)) == 0); /* half the smallest subnormal: ties to even 0 */
    CHECK(ap_f32_to_f16(ldexpf(1.5f, -25)) == 1);
    /* f16 rounding against a double reference on random values */
    test_rng r = {5};
    bad = 0;
    for (int i = 0; i < 100000; i++) {
        float x = (float)((test_rng_uniform(&r) - 0.5) * pow(2.0, (int)(test_rng_uniform(&r) * 40) - 24));
        uint16_t h = ap_f32_to_f16(x);
        double y = ap_f16_to_f32(h), dn = ap_f16_to_f32(h - 1), up = ap_f16_to_f32(h + 1);
        if ((h & 0x7fff) == 0x7c00) continue;
        if (fabs(x - y) > fabs(x - dn) || fabs(x - y) > fabs(x - up)) bad++;
    }
    CHECK_MSG(bad == 0, "%d f16 conversions not nearest", bad);
    /* tensor conversion */
    float vals[5] = {1.0f, -2.5f, 3.14159f, 65504.0f, 1e-3f};
    ap_tensor *t = ap_tensor_from_data(c, AP_F32, 1, (int64_t[]){5}, vals);
    ap_tensor *h = ap_tensor_convert(c, t, AP_F16), *b = ap_tensor_convert(c, t, AP_BF16);
    ap_tensor *h2 = ap_tensor_convert(c, h, AP_F32), *b2 = ap_tensor_convert(c, b, AP_F32);
    CHECK_OK(c);
    double want_h[5], want_b[5];
    for (int i = 0; i < 5; i++) {
        want_h[i] = ap_f16_to_f32(ap_f32_to_f16(vals[i]));
        want_b[i] = ap_bf16_to_f32(ap_f32_to_bf16(vals[i]));
    }
    test_close("f32->f16->f32", ap_tensor_cdata(h2), want_h, 5, 0, 0);
    test_close("f32->bf16->f32", ap_tensor_cdata(b2), want_b, 5, 0, 0);
    test_close("bf16 within 2^-8", ap_tensor_cdata(b2), (double[]){1.0, -2.5, 3.14159, 65504.0, 1e-3}, 5, 1.0 / 256, 0);
    CHECK(ap_tensor_convert(c, t, AP_I32) == NULL && ap_last_status(c) == AP_ERR_DTYPE);
    ap_clear_error(c);
    int64_t ids[3] = {1, -7, 49407};
    ap_tensor *i64 = ap_tensor_from_data(c, AP_I64, 1, (int64_t[]){3}, ids);
    ap_tensor *i32 = ap_tensor_convert(c, i64, AP_I32);
    CHECK(i32 && ((int32_t *)ap_tensor_data(i32))[1] == -7 && ((int32_t *)ap_tensor_data(i32))[2] == 49407);
    ap_tensor *ts[] = {t, h, b, h2, b2, i64, i32};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) ap_tensor_release(ts[i]);
}

/* The scalar functions define the bits; every kernel level must give the same
 * bits for every float dtype pair, with FTZ/DAZ on (subnormals must survive),
 * for NaN payloads, infinities, exact ties, any tail length and unaligned
 * sources, and must not write past n. */
static float scalar_widen(const uint16_t *h16, const uint32_t *u32, ap_dtype sd, int i) {
    float f;
    if (sd == AP_BF16) return ap_bf16_to_f32(h16[i]);
    if (sd == AP_F16) return ap_f16_to_f32(h16[i]);
    memcpy(&f, &u32[i], 4);
    return f;
}

static uint32_t scalar_narrow(ap_dtype dd, float f) {
    uint32_t u;
    if (dd == AP_BF16) return ap_f32_to_bf16(f);
    if (dd == AP_F16) return ap_f32_to_f16(f);
    memcpy(&u, &f, 4);
    return u;
}

static void test_convert_kernels(void) {
    enum { N = 1200 };
    static uint32_t u32[N];
    static uint16_t h16[N];
    static unsigned char srcbuf[4 * N + 8], dstbuf[4 * N + 64];
    test_rng r = {77};
    for (int i = 0; i < N; i++) {
        uint32_t u = (uint32_t)test_rng_next(&r);
        uint16_t h = (uint16_t)(u >> 7);
        switch (i % 9) {
        case 0: u &= 0x807fffffu, h &= 0x83ffu; break;                          /* subnormals (and zeros) */
        case 1: u |= 0x7f800000u, h |= 0x7c00u; break;                          /* NaN with payloads, rarely inf */
        case 2: u = (u & 0xffff0000u) | 0x8000u; break;                         /* bf16 ties */
        case 3: u = (u & 0xffffe000u) | 0x1000u, h = (uint16_t)(h & 0x8000u); break; /* f16 ties; signed zero */
        case 4: u = (u & 0x80000000u) | (uint32_t)(0x33000000u + (u & 0x01ffffffu)); break; /* f16 subnormal range */
        case 5: u = (u & 0x807fffffu) | 0x00800000u; break;                       /* smallest normals */
        default: break;
        }
        u32[i] = u;
        h16[i] = h;
    }
    u32[10] = 0x7f800000u, u32[11] = 0xff800000u, h16[10] = 0x7c00, h16[11] = 0xfc00; /* infinities */
    u32[12] = 0x477ff000u, u32[13] = 0x7f7fffffu;                                    /* f16 overflow ties */
    ap_set_ftz_daz();
    const ap_dtype fl[3] = {AP_F32, AP_BF16, AP_F16};
    int bad = 0;
    for (int isa = 0; isa <= (int)ap_cpu_convert_isa(); isa++)
        for (int a = 0; a < 3; a++)
            for (int b = 0; b < 3; b++) {
                ap_dtype sd = fl[a], dd = fl[b];
                size_t ss = ap_dtype_size(sd), ds = ap_dtype_size(dd);
                for (int mis = 0; mis < 2; mis++) {
                    unsigned char *src = srcbuf + mis * (ss == 4 ? 2 : 1); /* misaligned by half an element */
                    memcpy(src, sd == AP_F32 ? (const void *)u32 : (const void *)h16, ss * N);
                    for (int n = 0; n <= N && bad < 5; n += n < 70 ? 1 : 377) {
                        memset(dstbuf, 0xab, sizeof dstbuf);
                        ap_cpu_convert_at((ap_cvt_isa)isa, dstbuf, dd, src, sd, n);
                        for (int i = 0; i < n && bad < 5; i++) {
                            uint32_t want = sd == dd ? (sd == AP_F32 ? u32[i] : h16[i]) /* a copy */
                                                     : scalar_narrow(dd, scalar_widen(h16, u32, sd, i));
                            uint32_t got = 0;
                            memcpy(&got, dstbuf + ds * (size_t)i, ds);
                            if (got != want) {
                                bad++;
                                fprintf(stderr, "isa %d %s->%s n %d [%d]: got %08x want %08x\n", isa,
                                        ap_dtype_name(sd), ap_dtype_name(dd), n, i, got, want);
                            }
                        }
                        for (size_t k = ds * (size_t)n; k < sizeof dstbuf; k++) bad += dstbuf[k] != 0xab;
                    }
                }
            }
    CHECK_MSG(bad == 0, "%d conversion kernel results differ from the scalar functions", bad);
    /* every f16 value, widened by each level, and back */
    int badh = 0;
    for (int isa = 0; isa <= (int)ap_cpu_convert_isa(); isa++) {
        static uint16_t all[65536], back[65536];
        static float wide[65536];
        for (int h = 0; h < 65536; h++) all[h] = (uint16_t)h;
        ap_cpu_convert_at((ap_cvt_isa)isa, wide, AP_F32, all, AP_F16, 65536);
        ap_cpu_convert_at((ap_cvt_isa)isa, back, AP_F16, wide, AP_F32, 65536);
        for (int h = 0; h < 65536; h++) {
            uint32_t w, want;
            float ref = ap_f16_to_f32((uint16_t)h);
            memcpy(&w, &wide[h], 4);
            memcpy(&want, &ref, 4);
            badh += w != want || back[h] != ap_f32_to_f16(ref);
        }
    }
    CHECK_MSG(badh == 0, "%d f16 values not widened exactly under FTZ/DAZ", badh);
}

static void test_arena(ap_ctx *c) {
    ap_mem_trim(c);
    size_t base = ap_mem_in_use(c);
    ap_mem_reset_peak(c);
    ap_tensor *a = ap_tensor_new(c, AP_F32, 1, (int64_t[]){1000000});
    ap_tensor *b = ap_tensor_new(c, AP_F32, 1, (int64_t[]){1000000});
    size_t two = ap_mem_in_use(c) - base;
    CHECK(two >= 8000000 && two <= 10000000);
    void *pa = ap_tensor_data(a);
    ap_tensor_release(a);
    CHECK(ap_mem_in_use(c) - base == two / 2);
    ap_tensor *a2 = ap_tensor_new(c, AP_F32, 1, (int64_t[]){1000000});
    CHECK_MSG(ap_tensor_data(a2) == pa, "a released block of the same class is reused");
    CHECK(ap_mem_peak(c) - base == two);
    CHECK(((uintptr_t)ap_tensor_data(a2) & 63) == 0);
    ap_tensor_release(a2);
    ap_tensor_release(b);
    CHECK(ap_mem_in_use(c) == base);
    CHECK(ap_mem_reserved(c) >= two);
    ap_mem_trim(c);
    CHECK(ap_mem_reserved(c) == base);
    /* a view keeps its storage alive */
    ap_tensor *x = ap_tensor_zeros(c, AP_F32, 2, (int64_t[]){4, 4});
    ap_tensor *v = ap_reshape(c, x, 1, (int64_t[]){16});
    ap_tensor_release(x);
    CHECK(ap_mem_in_use(c) > base);
    ((float *)ap_tensor_data(v))[15] = 1.0f;
    ap_tensor_release(v);
    CHECK(ap_mem_in_use(c) == base);
}

int main(void) {
    test_version_status();
    test_env();
    ap_ctx *c = test_ctx();
    test_tensors(c);
    test_conversions(c);
    test_convert_kernels();
    test_arena(c);
    ap_ctx_free(c);
    return test_summary("tensor");
}
