/* The jpeg rewards: a differentiable estimate of the JPEG file size at quality
 * 95 (jpeg.h, docs/rewards.md), with libjpeg's exact size as a metric. */
#include "rewards/jpeg.h"

#include "core/internal.h"
#include "io/jpeg.h"
#include "rewards/reward.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define JPEG_QUALITY 95

/* One bit count for every class, a = 1, t = 0.35: chosen on bench/jpeg_rank's
 * procedural set (Spearman 0.987 with libjpeg; free weights per class, from
 * jpeg_rank --fit, reach only 0.988). Block and header costs are exact for
 * libjpeg's standard Huffman tables and markers (docs/rewards.md). */
const ap_jpeg_model ap_jpeg_default_model = {
    .a = {1.0f, 1.0f, 1.0f, 1.0f},
    .t = {0.35f, 0.35f, 0.35f, 0.35f},
    .block_bits_y = 6.0f,
    .block_bits_c = 4.0f,
    .header_bytes = 625.0f,
};

/* JPEG specification, Annex K, tables K.1 and K.2 (natural order). */
static const int std_luma[64] = {16, 11, 10, 16, 24,  40,  51,  61,  12, 12, 14, 19, 26,  58,  60,  55,
                                 14, 13, 16, 24, 40,  57,  69,  56,  14, 17, 22, 29, 51,  87,  80,  62,
                                 18, 22, 37, 56, 68,  109, 103, 77,  24, 35, 55, 64, 81,  104, 113, 92,
                                 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99};
static const int std_chroma[64] = {17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
                                   24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
                                   99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
                                   99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99};

/* JFIF RGB -> YCbCr rows (the offsets +128 of Cb and Cr cancel in the level shift). */
static const double ycc[3][3] = {
    {0.299, 0.587, 0.114}, {-0.168736, -0.331264, 0.5}, {0.5, -0.418688, -0.081312}};

void ap_jpeg_quant_tables(int quality, int qy[64], int qc[64]) {
    int q = quality < 1 ? 1 : quality > 100 ? 100 : quality;
    int scale = q < 50 ? 5000 / q : 200 - 2 * q;
    for (int k = 0; k < 64; k++) {
        int a = (std_luma[k] * scale + 50) / 100, b = (std_chroma[k] * scale + 50) / 100;
        qy[k] = a < 1 ? 1 : a > 255 ? 255 : a;
        qc[k] = b < 1 ? 1 : b > 255 ? 255 : b;
    }
}

/* The orthonormal 8x8 DCT-II basis: F[v][u] = sum_{y,x} basis(v,u,y,x) s[y][x]. */
static double basis(int v, int u, int y, int x) {
    double cv = v ? 1.0 : M_SQRT1_2, cu = u ? 1.0 : M_SQRT1_2;
    return 0.25 * cv * cu * cos((2 * y + 1) * v * M_PI / 16) * cos((2 * x + 1) * u * M_PI / 16);
}

/* A pixel x in [-1,1] is 127.5*(x+1) in 0..255: the component's level-shifted
 * value is 127.5 * (row . x) plus a constant (-0.5 for Y, 0 for Cb and Cr)
 * that only the DC sees, and the DC enters as a difference, where it cancels. */
ap_status ap_jpeg_dct_init(ap_ctx *c, int quality, ap_jpeg_dct *d) {
    *d = (ap_jpeg_dct){.quality = quality};
    if (ap_failed(c)) return c->status;
    if (quality < 1 || quality > 100)
        return ap_seterr(c, AP_ERR_INVALID_ARG, "jpeg: quality %d (must be 1..100)", quality);
    ap_jpeg_quant_tables(quality, d->qy, d->qc);
    static const int64_t shapes[AP_JPEG_CLASSES][4] = {{63, 3, 8, 8}, {1, 3, 8, 16}, {126, 3, 16, 16}, {2, 3, 16, 32}};
    for (int k = 0; k < AP_JPEG_CLASSES; k++) {
        d->w[k] = ap_tensor_zeros(c, AP_F32, 4, shapes[k]);
        if (!d->w[k]) {
            ap_jpeg_dct_free(d);
            return c->status;
        }
    }
    float *wya = ap_f32(d->w[AP_JPEG_Y_AC]); // [63,3,8,8]
    float *wyd = ap_f32(d->w[AP_JPEG_Y_DC]); // [1,3,8,16]
    float *wca = ap_f32(d->w[AP_JPEG_C_AC]); // [126,3,16,16]
    float *wcd = ap_f32(d->w[AP_JPEG_C_DC]); // [2,3,16,32]
    for (int ch = 0; ch < 3; ch++)
        for (int f = 1; f < 64; f++)
            for (int y = 0; y < 8; y++)
                for (int x = 0; x < 8; x++)
                    wya[(((f - 1) * 3 + ch) * 8 + y) * 8 + x] =
                        (float)(127.5 * ycc[0][ch] * basis(f / 8, f % 8, y, x) / d->qy[f]);
    for (int ch = 0; ch < 3; ch++)
        for (int y = 0; y < 8; y++)
            for (int x = 0; x < 16; x++)
                wyd[(ch * 8 + y) * 16 + x] = (float)((x < 8 ? -1 : 1) * 127.5 * ycc[0][ch] * 0.125 / d->qy[0]);
    /* chroma: the 2x2 average is a quarter of each of 4 pixels under one
     * subsampled sample */
    for (int comp = 0; comp < 2; comp++)
        for (int ch = 0; ch < 3; ch++) {
            double m = 127.5 * ycc[1 + comp][ch] * 0.25;
            for (int f = 1; f < 64; f++)
                for (int y = 0; y < 16; y++)
                    for (int x = 0; x < 16; x++)
                        wca[(((comp * 63 + f - 1) * 3 + ch) * 16 + y) * 16 + x] =
                            (float)(m * basis(f / 8, f % 8, y / 2, x / 2) / d->qc[f]);
            for (int y = 0; y < 16; y++)
                for (int x = 0; x < 32; x++)
                    wcd[((comp * 3 + ch) * 16 + y) * 32 + x] = (float)((x < 16 ? -1 : 1) * m * 0.125 / d->qc[0]);
        }
    return AP_OK;
}

void ap_jpeg_dct_free(ap_jpeg_dct *d) {
    for (int k = 0; k < AP_JPEG_CLASSES; k++) {
        ap_tensor_release(d->w[k]);
        d->w[k] = NULL;
    }
}

/* Edge replication with differentiable ops: the last column copied by a 0/1
 * selection matrix (linear) and appended (concat on the last dim), then per
 * image the last row copied by an outer product with ones and appended (concat
 * on the first dim). */
ap_tensor *ap_jpeg_pad16(ap_ctx *c, ap_tensor *x) {
    if (!c || ap_failed(c)) return NULL;
    if (!ap_reward_check_images(c, "jpeg", x)) return NULL;
    int64_t N = x->shape[0], H = x->shape[1], W = x->shape[2];
    int64_t Hp = (H + 15) / 16 * 16, Wp = (W + 15) / 16 * 16;
    if (Hp == H && Wp == W) return ap_tensor_retain(x);
    ap_tensor *rows = ap_reshape(c, x, 3, (int64_t[]){N, H, W * 3}); // [N,H,W*3]
    if (Wp > W && rows) {
        int64_t kw = Wp - W;
        ap_tensor *sel = ap_tensor_zeros(c, AP_F32, 2, (int64_t[]){kw * 3, W * 3}); // [kw*3, W*3]
        if (sel)
            for (int64_t r = 0; r < kw * 3; r++) ap_f32(sel)[r * W * 3 + (W - 1) * 3 + r % 3] = 1.0f;
        ap_tensor *edge = ap_linear(c, rows, sel, NULL); // [N,H,kw*3]
        ap_tensor *wide = ap_concat_channels(c, rows, edge); // [N,H,Wp*3]
        ap_tensor_release(sel);
        ap_tensor_release(edge);
        ap_tensor_release(rows);
        rows = wide;
    }
    if (Hp > H && rows) {
        ap_tensor *ones = ap_tensor_new(c, AP_F32, 2, (int64_t[]){Hp - H, 1}); // [Hp-H, 1]
        if (ones)
            for (int64_t i = 0; i < Hp - H; i++) ap_f32(ones)[i] = 1.0f;
        ap_tensor *all = NULL;
        for (int64_t n = 0; n < N && !ap_failed(c); n++) {
            ap_tensor *img = ap_slice_batch(c, rows, n, 1);                       // [1,H,Wp*3]
            ap_tensor *img2 = ap_reshape(c, img, 2, (int64_t[]){H, Wp * 3});      // [H,Wp*3]
            ap_tensor *last = ap_slice_batch(c, img2, H - 1, 1);                  // [1,Wp*3]
            ap_tensor *edge = ap_matmul(c, ones, last, 0, 0);                     // [Hp-H,Wp*3]
            ap_tensor *tall = ap_concat_batch(c, img2, edge);                     // [Hp,Wp*3]
            ap_tensor *next = all ? ap_concat_batch(c, all, tall) : ap_tensor_retain(tall);
            ap_tensor *t[] = {img, img2, last, edge, tall, all};
            for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) ap_tensor_release(t[i]);
            all = next;
        }
        ap_tensor_release(ones);
        ap_tensor_release(rows);
        rows = all;
    }
    ap_tensor *y = ap_reshape(c, rows, 4, (int64_t[]){N, Hp, Wp, 3});
    ap_tensor_release(rows);
    return y;
}

ap_status ap_jpeg_coefficients(ap_ctx *c, const ap_jpeg_dct *d, ap_tensor *images, ap_tensor *out[AP_JPEG_CLASSES]) {
    for (int k = 0; k < AP_JPEG_CLASSES; k++) out[k] = NULL;
    if (!c) return AP_ERR_INVALID_ARG;
    if (ap_failed(c)) return c->status;
    if (!d || !d->w[0]) return ap_seterr(c, AP_ERR_STATE, "jpeg: DCT kernels not initialised");
    /* f32 whatever the context says: bf16 pixels are off by up to half a grey
     * level, as much as a quantiser step at quality 95 */
    ap_precision prec = ap_get_precision(c);
    ap_set_precision(c, AP_PREC_F32);
    ap_tensor *x = ap_jpeg_pad16(c, images);
    static const ap_conv_params p[AP_JPEG_CLASSES] = {
        {8, {0, 0, 0, 0}}, {8, {0, 0, 8, 0}}, {16, {0, 0, 0, 0}}, {16, {0, 0, 16, 0}}};
    for (int k = 0; k < AP_JPEG_CLASSES && x; k++) out[k] = ap_conv2d(c, x, d->w[k], NULL, p[k]);
    ap_tensor_release(x);
    ap_set_precision(c, prec);
    if (ap_failed(c)) {
        for (int k = 0; k < AP_JPEG_CLASSES; k++) {
            ap_tensor_release(out[k]);
            out[k] = NULL;
        }
        return c->status;
    }
    return AP_OK;
}

ap_tensor *ap_jpeg_estimate_kb(ap_ctx *c, const ap_jpeg_dct *d, const ap_jpeg_model *model, ap_tensor *images) {
    if (!c || ap_failed(c)) return NULL;
    if (!ap_reward_check_images(c, "jpeg", images)) return NULL;
    const ap_jpeg_model *m = model ? model : &ap_jpeg_default_model;
    ap_tensor *z[AP_JPEG_CLASSES];
    if (ap_jpeg_coefficients(c, d, images, z) != AP_OK) return NULL;
    int64_t N = images->shape[0];
    int64_t Hp = (images->shape[1] + 15) / 16 * 16, Wp = (images->shape[2] + 15) / 16 * 16;
    ap_tensor *kb = NULL;
    for (int k = 0; k < AP_JPEG_CLASSES && !ap_failed(c); k++) {
        ap_tensor *flat = ap_reshape(c, z[k], 2, (int64_t[]){N, -1}); // [N, blocks*coefs]
        ap_tensor *zt = ap_scale(c, flat, 1.0f / m->t[k]);
        ap_tensor *sq = ap_square(c, zt);
        ap_tensor *lg = ap_log1p(c, sq);
        ap_tensor *nat = ap_sum_rows(c, lg); // [N], nats
        /* a*log2(.) bits, / 8 bytes, / 1000 kB */
        ap_tensor *part = ap_scale(c, nat, (float)(m->a[k] / (M_LN2 * 8000.0)));
        ap_tensor *next = kb ? ap_add(c, kb, part) : ap_tensor_retain(part);
        ap_tensor *t[] = {flat, zt, sq, lg, nat, part, kb};
        for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) ap_tensor_release(t[i]);
        kb = next;
    }
    for (int k = 0; k < AP_JPEG_CLASSES; k++) ap_tensor_release(z[k]);
    double blocks_y = (double)(Hp / 8) * (double)(Wp / 8), blocks_c = 2.0 * (double)(Hp / 16) * (double)(Wp / 16);
    double fixed = (m->header_bytes + (blocks_y * m->block_bits_y + blocks_c * m->block_bits_c) / 8.0) / 1000.0;
    ap_tensor *y = ap_add_scalar(c, kb, (float)fixed);
    ap_tensor_release(kb);
    return y;
}

/* ------------------------------------------------------------ the rewards */
typedef struct {
    ap_reward base;
    ap_jpeg_dct dct;
    float sign; /* -1: compressibility, +1: incompressibility */
} jpeg_reward;

static ap_tensor *jpeg_forward(ap_ctx *c, ap_reward *self, ap_tensor *images, const char *const *prompts) {
    (void)prompts;
    jpeg_reward *r = (jpeg_reward *)self;
    if (!ap_reward_check_images(c, self->name, images)) return NULL;
    ap_tensor *kb = ap_jpeg_estimate_kb(c, &r->dct, NULL, images);
    if (!kb || r->sign > 0) return kb;
    ap_tensor *y = ap_scale(c, kb, -1.0f);
    ap_tensor_release(kb);
    return y;
}

/* jpeg_kb: libjpeg's size; jpeg_kb_est: the estimate (the reward up to sign). */
static int jpeg_metrics(ap_ctx *c, ap_reward *self, ap_tensor *images, const char **names, double *values) {
    jpeg_reward *r = (jpeg_reward *)self;
    if (!ap_reward_check_images(c, self->name, images)) return -1;
    int64_t N = images->shape[0];
    size_t *sizes = malloc((size_t)N * sizeof *sizes);
    if (!sizes) {
        ap_seterr(c, AP_ERR_NOMEM, "%s: out of memory", self->name);
        return -1;
    }
    ap_status st = ap_jpeg_sizes(c, images, JPEG_QUALITY, sizes);
    int prev = ap_set_grad_enabled(c, 0);
    ap_tensor *est = st == AP_OK ? ap_jpeg_estimate_kb(c, &r->dct, NULL, images) : NULL;
    ap_set_grad_enabled(c, prev);
    if (est)
        for (int64_t n = 0; n < N; n++) {
            values[n] = (double)sizes[n] / 1000.0;
            values[N + n] = ap_cf32(est)[n];
        }
    free(sizes);
    ap_tensor_release(est);
    if (!est) return -1;
    names[0] = "jpeg_kb";
    names[1] = "jpeg_kb_est";
    return 2;
}

static void jpeg_free(ap_reward *self) {
    jpeg_reward *r = (jpeg_reward *)self;
    ap_jpeg_dct_free(&r->dct);
    free(r);
}

static ap_status make(ap_ctx *c, const char *name, float sign, ap_reward **out) {
    jpeg_reward *r = calloc(1, sizeof *r);
    if (!r) return ap_seterr(c, AP_ERR_NOMEM, "reward %s: out of memory", name);
    ap_status st = ap_jpeg_dct_init(c, JPEG_QUALITY, &r->dct);
    if (st != AP_OK) {
        free(r);
        return st;
    }
    r->base = (ap_reward){.name = name, .forward = jpeg_forward, .free = jpeg_free, .metrics = jpeg_metrics, .user = r};
    r->sign = sign;
    *out = &r->base;
    return AP_OK;
}

ap_status ap_reward_create_jpeg(ap_ctx *c, const ap_reward_opts *opts, ap_reward **out) {
    (void)opts;
    return make(c, "jpeg", -1.0f, out);
}

ap_status ap_reward_create_jpeg_incompressibility(ap_ctx *c, const ap_reward_opts *opts, ap_reward **out) {
    (void)opts;
    return make(c, "jpeg-incompressibility", 1.0f, out);
}
