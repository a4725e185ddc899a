/* The restricted unpickler (see pickle.h).
 *
 * Safety model: the input is hostile. Every operand is read through need(),
 * which checks it lies inside the buffer; every pop checks the stack (and the
 * current MARK frame) is deep enough; memo indices are checked; strings point
 * into the input and are never NUL-terminated implicitly; all memory the
 * machine allocates is counted against AP_PK_MAX_MEMORY, so a small file cannot
 * make it allocate much; the machine itself is iterative (no recursion), and
 * the flattening walk that follows is bounded in depth and in total visits,
 * so reference cycles and shared sub-containers (which memo references allow)
 * cannot make it loop or blow up. Nothing from the input is ever executed:
 * a GLOBAL only looks its name up in the table below.
 */
#include "io/pickle.h"

#include "core/internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    const char *name;
    size_t size;
} pk_dtypes[] = {
    [AP_PK_F32] = {"F32", 4}, [AP_PK_F16] = {"F16", 2}, [AP_PK_BF16] = {"BF16", 2},
    [AP_PK_F64] = {"F64", 8}, [AP_PK_I64] = {"I64", 8}, [AP_PK_I32] = {"I32", 4},
    [AP_PK_I16] = {"I16", 2}, [AP_PK_I8] = {"I8", 1},   [AP_PK_U8] = {"U8", 1},
    [AP_PK_BOOL] = {"BOOL", 1},
};
_Static_assert(sizeof pk_dtypes / sizeof pk_dtypes[0] == AP_PK_DTYPE_COUNT_, "dtype table");

const char *ap_pk_dtype_name(ap_pk_dtype dt) {
    return (unsigned)dt < AP_PK_DTYPE_COUNT_ ? pk_dtypes[dt].name : "?";
}
size_t ap_pk_dtype_size(ap_pk_dtype dt) {
    return (unsigned)dt < AP_PK_DTYPE_COUNT_ ? pk_dtypes[dt].size : 0;
}

/* ------------------------------------------------------------ the globals we know */
typedef enum {
    G_ORDERED_DICT,
    G_REBUILD_V1,     /* torch._utils._rebuild_tensor(storage, offset, size, stride) */
    G_REBUILD_V2,     /* ... + requires_grad, hooks[, metadata] */
    G_REBUILD_V3,     /* ... + requires_grad, hooks, dtype[, metadata] (untyped storages) */
    G_REBUILD_PARAM,  /* _rebuild_parameter(tensor, requires_grad, hooks[, state]) */
    G_REBUILD_FROM_TYPE, /* torch._tensor._rebuild_from_type_v2(func, type, args, state) */
    G_STORAGE,        /* a storage class: dtype, or -1 unsupported; UNTYPED: bytes */
    G_DTYPE,          /* a torch dtype object: dtype, or -1 unsupported */
    G_PLACEHOLDER,    /* data-only class or function: calling it gives an opaque value */
} gkind;

#define UNTYPED AP_PK_DTYPE_COUNT_

typedef struct {
    const char *module, *name;
    gkind kind;
    int dtype;
} ginfo;

/* The placeholders are the data-only globals found in real SD / Lightning
 * checkpoints outside the tensors: callback classes used as dict keys or
 * pickled with their settings, numpy scalars (global_step, metrics) with their
 * dtype and bytes (_codecs.encode), sets, devices, sizes, argparse-free
 * hyper-parameters. They are accepted so that such files load; their values
 * are never needed for tensors. Everything else (os.system, builtins.eval,
 * subprocess, functools.partial, arbitrary classes...) is refused: a file that
 * names them was not written by torch.save of a state dict. */
static const ginfo globals[] = {
    {"collections", "OrderedDict", G_ORDERED_DICT, -1},
    {"torch._utils", "_rebuild_tensor", G_REBUILD_V1, -1},
    {"torch._utils", "_rebuild_tensor_v2", G_REBUILD_V2, -1},
    {"torch._utils", "_rebuild_tensor_v3", G_REBUILD_V3, -1},
    {"torch._utils", "_rebuild_parameter", G_REBUILD_PARAM, -1},
    {"torch._utils", "_rebuild_parameter_with_state", G_REBUILD_PARAM, -1},
    {"torch._tensor", "_rebuild_from_type_v2", G_REBUILD_FROM_TYPE, -1},
    {"torch", "FloatStorage", G_STORAGE, AP_PK_F32},
    {"torch", "HalfStorage", G_STORAGE, AP_PK_F16},
    {"torch", "BFloat16Storage", G_STORAGE, AP_PK_BF16},
    {"torch", "DoubleStorage", G_STORAGE, AP_PK_F64},
    {"torch", "LongStorage", G_STORAGE, AP_PK_I64},
    {"torch", "IntStorage", G_STORAGE, AP_PK_I32},
    {"torch", "ShortStorage", G_STORAGE, AP_PK_I16},
    {"torch", "CharStorage", G_STORAGE, AP_PK_I8},
    {"torch", "ByteStorage", G_STORAGE, AP_PK_U8},
    {"torch", "BoolStorage", G_STORAGE, AP_PK_BOOL},
    {"torch", "UntypedStorage", G_STORAGE, UNTYPED},
    {"torch.storage", "UntypedStorage", G_STORAGE, UNTYPED},
    {"torch", "_UntypedStorage", G_STORAGE, UNTYPED},
    {"torch", "ComplexFloatStorage", G_STORAGE, -1},
    {"torch", "ComplexDoubleStorage", G_STORAGE, -1},
    {"torch", "QInt8Storage", G_STORAGE, -1},
    {"torch", "QUInt8Storage", G_STORAGE, -1},
    {"torch", "QInt32Storage", G_STORAGE, -1},
    {"torch", "QUInt4x2Storage", G_STORAGE, -1},
    {"torch", "float32", G_DTYPE, AP_PK_F32},
    {"torch", "float16", G_DTYPE, AP_PK_F16},
    {"torch", "bfloat16", G_DTYPE, AP_PK_BF16},
    {"torch", "float64", G_DTYPE, AP_PK_F64},
    {"torch", "int64", G_DTYPE, AP_PK_I64},
    {"torch", "int32", G_DTYPE, AP_PK_I32},
    {"torch", "int16", G_DTYPE, AP_PK_I16},
    {"torch", "int8", G_DTYPE, AP_PK_I8},
    {"torch", "uint8", G_DTYPE, AP_PK_U8},
    {"torch", "bool", G_DTYPE, AP_PK_BOOL},
    {"torch", "complex32", G_DTYPE, -1},
    {"torch", "complex64", G_DTYPE, -1},
    {"torch", "complex128", G_DTYPE, -1},
    {"torch", "uint16", G_DTYPE, -1},
    {"torch", "uint32", G_DTYPE, -1},
    {"torch", "uint64", G_DTYPE, -1},
    {"torch", "float8_e4m3fn", G_DTYPE, -1},
    {"torch", "float8_e5m2", G_DTYPE, -1},
    {"torch", "float8_e4m3fnuz", G_DTYPE, -1},
    {"torch", "float8_e5m2fnuz", G_DTYPE, -1},
    {"torch", "Tensor", G_PLACEHOLDER, -1},
    {"torch.nn.parameter", "Parameter", G_PLACEHOLDER, -1},
    {"torch", "device", G_PLACEHOLDER, -1},
    {"torch", "Size", G_PLACEHOLDER, -1},
    {"pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint", G_PLACEHOLDER, -1},
    {"lightning.pytorch.callbacks.model_checkpoint", "ModelCheckpoint", G_PLACEHOLDER, -1},
    {"numpy.core.multiarray", "scalar", G_PLACEHOLDER, -1},
    {"numpy._core.multiarray", "scalar", G_PLACEHOLDER, -1},
    {"numpy.core.multiarray", "_reconstruct", G_PLACEHOLDER, -1},
    {"numpy._core.multiarray", "_reconstruct", G_PLACEHOLDER, -1},
    {"numpy", "dtype", G_PLACEHOLDER, -1},
    {"numpy", "ndarray", G_PLACEHOLDER, -1},
    {"_codecs", "encode", G_PLACEHOLDER, -1},
    {"builtins", "set", G_PLACEHOLDER, -1},
    {"__builtin__", "set", G_PLACEHOLDER, -1},
    {"builtins", "frozenset", G_PLACEHOLDER, -1},
    {"__builtin__", "frozenset", G_PLACEHOLDER, -1},
};

static const ginfo *lookup_global(const char *mod, size_t ml, const char *name, size_t nl) {
    for (size_t i = 0; i < sizeof globals / sizeof globals[0]; i++) {
        const ginfo *g = &globals[i];
        if (strlen(g->module) == ml && strlen(g->name) == nl && !memcmp(g->module, mod, ml) &&
            !memcmp(g->name, name, nl))
            return g;
    }
    return NULL;
}

/* ------------------------------------------------------------ values */
typedef enum {
    V_NONE, V_BOOL, V_INT, V_BIGINT, V_FLOAT, V_STR, V_BYTES, V_TUPLE, V_LIST, V_DICT, V_SET,
    V_GLOBAL, V_OBJECT, V_STORAGE, V_TENSOR, V_KIND_COUNT_
} vkind;

static const char *const kind_names[] = { /* with their article, for messages */
    "None", "a bool", "an int", "a big int", "a float", "a str", "bytes", "a tuple", "a list", "a dict",
    "a set", "a global", "an object", "a storage", "a tensor",
};
_Static_assert(sizeof kind_names / sizeof kind_names[0] == V_KIND_COUNT_, "kind names");

typedef struct val val;

typedef struct {
    const char *key; /* points into the pickle; not NUL-terminated */
    size_t key_len;
    int dtype;       /* ap_pk_dtype or UNTYPED */
    uint64_t nbytes;
} storage_rec;

typedef struct {
    val *storage;
    ap_pk_dtype dtype;
    int ndim;
    int64_t shape[AP_MAX_DIMS], stride[AP_MAX_DIMS];
    int64_t offset;
    uint64_t byte_end;
} tensor_rec;

struct val {
    vkind kind;
    union {
        int64_t i;                           /* BOOL, INT */
        double f;                            /* FLOAT */
        struct { const char *p; size_t n; } s; /* STR, BYTES: inside the pickle */
        struct { val **a; size_t n, cap; } seq; /* TUPLE, LIST; DICT: a[2k] key, a[2k+1] value */
        const ginfo *g;                      /* GLOBAL */
        storage_rec *st;                     /* STORAGE */
        tensor_rec *t;                       /* TENSOR */
    } u;
};

#define CHUNK_VALS 1024
typedef struct chunk {
    struct chunk *next;
    size_t used;
    val v[CHUNK_VALS];
} chunk;

typedef struct blob {
    struct blob *next;
} blob;

typedef struct {
    ap_ctx *c;
    const char *file;
    const uint8_t *d;
    size_t len, pos, op_at;
    size_t budget;      /* bytes still allowed */
    chunk *chunks;
    blob *blobs;        /* fixed-size records (storages, tensors) */
    val **stack;
    size_t sp, stack_cap;
    size_t *marks;
    size_t n_marks, marks_cap;
    val **memo;
    size_t memo_n, memo_cap, memo_count;
    val none, yes, no, empty_tuple, object;
} P;

static int perr(P *p, ap_status s, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int perr(P *p, ap_status s, const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    ap_seterr(p->c, s, "%s: data.pkl: %s", p->file, buf);
    return -1;
}

static int charge(P *p, size_t n) {
    if (n > p->budget)
        return perr(p, AP_ERR_FORMAT, "unpickling needs more than %u MiB; refusing (at byte %zu)",
                    AP_PK_MAX_MEMORY >> 20, p->op_at);
    p->budget -= n;
    return 0;
}

/* Grows *arr (elements of size el) to hold at least want; counts the growth. */
static int grow(P *p, void **arr, size_t *cap, size_t want, size_t el) {
    if (want <= *cap) return 0;
    size_t nc = *cap ? *cap * 2 : 8;
    if (nc < want) nc = want;
    if (charge(p, (nc - *cap) * el)) return -1;
    void *na = realloc(*arr, nc * el);
    if (!na) return perr(p, AP_ERR_NOMEM, "out of memory");
    *arr = na;
    *cap = nc;
    return 0;
}

static val *new_val(P *p, vkind k) {
    if (!p->chunks || p->chunks->used == CHUNK_VALS) {
        if (charge(p, sizeof(chunk))) return NULL;
        chunk *ch = malloc(sizeof *ch);
        if (!ch) {
            perr(p, AP_ERR_NOMEM, "out of memory");
            return NULL;
        }
        ch->next = p->chunks;
        ch->used = 0;
        p->chunks = ch;
    }
    val *v = &p->chunks->v[p->chunks->used++];
    memset(v, 0, sizeof *v);
    v->kind = k;
    return v;
}

static void *new_blob(P *p, size_t n) {
    if (charge(p, n + sizeof(blob))) return NULL;
    blob *b = calloc(1, sizeof(blob) + n);
    if (!b) {
        perr(p, AP_ERR_NOMEM, "out of memory");
        return NULL;
    }
    b->next = p->blobs;
    p->blobs = b;
    return b + 1;
}

static void free_machine(P *p) {
    for (chunk *ch = p->chunks, *nx; ch; ch = nx) {
        nx = ch->next;
        for (size_t i = 0; i < ch->used; i++) {
            vkind k = ch->v[i].kind;
            if (k == V_TUPLE || k == V_LIST || k == V_DICT) free(ch->v[i].u.seq.a);
        }
        free(ch);
    }
    for (blob *b = p->blobs, *nx; b; b = nx) {
        nx = b->next;
        free(b);
    }
    free(p->stack);
    free(p->marks);
    free(p->memo);
}

/* ------------------------------------------------------------ reading operands */
static const uint8_t *need(P *p, size_t n) {
    if (n > p->len - p->pos) {
        perr(p, AP_ERR_FORMAT, "truncated: opcode 0x%02x at byte %zu needs %zu more bytes",
             p->d[p->op_at], p->op_at, n);
        return NULL;
    }
    const uint8_t *q = p->d + p->pos;
    p->pos += n;
    return q;
}

static uint64_t le(const uint8_t *q, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | q[i];
    return v;
}

/* A text line ending in '\n' (GLOBAL operands). */
static int read_line(P *p, const char **s, size_t *n) {
    const uint8_t *start = p->d + p->pos;
    size_t left = p->len - p->pos, max = left < 1024 ? left : 1024;
    const uint8_t *nl = memchr(start, '\n', max);
    if (!nl) return perr(p, AP_ERR_FORMAT, "GLOBAL at byte %zu: name without end of line", p->op_at);
    *s = (const char *)start;
    *n = (size_t)(nl - start);
    p->pos += *n + 1;
    return 0;
}

/* ------------------------------------------------------------ stack */
static size_t frame_base(const P *p) { return p->n_marks ? p->marks[p->n_marks - 1] : 0; }

static int push(P *p, val *v) {
    if (!v) return -1;
    if (grow(p, (void **)&p->stack, &p->stack_cap, p->sp + 1, sizeof(val *))) return -1;
    p->stack[p->sp++] = v;
    return 0;
}

static val *pop(P *p) {
    if (p->sp <= frame_base(p)) {
        perr(p, AP_ERR_FORMAT, "stack underflow at byte %zu (opcode 0x%02x)", p->op_at, p->d[p->op_at]);
        return NULL;
    }
    return p->stack[--p->sp];
}

static val *top(P *p) {
    if (p->sp <= frame_base(p)) {
        perr(p, AP_ERR_FORMAT, "stack underflow at byte %zu (opcode 0x%02x)", p->op_at, p->d[p->op_at]);
        return NULL;
    }
    return p->stack[p->sp - 1];
}

/* Pops the items above the innermost MARK, and the mark: items are
 * stack[*first .. *first + *n). */
static int pop_mark(P *p, size_t *first, size_t *n) {
    if (!p->n_marks)
        return perr(p, AP_ERR_FORMAT, "opcode 0x%02x at byte %zu without a MARK", p->d[p->op_at], p->op_at);
    *first = p->marks[--p->n_marks];
    *n = p->sp - *first;
    p->sp = *first;
    return 0;
}

static int seq_append(P *p, val *s, val *item) {
    if (grow(p, (void **)&s->u.seq.a, &s->u.seq.cap, s->u.seq.n + 1, sizeof(val *))) return -1;
    s->u.seq.a[s->u.seq.n++] = item;
    return 0;
}

static val *new_tuple(P *p, val *const *items, size_t n) {
    if (n == 0) return &p->empty_tuple;
    val *t = new_val(p, V_TUPLE);
    if (!t || grow(p, (void **)&t->u.seq.a, &t->u.seq.cap, n, sizeof(val *))) return NULL;
    memcpy(t->u.seq.a, items, n * sizeof(val *));
    t->u.seq.n = n;
    return t;
}

/* ------------------------------------------------------------ memo */
static int memo_put(P *p, uint64_t idx) {
    val *v = top(p);
    if (!v) return -1;
    /* CPython's pickler numbers memo entries 0, 1, 2, ...; allow some slack but
     * never a sparse table that a few bytes could make huge. */
    if (idx > p->memo_n + 1024)
        return perr(p, AP_ERR_FORMAT, "memo index %llu at byte %zu is far out of sequence",
                    (unsigned long long)idx, p->op_at);
    if (idx >= p->memo_n) {
        if (grow(p, (void **)&p->memo, &p->memo_cap, idx + 1, sizeof(val *))) return -1;
        for (size_t i = p->memo_n; i <= idx; i++) p->memo[i] = NULL;
        p->memo_n = idx + 1;
    }
    if (!p->memo[idx]) p->memo_count++;
    p->memo[idx] = v;
    return 0;
}

static int memo_get(P *p, uint64_t idx) {
    if (idx >= p->memo_n || !p->memo[idx])
        return perr(p, AP_ERR_FORMAT, "memo index %llu at byte %zu was never stored",
                    (unsigned long long)idx, p->op_at);
    return push(p, p->memo[idx]);
}

/* ------------------------------------------------------------ torch objects */
static int as_int(P *p, const val *v, const char *what, int64_t *out) {
    if (v->kind != V_INT)
        return perr(p, AP_ERR_FORMAT, "tensor %s is %s, not an int (REDUCE at byte %zu)", what,
                    kind_names[v->kind], p->op_at);
    if (v->u.i < 0)
        return perr(p, AP_ERR_FORMAT, "tensor %s is negative (%lld) (REDUCE at byte %zu)", what,
                    (long long)v->u.i, p->op_at);
    *out = v->u.i;
    return 0;
}

static int int_seq(P *p, const val *v, const char *what, int64_t *out, int *n) {
    if (v->kind != V_TUPLE && v->kind != V_LIST)
        return perr(p, AP_ERR_FORMAT, "tensor %s is %s, not a tuple (REDUCE at byte %zu)", what,
                    kind_names[v->kind], p->op_at);
    if (v->u.seq.n > AP_MAX_DIMS)
        return perr(p, AP_ERR_UNSUPPORTED, "a tensor has %zu dims (at most %d are supported)",
                    v->u.seq.n, AP_MAX_DIMS);
    for (size_t i = 0; i < v->u.seq.n; i++)
        if (as_int(p, v->u.seq.a[i], what, &out[i])) return -1;
    *n = (int)v->u.seq.n;
    return 0;
}

static val *persistent_load(P *p, val *pid) {
    if (pid->kind != V_TUPLE || pid->u.seq.n != 5) {
        perr(p, AP_ERR_FORMAT, "persistent id at byte %zu is %s, not ('storage', type, key, location, numel)",
             p->op_at, pid->kind == V_TUPLE ? "tuple of another length" : kind_names[pid->kind]);
        return NULL;
    }
    val **a = pid->u.seq.a;
    if (a[0]->kind != V_STR || a[0]->u.s.n != 7 || memcmp(a[0]->u.s.p, "storage", 7)) {
        perr(p, AP_ERR_UNSUPPORTED, "persistent id at byte %zu is not a 'storage'", p->op_at);
        return NULL;
    }
    if (a[1]->kind != V_GLOBAL || a[1]->u.g->kind != G_STORAGE) {
        perr(p, AP_ERR_FORMAT, "persistent id at byte %zu: storage type is %s", p->op_at,
             a[1]->kind == V_GLOBAL ? a[1]->u.g->name : kind_names[a[1]->kind]);
        return NULL;
    }
    const ginfo *g = a[1]->u.g;
    if (g->dtype < 0) {
        perr(p, AP_ERR_UNSUPPORTED, "storage type '%s %s' is not supported", g->module, g->name);
        return NULL;
    }
    if (a[2]->kind != V_STR || a[2]->u.s.n == 0 || a[2]->u.s.n > 256 ||
        memchr(a[2]->u.s.p, '/', a[2]->u.s.n) || memchr(a[2]->u.s.p, '\0', a[2]->u.s.n)) {
        perr(p, AP_ERR_FORMAT, "persistent id at byte %zu: bad storage key", p->op_at);
        return NULL;
    }
    if (a[3]->kind != V_STR) {
        perr(p, AP_ERR_FORMAT, "persistent id at byte %zu: location is %s", p->op_at, kind_names[a[3]->kind]);
        return NULL;
    }
    if (a[4]->kind != V_INT || a[4]->u.i < 0) {
        perr(p, AP_ERR_FORMAT, "persistent id at byte %zu: bad element count", p->op_at);
        return NULL;
    }
    uint64_t el = g->dtype == UNTYPED ? 1 : pk_dtypes[g->dtype].size, nbytes;
    if (__builtin_mul_overflow((uint64_t)a[4]->u.i, el, &nbytes)) {
        perr(p, AP_ERR_FORMAT, "persistent id at byte %zu: storage size overflows", p->op_at);
        return NULL;
    }
    storage_rec *st = new_blob(p, sizeof *st);
    val *v = st ? new_val(p, V_STORAGE) : NULL;
    if (!v) return NULL;
    st->key = a[2]->u.s.p;
    st->key_len = a[2]->u.s.n;
    st->dtype = g->dtype;
    st->nbytes = nbytes;
    v->u.st = st;
    return v;
}

/* _rebuild_tensor{,_v2,_v3}(storage, offset, size, stride, ...) */
static val *rebuild_tensor(P *p, gkind k, val *args) {
    size_t n = args->u.seq.n;
    bool ok = (k == G_REBUILD_V1 && n == 4) || (k == G_REBUILD_V2 && (n == 6 || n == 7)) ||
              (k == G_REBUILD_V3 && (n == 7 || n == 8));
    if (!ok) {
        perr(p, AP_ERR_FORMAT, "tensor rebuild at byte %zu with %zu arguments", p->op_at, n);
        return NULL;
    }
    val **a = args->u.seq.a;
    if (a[0]->kind != V_STORAGE) {
        perr(p, AP_ERR_FORMAT, "tensor rebuild at byte %zu: storage is %s", p->op_at, kind_names[a[0]->kind]);
        return NULL;
    }
    tensor_rec *t = new_blob(p, sizeof *t);
    if (!t) return NULL;
    int nd_stride;
    if (as_int(p, a[1], "storage offset", &t->offset) || int_seq(p, a[2], "size", t->shape, &t->ndim) ||
        int_seq(p, a[3], "stride", t->stride, &nd_stride))
        return NULL;
    if (nd_stride != t->ndim) {
        perr(p, AP_ERR_FORMAT, "tensor rebuild at byte %zu: %d sizes but %d strides", p->op_at, t->ndim, nd_stride);
        return NULL;
    }
    const storage_rec *st = a[0]->u.st;
    int dt = st->dtype;
    if (k == G_REBUILD_V3) {
        if (a[6]->kind != V_GLOBAL || a[6]->u.g->kind != G_DTYPE) {
            perr(p, AP_ERR_FORMAT, "tensor rebuild at byte %zu: dtype argument is %s", p->op_at,
                 kind_names[a[6]->kind]);
            return NULL;
        }
        if (a[6]->u.g->dtype < 0) {
            perr(p, AP_ERR_UNSUPPORTED, "dtype 'torch.%s' is not supported", a[6]->u.g->name);
            return NULL;
        }
        dt = a[6]->u.g->dtype;
    }
    if (dt == UNTYPED) {
        perr(p, AP_ERR_FORMAT, "tensor at byte %zu is built on an untyped storage without a dtype", p->op_at);
        return NULL;
    }
    t->storage = a[0];
    t->dtype = (ap_pk_dtype)dt;
    /* bytes [offset*el, (offset + sum((size-1)*stride) + 1)*el) must lie in the storage */
    uint64_t el = pk_dtypes[dt].size, last = (uint64_t)t->offset, numel = 1, end;
    bool ovf = false;
    for (int i = 0; i < t->ndim; i++) ovf |= __builtin_mul_overflow(numel, (uint64_t)t->shape[i], &numel);
    if (!ovf && numel > 0) {
        for (int i = 0; i < t->ndim; i++) {
            uint64_t span;
            ovf |= __builtin_mul_overflow((uint64_t)(t->shape[i] - 1), (uint64_t)t->stride[i], &span);
            ovf |= __builtin_add_overflow(last, span, &last);
        }
        ovf |= __builtin_add_overflow(last, 1, &last);
    }
    ovf |= __builtin_mul_overflow(last, el, &end) || numel > (UINT64_C(1) << 60);
    if (ovf) {
        perr(p, AP_ERR_FORMAT, "tensor at byte %zu: size, stride and offset overflow", p->op_at);
        return NULL;
    }
    t->byte_end = end;
    val *v = new_val(p, V_TENSOR);
    if (v) v->u.t = t;
    return v;
}

/* What REDUCE / NEWOBJ make of callable(args). Never runs anything. */
static val *call(P *p, val *fn, val *args, bool newobj) {
    if (fn->kind != V_GLOBAL) {
        perr(p, AP_ERR_FORMAT, "%s at byte %zu calls %s", newobj ? "NEWOBJ" : "REDUCE", p->op_at,
             kind_names[fn->kind]);
        return NULL;
    }
    if (args->kind != V_TUPLE) {
        perr(p, AP_ERR_FORMAT, "%s at byte %zu: arguments are %s, not a tuple",
             newobj ? "NEWOBJ" : "REDUCE", p->op_at, kind_names[args->kind]);
        return NULL;
    }
    const ginfo *g = fn->u.g;
    size_t n = args->u.seq.n;
    val **a = args->u.seq.a;
    switch (g->kind) {
    case G_ORDERED_DICT: {
        val *d = new_val(p, V_DICT);
        if (!d || newobj || n == 0) return d;
        /* OrderedDict([(k, v), ...]) */
        if (n != 1 || (a[0]->kind != V_LIST && a[0]->kind != V_TUPLE)) break;
        for (size_t i = 0; i < a[0]->u.seq.n; i++) {
            val *pr = a[0]->u.seq.a[i];
            if ((pr->kind != V_TUPLE && pr->kind != V_LIST) || pr->u.seq.n != 2) goto bad;
            if (seq_append(p, d, pr->u.seq.a[0]) || seq_append(p, d, pr->u.seq.a[1])) return NULL;
        }
        return d;
    }
    case G_REBUILD_V1:
    case G_REBUILD_V2:
    case G_REBUILD_V3:
        if (newobj) break;
        return rebuild_tensor(p, g->kind, args);
    case G_REBUILD_PARAM:
        if (newobj || n < 3 || n > 4 || a[0]->kind != V_TENSOR) break;
        return a[0];
    case G_REBUILD_FROM_TYPE: {
        /* (func, type, args, state): the tensor is func(*args); type and state are dropped */
        if (newobj || n != 4 || a[0]->kind != V_GLOBAL || a[2]->kind != V_TUPLE) break;
        gkind fk = a[0]->u.g->kind;
        if (fk != G_REBUILD_V1 && fk != G_REBUILD_V2 && fk != G_REBUILD_V3 && fk != G_REBUILD_PARAM) break;
        return call(p, a[0], a[2], false);
    }
    case G_PLACEHOLDER:
        return &p->object;
    case G_STORAGE:
    case G_DTYPE:
        break;
    }
bad:
    perr(p, AP_ERR_FORMAT, "%s at byte %zu: unexpected call of '%s %s' with %zu arguments",
         newobj ? "NEWOBJ" : "REDUCE", p->op_at, g->module, g->name, n);
    return NULL;
}

/* ------------------------------------------------------------ the machine */
static int op_global(P *p, const char *mod, size_t ml, const char *name, size_t nl) {
    const ginfo *g = lookup_global(mod, ml, name, nl);
    if (!g) {
        char m[128], nm[128];
        snprintf(m, sizeof m, "%.*s", (int)(ml < 100 ? ml : 100), mod);
        snprintf(nm, sizeof nm, "%.*s", (int)(nl < 100 ? nl : 100), name);
        for (char *q = m; *q; q++) if ((unsigned char)*q < 32) *q = '?';
        for (char *q = nm; *q; q++) if ((unsigned char)*q < 32) *q = '?';
        return perr(p, AP_ERR_UNSUPPORTED,
                    "uses forbidden global '%s %s' (at byte %zu); refusing to load (loading never runs code)",
                    m, nm, p->op_at);
    }
    val *v = new_val(p, V_GLOBAL);
    if (!v) return -1;
    v->u.g = g;
    return push(p, v);
}

static int op_string(P *p, uint64_t n, vkind k) {
    if (n > p->len - p->pos)
        return perr(p, AP_ERR_FORMAT, "truncated: string of %llu bytes at byte %zu", (unsigned long long)n, p->op_at);
    val *v = new_val(p, k);
    if (!v) return -1;
    v->u.s.p = (const char *)p->d + p->pos;
    v->u.s.n = (size_t)n;
    p->pos += (size_t)n;
    return push(p, v);
}

static int op_int(P *p, int64_t i) {
    val *v = new_val(p, V_INT);
    if (!v) return -1;
    v->u.i = i;
    return push(p, v);
}

/* LONG1 / LONG4: little-endian two's complement of n bytes. */
static int op_long(P *p, uint64_t n) {
    const uint8_t *q = need(p, (size_t)n);
    if (!q) return -1;
    if (n == 0) return op_int(p, 0);
    uint8_t sign = (q[n - 1] & 0x80) ? 0xff : 0;
    /* bytes beyond the 8th must be pure sign extension for the value to fit */
    for (uint64_t i = 8; i < n; i++)
        if (q[i] != sign) return push(p, new_val(p, V_BIGINT));
    if (n > 8 && ((q[7] ^ sign) & 0x80)) return push(p, new_val(p, V_BIGINT));
    uint64_t u = 0;
    for (int i = 7; i >= 0; i--) u = u << 8 | ((uint64_t)i < n ? q[i] : sign);
    int64_t s;
    memcpy(&s, &u, 8);
    return op_int(p, s);
}

static int run(P *p, val **result) {
    for (;;) {
        if (p->pos >= p->len) return perr(p, AP_ERR_FORMAT, "truncated: ends without STOP");
        p->op_at = p->pos;
        uint8_t op = p->d[p->pos++];
        const uint8_t *q;
        size_t first, n;
        val *a, *b, *c;
        switch (op) {
        case 0x80: /* PROTO */
            if (!(q = need(p, 1))) return -1;
            if (q[0] > 5) return perr(p, AP_ERR_UNSUPPORTED, "pickle protocol %d", q[0]);
            break;
        case 0x95: /* FRAME: a length hint; the bytes follow inline */
            if (!(q = need(p, 8))) return -1;
            if (le(q, 8) > p->len - p->pos) return perr(p, AP_ERR_FORMAT, "truncated: FRAME at byte %zu", p->op_at);
            break;
        case '.': /* STOP */
            if (!(*result = pop(p))) return -1;
            return 0;
        case 'c': { /* GLOBAL module\nname\n */
            const char *m, *nm;
            size_t ml, nl;
            if (read_line(p, &m, &ml) || read_line(p, &nm, &nl) || op_global(p, m, ml, nm, nl)) return -1;
            break;
        }
        case 0x93: /* STACK_GLOBAL */
            if (!(b = pop(p)) || !(a = pop(p))) return -1;
            if (a->kind != V_STR || b->kind != V_STR)
                return perr(p, AP_ERR_FORMAT, "STACK_GLOBAL at byte %zu on %s and %s", p->op_at,
                            kind_names[a->kind], kind_names[b->kind]);
            if (op_global(p, a->u.s.p, a->u.s.n, b->u.s.p, b->u.s.n)) return -1;
            break;
        case 'q': /* BINPUT */
            if (!(q = need(p, 1)) || memo_put(p, q[0])) return -1;
            break;
        case 'r': /* LONG_BINPUT */
            if (!(q = need(p, 4)) || memo_put(p, le(q, 4))) return -1;
            break;
        case 0x94: /* MEMOIZE */
            if (memo_put(p, p->memo_count)) return -1;
            break;
        case 'h': /* BINGET */
            if (!(q = need(p, 1)) || memo_get(p, q[0])) return -1;
            break;
        case 'j': /* LONG_BINGET */
            if (!(q = need(p, 4)) || memo_get(p, le(q, 4))) return -1;
            break;
        case '(': /* MARK */
            if (grow(p, (void **)&p->marks, &p->marks_cap, p->n_marks + 1, sizeof(size_t))) return -1;
            p->marks[p->n_marks++] = p->sp;
            break;
        case '0': /* POP */
            if (!pop(p)) return -1;
            break;
        case '1': /* POP_MARK */
            if (pop_mark(p, &first, &n)) return -1;
            break;
        case 't': /* TUPLE */
            if (pop_mark(p, &first, &n) || push(p, new_tuple(p, n ? p->stack + first : NULL, n))) return -1;
            break;
        case 0x85: /* TUPLE1 */
        case 0x86: /* TUPLE2 */
        case 0x87: /* TUPLE3 */
            n = (size_t)(op - 0x84);
            if (p->sp < frame_base(p) + n)
                return perr(p, AP_ERR_FORMAT, "stack underflow at byte %zu (opcode 0x%02x)", p->op_at, op);
            p->sp -= n;
            if (push(p, new_tuple(p, p->stack + p->sp, n))) return -1;
            break;
        case ')': /* EMPTY_TUPLE */
            if (push(p, &p->empty_tuple)) return -1;
            break;
        case ']': /* EMPTY_LIST */
            if (push(p, new_val(p, V_LIST))) return -1;
            break;
        case '}': /* EMPTY_DICT */
            if (push(p, new_val(p, V_DICT))) return -1;
            break;
        case 0x8f: /* EMPTY_SET: a placeholder; its items are dropped */
            if (push(p, new_val(p, V_SET))) return -1;
            break;
        case 0x91: /* FROZENSET */
            if (pop_mark(p, &first, &n) || push(p, new_val(p, V_SET))) return -1;
            break;
        case 0x90: /* ADDITEMS */
            if (pop_mark(p, &first, &n) || !(a = top(p))) return -1;
            if (a->kind != V_SET && a != &p->object)
                return perr(p, AP_ERR_FORMAT, "ADDITEMS at byte %zu on %s", p->op_at, kind_names[a->kind]);
            break;
        case 'a': /* APPEND */
            if (!(b = pop(p)) || !(a = top(p))) return -1;
            if (a->kind == V_LIST) {
                if (seq_append(p, a, b)) return -1;
            } else if (a != &p->object) {
                return perr(p, AP_ERR_FORMAT, "APPEND at byte %zu on %s", p->op_at, kind_names[a->kind]);
            }
            break;
        case 'e': /* APPENDS */
            if (pop_mark(p, &first, &n) || !(a = top(p))) return -1;
            if (a->kind == V_LIST) {
                for (size_t i = 0; i < n; i++)
                    if (seq_append(p, a, p->stack[first + i])) return -1;
            } else if (a != &p->object) {
                return perr(p, AP_ERR_FORMAT, "APPENDS at byte %zu on %s", p->op_at, kind_names[a->kind]);
            }
            break;
        case 's': /* SETITEM */
            if (!(c = pop(p)) || !(b = pop(p)) || !(a = top(p))) return -1;
            if (a->kind == V_DICT) {
                if (seq_append(p, a, b) || seq_append(p, a, c)) return -1;
            } else if (a != &p->object) {
                return perr(p, AP_ERR_FORMAT, "SETITEM at byte %zu on %s", p->op_at, kind_names[a->kind]);
            }
            break;
        case 'u': /* SETITEMS */
            if (pop_mark(p, &first, &n) || !(a = top(p))) return -1;
            if (n % 2) return perr(p, AP_ERR_FORMAT, "SETITEMS at byte %zu with an odd item count", p->op_at);
            if (a->kind == V_DICT) {
                for (size_t i = 0; i < n; i++)
                    if (seq_append(p, a, p->stack[first + i])) return -1;
            } else if (a != &p->object) {
                return perr(p, AP_ERR_FORMAT, "SETITEMS at byte %zu on %s", p->op_at, kind_names[a->kind]);
            }
            break;
        case 'X': /* BINUNICODE */
            if (!(q = need(p, 4)) || op_string(p, le(q, 4), V_STR)) return -1;
            break;
        case 0x8c: /* SHORT_BINUNICODE */
            if (!(q = need(p, 1)) || op_string(p, q[0], V_STR)) return -1;
            break;
        case 0x8d: /* BINUNICODE8 */
            if (!(q = need(p, 8)) || op_string(p, le(q, 8), V_STR)) return -1;
            break;
        case 'U': /* SHORT_BINSTRING */
            if (!(q = need(p, 1)) || op_string(p, q[0], V_STR)) return -1;
            break;
        case 'T': /* BINSTRING: signed length */
            if (!(q = need(p, 4))) return -1;
            if (q[3] & 0x80) return perr(p, AP_ERR_FORMAT, "BINSTRING at byte %zu with a negative length", p->op_at);
            if (op_string(p, le(q, 4), V_STR)) return -1;
            break;
        case 'C': /* SHORT_BINBYTES */
            if (!(q = need(p, 1)) || op_string(p, q[0], V_BYTES)) return -1;
            break;
        case 'B': /* BINBYTES */
            if (!(q = need(p, 4)) || op_string(p, le(q, 4), V_BYTES)) return -1;
            break;
        case 0x8e: /* BINBYTES8 */
            if (!(q = need(p, 8)) || op_string(p, le(q, 8), V_BYTES)) return -1;
            break;
        case 'J': /* BININT: signed 32-bit */
            if (!(q = need(p, 4)) || op_int(p, (int32_t)(uint32_t)le(q, 4))) return -1;
            break;
        case 'K': /* BININT1 */
            if (!(q = need(p, 1)) || op_int(p, q[0])) return -1;
            break;
        case 'M': /* BININT2 */
            if (!(q = need(p, 2)) || op_int(p, (int64_t)le(q, 2))) return -1;
            break;
        case 0x8a: /* LONG1 */
            if (!(q = need(p, 1)) || op_long(p, q[0])) return -1;
            break;
        case 0x8b: /* LONG4: signed length */
            if (!(q = need(p, 4))) return -1;
            if (q[3] & 0x80) return perr(p, AP_ERR_FORMAT, "LONG4 at byte %zu with a negative length", p->op_at);
            if (op_long(p, le(q, 4))) return -1;
            break;
        case 'G': { /* BINFLOAT: big-endian IEEE double */
            if (!(q = need(p, 8))) return -1;
            uint64_t u = 0;
            for (int i = 0; i < 8; i++) u = u << 8 | q[i];
            if (!(a = new_val(p, V_FLOAT))) return -1;
            memcpy(&a->u.f, &u, 8);
            if (push(p, a)) return -1;
            break;
        }
        case 'N': /* NONE */
            if (push(p, &p->none)) return -1;
            break;
        case 0x88: /* NEWTRUE */
            if (push(p, &p->yes)) return -1;
            break;
        case 0x89: /* NEWFALSE */
            if (push(p, &p->no)) return -1;
            break;
        case 'R': /* REDUCE */
            if (!(b = pop(p)) || !(a = pop(p)) || push(p, call(p, a, b, false))) return -1;
            break;
        case 0x81: /* NEWOBJ */
            if (!(b = pop(p)) || !(a = pop(p)) || push(p, call(p, a, b, true))) return -1;
            break;
        case 0x92: /* NEWOBJ_EX: kwargs are dropped */
            if (!(c = pop(p)) || !(b = pop(p)) || !(a = pop(p))) return -1;
            if (c->kind != V_DICT)
                return perr(p, AP_ERR_FORMAT, "NEWOBJ_EX at byte %zu: keyword arguments are %s", p->op_at,
                            kind_names[c->kind]);
            if (push(p, call(p, a, b, true))) return -1;
            break;
        case 'b': /* BUILD: object state (OrderedDict _metadata, placeholder attributes) is dropped */
            if (!pop(p) || !top(p)) return -1;
            break;
        case 'Q': /* BINPERSID */
            if (!(a = pop(p)) || push(p, persistent_load(p, a))) return -1;
            break;
        default:
            if (op >= 0x20 && op < 0x7f)
                return perr(p, AP_ERR_UNSUPPORTED, "unsupported pickle opcode 0x%02x ('%c') at byte %zu", op, op,
                            p->op_at);
            return perr(p, AP_ERR_UNSUPPORTED, "unsupported pickle opcode 0x%02x at byte %zu", op, p->op_at);
        }
    }
}

/* ------------------------------------------------------------ flattening */
typedef struct {
    P *p;
    ap_pk_state *out;
    size_t cap;
    uint64_t visits, max_visits;
    char name[AP_PK_MAX_NAME + 1];
} F;

static int add_tensor(F *f, const val *v, size_t len) {
    P *p = f->p;
    const tensor_rec *t = v->u.t;
    const storage_rec *st = t->storage->u.st;
    if (t->byte_end > st->nbytes)
        return perr(p, AP_ERR_FORMAT,
                    "tensor '%s' needs %llu bytes of storage '%.*s' but the storage holds %llu",
                    f->name, (unsigned long long)t->byte_end, (int)st->key_len, st->key,
                    (unsigned long long)st->nbytes);
    ap_pk_state *o = f->out;
    if (grow(p, (void **)&o->tensors, &f->cap, (size_t)o->count + 1, sizeof(ap_pk_tensor))) return -1;
    if (o->count == INT32_MAX) return perr(p, AP_ERR_FORMAT, "too many tensors");
    ap_pk_tensor *r = &o->tensors[o->count];
    memset(r, 0, sizeof *r);
    if (charge(p, len + 1 + st->key_len + 1)) return -1;
    r->name = malloc(len + 1);
    r->storage_key = malloc(st->key_len + 1);
    o->count++; /* counted before checking, so that free releases whichever succeeded */
    if (!r->name || !r->storage_key) return perr(p, AP_ERR_NOMEM, "out of memory");
    memcpy(r->name, f->name, len + 1);
    memcpy(r->storage_key, st->key, st->key_len);
    r->storage_key[st->key_len] = 0;
    r->dtype = t->dtype;
    r->ndim = t->ndim;
    memcpy(r->shape, t->shape, sizeof r->shape);
    memcpy(r->stride, t->stride, sizeof r->stride);
    r->offset = t->offset;
    r->storage_bytes = st->nbytes;
    r->byte_end = t->byte_end;
    return 0;
}

/* Appends ".piece" (or "piece" at the root) to the name; returns the new length or -1. */
static long name_push(F *f, size_t len, const char *piece, size_t n) {
    size_t sep = len ? 1 : 0;
    if (len + sep + n > AP_PK_MAX_NAME) {
        perr(f->p, AP_ERR_FORMAT, "a tensor name is longer than %d bytes", AP_PK_MAX_NAME);
        return -1;
    }
    if (memchr(piece, '\0', n)) {
        perr(f->p, AP_ERR_FORMAT, "a dict key holds a NUL byte");
        return -1;
    }
    if (sep) f->name[len] = '.';
    memcpy(f->name + len + sep, piece, n);
    f->name[len + sep + n] = 0;
    return (long)(len + sep + n);
}

static int walk(F *f, const val *v, size_t len, int depth) {
    if (++f->visits > f->max_visits)
        return perr(f->p, AP_ERR_FORMAT, "the object graph is too large to flatten (shared or cyclic containers)");
    if (v->kind == V_TENSOR) return add_tensor(f, v, len);
    if (v->kind != V_DICT && v->kind != V_LIST && v->kind != V_TUPLE) return 0;
    if (depth >= AP_PK_MAX_DEPTH)
        return perr(f->p, AP_ERR_FORMAT, "containers nested deeper than %d levels (at '%s')", AP_PK_MAX_DEPTH,
                    f->name);
    bool dict = v->kind == V_DICT;
    size_t n = dict ? v->u.seq.n / 2 : v->u.seq.n;
    for (size_t i = 0; i < n; i++) {
        const val *key = dict ? v->u.seq.a[2 * i] : NULL, *item = v->u.seq.a[dict ? 2 * i + 1 : i];
        char num[24];
        const char *piece = num;
        size_t pn;
        if (!dict) {
            pn = (size_t)snprintf(num, sizeof num, "%zu", i);
        } else if (key->kind == V_STR) {
            piece = key->u.s.p;
            pn = key->u.s.n;
        } else if (key->kind == V_INT) {
            pn = (size_t)snprintf(num, sizeof num, "%lld", (long long)key->u.i);
        } else {
            continue; /* keys that are classes, tuples, ...: not part of a state dict */
        }
        long nl = name_push(f, len, piece, pn);
        if (nl < 0 || walk(f, item, (size_t)nl, depth + 1)) return -1;
        f->name[len] = 0;
    }
    return 0;
}

static int cmp_names(const void *a, const void *b) {
    return strcmp((*(const ap_pk_tensor *const *)a)->name, (*(const ap_pk_tensor *const *)b)->name);
}

static int flatten(P *p, val *root, ap_pk_state *out) {
    if (root->kind == V_DICT) {
        /* a Lightning / LDM checkpoint: the weights are under 'state_dict' (last one wins, as in Python) */
        val *sd = NULL;
        for (size_t i = 0; i + 1 < root->u.seq.n; i += 2) {
            const val *k = root->u.seq.a[i];
            if (k->kind == V_STR && k->u.s.n == 10 && !memcmp(k->u.s.p, "state_dict", 10))
                sd = root->u.seq.a[i + 1];
        }
        if (sd && sd->kind == V_DICT) {
            root = sd;
            out->from_state_dict = 1;
        }
    }
    if (root->kind != V_DICT && root->kind != V_LIST && root->kind != V_TUPLE && root->kind != V_TENSOR)
        return perr(p, AP_ERR_FORMAT, "the top-level object (%s) is not a dict of tensors", kind_names[root->kind]);
    F *f = calloc(1, sizeof *f);
    if (!f) return perr(p, AP_ERR_NOMEM, "out of memory");
    f->p = p;
    f->out = out;
    /* each container item was pushed by at least one opcode byte; shared
     * sub-containers may be walked a few times, cycles are cut here */
    f->max_visits = 4 * (uint64_t)p->len + 1024;
    int rc = walk(f, root, 0, 0);
    free(f);
    if (rc || out->count < 2) return rc;
    /* Python dicts have unique keys; a clash here comes from nesting ("a.b" and a->b) or a crafted file */
    ap_pk_tensor **idx = malloc((size_t)out->count * sizeof *idx);
    if (!idx) return perr(p, AP_ERR_NOMEM, "out of memory");
    for (int i = 0; i < out->count; i++) idx[i] = &out->tensors[i];
    qsort(idx, (size_t)out->count, sizeof *idx, cmp_names);
    for (int i = 1; i < out->count; i++) {
        if (!strcmp(idx[i - 1]->name, idx[i]->name)) {
            rc = perr(p, AP_ERR_FORMAT, "two tensors are named '%s'", idx[i]->name);
            break;
        }
    }
    free(idx);
    return rc;
}

void ap_pk_state_free(ap_pk_state *s) {
    if (!s) return;
    for (int i = 0; i < s->count; i++) {
        free(s->tensors[i].name);
        free(s->tensors[i].storage_key);
    }
    free(s->tensors);
    memset(s, 0, sizeof *s);
}

ap_status ap_pk_load_state(ap_ctx *c, const char *file, const uint8_t *data, size_t len, ap_pk_state *out) {
    if (!out) return AP_ERR_INVALID_ARG;
    memset(out, 0, sizeof *out);
    if (!c) return AP_ERR_INVALID_ARG;
    if (ap_failed(c)) return c->status;
    if (!file) file = "(memory)";
    if (!data && len) return ap_seterr(c, AP_ERR_INVALID_ARG, "%s: data.pkl: no data", file);
    if (len > AP_PK_MAX_BYTES)
        return ap_seterr(c, AP_ERR_UNSUPPORTED, "%s: data.pkl is %zu bytes (at most %u MiB are read)", file, len,
                         AP_PK_MAX_BYTES >> 20);
    P *p = calloc(1, sizeof *p);
    if (!p) return ap_seterr(c, AP_ERR_NOMEM, "%s: data.pkl: out of memory", file);
    p->c = c;
    p->file = file;
    p->d = data;
    p->len = len;
    p->budget = AP_PK_MAX_MEMORY;
    p->none.kind = V_NONE;
    p->yes.kind = V_BOOL;
    p->yes.u.i = 1;
    p->no.kind = V_BOOL;
    p->empty_tuple.kind = V_TUPLE;
    p->object.kind = V_OBJECT;
    val *root = NULL;
    int rc = run(p, &root);
    if (!rc) rc = flatten(p, root, out);
    free_machine(p);
    ap_status st = rc ? c->status : AP_OK;
    if (rc) ap_pk_state_free(out);
    free(p);
    return st;
}
