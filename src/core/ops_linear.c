/* Matrix products: linear (x w^T + b with a weight tensor) and matmul (two
 * activations, batched, either side transposed), on the oneDNN backend.
 *
 * Backward of y = op(a) op(b), per batch element (op = identity or transpose):
 *   d op(a) = dy op(b)^T,   d op(b) = op(a)^T dy,
 * and each is written in the stored layout of its operand by choosing which
 * side of the product it is and reading the other operands through strides,
 * so no transpose is ever materialised. A shared b sums its gradient over the
 * batch: as one product over all rows when a is not transposed, else one
 * product per batch element accumulated in order. */
#include "backend/cpu/dnnl.h"
#include "core/weight_args.h"

#include <stdio.h>

/* ------------------------------------------------------------ linear */
static void linear_backward(ap_ctx *c, ap_node *n) {
    const float *gy = ap_cf32(ap_node_gout(n, 0));
    int64_t rows = n->i[0], in = n->i[1], out = n->i[2];
    float bx, bw, bb;
    ap_tensor *gx = ap_grad_acc(c, n, 0, &bx);
    ap_tensor *gw = ap_grad_acc(c, n, 1, &bw);
    ap_tensor *gb = ap_grad_acc(c, n, 2, &bb);
    if (ap_failed(c)) return;
    ap_dnnl_linear_backward(c, rows, in, out, gy, n->saved[0], gx ? ap_f32(gx) : NULL, bx,
                            n->saved[1] ? ap_cf32(n->saved[1]) : NULL, gw ? ap_f32(gw) : NULL, bw,
                            gb ? ap_f32(gb) : NULL, bb);
}

ap_tensor *ap_linear(ap_ctx *c, ap_tensor *x, ap_tensor *w, ap_tensor *bias) {
    char s1[96], s2[96], wl[160];
    if (!c || !ap_check_input(c, "linear", "x", x, AP_F32)) return NULL;
    if (ap_check_weight(c, "linear", w, wl, sizeof wl) != AP_OK) return NULL;
    if (w->ndim != 2) {
        ap_seterr(c, AP_ERR_SHAPE, "linear: %s %s must be 2-D [out,in]", wl,
                  ap_shape_str(w, s1, sizeof s1));
        return NULL;
    }
    if (x->ndim < 1 || x->shape[x->ndim - 1] != w->shape[1]) {
        ap_seterr(c, AP_ERR_SHAPE, "linear: x %s has %lld features, %s %s expects %lld",
                  ap_shape_str(x, s1, sizeof s1), x->ndim ? (long long)x->shape[x->ndim - 1] : 0LL,
                  wl, ap_shape_str(w, s2, sizeof s2), (long long)w->shape[1]);
        return NULL;
    }
    int64_t in = w->shape[1], out = w->shape[0];
    if (ap_check_bias(c, "linear", bias, w, wl, "outputs") != AP_OK) return NULL;
    int64_t shape[AP_MAX_DIMS], rows = 1;
    for (int i = 0; i < x->ndim - 1; i++) rows *= (shape[i] = x->shape[i]);
    shape[x->ndim - 1] = out;
    ap_tensor *y = ap_tensor_new_shape(c, AP_F32, x->ndim, shape);
    if (!y) return NULL;
    ap_tensor *b32 = NULL; /* a bf16/f16 bias is widened (it is tiny) */
    if (bias && bias->dtype != AP_F32 && !(b32 = ap_tensor_convert(c, bias, AP_F32))) {
        ap_tensor_release(y);
        return NULL;
    }
    const float *pb = b32 ? ap_cf32(b32) : bias ? ap_cf32(bias) : NULL;
    ap_status st = ap_dnnl_linear_forward(c, rows, in, out, ap_cf32(x), w, pb, ap_f32(y));
    c->flops += 2.0 * rows * in * out;
    ap_tensor_release(b32);
    if (st != AP_OK) {
        ap_tensor_release(y);
        return NULL;
    }
    ap_tensor *inputs[3] = {x, w, bias};
    ap_node *n = ap_node_begin(c, "linear", linear_backward, 3, inputs);
    if (n) {
        n->i[0] = rows, n->i[1] = in, n->i[2] = out;
        if (ap_node_needs(n, 0)) ap_node_save(n, 0, w); /* dx = dy w */
        if (ap_node_needs(n, 1)) ap_node_save(n, 1, x); /* dw = dy^T x */
    }
    ap_node_output(n, 0, y);
    return y;
}

/* ------------------------------------------------------------ matmul */
/* The operand op(t) of a product as a (rows x cols) matrix view of t's data:
 * t stored [.., r, c] row-major, transposed when trans. */
static ap_dnnl_mat view(const void *data, ap_dtype dt, int64_t sb, int64_t stored_cols, int trans) {
    ap_dnnl_mat m = {data, dt, sb, trans ? 1 : stored_cols, trans ? stored_cols : 1};
    return m;
}

/* The same matrix read transposed. */
static ap_dnnl_mat transposed(ap_dnnl_mat m) {
    int64_t t = m.sr;
    m.sr = m.sc;
    m.sc = t;
    return m;
}

static void matmul_backward(ap_ctx *c, ap_node *n) {
    ap_tensor *gyt = ap_node_gout(n, 0);
    int ta = (int)n->i[0], tb = (int)n->i[1];
    int64_t batch = n->i[2], M = n->i[3], N = n->i[4], K = n->i[5];
    bool shared = n->i[6] != 0;
    /* dy is read by both products: in bf16 mode convert it once */
    ap_tensor *gy16 = NULL;
    const void *gyp = ap_cf32(gyt);
    ap_dtype gdt = AP_F32;
    if (ap_dnnl_use_bf16(c) && ap_node_needs(n, 0) && ap_node_needs(n, 1)) {
        gy16 = ap_tensor_new_shape(c, AP_BF16, 1, (int64_t[]){gyt->numel});
        if (!gy16) return;
        ap_cpu_f32_to_bf16(ap_data(gy16), ap_cf32(gyt), gyt->numel);
        gyp = ap_data(gy16);
        gdt = AP_BF16;
    }
    ap_dnnl_mat dy = {gyp, gdt, M * N, N, 1}; /* [M x N] */
    float beta;
    ap_tensor *ga = ap_grad_acc(c, n, 0, &beta);
    if (ga) {
        const ap_tensor *b = n->saved[0];
        ap_dnnl_mat opb = view(ap_data(b), AP_F32, shared ? 0 : K * N, tb ? K : N, tb); /* [K x N] */
        ap_dnnl_mat opbt = transposed(opb), dyt = transposed(dy);
        if (!ta) /* da [M,K] = dy op(b)^T */
            ap_dnnl_matmul(c, "matmul backward", batch, M, K, N, &dy, &opbt, NULL, ap_f32(ga), beta);
        else /* da [K,M] = op(b) dy^T */
            ap_dnnl_matmul(c, "matmul backward", batch, K, M, N, &opb, &dyt, NULL, ap_f32(ga), beta);
    }
    ap_tensor *gb = ap_grad_acc(c, n, 1, &beta);
    if (gb && !ap_failed(c)) {
        const ap_tensor *a = n->saved[1];
        ap_dnnl_mat opa = view(ap_data(a), AP_F32, M * K, ta ? M : K, ta); /* [M x K] */
        ap_dnnl_mat dyt = transposed(dy);                                  /* [N x M] */
        ap_dnnl_mat opat = transposed(opa);                                /* [K x M] */
        int64_t nb = batch, rows = M;
        if (shared && !ta) { /* sum over the batch inside one product: its rows are contiguous */
            nb = 1;
            rows = batch * M;
        }
        if (!shared || nb == 1) {
            int64_t pb = shared ? 1 : batch;
            if (!tb) /* db [K,N] = op(a)^T dy */
                ap_dnnl_matmul(c, "matmul backward", pb, K, N, rows, &opat, &dy, NULL, ap_f32(gb), beta);
            else /* db [N,K] = dy^T op(a) */
                ap_dnnl_matmul(c, "matmul backward", pb, N, K, rows, &dyt, &opa, NULL, ap_f32(gb), beta);
        } else {
            for (int64_t i = 0; i < batch && !ap_failed(c); i++) {
                ap_dnnl_mat ai = tb ? opa : opat, di = tb ? dyt : dy;
                ai.data = (const float *)ai.data + i * M * K;
                di.data = (const char *)di.data + (size_t)(i * M * N) * ap_dtype_size(di.dtype);
                if (!tb)
                    ap_dnnl_matmul(c, "matmul backward", 1, K, N, M, &ai, &di, NULL, ap_f32(gb), i ? 1.0f : beta);
                else
                    ap_dnnl_matmul(c, "matmul backward", 1, N, K, M, &di, &ai, NULL, ap_f32(gb), i ? 1.0f : beta);
            }
        }
    }
    ap_tensor_release(gy16);
}

ap_tensor *ap_matmul(ap_ctx *c, ap_tensor *a, ap_tensor *b, int trans_a, int trans_b) {
    char s1[96], s2[96];
    if (!c || !ap_check_input(c, "matmul", "a", a, AP_F32) || !ap_check_input(c, "matmul", "b", b, AP_F32))
        return NULL;
    if (a->ndim < 2 || b->ndim < 2) {
        ap_seterr(c, AP_ERR_SHAPE, "matmul: %s %s must have at least 2 dims", a->ndim < 2 ? "a" : "b",
                  ap_shape_str(a->ndim < 2 ? a : b, s1, sizeof s1));
        return NULL;
    }
    bool shared = b->ndim == 2 && a->ndim > 2;
    bool lead_ok = shared || a->ndim == b->ndim;
    for (int i = 0; lead_ok && !shared && i < a->ndim - 2; i++) lead_ok = a->shape[i] == b->shape[i];
    if (!lead_ok) {
        ap_seterr(c, AP_ERR_SHAPE, "matmul: leading dims of a %s and b %s differ (b needs a's or none)",
                  ap_shape_str(a, s1, sizeof s1), ap_shape_str(b, s2, sizeof s2));
        return NULL;
    }
    int64_t ar = a->shape[a->ndim - 2], ac = a->shape[a->ndim - 1];
    int64_t br = b->shape[b->ndim - 2], bc = b->shape[b->ndim - 1];
    int64_t M = trans_a ? ac : ar, K = trans_a ? ar : ac, Kb = trans_b ? bc : br, N = trans_b ? br : bc;
    if (K != Kb) {
        ap_seterr(c, AP_ERR_SHAPE, "matmul: a %s%s has inner dim %lld, b %s%s has %lld",
                  ap_shape_str(a, s1, sizeof s1), trans_a ? " (transposed)" : "", (long long)K,
                  ap_shape_str(b, s2, sizeof s2), trans_b ? " (transposed)" : "", (long long)Kb);
        return NULL;
    }
    int64_t shape[AP_MAX_DIMS], batch = 1;
    for (int i = 0; i < a->ndim - 2; i++) batch *= (shape[i] = a->shape[i]);
    shape[a->ndim - 2] = M;
    shape[a->ndim - 1] = N;
    ap_tensor *y = ap_tensor_new_shape(c, AP_F32, a->ndim, shape);
    if (!y) return NULL;
    ap_dnnl_mat ma = view(ap_data(a), AP_F32, M * K, ac, trans_a);
    ap_dnnl_mat mb = view(ap_data(b), AP_F32, shared ? 0 : K * N, bc, trans_b);
    if (ap_dnnl_matmul(c, "matmul", batch, M, N, K, &ma, &mb, NULL, ap_f32(y), 0.0f) != AP_OK) {
        ap_tensor_release(y);
        return NULL;
    }
    c->flops += 2.0 * batch * M * N * K;
    ap_tensor *in[2] = {a, b};
    ap_node *n = ap_node_begin(c, "matmul", matmul_backward, 2, in);
    if (n) {
        n->i[0] = trans_a != 0, n->i[1] = trans_b != 0, n->i[2] = batch;
        n->i[3] = M, n->i[4] = N, n->i[5] = K, n->i[6] = shared;
        if (ap_node_needs(n, 0)) ap_node_save(n, 0, b);
        if (ap_node_needs(n, 1)) ap_node_save(n, 1, a);
    }
    ap_node_output(n, 0, y);
    return y;
}
