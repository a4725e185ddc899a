/* Elementwise ops: add, sub, mul (b broadcast to a), axpby, the activations
 * (silu, gelu, quick_gelu, geglu, clamp), sum and mean, concatenation on the
 * channel dim and nearest 2x upsampling. Kernels are in backend/cpu.
 *
 * Binary ops take b in f32, bf16 or f16 (a frozen weight such as a bias may be
 * stored in bf16); a is f32. What the backward needs: add, sub, axpby,
 * concat, upsample and sum save nothing; mul saves the factor each wanted
 * gradient needs; the activations save their input. */
#include "backend/cpu/cpu_kernels.h"
#include "internal.h"

#include <math.h>

/* ------------------------------------------------------------ broadcasting */
/* Builds the broadcast plan of b (nb dims) to a (na dims): b's shape aligned to
 * the end of a's; each dim equal to a's or 1. Leading b dims beyond a's must
 * be 1. Returns false (with an error naming op) when b does not broadcast. */
static bool make_bcast(ap_ctx *c, const char *op, int na, const int64_t *as, int nb, const int64_t *bs,
                       ap_bcast *p) {
    char sa[96], sb[96];
    ap_tensor ta = {.ndim = na}, tb = {.ndim = nb};
    memcpy(ta.shape, as, sizeof(int64_t) * (size_t)na);
    memcpy(tb.shape, bs, sizeof(int64_t) * (size_t)nb);
    int off = na - nb;
    for (int i = 0; i < -off; i++)
        if (bs[i] != 1) {
            ap_seterr(c, AP_ERR_SHAPE, "%s: b %s has more dims than a %s", op, ap_shape_str(&tb, sb, sizeof sb),
                      ap_shape_str(&ta, sa, sizeof sa));
            return false;
        }
    memset(p, 0, sizeof *p);
    int kind[AP_MAX_DIMS]; /* 1: b varies along the dim, 0: broadcast */
    int64_t size[AP_MAX_DIMS];
    int m = 0;
    p->numel = 1;
    p->b_numel = 1;
    for (int i = 0; i < nb; i++) p->b_numel *= bs[i];
    for (int i = 0; i < na; i++) {
        int64_t bd = i - off >= 0 ? bs[i - off] : 1;
        p->numel *= as[i];
        if (bd != as[i] && bd != 1) {
            ap_seterr(c, AP_ERR_SHAPE, "%s: b %s does not broadcast to a %s (dim %d: %lld vs %lld)", op,
                      ap_shape_str(&tb, sb, sizeof sb), ap_shape_str(&ta, sa, sizeof sa), i,
                      (long long)bd, (long long)as[i]);
            return false;
        }
        if (as[i] == 1) continue; /* size-1 dims do not matter */
        int k = bd == as[i];
        if (m > 0 && kind[m - 1] == k) {
            size[m - 1] *= as[i];
        } else {
            kind[m] = k;
            size[m] = as[i];
            m++;
        }
    }
    if (m == 0) { /* a has one element, so does b */
        kind[0] = 1;
        size[0] = 1;
        m = 1;
    }
    p->nd = m;
    int64_t stride = 1;
    for (int i = m - 1; i >= 0; i--) {
        p->size[i] = size[i];
        p->bstride[i] = kind[i] ? stride : 0;
        if (kind[i]) stride *= size[i];
    }
    return true;
}

/* b as f32: a new reference to b itself, or a converted copy. */
static ap_tensor *as_f32(ap_ctx *c, const char *op, const char *arg, ap_tensor *b) {
    if (ap_failed(c)) return NULL;
    if (!b) {
        ap_seterr(c, AP_ERR_INVALID_ARG, "%s: %s is NULL", op, arg);
        return NULL;
    }
    if (b->dtype == AP_F32) return ap_tensor_retain(b);
    if (b->dtype != AP_BF16 && b->dtype != AP_F16) {
        ap_seterr(c, AP_ERR_DTYPE, "%s: %s%s%s has dtype %s, expected f32, bf16 or f16", op, arg,
                  b->name ? " " : "", b->name ? b->name : "", ap_dtype_name(b->dtype));
        return NULL;
    }
    return ap_tensor_convert(c, b, AP_F32);
}

static const char *const binop_name[] = {"add", "sub", "mul"};

static void binary_backward(ap_ctx *c, ap_node *n) {
    ap_binop op = (ap_binop)n->i[0];
    ap_bcast p;
    if (!make_bcast(c, binop_name[op], n->in_ndim[0], n->in_shape[0], n->in_ndim[1], n->in_shape[1], &p))
        return;
    const float *gy = ap_f32(ap_node_gout(n, 0));
    float beta;
    ap_tensor *ga = ap_grad_acc(c, n, 0, &beta);
    if (ga) {
        if (op == AP_BIN_MUL)
            ap_cpu_binary(AP_BIN_MUL, ap_f32(ga), gy, ap_f32(n->saved[1]), &p, beta);
        else
            ap_cpu_scale_acc(ap_f32(ga), gy, 1.0f, ga->numel, beta);
    }
    ap_tensor *gb = ap_grad_acc(c, n, 1, &beta);
    if (gb) {
        const float *m = op == AP_BIN_MUL ? ap_f32(n->saved[0]) : NULL;
        if (ap_cpu_bcast_reduce(ap_f32(gb), gy, m, op == AP_BIN_SUB ? -1.0f : 1.0f, &p, beta))
            ap_seterr(c, AP_ERR_NOMEM, "%s backward: out of memory", binop_name[op]);
    }
}

static ap_tensor *binary(ap_ctx *c, ap_binop op, ap_tensor *a, ap_tensor *b) {
    const char *name = binop_name[op];
    if (!c || !ap_check_input(c, name, "a", a, AP_F32)) return NULL;
    ap_tensor *bf = as_f32(c, name, "b", b);
    if (!bf) return NULL;
    ap_bcast p;
    ap_tensor *y = NULL;
    if (make_bcast(c, name, a->ndim, a->shape, b->ndim, b->shape, &p)) y = ap_tensor_like(c, a);
    if (!y) {
        ap_tensor_release(bf);
        return NULL;
    }
    ap_cpu_binary(op, ap_f32(y), ap_f32(a), ap_f32(bf), &p, 0.0f);
    ap_tensor *ins[2] = {a, b};
    ap_node *n = ap_node_begin(c, name, binary_backward, 2, ins);
    if (n) {
        n->i[0] = op;
        if (op == AP_BIN_MUL) {
            if (ap_node_needs(n, 1)) ap_node_save(n, 0, a);
            if (ap_node_needs(n, 0)) ap_node_save(n, 1, bf);
        }
    }
    ap_node_output(n, 0, y);
    ap_tensor_release(bf);
    return y;
}

ap_tensor *ap_add(ap_ctx *c, ap_tensor *a, ap_tensor *b) { return binary(c, AP_BIN_ADD, a, b); }
ap_tensor *ap_sub(ap_ctx *c, ap_tensor *a, ap_tensor *b) { return binary(c, AP_BIN_SUB, a, b); }
ap_tensor *ap_mul(ap_ctx *c, ap_tensor *a, ap_tensor *b) { return binary(c, AP_BIN_MUL, a, b); }

/* ------------------------------------------------------------ axpby */
static void axpby_backward(ap_ctx *c, ap_node *n) {
    const float *gy = ap_f32(ap_node_gout(n, 0));
    for (int i = 0; i < 2; i++) {
        float beta;
        ap_tensor *g = ap_grad_acc(c, n, i, &beta);
        if (g) ap_cpu_scale_acc(ap_f32(g), gy, n->f[i], g->numel, beta);
    }
}

ap_tensor *ap_axpby(ap_ctx *c, float alpha, ap_tensor *a, float beta, ap_tensor *b) {
    if (!c || !ap_check_input(c, "axpby", "a", a, AP_F32) || !ap_check_input(c, "axpby", "b", b, AP_F32))
        return NULL;
    if (!ap_same_shape(a, b)) {
        char sa[96], sb[96];
        ap_seterr(c, AP_ERR_SHAPE, "axpby: a %s and b %s differ in shape", ap_shape_str(a, sa, sizeof sa),
                  ap_shape_str(b, sb, sizeof sb));
        return NULL;
    }
    ap_tensor *y = ap_tensor_like(c, a);
    if (!y) return NULL;
    ap_cpu_axpby(ap_f32(y), alpha, ap_f32(a), beta, ap_f32(b), a->numel);
    ap_tensor *ins[2] = {a, b};
    ap_node *n = ap_node_begin(c, "axpby", axpby_backward, 2, ins);
    if (n) {
        n->f[0] = alpha;
        n->f[1] = beta;
    }
    ap_node_output(n, 0, y);
    return y;
}

/* ------------------------------------------------------------ activations */
static void act_backward(ap_ctx *c, ap_node *n) {
    float beta;
    ap_tensor *gx = ap_grad_acc(c, n, 0, &beta);
    if (!gx) return;
    ap_cpu_act_bwd((ap_act)n->i[0], ap_f32(gx), ap_f32(ap_node_gout(n, 0)), ap_f32(n->saved[0]),
                   gx->numel, n->f[0], n->f[1], beta);
}

static ap_tensor *activation(ap_ctx *c, const char *name, ap_act act, ap_tensor *x, float lo, float hi) {
    if (!c || !ap_check_input(c, name, "input", x, AP_F32)) return NULL;
    ap_tensor *y = ap_tensor_like(c, x);
    if (!y) return NULL;
    ap_cpu_act_fwd(act, ap_f32(y), ap_f32(x), x->numel, lo, hi);
    ap_node *n = ap_node_begin(c, name, act_backward, 1, &x);
    if (n) {
        n->i[0] = act;
        n->f[0] = lo;
        n->f[1] = hi;
    }
    ap_node_save(n, 0, x);
    ap_node_output(n, 0, y);
    return y;
}

ap_tensor *ap_silu(ap_ctx *c, ap_tensor *x) { return activation(c, "silu", AP_ACT_SILU, x, 0, 0); }
ap_tensor *ap_gelu(ap_ctx *c, ap_tensor *x) { return activation(c, "gelu", AP_ACT_GELU, x, 0, 0); }
ap_tensor *ap_quick_gelu(ap_ctx *c, ap_tensor *x) {
    return activation(c, "quick_gelu", AP_ACT_QUICK_GELU, x, 0, 0);
}

ap_tensor *ap_clamp(ap_ctx *c, ap_tensor *x, float lo, float hi) {
    if (!c || ap_failed(c)) return NULL;
    if (isnan(lo) || isnan(hi) || lo > hi) {
        ap_seterr(c, AP_ERR_INVALID_ARG, "clamp: bounds [%g, %g] are not an interval", (double)lo, (double)hi);
        return NULL;
    }
    return activation(c, "clamp", AP_ACT_CLAMP, x, lo, hi);
}

/* ------------------------------------------------------------ geglu */
static void geglu_backward(ap_ctx *c, ap_node *n) {
    float beta;
    ap_tensor *gx = ap_grad_acc(c, n, 0, &beta);
    if (!gx) return;
    int64_t F = n->i[1];
    ap_cpu_geglu_bwd(ap_f32(gx), ap_f32(ap_node_gout(n, 0)), ap_f32(n->saved[0]), n->i[0], F, beta);
}

ap_tensor *ap_geglu(ap_ctx *c, ap_tensor *x) {
    if (!c || !ap_check_input(c, "geglu", "input", x, AP_F32)) return NULL;
    char s[96];
    if (x->ndim < 1 || x->shape[x->ndim - 1] % 2) {
        ap_seterr(c, AP_ERR_SHAPE, "geglu: input %s needs an even last dim (value and gate halves)",
                  ap_shape_str(x, s, sizeof s));
        return NULL;
    }
    int64_t shape[AP_MAX_DIMS], R = 1, F = x->shape[x->ndim - 1] / 2;
    for (int i = 0; i < x->ndim; i++) shape[i] = x->shape[i];
    for (int i = 0; i < x->ndim - 1; i++) R *= x->shape[i];
    shape[x->ndim - 1] = F;
    ap_tensor *y = ap_tensor_new_shape(c, AP_F32, x->ndim, shape);
    if (!y) return NULL;
    ap_cpu_geglu_fwd(ap_f32(y), ap_f32(x), R, F);
    ap_node *n = ap_node_begin(c, "geglu", geglu_backward, 1, &x);
    if (n) {
        n->i[0] = R;
        n->i[1] = F;
    }
    ap_node_save(n, 0, x);
    ap_node_output(n, 0, y);
    return y;
}

/* ------------------------------------------------------------ sum, mean */
static void sum_backward(ap_ctx *c, ap_node *n) {
    float beta;
    ap_tensor *gx = ap_grad_acc(c, n, 0, &beta);
    if (!gx) return;
    float v = ap_f32(ap_node_gout(n, 0))[0] * n->f[0];
    ap_cpu_fill_acc(ap_f32(gx), v, gx->numel, beta);
}

static ap_tensor *reduce_all(ap_ctx *c, const char *name, ap_tensor *x, bool mean) {
    if (!c || !ap_check_input(c, name, "input", x, AP_F32)) return NULL;
    if (mean && x->numel == 0) {
        ap_seterr(c, AP_ERR_SHAPE, "mean: input has no elements");
        return NULL;
    }
    ap_tensor *y = ap_tensor_new_shape(c, AP_F32, 1, (int64_t[]){1});
    if (!y) return NULL;
    double s = ap_cpu_sum(ap_f32(x), x->numel);
    float scale = mean ? (float)(1.0 / (double)x->numel) : 1.0f;
    ap_f32(y)[0] = (float)(mean ? s / (double)x->numel : s);
    ap_node *n = ap_node_begin(c, name, sum_backward, 1, &x);
    if (n) n->f[0] = scale;
    ap_node_output(n, 0, y);
    return y;
}

ap_tensor *ap_sum(ap_ctx *c, ap_tensor *x) { return reduce_all(c, "sum", x, false); }
ap_tensor *ap_mean(ap_ctx *c, ap_tensor *x) { return reduce_all(c, "mean", x, true); }

/* ------------------------------------------------------------ concat */
static void concat_backward(ap_ctx *c, ap_node *n) {
    float ba = 0, bb = 0;
    ap_tensor *ga = ap_grad_acc(c, n, 0, &ba);
    ap_tensor *gb = ap_grad_acc(c, n, 1, &bb);
    if (!ga && !gb) return;
    ap_cpu_concat_bwd(ga ? ap_f32(ga) : NULL, gb ? ap_f32(gb) : NULL, ap_f32(ap_node_gout(n, 0)), n->i[0],
                      n->i[1], n->i[2], ba, bb);
}

ap_tensor *ap_concat_channels(ap_ctx *c, ap_tensor *a, ap_tensor *b) {
    if (!c || !ap_check_input(c, "concat_channels", "a", a, AP_F32) ||
        !ap_check_input(c, "concat_channels", "b", b, AP_F32))
        return NULL;
    bool ok = a->ndim == b->ndim && a->ndim >= 1;
    for (int i = 0; ok && i < a->ndim - 1; i++) ok = a->shape[i] == b->shape[i];
    if (!ok) {
        char sa[96], sb[96];
        ap_seterr(c, AP_ERR_SHAPE, "concat_channels: a %s and b %s differ in dims other than the last",
                  ap_shape_str(a, sa, sizeof sa), ap_shape_str(b, sb, sizeof sb));
        return NULL;
    }
    int64_t shape[AP_MAX_DIMS], R = 1, Ca = a->shape[a->ndim - 1], Cb = b->shape[b->ndim - 1];
    for (int i = 0; i < a->ndim; i++) shape[i] = a->shape[i];
    for (int i = 0; i < a->ndim - 1; i++) R *= a->shape[i];
    shape[a->ndim - 1] = Ca + Cb;
    ap_tensor *y = ap_tensor_new_shape(c, AP_F32, a->ndim, shape);
    if (!y) return NULL;
    ap_cpu_concat_fwd(ap_f32(y), ap_f32(a), ap_f32(b), R, Ca, Cb);
    ap_tensor *ins[2] = {a, b};
    ap_node *n = ap_node_begin(c, "concat_channels", concat_backward, 2, ins);
    if (n) {
        n->i[0] = R;
        n->i[1] = Ca;
        n->i[2] = Cb;
    }
    ap_node_output(n, 0, y);
    return y;
}

/* ------------------------------------------------------------ upsample */
static void upsample_backward(ap_ctx *c, ap_node *n) {
    float beta;
    ap_tensor *gx = ap_grad_acc(c, n, 0, &beta);
    if (!gx) return;
    const int64_t *s = n->in_shape[0];
    ap_cpu_upsample2x_bwd(ap_f32(gx), ap_f32(ap_node_gout(n, 0)), s[0], s[1], s[2], s[3], beta);
}

ap_tensor *ap_upsample_nearest2x(ap_ctx *c, ap_tensor *x) {
    if (!c || !ap_check_input(c, "upsample_nearest2x", "input", x, AP_F32)) return NULL;
    if (x->ndim != 4) {
        char s[96];
        ap_seterr(c, AP_ERR_SHAPE, "upsample_nearest2x: input %s is not [N,H,W,C]", ap_shape_str(x, s, sizeof s));
        return NULL;
    }
    const int64_t *s = x->shape;
    ap_tensor *y = ap_tensor_new_shape(c, AP_F32, 4, (int64_t[]){s[0], 2 * s[1], 2 * s[2], s[3]});
    if (!y) return NULL;
    ap_cpu_upsample2x_fwd(ap_f32(y), ap_f32(x), s[0], s[1], s[2], s[3]);
    ap_node *n = ap_node_begin(c, "upsample_nearest2x", upsample_backward, 1, &x);
    ap_node_output(n, 0, y);
    return y;
}
