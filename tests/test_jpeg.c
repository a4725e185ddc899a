/* The jpeg rewards: ap_log1p (forward, gradient, errors); libjpeg's
 * quantisation tables; the colour / subsampling / DCT / quantisation steps and
 * the edge padding against a double-precision reference written from the
 * JPEG definitions; the size formula; the estimate against libjpeg's real size
 * (a flat image exactly, and the ranking of a procedural set by Spearman
 * correlation); gradients by finite differences; bf16 contexts; thread-count
 * independence; the registry, the metrics and the errors. */
#include "gradcheck.h"
#include "io/jpeg.h"
#include "jpeg_images.h"
#include "rewards/jpeg.h"
#include "rewards/reward.h"
#include "test.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

#define F(t) ((float *)ap_tensor_data(t))

/* ------------------------------------------------------------ ap_log1p */
static ap_tensor *log1p_f(ap_ctx *c, void *user, int n, ap_tensor **in) {
    (void)user;
    (void)n;
    return ap_log1p(c, in[0]);
}

static void test_log1p(ap_ctx *c) {
    test_rng rng = {3};
    static const int64_t shapes[][3] = {{3, 5, 7}, {1, 1, 1}, {2, 9, 1}};
    for (int s = 0; s < 3; s++) {
        ap_tensor *x = test_rand_leaf(c, &rng, 3, shapes[s], -0.9f, 30.0f);
        ap_tensor *y = ap_log1p(c, x);
        CHECK_OK(c);
        int64_t n = ap_tensor_numel(x);
        double *ref = malloc((size_t)n * sizeof *ref);
        for (int64_t i = 0; i < n; i++) ref[i] = log1p((double)F(x)[i]);
        test_close("log1p forward", F(y), ref, n, 1e-6, 1e-7);
        ap_tensor_release(y);
        free(ref);
        ap_tensor_release(x);
        ap_tape_clear(c);
    }
    /* analytic gradient, twice (beta 0 then 1) */
    ap_tensor *x = test_rand_leaf(c, &rng, 1, (int64_t[]){37}, -0.5f, 5.0f);
    double ref[37];
    for (int pass = 1; pass <= 2; pass++) {
        ap_tensor *y = ap_log1p(c, x), *s = ap_sum(c, y);
        CHECK(ap_backward(c, s, NULL) == AP_OK);
        for (int i = 0; i < 37; i++) ref[i] = pass / (1.0 + F(x)[i]);
        test_close(pass == 1 ? "log1p gradient" : "log1p gradient accumulated", F(ap_tensor_grad(x)), ref, 37, 1e-6,
                   1e-7);
        ap_tensor_release(y);
        ap_tensor_release(s);
    }
    ap_tensor_release(x);
    gc_opts o = {.eps = 1e-3, .max_elems = -1, .seed = 5};
    ap_tensor *xl = test_rand_leaf(c, &rng, 2, (int64_t[]){4, 5}, -0.5f, 3.0f);
    gradcheck(c, "log1p", log1p_f, NULL, 1, &xl, &o);
    ap_tensor_release(xl);
    /* errors */
    CHECK(ap_log1p(c, NULL) == NULL && strstr(ap_last_error(c), "log1p"));
    ap_clear_error(c);
    ap_tensor *xi = ap_tensor_zeros(c, AP_I32, 1, (int64_t[]){3});
    CHECK(ap_log1p(c, xi) == NULL && strstr(ap_last_error(c), "log1p"));
    ap_clear_error(c);
    ap_tensor_release(xi);
}

/* ------------------------------------------------------------ tables */
static void test_tables(void) {
    for (int q = 1; q <= 100; q += (q < 90 ? 7 : 1)) {
        int qy[64], qc[64];
        ap_jpeg_quant_tables(q, qy, qc);
        struct jpeg_compress_struct ci;
        struct jpeg_error_mgr err;
        ci.err = jpeg_std_error(&err);
        jpeg_create_compress(&ci);
        ci.in_color_space = JCS_RGB;
        ci.input_components = 3;
        jpeg_set_defaults(&ci);
        jpeg_set_quality(&ci, q, TRUE);
        int same = 1;
        for (int k = 0; k < 64; k++)
            same &= ci.quant_tbl_ptrs[0]->quantval[k] == qy[k] && ci.quant_tbl_ptrs[1]->quantval[k] == qc[k];
        CHECK_MSG(same, "quality %d: tables differ from libjpeg's", q);
        /* libjpeg's defaults are what the estimate assumes: 4:2:0 */
        CHECK(ci.comp_info[0].h_samp_factor == 2 && ci.comp_info[0].v_samp_factor == 2 &&
              ci.comp_info[1].h_samp_factor == 1 && ci.comp_info[2].v_samp_factor == 1);
        jpeg_destroy_compress(&ci);
    }
}

/* ------------------------------------------------------------ double reference
 * Straight from the definitions: edge-replicate to multiples of 16, 0..255,
 * JFIF YCbCr, 2x2 average of Cb and Cr, level shift by 128, orthonormal 8x8
 * DCT-II, divide by the quantiser; DC as the difference with the block on the
 * left (the first block of a row: with a flat block of value
 * 127.5*(0+1) - 128, i.e. an image x = 0). */
typedef struct {
    int hb, wb, hc, wc;       /* blocks of luma and chroma */
    double *yac, *ydc, *cac, *cdc; /* as ap_jpeg_coefficients' outputs for one image */
} ref_coefs;

static void dct8(const double *s /* [8][stride] */, int stride, double F[64]) {
    for (int v = 0; v < 8; v++)
        for (int u = 0; u < 8; u++) {
            double acc = 0;
            for (int y = 0; y < 8; y++)
                for (int x = 0; x < 8; x++)
                    acc += s[y * stride + x] * cos((2 * y + 1) * v * M_PI / 16) * cos((2 * x + 1) * u * M_PI / 16);
            F[v * 8 + u] = 0.25 * (v ? 1 : M_SQRT1_2) * (u ? 1 : M_SQRT1_2) * acc;
        }
}

static void reference(const float *img /* [H,W,3] */, int H, int W, int quality, ref_coefs *r) {
    int Hp = (H + 15) / 16 * 16, Wp = (W + 15) / 16 * 16;
    int qy[64], qc[64];
    ap_jpeg_quant_tables(quality, qy, qc);
    double *plane[3];
    for (int k = 0; k < 3; k++) plane[k] = malloc(sizeof(double) * Hp * Wp);
    for (int y = 0; y < Hp; y++)
        for (int x = 0; x < Wp; x++) {
            const float *p = img + ((y < H ? y : H - 1) * W + (x < W ? x : W - 1)) * 3;
            double R = 127.5 * (p[0] + 1.0), G = 127.5 * (p[1] + 1.0), B = 127.5 * (p[2] + 1.0);
            plane[0][y * Wp + x] = 0.299 * R + 0.587 * G + 0.114 * B - 128;
            plane[1][y * Wp + x] = -0.168736 * R - 0.331264 * G + 0.5 * B;       /* Cb - 128 + 128 - 128 */
            plane[2][y * Wp + x] = 0.5 * R - 0.418688 * G - 0.081312 * B;
        }
    r->hb = Hp / 8, r->wb = Wp / 8, r->hc = Hp / 16, r->wc = Wp / 16;
    r->yac = malloc(sizeof(double) * r->hb * r->wb * 63);
    r->ydc = malloc(sizeof(double) * r->hb * r->wb);
    r->cac = malloc(sizeof(double) * r->hc * r->wc * 126);
    r->cdc = malloc(sizeof(double) * r->hc * r->wc * 2);
    double Fb[64];
    for (int by = 0; by < r->hb; by++) {
        double prev = -0.5 * 8; /* DC of a flat block at -0.5 */
        for (int bx = 0; bx < r->wb; bx++) {
            dct8(plane[0] + by * 8 * Wp + bx * 8, Wp, Fb);
            for (int f = 1; f < 64; f++) r->yac[(by * r->wb + bx) * 63 + f - 1] = Fb[f] / qy[f];
            r->ydc[by * r->wb + bx] = (Fb[0] - prev) / qy[0];
            prev = Fb[0];
        }
    }
    double *sub = malloc(sizeof(double) * (Hp / 2) * (Wp / 2));
    for (int comp = 0; comp < 2; comp++) {
        for (int y = 0; y < Hp / 2; y++)
            for (int x = 0; x < Wp / 2; x++) {
                const double *p = plane[1 + comp] + 2 * y * Wp + 2 * x;
                sub[y * (Wp / 2) + x] = 0.25 * (p[0] + p[1] + p[Wp] + p[Wp + 1]);
            }
        for (int by = 0; by < r->hc; by++) {
            double prev = 0;
            for (int bx = 0; bx < r->wc; bx++) {
                dct8(sub + by * 8 * (Wp / 2) + bx * 8, Wp / 2, Fb);
                for (int f = 1; f < 64; f++) r->cac[(by * r->wc + bx) * 126 + comp * 63 + f - 1] = Fb[f] / qc[f];
                r->cdc[(by * r->wc + bx) * 2 + comp] = (Fb[0] - prev) / qc[0];
                prev = Fb[0];
            }
        }
    }
    free(sub);
    for (int k = 0; k < 3; k++) free(plane[k]);
}

static void ref_free(ref_coefs *r) {
    free(r->yac);
    free(r->ydc);
    free(r->cac);
    free(r->cdc);
}

/* The documented size formula on reference coefficients, in kB. */
static double ref_kb(const ref_coefs *r) {
    const ap_jpeg_model *m = &ap_jpeg_default_model;
    const double *z[4] = {r->yac, r->ydc, r->cac, r->cdc};
    int64_t n[4] = {(int64_t)r->hb * r->wb * 63, (int64_t)r->hb * r->wb, (int64_t)r->hc * r->wc * 126,
                    (int64_t)r->hc * r->wc * 2};
    double bits = (double)r->hb * r->wb * m->block_bits_y + 2.0 * r->hc * r->wc * m->block_bits_c;
    for (int k = 0; k < 4; k++)
        for (int64_t i = 0; i < n[k]; i++) bits += m->a[k] * log2(1 + pow(z[k][i] / m->t[k], 2));
    return (m->header_bytes + bits / 8) / 1000;
}

static void test_coefficients(ap_ctx *c, ap_jpeg_dct *d) {
    test_rng rng = {11};
    static const int64_t shapes[][4] = {{2, 16, 32, 3}, {1, 21, 37, 3}, {1, 9, 5, 3}, {1, 48, 16, 3}};
    for (int s = 0; s < 4; s++) {
        ap_tensor *x = test_rand(c, &rng, 4, shapes[s], -1, 1);
        ap_tensor *z[AP_JPEG_CLASSES];
        CHECK(ap_jpeg_coefficients(c, d, x, z) == AP_OK);
        ap_tensor *kb = ap_jpeg_estimate_kb(c, d, NULL, x);
        CHECK_OK(c);
        if (!kb) continue;
        int N = (int)shapes[s][0], H = (int)shapes[s][1], W = (int)shapes[s][2];
        for (int n = 0; n < N; n++) {
            ref_coefs r;
            reference(F(x) + (int64_t)n * H * W * 3, H, W, 95, &r);
            const double *refs[4] = {r.yac, r.ydc, r.cac, r.cdc};
            int64_t per[4] = {(int64_t)r.hb * r.wb * 63, (int64_t)r.hb * r.wb, (int64_t)r.hc * r.wc * 126,
                              (int64_t)r.hc * r.wc * 2};
            static const char *names[4] = {"luma AC", "luma DC difference", "chroma AC", "chroma DC difference"};
            for (int k = 0; k < 4; k++) {
                CHECK(ap_tensor_numel(z[k]) == N * per[k]);
                char label[96];
                snprintf(label, sizeof label, "%s, image %dx%d #%d", names[k], H, W, n);
                /* coefficients reach ~500; f32 sums of 192..1536 products */
                test_close(label, F(z[k]) + n * per[k], refs[k], per[k], 1e-4, 2e-4);
            }
            double want = ref_kb(&r);
            char label[64];
            snprintf(label, sizeof label, "size formula %dx%d #%d", H, W, n);
            test_close(label, F(kb) + n, &want, 1, 1e-5, 1e-6);
            ref_free(&r);
        }
        for (int k = 0; k < AP_JPEG_CLASSES; k++) ap_tensor_release(z[k]);
        ap_tensor_release(kb);
        ap_tensor_release(x);
    }
}

/* ------------------------------------------------------------ padding */
static ap_tensor *pad_f(ap_ctx *c, void *user, int n, ap_tensor **in) {
    (void)user;
    (void)n;
    return ap_jpeg_pad16(c, in[0]);
}

static void test_padding(ap_ctx *c) {
    test_rng rng = {13};
    ap_tensor *x = test_rand_leaf(c, &rng, 4, (int64_t[]){2, 5, 19, 3}, -1, 1);
    ap_tensor *y = ap_jpeg_pad16(c, x);
    CHECK_OK(c);
    CHECK(y && ap_tensor_dim(y, 1) == 16 && ap_tensor_dim(y, 2) == 32);
    int bad = 0;
    for (int n = 0; y && n < 2; n++)
        for (int i = 0; i < 16; i++)
            for (int j = 0; j < 32; j++)
                for (int ch = 0; ch < 3; ch++)
                    bad += F(y)[((n * 16 + i) * 32 + j) * 3 + ch] !=
                           F(x)[((n * 5 + (i < 5 ? i : 4)) * 19 + (j < 19 ? j : 18)) * 3 + ch];
    CHECK_MSG(bad == 0, "%d padded values are not the nearest edge pixel", bad);
    ap_tensor_release(y);
    ap_tape_clear(c);
    gc_opts o = {.eps = 1e-2, .max_elems = -1, .seed = 17};
    gradcheck(c, "pad16 [2,5,19,3]", pad_f, NULL, 1, &x, &o);
    ap_tensor_release(x);
    /* already a multiple of 16: the same tensor */
    ap_tensor *x16 = test_rand(c, &rng, 4, (int64_t[]){1, 16, 32, 3}, -1, 1);
    ap_tensor *y16 = ap_jpeg_pad16(c, x16);
    CHECK(y16 == x16);
    ap_tensor_release(y16);
    ap_tensor_release(x16);
}

/* ------------------------------------------------------------ against libjpeg */
static void test_flat_image(ap_ctx *c, ap_jpeg_dct *d) {
    /* grey 128 everywhere: every coefficient is 0, so the file is headers plus
     * the end-of-block and zero-DC codes of each block, which the model counts
     * exactly; the estimate's only variable bits come from the first DC
     * difference of each luma block row (its reference is 127.5, not 128) */
    for (int s = 16; s <= 64; s += 48) {
        ap_tensor *x = ap_tensor_new(c, AP_F32, 4, (int64_t[]){1, s, s, 3});
        for (int i = 0; i < s * s * 3; i++) F(x)[i] = 1.0f / 255.0f; /* 127.5*(x+1) = 128 */
        size_t real = 0;
        CHECK(ap_jpeg_sizes(c, x, 95, &real) == AP_OK);
        ap_tensor *kb = ap_jpeg_estimate_kb(c, d, NULL, x);
        CHECK_OK(c);
        double first_col = (s / 8) * log2(1 + pow(0.5 * 8 / 2 / 0.35, 2)) / 8; /* bytes */
        CHECK_MSG(kb && fabs(1000 * F(kb)[0] - first_col - (double)real) <= 1.0,
                  "%dx%d grey: libjpeg %zu bytes, estimate %.1f (%.1f without the first DC column)", s, s, real,
                  kb ? 1000 * F(kb)[0] : 0, kb ? 1000 * F(kb)[0] - first_col : 0);
        ap_tensor_release(kb);
        ap_tensor_release(x);
    }
}

static int cmp_d(const void *a, const void *b) {
    double x = **(const double *const *)a, y = **(const double *const *)b;
    return (x > y) - (x < y);
}
static void rank(const double *v, int n, double *rk) {
    const double **p = malloc((size_t)n * sizeof *p);
    for (int i = 0; i < n; i++) p[i] = v + i;
    qsort(p, (size_t)n, sizeof *p, cmp_d);
    for (int i = 0; i < n;) {
        int j = i;
        while (j + 1 < n && *p[j + 1] == *p[i]) j++;
        for (int k = i; k <= j; k++) rk[p[k] - v] = 0.5 * (i + j) + 1;
        i = j + 1;
    }
    free(p);
}
static double spearman(const double *a, const double *b, int n) {
    double *ra = malloc((size_t)n * sizeof *ra), *rb = malloc((size_t)n * sizeof *rb);
    rank(a, n, ra);
    rank(b, n, rb);
    double m = (n + 1) / 2.0, sab = 0, saa = 0, sbb = 0;
    for (int i = 0; i < n; i++)
        sab += (ra[i] - m) * (rb[i] - m), saa += (ra[i] - m) * (ra[i] - m), sbb += (rb[i] - m) * (rb[i] - m);
    free(ra);
    free(rb);
    return sab / sqrt(saa * sbb);
}

static void test_ranking(ap_ctx *c, ap_jpeg_dct *d) {
    /* the first 54 images of the bench's set: 6 of each kind */
    enum { NR = 54 };
    double real[NR], est[NR];
    float *buf = malloc(sizeof(float) * JIMG_MAX * JIMG_MAX * 3);
    int prev = ap_set_grad_enabled(c, 0);
    int n = 0;
    for (; n < NR; n++) {
        int H, W;
        jimg_make(n, &H, &W, buf);
        ap_tensor *x = ap_tensor_from_data(c, AP_F32, 4, (int64_t[]){1, H, W, 3}, buf);
        size_t sz = 0;
        ap_jpeg_sizes(c, x, 95, &sz);
        ap_tensor *kb = ap_jpeg_estimate_kb(c, d, NULL, x);
        ap_tensor_release(x);
        if (!kb) break;
        real[n] = (double)sz, est[n] = 1000.0 * F(kb)[0];
        ap_tensor_release(kb);
    }
    ap_set_grad_enabled(c, prev);
    CHECK_OK(c);
    double rho = n == NR ? spearman(est, real, NR) : 0;
    /* a sanity check of the checker: the reversed order is -1 */
    double rev[NR];
    for (int i = 0; i < NR; i++) rev[i] = -real[i];
    CHECK(fabs(spearman(rev, real, NR) + 1) < 1e-12);
    CHECK_MSG(rho >= 0.9, "Spearman correlation of estimate and libjpeg size over %d images: %.4f", NR, rho);
    printf("jpeg: Spearman correlation of the estimate with libjpeg's size over %d procedural images: %.4f\n", NR,
           rho);
    free(buf);
}

/* ------------------------------------------------------------ gradients */
typedef struct {
    ap_reward *r;
} fwd_u;
static ap_tensor *reward_f(ap_ctx *c, void *user, int n, ap_tensor **in) {
    (void)n;
    ap_reward *r = ((fwd_u *)user)->r;
    return r->forward(c, r, in[0], NULL);
}

/* The estimate without its constant part (header and block codes): in f32 the
 * constant ~0.6 kB would swamp the finite differences of the rest. */
static ap_tensor *estimate_f(ap_ctx *c, void *user, int n, ap_tensor **in) {
    (void)n;
    ap_jpeg_model m = ap_jpeg_default_model;
    m.header_bytes = m.block_bits_y = m.block_bits_c = 0;
    return ap_jpeg_estimate_kb(c, user, &m, in[0]);
}

static void test_gradients(ap_ctx *c, ap_jpeg_dct *d) {
    test_rng rng = {19};
    /* low-contrast images keep the value small enough for f32 differences */
    static const int64_t eshapes[][4] = {{2, 16, 16, 3}, {1, 10, 13, 3}, {1, 17, 33, 3}};
    for (int s = 0; s < 3; s++) {
        ap_tensor *x = test_rand_leaf(c, &rng, 4, eshapes[s], -0.05f, 0.05f);
        gc_opts o = {.eps = 5e-4, .max_elems = 128, .seed = 37 + (uint64_t)s};
        char label[64];
        snprintf(label, sizeof label, "estimate [%lld,%lld,%lld,3]", (long long)eshapes[s][0],
                 (long long)eshapes[s][1], (long long)eshapes[s][2]);
        gradcheck(c, label, estimate_f, d, 1, &x, &o);
        ap_tensor_release(x);
    }
    /* full contrast, against central differences of the double reference */
    {
        const int H = 11, W = 21;
        ap_tensor *x = test_rand_leaf(c, &rng, 4, (int64_t[]){1, H, W, 3}, -1, 1);
        ap_tensor *kb = ap_jpeg_estimate_kb(c, d, NULL, x);
        CHECK(ap_backward(c, kb, NULL) == AP_OK);
        const float *g = F(ap_tensor_grad(x));
        float *xv = malloc(sizeof(float) * H * W * 3);
        memcpy(xv, F(x), sizeof(float) * H * W * 3);
        double gmax = 0, worst = 0;
        for (int i = 0; i < H * W * 3; i++) gmax = fmax(gmax, fabs(g[i]));
        for (int k = 0; k < 60; k++) {
            int i = (int)(test_rng_next(&rng) % (uint64_t)(H * W * 3));
            float x0 = xv[i], xp = x0 + 1e-3f, xm = x0 - 1e-3f;
            ref_coefs r;
            xv[i] = xp;
            reference(xv, H, W, 95, &r);
            double fp = ref_kb(&r);
            ref_free(&r);
            xv[i] = xm;
            reference(xv, H, W, 95, &r);
            double fm = ref_kb(&r);
            ref_free(&r);
            xv[i] = x0;
            double num = (fp - fm) / ((double)xp - (double)xm);
            worst = fmax(worst, fabs(num - g[i]) / (1e-3 * gmax + 1e-2 * fabs(num)));
        }
        CHECK_MSG(worst <= 1.0, "image gradient vs differences of the double reference: worst %.3g of tolerance", worst);
        free(xv);
        ap_tensor_release(kb);
        ap_tensor_release(x);
    }
    /* the rewards themselves, with an absolute tolerance above f32's resolution of their constant part */
    const char *names[2] = {"jpeg", "jpeg-incompressibility"};
    static const int64_t shapes[][4] = {{2, 16, 16, 3}, {1, 10, 13, 3}};
    for (int k = 0; k < 2; k++) {
        ap_reward *r = NULL;
        CHECK(ap_reward_create(c, names[k], NULL, &r) == AP_OK && r && !strcmp(r->name, names[k]));
        if (!r) continue;
        for (int s = 0; s < 2; s++) {
            ap_tensor *x = test_rand_leaf(c, &rng, 4, shapes[s], -0.8f, 0.8f);
            gc_opts o = {.eps = 1e-3, .atol = 2e-2, .max_elems = 96, .seed = 23 + (uint64_t)s};
            char label[64];
            snprintf(label, sizeof label, "%s [%lld,%lld,%lld,3]", names[k], (long long)shapes[s][0],
                     (long long)shapes[s][1], (long long)shapes[s][2]);
            gradcheck(c, label, reward_f, &(fwd_u){r}, 1, &x, &o);
            ap_tensor_release(x);
        }
        ap_reward_free(r);
    }
}

/* The reward and its gradient in a bf16 context (the DCT forward stays f32;
 * the backward follows the context), and thread-count independence. */
static void test_precision_threads(ap_ctx *c, ap_jpeg_dct *d) {
    test_rng rng = {29};
    ap_tensor *x = test_rand_leaf(c, &rng, 4, (int64_t[]){2, 32, 48, 3}, -1, 1);
    float val[2][2], *grad[2];
    for (int p = 0; p < 2; p++) {
        ap_set_precision(c, p ? AP_PREC_BF16 : AP_PREC_F32);
        ap_tensor_zero_grad(x);
        ap_tensor *kb = ap_jpeg_estimate_kb(c, d, NULL, x), *s = ap_sum(c, kb);
        CHECK(ap_backward(c, s, NULL) == AP_OK);
        CHECK_OK(c);
        memcpy(val[p], F(kb), sizeof val[p]);
        grad[p] = malloc(sizeof(float) * 2 * 32 * 48 * 3);
        memcpy(grad[p], F(ap_tensor_grad(x)), sizeof(float) * 2 * 32 * 48 * 3);
        ap_tensor_release(kb);
        ap_tensor_release(s);
    }
    ap_set_precision(c, AP_PREC_F32);
    CHECK(val[0][0] == val[1][0] && val[0][1] == val[1][1]);
    test_close_f("image gradient, bf16 context vs f32", grad[1], grad[0], 2 * 32 * 48 * 3, 2e-2, 2e-2 * 0.01);
    for (int p = 0; p < 2; p++) free(grad[p]);
    /* 1 and 2 threads: bit-identical */
    int nt = ap_get_num_threads(c);
    float v1[2], v2[2];
    ap_set_num_threads(c, 1);
    ap_tensor *a = ap_jpeg_estimate_kb(c, d, NULL, x);
    ap_set_num_threads(c, 2);
    ap_tensor *b = ap_jpeg_estimate_kb(c, d, NULL, x);
    ap_set_num_threads(c, nt);
    CHECK_OK(c);
    if (a && b) {
        memcpy(v1, F(a), sizeof v1);
        memcpy(v2, F(b), sizeof v2);
        CHECK(!memcmp(v1, v2, sizeof v1));
    }
    ap_tensor_release(a);
    ap_tensor_release(b);
    ap_tape_clear(c);
    ap_tensor_release(x);
}

/* ------------------------------------------------------------ registry, metrics, errors */
static void test_registry_metrics(ap_ctx *c) {
    int found = 0;
    for (int i = 0; i < ap_reward_count(); i++)
        found += !strcmp(ap_reward_name(i), "jpeg") + 2 * !strcmp(ap_reward_name(i), "jpeg-incompressibility");
    CHECK(found == 3);
    test_rng rng = {31};
    ap_tensor *x = test_rand(c, &rng, 4, (int64_t[]){3, 24, 40, 3}, -1, 1);
    ap_reward_mix *m = NULL;
    CHECK(ap_reward_mix_parse(c, "jpeg, jpeg-incompressibility=0.5, brightness", NULL, &m) == AP_OK);
    ap_tensor *parts[3];
    ap_tensor *y = m ? ap_reward_mix_forward(c, m, x, NULL, parts) : NULL;
    CHECK_OK(c);
    const char *names[AP_REWARD_METRICS_MAX];
    double values[AP_REWARD_METRICS_MAX * 3];
    int k = m ? ap_reward_mix_metrics(c, m, x, names, values) : -1;
    CHECK_OK(c);
    size_t sizes[3];
    CHECK(ap_jpeg_sizes(c, x, 95, sizes) == AP_OK);
    CHECK_MSG(k == 2, "%d metrics", k);
    if (y && k == 2) {
        CHECK(!strcmp(names[0], "jpeg_kb") && !strcmp(names[1], "jpeg_kb_est"));
        for (int n = 0; n < 3; n++) {
            CHECK(values[n] == sizes[n] / 1000.0);
            CHECK(values[3 + n] == -F(parts[0])[n] && F(parts[1])[n] == -F(parts[0])[n]);
            CHECK(fabs(F(y)[n] - (-0.5 * values[3 + n] + F(parts[2])[n])) < 1e-5);
        }
    }
    for (int i = 0; m && i < 3; i++) ap_tensor_release(parts[i]);
    ap_tensor_release(y);
    ap_reward_mix_free(m);
    CHECK(ap_reward_mix_parse(c, "brightness", NULL, &m) == AP_OK);
    CHECK(ap_reward_mix_metrics(c, m, x, names, values) == 0);
    ap_reward_mix_free(m);
    ap_tensor_release(x);
}

static void expect_err(ap_ctx *c, const char *what, const char *w1, const char *w2) {
    CHECK_MSG(ap_last_status(c) != AP_OK && strstr(ap_last_error(c), w1) && (!w2 || strstr(ap_last_error(c), w2)),
              "%s: '%s'", what, ap_last_error(c));
    ap_clear_error(c);
}

static void test_errors(ap_ctx *c, ap_jpeg_dct *d) {
    ap_reward *r = NULL;
    CHECK(ap_reward_create(c, "jpeg", NULL, &r) == AP_OK);
    ap_tensor *x4 = ap_tensor_zeros(c, AP_F32, 4, (int64_t[]){2, 16, 16, 4});
    ap_tensor *x3 = ap_tensor_zeros(c, AP_F32, 3, (int64_t[]){16, 16, 3});
    ap_tensor *xb = ap_tensor_zeros(c, AP_BF16, 4, (int64_t[]){1, 16, 16, 3});
    ap_tensor *ok = ap_tensor_zeros(c, AP_F32, 4, (int64_t[]){1, 16, 16, 3});
    CHECK(r->forward(c, r, x4, NULL) == NULL);
    expect_err(c, "4 channels", "jpeg", "[2,16,16,4]");
    CHECK(r->forward(c, r, x3, NULL) == NULL);
    expect_err(c, "3-D", "jpeg", "[16,16,3]");
    CHECK(r->forward(c, r, xb, NULL) == NULL);
    expect_err(c, "bf16", "images", "bf16");
    CHECK(r->forward(c, r, NULL, NULL) == NULL);
    expect_err(c, "NULL", "images", NULL);
    const char *names[AP_REWARD_METRICS_MAX];
    double values[AP_REWARD_METRICS_MAX * 2];
    CHECK(r->metrics(c, r, x4, names, values) == -1);
    expect_err(c, "metrics of 4 channels", "jpeg", "[2,16,16,4]");
    size_t sz[2];
    CHECK(ap_jpeg_sizes(c, x4, 95, sz) == AP_ERR_SHAPE);
    expect_err(c, "sizes of 4 channels", "jpeg", "[2,16,16,4]");
    CHECK(ap_jpeg_sizes(c, ok, 0, sz) == AP_ERR_INVALID_ARG);
    expect_err(c, "quality 0", "quality 0", NULL);
    ap_jpeg_dct bad;
    CHECK(ap_jpeg_dct_init(c, 101, &bad) == AP_ERR_INVALID_ARG);
    expect_err(c, "quality 101", "quality 101", NULL);
    ap_jpeg_dct_free(&bad);
    ap_tensor *z[AP_JPEG_CLASSES];
    CHECK(ap_jpeg_coefficients(c, d, x3, z) != AP_OK && z[0] == NULL);
    expect_err(c, "coefficients of 3-D", "jpeg", "[16,16,3]");
    /* sticky: nothing runs after an error */
    CHECK(r->forward(c, r, x4, NULL) == NULL);
    CHECK(r->forward(c, r, ok, NULL) == NULL);
    expect_err(c, "sticky", "[2,16,16,4]", NULL);
    ap_tensor *y = r->forward(c, r, ok, NULL);
    CHECK(y != NULL);
    ap_tensor_release(y);
    ap_tensor_release(x4);
    ap_tensor_release(x3);
    ap_tensor_release(xb);
    ap_tensor_release(ok);
    ap_reward_free(r);
}

int main(void) {
    ap_ctx *c = test_ctx();
    ap_jpeg_dct d;
    CHECK(ap_jpeg_dct_init(c, 95, &d) == AP_OK);
    test_log1p(c);
    test_tables();
    test_coefficients(c, &d);
    test_padding(c);
    test_flat_image(c, &d);
    test_ranking(c, &d);
    test_gradients(c, &d);
    test_precision_threads(c, &d);
    test_registry_metrics(c);
    test_errors(c, &d);
    ap_jpeg_dct_free(&d);
    CHECK(ap_tape_size(c) == 0);
    CHECK_MSG(ap_mem_in_use(c) == 0, "all tensors released (%zu bytes live)", ap_mem_in_use(c));
    ap_ctx_free(c);
    return test_summary("jpeg");
}
