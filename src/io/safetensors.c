/* safetensors: a validating reader over a read-only mapping, and an atomic
 * writer. The format and the reference rules are in shared/spec/SD_FACTS.md
 * section 8.1: u64 LE header length N, N bytes of UTF-8 JSON, then the data
 * buffer that the tensors' data_offsets index.
 *
 * The reader trusts nothing in the file: every length and offset is checked
 * against the file before any tensor byte is touched, and all size arithmetic
 * is overflow-checked, so a hostile file yields AP_ERR_FORMAT and a message
 * naming the file (and the tensor), never a read outside the mapping.
 *
 * Choices where the format leaves room, as the Rust reference makes them
 * unless said otherwise (so a file accepted here is accepted there):
 * - gaps between tensors, or bytes after the last one, are errors: sorted by
 *   offset, the tensors must tile the data buffer exactly from 0. A gap would
 *   be harmless to read, but no writer makes one, and accepting it would
 *   accept files the reference refuses;
 * - duplicate tensor names, and a second __metadata__, are errors; members of
 *   a tensor entry other than dtype, shape and data_offsets are ignored, a
 *   repeated one is an error;
 * - an unknown dtype string is an error at open; a known dtype this build
 *   cannot convert (FP8, F4/F6, C64, ...) is not, so such a file can still be
 *   inspected; loading that tensor fails;
 * - JSON whitespace may come before the object (SD_FACTS asks readers to
 *   tolerate it), not a byte-order mark or anything else;
 * - duplicate __metadata__ keys are errors (stricter than the reference, whose
 *   map keeps one of them: we refuse to guess which one was meant).
 *
 * ap_st_load converts: F32/F16/BF16/F64 to f32/bf16/f16 rounding to nearest
 * even (integer arithmetic or F16C, exact whatever the FTZ/DAZ state);
 * integers and BOOL to i32/i64 exactly (a value that does not fit is
 * AP_ERR_DTYPE naming the element) and to f32/bf16/f16 rounding to nearest
 * even; floats to integers is refused (AP_ERR_DTYPE): truncating weights
 * silently is never what a caller meant. */
#include "core/internal.h"
#include "io/json.h"
#include "io/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian and is read in place: a little-endian host is assumed"
#endif

#define ST_MAX_HEADER 100000000ull /* the reference reader's limit */

/* ------------------------------------------------------------ dtypes */
typedef enum {
    K_FLOAT, /* converts to f32 / bf16 / f16 */
    K_SINT,
    K_UINT,
    K_BOOL,
    K_NONE /* known to the format, not loadable here */
} st_kind;

// clang-format off
typedef enum {
    ST_BOOL, ST_U8, ST_I8, ST_I16, ST_U16, ST_F16, ST_BF16, ST_I32, ST_U32, ST_F32, ST_F64,
    ST_I64, ST_U64, ST_C64, ST_F8_E5M2, ST_F8_E4M3, ST_F8_E4M3FNUZ, ST_F8_E5M2FNUZ, ST_F8_E8M0,
    ST_F4, ST_F6_E2M3, ST_F6_E3M2, ST_DTYPE_COUNT
} st_dtype;
// clang-format on

static const struct {
    const char *name;
    int bits;
    st_kind kind;
} st_types[] = {
    [ST_BOOL] = {"BOOL", 8, K_BOOL},
    [ST_U8] = {"U8", 8, K_UINT},
    [ST_I8] = {"I8", 8, K_SINT},
    [ST_I16] = {"I16", 16, K_SINT},
    [ST_U16] = {"U16", 16, K_UINT},
    [ST_F16] = {"F16", 16, K_FLOAT},
    [ST_BF16] = {"BF16", 16, K_FLOAT},
    [ST_I32] = {"I32", 32, K_SINT},
    [ST_U32] = {"U32", 32, K_UINT},
    [ST_F32] = {"F32", 32, K_FLOAT},
    [ST_F64] = {"F64", 64, K_FLOAT},
    [ST_I64] = {"I64", 64, K_SINT},
    [ST_U64] = {"U64", 64, K_UINT},
    [ST_C64] = {"C64", 64, K_NONE},
    [ST_F8_E5M2] = {"F8_E5M2", 8, K_NONE},
    [ST_F8_E4M3] = {"F8_E4M3", 8, K_NONE},
    [ST_F8_E4M3FNUZ] = {"F8_E4M3FNUZ", 8, K_NONE},
    [ST_F8_E5M2FNUZ] = {"F8_E5M2FNUZ", 8, K_NONE},
    [ST_F8_E8M0] = {"F8_E8M0", 8, K_NONE},
    [ST_F4] = {"F4", 4, K_NONE},
    [ST_F6_E2M3] = {"F6_E2M3", 6, K_NONE},
    [ST_F6_E3M2] = {"F6_E3M2", 6, K_NONE},
};
_Static_assert(sizeof st_types / sizeof st_types[0] == ST_DTYPE_COUNT, "safetensors dtype table");

/* The file dtype that stores each ap_dtype, and the writer's order: the Rust
 * reference sorts tensors by its Dtype enum, descending (an order by alignment
 * in which, among our types, I64 > F32 > I32 > BF16 > F16), then by name. */
static const struct {
    st_dtype st;
    int rank;
} ap_to_st[] = {
    [AP_F32] = {ST_F32, 3}, [AP_BF16] = {ST_BF16, 1}, [AP_F16] = {ST_F16, 0},
    [AP_I32] = {ST_I32, 2}, [AP_I64] = {ST_I64, 4},
};
_Static_assert(sizeof ap_to_st / sizeof ap_to_st[0] == AP_DTYPE_COUNT_, "ap_dtype -> safetensors table");

static int find_dtype(const char *s) {
    for (int i = 0; i < ST_DTYPE_COUNT; i++)
        if (!strcmp(s, st_types[i].name)) return i;
    return -1;
}

/* ------------------------------------------------------------ the handle */
typedef struct {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t *shape; // [ndim], in st->dims
    int64_t numel;
    uint64_t begin, end; /* in the data buffer */
    int order;           /* position in the header, to break offset ties */
} st_tensor;

struct ap_safetensors {
    char *path;
    const void *map; /* the whole file */
    size_t map_len;
    bool mapped;               /* map is ours to munmap (not caller's memory) */
    const unsigned char *data; /* the data buffer: map + 8 + N */
    uint64_t data_len;
    int n;
    st_tensor *t;        // [n], sorted by data_offsets
    st_tensor **by_name; // [n], sorted by name, for ap_st_find
    int64_t *dims;       /* storage of every shape */
    int n_meta;
    char **meta;         // [2*n_meta]: key, value pairs in header order
    char ***meta_by_key; // [n_meta]: pointers to the pairs, sorted by key
};

/* ------------------------------------------------------------ messages */
/* A name as it can be shown in a message: control characters escaped, long
 * names cut (at a UTF-8 character boundary) with "...". */
static const char *shown(const char *s, char *buf, size_t cap /* >= 16 */) {
    size_t o = 0, lim = cap < 200 ? cap : 200;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        /* room for an escape, up to 3 continuation bytes, "..." and the NUL */
        if (o + 12 > lim && (*p & 0xc0) != 0x80) {
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        if (*p < 0x20 || *p == 0x7f)
            o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", *p);
        else
            buf[o++] = (char)*p;
    }
    buf[o] = 0;
    return buf;
}

/* Sets "<path>: tensor '<name>': <message>" (or "<path>: <message>"). */
static ap_status st_fail(ap_ctx *c, ap_status s, const char *path, const char *tensor, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static ap_status st_fail(ap_ctx *c, ap_status s, const char *path, const char *tensor, const char *fmt, ...) {
    char msg[600], nb[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (tensor) return ap_seterr(c, s, "%s: tensor '%s': %s", path, shown(tensor, nb, sizeof nb), msg);
    return ap_seterr(c, s, "%s: %s", path, msg);
}

static const char *shape_text(const int64_t *shape, int ndim, char *buf, size_t cap) {
    size_t o = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && o < cap; i++) {
        if (o + 24 >= cap) {
            o += (size_t)snprintf(buf + o, cap - o, ",...");
            break;
        }
        o += (size_t)snprintf(buf + o, cap - o, i ? ",%" PRId64 : "%" PRId64, shape[i]);
    }
    if (o < cap) snprintf(buf + o, cap - o, "]");
    return buf;
}

/* "a string", or the number itself, for "shape[1] is -2, expected ...". */
static const char *value_text(const ap_json *j, char *buf, size_t cap) {
    double d;
    if (ap_json_num(j, &d))
        snprintf(buf, cap, "%.17g", d);
    else
        snprintf(buf, cap, "%s", ap_json_kind_name(j));
    return buf;
}

/* ------------------------------------------------------------ header parsing */
/* A non-negative integer offset or dim. Doubles are exact to 2^53 and larger
 * values cannot index a real file; "-0" is refused as the reference does. */
static bool get_index(const ap_json *j, uint64_t *out) {
    double d;
    if (!ap_json_num(j, &d) || signbit(d) || !(d <= 9007199254740992.0) || d != (double)(uint64_t)d)
        return false;
    *out = (uint64_t)d;
    return true;
}

static bool is_ws(char ch) { return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r'; }

static int cmp_by_offset(const void *a, const void *b) {
    const st_tensor *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return x->order - y->order;
}
static int cmp_by_name(const void *a, const void *b) {
    return strcmp((*(st_tensor *const *)a)->name, (*(st_tensor *const *)b)->name);
}
static int cmp_pair_key(const void *a, const void *b) {
    return strcmp(**(char **const *)a, **(char **const *)b);
}

/* One tensor entry of the header into t (shape storage from *dims). */
static ap_status parse_entry(ap_ctx *c, ap_safetensors *st, const ap_json *m, st_tensor *t, int64_t **dims) {
    const char *path = st->path, *name = t->name;
    char vb[64], sb[160];
    if (ap_json_kind_of(m) != AP_JSON_OBJECT)
        return st_fail(c, AP_ERR_FORMAT, path, name,
                       "entry is %s, expected an object with dtype, shape and data_offsets",
                       ap_json_kind_name(m));
    const ap_json *fdt = NULL, *fshape = NULL, *foffs = NULL;
    for (const ap_json *f = ap_json_first(m); f; f = ap_json_next(f)) {
        const char *k = ap_json_key(f);
        const ap_json **slot = !strcmp(k, "dtype")          ? &fdt
                               : !strcmp(k, "shape")        ? &fshape
                               : !strcmp(k, "data_offsets") ? &foffs
                                                            : NULL;
        if (!slot) continue;
        if (*slot) return st_fail(c, AP_ERR_FORMAT, path, name, "%s is given twice", k);
        *slot = f;
    }

    if (!fdt) return st_fail(c, AP_ERR_FORMAT, path, name, "missing dtype");
    const char *ds = ap_json_str(fdt);
    if (!ds)
        return st_fail(c, AP_ERR_FORMAT, path, name, "dtype is %s, expected a string such as \"F32\"",
                       ap_json_kind_name(fdt));
    int dt = find_dtype(ds);
    if (dt < 0) return st_fail(c, AP_ERR_FORMAT, path, name, "unknown dtype '%s'", shown(ds, sb, sizeof sb));
    t->dtype = (st_dtype)dt;

    if (!fshape) return st_fail(c, AP_ERR_FORMAT, path, name, "missing shape");
    if (ap_json_kind_of(fshape) != AP_JSON_ARRAY)
        return st_fail(c, AP_ERR_FORMAT, path, name,
                       "shape is %s, expected an array of non-negative integers", ap_json_kind_name(fshape));
    t->shape = *dims;
    t->ndim = 0;
    uint64_t numel = 1;
    bool overflow = false;
    for (const ap_json *d = ap_json_first(fshape); d; d = ap_json_next(d)) {
        uint64_t v;
        if (!get_index(d, &v))
            return st_fail(c, AP_ERR_FORMAT, path, name, "shape[%d] is %s, expected a non-negative integer",
                           t->ndim, value_text(d, vb, sizeof vb));
        if (t->ndim == INT_MAX) return st_fail(c, AP_ERR_FORMAT, path, name, "shape has too many dims");
        t->shape[t->ndim++] = (int64_t)v;
        overflow |= __builtin_mul_overflow(numel, v, &numel);
    }
    *dims += t->ndim;
    uint64_t bits;
    if (overflow || numel > (uint64_t)INT64_MAX ||
        __builtin_mul_overflow(numel, (uint64_t)st_types[dt].bits, &bits))
        return st_fail(c, AP_ERR_FORMAT, path, name, "shape %s of %s is too large",
                       shape_text(t->shape, t->ndim, sb, sizeof sb), ds);
    if (bits % 8)
        return st_fail(c, AP_ERR_FORMAT, path, name, "shape %s of %s is not a whole number of bytes",
                       shape_text(t->shape, t->ndim, sb, sizeof sb), ds);
    t->numel = (int64_t)numel;

    if (!foffs) return st_fail(c, AP_ERR_FORMAT, path, name, "missing data_offsets");
    if (ap_json_kind_of(foffs) != AP_JSON_ARRAY || ap_json_size(foffs) != 2)
        return st_fail(c, AP_ERR_FORMAT, path, name, "data_offsets is %s%s, expected [begin, end]",
                       ap_json_kind_name(foffs),
                       ap_json_kind_of(foffs) == AP_JSON_ARRAY ? " without 2 entries" : "");
    const ap_json *jb = ap_json_first(foffs), *je = ap_json_next(jb);
    if (!get_index(jb, &t->begin))
        return st_fail(c, AP_ERR_FORMAT, path, name, "data_offsets[0] is %s, expected a non-negative integer",
                       value_text(jb, vb, sizeof vb));
    if (!get_index(je, &t->end))
        return st_fail(c, AP_ERR_FORMAT, path, name, "data_offsets[1] is %s, expected a non-negative integer",
                       value_text(je, vb, sizeof vb));
    if (t->begin > t->end)
        return st_fail(c, AP_ERR_FORMAT, path, name,
                       "data_offsets [%" PRIu64 ", %" PRIu64 "] end before they begin", t->begin, t->end);
    if (t->end > st->data_len)
        return st_fail(c, AP_ERR_FORMAT, path, name,
                       "data_offsets [%" PRIu64 ", %" PRIu64 "] run past the end of the %" PRIu64
                       "-byte data buffer (is the file truncated?)",
                       t->begin, t->end, st->data_len);
    if (t->end - t->begin != bits / 8)
        return st_fail(c, AP_ERR_FORMAT, path, name,
                       "data_offsets [%" PRIu64 ", %" PRIu64 "] hold %" PRIu64
                       " bytes but shape %s of %s needs %" PRIu64,
                       t->begin, t->end, t->end - t->begin, shape_text(t->shape, t->ndim, sb, sizeof sb), ds,
                       bits / 8);
    return AP_OK;
}

static ap_status parse_metadata(ap_ctx *c, ap_safetensors *st, const ap_json *meta) {
    char kb[256];
    if (ap_json_kind_of(meta) != AP_JSON_OBJECT)
        return st_fail(c, AP_ERR_FORMAT, st->path, NULL, "__metadata__ is %s, expected an object of strings",
                       ap_json_kind_name(meta));
    int n = ap_json_size(meta);
    st->meta = calloc((size_t)n * 2 + 1, sizeof *st->meta);
    st->meta_by_key = calloc((size_t)n + 1, sizeof *st->meta_by_key);
    if (!st->meta || !st->meta_by_key) return st_fail(c, AP_ERR_NOMEM, st->path, NULL, "out of memory");
    for (const ap_json *m = ap_json_first(meta); m; m = ap_json_next(m)) {
        const char *v = ap_json_str(m);
        if (!v)
            return st_fail(c, AP_ERR_FORMAT, st->path, NULL,
                           "__metadata__ value of '%s' is %s, expected a string",
                           shown(ap_json_key(m), kb, sizeof kb), ap_json_kind_name(m));
        char **pair = st->meta + 2 * st->n_meta;
        pair[0] = strdup(ap_json_key(m));
        pair[1] = strdup(v);
        st->meta_by_key[st->n_meta++] = pair;
        if (!pair[0] || !pair[1]) return st_fail(c, AP_ERR_NOMEM, st->path, NULL, "out of memory");
    }
    qsort(st->meta_by_key, (size_t)st->n_meta, sizeof *st->meta_by_key, cmp_pair_key);
    for (int i = 1; i < st->n_meta; i++)
        if (!strcmp(st->meta_by_key[i - 1][0], st->meta_by_key[i][0]))
            return st_fail(c, AP_ERR_FORMAT, st->path, NULL, "__metadata__ key '%s' appears twice",
                           shown(st->meta_by_key[i][0], kb, sizeof kb));
    return AP_OK;
}

static ap_status parse_header(ap_ctx *c, ap_safetensors *st) {
    const unsigned char *b = st->map;
    const char *path = st->path;
    uint64_t n = 0;
    for (int i = 0; i < 8; i++) n |= (uint64_t)b[i] << (8 * i);
    if (n > ST_MAX_HEADER)
        return st_fail(c, AP_ERR_FORMAT, path, NULL, "header length %" PRIu64 " is over the %llu-byte limit",
                       n, ST_MAX_HEADER);
    if (n > st->map_len - 8)
        return st_fail(c, AP_ERR_FORMAT, path, NULL,
                       "header length %" PRIu64
                       " runs past the end of the file (%zu bytes follow the length; "
                       "is the file truncated?)",
                       n, st->map_len - 8);
    const char *h = (const char *)b + 8;
    st->data = b + 8 + n;
    st->data_len = st->map_len - 8 - n;

    size_t i = 0;
    while (i < n && is_ws(h[i])) i++;
    if (i == n) return st_fail(c, AP_ERR_FORMAT, path, NULL, "header is empty");
    if (h[i] != '{') {
        unsigned char ch = (unsigned char)h[i];
        if (ch > 0x20 && ch < 0x7f)
            return st_fail(c, AP_ERR_FORMAT, path, NULL, "header is not a JSON object (it starts with '%c')",
                           ch);
        return st_fail(c, AP_ERR_FORMAT, path, NULL,
                       "header is not a JSON object (it starts with byte 0x%02x)", ch);
    }
    char err[128];
    ap_json *root = ap_json_parse(h, (size_t)n, err, sizeof err);
    if (!root) return st_fail(c, AP_ERR_FORMAT, path, NULL, "header is not valid JSON: %s", err);

    /* Pass 1: count tensors and dims, find __metadata__. */
    ap_status s = AP_OK;
    const ap_json *meta = NULL;
    size_t ndims = 0;
    int count = 0;
    for (const ap_json *m = ap_json_first(root); m; m = ap_json_next(m)) {
        if (!strcmp(ap_json_key(m), "__metadata__")) {
            if (meta) {
                s = st_fail(c, AP_ERR_FORMAT, path, NULL, "__metadata__ appears twice");
                goto done;
            }
            meta = m;
            continue;
        }
        count++;
        ndims += (size_t)ap_json_size(ap_json_get(m, "shape"));
    }
    if (meta && (s = parse_metadata(c, st, meta)) != AP_OK) goto done;

    st->t = calloc((size_t)count + 1, sizeof *st->t);
    st->by_name = calloc((size_t)count + 1, sizeof *st->by_name);
    st->dims = calloc(ndims + 1, sizeof *st->dims);
    if (!st->t || !st->by_name || !st->dims) {
        s = st_fail(c, AP_ERR_NOMEM, path, NULL, "out of memory reading the header of %d tensors", count);
        goto done;
    }
    /* Pass 2: each entry. */
    int64_t *dims = st->dims;
    for (const ap_json *m = ap_json_first(root); m; m = ap_json_next(m)) {
        if (m == meta) continue;
        st_tensor *t = &st->t[st->n];
        t->order = st->n;
        t->name = strdup(ap_json_key(m));
        st->n++;
        if (!t->name) {
            s = st_fail(c, AP_ERR_NOMEM, path, NULL, "out of memory");
            goto done;
        }
        if ((s = parse_entry(c, st, m, t, &dims)) != AP_OK) goto done;
    }

    /* Names are unique. */
    for (int k = 0; k < st->n; k++) st->by_name[k] = &st->t[k];
    qsort(st->by_name, (size_t)st->n, sizeof *st->by_name, cmp_by_name);
    for (int k = 1; k < st->n; k++)
        if (!strcmp(st->by_name[k - 1]->name, st->by_name[k]->name)) {
            s = st_fail(c, AP_ERR_FORMAT, path, st->by_name[k]->name, "appears twice in the header");
            goto done;
        }

    /* Sorted by offset, the tensors tile the data buffer. (Sorting t moves
     * what by_name points at, so by_name is rebuilt after.) */
    qsort(st->t, (size_t)st->n, sizeof *st->t, cmp_by_offset);
    uint64_t pos = 0;
    for (int k = 0; k < st->n; k++) {
        const st_tensor *t = &st->t[k], *p = k ? &st->t[k - 1] : NULL;
        char pb[256];
        if (t->begin < pos) {
            s = st_fail(c, AP_ERR_FORMAT, path, t->name,
                        "data_offsets [%" PRIu64 ", %" PRIu64 "] overlap tensor '%s' [%" PRIu64 ", %" PRIu64
                        "]",
                        t->begin, t->end, shown(p->name, pb, sizeof pb), p->begin, p->end);
            goto done;
        }
        if (t->begin > pos) {
            if (p)
                s = st_fail(c, AP_ERR_FORMAT, path, t->name,
                            "data_offsets [%" PRIu64 ", %" PRIu64 "] leave %" PRIu64
                            " unused bytes after tensor '%s' [%" PRIu64 ", %" PRIu64
                            "] (tensors must tile the data buffer)",
                            t->begin, t->end, t->begin - pos, shown(p->name, pb, sizeof pb), p->begin,
                            p->end);
            else
                s = st_fail(c, AP_ERR_FORMAT, path, t->name,
                            "data_offsets [%" PRIu64 ", %" PRIu64 "] leave %" PRIu64
                            " unused bytes at the start of the data buffer (tensors must tile it)",
                            t->begin, t->end, t->begin);
            goto done;
        }
        pos = t->end;
    }
    if (pos != st->data_len) {
        s = st_fail(c, AP_ERR_FORMAT, path, NULL,
                    "the data buffer holds %" PRIu64 " bytes but the tensors end at %" PRIu64 " (%" PRIu64
                    " unused bytes at the end)",
                    st->data_len, pos, st->data_len - pos);
        goto done;
    }
    for (int k = 0; k < st->n; k++) st->by_name[k] = &st->t[k];
    qsort(st->by_name, (size_t)st->n, sizeof *st->by_name, cmp_by_name);
done:
    ap_json_free(root);
    return s;
}

/* ------------------------------------------------------------ open, inspect */
/* Validates bytes[0..len) (len >= 8) into a handle that owns them when mapped. */
static ap_status open_bytes(ap_ctx *c, const char *path, const void *bytes, size_t len, bool mapped,
                            ap_safetensors **out) {
    ap_safetensors *st = calloc(1, sizeof *st);
    char *p = strdup(path);
    if (!st || !p) {
        if (mapped) munmap((void *)bytes, len);
        free(st);
        free(p);
        return ap_seterr(c, AP_ERR_NOMEM, "%s: out of memory", path);
    }
    st->path = p;
    st->map = bytes;
    st->map_len = len;
    st->mapped = mapped;
    ap_status s = parse_header(c, st);
    if (s != AP_OK) {
        ap_st_close(st);
        return s;
    }
    *out = st;
    return AP_OK;
}

ap_status ap_st_open(ap_ctx *c, const char *path, ap_safetensors **out) {
    if (out) *out = NULL;
    if (!c) return AP_ERR_INVALID_ARG;
    if (ap_failed(c)) return c->status;
    if (!path || !out)
        return ap_seterr(c, AP_ERR_INVALID_ARG, "safetensors open: %s is NULL", path ? "out" : "path");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return ap_seterr(c, e == ENOENT ? AP_ERR_NOT_FOUND : AP_ERR_IO, "%s: cannot open: %s", path,
                         strerror(e));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return ap_seterr(c, AP_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return ap_seterr(c, AP_ERR_IO, "%s: not a regular file", path);
    }
    if (sb.st_size < 8) {
        close(fd);
        return ap_seterr(c, AP_ERR_FORMAT, "%s: file is %lld bytes, too short for the 8-byte header length",
                         path, (long long)sb.st_size);
    }
    void *map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd); /* the mapping keeps the file */
    if (map == MAP_FAILED) return ap_seterr(c, AP_ERR_IO, "%s: cannot map: %s", path, strerror(e));
    return open_bytes(c, path, map, (size_t)sb.st_size, true, out);
}

ap_status ap_st_open_memory(ap_ctx *c, const char *name, const void *bytes, size_t len,
                            ap_safetensors **out) {
    if (out) *out = NULL;
    if (!c) return AP_ERR_INVALID_ARG;
    if (ap_failed(c)) return c->status;
    if (!name || !out || (!bytes && len))
        return ap_seterr(c, AP_ERR_INVALID_ARG, "safetensors open: %s is NULL",
                         !name  ? "name"
                         : !out ? "out"
                                : "bytes");
    if (len < 8)
        return ap_seterr(c, AP_ERR_FORMAT, "%s: file is %zu bytes, too short for the 8-byte header length",
                         name, len);
    return open_bytes(c, name, bytes, len, false, out);
}

void ap_st_close(ap_safetensors *st) {
    if (!st) return;
    if (st->mapped) munmap((void *)st->map, st->map_len);
    for (int i = 0; i < st->n; i++) free(st->t[i].name);
    for (int i = 0; i < 2 * st->n_meta; i++) free(st->meta[i]);
    free(st->meta);
    free(st->meta_by_key);
    free(st->t);
    free(st->by_name);
    free(st->dims);
    free(st->path);
    free(st);
}

static const st_tensor *tensor_at(const ap_safetensors *st, int i) {
    return st && i >= 0 && i < st->n ? &st->t[i] : NULL;
}

int ap_st_count(const ap_safetensors *st) { return st ? st->n : 0; }

const char *ap_st_name(const ap_safetensors *st, int i) {
    const st_tensor *t = tensor_at(st, i);
    return t ? t->name : NULL;
}

int ap_st_find(const ap_safetensors *st, const char *name) {
    if (!st || !name) return -1;
    size_t lo = 0, hi = (size_t)st->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int r = strcmp(st->by_name[mid]->name, name);
        if (r == 0) return (int)(st->by_name[mid] - st->t);
        if (r < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

const char *ap_st_dtype(const ap_safetensors *st, int i) {
    const st_tensor *t = tensor_at(st, i);
    return t ? st_types[t->dtype].name : NULL;
}

/* Writes at most AP_MAX_DIMS dims; the return value is the real rank, so a
 * caller sees when a file tensor has more dims than a tensor can hold. */
int ap_st_shape(const ap_safetensors *st, int i, int64_t *shape) {
    const st_tensor *t = tensor_at(st, i);
    if (!t) return -1;
    if (shape)
        for (int k = 0; k < t->ndim && k < AP_MAX_DIMS; k++) shape[k] = t->shape[k];
    return t->ndim;
}

const void *ap_st_raw(const ap_safetensors *st, int i, size_t *nbytes) {
    const st_tensor *t = tensor_at(st, i);
    if (nbytes) *nbytes = t ? (size_t)(t->end - t->begin) : 0;
    return t ? st->data + t->begin : NULL;
}

const char *ap_st_metadata(const ap_safetensors *st, const char *key) {
    if (!st || !key) return NULL;
    size_t lo = 0, hi = (size_t)st->n_meta;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        char **pair = st->meta_by_key[mid];
        int r = strcmp(pair[0], key);
        if (r == 0) return pair[1];
        if (r < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

int ap_st_metadata_count(const ap_safetensors *st) { return st ? st->n_meta : 0; }

const char *ap_st_metadata_key(const ap_safetensors *st, int i) {
    return st && i >= 0 && i < st->n_meta ? st->meta[2 * i] : NULL;
}

/* ------------------------------------------------------------ conversion */
/* Rounds sign * mag * 2^e to the binary format with ebits exponent and mbits
 * fraction bits (f32 8/23, bf16 8/7, f16 5/10), to nearest even, with
 * subnormals and overflow to infinity; returns the bit pattern. Integer
 * arithmetic only, so exact whatever the FTZ/DAZ state. */
static uint32_t round_to_float(int sign, uint64_t mag, int e, int ebits, int mbits) {
    uint32_t sbit = (uint32_t)sign << (ebits + mbits), inf = ((1u << ebits) - 1) << mbits;
    if (!mag) return sbit;
    int bias = (1 << (ebits - 1)) - 1;
    int top = 63 - __builtin_clzll(mag);
    int te = top + e + bias; /* biased exponent of the leading bit */
    if (te >= (1 << ebits) - 1) return sbit | inf;
    int qe = te >= 1 ? top + e - mbits : 1 - bias - mbits; /* exponent of the last kept bit */
    int shift = qe - e;
    uint64_t q;
    if (shift <= 0) {
        q = mag << -shift; /* exact: fewer than mbits + 1 significant bits */
    } else if (shift > 64) {
        q = 0; /* below half the smallest subnormal */
    } else {
        unsigned __int128 m = mag, one = 1;
        q = (uint64_t)(m >> shift);
        unsigned __int128 rem = m & ((one << shift) - 1), half = one << (shift - 1);
        if (rem > half || (rem == half && (q & 1))) q++;
    }
    uint64_t bits = te >= 1 ? ((uint64_t)(te - 1) << mbits) + q : q; /* a carry moves into the exponent */
    if (bits >= inf) return sbit | inf;
    return sbit | (uint32_t)bits;
}

static void store_float(void *dst, ap_dtype dt, int64_t i, int sign, uint64_t mag, int e) {
    switch (dt) {
    case AP_F32: {
        uint32_t u = round_to_float(sign, mag, e, 8, 23);
        memcpy((float *)dst + i, &u, 4);
        break;
    }
    case AP_BF16: ((uint16_t *)dst)[i] = (uint16_t)round_to_float(sign, mag, e, 8, 7); break;
    default: ((uint16_t *)dst)[i] = (uint16_t)round_to_float(sign, mag, e, 5, 10); break;
    }
}

static void store_nan_inf(void *dst, ap_dtype dt, int64_t i, int sign, bool nan) {
    uint32_t f = ((uint32_t)sign << 31) | 0x7f800000u | (nan ? 0x400000u : 0);
    switch (dt) {
    case AP_F32: memcpy((float *)dst + i, &f, 4); break;
    case AP_BF16: ((uint16_t *)dst)[i] = (uint16_t)(f >> 16); break;
    default: ((uint16_t *)dst)[i] = (uint16_t)((sign << 15) | 0x7c00 | (nan ? 0x200 : 0)); break;
    }
}

/* An integer element of a K_SINT / K_UINT / K_BOOL type as sign and magnitude. */
static void load_int(const void *p, st_dtype sd, int64_t i, int *neg, uint64_t *mag) {
    int64_t v = 0;
    *neg = 0;
    switch (sd) {
    case ST_BOOL: *mag = ((const uint8_t *)p)[i] != 0; return;
    case ST_U8: *mag = ((const uint8_t *)p)[i]; return;
    case ST_U16: *mag = ((const uint16_t *)p)[i]; return;
    case ST_U32: *mag = ((const uint32_t *)p)[i]; return;
    case ST_U64: *mag = ((const uint64_t *)p)[i]; return;
    case ST_I8: v = ((const int8_t *)p)[i]; break;
    case ST_I16: v = ((const int16_t *)p)[i]; break;
    case ST_I32: v = ((const int32_t *)p)[i]; break;
    default: v = ((const int64_t *)p)[i]; break;
    }
    *neg = v < 0;
    *mag = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
}

static ap_dtype float_ap(st_dtype sd) { return sd == ST_F32 ? AP_F32 : sd == ST_BF16 ? AP_BF16 : AP_F16; }

/* Converts n elements of sd at src (any alignment) to dt at dst. Returns the
 * index of the first integer that does not fit dt, or -1. Works in chunks
 * through an aligned bounce buffer when src is misaligned (files whose header
 * length is not a multiple of 8). One thread: the conversions are memory-bound
 * and one thread moves 11-26 GB/s here (bench/stio.c), while a parallel region
 * per tensor cost more than it saved whenever the machine was busy (a worker
 * waiting for a time slice stalls the whole region). */
#define ST_CHUNK 4096
_Static_assert(ST_CHUNK <= AP_CONVERT_SERIAL_MAX, "chunks convert on the calling thread");
static int64_t convert(void *dst, ap_dtype dt, const unsigned char *src, st_dtype sd, int64_t n) {
    size_t es = (size_t)st_types[sd].bits / 8, ds = ap_dtype_size(dt);
    bool aligned = ((uintptr_t)src % es) == 0;
    int64_t nchunks = (n + ST_CHUNK - 1) / ST_CHUNK;
    uint64_t bounce[ST_CHUNK];
    for (int64_t ch = 0; ch < nchunks; ch++) {
        int64_t i0 = ch * ST_CHUNK, cnt = n - i0 < ST_CHUNK ? n - i0 : ST_CHUNK;
        const void *p = src + (size_t)i0 * es;
        if (!aligned && sd != ap_to_st[dt].st) {
            memcpy(bounce, p, (size_t)cnt * es);
            p = bounce;
        }
        char *d = (char *)dst + (size_t)i0 * ds;
        bool dfloat = dt == AP_F32 || dt == AP_BF16 || dt == AP_F16;
        if (sd == ap_to_st[dt].st) {
            memcpy(d, p, (size_t)cnt * es);
        } else if (dfloat && (sd == ST_F32 || sd == ST_BF16 || sd == ST_F16)) {
            ap_convert(d, dt, p, float_ap(sd), cnt); /* cnt <= AP_CONVERT_SERIAL_MAX: this thread */
        } else if (dfloat && sd == ST_F64) {
            for (int64_t i = 0; i < cnt; i++) {
                uint64_t u = ((const uint64_t *)p)[i];
                int sign = (int)(u >> 63), ex = (int)((u >> 52) & 0x7ff);
                uint64_t frac = u & ((1ull << 52) - 1);
                if (ex == 0x7ff)
                    store_nan_inf(d, dt, i, sign, frac != 0);
                else if (ex == 0)
                    store_float(d, dt, i, sign, frac, -1074); /* subnormal double */
                else
                    store_float(d, dt, i, sign, frac | (1ull << 52), ex - 1075);
            }
        } else if (dfloat) {
            for (int64_t i = 0; i < cnt; i++) {
                int neg;
                uint64_t mag;
                load_int(p, sd, i, &neg, &mag);
                store_float(d, dt, i, neg, mag, 0);
            }
        } else {
            uint64_t lim_pos = dt == AP_I32 ? INT32_MAX : INT64_MAX;
            uint64_t lim_neg = dt == AP_I32 ? (uint64_t)INT32_MAX + 1 : (uint64_t)INT64_MAX + 1;
            for (int64_t i = 0; i < cnt; i++) {
                int neg;
                uint64_t mag;
                load_int(p, sd, i, &neg, &mag);
                if (mag > (neg ? lim_neg : lim_pos)) return i0 + i;
                int64_t v = neg ? (int64_t)(0 - mag) : (int64_t)mag;
                if (dt == AP_I32)
                    ((int32_t *)d)[i] = (int32_t)v;
                else
                    ((int64_t *)d)[i] = v;
            }
        }
    }
    return -1;
}

ap_status ap_st_load(ap_ctx *c, const ap_safetensors *st, const char *name, ap_dtype dt, ap_tensor **out) {
    if (out) *out = NULL;
    if (!c) return AP_ERR_INVALID_ARG;
    if (ap_failed(c)) return c->status;
    if (!st || !name || !out)
        return ap_seterr(c, AP_ERR_INVALID_ARG, "safetensors load: %s is NULL",
                         !st     ? "file"
                         : !name ? "name"
                                 : "out");
    int idx = ap_st_find(st, name);
    if (idx < 0) return st_fail(c, AP_ERR_NOT_FOUND, st->path, name, "not in the file");
    const st_tensor *t = &st->t[idx];
    const char *sname = st_types[t->dtype].name;
    st_kind kind = st_types[t->dtype].kind;
    if ((unsigned)dt >= AP_DTYPE_COUNT_)
        return st_fail(c, AP_ERR_DTYPE, st->path, name, "cannot load as unknown dtype %d", (int)dt);
    if (kind == K_NONE)
        return st_fail(c, AP_ERR_DTYPE, st->path, name,
                       "unsupported dtype %s (its raw bytes can be read with ap_st_raw)", sname);
    bool dfloat = dt == AP_F32 || dt == AP_BF16 || dt == AP_F16;
    if (kind == K_FLOAT && !dfloat)
        return st_fail(c, AP_ERR_DTYPE, st->path, name,
                       "cannot load %s as %s: floating-point values do not convert to integers", sname,
                       ap_dtype_name(dt));
    if (t->ndim > AP_MAX_DIMS)
        return st_fail(c, AP_ERR_UNSUPPORTED, st->path, name, "has %d dims; tensors hold at most %d", t->ndim,
                       AP_MAX_DIMS);
    ap_tensor *o = ap_tensor_new(c, dt, t->ndim, t->shape);
    if (!o) return c->status;
    if (ap_tensor_set_name(o, t->name) != AP_OK) {
        ap_tensor_release(o);
        return st_fail(c, AP_ERR_NOMEM, st->path, name, "out of memory");
    }
    int64_t bad = convert(ap_tensor_data(o), dt, st->data + t->begin, t->dtype, t->numel);
    if (st->mapped && t->end > t->begin) {
        /* the copy is made: let the file's pages go, so loading a model holds
         * the file plus the tensors only one tensor at a time, not both in full
         * (the mapping is private and read-only: a later read faults them in) */
        uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
        uintptr_t a = (uintptr_t)(st->data + t->begin) & ~(pg - 1), e = (uintptr_t)(st->data + t->end);
        madvise((void *)a, e - a, MADV_DONTNEED);
    }
    if (bad >= 0) {
        ap_tensor_release(o);
        int neg;
        uint64_t mag;
        size_t es = (size_t)st_types[t->dtype].bits / 8;
        uint64_t tmp = 0;
        memcpy(&tmp, st->data + t->begin + (size_t)bad * es, es);
        load_int(&tmp, t->dtype, 0, &neg, &mag);
        return st_fail(c, AP_ERR_DTYPE, st->path, name, "element %" PRId64 " (%s%" PRIu64 ") does not fit %s",
                       bad, neg ? "-" : "", mag, ap_dtype_name(dt));
    }
    *out = o;
    return AP_OK;
}

/* ------------------------------------------------------------ writer */
typedef struct {
    const char *name;
    int rank;
    int idx;
} save_item;

static int cmp_save_name(const void *a, const void *b) {
    return strcmp(((const save_item *)a)->name, ((const save_item *)b)->name);
}
static int cmp_save_order(const void *a, const void *b) {
    const save_item *x = a, *y = b;
    if (x->rank != y->rank) return y->rank - x->rank;
    return strcmp(x->name, y->name);
}

static bool write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n) {
        ssize_t w = write(fd, p, n > (1u << 30) ? (1u << 30) : n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        p += w;
        n -= (size_t)w;
    }
    return true;
}

/* Makes the rename itself durable. Best effort: the new file is already in
 * place when this runs, so a failure here is not reported as one of the save. */
static void sync_dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    if (!dir) return;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(dir);
}

/* The header text (compact JSON, padded with spaces to a multiple of 8)
 * behind its 8-byte length; *order receives the write order. */
static ap_status build_header(ap_ctx *c, const char *path, int n, const char *const *names,
                              ap_tensor *const *ts, int n_meta, const char *const *mk, const char *const *mv,
                              const save_item *order, char **out, size_t *out_len) {
    ap_json *root = ap_json_new_object();
    bool ok = root != NULL;
    if (ok && n_meta > 0) {
        ap_json *meta = ap_json_new_object();
        for (int i = 0; i < n_meta && meta; i++)
            if (!ap_json_add_str(meta, mk[i], mv[i])) {
                ap_json_free(meta);
                meta = NULL;
            }
        ok = ap_json_add(root, "__metadata__", meta);
    }
    uint64_t off = 0;
    for (int k = 0; k < n && ok; k++) {
        const ap_tensor *t = ts[order[k].idx];
        uint64_t nb = ap_tensor_nbytes(t);
        /* Each child is added to its parent as soon as it exists: the parent
         * owns it from then on (ap_json_add frees it when adding fails). */
        ap_json *e = ap_json_new_object();
        ok = ap_json_add(root, names[order[k].idx], e) &&
             ap_json_add_str(e, "dtype", st_types[ap_to_st[t->dtype].st].name);
        ap_json *shape = ok ? ap_json_new_array() : NULL;
        ok = ok && ap_json_add(e, "shape", shape);
        for (int d = 0; d < t->ndim && ok; d++) ok = ap_json_add(shape, NULL, ap_json_new_int(t->shape[d]));
        ap_json *offs = ok ? ap_json_new_array() : NULL;
        ok = ok && ap_json_add(e, "data_offsets", offs) &&
             ap_json_add(offs, NULL, ap_json_new_int((int64_t)off)) &&
             ap_json_add(offs, NULL, ap_json_new_int((int64_t)(off + nb)));
        off += nb;
    }
    char *text = ok ? ap_json_print(root, false) : NULL;
    ap_json_free(root);
    if (!text) return st_fail(c, AP_ERR_NOMEM, path, NULL, "out of memory building the header");
    size_t len = strlen(text), padded = (len + 7) / 8 * 8;
    if (padded > ST_MAX_HEADER) {
        ap_json_free_str(text);
        return st_fail(c, AP_ERR_INVALID_ARG, path, NULL,
                       "the header would be %zu bytes, over the %llu-byte limit of readers", padded,
                       ST_MAX_HEADER);
    }
    char *buf = malloc(8 + padded);
    if (!buf) {
        ap_json_free_str(text);
        return st_fail(c, AP_ERR_NOMEM, path, NULL, "out of memory building the header");
    }
    for (int i = 0; i < 8; i++) buf[i] = (char)(((uint64_t)padded >> (8 * i)) & 0xff);
    memcpy(buf + 8, text, len);
    memset(buf + 8 + len, ' ', padded - len);
    ap_json_free_str(text);
    *out = buf;
    *out_len = 8 + padded;
    return AP_OK;
}

ap_status ap_st_save(ap_ctx *c, const char *path, int n, const char *const *names, ap_tensor *const *ts,
                     int n_meta, const char *const *meta_keys, const char *const *meta_values) {
    if (!c) return AP_ERR_INVALID_ARG;
    if (ap_failed(c)) return c->status;
    if (!path) return ap_seterr(c, AP_ERR_INVALID_ARG, "safetensors save: path is NULL");
    if (n < 0 || (n > 0 && (!names || !ts)))
        return st_fail(c, AP_ERR_INVALID_ARG, path, NULL, "bad tensor list (n = %d)", n);
    if (n_meta < 0 || (n_meta > 0 && (!meta_keys || !meta_values)))
        return st_fail(c, AP_ERR_INVALID_ARG, path, NULL, "bad metadata list (n_meta = %d)", n_meta);
    for (int i = 0; i < n; i++) {
        if (!names[i]) return st_fail(c, AP_ERR_INVALID_ARG, path, NULL, "name %d is NULL", i);
        if (!ts[i]) return st_fail(c, AP_ERR_INVALID_ARG, path, names[i], "tensor is NULL");
        if (!ap_json_utf8_valid(names[i], strlen(names[i]), NULL))
            return st_fail(c, AP_ERR_INVALID_ARG, path, names[i], "name is not valid UTF-8");
        if (!strcmp(names[i], "__metadata__"))
            return st_fail(c, AP_ERR_INVALID_ARG, path, names[i], "the name is reserved for the metadata");
    }
    for (int i = 0; i < n_meta; i++) {
        if (!meta_keys[i] || !meta_values[i])
            return st_fail(c, AP_ERR_INVALID_ARG, path, NULL, "metadata %s %d is NULL",
                           meta_keys[i] ? "value" : "key", i);
        if (!ap_json_utf8_valid(meta_keys[i], strlen(meta_keys[i]), NULL) ||
            !ap_json_utf8_valid(meta_values[i], strlen(meta_values[i]), NULL))
            return st_fail(c, AP_ERR_INVALID_ARG, path, NULL, "metadata entry %d is not valid UTF-8", i);
        for (int k = 0; k < i; k++)
            if (!strcmp(meta_keys[k], meta_keys[i]))
                return st_fail(c, AP_ERR_INVALID_ARG, path, NULL, "metadata key '%s' is given twice",
                               meta_keys[i]);
    }
    save_item *order = malloc(sizeof *order * ((size_t)n + 1));
    if (!order) return st_fail(c, AP_ERR_NOMEM, path, NULL, "out of memory");
    for (int i = 0; i < n; i++) order[i] = (save_item){names[i], ap_to_st[ts[i]->dtype].rank, i};
    qsort(order, (size_t)n, sizeof *order, cmp_save_name);
    for (int i = 1; i < n; i++)
        if (!strcmp(order[i - 1].name, order[i].name)) {
            ap_status s = st_fail(c, AP_ERR_INVALID_ARG, path, order[i].name, "name is given twice");
            free(order);
            return s;
        }
    qsort(order, (size_t)n, sizeof *order, cmp_save_order);

    char *hdr = NULL;
    size_t hdr_len = 0;
    ap_status s = build_header(c, path, n, names, ts, n_meta, meta_keys, meta_values, order, &hdr, &hdr_len);
    if (s != AP_OK) {
        free(order);
        return s;
    }

    /* Temporary file beside the destination (rename is atomic only within a
     * file system); O_EXCL so concurrent savers never share one. */
    static unsigned counter;
    size_t tl = strlen(path) + 64;
    char *tmp = malloc(tl);
    int fd = -1, err = 0;
    for (int attempt = 0; tmp && attempt < 100 && fd < 0; attempt++) {
        snprintf(tmp, tl, "%s.tmp-%ld-%u", path, (long)getpid(),
                 __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED));
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        err = errno;
        if (fd < 0 && err != EEXIST) break;
    }
    if (fd < 0) {
        s = tmp ? st_fail(c, AP_ERR_IO, path, NULL, "cannot create a temporary file beside it: %s",
                          strerror(err))
                : st_fail(c, AP_ERR_NOMEM, path, NULL, "out of memory");
        goto out;
    }
    bool ok = write_all(fd, hdr, hdr_len);
    for (int k = 0; k < n && ok; k++) {
        const ap_tensor *t = ts[order[k].idx];
        ok = write_all(fd, ap_tensor_cdata(t), ap_tensor_nbytes(t));
    }
    if (ok) ok = fsync(fd) == 0;
    err = errno;
    if (close(fd) != 0 && ok) {
        ok = false;
        err = errno;
    }
    if (ok && rename(tmp, path) != 0) {
        ok = false;
        err = errno;
    }
    if (!ok) {
        unlink(tmp);
        s = st_fail(c, AP_ERR_IO, path, NULL, "cannot write: %s", strerror(err));
        goto out;
    }
    sync_dir_of(path);
out:
    free(tmp);
    free(hdr);
    free(order);
    return s;
}
