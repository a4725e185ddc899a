/* JPEG through libjpeg, with setjmp error handling confined to this file
 * (libjpeg's default error handler would exit the process). */
#include "io/jpeg.h"

#include "core/internal.h"

#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>

#include <jpeglib.h>

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jmp;
    char msg[JMSG_LENGTH_MAX];
} jpeg_err;

static void on_error(j_common_ptr ci) {
    jpeg_err *e = (jpeg_err *)ci->err;
    e->pub.format_message(ci, e->msg);
    longjmp(e->jmp, 1);
}
static void on_message(j_common_ptr ci) { (void)ci; } /* warnings stay silent */

ap_status ap_jpeg_encode_rgb8(ap_ctx *c, const unsigned char *rgb, int W, int H, int quality, unsigned char **out,
                              size_t *len) {
    *out = NULL;
    *len = 0;
    if (ap_failed(c)) return c->status;
    if (W < 1 || H < 1 || W > 65500 || H > 65500)
        return ap_seterr(c, AP_ERR_INVALID_ARG, "jpeg: image %dx%d (each side must be 1..65500)", W, H);
    if (quality < 1 || quality > 100)
        return ap_seterr(c, AP_ERR_INVALID_ARG, "jpeg: quality %d (must be 1..100)", quality);
    struct jpeg_compress_struct ci;
    jpeg_err e;
    /* volatile: read after longjmp */
    unsigned char *volatile buf = NULL;
    unsigned long volatile blen = 0;
    ci.err = jpeg_std_error(&e.pub);
    e.pub.error_exit = on_error;
    e.pub.output_message = on_message;
    e.msg[0] = 0;
    if (setjmp(e.jmp)) {
        jpeg_destroy_compress(&ci);
        free(buf);
        return ap_seterr(c, AP_ERR_BACKEND, "jpeg: libjpeg failed: %s", e.msg);
    }
    jpeg_create_compress(&ci);
    jpeg_mem_dest(&ci, (unsigned char **)&buf, (unsigned long *)&blen);
    ci.image_width = (JDIMENSION)W;
    ci.image_height = (JDIMENSION)H;
    ci.input_components = 3;
    ci.in_color_space = JCS_RGB;
    jpeg_set_defaults(&ci); /* YCbCr with 2x2 luma sampling (4:2:0), standard tables, islow DCT */
    jpeg_set_quality(&ci, quality, TRUE);
    jpeg_start_compress(&ci, TRUE);
    while (ci.next_scanline < ci.image_height) {
        JSAMPROW row = (JSAMPROW)(rgb + (size_t)ci.next_scanline * (size_t)W * 3);
        jpeg_write_scanlines(&ci, &row, 1);
    }
    jpeg_finish_compress(&ci);
    jpeg_destroy_compress(&ci);
    *out = buf;
    *len = (size_t)blen;
    return AP_OK;
}

ap_status ap_jpeg_sizes(ap_ctx *c, ap_tensor *images, int quality, size_t *sizes) {
    if (!c) return AP_ERR_INVALID_ARG;
    if (!ap_check_input(c, "jpeg", "images", images, AP_F32)) return c->status;
    if (images->ndim != 4 || images->shape[3] != 3 || images->shape[0] < 1) {
        char s[96];
        return ap_seterr(c, AP_ERR_SHAPE, "jpeg: images %s, expected [N,H,W,3]",
                         ap_shape_str(images, s, sizeof s));
    }
    int64_t N = images->shape[0], H = images->shape[1], W = images->shape[2];
    if (H < 1 || W < 1 || H > 65500 || W > 65500)
        return ap_seterr(c, AP_ERR_INVALID_ARG, "jpeg: image %lldx%lld (each side must be 1..65500)", (long long)W,
                         (long long)H);
    unsigned char *rgb = malloc((size_t)(H * W * 3));
    if (!rgb) return ap_seterr(c, AP_ERR_NOMEM, "jpeg: out of memory");
    const float *x = ap_cf32(images); // [N,H,W,3]
    ap_status st = AP_OK;
    for (int64_t n = 0; n < N && st == AP_OK; n++) {
        const float *xn = x + n * H * W * 3;
        for (int64_t i = 0; i < H * W * 3; i++) {
            float v = (xn[i] + 1.0f) * 127.5f;
            v = v != v ? 0.0f : v < 0.0f ? 0.0f : v > 255.0f ? 255.0f : v; /* NaN -> 0 */
            rgb[i] = (unsigned char)lrintf(v);
        }
        unsigned char *out = NULL;
        size_t len = 0;
        st = ap_jpeg_encode_rgb8(c, rgb, (int)W, (int)H, quality, &out, &len);
        free(out);
        sizes[n] = len;
    }
    free(rgb);
    return st;
}
