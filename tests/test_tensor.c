/* Context, status strings, version, tensors, dtype conversions and the arena. */
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
    test_arena(c);
    ap_ctx_free(c);
    return test_summary("tensor");
}
