/* The counting model (counter.h). */
#include "rewards/counter.h"

#include "core/embed.h"
#include "core/internal.h"
#include "io/safetensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

/* The build passes the shipped weights' path as AP_COUNTER_ST when the file
 * exists (core/embed.h). */
#ifdef AP_COUNTER_ST
AP_EMBED_FILE(ap_counter_st, AP_COUNTER_ST);
const void *ap_counter_embedded(size_t *len) {
    *len = AP_EMBED_SIZE(ap_counter_st);
    return ap_counter_st;
}
#else
const void *ap_counter_embedded(size_t *len) {
    *len = 0;
    return NULL;
}
#endif

static const int conv_ch[AP_COUNTER_CONVS + 1] = {3, 16, 32, 48, 64, 64};
static const int conv_stride[AP_COUNTER_CONVS] = {2, 1, 2, 1, 2};
#define HIDDEN 64

ap_status ap_counter_create(ap_ctx *c, ap_dtype weight_dtype, ap_counter **out) {
    *out = NULL;
    if (ap_failed(c)) return c->status;
    ap_counter *m = calloc(1, sizeof *m);
    if (!m) return ap_seterr(c, AP_ERR_NOMEM, "counter: out of memory");
    ap_params_init(&m->params, c, weight_dtype);
    char pre[32];
    for (int i = 0; i < AP_COUNTER_CONVS; i++) {
        AP_FMT(pre, "convs.%d.", i);
        ap_conv_make(&m->conv[i], &m->params, pre, conv_ch[i], conv_ch[i + 1], 3, conv_stride[i],
                     (int[]){1, 1, 1, 1});
        if (i < AP_COUNTER_CONVS - 1) {
            AP_FMT(pre, "norms.%d.", i);
            int ch = conv_ch[i + 1];
            ap_gn_make(&m->norm[i], &m->params, pre, ch, ch / 8 < 4 ? 4 : ch / 8, 1e-5f);
        }
    }
    ap_linear_make(&m->fc1, &m->params, "fc1.", conv_ch[AP_COUNTER_CONVS], HIDDEN, true);
    ap_linear_make(&m->fc2, &m->params, "fc2.", HIDDEN, AP_COUNTER_CLASSES, true);
    const int pos = (AP_COUNTER_SIZE / 8) * (AP_COUNTER_SIZE / 8);
    float pool[(AP_COUNTER_SIZE / 8) * (AP_COUNTER_SIZE / 8)], counts[AP_COUNTER_CLASSES];
    for (int i = 0; i < pos; i++) pool[i] = 1.0f / pos;
    for (int k = 0; k < AP_COUNTER_CLASSES; k++) counts[k] = (float)k;
    m->pool = ap_tensor_from_data(c, AP_F32, 2, (int64_t[]){pos, 1}, pool);
    m->counts = ap_tensor_from_data(c, AP_F32, 2, (int64_t[]){1, AP_COUNTER_CLASSES}, counts);
    if (ap_failed(c)) {
        ap_counter_free(m);
        return c->status;
    }
    *out = m;
    return AP_OK;
}

void ap_counter_free(ap_counter *m) {
    if (!m) return;
    ap_params_free(&m->params);
    ap_tensor_release(m->pool);
    ap_tensor_release(m->counts);
    free(m);
}

ap_status ap_counter_init_random(ap_counter *m, uint64_t seed) { return ap_params_init_random(&m->params, seed); }

static ap_status load_from(ap_ctx *c, ap_safetensors *st, const char *what, ap_counter **out) {
    ap_counter *m = NULL;
    if (ap_counter_create(c, AP_F32, &m) != AP_OK) return c->status;
    for (int i = 0; i < m->params.n; i++) {
        ap_param *p = &m->params.p[i];
        int k = ap_st_find(st, p->name);
        if (k < 0) {
            ap_seterr(c, AP_ERR_NOT_FOUND, "counter: %s has no tensor %s (not counter weights?)", what, p->name);
            break;
        }
        int64_t shape[AP_MAX_DIMS];
        int nd = ap_st_shape(st, k, shape);
        int same = nd == ap_tensor_ndim(p->t);
        for (int d = 0; same && d < nd; d++) same = shape[d] == ap_tensor_dim(p->t, d);
        if (!same) {
            char buf[64];
            ap_seterr(c, AP_ERR_SHAPE, "counter: %s: tensor %s has the wrong shape (expected %s)", what, p->name,
                      ap_shape_str(p->t, buf, sizeof buf));
            break;
        }
        ap_tensor *t = NULL;
        if (ap_st_load(c, st, p->name, AP_F32, &t) != AP_OK) break;
        memcpy(ap_data(p->t), ap_data(t), ap_tensor_nbytes(t));
        ap_tensor_touch(p->t);
        ap_tensor_release(t);
    }
    if (ap_failed(c)) {
        ap_counter_free(m);
        return c->status;
    }
    *out = m;
    return AP_OK;
}

ap_status ap_counter_load(ap_ctx *c, const char *path, ap_counter **out) {
    *out = NULL;
    ap_safetensors *st = NULL;
    if (ap_st_open(c, path, &st) != AP_OK) return c->status;
    ap_status s = load_from(c, st, path, out);
    ap_st_close(st);
    return s;
}

ap_status ap_counter_load_memory(ap_ctx *c, const char *name, const void *bytes, size_t len, ap_counter **out) {
    *out = NULL;
    ap_safetensors *st = NULL;
    if (ap_st_open_memory(c, name, bytes, len, &st) != AP_OK) return c->status;
    ap_status s = load_from(c, st, name, out);
    ap_st_close(st);
    return s;
}

ap_status ap_counter_save(ap_counter *m, const char *path, ap_dtype dt, int n_meta, const char *const *keys,
                          const char *const *values) {
    ap_ctx *c = m->params.ctx;
    if (ap_failed(c)) return c->status;
    if (dt != AP_F32 && dt != AP_F16 && dt != AP_BF16)
        return ap_seterr(c, AP_ERR_INVALID_ARG, "counter: cannot save as %s", ap_dtype_name(dt));
    int n = m->params.n;
    ap_tensor **ts = calloc((size_t)n, sizeof *ts);
    const char **names = calloc((size_t)n, sizeof *names);
    const char **mk = calloc((size_t)n_meta + 1, sizeof *mk), **mv = calloc((size_t)n_meta + 1, sizeof *mv);
    if (!ts || !names || !mk || !mv) {
        ap_seterr(c, AP_ERR_NOMEM, "counter: out of memory saving %s", path);
    } else {
        mk[0] = "format";
        mv[0] = "alignprop-counter-1";
        for (int i = 0; i < n_meta; i++) mk[i + 1] = keys[i], mv[i + 1] = values[i];
        for (int i = 0; i < n && !ap_failed(c); i++) {
            names[i] = m->params.p[i].name;
            ts[i] = ap_tensor_convert(c, m->params.p[i].t, dt);
        }
        if (!ap_failed(c)) ap_st_save(c, path, n, names, ts, n_meta + 1, mk, mv);
    }
    for (int i = 0; ts && i < n; i++) ap_tensor_release(ts[i]);
    free(ts);
    free(names);
    free(mk);
    free(mv);
    return c->status;
}

ap_tensor *ap_counter_logits(ap_ctx *c, ap_counter *m, ap_tensor *images) {
    if (!ap_check_input(c, "counter", "images", images, AP_F32)) return NULL;
    if (images->ndim != 4 || images->shape[3] != 3) {
        char buf[64];
        ap_seterr(c, AP_ERR_SHAPE, "counter: images are %s, expected [N,H,W,3]", ap_shape_str(images, buf, sizeof buf));
        return NULL;
    }
    int64_t N = images->shape[0];
    ap_tensor *h = ap_tensor_retain(images);
    if (images->shape[1] != AP_COUNTER_SIZE || images->shape[2] != AP_COUNTER_SIZE)
        h = ap_swap(h, ap_resize(c, h, AP_COUNTER_SIZE, AP_COUNTER_SIZE, AP_RESIZE_BILINEAR, 1));
    for (int i = 0; i < AP_COUNTER_CONVS; i++) {
        h = ap_swap(h, ap_conv_fwd(c, &m->conv[i], h));
        if (i < AP_COUNTER_CONVS - 1) h = ap_swap(h, ap_gn_fwd(c, &m->norm[i], h));
        h = ap_swap(h, ap_silu(c, h));
    }
    const int64_t pos = (AP_COUNTER_SIZE / 8) * (AP_COUNTER_SIZE / 8), ch = conv_ch[AP_COUNTER_CONVS];
    h = ap_swap(h, ap_reshape(c, h, 3, (int64_t[]){N, pos, ch}));        // [N,64,C]
    h = ap_swap(h, ap_matmul(c, h, m->pool, 1, 0));                      // [N,C,1]
    h = ap_swap(h, ap_reshape(c, h, 2, (int64_t[]){N, ch}));             // [N,C]
    h = ap_swap(h, ap_linear_fwd(c, &m->fc1, h));
    h = ap_swap(h, ap_silu(c, h));
    return ap_swap(h, ap_linear_fwd(c, &m->fc2, h));                     // [N,6]
}

ap_tensor *ap_counter_expected(ap_ctx *c, ap_counter *m, ap_tensor *logits, ap_tensor **probs) {
    if (probs) *probs = NULL;
    ap_tensor *p = ap_softmax(c, logits);                                 // [N,6]
    ap_tensor *e = ap_linear(c, p, m->counts, NULL);                      // [N,1]
    ap_tensor *r = e ? ap_reshape(c, e, 1, (int64_t[]){e->shape[0]}) : NULL; // [N]
    ap_tensor_release(e);
    if (probs)
        *probs = p;
    else
        ap_tensor_release(p);
    return r;
}

ap_status ap_counter_load_default(ap_ctx *c, const char *models_dir, ap_counter **out) {
    *out = NULL;
    if (ap_failed(c)) return c->status;
    const char *env = getenv("AP_COUNTER_WEIGHTS");
    if (env && *env) return ap_counter_load(c, env, out);
    if (models_dir && *models_dir) {
        char path[4096];
        struct stat sb;
        snprintf(path, sizeof path, "%s/counter.safetensors", models_dir);
        if (stat(path, &sb) == 0) return ap_counter_load(c, path, out);
    }
    size_t len;
    const void *bytes = ap_counter_embedded(&len);
    if (bytes && len) return ap_counter_load_memory(c, "the embedded counter weights", bytes, len, out);
    return ap_seterr(c, AP_ERR_NOT_FOUND,
                     "count: no counting-model weights: this build embeds none (assets/counter/counter.safetensors "
                     "was missing when it was built); train some with `alignprop train-counter -o FILE` and set "
                     "AP_COUNTER_WEIGHTS=FILE, or put counter.safetensors in the models folder");
}
