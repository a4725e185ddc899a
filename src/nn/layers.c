/* The parameter registry and the basic layers. */
#include "core/internal.h"
#include "nn.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

void ap_name_fmt(char *out, size_t n, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out, n, fmt, ap);
    va_end(ap);
}

void ap_params_init(ap_params *ps, ap_ctx *c, ap_dtype weight_dtype) {
    memset(ps, 0, sizeof *ps);
    ps->ctx = c;
    ps->weight_dtype = weight_dtype;
}

void ap_params_free(ap_params *ps) {
    for (int i = 0; i < ps->n; i++) {
        free(ps->p[i].name);
        ap_tensor_release(ps->p[i].t);
    }
    free(ps->p);
    memset(ps, 0, sizeof *ps);
}

ap_tensor *ap_params_add(ap_params *ps, const char *prefix, const char *name, ap_param_kind kind,
                         int ndim, const int64_t *shape) {
    ap_ctx *c = ps->ctx;
    if (ap_failed(c)) return NULL;
    if (ps->n == ps->cap) {
        int cap = ps->cap ? 2 * ps->cap : 64;
        ap_param *p = realloc(ps->p, (size_t)cap * sizeof *p);
        if (!p) {
            ap_seterr(c, AP_ERR_NOMEM, "model: out of memory registering parameters");
            return NULL;
        }
        ps->p = p;
        ps->cap = cap;
    }
    bool is_weight = kind == AP_PARAM_WEIGHT || kind == AP_PARAM_EMBEDDING;
    ap_tensor *t = ap_tensor_zeros(c, is_weight ? ps->weight_dtype : AP_F32, ndim, shape);
    char *full = malloc(strlen(prefix) + strlen(name) + 1);
    if (!t || !full) {
        ap_tensor_release(t);
        free(full);
        if (!ap_failed(c)) ap_seterr(c, AP_ERR_NOMEM, "model: out of memory for %s%s", prefix, name);
        return NULL;
    }
    strcpy(full, prefix);
    strcat(full, name);
    ap_tensor_set_name(t, full);
    int64_t fan_in = 1;
    for (int i = 1; i < ndim; i++) fan_in *= shape[i];
    ps->p[ps->n++] = (ap_param){.name = full, .t = t, .kind = kind, .fan_in = fan_in};
    return t;
}

ap_param *ap_params_find(const ap_params *ps, const char *name) {
    for (int i = 0; i < ps->n; i++)
        if (!strcmp(ps->p[i].name, name)) return &ps->p[i];
    return NULL;
}

void ap_params_mark_conv1x1(ap_params *ps, ap_tensor *w) {
    for (int i = ps->n - 1; i >= 0; i--) {
        ap_param *p = &ps->p[i];
        if (p->t != w) continue;
        p->file_ndim = 4;
        p->file_shape[0] = ap_tensor_dim(w, 0);
        p->file_shape[1] = ap_tensor_dim(w, 1);
        p->file_shape[2] = p->file_shape[3] = 1;
        return;
    }
}

int64_t ap_params_count(const ap_params *ps) {
    int64_t n = 0;
    for (int i = 0; i < ps->n; i++) n += ap_tensor_numel(ps->p[i].t);
    return n;
}

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double uniform01(uint64_t *s) { return (double)(splitmix(s) >> 11) * 0x1.0p-53; }

ap_status ap_params_init_random(ap_params *ps, uint64_t seed) {
    ap_ctx *c = ps->ctx;
    if (ap_failed(c)) return c->status;
    for (int i = 0; i < ps->n; i++) {
        ap_param *p = &ps->p[i];
        uint64_t s = seed ^ 0x5bd1e9955bd1e995ull;
        for (const char *q = p->name; *q; q++) s = (s ^ (uint8_t)*q) * 0x100000001b3ull; /* FNV-1a */
        int64_t n = ap_tensor_numel(p->t);
        float *tmp = malloc((size_t)(n ? n : 1) * sizeof(float));
        if (!tmp) return ap_seterr(c, AP_ERR_NOMEM, "init: out of memory");
        double bound = 1.0 / sqrt((double)(p->fan_in > 0 ? p->fan_in : 1));
        for (int64_t j = 0; j < n; j++) {
            switch (p->kind) {
            case AP_PARAM_NORM_GAIN: tmp[j] = 1.0f; break;
            case AP_PARAM_NORM_BIAS: tmp[j] = 0.0f; break;
            case AP_PARAM_EMBEDDING: {
                double u1 = uniform01(&s), u2 = uniform01(&s);
                if (u1 < 1e-300) u1 = 1e-300;
                tmp[j] = (float)(0.02 * sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2));
                break;
            }
            default: tmp[j] = (float)((2 * uniform01(&s) - 1) * bound); break;
            }
        }
        ap_convert(ap_data(p->t), p->t->dtype, tmp, AP_F32, n);
        ap_tensor_touch(p->t);
        free(tmp);
    }
    return AP_OK;
}

/* ------------------------------------------------------------ layers */
void ap_linear_make(ap_linear_layer *l, ap_params *ps, const char *prefix, int in, int out, bool bias) {
    memset(l, 0, sizeof *l);
    l->in = in;
    l->out = out;
    l->w = ap_params_add(ps, prefix, "weight", AP_PARAM_WEIGHT, 2, (int64_t[]){out, in});
    if (bias) {
        l->b = ap_params_add(ps, prefix, "bias", AP_PARAM_BIAS, 1, (int64_t[]){out});
        ap_param *p = &ps->p[ps->n - 1];
        if (l->b) p->fan_in = in;
    }
}

void ap_conv_make(ap_conv_layer *l, ap_params *ps, const char *prefix, int in, int out, int k,
                  int stride, const int pad[4]) {
    memset(l, 0, sizeof *l);
    l->in = in;
    l->out = out;
    l->k = k;
    l->p.stride = stride;
    for (int i = 0; i < 4; i++) l->p.pad[i] = pad[i];
    l->w = ap_params_add(ps, prefix, "weight", AP_PARAM_WEIGHT, 4, (int64_t[]){out, in, k, k});
    l->b = ap_params_add(ps, prefix, "bias", AP_PARAM_BIAS, 1, (int64_t[]){out});
    if (l->b) ps->p[ps->n - 1].fan_in = (int64_t)in * k * k;
}

void ap_gn_make(ap_gn_layer *l, ap_params *ps, const char *prefix, int channels, int groups, float eps) {
    l->groups = groups;
    l->eps = eps;
    l->g = ap_params_add(ps, prefix, "weight", AP_PARAM_NORM_GAIN, 1, (int64_t[]){channels});
    l->b = ap_params_add(ps, prefix, "bias", AP_PARAM_NORM_BIAS, 1, (int64_t[]){channels});
}

void ap_ln_make(ap_ln_layer *l, ap_params *ps, const char *prefix, int channels, float eps) {
    l->eps = eps;
    l->g = ap_params_add(ps, prefix, "weight", AP_PARAM_NORM_GAIN, 1, (int64_t[]){channels});
    l->b = ap_params_add(ps, prefix, "bias", AP_PARAM_NORM_BIAS, 1, (int64_t[]){channels});
}

ap_tensor *ap_linear_fwd(ap_ctx *c, const ap_linear_layer *l, ap_tensor *x) {
    ap_tensor *y = ap_linear(c, x, l->w, l->b);
    if (!l->lora || !y) return y;
    /* y + scale * up(down(x)): the adapter runs beside the frozen weight */
    ap_tensor *h = ap_linear(c, x, l->lora->down, NULL);
    ap_tensor *d = ap_linear(c, h, l->lora->up, NULL);
    ap_tensor *out = ap_axpby(c, 1.0f, y, l->lora->scale, d);
    ap_tensor_release(h);
    ap_tensor_release(d);
    ap_tensor_release(y);
    return out;
}

ap_tensor *ap_conv_fwd(ap_ctx *c, const ap_conv_layer *l, ap_tensor *x) {
    return ap_conv2d(c, x, l->w, l->b, l->p);
}

ap_tensor *ap_gn_fwd(ap_ctx *c, const ap_gn_layer *l, ap_tensor *x) {
    return ap_group_norm(c, x, l->groups, l->g, l->b, l->eps);
}

ap_tensor *ap_ln_fwd(ap_ctx *c, const ap_ln_layer *l, ap_tensor *x) {
    return ap_layer_norm(c, x, l->g, l->b, l->eps);
}

void ap_attn_make(ap_attn_layer *a, ap_params *ps, const char *prefix, int query_dim, int context_dim,
                  int heads, bool qkv_bias) {
    char buf[512];
    a->heads = heads;
    AP_FMT(buf, "%sto_q.", prefix);
    ap_linear_make(&a->to_q, ps, buf, query_dim, query_dim, qkv_bias);
    AP_FMT(buf, "%sto_k.", prefix);
    ap_linear_make(&a->to_k, ps, buf, context_dim, query_dim, qkv_bias);
    AP_FMT(buf, "%sto_v.", prefix);
    ap_linear_make(&a->to_v, ps, buf, context_dim, query_dim, qkv_bias);
    AP_FMT(buf, "%sto_out.0.", prefix);
    ap_linear_make(&a->to_out, ps, buf, query_dim, query_dim, true);
}

ap_tensor *ap_attn_fwd(ap_ctx *c, const ap_attn_layer *a, ap_tensor *x, ap_tensor *ctx, bool causal) {
    ap_tensor *src = ctx ? ctx : x;
    ap_tensor *q = ap_linear_fwd(c, &a->to_q, x);
    ap_tensor *k = ap_linear_fwd(c, &a->to_k, src);
    ap_tensor *v = ap_linear_fwd(c, &a->to_v, src);
    ap_tensor *o = ap_attention(c, q, k, v, a->heads, 0.0f, causal);
    ap_tensor_release(q);
    ap_tensor_release(k);
    ap_tensor_release(v);
    ap_tensor *y = ap_linear_fwd(c, &a->to_out, o);
    ap_tensor_release(o);
    return y;
}
