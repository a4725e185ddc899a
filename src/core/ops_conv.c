/* 2-D convolution, NHWC, on the oneDNN backend.
 *
 * The backward writes dx whenever x needs a gradient, and runs the
 * weight-gradient kernel only when the weight needs one: the frozen
 * convolutions of AlignProp cost one backward-data pass each. The node saves
 * the weight only for dx and the input only for dw, so a frozen layer keeps
 * no activation alive for its backward. */
#include "backend/cpu/dnnl.h"
#include "core/weight_args.h"

#include <stdio.h>

/* node->i[] holds the geometry */
static void geom_save(ap_node *n, const ap_conv_geom *g) {
    n->i[0] = g->n, n->i[1] = g->h, n->i[2] = g->w, n->i[3] = g->cin;
    n->i[4] = g->cout, n->i[5] = g->kh | g->kw << 16, n->i[6] = g->stride;
    n->i[7] = g->pad[0] | g->pad[1] << 16 | g->pad[2] << 32 | g->pad[3] << 48;
}

static ap_conv_geom geom_load(const ap_node *n) {
    ap_conv_geom g = {.n = n->i[0],
                      .h = n->i[1],
                      .w = n->i[2],
                      .cin = n->i[3],
                      .cout = n->i[4],
                      .kh = n->i[5] & 0xffff,
                      .kw = n->i[5] >> 16,
                      .stride = n->i[6]};
    for (int k = 0; k < 4; k++) g.pad[k] = (n->i[7] >> (16 * k)) & 0xffff;
    g.oh = (g.h + g.pad[0] + g.pad[1] - g.kh) / g.stride + 1;
    g.ow = (g.w + g.pad[2] + g.pad[3] - g.kw) / g.stride + 1;
    return g;
}

static void conv_backward(ap_ctx *c, ap_node *n) {
    ap_conv_geom g = geom_load(n);
    const float *gy = ap_cf32(ap_node_gout(n, 0));
    float bx, bw, bb;
    ap_tensor *gx = ap_grad_acc(c, n, 0, &bx);
    ap_tensor *gw = ap_grad_acc(c, n, 1, &bw);
    ap_tensor *gb = ap_grad_acc(c, n, 2, &bb);
    if (ap_failed(c)) return;
    ap_dnnl_conv_backward(c, &g, gy, n->saved[0], gx ? ap_f32(gx) : NULL, bx,
                          n->saved[1] ? ap_cf32(n->saved[1]) : NULL, gw ? ap_f32(gw) : NULL, bw,
                          gb ? ap_f32(gb) : NULL, bb);
}

/* AP_OK, or the error (set in c) naming the argument at fault. */
static ap_status check_conv(ap_ctx *c, const ap_tensor *x, const ap_tensor *w, const ap_tensor *bias,
                            const ap_conv_params *p) {
    char a[96], wl[160];
    if (!ap_check_input(c, "conv2d", "x", x, AP_F32)) return c->status;
    if (ap_check_weight(c, "conv2d", w, wl, sizeof wl) != AP_OK) return c->status;
    if (x->ndim != 4)
        return ap_seterr(c, AP_ERR_SHAPE, "conv2d: x %s must be 4-D [N,H,W,C]", ap_shape_str(x, a, sizeof a));
    if (w->ndim != 4)
        return ap_seterr(c, AP_ERR_SHAPE, "conv2d: %s %s must be 4-D [Cout,Cin,kh,kw]", wl,
                         ap_shape_str(w, a, sizeof a));
    if (w->shape[1] != x->shape[3])
        return ap_seterr(c, AP_ERR_SHAPE, "conv2d: x has %lld channels, %s %s expects %lld", (long long)x->shape[3],
                         wl, ap_shape_str(w, a, sizeof a), (long long)w->shape[1]);
    /* the node packs kernel sizes and pads into 16 bits each */
    if (w->shape[0] < 1 || w->shape[1] < 1 || w->shape[2] < 1 || w->shape[3] < 1 || w->shape[2] > 0xffff ||
        w->shape[3] > 0xffff)
        return ap_seterr(c, AP_ERR_SHAPE, "conv2d: %s %s has an empty or oversized dim", wl,
                         ap_shape_str(w, a, sizeof a));
    if (p->stride < 1) return ap_seterr(c, AP_ERR_INVALID_ARG, "conv2d: stride %d (must be at least 1)", p->stride);
    for (int k = 0; k < 4; k++)
        if (p->pad[k] < 0 || p->pad[k] > 0xffff)
            return ap_seterr(c, AP_ERR_INVALID_ARG, "conv2d: pad[%d] = %d (must be 0..65535)", k, p->pad[k]);
    if (x->shape[1] + p->pad[0] + p->pad[1] < w->shape[2] || x->shape[2] + p->pad[2] + p->pad[3] < w->shape[3])
        return ap_seterr(c, AP_ERR_SHAPE,
                         "conv2d: x %s padded by {%d,%d,%d,%d} is smaller than the %lldx%lld kernel",
                         ap_shape_str(x, a, sizeof a), p->pad[0], p->pad[1], p->pad[2], p->pad[3],
                         (long long)w->shape[2], (long long)w->shape[3]);
    return ap_check_bias(c, "conv2d", bias, w, wl, "output channels");
}

ap_tensor *ap_conv2d(ap_ctx *c, ap_tensor *x, ap_tensor *w, ap_tensor *bias, ap_conv_params p) {
    if (!c || check_conv(c, x, w, bias, &p) != AP_OK) return NULL;
    ap_conv_geom g = {.n = x->shape[0],
                      .h = x->shape[1],
                      .w = x->shape[2],
                      .cin = x->shape[3],
                      .cout = w->shape[0],
                      .kh = w->shape[2],
                      .kw = w->shape[3],
                      .stride = p.stride,
                      .pad = {p.pad[0], p.pad[1], p.pad[2], p.pad[3]}};
    g.oh = (g.h + g.pad[0] + g.pad[1] - g.kh) / g.stride + 1;
    g.ow = (g.w + g.pad[2] + g.pad[3] - g.kw) / g.stride + 1;
    ap_tensor *y = ap_tensor_new_shape(c, AP_F32, 4, (int64_t[]){g.n, g.oh, g.ow, g.cout});
    if (!y) return NULL;
    ap_tensor *b32 = NULL; /* a bf16/f16 bias is widened (it is tiny) */
    if (bias && bias->dtype != AP_F32 && !(b32 = ap_tensor_convert(c, bias, AP_F32))) {
        ap_tensor_release(y);
        return NULL;
    }
    const float *pb = b32 ? ap_cf32(b32) : bias ? ap_cf32(bias) : NULL;
    ap_status st = ap_dnnl_conv_forward(c, &g, ap_cf32(x), w, pb, ap_f32(y));
    c->flops += 2.0 * g.n * g.oh * g.ow * g.cout * g.cin * g.kh * g.kw;
    ap_tensor_release(b32);
    if (st != AP_OK) {
        ap_tensor_release(y);
        return NULL;
    }
    ap_tensor *in[3] = {x, w, bias};
    ap_node *n = ap_node_begin(c, "conv2d", conv_backward, 3, in);
    if (n) {
        geom_save(n, &g);
        if (ap_node_needs(n, 0)) ap_node_save(n, 0, w);
        if (ap_node_needs(n, 1)) ap_node_save(n, 1, x);
    }
    ap_node_output(n, 0, y);
    return y;
}
