/* Shape ops: reshape (a view), detach, copy, scale.
 *
 * This file is also the pattern every op follows:
 *   1. check inputs (sticky error: return NULL if the context already failed);
 *   2. allocate the output and run the forward kernel;
 *   3. ap_node_begin() (NULL when nothing records), save what backward needs,
 *      ap_node_output();
 *   4. the backward takes each input's accumulator from ap_grad_acc() and
 *      writes (beta 0) or adds (beta 1) its gradient. */
#include "internal.h"

#include <stdlib.h>

/* ------------------------------------------------------------ reshape */
static void reshape_backward(ap_ctx *c, ap_node *n) {
    ap_tensor *gy = ap_node_gout(n, 0);
    float beta;
    ap_tensor *gx = ap_grad_acc(c, n, 0, &beta);
    if (gx) ap_accumulate(ap_f32(gx), ap_f32(gy), gx->numel, beta);
}

ap_tensor *ap_reshape(ap_ctx *c, ap_tensor *x, int ndim, const int64_t *shape) {
    if (!c || ap_failed(c)) return NULL;
    if (!x) {
        ap_seterr(c, AP_ERR_INVALID_ARG, "reshape: input is NULL");
        return NULL;
    }
    if (ndim < 0 || ndim > AP_MAX_DIMS) {
        ap_seterr(c, AP_ERR_SHAPE, "reshape: %d dims (at most %d)", ndim, AP_MAX_DIMS);
        return NULL;
    }
    int64_t s[AP_MAX_DIMS], known = 1;
    int infer = -1;
    for (int i = 0; i < ndim; i++) {
        s[i] = shape[i];
        if (s[i] == -1 && infer < 0)
            infer = i;
        else if (s[i] < 0) {
            ap_seterr(c, AP_ERR_SHAPE, "reshape: bad dim %d = %lld", i, (long long)s[i]);
            return NULL;
        } else
            known *= s[i];
    }
    if (infer >= 0) {
        if (known == 0 || x->numel % known) {
            char a[96];
            ap_seterr(c, AP_ERR_SHAPE, "reshape: cannot infer a dim for %s", ap_shape_str(x, a, sizeof a));
            return NULL;
        }
        s[infer] = x->numel / known;
    }
    ap_tensor *y = ap_tensor_view(c, x, ndim, s);
    if (!y) return NULL;
    ap_node *n = ap_node_begin(c, "reshape", reshape_backward, 1, &x);
    ap_node_output(n, 0, y);
    return y;
}

ap_tensor *ap_detach(ap_ctx *c, ap_tensor *x) {
    if (!c || ap_failed(c)) return NULL;
    if (!x) {
        ap_seterr(c, AP_ERR_INVALID_ARG, "detach: input is NULL");
        return NULL;
    }
    return ap_tensor_view(c, x, x->ndim, x->shape);
}

/* ------------------------------------------------------------ copy */
ap_tensor *ap_copy(ap_ctx *c, ap_tensor *x) {
    if (!c || !ap_check_input(c, "copy", "input", x, AP_F32)) return NULL;
    ap_tensor *y = ap_tensor_like(c, x);
    if (!y) return NULL;
    memcpy(ap_data(y), ap_data(x), (size_t)x->numel * sizeof(float));
    ap_node *n = ap_node_begin(c, "copy", reshape_backward, 1, &x);
    ap_node_output(n, 0, y);
    return y;
}

/* ------------------------------------------------------------ scale */
static void scale_backward(ap_ctx *c, ap_node *n) {
    const float *gy = ap_f32(ap_node_gout(n, 0));
    float beta, s = n->f[0];
    ap_tensor *gx = ap_grad_acc(c, n, 0, &beta);
    if (!gx) return;
    float *g = ap_f32(gx);
    int64_t m = gx->numel;
    if (beta == 0.0f) {
#pragma omp parallel for simd schedule(static) if (m > 32768)
        for (int64_t i = 0; i < m; i++) g[i] = s * gy[i];
    } else {
#pragma omp parallel for simd schedule(static) if (m > 32768)
        for (int64_t i = 0; i < m; i++) g[i] += s * gy[i];
    }
}

ap_tensor *ap_scale(ap_ctx *c, ap_tensor *x, float s) {
    if (!c || !ap_check_input(c, "scale", "input", x, AP_F32)) return NULL;
    ap_tensor *y = ap_tensor_like(c, x);
    if (!y) return NULL;
    const float *px = ap_f32(x);
    float *py = ap_f32(y);
    int64_t m = x->numel;
#pragma omp parallel for simd schedule(static) if (m > 32768)
    for (int64_t i = 0; i < m; i++) py[i] = s * px[i];
    ap_node *n = ap_node_begin(c, "scale", scale_backward, 1, &x);
    if (n) n->f[0] = s;
    ap_node_output(n, 0, y);
    return y;
}
