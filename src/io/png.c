/* PNG through libpng, with setjmp error handling confined to this file. */
#include "image.h"

#include "core/internal.h"
#include "io/atomic.h"

#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct {
    char msg[256];
} png_err;

static void on_error(png_structp p, png_const_charp m) {
    png_err *e = png_get_error_ptr(p);
    snprintf(e->msg, sizeof e->msg, "%s", m);
    png_longjmp(p, 1);
}
static void on_warning(png_structp p, png_const_charp m) {
    (void)p;
    (void)m;
}

ap_status ap_png_write_rgb8(ap_ctx *c, const char *path, const unsigned char *rgb, int W, int H, int n_text,
                            const char *const *keys, const char *const *values) {
    ap_atomic_file af;
    ap_status st = ap_atomic_open(c, path, &af);
    if (st != AP_OK) return st;
    png_err e = {{0}};
    png_structp p = png_create_write_struct(PNG_LIBPNG_VER_STRING, &e, on_error, on_warning);
    png_infop info = p ? png_create_info_struct(p) : NULL;
    png_textp text = n_text > 0 ? calloc((size_t)n_text, sizeof *text) : NULL;
    if (!p || !info || (n_text > 0 && !text)) {
        png_destroy_write_struct(&p, &info);
        free(text);
        ap_atomic_abort(&af);
        return ap_seterr(c, AP_ERR_NOMEM, "%s: out of memory writing PNG", path);
    }
    if (setjmp(png_jmpbuf(p))) {
        png_destroy_write_struct(&p, &info);
        free(text);
        ap_atomic_abort(&af);
        return ap_seterr(c, AP_ERR_IO, "%s: writing PNG failed: %s", path, e.msg);
    }
    png_init_io(p, af.f);
    png_set_IHDR(p, info, (png_uint_32)W, (png_uint_32)H, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    for (int i = 0; i < n_text; i++) {
        text[i].compression = PNG_TEXT_COMPRESSION_NONE;
        text[i].key = (png_charp)keys[i];
        text[i].text = (png_charp)values[i];
    }
    if (n_text > 0) png_set_text(p, info, text, n_text);
    png_write_info(p, info);
    for (int y = 0; y < H; y++) png_write_row(p, (png_const_bytep)(rgb + (size_t)y * W * 3));
    png_write_end(p, info);
    png_destroy_write_struct(&p, &info);
    free(text);
    return ap_atomic_commit(c, &af);
}

ap_status ap_png_write_grid(ap_ctx *c, const char *path, ap_tensor *images, int cols, int n_text,
                            const char *const *keys, const char *const *values) {
    if (ap_failed(c)) return c->status;
    if (!images || images->dtype != AP_F32 || images->ndim != 4 || images->shape[3] != 3 || images->shape[0] < 1)
        return ap_seterr(c, AP_ERR_SHAPE, "%s: images must be f32 [N,H,W,3]", path);
    int N = (int)images->shape[0], H = (int)images->shape[1], W = (int)images->shape[2];
    if (cols <= 0) cols = (int)ceil(sqrt((double)N));
    if (cols > N) cols = N;
    int rows = (N + cols - 1) / cols;
    size_t GW = (size_t)cols * W, GH = (size_t)rows * H;
    unsigned char *rgb = calloc(GW * GH * 3, 1);
    if (!rgb) return ap_seterr(c, AP_ERR_NOMEM, "%s: out of memory", path);
    const float *px = ap_cf32(images);
    for (int n = 0; n < N; n++) {
        size_t ox = (size_t)(n % cols) * W, oy = (size_t)(n / cols) * H;
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                for (int ch = 0; ch < 3; ch++) {
                    float v = px[(((size_t)n * H + y) * W + x) * 3 + ch];
                    v = (v + 1.0f) * 127.5f;
                    v = v < 0 ? 0 : v > 255 ? 255 : v;
                    if (v != v) v = 0;
                    rgb[((oy + y) * GW + ox + x) * 3 + ch] = (unsigned char)lrintf(v);
                }
    }
    ap_status st = ap_png_write_rgb8(c, path, rgb, (int)GW, (int)GH, n_text, keys, values);
    free(rgb);
    return st;
}

ap_status ap_png_read(ap_ctx *c, const char *path, ap_tensor **out) {
    *out = NULL;
    if (ap_failed(c)) return c->status;
    FILE *f = fopen(path, "rb");
    if (!f) return ap_seterr(c, AP_ERR_IO, "%s: cannot open", path);
    png_err e = {{0}};
    png_structp p = png_create_read_struct(PNG_LIBPNG_VER_STRING, &e, on_error, on_warning);
    png_infop info = p ? png_create_info_struct(p) : NULL;
    unsigned char *rgb = NULL;
    png_bytep *rows = NULL;
    if (!p || !info) {
        png_destroy_read_struct(&p, &info, NULL);
        fclose(f);
        return ap_seterr(c, AP_ERR_NOMEM, "%s: out of memory", path);
    }
    if (setjmp(png_jmpbuf(p))) {
        png_destroy_read_struct(&p, &info, NULL);
        free(rgb);
        free(rows);
        fclose(f);
        return ap_seterr(c, AP_ERR_FORMAT, "%s: not a readable PNG: %s", path, e.msg);
    }
    png_set_user_limits(p, 16384, 16384);
    png_init_io(p, f);
    png_read_info(p, info);
    png_set_expand(p);
    png_set_strip_16(p);
    png_set_strip_alpha(p);
    png_set_gray_to_rgb(p);
    png_read_update_info(p, info);
    png_uint_32 W = png_get_image_width(p, info), H = png_get_image_height(p, info);
    if (png_get_rowbytes(p, info) != (size_t)W * 3) png_error(p, "unexpected row layout");
    rgb = malloc((size_t)W * H * 3);
    rows = malloc(sizeof *rows * H);
    if (!rgb || !rows) png_error(p, "out of memory");
    for (png_uint_32 y = 0; y < H; y++) rows[y] = rgb + (size_t)y * W * 3;
    png_read_image(p, rows);
    png_read_end(p, NULL);
    png_destroy_read_struct(&p, &info, NULL);
    fclose(f);
    free(rows);
    ap_tensor *t = ap_tensor_new(c, AP_F32, 4, (int64_t[]){1, H, W, 3});
    if (t) {
        float *d = ap_f32(t);
        for (size_t i = 0; i < (size_t)W * H * 3; i++) d[i] = rgb[i] / 127.5f - 1.0f;
    }
    free(rgb);
    *out = t;
    return t ? AP_OK : c->status;
}
