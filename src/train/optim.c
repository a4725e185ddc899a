/* AdamW and gradient clipping. The arithmetic follows torch 1.13's
 * _single_tensor_adamw on f32 tensors: the per-step scalars are computed in
 * double (Python floats), rounded to f32 where torch's kernels take them, and
 * the element updates run in f32 in torch's order. Element updates are
 * independent, so threading cannot change a bit; the norm is a sequential
 * double sum in a fixed order. */
#include "train/optim.h"

#include "core/internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void ap_adamw_defaults(ap_adamw_config *cfg) {
    *cfg = (ap_adamw_config){.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 1e-4,
                             .max_grad_norm = 1.0};
}

static ap_status check_config(ap_ctx *c, const ap_adamw_config *k) {
    if (!(k->lr >= 0) || !(k->beta1 >= 0 && k->beta1 < 1) || !(k->beta2 >= 0 && k->beta2 < 1) || !(k->eps >= 0) ||
        !(k->weight_decay >= 0) || isnan(k->max_grad_norm))
        return ap_seterr(c, AP_ERR_INVALID_ARG,
                         "adamw: invalid config (lr %g, betas %g/%g, eps %g, weight decay %g, max norm %g)", k->lr,
                         k->beta1, k->beta2, k->eps, k->weight_decay, k->max_grad_norm);
    return AP_OK;
}

ap_status ap_adamw_create(ap_ctx *c, const ap_adamw_config *cfg, int n, ap_tensor *const *params,
                          ap_adamw **out) {
    *out = NULL;
    if (ap_failed(c)) return c->status;
    ap_adamw_config k;
    if (cfg)
        k = *cfg;
    else
        ap_adamw_defaults(&k);
    if (check_config(c, &k) != AP_OK) return c->status;
    if (n < 0 || (n > 0 && !params)) return ap_seterr(c, AP_ERR_INVALID_ARG, "adamw: %d parameters", n);
    for (int i = 0; i < n; i++) {
        if (!params[i]) return ap_seterr(c, AP_ERR_INVALID_ARG, "adamw: parameter %d is NULL", i);
        if (ap_tensor_dtype(params[i]) != AP_F32)
            return ap_seterr(c, AP_ERR_DTYPE, "adamw: parameter %d (%s) is %s, expected f32", i,
                             ap_tensor_name(params[i]) ? ap_tensor_name(params[i]) : "unnamed",
                             ap_dtype_name(ap_tensor_dtype(params[i])));
        for (int j = 0; j < i; j++)
            if (params[j] == params[i]) return ap_seterr(c, AP_ERR_INVALID_ARG, "adamw: parameter %d repeats %d", i, j);
    }
    ap_adamw *o = calloc(1, sizeof *o);
    if (!o) return ap_seterr(c, AP_ERR_NOMEM, "adamw: out of memory");
    o->ctx = c;
    o->cfg = k;
    o->n = n;
    o->params = calloc((size_t)n + 1, sizeof *o->params);
    o->off = calloc((size_t)n + 1, sizeof *o->off);
    if (o->off)
        for (int i = 0; i < n; i++) o->off[i + 1] = o->off[i] + ap_tensor_numel(params[i]);
    size_t total = o->off ? (size_t)o->off[n] : 0;
    o->m = calloc(total + 1, sizeof(float));
    o->v = calloc(total + 1, sizeof(float));
    if (!o->params || !o->off || !o->m || !o->v) {
        ap_adamw_free(o);
        return ap_seterr(c, AP_ERR_NOMEM, "adamw: out of memory for the state of %zu values", total);
    }
    for (int i = 0; i < n; i++) o->params[i] = ap_tensor_retain(params[i]);
    *out = o;
    return AP_OK;
}

void ap_adamw_free(ap_adamw *o) {
    if (!o) return;
    for (int i = 0; o->params && i < o->n; i++) ap_tensor_release(o->params[i]);
    free(o->params);
    free(o->off);
    free(o->m);
    free(o->v);
    free(o);
}

double ap_clip_grad_norm(int n, ap_tensor *const *ts, double max_norm) {
    /* torch: the norm of the per-tensor norms; the same number as one flat
     * sum up to rounding, and one flat sum in double is the fixed order */
    double ss = 0;
    for (int i = 0; i < n; i++) {
        ap_tensor *g = ap_tensor_grad(ts[i]);
        if (!g) continue;
        const float *d = ap_f32(g);
        for (int64_t e = 0; e < ap_tensor_numel(g); e++) ss += (double)d[e] * d[e];
    }
    double norm = sqrt(ss);
    if (max_norm > 0 && norm > max_norm) {
        float coef = (float)(max_norm / (norm + 1e-6));
        for (int i = 0; i < n; i++) {
            ap_tensor *g = ap_tensor_grad(ts[i]);
            if (!g) continue;
            float *d = ap_f32(g);
            for (int64_t e = 0; e < ap_tensor_numel(g); e++) d[e] *= coef;
        }
    }
    return norm;
}

ap_status ap_adamw_step(ap_adamw *o, double *grad_norm) {
    ap_ctx *c = o->ctx;
    if (ap_failed(c)) return c->status;
    if (check_config(c, &o->cfg) != AP_OK) return c->status;
    double norm = ap_clip_grad_norm(o->n, o->params, o->cfg.max_grad_norm);
    if (grad_norm) *grad_norm = norm;
    o->step++;
    const ap_adamw_config *k = &o->cfg;
    double bc1 = 1.0 - pow(k->beta1, (double)o->step), bc2 = 1.0 - pow(k->beta2, (double)o->step);
    const float decay = (float)(1.0 - k->lr * k->weight_decay);
    const float b1 = (float)k->beta1, one_b1 = (float)(1.0 - k->beta1);
    const float b2 = (float)k->beta2, one_b2 = (float)(1.0 - k->beta2);
    const float bc2_sqrt = (float)sqrt(bc2), eps = (float)k->eps, neg_step = (float)(-(k->lr / bc1));
    for (int i = 0; i < o->n; i++) {
        ap_tensor *p = o->params[i], *gt = ap_tensor_grad(p);
        if (!gt) continue;
        if (ap_tensor_numel(gt) != ap_tensor_numel(p))
            return ap_seterr(c, AP_ERR_SHAPE, "adamw: gradient of parameter %d has %lld values, expected %lld", i,
                             (long long)ap_tensor_numel(gt), (long long)ap_tensor_numel(p));
        float *w = ap_f32(p), *m = o->m + o->off[i], *v = o->v + o->off[i]; // [numel]
        const float *g = ap_f32(gt);
        int64_t len = ap_tensor_numel(p);
#pragma omp parallel for schedule(static) if (len > 65536)
        for (int64_t e = 0; e < len; e++) {
            float x = w[e] * decay;
            float mm = m[e] * b1 + one_b1 * g[e];
            float vv = v[e] * b2 + one_b2 * g[e] * g[e];
            float denom = sqrtf(vv) / bc2_sqrt + eps;
            m[e] = mm;
            v[e] = vv;
            w[e] = x + neg_step * (mm / denom);
        }
        ap_tensor_touch(p);
    }
    return AP_OK;
}

void ap_adamw_zero_grad(ap_adamw *o) {
    for (int i = 0; o && i < o->n; i++) ap_tensor_zero_grad(o->params[i]);
}

/* ------------------------------------------------------------ state files */
static const char *const CFG_KEYS[6] = {"lr", "beta1", "beta2", "eps", "weight_decay", "max_grad_norm"};

static double *cfg_field(ap_adamw_config *k, int i) {
    double *f[6] = {&k->lr, &k->beta1, &k->beta2, &k->eps, &k->weight_decay, &k->max_grad_norm};
    return f[i];
}

ap_status ap_adamw_save(ap_adamw *o, const char *path) {
    ap_ctx *c = o->ctx;
    if (ap_failed(c)) return c->status;
    int nt = 1 + 2 * o->n, nmeta = 7 + o->n;
    char **names = calloc((size_t)nt, sizeof *names);
    ap_tensor **ts = calloc((size_t)nt, sizeof *ts);
    char **mk = calloc((size_t)nmeta, sizeof *mk), **mv = calloc((size_t)nmeta, sizeof *mv);
    ap_status st = AP_OK;
    if (!names || !ts || !mk || !mv) {
        st = ap_seterr(c, AP_ERR_NOMEM, "adamw save: out of memory");
        goto done;
    }
    names[0] = strdup("step");
    ts[0] = ap_tensor_from_data(c, AP_I64, 0, NULL, &o->step);
    for (int i = 0; i < o->n && !ap_failed(c); i++) {
        int nd = ap_tensor_ndim(o->params[i]);
        int64_t shape[AP_MAX_DIMS];
        for (int d = 0; d < nd; d++) shape[d] = ap_tensor_dim(o->params[i], d);
        names[1 + 2 * i] = malloc(32);
        names[2 + 2 * i] = malloc(32);
        if (!names[1 + 2 * i] || !names[2 + 2 * i]) break;
        snprintf(names[1 + 2 * i], 32, "m.%d", i);
        snprintf(names[2 + 2 * i], 32, "v.%d", i);
        ts[1 + 2 * i] = ap_tensor_from_data(c, AP_F32, nd, shape, o->m + o->off[i]);
        ts[2 + 2 * i] = ap_tensor_from_data(c, AP_F32, nd, shape, o->v + o->off[i]);
    }
    for (int i = 0; i < 6; i++) {
        mk[i] = strdup(CFG_KEYS[i]);
        mv[i] = malloc(40);
        if (mv[i]) snprintf(mv[i], 40, "%.17g", *cfg_field(&o->cfg, i));
    }
    mk[6] = strdup("optimizer");
    mv[6] = strdup("adamw");
    for (int i = 0; i < o->n; i++) {
        const char *nm = ap_tensor_name(o->params[i]);
        mk[7 + i] = malloc(32);
        mv[7 + i] = strdup(nm ? nm : "");
        if (mk[7 + i]) snprintf(mk[7 + i], 32, "param.%d", i);
    }
    for (int i = 0; i < nt; i++)
        if (!names[i] || !ts[i]) st = AP_ERR_NOMEM;
    for (int i = 0; i < nmeta; i++)
        if (!mk[i] || !mv[i]) st = AP_ERR_NOMEM;
    if (ap_failed(c))
        st = c->status;
    else if (st != AP_OK)
        st = ap_seterr(c, AP_ERR_NOMEM, "adamw save: out of memory");
    else
        st = ap_st_save(c, path, nt, (const char *const *)names, ts, nmeta, (const char *const *)mk,
                        (const char *const *)mv);
done:
    for (int i = 0; names && ts && i < nt; i++) {
        free(names[i]);
        ap_tensor_release(ts[i]);
    }
    for (int i = 0; mk && mv && i < nmeta; i++) {
        free(mk[i]);
        free(mv[i]);
    }
    free(names);
    free(ts);
    free(mk);
    free(mv);
    return st;
}

ap_status ap_adamw_load(ap_adamw *o, const char *path) {
    ap_ctx *c = o->ctx;
    if (ap_failed(c)) return c->status;
    ap_safetensors *st = NULL;
    if (ap_st_open(c, path, &st) != AP_OK) return c->status;
    ap_adamw_config k = o->cfg;
    int64_t step = 0;
    char key[32];
    /* validate everything first, so a bad file leaves the optimizer unchanged */
    const char *opt = ap_st_metadata(st, "optimizer");
    if (!opt || strcmp(opt, "adamw")) {
        ap_seterr(c, AP_ERR_FORMAT, "adamw load: %s is not an AdamW state file", path);
        goto out;
    }
    for (int i = 0; i < 6; i++) {
        const char *s = ap_st_metadata(st, CFG_KEYS[i]);
        char *end = NULL;
        double v = s ? strtod(s, &end) : 0;
        if (!s || end == s || *end) {
            ap_seterr(c, AP_ERR_FORMAT, "adamw load: %s: metadata %s is missing or not a number", path, CFG_KEYS[i]);
            goto out;
        }
        *cfg_field(&k, i) = v;
    }
    if (check_config(c, &k) != AP_OK) goto out;
    int64_t shape[AP_MAX_DIMS];
    int is = ap_st_find(st, "step");
    if (is < 0 || ap_st_shape(st, is, shape) != 0 || strcmp(ap_st_dtype(st, is), "I64")) {
        ap_seterr(c, AP_ERR_FORMAT, "adamw load: %s: no i64 scalar \"step\"", path);
        goto out;
    }
    memcpy(&step, ap_st_raw(st, is, &(size_t){0}), sizeof step);
    if (step < 0) {
        ap_seterr(c, AP_ERR_FORMAT, "adamw load: %s: negative step %lld", path, (long long)step);
        goto out;
    }
    if (ap_st_count(st) != 1 + 2 * o->n) {
        ap_seterr(c, AP_ERR_SHAPE, "adamw load: %s holds %d tensors, expected %d for %d parameters", path,
                  ap_st_count(st), 1 + 2 * o->n, o->n);
        goto out;
    }
    for (int i = 0; i < o->n; i++) {
        for (int w = 0; w < 2; w++) {
            snprintf(key, sizeof key, "%c.%d", w ? 'v' : 'm', i);
            int j = ap_st_find(st, key);
            int nd = j >= 0 ? ap_st_shape(st, j, shape) : -1;
            bool ok = j >= 0 && !strcmp(ap_st_dtype(st, j), "F32") && nd == ap_tensor_ndim(o->params[i]);
            for (int d = 0; ok && d < nd; d++) ok = shape[d] == ap_tensor_dim(o->params[i], d);
            if (!ok) {
                ap_seterr(c, AP_ERR_SHAPE, "adamw load: %s: %s is missing or does not match parameter %d (%s)",
                          path, key, i, ap_tensor_name(o->params[i]) ? ap_tensor_name(o->params[i]) : "unnamed");
                goto out;
            }
        }
    }
    for (int i = 0; i < o->n; i++) {
        for (int w = 0; w < 2; w++) {
            snprintf(key, sizeof key, "%c.%d", w ? 'v' : 'm', i);
            size_t nb = 0;
            const void *raw = ap_st_raw(st, ap_st_find(st, key), &nb);
            memcpy((w ? o->v : o->m) + o->off[i], raw, nb);
        }
    }
    o->cfg = k;
    o->step = step;
out:
    ap_st_close(st);
    return c->status;
}

/* ---- learning-rate schedules ---------------------------------------------- */
static const char *const LR_KINDS[] = {"constant", "linear", "cosine"};

int ap_lr_kind_parse(const char *name) {
    for (int i = 0; name && i < 3; i++)
        if (!strcmp(name, LR_KINDS[i])) return i;
    return -1;
}

const char *ap_lr_kind_name(ap_lr_kind k) { return (unsigned)k < 3 ? LR_KINDS[k] : "?"; }

double ap_lr_at(const ap_lr_schedule *s, double base_lr, int done, int total) {
    int w = s->warmup > 0 ? s->warmup : 0;
    if (done < w) return base_lr * (double)done / (double)w;
    double span = total - w > 1 ? (double)(total - w) : 1.0;
    double p = (double)(done - w) / span;
    switch (s->kind) {
    case AP_LR_LINEAR: return base_lr * fmax(0.0, 1.0 - p);
    case AP_LR_COSINE: return base_lr * fmax(0.0, 0.5 * (1.0 + cos(M_PI * p)));
    default: return base_lr;
    }
}
