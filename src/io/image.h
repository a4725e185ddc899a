/* PNG images (libpng): 8-bit RGB, with text chunks; written atomically. */
#ifndef AP_IO_IMAGE_H
#define AP_IO_IMAGE_H

#include "alignprop.h"

/* Writes images [N,H,W,3] f32 in [-1,1] (clamped; value v -> round((v+1)*127.5))
 * as one PNG: a grid of `cols` columns (0 = ceil(sqrt(N))). keys/values: n_text
 * tEXt chunks (e.g. "prompt", "parameters"). */
ap_status ap_png_write_grid(ap_ctx *c, const char *path, ap_tensor *images, int cols, int n_text,
                            const char *const *keys, const char *const *values);
/* Reads a PNG as [1,H,W,3] f32 in [-1,1] (gray and alpha are converted). */
ap_status ap_png_read(ap_ctx *c, const char *path, ap_tensor **out);
/* Writes raw 8-bit RGB rows (H x W x 3) to path atomically. */
ap_status ap_png_write_rgb8(ap_ctx *c, const char *path, const unsigned char *rgb, int W, int H, int n_text,
                            const char *const *keys, const char *const *values);

#endif
