/* Attention and softmax ops: argument checks, scratch, tape nodes.
 *
 * ap_attention saves q, k, v (retained, no copies), its output (the tensor it
 * returns, retained) and the per-row log-sum-exp [B,H,T]; nothing of size
 * T x S exists at any time. Kernel scratch comes from the context's arena, so
 * ap_mem_peak sees it. */
#include "internal.h"

#include "backend/cpu/attention.h"

#include <math.h>

/* ------------------------------------------------------------ attention */
enum { ATT_Q, ATT_K, ATT_V };

static ap_attn_problem attn_problem(ap_ctx *c, const int64_t *qs, const int64_t *ks, int64_t heads,
                                    float scale, int causal) {
    ap_attn_problem p;
    p.B = qs[0];
    p.T = qs[1];
    p.S = ks[1];
    p.H = heads;
    p.d = qs[2] / heads;
    p.scale = scale;
    p.causal = causal;
    p.bf16 = c->precision == AP_PREC_BF16;
    p.nthreads = c->num_threads > 0 ? c->num_threads : 1;
    return p;
}

/* Scratch as an arena tensor (counted in the memory statistics). */
static ap_tensor *scratch_new(ap_ctx *c, size_t bytes) {
    int64_t n = (int64_t)((bytes + 3) / 4);
    return ap_tensor_new_shape(c, AP_F32, 1, (int64_t[]){n > 0 ? n : 1});
}

static void attention_backward(ap_ctx *c, ap_node *n) {
    ap_tensor *gy = ap_node_gout(n, 0);
    ap_attn_problem p = attn_problem(c, n->in_shape[ATT_Q], n->in_shape[ATT_K], n->i[0], n->f[0],
                                     (int)n->i[1]);
    p.bf16 = (int)n->i[2]; /* the precision of the forward */
    int nq = ap_node_needs(n, ATT_Q), nk = ap_node_needs(n, ATT_K), nv = ap_node_needs(n, ATT_V);
    ap_tensor *scr = scratch_new(c, ap_attn_backward_scratch(&p, nq, nk, nv));
    if (!scr) return;
    float bq = 0, bk = 0, bv = 0;
    ap_tensor *gq = nq ? ap_grad_acc(c, n, ATT_Q, &bq) : NULL;
    ap_tensor *gk = nk ? ap_grad_acc(c, n, ATT_K, &bk) : NULL;
    ap_tensor *gv = nv ? ap_grad_acc(c, n, ATT_V, &bv) : NULL;
    if (!ap_failed(c) && p.T == 0) { /* no queries: the keys and values got no gradient */
        ap_tensor *acc[2] = {gk, gv};
        float beta[2] = {bk, bv};
        for (int i = 0; i < 2; i++)
            if (acc[i] && beta[i] == 0.0f) memset(ap_data(acc[i]), 0, (size_t)acc[i]->numel * 4);
    } else if (!ap_failed(c))
        ap_attn_backward(&p, ap_cf32(n->saved[0]), ap_cf32(n->saved[1]), ap_cf32(n->saved[2]),
                         ap_cf32(n->saved[3]), ap_cf32(n->saved[4]), ap_cf32(gy),
                         gq ? ap_f32(gq) : NULL, bq, gk ? ap_f32(gk) : NULL, bk,
                         gv ? ap_f32(gv) : NULL, bv, ap_data(scr));
    ap_tensor_release(scr);
}

ap_tensor *ap_attention(ap_ctx *c, ap_tensor *q, ap_tensor *k, ap_tensor *v, int heads,
                        float scale, int causal) {
    if (!c || !ap_check_input(c, "attention", "q", q, AP_F32) ||
        !ap_check_input(c, "attention", "k", k, AP_F32) ||
        !ap_check_input(c, "attention", "v", v, AP_F32))
        return NULL;
    char a[96], b[96];
    const char *names[3] = {"q", "k", "v"};
    ap_tensor *ts[3] = {q, k, v};
    for (int i = 0; i < 3; i++)
        if (ts[i]->ndim != 3) {
            ap_seterr(c, AP_ERR_SHAPE, "attention: %s is %s; expected [batch, tokens, heads*dim]",
                      names[i], ap_shape_str(ts[i], a, sizeof a));
            return NULL;
        }
    if (heads < 1) {
        ap_seterr(c, AP_ERR_INVALID_ARG, "attention: heads = %d; must be at least 1", heads);
        return NULL;
    }
    int64_t C = q->shape[2];
    if (C == 0) {
        ap_seterr(c, AP_ERR_SHAPE, "attention: q %s has no channels", ap_shape_str(q, a, sizeof a));
        return NULL;
    }
    if (C % heads != 0) {
        ap_seterr(c, AP_ERR_SHAPE, "attention: q has %lld channels, not divisible by %d heads",
                  (long long)C, heads);
        return NULL;
    }
    if (k->shape[0] != q->shape[0] || v->shape[0] != q->shape[0]) {
        ap_tensor *o = k->shape[0] != q->shape[0] ? k : v;
        ap_seterr(c, AP_ERR_SHAPE, "attention: %s %s has batch %lld, q %s has batch %lld",
                  o == k ? "k" : "v", ap_shape_str(o, a, sizeof a), (long long)o->shape[0],
                  ap_shape_str(q, b, sizeof b), (long long)q->shape[0]);
        return NULL;
    }
    if (k->shape[2] != C || v->shape[2] != C) {
        ap_tensor *o = k->shape[2] != C ? k : v;
        ap_seterr(c, AP_ERR_SHAPE, "attention: %s %s has %lld channels, q has %lld",
                  o == k ? "k" : "v", ap_shape_str(o, a, sizeof a), (long long)o->shape[2],
                  (long long)C);
        return NULL;
    }
    if (v->shape[1] != k->shape[1]) {
        ap_seterr(c, AP_ERR_SHAPE, "attention: v %s has %lld tokens, k %s has %lld",
                  ap_shape_str(v, a, sizeof a), (long long)v->shape[1],
                  ap_shape_str(k, b, sizeof b), (long long)k->shape[1]);
        return NULL;
    }
    if (k->shape[1] == 0 && q->shape[1] > 0 && q->shape[0] > 0) {
        ap_seterr(c, AP_ERR_SHAPE, "attention: k has no tokens to attend to");
        return NULL;
    }
    if (causal && q->shape[1] != k->shape[1]) {
        ap_seterr(c, AP_ERR_SHAPE, "attention: causal needs as many queries as keys (q has %lld, k %lld)",
                  (long long)q->shape[1], (long long)k->shape[1]);
        return NULL;
    }
    int64_t d = C / heads;
    if (scale == 0.0f) scale = 1.0f / sqrtf((float)d);
    if (!isfinite(scale)) {
        ap_seterr(c, AP_ERR_INVALID_ARG, "attention: scale %g is not finite", (double)scale);
        return NULL;
    }

    ap_attn_problem p = attn_problem(c, q->shape, k->shape, heads, scale, causal != 0);
    ap_tensor *y = ap_tensor_like(c, q);
    if (!y) return NULL;
    ap_tensor *in[3] = {q, k, v};
    bool record = ap_any_requires_grad(c, 3, in) && !c->in_checkpoint_forward;
    ap_tensor *lse = NULL;
    if (record) {
        lse = ap_tensor_new_shape(c, AP_F32, 3, (int64_t[]){p.B, p.H, p.T});
        if (!lse) {
            ap_tensor_release(y);
            return NULL;
        }
    }
    ap_tensor *scr = scratch_new(c, ap_attn_forward_scratch(&p));
    if (!scr) {
        ap_tensor_release(y);
        ap_tensor_release(lse);
        return NULL;
    }
    ap_attn_forward(&p, ap_cf32(q), ap_cf32(k), ap_cf32(v), ap_f32(y), lse ? ap_f32(lse) : NULL,
                    ap_data(scr));
    ap_tensor_release(scr);

    ap_node *n = ap_node_begin(c, "attention", attention_backward, 3, in);
    if (n) {
        n->i[0] = heads;
        n->i[1] = causal != 0;
        n->i[2] = p.bf16;
        n->f[0] = scale;
        ap_node_save(n, 0, q);
        ap_node_save(n, 1, k);
        ap_node_save(n, 2, v);
        ap_node_save(n, 3, y);
        ap_node_save(n, 4, lse);
        ap_node_output(n, 0, y);
    }
    ap_tensor_release(lse);
    return y;
}

/* ------------------------------------------------------------ softmax */
static void softmax_backward(ap_ctx *c, ap_node *n) {
    ap_tensor *gy = ap_node_gout(n, 0), *y = n->saved[0];
    float beta;
    ap_tensor *gx = ap_grad_acc(c, n, 0, &beta);
    if (!gx) return;
    int64_t len = y->ndim ? y->shape[y->ndim - 1] : 1;
    int64_t rows = len ? y->numel / len : 0;
    ap_softmax_rows_backward(ap_cf32(y), ap_cf32(gy), ap_f32(gx), beta, rows, len, c->num_threads);
}

ap_tensor *ap_softmax(ap_ctx *c, ap_tensor *x) {
    if (!c || !ap_check_input(c, "softmax", "x", x, AP_F32)) return NULL;
    ap_tensor *y = ap_tensor_like(c, x);
    if (!y) return NULL;
    int64_t len = x->ndim ? x->shape[x->ndim - 1] : 1;
    int64_t rows = len ? x->numel / len : 0;
    ap_softmax_rows_forward(ap_cf32(x), ap_f32(y), rows, len, c->num_threads);
    ap_node *n = ap_node_begin(c, "softmax", softmax_backward, 1, &x);
    ap_node_save(n, 0, y);
    ap_node_output(n, 0, y);
    return y;
}
