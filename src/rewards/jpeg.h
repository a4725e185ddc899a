/* The differentiable JPEG size estimate behind the `jpeg` and
 * `jpeg-incompressibility` rewards (docs/rewards.md, section "jpeg"), exposed
 * for its tests and benchmark.
 *
 * Everything up to quantisation is affine in the image, so it is four strided
 * convolutions with constant kernels: colour conversion (JFIF RGB -> YCbCr),
 * 4:2:0 chroma subsampling (2x2 average), level shift, the 8x8 DCT-II and the
 * division by the quantisation table are folded into each kernel. The bit
 * count of the coefficients is smooth: a*log2(1 + (z/t)^2) per coefficient. */
#ifndef AP_REWARDS_JPEG_H
#define AP_REWARDS_JPEG_H

#include "alignprop.h"

/* Coefficient classes, one tensor each. */
enum { AP_JPEG_Y_AC = 0, AP_JPEG_Y_DC, AP_JPEG_C_AC, AP_JPEG_C_DC, AP_JPEG_CLASSES };

/* The bit model: a coefficient z (DCT coefficient / quantiser step, not
 * rounded) of class k costs a[k] * log2(1 + (z/t[k])^2) bits; every luma block
 * costs block_bits_y more (its end-of-block and zero-DC-difference codes),
 * every chroma block block_bits_c, and the file header_bytes. */
typedef struct {
    float a[AP_JPEG_CLASSES];
    float t[AP_JPEG_CLASSES];
    float block_bits_y, block_bits_c, header_bytes;
} ap_jpeg_model;

extern const ap_jpeg_model ap_jpeg_default_model;

/* The constant kernels for one quality. */
typedef struct {
    int quality;
    int qy[64], qc[64];           /* quantiser steps, natural (row-major) order */
    ap_tensor *w[AP_JPEG_CLASSES]; /* conv kernels [Cout,3,kh,kw], f32 */
} ap_jpeg_dct;

/* libjpeg's tables for quality 1..100 (jpeg_set_quality with force_baseline):
 * the standard luminance and chrominance tables of the JPEG specification
 * (Annex K) scaled by 5000/q (q < 50) or 200 - 2q percent, rounded, clamped to
 * 1..255. Natural order. */
void ap_jpeg_quant_tables(int quality, int qy[64], int qc[64]);

ap_status ap_jpeg_dct_init(ap_ctx *c, int quality, ap_jpeg_dct *d);
void ap_jpeg_dct_free(ap_jpeg_dct *d); /* accepts a zeroed or freed d */

/* images [N,H,W,3] in [-1,1], any H, W >= 1 (edge-replicated to multiples of
 * 16 first) -> the coefficients divided by their quantiser steps, unrounded:
 *   out[AP_JPEG_Y_AC] [N,Hp/8,Wp/8,63]    luma AC, natural order without the DC (index 8*v+u-1)
 *   out[AP_JPEG_Y_DC] [N,Hp/8,Wp/8,1]     luma DC minus the DC of the block on its left (first
 *                                          column: minus the DC of a mid-grey block, x = 0)
 *   out[AP_JPEG_C_AC] [N,Hp/16,Wp/16,126] Cb's 63 AC, then Cr's
 *   out[AP_JPEG_C_DC] [N,Hp/16,Wp/16,2]   Cb's and Cr's DC differences, as for luma
 * The convolutions run in f32 whatever the context's precision. */
ap_status ap_jpeg_coefficients(ap_ctx *c, const ap_jpeg_dct *d, ap_tensor *images, ap_tensor *out[AP_JPEG_CLASSES]);

/* images [N,H,W,3] -> edge-replicated to [N,Hp,Wp,3], Hp and Wp the next
 * multiples of 16 (a new reference to images when they already are). */
ap_tensor *ap_jpeg_pad16(ap_ctx *c, ap_tensor *images);

/* The estimated file size in kB (1000 bytes) [N], differentiable with respect
 * to the images. model NULL: ap_jpeg_default_model. */
ap_tensor *ap_jpeg_estimate_kb(ap_ctx *c, const ap_jpeg_dct *d, const ap_jpeg_model *model, ap_tensor *images);

#endif
