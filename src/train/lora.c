/* Trainable LoRA adapters: creation, attaching, export and import. */
#include "train/lora.h"

#include "core/internal.h"
#include "diffusion/rng.h"
#include "models/lora_file.h"
#include "models/weights.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ targets */
typedef void (*visit_fn)(void *user, const char *path, int in, int out, ap_linear_layer *l);

static const char *const PROJ[4] = {"to_q", "to_k", "to_v", "to_out.0"};

/* One transformer's 8 projections. u_tr is NULL when walking a config only. */
static void walk_transformer(const char *prefix, int C, int ctx_dim, ap_transformer *u_tr, visit_fn f,
                             void *user) {
    char path[160];
    for (int a = 0; a < 2; a++) {
        ap_attn_layer *al = u_tr ? (a == 0 ? &u_tr->block.attn1 : &u_tr->block.attn2) : NULL;
        ap_linear_layer *ls[4] = {al ? &al->to_q : NULL, al ? &al->to_k : NULL, al ? &al->to_v : NULL,
                                  al ? &al->to_out : NULL};
        for (int p = 0; p < 4; p++) {
            int in = (a == 1 && (p == 1 || p == 2)) ? ctx_dim : C;
            AP_FMT(path, "%stransformer_blocks.0.attn%d.%s", prefix, a + 1, PROJ[p]);
            f(user, path, in, C, ls[p]);
        }
    }
}

/* The UNet's layout as ap_unet_create builds it: the same loops, so the
 * order is the registry's. */
static void walk(const ap_unet_config *cfg, ap_unet *u, visit_fn f, void *user) {
    char b[128];
    for (int l = 0; l < cfg->levels; l++) {
        if (!cfg->attention[l]) continue;
        for (int j = 0; j < cfg->layers_per_block; j++) {
            AP_FMT(b, "down_blocks.%d.attentions.%d.", l, j);
            walk_transformer(b, cfg->block_out[l], cfg->context_dim, u ? &u->down[l].attns[j] : NULL, f, user);
        }
    }
    walk_transformer("mid_block.attentions.0.", cfg->block_out[cfg->levels - 1], cfg->context_dim,
                     u ? &u->mid_attn : NULL, f, user);
    for (int i = 0; i < cfg->levels; i++) {
        int l = cfg->levels - 1 - i;
        if (!cfg->attention[l]) continue;
        for (int j = 0; j < cfg->layers_per_block + 1; j++) {
            AP_FMT(b, "up_blocks.%d.attentions.%d.", i, j);
            walk_transformer(b, cfg->block_out[l], cfg->context_dim, u ? &u->up[i].attns[j] : NULL, f, user);
        }
    }
}

typedef struct {
    ap_lora_target *out;
    int max, n;
} collect;

static void collect_visit(void *user, const char *path, int in, int out, ap_linear_layer *l) {
    (void)l;
    collect *k = user;
    if (k->n < k->max) {
        snprintf(k->out[k->n].path, sizeof k->out[k->n].path, "%s", path);
        k->out[k->n].in = in;
        k->out[k->n].out = out;
    }
    k->n++;
}

int ap_lora_targets(const ap_unet_config *cfg, ap_lora_target *out, int max) {
    if (!cfg || cfg->levels < 1 || cfg->levels > AP_UNET_MAX_LEVELS) return 0;
    collect k = {out, out ? max : 0, 0};
    walk(cfg, NULL, collect_visit, &k);
    return k.n;
}

int64_t ap_lora_param_count(const ap_unet_config *cfg, int rank) {
    int n = ap_lora_targets(cfg, NULL, 0);
    ap_lora_target *t = calloc((size_t)(n ? n : 1), sizeof *t);
    if (!t) return -1;
    ap_lora_targets(cfg, t, n);
    int64_t s = 0;
    for (int i = 0; i < n; i++) s += (int64_t)rank * (t[i].in + t[i].out);
    free(t);
    return s;
}

/* ------------------------------------------------------------ create / attach */
ap_status ap_lora_create(ap_ctx *c, const ap_unet_config *cfg, int rank, float alpha, uint64_t seed,
                         ap_lora_set **out) {
    *out = NULL;
    if (ap_failed(c)) return c->status;
    if (rank < 1 || rank > 4096)
        return ap_seterr(c, AP_ERR_INVALID_ARG, "lora: rank %d is out of range (1..4096)", rank);
    if (!cfg || cfg->levels < 1 || cfg->levels > AP_UNET_MAX_LEVELS ||
        cfg->layers_per_block + 1 > AP_UNET_MAX_LAYERS)
        return ap_seterr(c, AP_ERR_INVALID_ARG, "lora: unsupported unet config");
    if (!(alpha > 0)) alpha = (float)rank;
    ap_lora_set *s = calloc(1, sizeof *s);
    int n = ap_lora_targets(cfg, NULL, 0);
    ap_lora_target *t = calloc((size_t)n, sizeof *t);
    if (s) s->m = calloc((size_t)n, sizeof *s->m);
    if (!s || !t || !s->m) {
        free(t);
        if (s) free(s->m);
        free(s);
        return ap_seterr(c, AP_ERR_NOMEM, "lora: out of memory");
    }
    ap_lora_targets(cfg, t, n);
    s->ctx = c;
    s->cfg = *cfg;
    s->rank = rank;
    s->alpha = alpha;
    s->n = n;
    ap_params_init(&s->params, c, AP_F32);
    ap_rng g;
    ap_rng_init(&g, seed);
    char pre[200];
    for (int i = 0; i < n && !ap_failed(c); i++) {
        ap_lora_module *m = &s->m[i];
        m->target = t[i];
        m->lora.scale = alpha / (float)rank;
        AP_FMT(pre, "%s.", t[i].path);
        m->lora.down = ap_params_add(&s->params, pre, "lora_down.weight", AP_PARAM_WEIGHT, 2,
                                     (int64_t[]){rank, t[i].in});
        m->lora.up = ap_params_add(&s->params, pre, "lora_up.weight", AP_PARAM_WEIGHT, 2,
                                   (int64_t[]){t[i].out, rank});
        if (!m->lora.down || !m->lora.up) break;
        /* N(0, 1/r): torch.randn * (1/r), as nn.init.normal_(std=1/r) draws */
        float *d = ap_f32(m->lora.down);
        int64_t k = ap_tensor_numel(m->lora.down);
        ap_rng_randn(&g, d, k);
        for (int64_t e = 0; e < k; e++) d[e] *= 1.0f / (float)rank;
        ap_tensor_set_requires_grad(m->lora.down, 1);
        ap_tensor_set_requires_grad(m->lora.up, 1);
    }
    free(t);
    if (ap_failed(c)) {
        ap_lora_free(s);
        return c->status;
    }
    *out = s;
    return AP_OK;
}

void ap_lora_free(ap_lora_set *s) {
    if (!s) return;
    ap_lora_detach(s);
    ap_params_free(&s->params);
    free(s->m);
    free(s);
}

typedef struct {
    ap_lora_set *s;
    int i;
    bool bad;
    char bad_path[160]; /* first module whose layer does not fit (a copy: the walk's buffer goes) */
} attach_walk;

static void attach_visit(void *user, const char *path, int in, int out, ap_linear_layer *l) {
    (void)in;
    (void)out;
    attach_walk *a = user;
    if (a->bad) return;
    if (a->i >= a->s->n || strcmp(a->s->m[a->i].target.path, path) || !l || l->in != a->s->m[a->i].target.in ||
        l->out != a->s->m[a->i].target.out) {
        a->bad = true;
        snprintf(a->bad_path, sizeof a->bad_path, "%s", path);
        return;
    }
    a->s->m[a->i++].layer = l;
}

ap_status ap_lora_attach(ap_ctx *c, ap_lora_set *s, ap_unet *u) {
    if (ap_failed(c)) return c->status;
    if (!s || !u) return ap_seterr(c, AP_ERR_INVALID_ARG, "lora attach: NULL %s", s ? "unet" : "adapters");
    if (s->attached) return ap_seterr(c, AP_ERR_STATE, "lora attach: adapters are already attached");
    attach_walk a = {s, 0, false, ""};
    walk(&u->cfg, u, attach_visit, &a);
    if (a.bad || a.i != s->n) {
        for (int i = 0; i < s->n; i++) s->m[i].layer = NULL;
        return ap_seterr(c, AP_ERR_SHAPE, "lora attach: the unet's module %s does not match the adapters'",
                         a.bad ? a.bad_path : "count");
    }
    for (int i = 0; i < s->n; i++) s->m[i].layer->lora = &s->m[i].lora;
    s->attached = u;
    return AP_OK;
}

void ap_lora_detach(ap_lora_set *s) {
    if (!s || !s->attached) return;
    for (int i = 0; i < s->n; i++) {
        if (s->m[i].layer && s->m[i].layer->lora == &s->m[i].lora) s->m[i].layer->lora = NULL;
        s->m[i].layer = NULL;
    }
    s->attached = NULL;
}

int ap_lora_tensors(const ap_lora_set *s, ap_tensor **out) {
    for (int i = 0; i < s->params.n; i++) out[i] = s->params.p[i].t;
    return s->params.n;
}

/* ------------------------------------------------------------ files */
static const char *const FORMAT_NAMES[AP_LORA_FORMAT_COUNT_] = {"kohya", "diffusers", "peft"};
_Static_assert(sizeof FORMAT_NAMES / sizeof FORMAT_NAMES[0] == AP_LORA_FORMAT_COUNT_, "format names");

const char *ap_lora_format_name(ap_lora_format f) {
    return (unsigned)f < AP_LORA_FORMAT_COUNT_ ? FORMAT_NAMES[f] : "?";
}

int ap_lora_format_parse(const char *name) {
    for (int i = 0; name && i < AP_LORA_FORMAT_COUNT_; i++)
        if (!strcmp(name, FORMAT_NAMES[i])) return i;
    return -1;
}

/* kohya base name: lora_unet_ + path with every '.' turned into '_'. */
static void kohya_base(char *out, size_t n, const char *path) {
    snprintf(out, n, "lora_unet_%s", path);
    for (char *p = out; *p; p++)
        if (*p == '.') *p = '_';
}

ap_status ap_lora_save(ap_ctx *c, const ap_lora_set *s, const char *path, ap_lora_format fmt) {
    if (ap_failed(c)) return c->status;
    if (!s || !path) return ap_seterr(c, AP_ERR_INVALID_ARG, "lora save: NULL %s", s ? "path" : "adapters");
    if ((unsigned)fmt >= AP_LORA_FORMAT_COUNT_)
        return ap_seterr(c, AP_ERR_INVALID_ARG, "lora save: unknown format %d", (int)fmt);
    int per = fmt == AP_LORA_KOHYA ? 3 : 2, n = s->n * per;
    char **names = calloc((size_t)n, sizeof *names);
    ap_tensor **ts = calloc((size_t)n, sizeof *ts);
    ap_status st = AP_OK;
    if (!names || !ts) {
        st = ap_seterr(c, AP_ERR_NOMEM, "lora save: out of memory");
        goto done;
    }
    for (int i = 0; i < s->n && st == AP_OK; i++) {
        const ap_lora_module *m = &s->m[i];
        char base[256], *nm[3] = {NULL, NULL, NULL};
        for (int k = 0; k < per; k++) nm[k] = names[i * per + k] = malloc(320);
        if (!nm[0] || !nm[1] || (per == 3 && !nm[2])) {
            st = ap_seterr(c, AP_ERR_NOMEM, "lora save: out of memory");
            break;
        }
        ap_tensor *up = ap_tensor_retain(m->lora.up);
        switch (fmt) {
        case AP_LORA_KOHYA:
            kohya_base(base, sizeof base, m->target.path);
            snprintf(nm[0], 320, "%s.lora_down.weight", base);
            snprintf(nm[1], 320, "%s.lora_up.weight", base);
            snprintf(nm[2], 320, "%s.alpha", base);
            ts[i * per + 2] = ap_tensor_from_data(c, AP_F32, 0, NULL, &s->alpha);
            break;
        case AP_LORA_DIFFUSERS:
        case AP_LORA_PEFT:
            if (fmt == AP_LORA_DIFFUSERS) {
                snprintf(nm[0], 320, "unet.%s.lora.down.weight", m->target.path);
                snprintf(nm[1], 320, "unet.%s.lora.up.weight", m->target.path);
            } else {
                snprintf(nm[0], 320, "%s.lora_A.weight", m->target.path);
                snprintf(nm[1], 320, "%s.lora_B.weight", m->target.path);
            }
            if (m->lora.scale != 1.0f) {
                /* fold the scale into up: these formats have no agreed alpha */
                ap_tensor_release(up);
                up = ap_tensor_new(c, AP_F32, 2, (int64_t[]){m->target.out, s->rank});
                if (up) {
                    const float *src = ap_f32(m->lora.up);
                    float *dst = ap_f32(up);
                    for (int64_t e = 0; e < ap_tensor_numel(up); e++) dst[e] = m->lora.scale * src[e];
                }
            }
            break;
        default:
            break;
        }
        ts[i * per + 0] = ap_tensor_retain(m->lora.down);
        ts[i * per + 1] = up;
        if (ap_failed(c)) st = c->status;
    }
    if (st == AP_OK) {
        char rank_s[32], alpha_s[32], eff_alpha_s[32];
        snprintf(rank_s, sizeof rank_s, "%d", s->rank);
        snprintf(alpha_s, sizeof alpha_s, "%.9g", (double)s->alpha);
        snprintf(eff_alpha_s, sizeof eff_alpha_s, "%d", s->rank); /* scale folded into up */
        const char *kk[] = {"ss_network_dim", "ss_network_alpha", "ss_network_module", "alignprop_format"};
        const char *kv[] = {rank_s, alpha_s, "networks.lora", "kohya"};
        const char *dk[] = {"format", "alignprop_format"};
        const char *dv[] = {"pt", "diffusers"};
        const char *pk[] = {"r", "lora_alpha", "target_modules", "alignprop_format"};
        const char *pv[] = {rank_s, eff_alpha_s, "to_q,to_k,to_v,to_out.0", "peft"};
        const char *const *keys = fmt == AP_LORA_KOHYA ? kk : fmt == AP_LORA_DIFFUSERS ? dk : pk;
        const char *const *vals = fmt == AP_LORA_KOHYA ? kv : fmt == AP_LORA_DIFFUSERS ? dv : pv;
        int nmeta = fmt == AP_LORA_DIFFUSERS ? 2 : 4;
        st = ap_st_save(c, path, n, (const char *const *)names, ts, nmeta, keys, vals);
    }
done:
    for (int i = 0; i < n && names && ts; i++) {
        free(names[i]);
        ap_tensor_release(ts[i]);
    }
    free(names);
    free(ts);
    return st;
}

/* Copies tensor i of w (converted to f32) into dst after checking its shape
 * ([r,in] / [out,r], or the same with trailing 1x1 conv dims). */
static ap_status check_shape(ap_ctx *c, const ap_weights *w, int i, const ap_tensor *dst, int rank) {
    int64_t shape[AP_MAX_DIMS];
    int nd = ap_weights_shape(w, i, shape);
    bool ok = nd >= 2 && shape[0] == ap_tensor_dim(dst, 0) && shape[1] == ap_tensor_dim(dst, 1);
    for (int d = 2; d < nd; d++) ok &= shape[d] == 1;
    if (!ok)
        return ap_seterr(c, AP_ERR_SHAPE, "lora load: %s: %s has %d dims [%lld,%lld...], expected [%lld,%lld] (rank %d)",
                         ap_weights_path(w), ap_weights_name(w, i), nd, nd > 0 ? (long long)shape[0] : 0LL,
                         nd > 1 ? (long long)shape[1] : 0LL, (long long)ap_tensor_dim(dst, 0),
                         (long long)ap_tensor_dim(dst, 1), rank);
    return AP_OK;
}

static ap_status load_into(ap_ctx *c, const ap_weights *w, int i, ap_tensor *dst) {
    ap_tensor *t = NULL;
    if (ap_weights_load(c, w, i, AP_F32, &t) != AP_OK) return c->status;
    memcpy(ap_f32(dst), ap_f32(t), (size_t)ap_tensor_numel(dst) * sizeof(float));
    ap_tensor_release(t);
    ap_tensor_touch(dst);
    return AP_OK;
}

ap_status ap_lora_load(ap_ctx *c, ap_lora_set *s, const char *path, const char **format) {
    if (format) *format = NULL;
    if (ap_failed(c)) return c->status;
    if (!s || !path) return ap_seterr(c, AP_ERR_INVALID_ARG, "lora load: NULL %s", s ? "path" : "adapters");
    ap_weights *w = NULL;
    if (ap_weights_open(c, path, &w) != AP_OK) return c->status;
    /* find and check everything before changing anything: a failed load leaves s as it was */
    int *idx = malloc((size_t)s->n * 2 * sizeof *idx);
    float *scales = malloc((size_t)s->n * sizeof *scales);
    const char *fmt = NULL;
    if (!idx || !scales) ap_seterr(c, AP_ERR_NOMEM, "lora load: out of memory");
    for (int i = 0; i < s->n && !ap_failed(c); i++) {
        const ap_lora_module *m = &s->m[i];
        ap_lora_keys k[16];
        int n = ap_lora_key_candidates("unet", m->target.path, k, 16, NULL), hit = -1;
        for (int j = 0; j < n && hit < 0; j++) {
            idx[2 * i] = ap_weights_find(w, k[j].down);
            idx[2 * i + 1] = ap_weights_find(w, k[j].up);
            if (idx[2 * i] >= 0 && idx[2 * i + 1] >= 0) hit = j;
        }
        if (hit < 0) {
            ap_seterr(c, AP_ERR_NOT_FOUND,
                      "lora load: %s has no adapter for %s (looked for kohya, diffusers and peft keys, e.g. %s)",
                      path, m->target.path, k[0].down);
            break;
        }
        if (fmt && strcmp(fmt, k[hit].format)) {
            ap_seterr(c, AP_ERR_FORMAT, "lora load: %s mixes %s and %s keys", path, fmt, k[hit].format);
            break;
        }
        fmt = k[hit].format;
        if (check_shape(c, w, idx[2 * i], m->lora.down, s->rank) != AP_OK ||
            check_shape(c, w, idx[2 * i + 1], m->lora.up, s->rank) != AP_OK)
            break;
        /* kohya's alpha gives scale alpha/rank; the others fold it into up (scale 1) unless they say otherwise */
        float alpha = 0;
        int ia = ap_weights_find(w, k[hit].alpha);
        if (ia >= 0) {
            ap_tensor *a = NULL;
            if (ap_weights_load(c, w, ia, AP_F32, &a) != AP_OK) break;
            if (ap_tensor_numel(a) != 1) {
                ap_tensor_release(a);
                ap_seterr(c, AP_ERR_SHAPE, "lora load: %s: %s is not a scalar", path, k[hit].alpha);
                break;
            }
            alpha = ap_f32(a)[0];
            ap_tensor_release(a);
        }
        scales[i] = (alpha > 0 ? alpha : (float)s->rank) / (float)s->rank;
    }
    for (int i = 0; i < s->n && !ap_failed(c); i++) {
        ap_lora_module *m = &s->m[i];
        if (load_into(c, w, idx[2 * i], m->lora.down) != AP_OK || load_into(c, w, idx[2 * i + 1], m->lora.up) != AP_OK)
            break;
        m->lora.scale = scales[i];
    }
    if (!ap_failed(c) && s->n > 0) s->alpha = scales[0] * (float)s->rank;
    if (!ap_failed(c) && format) *format = fmt;
    free(idx);
    free(scales);
    ap_weights_close(w);
    return c->status;
}
