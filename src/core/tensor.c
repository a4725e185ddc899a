/* Tensors: reference-counted headers over reference-counted storage. */
#include "internal.h"

#include "backend/cpu/convert.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static const struct {
    const char *name;
    size_t size;
} dtype_info[] = {
    [AP_F32] = {"f32", 4}, [AP_BF16] = {"bf16", 2}, [AP_F16] = {"f16", 2},
    [AP_I32] = {"i32", 4}, [AP_I64] = {"i64", 8},
};
_Static_assert(sizeof dtype_info / sizeof dtype_info[0] == AP_DTYPE_COUNT_, "dtype table");

const char *ap_dtype_name(ap_dtype dt) {
    return (unsigned)dt < AP_DTYPE_COUNT_ ? dtype_info[dt].name : "?";
}
size_t ap_dtype_size(ap_dtype dt) { return (unsigned)dt < AP_DTYPE_COUNT_ ? dtype_info[dt].size : 0; }

static void storage_release(ap_storage *s) {
    if (!s || --s->refcount > 0) return;
    if (s->arena)
        ap_arena_release(s->arena, s->data, s->nbytes);
    else if (s->free_fn)
        s->free_fn(s->free_user, s->data);
    free(s);
}

static ap_tensor *header(ap_ctx *c, ap_dtype dt, int ndim, const int64_t *shape) {
    if (ap_failed(c)) return NULL;
    if ((unsigned)dt >= AP_DTYPE_COUNT_) {
        ap_seterr(c, AP_ERR_DTYPE, "tensor: unknown dtype %d", (int)dt);
        return NULL;
    }
    if (ndim < 0 || ndim > AP_MAX_DIMS) {
        ap_seterr(c, AP_ERR_SHAPE, "tensor: %d dims (at most %d)", ndim, AP_MAX_DIMS);
        return NULL;
    }
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || (shape[i] > 0 && numel > INT64_MAX / 16 / shape[i])) {
            ap_seterr(c, AP_ERR_SHAPE, "tensor: bad dim %d = %lld", i, (long long)shape[i]);
            return NULL;
        }
        numel *= shape[i];
    }
    ap_tensor *t = calloc(1, sizeof *t);
    if (!t) {
        ap_seterr(c, AP_ERR_NOMEM, "tensor: out of memory");
        return NULL;
    }
    t->refcount = 1;
    t->dtype = dt;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->numel = numel;
    t->ctx = c;
    return t;
}

ap_tensor *ap_tensor_new_shape(ap_ctx *c, ap_dtype dt, int ndim, const int64_t *shape) {
    ap_tensor *t = header(c, dt, ndim, shape);
    if (!t) return NULL;
    size_t nb = (size_t)t->numel * dtype_info[dt].size;
    t->st = calloc(1, sizeof *t->st);
    void *d = t->st ? ap_arena_alloc(c->arena, nb) : NULL;
    if (!d) {
        free(t->st);
        free(t);
        char buf[128];
        snprintf(buf, sizeof buf, "%zu", nb);
        ap_seterr(c, AP_ERR_NOMEM, "tensor: out of memory allocating %s bytes", buf);
        return NULL;
    }
    t->st->refcount = 1;
    t->st->data = d;
    t->st->nbytes = nb;
    t->st->arena = c->arena;
    return t;
}

ap_tensor *ap_tensor_new(ap_ctx *c, ap_dtype dt, int ndim, const int64_t *shape) {
    if (!c) return NULL;
    return ap_tensor_new_shape(c, dt, ndim, shape);
}

ap_tensor *ap_tensor_zeros(ap_ctx *c, ap_dtype dt, int ndim, const int64_t *shape) {
    ap_tensor *t = ap_tensor_new(c, dt, ndim, shape);
    if (t) memset(ap_data(t), 0, t->st->nbytes);
    return t;
}

ap_tensor *ap_tensor_from_data(ap_ctx *c, ap_dtype dt, int ndim, const int64_t *shape,
                               const void *data) {
    ap_tensor *t = ap_tensor_new(c, dt, ndim, shape);
    if (t && t->st->nbytes) memcpy(ap_data(t), data, t->st->nbytes);
    return t;
}

ap_tensor *ap_tensor_like(ap_ctx *c, const ap_tensor *x) {
    return ap_tensor_new_shape(c, AP_F32, x->ndim, x->shape);
}

ap_tensor *ap_tensor_view(ap_ctx *c, ap_tensor *x, int ndim, const int64_t *shape) {
    ap_tensor *t = header(c, x->dtype, ndim, shape);
    if (!t) return NULL;
    if (t->numel != x->numel) {
        char a[96];
        ap_seterr(c, AP_ERR_SHAPE, "view: %lld elements cannot be viewed as %s (%lld elements)",
                  (long long)x->numel, ap_shape_str(t, a, sizeof a), (long long)t->numel);
        free(t);
        return NULL;
    }
    t->st = x->st;
    t->st->refcount++;
    return t;
}

ap_tensor *ap_tensor_retain(ap_tensor *t) {
    if (t) t->refcount++;
    return t;
}

void ap_tensor_release(ap_tensor *t) {
    if (!t || --t->refcount > 0) return;
    storage_release(t->st);
    ap_tensor_release(t->grad);
    for (ap_packed *p = t->packed; p;) {
        ap_packed *nx = p->next;
        if (p->free_fn) p->free_fn(p->data);
        free(p);
        p = nx;
    }
    free(t->name);
    free(t);
}

ap_dtype ap_tensor_dtype(const ap_tensor *t) { return t->dtype; }
int ap_tensor_ndim(const ap_tensor *t) { return t->ndim; }
int64_t ap_tensor_dim(const ap_tensor *t, int i) {
    if (i < 0) i += t->ndim;
    return (i >= 0 && i < t->ndim) ? t->shape[i] : 0;
}
int64_t ap_tensor_numel(const ap_tensor *t) { return t->numel; }
void *ap_tensor_data(ap_tensor *t) { return t->st->data; }
const void *ap_tensor_cdata(const ap_tensor *t) { return t->st->data; }
size_t ap_tensor_nbytes(const ap_tensor *t) { return (size_t)t->numel * ap_dtype_size(t->dtype); }

ap_status ap_tensor_set_name(ap_tensor *t, const char *name) {
    char *s = strdup(name ? name : "");
    if (!s) return AP_ERR_NOMEM;
    free(t->name);
    t->name = s;
    return AP_OK;
}
const char *ap_tensor_name(const ap_tensor *t) { return t->name ? t->name : ""; }

void ap_tensor_touch(ap_tensor *t) { t->version++; }

ap_packed *ap_tensor_packed(ap_tensor *t, int kind) {
    for (ap_packed *p = t->packed; p; p = p->next)
        if (p->kind == kind) return p->version == t->version ? p : NULL;
    return NULL;
}

void ap_tensor_set_packed(ap_tensor *t, int kind, void *data, void (*free_fn)(void *)) {
    for (ap_packed *p = t->packed; p; p = p->next)
        if (p->kind == kind) {
            if (p->free_fn) p->free_fn(p->data);
            p->data = data;
            p->free_fn = free_fn;
            p->version = t->version;
            return;
        }
    ap_packed *p = calloc(1, sizeof *p);
    if (!p) {
        if (free_fn) free_fn(data);
        return;
    }
    p->kind = kind;
    p->data = data;
    p->free_fn = free_fn;
    p->version = t->version;
    p->next = t->packed;
    t->packed = p;
}

bool ap_same_shape(const ap_tensor *a, const ap_tensor *b) {
    if (a->ndim != b->ndim) return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return false;
    return true;
}

const char *ap_shape_str(const ap_tensor *t, char *buf, size_t n) {
    size_t o = 0;
    o += (size_t)snprintf(buf + o, n - o, "[");
    for (int i = 0; i < t->ndim && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, i ? ",%lld" : "%lld", (long long)t->shape[i]);
    if (o < n) snprintf(buf + o, n - o, "]");
    return buf;
}

bool ap_check_input(ap_ctx *c, const char *op, const char *arg, const ap_tensor *x, ap_dtype dt) {
    if (ap_failed(c)) return false;
    if (!x) {
        ap_seterr(c, AP_ERR_INVALID_ARG, "%s: %s is NULL", op, arg);
        return false;
    }
    if (x->dtype != dt) {
        ap_seterr(c, AP_ERR_DTYPE, "%s: %s%s%s has dtype %s, expected %s", op, arg,
                  x->name ? " " : "", x->name ? x->name : "", ap_dtype_name(x->dtype),
                  ap_dtype_name(dt));
        return false;
    }
    return true;
}

/* ------------------------------------------------------------ conversions */
float ap_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: renormalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400));
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t ap_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000;
    int32_t exp = (int32_t)((u >> 23) & 0xff);
    uint32_t man = u & 0x7fffff;
    if (exp == 0xff) return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    int32_t e = exp - 127 + 15;
    if (e >= 31) return (uint16_t)(sign | 0x7c00);
    if (e <= 0) {
        if (e < -10) return (uint16_t)sign;
        man |= 0x800000;
        uint32_t shift = (uint32_t)(14 - e);
        uint32_t half = man >> shift, rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = ((uint32_t)e << 10) | (man >> 13), rem = man & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) half++; /* may carry into exp: correct */
    return (uint16_t)(sign | half);
}

/* Float pairs go to the one set of conversion kernels (backend/cpu/convert.c),
 * in blocks of 16384 elements shared among the threads when the run is long
 * enough to pay for a parallel region. */
ap_status ap_convert(void *dst, ap_dtype dd, const void *src, ap_dtype sd, int64_t n) {
    if ((unsigned)dd >= AP_DTYPE_COUNT_ || (unsigned)sd >= AP_DTYPE_COUNT_) return AP_ERR_DTYPE;
    bool dfloat = dd <= AP_F16, sfloat = sd <= AP_F16;
    if (dfloat != sfloat) return AP_ERR_DTYPE;
    if (dd == sd) {
        memcpy(dst, src, (size_t)n * ap_dtype_size(dd));
        return AP_OK;
    }
    if (dfloat && n <= AP_CONVERT_SERIAL_MAX) { /* even a parallel region that is off costs ~1 us */
        ap_cpu_convert(dst, dd, src, sd, n);
        return AP_OK;
    }
    if (dfloat) {
        const int64_t blk = 16384;
        size_t ds = ap_dtype_size(dd), ss = ap_dtype_size(sd);
        int64_t nb = (n + blk - 1) / blk;
#pragma omp parallel for schedule(static) if (n > AP_CONVERT_SERIAL_MAX)
        for (int64_t b = 0; b < nb; b++) {
            int64_t i = b * blk;
            ap_cpu_convert((char *)dst + (size_t)i * ds, dd, (const char *)src + (size_t)i * ss, sd,
                           n - i < blk ? n - i : blk);
        }
        return AP_OK;
    }
#pragma omp parallel for schedule(static) if (n > AP_CONVERT_SERIAL_MAX)
    for (int64_t i = 0; i < n; i++) {
        if (dd == AP_I32)
            ((int32_t *)dst)[i] = (int32_t)((const int64_t *)src)[i];
        else
            ((int64_t *)dst)[i] = ((const int32_t *)src)[i];
    }
    return AP_OK;
}

ap_tensor *ap_tensor_convert(ap_ctx *c, const ap_tensor *t, ap_dtype dt) {
    if (!c || !t || ap_failed(c)) return NULL;
    ap_tensor *o = ap_tensor_new(c, dt, t->ndim, t->shape);
    if (!o) return NULL;
    if (ap_convert(ap_data(o), dt, ap_data(t), t->dtype, t->numel) != AP_OK) {
        ap_seterr(c, AP_ERR_DTYPE, "convert: cannot convert %s to %s", ap_dtype_name(t->dtype),
                  ap_dtype_name(dt));
        ap_tensor_release(o);
        return NULL;
    }
    return o;
}
