/* The torch-compatible Gaussian stream: bit-exact agreement with PyTorch 1.13 draws
 * (tests/ref/rng.bin from tests/ref/gen_rng.py), the generator state in torch's byte
 * layout, save/restore, the NHWC latent layout, and the error cases. */
#include "diffusion/rng.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ fixture reader */
typedef struct {
    const uint8_t *p, *end;
    int bad;
} reader;

static const uint8_t *take(reader *r, size_t n) {
    if (r->bad || (size_t)(r->end - r->p) < n) {
        r->bad = 1;
        return NULL;
    }
    const uint8_t *q = r->p;
    r->p += n;
    return q;
}
static uint64_t rd(reader *r, int nbytes) {
    const uint8_t *q = take(r, (size_t)nbytes);
    uint64_t v = 0;
    for (int i = 0; q && i < nbytes; i++) v |= (uint64_t)q[i] << (8 * i);
    return v;
}

/* the first element whose bits differ, or -1 */
static int64_t first_diff(const float *a, const float *b, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (memcmp(a + i, b + i, 4)) return i;
    return -1;
}

static void test_fixture(ap_ctx *c) {
    size_t len = 0;
    uint8_t *blob = test_read_file("tests/ref/rng.bin", &len);
    CHECK_MSG(blob != NULL, "tests/ref/rng.bin missing (run tests/ref/gen_rng.py)");
    if (!blob) return;
    reader r = {blob, blob + len, 0};
    const uint8_t *magic = take(&r, 8);
    CHECK(magic && !memcmp(magic, "APRNG001", 8));
    uint32_t ncases = (uint32_t)rd(&r, 4);
    int kernels_seen[2] = {0, 0};
    for (uint32_t ci = 0; ci < ncases && !r.bad; ci++) {
        uint64_t seed = rd(&r, 8);
        int kernel = (int)rd(&r, 1);
        (void)rd(&r, 1); /* default generator or a torch.Generator: the same stream */
        uint32_t ndraws = (uint32_t)rd(&r, 4);
        CHECK(kernel == 0 || kernel == 1);
        kernels_seen[kernel & 1]++;
        ap_rng g;
        ap_rng_init(&g, seed);
        ap_rng_set_kernel(&g, (ap_randn_kernel)kernel);
        for (uint32_t d = 0; d < ndraws && !r.bad; d++) {
            int kind = (int)rd(&r, 1);
            uint64_t n = rd(&r, 8);
            const uint8_t *vals = take(&r, n * 4);
            if (!vals) break;
            float *want = malloc(n * 4), *got = malloc(n * 4);
            memcpy(want, vals, n * 4);
            if (kind == 0)
                ap_rng_randn(&g, got, (int64_t)n);
            else
                ap_rng_rand(&g, got, (int64_t)n);
            int64_t at = first_diff(got, want, (int64_t)n);
            CHECK_MSG(at < 0, "case %u (seed %llu, %s kernel) draw %u (%s of %llu): element %lld is %.9g, torch %.9g",
                      ci, (unsigned long long)seed, kernel ? "scalar" : "avx2", d,
                      kind ? "rand" : "randn", (unsigned long long)n, (long long)at,
                      at >= 0 ? got[at] : 0.0, at >= 0 ? want[at] : 0.0);
            free(want);
            free(got);
        }
        uint32_t slen = (uint32_t)rd(&r, 4);
        const uint8_t *state = take(&r, slen);
        if (!state) break;
        CHECK(slen == AP_RNG_STATE_BYTES);
        uint8_t mine[AP_RNG_STATE_BYTES];
        ap_rng_get_state(&g, mine);
        if (slen == AP_RNG_STATE_BYTES) {
            int at = -1;
            for (int i = 0; i < AP_RNG_STATE_BYTES && at < 0; i++)
                if (mine[i] != state[i]) at = i;
            CHECK_MSG(at < 0, "case %u: state byte %d is %u, torch %u", ci, at, at >= 0 ? mine[at] : 0,
                      at >= 0 ? state[at] : 0);
            /* torch's state resumes here exactly as the generator that made it */
            ap_rng h;
            ap_rng_init(&h, 1);
            ap_rng_set_kernel(&h, (ap_randn_kernel)kernel);
            CHECK(ap_rng_set_state(c, &h, state, slen) == AP_OK);
            float a[40], b[40];
            ap_rng_randn(&g, a, 3);
            ap_rng_randn(&g, a + 3, 37);
            ap_rng_randn(&h, b, 3);
            ap_rng_randn(&h, b + 3, 37);
            CHECK(first_diff(a, b, 40) < 0);
        }
    }
    CHECK_MSG(!r.bad && r.p == r.end, "rng.bin is truncated or has trailing bytes");
    CHECK(kernels_seen[0] >= 10 && kernels_seen[1] >= 2);
    free(blob);
}

/* ------------------------------------------------------------ mt19937 itself
 * The C++ standard pins mt19937: default seed 5489, first output 3499211612 and the
 * 10000th output 4123659995. */
static void test_mt19937_reference(void) {
    ap_rng g;
    ap_rng_init(&g, 5489);
    uint32_t first = ap_rng_random(&g), v = first;
    for (int i = 1; i < 10000; i++) v = ap_rng_random(&g);
    CHECK(first == 3499211612u);
    CHECK(v == 4123659995u);
    ap_rng_init(&g, 5489);
    uint64_t w = ap_rng_random64(&g);
    CHECK(w == ((uint64_t)3499211612u << 32 | 581869302u)); /* second output of the standard sequence */
}

/* ------------------------------------------------------------ transforms
 * The intrinsics and the portable emulation of the AVX2 kernel agree bit for bit, and
 * both kernels agree with a double-precision Box-Muller to float rounding. */
static void test_transforms(void) {
    ap_rng g;
    ap_rng_init(&g, 77);
    int64_t mismatch = 0, far_avx = 0, far_scalar = 0;
    double worst = 0;
    for (int blk = 0; blk < 20000; blk++) {
        float u[16], a[16], b[16], s[16];
        ap_rng_rand(&g, u, 16);
        if (blk == 0) { /* edge uniforms: 0 (log(1) = 0), the largest below 1, quarter turns */
            const float e[16] = {0.0f, 1.0f - 0x1p-24f, 0.5f, 0x1p-24f, 0.25f, 0.75f, 0.125f, 0.999f,
                                 0.0f, 0.25f, 0.5f, 0.75f, 1.0f - 0x1p-24f, 0x1p-24f, 0.375f, 0.625f};
            memcpy(u, e, sizeof e);
        }
        memcpy(a, u, sizeof u);
        memcpy(b, u, sizeof u);
        memcpy(s, u, sizeof u);
        ap_randn_transform16(a, AP_RANDN_TORCH_AVX2, false);
        ap_randn_transform16(b, AP_RANDN_TORCH_AVX2, true);
        ap_randn_transform16(s, AP_RANDN_TORCH_SCALAR, false);
        if (first_diff(a, b, 16) >= 0) mismatch++;
        for (int j = 0; j < 8; j++) {
            double r = sqrt(-2.0 * log(1.0 - (double)u[j])), th = 2.0 * M_PI * (double)u[j + 8];
            double ref[2] = {r * cos(th), r * sin(th)};
            for (int k = 0; k < 2; k++) {
                double ea = fabs(a[j + 8 * k] - ref[k]), es = fabs(s[j + 8 * k] - ref[k]);
                double lim = 2e-6 * (1 + fabs(ref[k]));
                if (ea > lim) far_avx++;
                if (es > lim) far_scalar++;
                if (ea > worst) worst = ea;
            }
        }
    }
    CHECK_MSG(mismatch == 0, "%lld blocks differ between the AVX2 intrinsics and the portable emulation",
              (long long)mismatch);
    CHECK_MSG(far_avx == 0 && far_scalar == 0, "%lld / %lld values off the double reference (worst %g)",
              (long long)far_avx, (long long)far_scalar, worst);
    /* u1 = 1 (uniform 0) gives radius exactly 0, stored as +0 */
    float z[16] = {0};
    ap_randn_transform16(z, AP_RANDN_TORCH_AVX2, false);
    CHECK(z[0] == 0.0f && !signbit(z[0]) && z[8] == 0.0f && !signbit(z[8]));
}

/* ------------------------------------------------------------ streams and state */
static void test_stream_and_state(ap_ctx *c) {
    ap_rng g;
    ap_rng_init(&g, 1234);
    CHECK(!strcmp(ap_randn_kernel_name(g.kernel), "avx2"));
    CHECK(!strcmp(ap_randn_kernel_name(AP_RANDN_TORCH_SCALAR), "scalar"));
    CHECK(!strcmp(ap_randn_kernel_name((ap_randn_kernel)9), "unknown"));
    float x1[1];
    ap_rng_randn(&g, x1, 1); /* leaves a cached normal behind */
    CHECK(g.has_next_double);
    uint8_t st[AP_RNG_STATE_BYTES];
    ap_rng_get_state(&g, st);
    float a[300], b[300];
    ap_rng_randn(&g, a, 1);
    ap_rng_randn(&g, a + 1, 299);
    ap_rng h;
    ap_rng_init(&h, 999);
    CHECK(ap_rng_set_state(c, &h, st, sizeof st) == AP_OK);
    CHECK(h.seed == 1234);
    ap_rng_randn(&h, b, 1);
    ap_rng_randn(&h, b + 1, 299);
    CHECK(first_diff(a, b, 300) < 0);

    /* reseeding restarts the stream and drops the cache */
    ap_rng_seed(&g, 1234);
    CHECK(!g.has_next_double);
    float c1[1];
    ap_rng_randn(&g, c1, 1);
    CHECK(c1[0] == x1[0]);

    /* one draw of 2x4x8x8 is not two draws of 1x4x8x8 (the tail rule and the uniform
     * fill run over the whole tensor), but the NHWC draw is the NCHW draw permuted */
    enum { N = 2, C = 4, H = 5, W = 3 };
    float nchw[N * C * H * W], nhwc[N * C * H * W];
    ap_rng_init(&g, 55);
    ap_rng_randn(&g, nchw, N * C * H * W);
    ap_rng_init(&g, 55);
    CHECK(ap_rng_randn_nhwc(&g, nhwc, N, H, W, C));
    int bad = 0;
    for (int i = 0; i < N; i++)
        for (int ch = 0; ch < C; ch++)
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++)
                    bad += nhwc[((i * H + y) * W + x) * C + ch] != nchw[((i * C + ch) * H + y) * W + x];
    CHECK(bad == 0);

    /* tensor forms */
    ap_rng_init(&g, 55);
    ap_tensor *lat = ap_rng_randn_latents(c, &g, N, H, W, C);
    CHECK(lat && ap_tensor_dim(lat, 0) == N && ap_tensor_dim(lat, 1) == H && ap_tensor_dim(lat, 3) == C);
    if (lat) CHECK(!memcmp(ap_tensor_data(lat), nhwc, sizeof nhwc));
    ap_rng_init(&g, 55);
    ap_tensor *flat = ap_rng_randn_tensor(c, &g, 2, (int64_t[]){N * C, H * W});
    CHECK(flat && !memcmp(ap_tensor_data(flat), nchw, sizeof nchw));
    ap_tensor_release(lat);
    ap_tensor_release(flat);
    CHECK_OK(c);

    /* moments of a long draw */
    int64_t n = 1 << 20;
    float *v = malloc((size_t)n * 4);
    ap_rng_init(&g, 3);
    ap_rng_randn(&g, v, n);
    double s1 = 0, s2 = 0;
    for (int64_t i = 0; i < n; i++) s1 += v[i], s2 += (double)v[i] * v[i];
    double mean = s1 / n, var = s2 / n - mean * mean;
    CHECK_MSG(fabs(mean) < 5e-3 && fabs(var - 1) < 5e-3, "mean %g var %g", mean, var);
    free(v);
}

static void test_errors(ap_ctx *c) {
    ap_rng g, before;
    ap_rng_init(&g, 8);
    float tmp[5];
    ap_rng_randn(&g, tmp, 5);
    before = g;
    uint8_t st[AP_RNG_STATE_BYTES];
    ap_rng_get_state(&g, st);

    CHECK(ap_rng_set_state(c, &g, st, 100) == AP_ERR_FORMAT);
    CHECK(strstr(ap_last_error(c), "rng_set_state") && strstr(ap_last_error(c), "100 bytes"));
    ap_clear_error(c);

    uint8_t bad[AP_RNG_STATE_BYTES];
    memcpy(bad, st, sizeof bad);
    bad[12] = 0; /* seeded = 0 */
    CHECK(ap_rng_set_state(c, &g, bad, sizeof bad) == AP_ERR_FORMAT);
    ap_clear_error(c);
    memcpy(bad, st, sizeof bad);
    bad[8] = 0, bad[9] = 0, bad[10] = 0, bad[11] = 0; /* left = 0 */
    CHECK(ap_rng_set_state(c, &g, bad, sizeof bad) == AP_ERR_FORMAT);
    CHECK(strstr(ap_last_error(c), "position") != NULL);
    ap_clear_error(c);
    memcpy(bad, st, sizeof bad);
    bad[24 + 8 * 17 + 4] = 1; /* a state word with bit 32 set */
    CHECK(ap_rng_set_state(c, &g, bad, sizeof bad) == AP_ERR_FORMAT);
    CHECK(strstr(ap_last_error(c), "word 17") != NULL);
    ap_clear_error(c);
    CHECK(ap_rng_set_state(c, &g, NULL, sizeof st) == AP_ERR_INVALID_ARG);
    ap_clear_error(c);
    CHECK(!memcmp(&g, &before, sizeof g)); /* failed restores leave the generator alone */

    /* sticky: with an error pending nothing runs */
    ap_rng_set_state(c, &g, st, 1);
    CHECK(ap_rng_set_state(c, &g, st, sizeof st) == AP_ERR_FORMAT);
    CHECK(ap_rng_randn_latents(c, &g, 1, 2, 2, 4) == NULL);
    ap_clear_error(c);
    CHECK(ap_rng_randn_latents(c, NULL, 1, 2, 2, 4) == NULL && ap_last_status(c) == AP_ERR_INVALID_ARG);
    ap_clear_error(c);
    CHECK(ap_rng_randn_latents(c, &g, -1, 2, 2, 4) == NULL);
    ap_clear_error(c);
    CHECK(ap_rng_randn_tensor(c, NULL, 1, (int64_t[]){3}) == NULL);
    ap_clear_error(c);
    ap_rng_set_kernel(&g, (ap_randn_kernel)7); /* ignored */
    CHECK(g.kernel == AP_RANDN_TORCH_AVX2);
}

int main(void) {
    ap_ctx *c = test_ctx();
    test_fixture(c);
    test_mt19937_reference();
    test_transforms();
    test_stream_and_state(c);
    test_errors(c);
    ap_ctx_free(c);
    return test_summary("test_rng");
}
