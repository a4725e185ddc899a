/* ap_resize: against PyTorch fixtures (tests/ref/resize.bin), against a naive
 * double-precision reference written here from the definitions, finite
 * differences, gradient accumulation, determinism across thread counts, and
 * error cases. */
#include "gradcheck.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *mode_name(int mode) { return mode == AP_RESIZE_BICUBIC ? "bicubic" : "bilinear"; }

/* ------------------------------------------------------------ double reference
 * One axis as a dense matrix M [out][in], from the definitions (torch,
 * align_corners=False):
 *   bilinear:  src = max(s*(o+0.5)-0.5, 0); neighbours floor(src) and the next
 *              one, clamped to the border; weights 1-t and t.
 *   bicubic:   src = s*(o+0.5)-0.5 (no clamp); Keys cubic (A=-0.75) at the four
 *              pixels floor(src)-1..floor(src)+2, indices clamped to the border.
 *   antialias: pixels j whose centres j+0.5 lie within support = r*max(s,1)
 *              of centre = s*(o+0.5) (r = 1 triangle, r = 2 Keys cubic A=-0.5),
 *              weighted by the filter at (j+0.5-centre)/max(s,1), normalised.
 * s = in/out rounded to f32 as torch has it (a double s would move source
 * positions by up to in*2^-24, visibly more than f32 rounding); everything else
 * runs in double. */
static double keys(double x, double a) {
    x = fabs(x);
    if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
    if (x < 2) return a * x * x * x - 5 * a * x * x + 8 * a * x - 4 * a;
    return 0;
}

static double *ref_matrix(int in, int out, int mode, int aa) {
    double *m = calloc((size_t)in * out, sizeof *m);
    double s = (double)((float)in / (float)out); /* torch's scale is an f32 quotient */
    for (int o = 0; o < out; o++) {
        double *row = m + (size_t)o * in;
        if (aa) {
            double ss = s > 1 ? s : 1, r = mode == AP_RESIZE_BICUBIC ? 2 : 1;
            double centre = s * (o + 0.5), support = r * ss, total = 0;
            int lo = (int)(centre - support + 0.5), hi = (int)(centre + support + 0.5);
            if (lo < 0) lo = 0;
            if (hi > in) hi = in;
            for (int j = lo; j < hi; j++) {
                double d = (j + 0.5 - centre) / ss;
                row[j] = mode == AP_RESIZE_BICUBIC ? keys(d, -0.5) : fmax(0, 1 - fabs(d));
                total += row[j];
            }
            for (int j = 0; j < in; j++) row[j] /= total;
        } else if (mode == AP_RESIZE_BILINEAR) {
            double src = fmax(s * (o + 0.5) - 0.5, 0);
            int i0 = (int)floor(src), i1 = i0 + 1 < in ? i0 + 1 : in - 1;
            double t = src - i0;
            row[i0] += 1 - t;
            row[i1] += t;
        } else {
            double src = s * (o + 0.5) - 0.5;
            int i0 = (int)floor(src);
            double t = src - i0;
            for (int k = -1; k <= 2; k++) {
                int i = i0 + k < 0 ? 0 : i0 + k >= in ? in - 1 : i0 + k;
                row[i] += keys(t - k, -0.75);
            }
        }
    }
    return m;
}

/* y [N,OH,OW,C] = Mh x Mw^T per image and channel; transpose = 1 applies the
 * adjoint instead (g [N,OH,OW,C] -> [N,H,W,C]). */
static double *ref_apply(const float *x, int N, int H, int W, int C, int OH, int OW, int mode,
                         int aa, int transpose) {
    double *mh = ref_matrix(H, OH, mode, aa), *mw = ref_matrix(W, OW, mode, aa);
    int ih = transpose ? OH : H, iw = transpose ? OW : W, oh = transpose ? H : OH,
        ow = transpose ? W : OW;
    double *y = calloc((size_t)N * oh * ow * C, sizeof *y);
    for (int n = 0; n < N; n++)
        for (int a = 0; a < oh; a++)
            for (int b = 0; b < ow; b++)
                for (int i = 0; i < ih; i++) {
                    double wh = transpose ? mh[(size_t)i * H + a] : mh[(size_t)a * H + i];
                    if (wh == 0) continue;
                    for (int j = 0; j < iw; j++) {
                        double ww = transpose ? mw[(size_t)j * W + b] : mw[(size_t)b * W + j];
                        if (ww == 0) continue;
                        for (int c = 0; c < C; c++)
                            y[(((size_t)n * oh + a) * ow + b) * C + c] +=
                                wh * ww * x[(((size_t)n * ih + i) * iw + j) * C + c];
                    }
                }
    free(mh);
    free(mw);
    return y;
}

/* Runs forward and backward (seed g) of ap_resize; returns y and sets *gx
 * (copies the caller frees), or NULL on failure. */
static float *run_resize(ap_ctx *c, const float *xd, int N, int H, int W, int C, int OH, int OW,
                         int mode, int aa, const float *g, float **gx) {
    ap_tensor *x = ap_tensor_from_data(c, AP_F32, 4, (int64_t[]){N, H, W, C}, xd);
    if (g) ap_tensor_set_requires_grad(x, 1);
    ap_tensor *y = ap_resize(c, x, OH, OW, (ap_resize_mode)mode, aa);
    float *out = NULL;
    if (y) {
        size_t ny = (size_t)ap_tensor_numel(y);
        out = malloc(ny * sizeof *out);
        memcpy(out, ap_tensor_cdata(y), ny * sizeof *out);
        if (g && gx) {
            ap_tensor *gt = ap_tensor_from_data(c, AP_F32, 4, (int64_t[]){N, OH, OW, C}, g);
            *gx = NULL;
            if (ap_backward(c, y, gt) == AP_OK && ap_tensor_grad(x)) {
                size_t nx = (size_t)ap_tensor_numel(x);
                *gx = malloc(nx * sizeof **gx);
                memcpy(*gx, ap_tensor_cdata(ap_tensor_grad(x)), nx * sizeof **gx);
            }
            ap_tensor_release(gt);
        }
    }
    ap_tensor_release(y);
    ap_tensor_release(x);
    return out;
}

static double max_abs(const float *a, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs(a[i]));
    return m;
}

/* ------------------------------------------------------------ fixtures */
typedef struct {
    const unsigned char *p, *end;
} reader;

static const void *take(reader *r, size_t n) {
    if ((size_t)(r->end - r->p) < n) return NULL;
    const void *q = r->p;
    r->p += n;
    return q;
}

/* The fixture holds unaligned f32 arrays: copy them out. */
static float *take_f32(reader *r, size_t n) {
    const void *q = take(r, n * sizeof(float));
    if (!q) return NULL;
    float *a = malloc(n * sizeof *a);
    memcpy(a, q, n * sizeof *a);
    return a;
}

static void test_fixtures(ap_ctx *c) {
    const char *path = getenv("AP_RESIZE_FIXTURE");
    size_t len = 0;
    unsigned char *buf = test_read_file(path ? path : "tests/ref/resize.bin", &len);
    CHECK_MSG(buf != NULL, "cannot read %s", path ? path : "tests/ref/resize.bin");
    if (!buf) return;
    reader r = {buf, buf + len};
    const char *magic = take(&r, 8);
    uint32_t ngroups = 0;
    const void *q = take(&r, 4);
    CHECK(magic && !memcmp(magic, "APRSZ001", 8) && q);
    if (!magic || memcmp(magic, "APRSZ001", 8) || !q) {
        free(buf);
        return;
    }
    memcpy(&ngroups, q, 4);
    double worst_y = 0, worst_g[2][2] = {{0, 0}, {0, 0}};
    int cases = 0;
    int64_t exact = 0, total = 0;
    for (uint32_t gi = 0; gi < ngroups; gi++) {
        int32_t hd[7];
        q = take(&r, sizeof hd);
        CHECK_MSG(q != NULL, "fixture truncated at group %u", gi);
        if (!q) break;
        memcpy(hd, q, sizeof hd);
        int N = hd[0], H = hd[1], W = hd[2], C = hd[3], OH = hd[4], OW = hd[5], has_grad = hd[6];
        size_t nx = (size_t)N * H * W * C, ny = (size_t)N * OH * OW * C;
        float *x = take_f32(&r, nx), *R = has_grad ? take_f32(&r, ny) : NULL;
        for (int mode = 0; mode < 2; mode++)
            for (int aa = 0; aa < 2; aa++) {
                float *yt = take_f32(&r, ny), *gt = has_grad ? take_f32(&r, nx) : NULL;
                CHECK_MSG(x && yt && (!has_grad || (R && gt)), "fixture truncated in group %u", gi);
                if (!x || !yt || (has_grad && (!R || !gt))) {
                    free(yt);
                    free(gt);
                    goto done;
                }
                char label[160];
                snprintf(label, sizeof label, "torch %s aa=%d [%d,%d,%d,%d] -> %dx%d", mode_name(mode),
                         aa, N, H, W, C, OH, OW);
                float *gx = NULL;
                float *y = run_resize(c, x, N, H, W, C, OH, OW, mode, aa, R, has_grad ? &gx : NULL);
                CHECK_OK(c);
                if (y) {
                    /* 1e-5 relative, plus an absolute floor at f32 rounding of
                     * the largest value for outputs that cancel to near zero */
                    double s = max_abs(yt, ny);
                    test_close_f(label, y, yt, (int64_t)ny, 1e-5, 1e-6 * s);
                    for (size_t i = 0; i < ny; i++) {
                        worst_y = fmax(worst_y, fabs(y[i] - yt[i]) / fmax(s, 1e-30));
                        exact += y[i] == yt[i];
                    }
                    total += (int64_t)ny;
                }
                if (has_grad) {
                    CHECK_MSG(gx != NULL, "%s: backward failed: %s", label, ap_last_error(c));
                    if (gx) {
                        strncat(label, " grad", sizeof label - strlen(label) - 1);
                        double s = max_abs(gt, nx), extra = 0;
                        /* torch's non-antialiased bicubic backward recomputes its
                         * coefficients with the source position in f32, so it is
                         * not the exact adjoint of its own forward (weights move by
                         * up to ~|src|*2^-24 times the cubic's slope); ours is. */
                        if (mode == AP_RESIZE_BICUBIC && !aa) {
                            double fan = fmax(1.0, (double)OH / H) * fmax(1.0, (double)OW / W);
                            extra = 6.0 * (H > W ? H : W) * 0x1p-24 * max_abs(R, ny) * fan;
                        }
                        test_close_f(label, gx, gt, (int64_t)nx, 1e-5, 1e-6 * s + extra);
                        for (size_t i = 0; i < nx; i++)
                            worst_g[mode][aa] = fmax(worst_g[mode][aa], fabs(gx[i] - gt[i]) / fmax(s, 1e-30));
                    }
                }
                cases++;
                free(y);
                free(gx);
                free(yt);
                free(gt);
            }
        free(x);
        free(R);
        continue;
    done:
        free(x);
        free(R);
        break;
    }
    printf("torch fixtures: %d cases; forward: %.1f%% of outputs bit-identical, worst |diff| / max|ref| "
           "%.3g; gradient worst |diff| / max|ref|: bilinear %.3g, bilinear aa %.3g, bicubic %.3g, "
           "bicubic aa %.3g\n",
           cases, total ? 100.0 * exact / total : 0.0, worst_y, worst_g[0][0], worst_g[0][1],
           worst_g[1][0], worst_g[1][1]);
    free(buf);
}

/* ------------------------------------------------------------ naive reference */
static void check_against_ref(ap_ctx *c, test_rng *rng, int N, int H, int W, int C, int OH, int OW,
                              int mode, int aa) {
    size_t nx = (size_t)N * H * W * C, ny = (size_t)N * OH * OW * C;
    float *x = malloc(nx * sizeof *x), *g = malloc(ny * sizeof *g);
    for (size_t i = 0; i < nx; i++) x[i] = (float)(2 * test_rng_uniform(rng) - 1);
    for (size_t i = 0; i < ny; i++) g[i] = (float)(2 * test_rng_uniform(rng) - 1);
    float *gx = NULL;
    float *y = run_resize(c, x, N, H, W, C, OH, OW, mode, aa, g, &gx);
    CHECK_OK(c);
    double *yr = ref_apply(x, N, H, W, C, OH, OW, mode, aa, 0);
    double *gr = ref_apply(g, N, H, W, C, OH, OW, mode, aa, 1);
    char label[160];
    snprintf(label, sizeof label, "ref %s aa=%d [%d,%d,%d,%d] -> %dx%d", mode_name(mode), aa, N, H, W,
             C, OH, OW);
    /* torch computes source positions in f32: a position near p carries an
     * error up to ~p*2^-24, which moves weights (filter slopes <= 1.5) over
     * the 2-4 taps that matter; values are in [-1,1]. The floor is that. */
    int big = H > W ? H : W;
    double atol = 1e-6 + 4 * 1.5 * big * 0x1p-24;
    if (y) test_close(label, y, yr, (int64_t)ny, 1e-5, atol);
    strncat(label, " grad", sizeof label - strlen(label) - 1);
    CHECK_MSG(gx != NULL, "%s: no gradient", label);
    /* each input gradient sums the contributions of ~max(1, out/in) outputs per axis */
    double fan = fmax(1.0, (double)OH / H) * fmax(1.0, (double)OW / W);
    if (gx) test_close(label, gx, gr, (int64_t)nx, 1e-5, atol * fan);
    free(x);
    free(g);
    free(y);
    free(gx);
    free(yr);
    free(gr);
}

static int rand_int(test_rng *r, int lo, int hi) {
    return lo + (int)(test_rng_next(r) % (uint64_t)(hi - lo + 1));
}

static void test_reference(ap_ctx *c) {
    test_rng rng = {7};
    /* fixed shapes: the 512->224 ratio small, upscale, identity, mixed, 1-pixel */
    const int shapes[][6] = {{1, 37, 29, 3, 16, 11}, {2, 5, 7, 2, 12, 9},  {1, 6, 5, 3, 6, 5},
                             {1, 13, 6, 3, 5, 10},   {1, 1, 1, 2, 3, 4},   {1, 4, 4, 1, 1, 1},
                             {1, 64, 64, 3, 28, 28}, {2, 31, 17, 5, 9, 8}, {1, 50, 3, 8, 7, 3}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int mode = 0; mode < 2; mode++)
            for (int aa = 0; aa < 2; aa++) {
                const int *d = shapes[s];
                check_against_ref(c, &rng, d[0], d[1], d[2], d[3], d[4], d[5], mode, aa);
            }
    /* random shapes, odd sizes included */
    for (int t = 0; t < 24; t++) {
        int N = rand_int(&rng, 1, 2), C = rand_int(&rng, 1, 6);
        int H = rand_int(&rng, 1, 40), W = rand_int(&rng, 1, 40);
        int OH = rand_int(&rng, 1, 40), OW = rand_int(&rng, 1, 40);
        check_against_ref(c, &rng, N, H, W, C, OH, OW, t & 1, (t >> 1) & 1);
    }
}

/* ------------------------------------------------------------ gradients */
typedef struct {
    int oh, ow, mode, aa;
} gc_args;

static ap_tensor *gc_resize(ap_ctx *c, void *user, int n, ap_tensor **in) {
    gc_args *a = user;
    return ap_resize(c, in[0], a->oh, a->ow, (ap_resize_mode)a->mode, a->aa);
}

static void test_gradcheck(ap_ctx *c) {
    test_rng rng = {11};
    const int shapes[][6] = {{1, 9, 7, 2, 4, 3}, {2, 3, 4, 1, 5, 7}, {1, 5, 6, 3, 5, 4}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int mode = 0; mode < 2; mode++)
            for (int aa = 0; aa < 2; aa++) {
                const int *d = shapes[s];
                ap_tensor *x = test_rand_leaf(c, &rng, 4, (int64_t[]){d[0], d[1], d[2], d[3]}, -1, 1);
                gc_args a = {d[4], d[5], mode, aa};
                char label[96];
                snprintf(label, sizeof label, "gradcheck %s aa=%d [%d,%d,%d,%d] -> %dx%d",
                         mode_name(mode), aa, d[0], d[1], d[2], d[3], d[4], d[5]);
                gc_opts o = {.max_elems = -1};
                gradcheck(c, label, gc_resize, &a, 1, &x, &o);
                ap_tensor_release(x);
            }
}

/* Two backwards into the same leaf add (beta 1 path); a frozen input records nothing. */
static void test_accumulate(ap_ctx *c) {
    test_rng rng = {13};
    ap_tensor *x = test_rand_leaf(c, &rng, 4, (int64_t[]){1, 11, 9, 3}, -1, 1);
    ap_tensor *g = test_rand(c, &rng, 4, (int64_t[]){1, 5, 4, 3}, -1, 1);
    float *first = NULL;
    for (int pass = 0; pass < 2; pass++) {
        ap_tensor *y = ap_resize(c, x, 5, 4, AP_RESIZE_BICUBIC, 1);
        CHECK(y && ap_tape_size(c) == 1);
        CHECK(ap_backward(c, y, g) == AP_OK);
        ap_tensor_release(y);
        const float *gx = ap_tensor_cdata(ap_tensor_grad(x));
        size_t n = (size_t)ap_tensor_numel(x);
        if (pass == 0) {
            first = malloc(n * sizeof *first);
            memcpy(first, gx, n * sizeof *first);
        } else {
            int ok = 1;
            for (size_t i = 0; i < n; i++) ok &= gx[i] == first[i] + first[i];
            CHECK_MSG(ok, "second backward adds to the leaf's gradient");
        }
    }
    free(first);
    ap_tensor *f = test_rand(c, &rng, 4, (int64_t[]){1, 11, 9, 3}, -1, 1);
    ap_tensor *yf = ap_resize(c, f, 5, 4, AP_RESIZE_BILINEAR, 1);
    CHECK(yf && !ap_tensor_requires_grad(yf) && ap_tape_size(c) == 0);
    ap_tensor_release(yf);
    ap_tensor_release(f);
    ap_tensor_release(g);
    ap_tensor_release(x);
}

/* Same inputs, 1 and 2 threads: bit-identical outputs and gradients. */
static void test_determinism(ap_ctx *c) {
    test_rng rng = {17};
    const int N = 2, H = 96, W = 80, C = 3, OH = 42, OW = 35;
    size_t nx = (size_t)N * H * W * C, ny = (size_t)N * OH * OW * C;
    float *x = malloc(nx * sizeof *x), *g = malloc(ny * sizeof *g);
    for (size_t i = 0; i < nx; i++) x[i] = (float)test_rng_uniform(&rng);
    for (size_t i = 0; i < ny; i++) g[i] = (float)(2 * test_rng_uniform(&rng) - 1);
    int prev = ap_get_num_threads(c);
    for (int mode = 0; mode < 2; mode++) {
        float *y[2], *gx[2] = {NULL, NULL};
        for (int t = 0; t < 2; t++) {
            ap_set_num_threads(c, t + 1);
            y[t] = run_resize(c, x, N, H, W, C, OH, OW, mode, 1, g, &gx[t]);
        }
        CHECK(y[0] && y[1] && gx[0] && gx[1]);
        if (y[0] && y[1] && gx[0] && gx[1]) {
            CHECK_MSG(!memcmp(y[0], y[1], ny * sizeof(float)), "%s forward: 1 vs 2 threads", mode_name(mode));
            CHECK_MSG(!memcmp(gx[0], gx[1], nx * sizeof(float)), "%s backward: 1 vs 2 threads", mode_name(mode));
        }
        for (int t = 0; t < 2; t++) {
            free(y[t]);
            free(gx[t]);
        }
    }
    ap_set_num_threads(c, prev);
    free(x);
    free(g);
}

/* ------------------------------------------------------------ errors */
static void expect_error(ap_ctx *c, ap_tensor *y, ap_status st, const char *needle) {
    CHECK(y == NULL);
    CHECK_MSG(ap_last_status(c) == st, "status %d, want %d (%s)", ap_last_status(c), st, ap_last_error(c));
    CHECK_MSG(strstr(ap_last_error(c), "resize") && strstr(ap_last_error(c), needle),
              "message \"%s\" should name resize and \"%s\"", ap_last_error(c), needle);
    ap_tensor_release(y);
    ap_clear_error(c);
}

static void test_errors(ap_ctx *c) {
    test_rng rng = {19};
    ap_tensor *x = test_rand(c, &rng, 4, (int64_t[]){1, 6, 6, 3}, -1, 1);
    ap_tensor *x3 = test_rand(c, &rng, 3, (int64_t[]){6, 6, 3}, -1, 1);
    ap_tensor *xe = ap_tensor_new(c, AP_F32, 4, (int64_t[]){1, 0, 6, 3});
    ap_tensor *xb = ap_tensor_convert(c, x, AP_BF16);
    expect_error(c, ap_resize(c, NULL, 3, 3, AP_RESIZE_BILINEAR, 0), AP_ERR_INVALID_ARG, "NULL");
    expect_error(c, ap_resize(c, x3, 3, 3, AP_RESIZE_BILINEAR, 0), AP_ERR_SHAPE, "[N,H,W,C]");
    expect_error(c, ap_resize(c, x, 0, 3, AP_RESIZE_BILINEAR, 0), AP_ERR_INVALID_ARG, "0x3");
    expect_error(c, ap_resize(c, x, 3, -2, AP_RESIZE_BICUBIC, 1), AP_ERR_INVALID_ARG, "positive");
    expect_error(c, ap_resize(c, x, 3, 3, (ap_resize_mode)7, 0), AP_ERR_INVALID_ARG, "mode");
    expect_error(c, ap_resize(c, xb, 3, 3, AP_RESIZE_BILINEAR, 0), AP_ERR_DTYPE, "bf16");
    expect_error(c, ap_resize(c, xe, 3, 3, AP_RESIZE_BILINEAR, 0), AP_ERR_SHAPE, "height");
    /* sticky: after an error even a valid call returns NULL */
    CHECK(ap_resize(c, x, 0, 0, AP_RESIZE_BILINEAR, 0) == NULL);
    CHECK(ap_resize(c, x, 3, 3, AP_RESIZE_BILINEAR, 0) == NULL);
    ap_clear_error(c);
    /* an empty batch is fine */
    ap_tensor *x0 = ap_tensor_new(c, AP_F32, 4, (int64_t[]){0, 6, 6, 3});
    ap_tensor *y0 = ap_resize(c, x0, 4, 5, AP_RESIZE_BICUBIC, 1);
    CHECK_OK(c);
    CHECK(y0 && ap_tensor_dim(y0, 0) == 0 && ap_tensor_dim(y0, 1) == 4 && ap_tensor_dim(y0, 2) == 5);
    ap_tensor *ts[] = {x, x3, xe, xb, x0, y0};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) ap_tensor_release(ts[i]);
}

int main(void) {
    ap_ctx *c = test_ctx();
    test_fixtures(c);
    test_reference(c);
    test_gradcheck(c);
    test_accumulate(c);
    test_determinism(c);
    test_errors(c);
    ap_ctx_free(c);
    return test_summary("test_resize");
}
