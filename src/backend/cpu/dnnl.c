/* The oneDNN backend (see dnnl.h for the contract).
 *
 * State per context (ctx->backend, made on first use): the CPU engine and
 * stream, and a cache of primitives keyed by kind, shapes, strides, precision
 * and thread count. oneDNN has its own primitive cache, but it only saves the
 * JIT step: creating the operation and primitive descriptors (the search over
 * implementations) still runs on every call without ours; bench/dnnl.c
 * measures the difference.
 *
 * Primitives run with a user scratchpad taken from the context's arena, so
 * their temporary memory shows in ap_mem_peak and is reused like any tensor.
 *
 * Weights are packed lazily, per layout: a tensor's packed entry holds up to
 * PACK_SLOTS (layout, buffer) pairs, because the layout an implementation
 * wants can depend on the activation shape (and backward data may want
 * another one than forward). A layout equal to the stored one is used in
 * place, without a copy.
 *
 * Packed copies are cached only while their bytes stay within the context's
 * budget (ap_set_pack_cache, AP_PACK_CACHE): at SD1.5 size the forward and
 * backward-data layouts of every frozen weight would otherwise hold two
 * copies beside the stored one (4.6 GB on top of 2.3 GB). A weight that does
 * not fit is packed, for the one primitive call, into a scratch buffer that
 * the state keeps (as large as the largest such weight). That reorder costs
 * time on every call (oneDNN reorders into the forward conv layouts at
 * 0.3-1.3 GB/s on the Zen 4 VM; bench/RESULTS.md): the budget trades memory
 * for speed. First come, first
 * cached; a cached copy is evicted only once it looks dead (unused for longer
 * than any weight's gap between two uses so far), so a loop whose weights
 * exceed the budget keeps a fixed cached part instead of thrashing. */
#include "backend/cpu/dnnl.h"

#include <dnnl.h>
#include <dnnl_debug.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { P_CONV_FWD = 1, P_CONV_BWD_D, P_CONV_BWD_W, P_MATMUL };

/* Keys of packed weights on ap_tensor ('D','N' in the high bytes keeps them
 * apart from other backends' kinds). The logical matrix differs between the
 * linear kinds (w^T for forward, w for backward data), so they never share an
 * entry even when the layouts compare equal; the conv kinds share one since
 * forward and backward data see the same [cout,cin,kh,kw] tensor. */
enum { PACK_CONV = 0x444e0001, PACK_LIN_T = 0x444e0002, PACK_LIN = 0x444e0003 };
#define PACK_SLOTS 4

/* ------------------------------------------------------------ state */
#define KEY_N 16
typedef struct {
    int64_t kind, bf16, nthr, flags;
    int64_t v[KEY_N];
} pkey;

typedef struct {
    pkey key;
    dnnl_primitive_t prim;
    const_dnnl_primitive_desc_t pd; /* owned by prim */
    dnnl_primitive_t to_user[2];    /* conv backward weights: diff_weights -> user layout, by beta */
} pentry;

struct packs;

typedef struct dnnl_state {
    dnnl_engine_t eng;
    dnnl_stream_t stream;
    pentry **tab; /* open addressing, cap a power of two */
    size_t cap, count;
    bool cache_off;
    ap_dnnl_stats stats;
    char last_impl[128];
    size_t pack_budget;        /* bytes of packed weights the cache may hold */
    uint64_t tick, max_gap;    /* weight lookups so far; the longest gap between two of one weight */
    struct packs *reg_oldest;  /* every packs entry (with or without buffers), oldest first */
    struct packs *reg_newest;
    void *scratch;             /* weights packed for one call when the cache has no room */
    size_t scratch_bytes;
} dnnl_state;

static void entry_destroy(pentry *e) {
    if (!e) return;
    for (int i = 0; i < 2; i++)
        if (e->to_user[i]) dnnl_primitive_destroy(e->to_user[i]);
    if (e->prim) dnnl_primitive_destroy(e->prim);
}

static void table_clear(dnnl_state *d) {
    for (size_t i = 0; i < d->cap; i++) {
        entry_destroy(d->tab[i]);
        free(d->tab[i]);
        d->tab[i] = NULL;
    }
    d->count = 0;
}

static void registry_detach(dnnl_state *d);
static void packs_shrink(dnnl_state *d, size_t budget);

static void state_free(void *p) {
    dnnl_state *d = p;
    if (!d) return;
    registry_detach(d);
    free(d->scratch);
    table_clear(d);
    free(d->tab);
    if (d->stream) dnnl_stream_destroy(d->stream);
    if (d->eng) dnnl_engine_destroy(d->eng);
    free(d);
}

/* A byte count: digits with an optional K, M or G (binary) suffix, or "all"
 * (no limit). False when s is not one. */
static bool parse_bytes(const char *s, size_t *out) {
    if (!strcmp(s, "all")) {
        *out = SIZE_MAX;
        return true;
    }
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s || errno || *s == '-') return false;
    int shift = 0;
    if (*end == 'K' || *end == 'k') shift = 10, end++;
    else if (*end == 'M' || *end == 'm') shift = 20, end++;
    else if (*end == 'G' || *end == 'g') shift = 30, end++;
    if (*end || (shift && v > (SIZE_MAX >> shift))) return false;
    *out = (size_t)v << shift;
    return true;
}

static dnnl_state *state(ap_ctx *c) {
    if (c->backend) return c->backend;
    size_t budget = AP_PACK_CACHE_DEFAULT;
    const char *env = getenv("AP_PACK_CACHE");
    if (env && *env && !parse_bytes(env, &budget)) {
        ap_seterr(c, AP_ERR_INVALID_ARG,
                  "AP_PACK_CACHE: '%s' is not a byte count (digits with an optional K, M or G suffix, or 'all')",
                  env);
        return NULL;
    }
    dnnl_state *d = calloc(1, sizeof *d);
    if (!d) {
        ap_seterr(c, AP_ERR_NOMEM, "oneDNN backend: out of memory");
        return NULL;
    }
    dnnl_status_t s = dnnl_engine_create(&d->eng, dnnl_cpu, 0);
    if (s == dnnl_success) s = dnnl_stream_create(&d->stream, d->eng, dnnl_stream_default_flags);
    if (s != dnnl_success) {
        state_free(d);
        ap_seterr(c, AP_ERR_BACKEND, "oneDNN backend: cannot create the CPU engine (%s)", dnnl_status2str(s));
        return NULL;
    }
    d->pack_budget = budget;
    c->backend = d;
    c->backend_free = state_free;
    return d;
}

bool ap_dnnl_use_bf16(const ap_ctx *c) {
    static int has = -1;
    if (has < 0) has = ap_cpu_has_bf16();
    return c->precision == AP_PREC_BF16 && has;
}

ap_dnnl_stats ap_dnnl_get_stats(ap_ctx *c) {
    dnnl_state *d = c ? state(c) : NULL;
    ap_dnnl_stats z = {0};
    return d ? d->stats : z;
}

void ap_dnnl_set_cache(ap_ctx *c, bool on) {
    dnnl_state *d = state(c);
    if (!d) return;
    d->cache_off = !on;
    if (!on) table_clear(d);
}

ap_status ap_set_pack_cache(ap_ctx *c, size_t bytes) {
    if (!c) return AP_ERR_INVALID_ARG;
    dnnl_state *d = state(c);
    if (!d) return c->status;
    d->pack_budget = bytes;
    packs_shrink(d, bytes);
    return AP_OK;
}

size_t ap_get_pack_cache(ap_ctx *c) {
    dnnl_state *d = c ? state(c) : NULL;
    return d ? d->pack_budget : 0;
}

size_t ap_mem_packed(ap_ctx *c) {
    dnnl_state *d = c ? state(c) : NULL;
    return d ? (size_t)d->stats.pack_bytes : 0;
}

const char *ap_dnnl_last_impl(ap_ctx *c) {
    dnnl_state *d = state(c);
    return d ? d->last_impl : "";
}

/* ------------------------------------------------------------ primitive cache */
typedef dnnl_status_t (*build_fn)(dnnl_state *d, const void *arg, dnnl_primitive_desc_t *pd);

static uint64_t key_hash(const pkey *k) {
    const unsigned char *p = (const unsigned char *)k;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < sizeof *k; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static bool table_grow(dnnl_state *d) {
    size_t cap = d->cap ? 2 * d->cap : 64;
    pentry **t = calloc(cap, sizeof *t);
    if (!t) return false;
    for (size_t i = 0; i < d->cap; i++) {
        pentry *e = d->tab[i];
        if (!e) continue;
        size_t j = key_hash(&e->key) & (cap - 1);
        while (t[j]) j = (j + 1) & (cap - 1);
        t[j] = e;
    }
    free(d->tab);
    d->tab = t;
    d->cap = cap;
    return true;
}

/* The primitive for key k, built by build on a miss. With the cache off the
 * entry is built into *tmp and put_prim destroys it after use. Entries live
 * behind pointers, so one stays valid while another is looked up. */
static dnnl_status_t get_prim(dnnl_state *d, const pkey *k, build_fn build, const void *arg, pentry *tmp,
                              pentry **out) {
    size_t slot = 0;
    if (!d->cache_off && d->cap) {
        slot = key_hash(k) & (d->cap - 1);
        for (; d->tab[slot]; slot = (slot + 1) & (d->cap - 1))
            if (!memcmp(&d->tab[slot]->key, k, sizeof *k)) {
                d->stats.cache_hits++;
                *out = d->tab[slot];
                return dnnl_success;
            }
    }
    d->stats.cache_misses++;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_status_t s = build(d, arg, &pd);
    dnnl_primitive_t prim = NULL;
    if (s == dnnl_success) s = dnnl_primitive_create(&prim, pd);
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (s != dnnl_success) return s;
    pentry e = {.key = *k, .prim = prim};
    dnnl_primitive_get_primitive_desc(prim, &e.pd);
    if (d->cache_off) {
        *tmp = e;
        *out = tmp;
        return dnnl_success;
    }
    pentry *pe = malloc(sizeof *pe);
    if (!pe || ((d->count + 1) * 2 > d->cap && !table_grow(d))) {
        free(pe);
        dnnl_primitive_destroy(prim);
        return dnnl_out_of_memory;
    }
    *pe = e;
    slot = key_hash(k) & (d->cap - 1);
    while (d->tab[slot]) slot = (slot + 1) & (d->cap - 1);
    d->tab[slot] = pe;
    d->count++;
    *out = pe;
    return dnnl_success;
}

static void put_prim(dnnl_state *d, pentry *e) {
    if (d->cache_off && e) {
        entry_destroy(e);
        memset(e, 0, sizeof *e);
    }
}

static pkey key_new(ap_ctx *c, int64_t kind, bool bf16, int64_t flags) {
    pkey k;
    memset(&k, 0, sizeof k); /* keys are compared with memcmp */
    k.kind = kind;
    k.bf16 = bf16;
    k.nthr = c->num_threads; /* oneDNN fixes the thread count of a primitive when it is made */
    k.flags = flags;
    return k;
}

static dnnl_status_t attr_new(dnnl_primitive_attr_t *attr, bool sum) {
    dnnl_status_t s = dnnl_primitive_attr_create(attr);
    if (s != dnnl_success) return s;
    s = dnnl_primitive_attr_set_scratchpad_mode(*attr, dnnl_scratchpad_mode_user);
    if (s == dnnl_success && sum) {
        dnnl_post_ops_t po;
        s = dnnl_post_ops_create(&po);
        if (s == dnnl_success) {
            s = dnnl_post_ops_append_sum(po, 1.0f);
            if (s == dnnl_success) s = dnnl_primitive_attr_set_post_ops(*attr, po);
            dnnl_post_ops_destroy(po);
        }
    }
    if (s != dnnl_success) dnnl_primitive_attr_destroy(*attr);
    return s;
}

/* ------------------------------------------------------------ execution */
typedef struct {
    int arg;
    const void *ptr;
} xarg;

/* Runs prim with the given arguments (memory descriptors from its primitive
 * descriptor) and a scratchpad from the arena, and waits. */
static dnnl_status_t run(ap_ctx *c, dnnl_state *d, dnnl_primitive_t prim, const_dnnl_primitive_desc_t pd, int n,
                         const xarg *a) {
    dnnl_exec_arg_t ea[12];
    int m = 0;
    dnnl_status_t s = dnnl_success;
    const dnnl_memory_desc_t *smd = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    size_t sbytes = smd ? dnnl_memory_desc_get_size(smd) : 0;
    void *scratch = NULL;
    if (sbytes) {
        scratch = ap_arena_alloc(c->arena, sbytes);
        if (!scratch) return dnnl_out_of_memory;
    }
    for (int i = 0; i < n && s == dnnl_success; i++) {
        const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(pd, dnnl_query_exec_arg_md, a[i].arg);
        ea[m].arg = a[i].arg;
        s = dnnl_memory_create(&ea[m].memory, md, d->eng, (void *)a[i].ptr);
        if (s == dnnl_success) m++;
    }
    if (s == dnnl_success && scratch) {
        ea[m].arg = DNNL_ARG_SCRATCHPAD;
        s = dnnl_memory_create(&ea[m].memory, smd, d->eng, scratch);
        if (s == dnnl_success) m++;
    }
    if (s == dnnl_success) s = dnnl_primitive_execute(prim, d->stream, m, ea);
    if (s == dnnl_success) s = dnnl_stream_wait(d->stream);
    for (int i = 0; i < m; i++) dnnl_memory_destroy(ea[i].memory);
    if (scratch) ap_arena_release(c->arena, scratch, sbytes);
    const char *impl = NULL;
    if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success && impl)
        snprintf(d->last_impl, sizeof d->last_impl, "%s", impl);
    return s;
}

/* A reorder src -> dst (dst = src, or dst += src with sum), made, run and
 * destroyed; for packing, which happens once per weight. */
static dnnl_status_t reorder_once(dnnl_state *d, const dnnl_memory_desc_t *smd, const void *src,
                                  const dnnl_memory_desc_t *dmd, void *dst) {
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t prim = NULL;
    dnnl_memory_t ms = NULL, md = NULL;
    dnnl_status_t s = dnnl_reorder_primitive_desc_create(&pd, smd, d->eng, dmd, d->eng, NULL);
    if (s == dnnl_success) s = dnnl_primitive_create(&prim, pd);
    if (s == dnnl_success) s = dnnl_memory_create(&ms, smd, d->eng, (void *)src);
    if (s == dnnl_success) s = dnnl_memory_create(&md, dmd, d->eng, dst);
    if (s == dnnl_success) {
        dnnl_exec_arg_t ea[2] = {{DNNL_ARG_FROM, ms}, {DNNL_ARG_TO, md}};
        s = dnnl_primitive_execute(prim, d->stream, 2, ea);
        if (s == dnnl_success) s = dnnl_stream_wait(d->stream);
    }
    if (ms) dnnl_memory_destroy(ms);
    if (md) dnnl_memory_destroy(md);
    if (prim) dnnl_primitive_destroy(prim);
    if (pd) dnnl_primitive_desc_destroy(pd);
    return s;
}

/* A temporary from the arena holding n elements of src converted to dt
 * (f32 or bf16), or src itself when it is already dt. */
typedef struct {
    void *p;
    size_t nbytes;
} tmpbuf;

static const void *as_dtype(ap_ctx *c, const void *src, ap_dtype sdt, ap_dtype dt, int64_t n, tmpbuf *t) {
    t->p = NULL;
    t->nbytes = 0;
    if (sdt == dt) return src;
    t->nbytes = (size_t)n * ap_dtype_size(dt);
    t->p = ap_arena_alloc(c->arena, t->nbytes);
    if (!t->p) {
        ap_seterr(c, AP_ERR_NOMEM, "oneDNN backend: out of memory converting %lld elements to %s", (long long)n,
                  ap_dtype_name(dt));
        return NULL;
    }
    ap_convert(t->p, dt, src, sdt, n);
    return t->p;
}

static void tmp_release(ap_ctx *c, tmpbuf *t) {
    if (t->p) ap_arena_release(c->arena, t->p, t->nbytes);
    t->p = NULL;
}

/* dst = 0 when beta is 0 (a contribution that is zero); nothing otherwise. */
static void zero_contribution(float *dst, int64_t n, float beta) {
    if (dst && beta == 0.0f && n > 0) memset(dst, 0, (size_t)n * sizeof(float));
}

void ap_cpu_sum_rows(float *dst, const float *src, int64_t rows, int64_t cols, float beta) {
    /* Partial sums over fixed blocks of rows, added in block order: the
     * result does not depend on the thread count. */
    const int64_t rb = 512;
    int64_t nb = (rows + rb - 1) / rb;
    if (nb <= 1 || cols <= 0) {
        for (int64_t j = 0; j < cols; j++) {
            double s = 0;
            for (int64_t i = 0; i < rows; i++) s += src[i * cols + j];
            dst[j] = (beta != 0.0f ? dst[j] : 0.0f) + (float)s;
        }
        return;
    }
    double *part = malloc((size_t)nb * (size_t)cols * sizeof(double));
    if (!part) { /* serial fallback, same order as one block at a time */
        for (int64_t j = 0; j < cols; j++) {
            double s = 0;
            for (int64_t i = 0; i < rows; i++) s += src[i * cols + j];
            dst[j] = (beta != 0.0f ? dst[j] : 0.0f) + (float)s;
        }
        return;
    }
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < nb; b++) {
        double *p = part + b * cols;
        for (int64_t j = 0; j < cols; j++) p[j] = 0;
        int64_t e = (b + 1) * rb < rows ? (b + 1) * rb : rows;
        for (int64_t i = b * rb; i < e; i++) {
            const float *r = src + i * cols;
            for (int64_t j = 0; j < cols; j++) p[j] += r[j];
        }
    }
    for (int64_t j = 0; j < cols; j++) {
        double s = 0;
        for (int64_t b = 0; b < nb; b++) s += part[b * cols + j];
        dst[j] = (beta != 0.0f ? dst[j] : 0.0f) + (float)s;
    }
    free(part);
}

/* ------------------------------------------------------------ weight packing */
/* The packed layouts of one weight under one kind (none when the budget had
 * no room), and when it was last used. Entries are linked in the state's
 * registry (oldest first) so that the budget can be lowered, dead copies
 * found and the bytes counted; owner is NULL once the state is gone (a
 * tensor may outlive its context's backend). */
typedef struct packs {
    struct packs *older, *newer;
    dnnl_state *owner;
    uint64_t last_use; /* the state's tick at the last lookup (0: never) */
    size_t bytes;      /* sum of e[].bytes */
    int n;
    struct {
        dnnl_memory_desc_t md;
        void *buf;
        size_t bytes;
    } e[PACK_SLOTS];
} packs;

static void registry_unlink(packs *pk) {
    dnnl_state *d = pk->owner;
    if (!d) return;
    if (pk->older) pk->older->newer = pk->newer;
    else d->reg_oldest = pk->newer;
    if (pk->newer) pk->newer->older = pk->older;
    else d->reg_newest = pk->older;
    pk->older = pk->newer = NULL;
    pk->owner = NULL;
    d->stats.pack_bytes -= (int64_t)pk->bytes;
}

static void registry_link(dnnl_state *d, packs *pk) {
    pk->owner = d;
    pk->newer = NULL;
    pk->older = d->reg_newest;
    if (d->reg_newest) d->reg_newest->newer = pk;
    else d->reg_oldest = pk;
    d->reg_newest = pk;
    d->stats.pack_bytes += (int64_t)pk->bytes;
}

static void registry_detach(dnnl_state *d) {
    while (d->reg_oldest) registry_unlink(d->reg_oldest);
}

static void packs_drop_buffers(packs *pk) {
    for (int i = 0; i < pk->n; i++) free(pk->e[i].buf);
    if (pk->owner) pk->owner->stats.pack_bytes -= (int64_t)pk->bytes;
    pk->n = 0;
    pk->bytes = 0;
}

static void packs_free(void *p) {
    packs *pk = p;
    if (!pk) return;
    packs_drop_buffers(pk);
    registry_unlink(pk);
    free(pk);
}

/* Frees cached packed copies, oldest first, until at most budget bytes stay.
 * The emptied entries stay on their tensors (and are reused on a later miss). */
static void packs_shrink(dnnl_state *d, size_t budget) {
    for (packs *pk = d->reg_oldest; pk && (size_t)d->stats.pack_bytes > budget; pk = pk->newer)
        packs_drop_buffers(pk);
}

static dnnl_data_type_t weight_dt(const ap_tensor *w) {
    return w->dtype == AP_BF16 ? dnnl_bf16 : dnnl_f32; /* f16 is widened before reordering */
}

/* The packs entry of w for kind, made (empty) when absent; a stale one (the
 * tensor was touched) is replaced, which frees its buffers. */
static packs *packs_of(dnnl_state *d, ap_tensor *w, int kind) {
    ap_packed *p = ap_tensor_packed(w, kind);
    if (p && p->data) return p->data;
    packs *pk = calloc(1, sizeof *pk);
    if (!pk) return NULL;
    ap_tensor_set_packed(w, kind, pk, packs_free);
    p = ap_tensor_packed(w, kind);
    if (!p) return NULL; /* set_packed freed pk */
    registry_link(d, pk);
    return pk;
}

/* One buffer, kept by the state, for the weights packed per call (at most one
 * is in use at a time: one per primitive call), grown to the largest: a
 * temporary per call from the arena would take a block of each weight's size
 * class, which the arena's bounded cache returns and maps again, call after
 * call, page-faulting the weights' bytes each time. */
static void *pack_scratch(dnnl_state *d, size_t bytes) {
    if (bytes > d->scratch_bytes) {
        free(d->scratch);
        d->scratch = aligned_alloc(64, bytes);
        d->scratch_bytes = d->scratch ? bytes : 0;
        d->stats.pack_scratch_bytes = (int64_t)d->scratch_bytes;
    }
    return d->scratch;
}

/* Frees the buffers of cached entries that look dead (unused for longer than
 * the longest reuse gap seen: a text encoder that ran once, a phase that
 * ended) until `need` more bytes fit in the budget; true when they fit. A loop
 * whose weights come back within the gap keeps its cached set, so a budget
 * smaller than the loop's weights does not thrash. */
static bool packs_make_room(dnnl_state *d, size_t need) {
    if ((size_t)d->stats.pack_bytes + need <= d->pack_budget) return true;
    if (!d->max_gap) return false; /* no reuse seen yet: cannot tell dead from alive */
    for (packs *pk = d->reg_oldest; pk; pk = pk->newer) {
        if (!pk->n || d->tick - pk->last_use <= d->max_gap) continue;
        packs_drop_buffers(pk);
        d->stats.pack_evictions++;
        if ((size_t)d->stats.pack_bytes + need <= d->pack_budget) return true;
    }
    return false;
}

/* The data of weight w in layout want. user describes w's stored data (with
 * f32 for an f16 tensor). A cached copy is used when there is one; else w is
 * packed, into the cache when the budget has room, or else into the state's
 * scratch buffer (valid until the next packing), or, when that cannot grow,
 * into t, a temporary from the arena that the caller releases (tmp_release)
 * once the primitive has run. */
static dnnl_status_t packed_weights(ap_ctx *c, dnnl_state *d, ap_tensor *w, int kind,
                                    const dnnl_memory_desc_t *user, const dnnl_memory_desc_t *want,
                                    const void **out, tmpbuf *t) {
    t->p = NULL;
    t->nbytes = 0;
    if (w->dtype != AP_F16 && dnnl_memory_desc_equal(user, want)) {
        *out = ap_data(w);
        return dnnl_success;
    }
    packs *pk = packs_of(d, w, kind); /* NULL only when out of memory: then pack transiently */
    d->tick++;
    if (pk) {
        if (pk->last_use && d->tick - pk->last_use > d->max_gap) d->max_gap = d->tick - pk->last_use;
        pk->last_use = d->tick;
        for (int i = 0; i < pk->n; i++)
            if (dnnl_memory_desc_equal(&pk->e[i].md, want)) {
                d->stats.pack_hits++;
                *out = pk->e[i].buf;
                return dnnl_success;
            }
    }
    size_t size = dnnl_memory_desc_get_size(want), rounded = (size + 63) / 64 * 64;
    if (pk && pk->n == PACK_SLOTS) { /* a new layout pushes out the oldest */
        d->stats.pack_bytes -= (int64_t)pk->e[0].bytes;
        pk->bytes -= pk->e[0].bytes;
        free(pk->e[0].buf);
        memmove(&pk->e[0], &pk->e[1], (PACK_SLOTS - 1) * sizeof pk->e[0]);
        pk->n--;
    }
    bool cache = pk && packs_make_room(d, rounded);
    void *buf = cache ? aligned_alloc(64, rounded) : NULL;
    if (!buf) {
        cache = false;
        buf = pack_scratch(d, rounded);
    }
    if (!buf) { /* no scratch: a temporary from the arena */
        buf = ap_arena_alloc(c->arena, rounded);
        if (buf) {
            t->p = buf;
            t->nbytes = rounded;
        }
    }
    float *wide = NULL;
    const void *src = ap_data(w);
    if (buf && w->dtype == AP_F16) {
        wide = malloc((size_t)w->numel * sizeof(float));
        if (wide) ap_convert(wide, AP_F32, src, AP_F16, w->numel);
        src = wide;
    }
    dnnl_status_t s = buf && src ? reorder_once(d, user, src, want, buf) : dnnl_out_of_memory;
    free(wide);
    if (s != dnnl_success) {
        if (cache) free(buf);
        tmp_release(c, t);
        return s;
    }
    *out = buf;
    if (!cache) {
        d->stats.packs_transient++;
        return dnnl_success;
    }
    pk->e[pk->n].md = *want;
    pk->e[pk->n].buf = buf;
    pk->e[pk->n].bytes = rounded;
    pk->n++;
    pk->bytes += rounded;
    d->stats.pack_bytes += (int64_t)rounded;
    d->stats.packs++;
    return dnnl_success;
}

/* ------------------------------------------------------------ errors */
static ap_status fail(ap_ctx *c, dnnl_status_t s, const char *op, const char *what) {
    if (ap_failed(c)) return c->status;
    return ap_seterr(c, s == dnnl_out_of_memory ? AP_ERR_NOMEM : AP_ERR_BACKEND, "%s: oneDNN %s: %s", op,
                     dnnl_status2str(s), what);
}

static ap_status conv_fail(ap_ctx *c, dnnl_status_t s, const char *what, const ap_conv_geom *g) {
    char buf[320];
    snprintf(buf, sizeof buf,
             "%s for x [%lld,%lld,%lld,%lld], w [%lld,%lld,%lld,%lld], stride %lld, pad {%lld,%lld,%lld,%lld}",
             what, (long long)g->n, (long long)g->h, (long long)g->w, (long long)g->cin, (long long)g->cout,
             (long long)g->cin, (long long)g->kh, (long long)g->kw, (long long)g->stride, (long long)g->pad[0],
             (long long)g->pad[1], (long long)g->pad[2], (long long)g->pad[3]);
    return fail(c, s, "conv2d", buf);
}

/* ------------------------------------------------------------ convolution */
typedef struct {
    const ap_conv_geom *g;
    dnnl_data_type_t dt; /* of src, weights and diff_dst; dst and diff_src are f32 */
    bool bias;
    int kind;
} conv_arg;

static dnnl_status_t build_conv(dnnl_state *d, const void *arg, dnnl_primitive_desc_t *pd) {
    const conv_arg *a = arg;
    const ap_conv_geom *g = a->g;
    dnnl_memory_desc_t src, wei, bia, dst, dsrc, dwei;
    dnnl_dims_t sd = {g->n, g->cin, g->h, g->w}, wd = {g->cout, g->cin, g->kh, g->kw};
    dnnl_dims_t dd = {g->n, g->cout, g->oh, g->ow}, bd = {g->cout};
    dnnl_dims_t st = {g->stride, g->stride}, pl = {g->pad[0], g->pad[2]}, pr = {g->pad[1], g->pad[3]};
    dnnl_status_t s = dnnl_memory_desc_init_by_tag(&src, 4, sd, a->dt, dnnl_nhwc);
    if (s == dnnl_success) s = dnnl_memory_desc_init_by_tag(&dsrc, 4, sd, dnnl_f32, dnnl_nhwc);
    if (s == dnnl_success) s = dnnl_memory_desc_init_by_tag(&wei, 4, wd, a->dt, dnnl_format_tag_any);
    if (s == dnnl_success) s = dnnl_memory_desc_init_by_tag(&dwei, 4, wd, dnnl_f32, dnnl_format_tag_any);
    if (s == dnnl_success) s = dnnl_memory_desc_init_by_tag(&bia, 1, bd, dnnl_f32, dnnl_a);
    if (s == dnnl_success) s = dnnl_memory_desc_init_by_tag(&dst, 4, dd, dnnl_f32, dnnl_nhwc);
    dnnl_memory_desc_t ddst = dst;
    if (s == dnnl_success) s = dnnl_memory_desc_init_by_tag(&ddst, 4, dd, a->dt, dnnl_nhwc);
    if (s != dnnl_success) return s;

    dnnl_convolution_desc_t fwd, bwd;
    s = dnnl_convolution_forward_desc_init(&fwd, dnnl_forward_training, dnnl_convolution_direct, &src, &wei,
                                           a->bias ? &bia : NULL, &dst, st, pl, pr);
    if (s != dnnl_success) return s;
    dnnl_primitive_attr_t attr;
    s = attr_new(&attr, false);
    if (s != dnnl_success) return s;
    if (a->kind == P_CONV_FWD) {
        s = dnnl_primitive_desc_create(pd, &fwd, attr, d->eng, NULL);
    } else {
        dnnl_primitive_desc_t hint = NULL;
        s = dnnl_primitive_desc_create(&hint, &fwd, NULL, d->eng, NULL);
        if (s == dnnl_success) {
            if (a->kind == P_CONV_BWD_D)
                s = dnnl_convolution_backward_data_desc_init(&bwd, dnnl_convolution_direct, &dsrc, &wei, &ddst, st,
                                                             pl, pr);
            else
                s = dnnl_convolution_backward_weights_desc_init(&bwd, dnnl_convolution_direct, &src, &dwei,
                                                                a->bias ? &bia : NULL, &ddst, st, pl, pr);
        }
        if (s == dnnl_success) s = dnnl_primitive_desc_create(pd, &bwd, attr, d->eng, hint);
        if (hint) dnnl_primitive_desc_destroy(hint);
    }
    dnnl_primitive_attr_destroy(attr);
    return s;
}

static pkey conv_key(ap_ctx *c, int kind, bool bf, bool bias, const ap_conv_geom *g) {
    pkey k = key_new(c, kind, bf, bias);
    int64_t v[] = {g->n,  g->h,  g->w,      g->cin,    g->cout,   g->kh,     g->kw,
                   g->oh, g->ow, g->stride, g->pad[0], g->pad[1], g->pad[2], g->pad[3]};
    _Static_assert(sizeof v / sizeof v[0] <= KEY_N, "conv key");
    memcpy(k.v, v, sizeof v);
    return k;
}

/* The weights of a conv primitive, packed from w (into tw when the cache has
 * no room: the caller releases it after the call). */
static dnnl_status_t conv_weights(ap_ctx *c, dnnl_state *d, const ap_conv_geom *g, const_dnnl_primitive_desc_t pd,
                                  ap_tensor *w, const void **out, tmpbuf *tw) {
    dnnl_memory_desc_t user;
    dnnl_dims_t wd = {g->cout, g->cin, g->kh, g->kw};
    dnnl_status_t s = dnnl_memory_desc_init_by_tag(&user, 4, wd, weight_dt(w), dnnl_oihw);
    if (s != dnnl_success) return s;
    const dnnl_memory_desc_t *want = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    return packed_weights(c, d, w, PACK_CONV, &user, want, out, tw);
}

ap_status ap_dnnl_conv_forward(ap_ctx *c, const ap_conv_geom *g, const float *x, ap_tensor *w, const float *bias,
                               float *y) {
    dnnl_state *d = state(c);
    if (!d) return c->status;
    if (g->n == 0) return AP_OK;
    bool bf = ap_dnnl_use_bf16(c);
    conv_arg ca = {g, bf ? dnnl_bf16 : dnnl_f32, bias != NULL, P_CONV_FWD};
    pkey k = conv_key(c, P_CONV_FWD, bf, bias != NULL, g);
    pentry tmp = {0}, *e;
    dnnl_status_t s = get_prim(d, &k, build_conv, &ca, &tmp, &e);
    if (s != dnnl_success) return conv_fail(c, s, "cannot make the forward primitive", g);
    const void *wp = NULL;
    tmpbuf tw = {0};
    s = conv_weights(c, d, g, e->pd, w, &wp, &tw);
    tmpbuf tx;
    const void *src =
        s == dnnl_success ? as_dtype(c, x, AP_F32, bf ? AP_BF16 : AP_F32, g->n * g->h * g->w * g->cin, &tx) : NULL;
    if (s == dnnl_success && src) {
        xarg a[] = {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wp}, {DNNL_ARG_DST, y}, {DNNL_ARG_BIAS, bias}};
        s = run(c, d, e->prim, e->pd, bias ? 4 : 3, a);
        d->stats.conv_fwd++;
        tmp_release(c, &tx);
    }
    tmp_release(c, &tw);
    put_prim(d, e);
    if (s != dnnl_success) return conv_fail(c, s, "forward failed", g);
    return c->status;
}

static ap_status conv_bwd_data(ap_ctx *c, dnnl_state *d, const ap_conv_geom *g, const void *dyc, bool bf,
                               ap_tensor *w, float *dx, float beta) {
    conv_arg ca = {g, bf ? dnnl_bf16 : dnnl_f32, false, P_CONV_BWD_D};
    pkey k = conv_key(c, P_CONV_BWD_D, bf, false, g);
    pentry tmp = {0}, *e;
    dnnl_status_t s = get_prim(d, &k, build_conv, &ca, &tmp, &e);
    if (s != dnnl_success) return conv_fail(c, s, "cannot make the backward-data primitive", g);
    const void *wp = NULL;
    tmpbuf tw = {0};
    s = conv_weights(c, d, g, e->pd, w, &wp, &tw);
    int64_t nx = g->n * g->h * g->w * g->cin;
    float *target = dx;
    size_t tbytes = (size_t)nx * sizeof(float);
    if (s == dnnl_success && beta != 0.0f) { /* no sum post-op on backward data: compute, then add */
        target = ap_arena_alloc(c->arena, tbytes);
        if (!target) s = dnnl_out_of_memory;
    }
    if (s == dnnl_success) {
        xarg a[] = {{DNNL_ARG_DIFF_DST, dyc}, {DNNL_ARG_WEIGHTS, wp}, {DNNL_ARG_DIFF_SRC, target}};
        s = run(c, d, e->prim, e->pd, 3, a);
        d->stats.conv_bwd_data++;
        if (s == dnnl_success && target != dx) ap_accumulate(dx, target, nx, 1.0f);
    }
    if (target && target != dx) ap_arena_release(c->arena, target, tbytes);
    tmp_release(c, &tw);
    put_prim(d, e);
    if (s != dnnl_success) return conv_fail(c, s, "backward data failed", g);
    return AP_OK;
}

static ap_status conv_bwd_weights(ap_ctx *c, dnnl_state *d, const ap_conv_geom *g, const void *dyc, bool bf,
                                  const float *x, float *dw, float beta_w, float *db, float beta_b) {
    conv_arg ca = {g, bf ? dnnl_bf16 : dnnl_f32, db != NULL, P_CONV_BWD_W};
    pkey k = conv_key(c, P_CONV_BWD_W, bf, db != NULL, g);
    pentry tmp = {0}, *e;
    dnnl_status_t s = get_prim(d, &k, build_conv, &ca, &tmp, &e);
    if (s != dnnl_success) return conv_fail(c, s, "cannot make the backward-weights primitive", g);
    tmpbuf tx;
    const void *src = as_dtype(c, x, AP_F32, bf ? AP_BF16 : AP_F32, g->n * g->h * g->w * g->cin, &tx);
    if (!src) {
        put_prim(d, e);
        return c->status;
    }
    dnnl_memory_desc_t user;
    dnnl_dims_t wd = {g->cout, g->cin, g->kh, g->kw};
    s = dnnl_memory_desc_init_by_tag(&user, 4, wd, dnnl_f32, dnnl_oihw);
    const dnnl_memory_desc_t *got = dnnl_primitive_desc_query_md(e->pd, dnnl_query_diff_weights_md, 0);
    /* diff_weights come in the implementation's layout; a reorder (with a
     * sum post-op for beta 1) brings them into [cout,cin,kh,kw] */
    bool direct = beta_w == 0.0f && dnnl_memory_desc_equal(&user, got);
    size_t wbytes = dnnl_memory_desc_get_size(got), bbytes = (size_t)g->cout * sizeof(float);
    void *wt = direct ? dw : ap_arena_alloc(c->arena, wbytes);
    float *bt = (db && beta_b != 0.0f) ? ap_arena_alloc(c->arena, bbytes) : db;
    if (!wt || (db && !bt)) s = dnnl_out_of_memory;
    if (s == dnnl_success) {
        xarg a[] = {
            {DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, dyc}, {DNNL_ARG_DIFF_WEIGHTS, wt}, {DNNL_ARG_DIFF_BIAS, bt}};
        s = run(c, d, e->prim, e->pd, db ? 4 : 3, a);
        d->stats.conv_bwd_weights++;
    }
    tmp_release(c, &tx);
    if (s == dnnl_success && !direct) {
        int which = beta_w != 0.0f;
        if (!e->to_user[which]) {
            dnnl_primitive_attr_t attr;
            dnnl_primitive_desc_t rpd = NULL;
            s = attr_new(&attr, which);
            if (s == dnnl_success) {
                s = dnnl_reorder_primitive_desc_create(&rpd, got, d->eng, &user, d->eng, attr);
                dnnl_primitive_attr_destroy(attr);
            }
            if (s == dnnl_success) s = dnnl_primitive_create(&e->to_user[which], rpd);
            if (rpd) dnnl_primitive_desc_destroy(rpd);
        }
        if (s == dnnl_success) {
            const_dnnl_primitive_desc_t rpd;
            dnnl_primitive_get_primitive_desc(e->to_user[which], &rpd);
            xarg a[] = {{DNNL_ARG_FROM, wt}, {DNNL_ARG_TO, dw}};
            s = run(c, d, e->to_user[which], rpd, 2, a);
        }
    }
    if (s == dnnl_success && bt && bt != db) ap_accumulate(db, bt, g->cout, 1.0f);
    if (wt && !direct) ap_arena_release(c->arena, wt, wbytes);
    if (bt && bt != db) ap_arena_release(c->arena, bt, bbytes);
    put_prim(d, e);
    if (s != dnnl_success) return conv_fail(c, s, "backward weights failed", g);
    return AP_OK;
}

ap_status ap_dnnl_conv_backward(ap_ctx *c, const ap_conv_geom *g, const float *dy, ap_tensor *w, float *dx,
                                float beta_x, const float *x, float *dw, float beta_w, float *db, float beta_b) {
    dnnl_state *d = state(c);
    if (!d) return c->status;
    int64_t ny = g->n * g->oh * g->ow * g->cout;
    if (g->n == 0) { /* no samples: zero weight and bias gradients */
        zero_contribution(dw, g->cout * g->cin * g->kh * g->kw, beta_w);
        zero_contribution(db, g->cout, beta_b);
        return AP_OK;
    }
    bool bf = ap_dnnl_use_bf16(c);
    tmpbuf tdy = {0};
    const void *dyc = dy;
    if (dx || dw) {
        dyc = as_dtype(c, dy, AP_F32, bf ? AP_BF16 : AP_F32, ny, &tdy);
        if (!dyc) return c->status;
    }
    ap_status st = AP_OK;
    if (dx) st = conv_bwd_data(c, d, g, dyc, bf, w, dx, beta_x);
    if (st == AP_OK && dw) st = conv_bwd_weights(c, d, g, dyc, bf, x, dw, beta_w, db, beta_b);
    /* a trainable bias on a frozen weight: a plain column sum, no oneDNN kernel */
    if (st == AP_OK && db && !dw) ap_cpu_sum_rows(db, dy, g->n * g->oh * g->ow, g->cout, beta_b);
    tmp_release(c, &tdy);
    return st;
}

/* ------------------------------------------------------------ matrix products */
typedef struct {
    int64_t batch, m, n, k;
    int64_t sa[3], sb[3]; /* a (m x k), b (k x n): batch, row, column strides */
    dnnl_data_type_t dt;
    bool bias, sum, wany; /* wany: weights in the layout oneDNN picks (packed) */
} mm_arg;

static dnnl_status_t build_matmul(dnnl_state *d, const void *arg, dnnl_primitive_desc_t *pd) {
    const mm_arg *a = arg;
    bool b3 = a->batch > 1;
    int nd = b3 ? 3 : 2;
    dnnl_memory_desc_t src, wei, bia, dst;
    dnnl_dims_t sd, ss, wd, ws, dd, bd;
    if (b3) {
        int64_t ab = a->sa[0] ? a->batch : 1, bb = a->sb[0] ? a->batch : 1;
        dnnl_dims_t sd3 = {ab, a->m, a->k}, ss3 = {a->sa[0] ? a->sa[0] : a->m * a->k, a->sa[1], a->sa[2]};
        dnnl_dims_t wd3 = {bb, a->k, a->n}, ws3 = {a->sb[0] ? a->sb[0] : a->k * a->n, a->sb[1], a->sb[2]};
        dnnl_dims_t dd3 = {a->batch, a->m, a->n}, bd3 = {1, 1, a->n};
        memcpy(sd, sd3, sizeof sd3), memcpy(ss, ss3, sizeof ss3), memcpy(wd, wd3, sizeof wd3);
        memcpy(ws, ws3, sizeof ws3), memcpy(dd, dd3, sizeof dd3), memcpy(bd, bd3, sizeof bd3);
    } else {
        dnnl_dims_t sd2 = {a->m, a->k}, ss2 = {a->sa[1], a->sa[2]}, wd2 = {a->k, a->n};
        dnnl_dims_t ws2 = {a->sb[1], a->sb[2]}, dd2 = {a->m, a->n}, bd2 = {1, a->n};
        memcpy(sd, sd2, sizeof sd2), memcpy(ss, ss2, sizeof ss2), memcpy(wd, wd2, sizeof wd2);
        memcpy(ws, ws2, sizeof ws2), memcpy(dd, dd2, sizeof dd2), memcpy(bd, bd2, sizeof bd2);
    }
    dnnl_status_t s = dnnl_memory_desc_init_by_strides(&src, nd, sd, a->dt, ss);
    if (s == dnnl_success)
        s = a->wany ? dnnl_memory_desc_init_by_tag(&wei, nd, wd, a->dt, dnnl_format_tag_any)
                    : dnnl_memory_desc_init_by_strides(&wei, nd, wd, a->dt, ws);
    if (s == dnnl_success) s = dnnl_memory_desc_init_by_tag(&dst, nd, dd, dnnl_f32, b3 ? dnnl_abc : dnnl_ab);
    if (s == dnnl_success) s = dnnl_memory_desc_init_by_tag(&bia, nd, bd, dnnl_f32, b3 ? dnnl_abc : dnnl_ab);
    dnnl_matmul_desc_t md;
    if (s == dnnl_success) s = dnnl_matmul_desc_init(&md, &src, &wei, a->bias ? &bia : NULL, &dst);
    if (s != dnnl_success) return s;
    dnnl_primitive_attr_t attr;
    s = attr_new(&attr, a->sum);
    if (s != dnnl_success) return s;
    s = dnnl_primitive_desc_create(pd, &md, attr, d->eng, NULL);
    dnnl_primitive_attr_destroy(attr);
    return s;
}

static ap_status mm_fail(ap_ctx *c, dnnl_status_t s, const char *op, const char *what, const mm_arg *a) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s for a batch of %lld products [%lld x %lld] * [%lld x %lld]", what,
             (long long)a->batch, (long long)a->m, (long long)a->k, (long long)a->k, (long long)a->n);
    return fail(c, s, op, buf);
}

/* Runs one matmul. a and b are in a->dt already; with w non-NULL the
 * weights come from w (packed under pack_kind; a->sb describes w's layout)
 * and b is ignored. */
static ap_status mm_run(ap_ctx *c, dnnl_state *d, const char *op, const mm_arg *a, const void *pa, const void *pb,
                        ap_tensor *w, int pack_kind, const float *bias, float *out) {
    pkey k = key_new(c, P_MATMUL, a->dt == dnnl_bf16, a->bias | a->sum << 1 | a->wany << 2);
    int64_t v[] = {a->batch, a->m, a->n, a->k, a->sa[0], a->sa[1], a->sa[2], a->sb[0], a->sb[1], a->sb[2]};
    _Static_assert(sizeof v / sizeof v[0] <= KEY_N, "matmul key");
    memcpy(k.v, v, sizeof v);
    pentry tmp = {0}, *e;
    dnnl_status_t s = get_prim(d, &k, build_matmul, a, &tmp, &e);
    if (s != dnnl_success) return mm_fail(c, s, op, "cannot make the matmul primitive", a);
    tmpbuf tw = {0};
    if (w) {
        dnnl_memory_desc_t user;
        dnnl_dims_t wd = {a->k, a->n}, ws = {a->sb[1], a->sb[2]};
        s = dnnl_memory_desc_init_by_strides(&user, 2, wd, weight_dt(w), ws);
        const dnnl_memory_desc_t *want = dnnl_primitive_desc_query_md(e->pd, dnnl_query_weights_md, 0);
        if (s == dnnl_success) s = packed_weights(c, d, w, pack_kind, &user, want, &pb, &tw);
    }
    if (s == dnnl_success) {
        xarg x[] = {{DNNL_ARG_SRC, pa}, {DNNL_ARG_WEIGHTS, pb}, {DNNL_ARG_DST, out}, {DNNL_ARG_BIAS, bias}};
        s = run(c, d, e->prim, e->pd, a->bias ? 4 : 3, x);
        d->stats.matmul++;
    }
    tmp_release(c, &tw);
    put_prim(d, e);
    if (s != dnnl_success) return mm_fail(c, s, op, "matmul failed", a);
    return AP_OK;
}

/* Number of elements from an operand's first to its last (strides >= 0). */
static int64_t span(int64_t batch, int64_t rows, int64_t cols, int64_t sb, int64_t sr, int64_t sc) {
    if (batch == 0 || rows == 0 || cols == 0) return 0;
    return (batch - 1) * sb + (rows - 1) * sr + (cols - 1) * sc + 1;
}

/* out = beta*out + bias (rows of n); the product with k == 0. */
static void fill_bias(float *out, int64_t rows, int64_t n, const float *bias, float beta) {
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < n; j++)
            out[i * n + j] = (beta != 0.0f ? out[i * n + j] : 0.0f) + (bias ? bias[j] : 0.0f);
}

ap_status ap_dnnl_matmul(ap_ctx *c, const char *op, int64_t batch, int64_t m, int64_t n, int64_t k,
                         const ap_dnnl_mat *a, const ap_dnnl_mat *b, const float *bias, float *out, float beta) {
    dnnl_state *d = state(c);
    if (!d) return c->status;
    if (batch == 0 || m == 0 || n == 0) return AP_OK;
    if (k == 0) {
        fill_bias(out, batch * m, n, bias, beta);
        return AP_OK;
    }
    bool bf = ap_dnnl_use_bf16(c);
    ap_dtype cdt = bf ? AP_BF16 : AP_F32;
    mm_arg ma = {batch,
                 m,
                 n,
                 k,
                 {a->sb, a->sr, a->sc},
                 {b->sb, b->sr, b->sc},
                 bf ? dnnl_bf16 : dnnl_f32,
                 bias != NULL,
                 beta != 0.0f,
                 false};
    if (batch > 1 && b->sb == 0 && a->sb == m * a->sr) { /* shared b: one product over all rows */
        ma.batch = 1;
        ma.m = batch * m;
        ma.sa[0] = 0;
    }
    if (ma.batch == 1) ma.sa[0] = ma.sb[0] = 0;
    tmpbuf ta = {0}, tb = {0};
    const void *pa = as_dtype(c, a->data, a->dtype, cdt, span(batch, m, k, a->sb, a->sr, a->sc), &ta);
    const void *pb = pa ? as_dtype(c, b->data, b->dtype, cdt, span(batch, k, n, b->sb, b->sr, b->sc), &tb) : NULL;
    ap_status st = pb ? mm_run(c, d, op, &ma, pa, pb, NULL, 0, bias, out) : c->status;
    tmp_release(c, &tb);
    tmp_release(c, &ta);
    return st;
}

ap_status ap_dnnl_linear_forward(ap_ctx *c, int64_t rows, int64_t in, int64_t out, const float *x, ap_tensor *w,
                                 const float *bias, float *y) {
    dnnl_state *d = state(c);
    if (!d) return c->status;
    if (rows == 0 || out == 0) return AP_OK;
    if (in == 0) {
        fill_bias(y, rows, out, bias, 0.0f);
        return AP_OK;
    }
    bool bf = ap_dnnl_use_bf16(c);
    /* y = x * w^T: the weights operand is w^T, [in x out] with strides (1, in) */
    mm_arg ma = {1, rows, out, in, {0, in, 1}, {0, 1, in}, bf ? dnnl_bf16 : dnnl_f32, bias != NULL, false, true};
    tmpbuf tx;
    const void *px = as_dtype(c, x, AP_F32, bf ? AP_BF16 : AP_F32, rows * in, &tx);
    if (!px) return c->status;
    ap_status st = mm_run(c, d, "linear", &ma, px, NULL, w, PACK_LIN_T, bias, y);
    tmp_release(c, &tx);
    return st;
}

ap_status ap_dnnl_linear_backward(ap_ctx *c, int64_t rows, int64_t in, int64_t out, const float *dy, ap_tensor *w,
                                  float *dx, float beta_x, const float *x, float *dw, float beta_w, float *db,
                                  float beta_b) {
    dnnl_state *d = state(c);
    if (!d) return c->status;
    if (db) ap_cpu_sum_rows(db, dy, rows, out, beta_b);
    if (rows == 0 || in == 0 || out == 0) { /* an empty product contributes zeros */
        zero_contribution(dx, rows * in, beta_x);
        zero_contribution(dw, out * in, beta_w);
        return AP_OK;
    }
    bool bf = ap_dnnl_use_bf16(c);
    ap_dtype cdt = bf ? AP_BF16 : AP_F32;
    dnnl_data_type_t dt = bf ? dnnl_bf16 : dnnl_f32;
    tmpbuf tdy = {0}, tx = {0};
    const void *pdy = (dx || dw) ? as_dtype(c, dy, AP_F32, cdt, rows * out, &tdy) : dy;
    ap_status st = pdy ? AP_OK : c->status;
    if (st == AP_OK && dx) { /* dx = dy * w, w [out x in] as stored */
        mm_arg ma = {1, rows, in, out, {0, out, 1}, {0, in, 1}, dt, false, beta_x != 0.0f, true};
        st = mm_run(c, d, "linear backward (input gradient)", &ma, pdy, NULL, w, PACK_LIN, NULL, dx);
    }
    if (st == AP_OK && dw) { /* dw = dy^T * x: dy read transposed, strides (1, out) */
        const void *px = as_dtype(c, x, AP_F32, cdt, rows * in, &tx);
        mm_arg ma = {1, out, in, rows, {0, 1, out}, {0, in, 1}, dt, false, beta_w != 0.0f, false};
        st = px ? mm_run(c, d, "linear backward (weight gradient)", &ma, pdy, px, NULL, 0, NULL, dw) : c->status;
    }
    tmp_release(c, &tx);
    tmp_release(c, &tdy);
    return st;
}
