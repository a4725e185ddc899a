/* Two small ops the CLIP reward preprocessing needs: a spatial crop of an NHWC
 * image (torchvision's CenterCrop after a shortest-side resize) and the L2
 * normalisation of rows (the image and text embeddings before the aesthetic
 * head and the cosine scores).
 *
 * crop is a copy of a window, so its backward needs no saved tensor: the
 * gradient is gy inside the window and 0 outside. l2_normalize saves its input
 * (rows are short: the embeddings are [N, 768..1024]) and recomputes the norm
 * in double in the backward. Rows are reduced on one thread in a fixed order,
 * so results do not depend on the thread count. */
#include "internal.h"

#include <math.h>

/* ------------------------------------------------------------ crop */
static void crop_backward(ap_ctx *c, ap_node *n) {
    float beta;
    ap_tensor *gx = ap_grad_acc(c, n, 0, &beta);
    if (!gx) return;
    const float *gy = ap_f32(ap_node_gout(n, 0)); // [N, h, w, C]
    float *g = ap_f32(gx);                         // [N, H, W, C]
    const int64_t *xs = n->in_shape[0];
    const int64_t N = xs[0], H = xs[1], W = xs[2], C = xs[3];
    const int64_t top = n->i[0], left = n->i[1], h = n->i[2], w = n->i[3];
#pragma omp parallel for schedule(static) if (N * H * W * C > 65536)
    for (int64_t r = 0; r < N * H; r++) {
        int64_t b = r / H, y = r % H;
        float *gr = g + r * W * C;
        bool in_rows = y >= top && y < top + h;
        const float *src = in_rows ? gy + ((b * h + (y - top)) * w) * C : NULL;
        for (int64_t x = 0; x < W; x++) {
            bool in = in_rows && x >= left && x < left + w;
            for (int64_t k = 0; k < C; k++) {
                float v = in ? src[(x - left) * C + k] : 0.0f;
                gr[x * C + k] = beta == 0.0f ? v : gr[x * C + k] + v;
            }
        }
    }
}

ap_tensor *ap_crop(ap_ctx *c, ap_tensor *x, int64_t top, int64_t left, int64_t h, int64_t w) {
    if (!c || !ap_check_input(c, "crop", "x", x, AP_F32)) return NULL;
    char buf[96];
    if (x->ndim != 4) {
        ap_seterr(c, AP_ERR_SHAPE, "crop: x is %s, expected [N,H,W,C]", ap_shape_str(x, buf, sizeof buf));
        return NULL;
    }
    const int64_t N = x->shape[0], H = x->shape[1], W = x->shape[2], C = x->shape[3];
    if (h < 1 || w < 1 || top < 0 || left < 0 || top > H - h || left > W - w) {
        ap_seterr(c, AP_ERR_INVALID_ARG,
                  "crop: window %lldx%lld at (top %lld, left %lld) does not fit in x %s",
                  (long long)h, (long long)w, (long long)top, (long long)left, ap_shape_str(x, buf, sizeof buf));
        return NULL;
    }
    ap_tensor *y = ap_tensor_new_shape(c, AP_F32, 4, (int64_t[]){N, h, w, C});
    if (!y) return NULL;
    const float *px = ap_cf32(x); // [N, H, W, C]
    float *py = ap_f32(y);        // [N, h, w, C]
#pragma omp parallel for schedule(static) if (N * h * w * C > 65536)
    for (int64_t r = 0; r < N * h; r++) {
        int64_t b = r / h, yy = r % h;
        memcpy(py + r * w * C, px + ((b * H + top + yy) * W + left) * C, sizeof(float) * (size_t)(w * C));
    }
    ap_node *n = ap_node_begin(c, "crop", crop_backward, 1, &x);
    if (n) {
        n->i[0] = top;
        n->i[1] = left;
        n->i[2] = h;
        n->i[3] = w;
    }
    ap_node_output(n, 0, y);
    return y;
}

/* ------------------------------------------------------------ l2_normalize */
#define L2_EPS 1e-12 /* torch.nn.functional.normalize's default */

static double row_norm(const float *x, int64_t K) {
    double s = 0.0;
    for (int64_t k = 0; k < K; k++) s += (double)x[k] * x[k];
    return sqrt(s);
}

/* y = x / d with d = max(|x|, eps). Where |x| > eps: dy/dx = (I - y y^T) / d, so
 * gx = (gy - y (y . gy)) / d; below eps d is a constant: gx = gy / eps. */
static void l2n_backward(ap_ctx *c, ap_node *n) {
    float beta;
    ap_tensor *gx = ap_grad_acc(c, n, 0, &beta);
    if (!gx) return;
    const float *x = ap_cf32(n->saved[0]);        // [R, K]
    const float *gy = ap_f32(ap_node_gout(n, 0)); // [R, K]
    float *g = ap_f32(gx);                        // [R, K]
    const int64_t R = n->i[0], K = n->i[1];
#pragma omp parallel for schedule(static) if (R * K > 32768)
    for (int64_t r = 0; r < R; r++) {
        const float *xr = x + r * K, *gr = gy + r * K;
        float *o = g + r * K;
        double nrm = row_norm(xr, K);
        double d = nrm > L2_EPS ? nrm : L2_EPS, dot = 0.0;
        if (nrm > L2_EPS)
            for (int64_t k = 0; k < K; k++) dot += (double)xr[k] * gr[k];
        double a = dot / (d * d); /* (y . gy) / d, with y = x / d */
        for (int64_t k = 0; k < K; k++) {
            float v = (float)((gr[k] - xr[k] * a) / d);
            o[k] = beta == 0.0f ? v : o[k] + v;
        }
    }
}

ap_tensor *ap_l2_normalize(ap_ctx *c, ap_tensor *x) {
    if (!c || !ap_check_input(c, "l2_normalize", "x", x, AP_F32)) return NULL;
    char buf[96];
    if (x->ndim < 1 || x->shape[x->ndim - 1] < 1) {
        ap_seterr(c, AP_ERR_SHAPE, "l2_normalize: x %s has an empty last dim", ap_shape_str(x, buf, sizeof buf));
        return NULL;
    }
    const int64_t K = x->shape[x->ndim - 1], R = x->numel / K;
    ap_tensor *y = ap_tensor_like(c, x);
    if (!y) return NULL;
    const float *px = ap_cf32(x); // [R, K]
    float *py = ap_f32(y);        // [R, K]
#pragma omp parallel for schedule(static) if (R * K > 32768)
    for (int64_t r = 0; r < R; r++) {
        double nrm = row_norm(px + r * K, K), d = nrm > L2_EPS ? nrm : L2_EPS;
        for (int64_t k = 0; k < K; k++) py[r * K + k] = (float)(px[r * K + k] / d);
    }
    ap_node *n = ap_node_begin(c, "l2_normalize", l2n_backward, 1, &x);
    if (n) {
        n->i[0] = R;
        n->i[1] = K;
    }
    ap_node_save(n, 0, x);
    ap_node_output(n, 0, y);
    return y;
}
