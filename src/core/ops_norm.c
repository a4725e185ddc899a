/* Group norm and layer norm. The forward saves x and the per-group (per-row)
 * mean and rstd, never the normalised activations; the backward recomputes
 * what it needs from them. gamma and beta may be stored in f32, bf16 or f16
 * (frozen weights); only f32 ones can require a gradient. */
#include "backend/cpu/cpu_kernels.h"
#include "internal.h"

#include <math.h>

enum { SAVE_X, SAVE_MEAN, SAVE_RSTD, SAVE_GAMMA };

/* gamma or beta as f32 [C] (a new reference, maybe converted), or NULL with
 * no error when p is NULL. *bad is set on an error. */
static ap_tensor *param_f32(ap_ctx *c, const char *op, const char *arg, ap_tensor *p, int64_t C, bool *bad) {
    if (!p || *bad) return NULL;
    char s[96];
    if (p->dtype != AP_F32 && p->dtype != AP_BF16 && p->dtype != AP_F16) {
        ap_seterr(c, AP_ERR_DTYPE, "%s: %s%s%s has dtype %s, expected f32, bf16 or f16", op, arg,
                  p->name ? " " : "", p->name ? p->name : "", ap_dtype_name(p->dtype));
        *bad = true;
        return NULL;
    }
    if (p->ndim != 1 || p->shape[0] != C) {
        ap_seterr(c, AP_ERR_SHAPE, "%s: %s%s%s is %s, expected [%lld] (the channels of x)", op, arg,
                  p->name ? " " : "", p->name ? p->name : "", ap_shape_str(p, s, sizeof s), (long long)C);
        *bad = true;
        return NULL;
    }
    ap_tensor *f = p->dtype == AP_F32 ? ap_tensor_retain(p) : ap_tensor_convert(c, p, AP_F32);
    if (!f) *bad = true;
    return f;
}

static bool check_eps(ap_ctx *c, const char *op, float eps) {
    if (!(eps >= 0.0f) || isinf(eps)) {
        ap_seterr(c, AP_ERR_INVALID_ARG, "%s: eps %g must be finite and >= 0", op, (double)eps);
        return false;
    }
    return true;
}

/* Records the node shared by both norms: inputs {x, gamma, beta}; saves x,
 * mean, rstd when x or gamma needs a gradient, and gamma when x does. */
static void record(ap_ctx *c, const char *name, ap_backward_fn bw, ap_tensor *x, ap_tensor *gamma,
                   ap_tensor *beta, ap_tensor *gf, ap_tensor *mean, ap_tensor *rstd, ap_tensor *y,
                   int64_t groups, float eps) {
    ap_tensor *ins[3] = {x, gamma, beta};
    ap_node *n = ap_node_begin(c, name, bw, 3, ins);
    if (!n) return;
    n->i[0] = groups;
    n->i[1] = gamma != NULL;
    n->f[0] = eps;
    if (ap_node_needs(n, 0) || ap_node_needs(n, 1)) {
        ap_node_save(n, SAVE_X, x);
        ap_node_save(n, SAVE_MEAN, mean);
        ap_node_save(n, SAVE_RSTD, rstd);
    }
    if (ap_node_needs(n, 0)) ap_node_save(n, SAVE_GAMMA, gf);
    ap_node_output(n, 0, y);
}

/* The three accumulators of a norm node (NULL where not wanted). */
static void norm_accs(ap_ctx *c, ap_node *n, float **g, float *acc) {
    for (int i = 0; i < 3; i++) {
        ap_tensor *t = ap_grad_acc(c, n, i, &acc[i]);
        g[i] = t ? ap_f32(t) : NULL;
    }
}

/* A saved tensor of a norm node as f32 (NULL when it was not saved). */
static const float *saved_f32(const ap_node *n, int k) { return n->saved[k] ? ap_f32(n->saved[k]) : NULL; }

/* The end of a norm's forward: drops its references to the f32 copies of
 * gamma and beta and to the statistics (the node holds what it saved);
 * returns y, or NULL after an error. */
static ap_tensor *norm_finish(ap_ctx *c, ap_tensor *y, ap_tensor *gf, ap_tensor *bf, ap_tensor *mean,
                              ap_tensor *rstd) {
    if (ap_failed(c)) {
        ap_tensor_release(y);
        y = NULL;
    }
    ap_tensor_release(gf);
    ap_tensor_release(bf);
    ap_tensor_release(mean);
    ap_tensor_release(rstd);
    return y;
}

/* dbeta [C] = acc*dbeta + column sums of dy [R, C]: all a norm's backward
 * does when only beta wants a gradient (x was not even saved). */
static void beta_only(ap_ctx *c, const char *op, float *dbeta, const float *dy, int64_t R, int64_t C,
                      float acc) {
    ap_bcast p = {.nd = 2, .size = {R, C}, .bstride = {0, 1}, .numel = R * C, .b_numel = C};
    if (ap_cpu_bcast_reduce(dbeta, dy, NULL, 1.0f, &p, acc))
        ap_seterr(c, AP_ERR_NOMEM, "%s backward: out of memory", op);
}

/* ------------------------------------------------------------ group norm */
static void group_norm_backward(ap_ctx *c, ap_node *n) {
    const int64_t *s = n->in_shape[0];
    const int nd = n->in_ndim[0];
    int64_t N = s[0], C = s[nd - 1], S = 1, G = n->i[0];
    for (int i = 1; i < nd - 1; i++) S *= s[i];
    float *g[3], acc[3];
    norm_accs(c, n, g, acc);
    if (!g[0] && !g[1] && !g[2]) return;
    const float *x = saved_f32(n, SAVE_X), *mean = saved_f32(n, SAVE_MEAN), *rstd = saved_f32(n, SAVE_RSTD);
    const float *gamma = saved_f32(n, SAVE_GAMMA);
    if (!x) {
        beta_only(c, "group_norm", g[2], ap_f32(ap_node_gout(n, 0)), N * S, C, acc[2]);
        return;
    }
    if (ap_cpu_group_norm_bwd(g[0], g[1], g[2], ap_f32(ap_node_gout(n, 0)), x, mean, rstd, gamma, N, S,
                              C, G, acc[0], acc[1], acc[2]))
        ap_seterr(c, AP_ERR_NOMEM, "group_norm backward: out of memory");
}

ap_tensor *ap_group_norm(ap_ctx *c, ap_tensor *x, int groups, ap_tensor *gamma, ap_tensor *beta,
                         float eps) {
    if (!c || !ap_check_input(c, "group_norm", "x", x, AP_F32)) return NULL;
    char s[96];
    if (x->ndim < 2) {
        ap_seterr(c, AP_ERR_SHAPE, "group_norm: x %s needs a batch and a channel dim", ap_shape_str(x, s, sizeof s));
        return NULL;
    }
    int64_t N = x->shape[0], C = x->shape[x->ndim - 1], S = 1;
    for (int i = 1; i < x->ndim - 1; i++) S *= x->shape[i];
    if (groups < 1 || C % groups) {
        ap_seterr(c, AP_ERR_SHAPE, "group_norm: %d groups do not divide the %lld channels of x %s", groups,
                  (long long)C, ap_shape_str(x, s, sizeof s));
        return NULL;
    }
    if (x->numel == 0) {
        ap_seterr(c, AP_ERR_SHAPE, "group_norm: x %s is empty", ap_shape_str(x, s, sizeof s));
        return NULL;
    }
    if (!check_eps(c, "group_norm", eps)) return NULL;
    bool bad = false;
    ap_tensor *gf = param_f32(c, "group_norm", "gamma", gamma, C, &bad);
    ap_tensor *bf = param_f32(c, "group_norm", "beta", beta, C, &bad);
    ap_tensor *y = NULL, *mean = NULL, *rstd = NULL;
    if (!bad) {
        y = ap_tensor_like(c, x);
        mean = ap_tensor_new_shape(c, AP_F32, 2, (int64_t[]){N, groups});
        rstd = ap_tensor_new_shape(c, AP_F32, 2, (int64_t[]){N, groups});
    }
    if (y && mean && rstd) {
        if (ap_cpu_group_norm_fwd(ap_f32(y), ap_f32(mean), ap_f32(rstd), ap_f32(x), gf ? ap_f32(gf) : NULL,
                                  bf ? ap_f32(bf) : NULL, N, S, C, groups, eps)) {
            ap_seterr(c, AP_ERR_NOMEM, "group_norm: out of memory");
        } else {
            record(c, "group_norm", group_norm_backward, x, gamma, beta, gf, mean, rstd, y, groups, eps);
        }
    }
    return norm_finish(c, y, gf, bf, mean, rstd);
}

/* ------------------------------------------------------------ layer norm */
static void layer_norm_backward(ap_ctx *c, ap_node *n) {
    const int nd = n->in_ndim[0];
    int64_t C = n->in_shape[0][nd - 1], R = 1;
    for (int i = 0; i < nd - 1; i++) R *= n->in_shape[0][i];
    float *g[3], acc[3];
    norm_accs(c, n, g, acc);
    if (!g[0] && !g[1] && !g[2]) return;
    const float *x = saved_f32(n, SAVE_X), *mean = saved_f32(n, SAVE_MEAN), *rstd = saved_f32(n, SAVE_RSTD);
    const float *gamma = saved_f32(n, SAVE_GAMMA);
    const float *dy = ap_f32(ap_node_gout(n, 0));
    if (!x) {
        beta_only(c, "layer_norm", g[2], dy, R, C, acc[2]);
        return;
    }
    if (ap_cpu_layer_norm_bwd(g[0], g[1], g[2], dy, x, mean, rstd, gamma, R, C, acc[0], acc[1], acc[2]))
        ap_seterr(c, AP_ERR_NOMEM, "layer_norm backward: out of memory");
}

ap_tensor *ap_layer_norm(ap_ctx *c, ap_tensor *x, ap_tensor *gamma, ap_tensor *beta, float eps) {
    if (!c || !ap_check_input(c, "layer_norm", "x", x, AP_F32)) return NULL;
    char s[96];
    if (x->ndim < 1 || x->shape[x->ndim - 1] == 0) {
        ap_seterr(c, AP_ERR_SHAPE, "layer_norm: x %s has no channels to normalise", ap_shape_str(x, s, sizeof s));
        return NULL;
    }
    if (!check_eps(c, "layer_norm", eps)) return NULL;
    int64_t C = x->shape[x->ndim - 1], R = x->numel / C;
    bool bad = false;
    ap_tensor *gf = param_f32(c, "layer_norm", "gamma", gamma, C, &bad);
    ap_tensor *bf = param_f32(c, "layer_norm", "beta", beta, C, &bad);
    ap_tensor *y = NULL, *mean = NULL, *rstd = NULL;
    if (!bad) {
        y = ap_tensor_like(c, x);
        mean = ap_tensor_new_shape(c, AP_F32, 1, (int64_t[]){R});
        rstd = ap_tensor_new_shape(c, AP_F32, 1, (int64_t[]){R});
    }
    if (y && mean && rstd) {
        if (ap_cpu_layer_norm_fwd(ap_f32(y), ap_f32(mean), ap_f32(rstd), ap_f32(x), gf ? ap_f32(gf) : NULL,
                                  bf ? ap_f32(bf) : NULL, R, C, eps))
            ap_seterr(c, AP_ERR_NOMEM, "layer_norm: out of memory");
        else
            record(c, "layer_norm", layer_norm_backward, x, gamma, beta, gf, mean, rstd, y, 0, eps);
    }
    return norm_finish(c, y, gf, bf, mean, rstd);
}
