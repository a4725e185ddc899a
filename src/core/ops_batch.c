/* Batch concatenation and slicing (first dim), with backward. */
#include "internal.h"

static bool same_tail(const ap_tensor *a, const ap_tensor *b) {
    if (a->ndim != b->ndim || a->ndim < 1) return false;
    for (int i = 1; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return false;
    return true;
}

static void concat_backward(ap_ctx *c, ap_node *n) {
    const float *gy = ap_cf32(ap_node_gout(n, 0));
    int64_t na = n->i[0]; /* elements of a */
    for (int k = 0; k < 2; k++) {
        float beta;
        ap_tensor *g = ap_grad_acc(c, n, k, &beta);
        if (g) ap_accumulate(ap_f32(g), gy + (k ? na : 0), g->numel, beta);
    }
}

ap_tensor *ap_concat_batch(ap_ctx *c, ap_tensor *a, ap_tensor *b) {
    if (!c || !ap_check_input(c, "concat_batch", "a", a, AP_F32) || !ap_check_input(c, "concat_batch", "b", b, AP_F32))
        return NULL;
    if (!same_tail(a, b)) {
        char s1[96], s2[96];
        ap_seterr(c, AP_ERR_SHAPE, "concat_batch: a %s and b %s differ beyond the first dim",
                  ap_shape_str(a, s1, sizeof s1), ap_shape_str(b, s2, sizeof s2));
        return NULL;
    }
    int64_t shape[AP_MAX_DIMS];
    memcpy(shape, a->shape, sizeof shape);
    shape[0] = a->shape[0] + b->shape[0];
    ap_tensor *y = ap_tensor_new_shape(c, AP_F32, a->ndim, shape);
    if (!y) return NULL;
    memcpy(ap_f32(y), ap_cf32(a), (size_t)a->numel * sizeof(float));
    memcpy(ap_f32(y) + a->numel, ap_cf32(b), (size_t)b->numel * sizeof(float));
    ap_tensor *in[2] = {a, b};
    ap_node *n = ap_node_begin(c, "concat_batch", concat_backward, 2, in);
    if (n) n->i[0] = a->numel;
    ap_node_output(n, 0, y);
    return y;
}

static void slice_backward(ap_ctx *c, ap_node *n) {
    const float *gy = ap_cf32(ap_node_gout(n, 0));
    int64_t off = n->i[0], len = n->i[1];
    float beta;
    ap_tensor *g = ap_grad_acc(c, n, 0, &beta);
    if (!g) return;
    float *gx = ap_f32(g);
    if (beta == 0.0f) { /* the rest of x gets zero gradient */
        memset(gx, 0, (size_t)off * sizeof(float));
        memset(gx + off + len, 0, (size_t)(g->numel - off - len) * sizeof(float));
    }
    ap_accumulate(gx + off, gy, len, beta);
}

ap_tensor *ap_slice_batch(ap_ctx *c, ap_tensor *x, int64_t start, int64_t count) {
    if (!c || !ap_check_input(c, "slice_batch", "x", x, AP_F32)) return NULL;
    if (x->ndim < 1 || start < 0 || count < 0 || start + count > x->shape[0]) {
        char s1[96];
        ap_seterr(c, AP_ERR_SHAPE, "slice_batch: [%lld, %lld) is outside the first dim of x %s", (long long)start,
                  (long long)(start + count), ap_shape_str(x, s1, sizeof s1));
        return NULL;
    }
    int64_t shape[AP_MAX_DIMS], per = x->shape[0] ? x->numel / x->shape[0] : 0;
    memcpy(shape, x->shape, sizeof shape);
    shape[0] = count;
    ap_tensor *y = ap_tensor_new_shape(c, AP_F32, x->ndim, shape);
    if (!y) return NULL;
    memcpy(ap_f32(y), ap_cf32(x) + start * per, (size_t)(count * per) * sizeof(float));
    ap_node *n = ap_node_begin(c, "slice_batch", slice_backward, 1, &x);
    if (n) n->i[0] = start * per, n->i[1] = count * per;
    ap_node_output(n, 0, y);
    return y;
}
