/* Row reductions and the small pointwise ops the rewards are built from:
 * sum_rows and mean_rows (over the last dim), abs, square, sqrt, log1p, add_scalar.
 *
 * Determinism: each row is summed on one thread in double, in an order that
 * depends on the row length only (ap_cpu_dsum), so results do not depend on
 * the thread count. What the backward needs: the row reductions and add_scalar
 * save nothing; abs, square, sqrt and log1p save their input. */
#include "backend/cpu/cpu_kernels.h"
#include "internal.h"

#include <math.h>

/* ------------------------------------------------------------ sum_rows, mean_rows */
static void rows_backward(ap_ctx *c, ap_node *n) {
    float beta;
    ap_tensor *gx = ap_grad_acc(c, n, 0, &beta);
    if (!gx) return;
    const float *gy = ap_f32(ap_node_gout(n, 0)); // [R]
    float *g = ap_f32(gx);                         // [R, K]
    int64_t R = n->i[0], K = n->i[1];
    float s = n->f[0];
#pragma omp parallel for schedule(static) if (R * K > 32768)
    for (int64_t r = 0; r < R; r++) {
        float v = gy[r] * s;
        float *gr = g + r * K;
        if (beta == 0.0f)
            for (int64_t k = 0; k < K; k++) gr[k] = v;
        else
            for (int64_t k = 0; k < K; k++) gr[k] += v;
    }
}

static ap_tensor *reduce_rows(ap_ctx *c, const char *name, ap_tensor *x, bool mean) {
    if (!c || !ap_check_input(c, name, "x", x, AP_F32)) return NULL;
    char sx[96];
    if (x->ndim < 1) {
        ap_seterr(c, AP_ERR_SHAPE, "%s: x %s has no dims", name, ap_shape_str(x, sx, sizeof sx));
        return NULL;
    }
    int64_t K = x->shape[x->ndim - 1];
    if (K == 0) {
        ap_seterr(c, AP_ERR_SHAPE, "%s: x %s has an empty last dim", name, ap_shape_str(x, sx, sizeof sx));
        return NULL;
    }
    int64_t R = x->numel / K;
    /* [..., K] -> [...]; a 1-D input gives [1] (tensors have at least one dim) */
    int ndim = x->ndim > 1 ? x->ndim - 1 : 1;
    int64_t shape[AP_MAX_DIMS] = {1};
    for (int i = 0; i < x->ndim - 1; i++) shape[i] = x->shape[i];
    ap_tensor *y = ap_tensor_new_shape(c, AP_F32, ndim, shape);
    if (!y) return NULL;
    const float *px = ap_cf32(x); // [R, K]
    float *py = ap_f32(y);        // [R]
#pragma omp parallel for schedule(static) if (R * K > 32768)
    for (int64_t r = 0; r < R; r++) {
        double s = ap_cpu_dsum(px + r * K, NULL, K);
        py[r] = (float)(mean ? s / (double)K : s);
    }
    ap_node *n = ap_node_begin(c, name, rows_backward, 1, &x);
    if (n) {
        n->i[0] = R;
        n->i[1] = K;
        n->f[0] = mean ? (float)(1.0 / (double)K) : 1.0f;
    }
    ap_node_output(n, 0, y);
    return y;
}

ap_tensor *ap_sum_rows(ap_ctx *c, ap_tensor *x) { return reduce_rows(c, "sum_rows", x, false); }
ap_tensor *ap_mean_rows(ap_ctx *c, ap_tensor *x) { return reduce_rows(c, "mean_rows", x, true); }

/* ------------------------------------------------------------ pointwise */
typedef enum { PW_ABS, PW_SQUARE, PW_SQRT, PW_LOG1P, PW_ADD_SCALAR } pw_kind;

static inline float pw_fwd(pw_kind k, float x, float s) {
    switch (k) {
    case PW_ABS: return fabsf(x);
    case PW_SQUARE: return x * x;
    case PW_SQRT: return sqrtf(x);
    case PW_LOG1P: return log1pf(x);
    case PW_ADD_SCALAR: return x + s;
    }
    return 0.0f;
}

/* dy/dx at x. abs: sign(x), 0 at 0 (the subgradient PyTorch uses). sqrt: 0.5/sqrt(x),
 * +inf at 0 as in PyTorch. */
static inline float pw_deriv(pw_kind k, float x) {
    switch (k) {
    case PW_ABS: return (float)((x > 0.0f) - (x < 0.0f));
    case PW_SQUARE: return 2.0f * x;
    case PW_SQRT: return 0.5f / sqrtf(x);
    case PW_LOG1P: return 1.0f / (1.0f + x);
    case PW_ADD_SCALAR: return 1.0f;
    }
    return 0.0f;
}

static void pw_backward(ap_ctx *c, ap_node *n) {
    float beta;
    ap_tensor *gx = ap_grad_acc(c, n, 0, &beta);
    if (!gx) return;
    pw_kind k = (pw_kind)n->i[0];
    const float *gy = ap_f32(ap_node_gout(n, 0));
    const float *x = n->saved[0] ? ap_cf32(n->saved[0]) : NULL; /* NULL for add_scalar */
    float *g = ap_f32(gx);
    int64_t m = gx->numel;
#pragma omp parallel for schedule(static) if (m > 32768)
    for (int64_t i = 0; i < m; i++) {
        float v = x ? gy[i] * pw_deriv(k, x[i]) : gy[i];
        g[i] = beta == 0.0f ? v : g[i] + v;
    }
}

static ap_tensor *pointwise(ap_ctx *c, const char *name, pw_kind k, ap_tensor *x, float s) {
    if (!c || !ap_check_input(c, name, "x", x, AP_F32)) return NULL;
    ap_tensor *y = ap_tensor_like(c, x);
    if (!y) return NULL;
    const float *px = ap_cf32(x);
    float *py = ap_f32(y);
    int64_t m = x->numel;
#pragma omp parallel for schedule(static) if (m > 32768)
    for (int64_t i = 0; i < m; i++) py[i] = pw_fwd(k, px[i], s);
    ap_node *n = ap_node_begin(c, name, pw_backward, 1, &x);
    if (n) n->i[0] = k;
    if (k != PW_ADD_SCALAR) ap_node_save(n, 0, x);
    ap_node_output(n, 0, y);
    return y;
}

ap_tensor *ap_abs(ap_ctx *c, ap_tensor *x) { return pointwise(c, "abs", PW_ABS, x, 0.0f); }
ap_tensor *ap_square(ap_ctx *c, ap_tensor *x) { return pointwise(c, "square", PW_SQUARE, x, 0.0f); }
ap_tensor *ap_sqrt(ap_ctx *c, ap_tensor *x) { return pointwise(c, "sqrt", PW_SQRT, x, 0.0f); }
ap_tensor *ap_log1p(ap_ctx *c, ap_tensor *x) { return pointwise(c, "log1p", PW_LOG1P, x, 0.0f); }
ap_tensor *ap_add_scalar(ap_ctx *c, ap_tensor *x, float s) {
    return pointwise(c, "add_scalar", PW_ADD_SCALAR, x, s);
}
