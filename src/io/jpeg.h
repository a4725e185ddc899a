/* JPEG encoding through libjpeg(-turbo): the exact file sizes the jpeg reward
 * reports beside its differentiable estimate. */
#ifndef AP_IO_JPEG_H
#define AP_IO_JPEG_H

#include "alignprop.h"

#include <stddef.h>

/* Encodes each image of images [N,H,W,3] (f32 in [-1,1]; value v ->
 * round((v+1)*127.5) clamped to 0..255, as the PNG writer and DDPO's reward
 * do) as a baseline JFIF at `quality` (1..100) with libjpeg's defaults:
 * YCbCr, 4:2:0, standard Huffman tables, islow DCT (what PIL's
 * Image.save(format="JPEG", quality=q) writes), and stores each file's size in
 * bytes in sizes[N]. */
ap_status ap_jpeg_sizes(ap_ctx *c, ap_tensor *images, int quality, size_t *sizes);

/* Encodes raw 8-bit RGB rows (H x W x 3) the same way into a malloc'd buffer
 * (*out, *len; free() it). */
ap_status ap_jpeg_encode_rgb8(ap_ctx *c, const unsigned char *rgb, int W, int H, int quality, unsigned char **out,
                              size_t *len);

#endif
