/* Weight files of any supported format, and loading a parameter registry. */
#include "weights.h"

#include "core/internal.h"
#include "io/torchfile.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>

struct ap_weights {
    ap_weights_format format;
    char *path;
    ap_safetensors *st;
    ap_torchfile *pt;
};

ap_status ap_weights_open(ap_ctx *c, const char *path, ap_weights **out) {
    *out = NULL;
    if (ap_failed(c)) return c->status;
    FILE *f = fopen(path, "rb");
    if (!f) return ap_seterr(c, AP_ERR_IO, "%s: cannot open", path);
    unsigned char magic[4] = {0};
    size_t got = fread(magic, 1, 4, f);
    fclose(f);
    ap_weights *w = calloc(1, sizeof *w);
    if (!w || !(w->path = strdup(path))) {
        free(w);
        return ap_seterr(c, AP_ERR_NOMEM, "%s: out of memory", path);
    }
    ap_status st;
    if (got == 4 && magic[0] == 'P' && magic[1] == 'K') {
        w->format = AP_WEIGHTS_TORCH;
        st = ap_pt_open(c, path, &w->pt);
    } else {
        w->format = AP_WEIGHTS_SAFETENSORS;
        st = ap_st_open(c, path, &w->st);
    }
    if (st != AP_OK) {
        ap_weights_close(w);
        return st;
    }
    *out = w;
    return AP_OK;
}

void ap_weights_close(ap_weights *w) {
    if (!w) return;
    ap_st_close(w->st);
    ap_pt_close(w->pt);
    free(w->path);
    free(w);
}

ap_weights_format ap_weights_format_of(const ap_weights *w) { return w->format; }
const char *ap_weights_path(const ap_weights *w) { return w->path; }
int ap_weights_count(const ap_weights *w) { return w->st ? ap_st_count(w->st) : ap_pt_count(w->pt); }
const char *ap_weights_name(const ap_weights *w, int i) { return w->st ? ap_st_name(w->st, i) : ap_pt_name(w->pt, i); }
int ap_weights_find(const ap_weights *w, const char *name) {
    return w->st ? ap_st_find(w->st, name) : ap_pt_find(w->pt, name);
}
int ap_weights_shape(const ap_weights *w, int i, int64_t *shape) {
    return w->st ? ap_st_shape(w->st, i, shape) : ap_pt_shape(w->pt, i, shape);
}
const char *ap_weights_dtype(const ap_weights *w, int i) {
    return w->st ? ap_st_dtype(w->st, i) : ap_pt_dtype(w->pt, i);
}
const char *ap_weights_metadata(const ap_weights *w, const char *key) {
    return w->st ? ap_st_metadata(w->st, key) : NULL;
}

ap_status ap_weights_load(ap_ctx *c, const ap_weights *w, int i, ap_dtype dt, ap_tensor **out) {
    if (w->st) return ap_st_load(c, w->st, ap_st_name(w->st, i), dt, out);
    return ap_pt_load(c, w->pt, ap_pt_name(w->pt, i), dt, out);
}

static bool shape_eq(int na, const int64_t *a, int nb, const int64_t *b) {
    if (na != nb) return false;
    for (int i = 0; i < na; i++)
        if (a[i] != b[i]) return false;
    return true;
}

static void shape_fmt(char *buf, size_t n, int nd, const int64_t *s) {
    size_t o = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < nd && o < n; i++) o += (size_t)snprintf(buf + o, n - o, i ? ",%lld" : "%lld", (long long)s[i]);
    if (o < n) snprintf(buf + o, n - o, "]");
}

typedef struct {
    ap_name_map_fn map;
    void *user;
} plain_map;

static int plain_map_fn(void *user, const char *param, ap_name_target *out) {
    const plain_map *m = user;
    if (!m->map) {
        snprintf(out->name, sizeof out->name, "%s", param);
        return 0;
    }
    return m->map(m->user, param, out->name, sizeof out->name);
}

ap_status ap_params_load(ap_ctx *c, ap_params *ps, const ap_weights *w, ap_name_map_fn map, void *user) {
    plain_map m = {map, user};
    return ap_params_load_ex(c, ps, w, plain_map_fn, &m);
}

/* The shape the file tensor must have for parameter p at target tg. */
static int target_shape(const ap_param *p, const ap_name_target *tg, int64_t *shape) {
    const ap_tensor *t = p->t;
    for (int d = 0; d < t->ndim; d++) shape[d] = t->shape[d];
    if (tg->rows) shape[0] = tg->file_rows;
    if (tg->transpose && t->ndim == 2) shape[0] = t->shape[1], shape[1] = t->shape[0];
    return t->ndim;
}

/* Rows [row0, row0+rows) of f32 src (row length rl), transposed when asked,
 * converted into dst of dtype dt. */
static ap_status place(ap_ctx *c, const ap_param *p, const ap_name_target *tg, const float *src, int64_t rl) {
    ap_tensor *t = p->t;
    int64_t n = ap_tensor_numel(t);
    const float *from = src + (tg->rows ? tg->row0 * rl : 0);
    float *tmp = NULL;
    if (tg->transpose) {
        int64_t R = t->shape[0], C = t->shape[1]; /* ours [R,C]; the file's [C,R] */
        tmp = malloc((size_t)(n ? n : 1) * sizeof *tmp);
        if (!tmp) return ap_seterr(c, AP_ERR_NOMEM, "loading '%s': out of memory", p->name);
        for (int64_t r = 0; r < R; r++)
            for (int64_t k = 0; k < C; k++) tmp[r * C + k] = from[k * R + r];
        from = tmp;
    }
    ap_convert(ap_data(t), t->dtype, from, AP_F32, n);
    free(tmp);
    return AP_OK;
}

ap_status ap_params_load_ex(ap_ctx *c, ap_params *ps, const ap_weights *w, ap_name_map_ex_fn map, void *user) {
    if (ap_failed(c)) return c->status;
    for (int i = 0; i < ps->n; i++) {
        ap_param *p = &ps->p[i];
        ap_name_target tg;
        memset(&tg, 0, sizeof tg);
        if (map(user, p->name, &tg) != 0)
            return ap_seterr(c, AP_ERR_NOT_FOUND, "%s: no file name for parameter '%s'", w->path, p->name);
        bool plain = !tg.rows && !tg.transpose;
        assert(!tg.transpose || p->t->ndim == 2);
        const char *fname = tg.name;
        int k = ap_weights_find(w, fname);
        if (k < 0) return ap_seterr(c, AP_ERR_NOT_FOUND, "%s: missing tensor '%s'", w->path, fname);
        int64_t shape[AP_MAX_DIMS], want[AP_MAX_DIMS];
        int nd = ap_weights_shape(w, k, shape);
        int nw = target_shape(p, &tg, want);
        bool ok = plain ? shape_eq(nd, shape, p->t->ndim, p->t->shape) ||
                              (p->file_ndim && shape_eq(nd, shape, p->file_ndim, p->file_shape))
                        : shape_eq(nd, shape, nw, want) && (!tg.rows || (tg.row0 >= 0 && tg.row0 + tg.rows <= shape[0] &&
                                                                         tg.rows == p->t->shape[0]));
        if (!ok) {
            char a[128], b[128];
            shape_fmt(a, sizeof a, nd, shape);
            shape_fmt(b, sizeof b, plain ? p->t->ndim : nw, plain ? p->t->shape : want);
            return ap_seterr(c, AP_ERR_SHAPE, "%s: tensor '%s' has shape %s, the model expects %s", w->path, fname,
                             a, b);
        }
        ap_tensor *t = NULL;
        if (plain) {
            if (ap_weights_load(c, w, k, p->t->dtype, &t) != AP_OK) return c->status;
            memcpy(ap_data(p->t), ap_data(t), ap_tensor_nbytes(t));
        } else {
            if (ap_weights_load(c, w, k, AP_F32, &t) != AP_OK) return c->status;
            int64_t rl = nd && shape[0] ? ap_tensor_numel(t) / shape[0] : 1;
            if (place(c, p, &tg, ap_f32(t), rl) != AP_OK) {
                ap_tensor_release(t);
                return c->status;
            }
        }
        ap_tensor_release(t);
        ap_tensor_touch(p->t);
    }
    return AP_OK;
}

ap_status ap_params_save(ap_ctx *c, const ap_params *ps, const char *path, ap_name_map_fn map, void *user,
                         int n_meta, const char *const *keys, const char *const *values) {
    if (ap_failed(c)) return c->status;
    char **names = calloc((size_t)ps->n + 1, sizeof *names);
    ap_tensor **ts = calloc((size_t)ps->n + 1, sizeof *ts);
    ap_status st = (names && ts) ? AP_OK : ap_seterr(c, AP_ERR_NOMEM, "%s: out of memory", path);
    char fname[512];
    for (int i = 0; i < ps->n && st == AP_OK; i++) {
        const ap_param *p = &ps->p[i];
        if (map && map(user, p->name, fname, sizeof fname) != 0) {
            st = ap_seterr(c, AP_ERR_NOT_FOUND, "%s: no file name for parameter '%s'", path, p->name);
            break;
        }
        names[i] = strdup(map ? fname : p->name);
        ts[i] = p->file_ndim ? ap_tensor_view(c, p->t, p->file_ndim, p->file_shape) : ap_tensor_retain(p->t);
        if (!names[i] || !ts[i]) st = ap_failed(c) ? c->status : ap_seterr(c, AP_ERR_NOMEM, "%s: out of memory", path);
    }
    if (st == AP_OK)
        st = ap_st_save(c, path, ps->n, (const char *const *)names, ts, n_meta, keys, values);
    for (int i = 0; names && ts && i < ps->n; i++) {
        free(names[i]);
        ap_tensor_release(ts[i]);
    }
    free(names);
    free(ts);
    return st;
}
