/* Does the jpeg reward's differentiable size estimate rank images like the
 * real JPEG size? Over the procedural set of tests/jpeg_images.h (gradients,
 * shapes, checkerboards, text-like glyphs, smooth noise at many scales, white
 * noise at many levels, stripes, blends, photo-like mixtures; sides 64..256)
 * it prints libjpeg's size at quality 95 (4:2:0) beside the estimate per kind,
 * the Spearman and Pearson correlations and the relative error, and the time
 * of the estimate (forward, and forward + image gradient).
 *
 *   jpeg_rank [N]          N images (default 270)
 *   jpeg_rank --fit [N]    also fits the bit model's a[] for a grid of t[]
 *                          (what ap_jpeg_default_model holds came from here) */
#include "bench.h"
#include "alignprop.h"
#include "io/jpeg.h"
#include "rewards/jpeg.h"

#include "../tests/jpeg_images.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const double *sort_vals;
static int cmp_idx(const void *a, const void *b) {
    double x = sort_vals[*(const int *)a], y = sort_vals[*(const int *)b];
    return (x > y) - (x < y);
}
/* Ranks with ties averaged. */
static void ranks(const double *v, int n, double *rk) {
    int *idx = malloc((size_t)n * sizeof *idx);
    for (int i = 0; i < n; i++) idx[i] = i;
    sort_vals = v;
    qsort(idx, (size_t)n, sizeof *idx, cmp_idx);
    for (int i = 0; i < n;) {
        int j = i;
        while (j + 1 < n && v[idx[j + 1]] == v[idx[i]]) j++;
        for (int k = i; k <= j; k++) rk[idx[k]] = 0.5 * (i + j) + 1;
        i = j + 1;
    }
    free(idx);
}
static double pearson(const double *a, const double *b, int n) {
    double ma = 0, mb = 0, sab = 0, saa = 0, sbb = 0;
    for (int i = 0; i < n; i++) ma += a[i] / n, mb += b[i] / n;
    for (int i = 0; i < n; i++)
        sab += (a[i] - ma) * (b[i] - mb), saa += (a[i] - ma) * (a[i] - ma), sbb += (b[i] - mb) * (b[i] - mb);
    return sab / sqrt(saa * sbb);
}
static double spearman(const double *a, const double *b, int n) {
    double *ra = malloc((size_t)n * sizeof *ra), *rb = malloc((size_t)n * sizeof *rb);
    ranks(a, n, ra);
    ranks(b, n, rb);
    double r = pearson(ra, rb, n);
    free(ra);
    free(rb);
    return r;
}

/* Solves the k x k system A x = b (Gaussian elimination, partial pivoting). */
static int solve(int k, double *A, double *b, double *x) {
    for (int i = 0; i < k; i++) {
        int p = i;
        for (int j = i + 1; j < k; j++)
            if (fabs(A[j * k + i]) > fabs(A[p * k + i])) p = j;
        if (fabs(A[p * k + i]) < 1e-300) return -1;
        for (int j = 0; j < k; j++) {
            double t = A[i * k + j];
            A[i * k + j] = A[p * k + j];
            A[p * k + j] = t;
        }
        double t = b[i];
        b[i] = b[p];
        b[p] = t;
        for (int j = i + 1; j < k; j++) {
            double f = A[j * k + i] / A[i * k + i];
            for (int q = i; q < k; q++) A[j * k + q] -= f * A[i * k + q];
            b[j] -= f * b[i];
        }
    }
    for (int i = k - 1; i >= 0; i--) {
        double s = b[i];
        for (int j = i + 1; j < k; j++) s -= A[i * k + j] * x[j];
        x[i] = s / A[i * k + i];
    }
    return 0;
}

typedef struct {
    int n[AP_JPEG_CLASSES];
    float *z[AP_JPEG_CLASSES];
    double fixed_bits; /* blocks' fixed bits */
} coefs;

/* Fits a[] for t[] (weighted least squares on the relative error of the
 * variable part of the size); returns the Spearman correlation it gives. */
static double fit(const coefs *cf, const double *real, int n, const ap_jpeg_model *base, const float t[4], float a[4],
                  double *relerr) {
    double A[16] = {0}, b[4] = {0}, x[4];
    double *feat = malloc((size_t)n * 4 * sizeof *feat);
    for (int i = 0; i < n; i++) {
        double target = (real[i] - base->header_bytes) * 8 - cf[i].fixed_bits;
        for (int k = 0; k < 4; k++) {
            double s = 0;
            for (int j = 0; j < cf[i].n[k]; j++) {
                double u = cf[i].z[k][j] / t[k];
                s += log2(1 + u * u);
            }
            feat[i * 4 + k] = s;
        }
        double w = 1.0 / (real[i] * 8); /* relative error */
        for (int p = 0; p < 4; p++) {
            b[p] += w * w * feat[i * 4 + p] * target;
            for (int q = 0; q < 4; q++) A[p * 4 + q] += w * w * feat[i * 4 + p] * feat[i * 4 + q];
        }
    }
    if (solve(4, A, b, x)) {
        free(feat);
        return -2;
    }
    double *est = malloc((size_t)n * sizeof *est);
    *relerr = 0;
    for (int i = 0; i < n; i++) {
        double bits = cf[i].fixed_bits;
        for (int k = 0; k < 4; k++) bits += x[k] * feat[i * 4 + k];
        est[i] = base->header_bytes + bits / 8;
        *relerr += fabs(est[i] - real[i]) / real[i] / n;
    }
    for (int k = 0; k < 4; k++) a[k] = (float)x[k];
    double r = spearman(est, real, n);
    free(est);
    free(feat);
    return r;
}

int main(int argc, char **argv) {
    int do_fit = argc > 1 && !strcmp(argv[1], "--fit");
    int n = argc > 1 + do_fit ? atoi(argv[1 + do_fit]) : 270;
    if (n < 10) n = 10;
    ap_ctx *c = ap_ctx_create();
    ap_jpeg_dct d;
    if (ap_jpeg_dct_init(c, 95, &d) != AP_OK) return 1;
    float *buf = malloc(sizeof(float) * JIMG_MAX * JIMG_MAX * 3);
    double *real = malloc(n * sizeof *real), *est = malloc(n * sizeof *est);
    coefs *cf = do_fit ? calloc((size_t)n, sizeof *cf) : NULL;
    double kind_real[JIMG_KINDS] = {0}, kind_est[JIMG_KINDS] = {0}, kind_relerr[JIMG_KINDS] = {0};
    int kind_n[JIMG_KINDS] = {0};
    double t_fwd = 0, t_bwd = 0, pixels = 0;
    for (int i = 0; i < n; i++) {
        int H, W;
        jimg_make(i, &H, &W, buf);
        ap_tensor *x = ap_tensor_from_data(c, AP_F32, 4, (int64_t[]){1, H, W, 3}, buf);
        size_t sz = 0;
        if (ap_jpeg_sizes(c, x, 95, &sz) != AP_OK) break;
        real[i] = (double)sz;
        double t0 = bench_now();
        int prev = ap_set_grad_enabled(c, 0);
        ap_tensor *e = ap_jpeg_estimate_kb(c, &d, NULL, x);
        ap_set_grad_enabled(c, prev);
        double t1 = bench_now();
        ap_tensor_set_requires_grad(x, 1);
        ap_tensor *e2 = ap_jpeg_estimate_kb(c, &d, NULL, x);
        if (e2) ap_backward(c, e2, NULL);
        double t2 = bench_now();
        t_fwd += t1 - t0, t_bwd += t2 - t1, pixels += (double)H * W;
        if (!e || !e2) break;
        est[i] = 1000.0 * ((const float *)ap_tensor_cdata(e))[0];
        int k = i % JIMG_KINDS;
        kind_real[k] += real[i], kind_est[k] += est[i], kind_n[k]++;
        kind_relerr[k] += fabs(est[i] - real[i]) / real[i];
        if (cf) {
            ap_tensor *z[AP_JPEG_CLASSES];
            ap_jpeg_coefficients(c, &d, x, z);
            for (int q = 0; q < AP_JPEG_CLASSES && z[q]; q++) {
                cf[i].n[q] = (int)ap_tensor_numel(z[q]);
                cf[i].z[q] = malloc(cf[i].n[q] * sizeof(float));
                memcpy(cf[i].z[q], ap_tensor_cdata(z[q]), cf[i].n[q] * sizeof(float));
                ap_tensor_release(z[q]);
            }
            int Hp = (H + 15) / 16 * 16, Wp = (W + 15) / 16 * 16;
            cf[i].fixed_bits = (Hp / 8) * (Wp / 8) * (double)ap_jpeg_default_model.block_bits_y +
                               2.0 * (Hp / 16) * (Wp / 16) * ap_jpeg_default_model.block_bits_c;
        }
        ap_tensor_release(e);
        ap_tensor_release(e2);
        ap_tensor_release(x);
    }
    if (ap_last_status(c) != AP_OK) {
        fprintf(stderr, "jpeg_rank: %s\n", ap_last_error(c));
        return 1;
    }
    printf("jpeg_rank: %d procedural images, sides 64..256, quality 95, 4:2:0\n\n", n);
    printf("%-14s %4s %12s %12s %9s\n", "kind", "n", "real kB", "estimate kB", "rel.err");
    for (int k = 0; k < JIMG_KINDS; k++)
        printf("%-14s %4d %12.2f %12.2f %8.1f%%\n", jimg_kind_names[k], kind_n[k], kind_real[k] / kind_n[k] / 1000,
               kind_est[k] / kind_n[k] / 1000, 100 * kind_relerr[k] / kind_n[k]);
    double relerr = 0;
    for (int i = 0; i < n; i++) relerr += fabs(est[i] - real[i]) / real[i] / n;
    double *lr = malloc(n * sizeof *lr), *le = malloc(n * sizeof *le);
    for (int i = 0; i < n; i++) lr[i] = log(real[i]), le[i] = log(est[i]);
    printf("\nSpearman %.4f  Pearson %.4f  Pearson of logs %.4f  mean relative error %.1f%%\n", spearman(est, real, n),
           pearson(est, real, n), pearson(le, lr, n), 100 * relerr);
    free(lr);
    free(le);
    printf("over the set (a new shape per image): %.1f ms per megapixel forward, %.1f forward + image gradient\n",
           1e3 * t_fwd / (pixels / 1e6), 1e3 * t_bwd / (pixels / 1e6));
    /* the training shape: a batch of 2 at 512x512, median of 7 runs after a warm-up */
    {
        ap_tensor *x = ap_tensor_zeros(c, AP_F32, 4, (int64_t[]){2, 512, 512, 3});
        for (int i = 0; i < 2 * 512 * 512 * 3; i++) ((float *)ap_tensor_data(x))[i] = buf[i % (64 * 64 * 3)];
        ap_tensor_set_requires_grad(x, 1);
        double tf[7], tb[7];
        for (int r = -1; r < 7; r++) {
            double t0 = bench_now();
            int prev = ap_set_grad_enabled(c, 0);
            ap_tensor *e = ap_jpeg_estimate_kb(c, &d, NULL, x);
            ap_set_grad_enabled(c, prev);
            double t1 = bench_now();
            ap_tensor *e2 = ap_jpeg_estimate_kb(c, &d, NULL, x);
            ap_tensor *s = ap_sum(c, e2);
            ap_backward(c, s, NULL);
            double t2 = bench_now();
            if (r >= 0) tf[r] = t1 - t0, tb[r] = t2 - t1;
            ap_tensor_release(e);
            ap_tensor_release(e2);
            ap_tensor_release(s);
        }
        printf("[2,512,512,3]: %.2f ms forward, %.2f ms forward + image gradient (median of 7, %d threads)\n",
               1e3 * bench_median(tf, 7), 1e3 * bench_median(tb, 7), ap_get_num_threads(c));
        ap_tensor_release(x);
    }
    if (cf) {
        static const float grid[] = {0.1f, 0.15f, 0.2f, 0.26f, 0.35f, 0.5f, 0.7f, 1.0f};
        int G = (int)(sizeof grid / sizeof grid[0]);
        double best = -2;
        for (int ia = 0; ia < G; ia++)
            for (int id = 0; id < G; id++) {
                float t[4] = {grid[ia], grid[id], grid[ia], grid[id]}, a[4];
                double re = 0, r = fit(cf, real, n, &ap_jpeg_default_model, t, a, &re);
                printf("fit t_ac %.2f t_dc %.2f: a = %.3f %.3f %.3f %.3f  Spearman %.4f  rel.err %.1f%%%s\n", t[0],
                       t[1], a[0], a[1], a[2], a[3], r, 100 * re, r > best ? "  *" : "");
                if (r > best) best = r;
            }
        for (int i = 0; i < n; i++)
            for (int q = 0; q < AP_JPEG_CLASSES; q++) free(cf[i].z[q]);
        free(cf);
    }
    free(buf);
    free(real);
    free(est);
    ap_jpeg_dct_free(&d);
    ap_ctx_free(c);
    return 0;
}
