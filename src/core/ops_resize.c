/* ap_resize: differentiable bilinear / bicubic image resize, NHWC, matching
 * torch.nn.functional.interpolate(align_corners=False, antialias=...). The
 * reward models shrink decoded 512x512 images to their 224x224 input with it.
 *
 * The op is linear in x, so the backward needs no saved tensor: only the
 * sizes and the mode, from which it rebuilds the (small) per-axis tables. */
#include "internal.h"

#include "backend/cpu/resize.h"

#include <limits.h>

typedef struct {
    ap_resize_axis h, w;
} resize_tables;

static void tables_free(resize_tables *t) {
    ap_resize_axis_free(&t->h);
    ap_resize_axis_free(&t->w);
}

static bool tables_init(ap_ctx *c, resize_tables *t, int64_t H, int64_t W, int64_t oh,
                        int64_t ow, int mode, int antialias, bool transpose) {
    bool ok = ap_resize_axis_init(&t->h, (int)H, (int)oh, mode, antialias) == 0 &&
              ap_resize_axis_init(&t->w, (int)W, (int)ow, mode, antialias) == 0;
    if (ok && transpose)
        ok = ap_resize_axis_transpose(&t->h) == 0 && ap_resize_axis_transpose(&t->w) == 0;
    if (!ok) {
        tables_free(t);
        ap_seterr(c, AP_ERR_NOMEM, "resize: out of memory for the interpolation tables");
    }
    return ok;
}

static void resize_backward(ap_ctx *c, ap_node *n) {
    const ap_tensor *gy = ap_node_gout(n, 0);
    const int64_t *xs = n->in_shape[0];
    const int mode = (int)n->i[0], antialias = (int)n->i[1];
    resize_tables t;
    if (!tables_init(c, &t, xs[1], xs[2], n->i[2], n->i[3], mode, antialias, true)) return;
    float beta;
    ap_tensor *gx = ap_grad_acc(c, n, 0, &beta);
    if (gx && ap_resize_backward_f32(ap_cf32(gy), ap_f32(gx), beta, xs[0], xs[3], &t.h, &t.w))
        ap_seterr(c, AP_ERR_NOMEM, "resize: out of memory in the backward");
    tables_free(&t);
}

ap_tensor *ap_resize(ap_ctx *c, ap_tensor *x, int oh, int ow, ap_resize_mode mode, int antialias) {
    if (!c || !ap_check_input(c, "resize", "x", x, AP_F32)) return NULL;
    char buf[96];
    if (x->ndim != 4) {
        ap_seterr(c, AP_ERR_SHAPE, "resize: x is %s (%d dims), expected [N,H,W,C]",
                  ap_shape_str(x, buf, sizeof buf), x->ndim);
        return NULL;
    }
    if (x->shape[1] < 1 || x->shape[2] < 1 || x->shape[1] > INT_MAX || x->shape[2] > INT_MAX) {
        ap_seterr(c, AP_ERR_SHAPE, "resize: x is %s; its height and width must be at least 1",
                  ap_shape_str(x, buf, sizeof buf));
        return NULL;
    }
    if (oh <= 0 || ow <= 0) {
        ap_seterr(c, AP_ERR_INVALID_ARG, "resize: output size %dx%d (oh x ow) must be positive", oh,
                  ow);
        return NULL;
    }
    if (mode != AP_RESIZE_BILINEAR && mode != AP_RESIZE_BICUBIC) {
        ap_seterr(c, AP_ERR_INVALID_ARG, "resize: unknown mode %d (expected bilinear or bicubic)",
                  (int)mode);
        return NULL;
    }
    antialias = antialias != 0;
    const int64_t N = x->shape[0], H = x->shape[1], W = x->shape[2], C = x->shape[3];
    ap_tensor *y = ap_tensor_new_shape(c, AP_F32, 4, (int64_t[]){N, oh, ow, C});
    if (!y) return NULL;
    resize_tables t;
    if (!tables_init(c, &t, H, W, oh, ow, (int)mode, antialias, false)) {
        ap_tensor_release(y);
        return NULL;
    }
    ap_tensor *tmp = NULL; /* the horizontal pass, when both axes change */
    if (!t.h.identity && !t.w.identity) {
        tmp = ap_tensor_new_shape(c, AP_F32, 4, (int64_t[]){N, H, ow, C});
        if (!tmp) {
            tables_free(&t);
            ap_tensor_release(y);
            return NULL;
        }
    }
    ap_resize_forward_f32(ap_cf32(x), tmp ? ap_f32(tmp) : NULL, ap_f32(y), N, C, &t.h, &t.w);
    ap_tensor_release(tmp);
    tables_free(&t);

    ap_node *n = ap_node_begin(c, "resize", resize_backward, 1, &x);
    if (ap_failed(c)) {
        ap_tensor_release(y);
        return NULL;
    }
    if (n) {
        n->i[0] = mode;
        n->i[1] = antialias;
        n->i[2] = oh;
        n->i[3] = ow;
    }
    ap_node_output(n, 0, y);
    return y;
}
