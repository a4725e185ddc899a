/* Separable image resize kernels (bilinear / bicubic, with or without
 * antialiasing), matching torch.nn.functional.interpolate with
 * align_corners=False. Images are NHWC f32.
 *
 * A resize is two 1-D resamplings, each described by a table: for every output
 * position along the axis, up to `taps` (input index, weight) pairs. The
 * forward applies the width table to every input row (horizontal pass), then
 * the height table to rows of that result (vertical pass), as torch does. The
 * backward applies the transposed tables in the reverse order, gathering:
 * every input row of the gradient is owned by one thread, so sums run in a
 * fixed order and results do not depend on the thread count.
 */
#ifndef AP_BACKEND_CPU_RESIZE_H
#define AP_BACKEND_CPU_RESIZE_H

#include <stdint.h>

/* One axis of a resize. */
/* Rows are padded to a fixed width with zero-weight taps on a valid index, so
 * the inner loops have a constant trip count (a varying one mispredicts on
 * every output); adding 0*x leaves a finite sum unchanged. */
typedef struct {
    int in, out;      /* sizes along the axis */
    int taps;         /* table width: the most taps any output uses */
    int identity;     /* in == out: every mode reduces to a copy along this axis */
    int32_t *count;   /* [out] taps used by each output (<= taps) */
    int32_t *idx;     /* [out*taps] input index of each tap (in 0..in-1) */
    float *w;         /* [out*taps] weight of each tap (0 past count) */
    /* the transpose, for the backward (built on demand): the (output, weight)
     * pairs that read each input, in increasing output order */
    int t_taps;       /* its width: the most pairs any input has */
    int32_t *t_count; /* [in] */
    int32_t *t_out;   /* [in*t_taps] output index (valid past count) */
    float *t_w;       /* [in*t_taps] weight (0 past count) */
    /* The same two tables as dense windows, when every row's taps are
     * consecutive indices (always so with antialias): row r reads
     * start[r] .. start[r]+taps-1 with weights dw[r*taps ..], zero outside
     * its taps, so the kernels need no index loads. NULL otherwise. */
    int32_t *start, *t_start; /* [out], [in] */
    float *dw, *t_dw;         /* [out*taps], [in*t_taps] */
} ap_resize_axis;

/* mode: 0 bilinear, 1 bicubic (the values of ap_resize_mode). Returns 0, or -1
 * when out of memory (a is then left freeable). */
int ap_resize_axis_init(ap_resize_axis *a, int in, int out, int mode, int antialias);
/* Builds the transposed table of a (idempotent). Returns 0 or -1 (out of memory). */
int ap_resize_axis_transpose(ap_resize_axis *a);
void ap_resize_axis_free(ap_resize_axis *a);

/* y = resize(x). x [N,H,W,C], y [N,OH,OW,C] where H = ah->in, OH = ah->out,
 * W = aw->in, OW = aw->out. tmp [N,H,OW,C] holds the horizontal pass; it may
 * be NULL when either axis is an identity. */
void ap_resize_forward_f32(const float *x, float *tmp, float *y, int64_t n, int64_t c,
                           const ap_resize_axis *ah, const ap_resize_axis *aw);

/* gx = beta*gx + resize^T(gy). gy [N,OH,OW,C], gx [N,H,W,C]. Both axes must
 * have their transposes built. With beta 0, gx is only written. Returns 0, or
 * -1 when the per-thread scratch could not be allocated. */
int ap_resize_backward_f32(const float *gy, float *gx, float beta, int64_t n, int64_t c,
                           const ap_resize_axis *ah, const ap_resize_axis *aw);

#endif
