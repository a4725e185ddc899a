/* Internals of core/: the tensor, context and tape structures, and the API that
 * op implementations use to record nodes and accumulate gradients.
 *
 * Gradient rule (said once, here): gradients of leaves accumulate (+=) across
 * backward passes until ap_tensor_zero_grad; gradients of intermediates are
 * accumulated over the tensor's uses during one backward. Both go through
 * ap_grad_acc(), which hands an op the accumulator together with `beta`: 0 when
 * the accumulator is fresh (its contents are undefined: the op must write,
 * not add), 1 when the op must add. Kernels therefore take a beta argument and
 * compute dst = beta*dst + contribution, so no gradient buffer is ever zeroed
 * just to be added to. With beta 0 a kernel must not read dst at all (it holds
 * garbage, possibly NaN, and 0*NaN is NaN).
 */
#ifndef AP_CORE_INTERNAL_H
#define AP_CORE_INTERNAL_H

#include "alignprop.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------ arena
 * A caching allocator for tensor storage: 64-byte aligned blocks, freed blocks
 * kept in size-classed free lists for reuse (no page faults on the hot path),
 * and exact accounting of bytes in live tensors and their peak. */
typedef struct ap_arena ap_arena;
ap_arena *ap_arena_create(void);
void ap_arena_free(ap_arena *a);
void *ap_arena_alloc(ap_arena *a, size_t nbytes); /* NULL when out of memory */
void ap_arena_release(ap_arena *a, void *p, size_t nbytes);
size_t ap_arena_in_use(const ap_arena *a);
size_t ap_arena_peak(const ap_arena *a);
size_t ap_arena_reserved(const ap_arena *a);
void ap_arena_reset_peak(ap_arena *a);
void ap_arena_trim(ap_arena *a);
/* On a miss, cached blocks beyond keep bytes are freed, oldest first (default
 * 256 MiB); trimmed counts the bytes so returned. */
void ap_arena_set_keep(ap_arena *a, size_t bytes);
size_t ap_arena_trimmed(const ap_arena *a);

/* ------------------------------------------------------------ storage */
typedef struct ap_storage {
    int refcount;
    void *data;
    size_t nbytes;
    ap_arena *arena;                   /* owner when allocated from an arena */
    void (*free_fn)(void *user, void *data); /* owner otherwise (NULL: not owned) */
    void *free_user;
} ap_storage;

/* A backend's cached, repacked copy of a tensor (e.g. oneDNN-blocked bf16
 * weights). Dropped when the tensor's version changes or it is freed. */
typedef struct ap_packed {
    struct ap_packed *next;
    int kind;        /* backend-defined key */
    uint64_t version;
    void *data;
    void (*free_fn)(void *data);
} ap_packed;

struct ap_node;

struct ap_tensor {
    int refcount;
    ap_dtype dtype;
    int ndim;
    int64_t shape[AP_MAX_DIMS];
    int64_t numel;
    ap_storage *st;
    ap_ctx *ctx;
    char *name;
    /* autograd */
    bool requires_grad;     /* a leaf that wants a gradient, or an op output that has a node */
    struct ap_node *node;   /* producing node on the live tape (NULL for leaves) */
    int node_out;           /* which output of node */
    uint64_t tape_id;       /* id of the tape node belongs to */
    ap_tensor *grad;        /* leaves: accumulated gradient (f32) */
    bool grad_fresh;        /* grad's contents are undefined (zero) */
    /* backend caches */
    uint64_t version;
    ap_packed *packed;
};

static inline float *ap_f32(ap_tensor *t) { return (float *)t->st->data; }
static inline const float *ap_cf32(const ap_tensor *t) { return (const float *)t->st->data; }
static inline void *ap_data(const ap_tensor *t) { return t->st->data; }

/* ------------------------------------------------------------ tape */
#define AP_NODE_MAX_IN 8
#define AP_NODE_MAX_OUT 8
#define AP_NODE_MAX_SAVED 8

typedef struct ap_node ap_node;
typedef void (*ap_backward_fn)(ap_ctx *c, ap_node *n);

/* Where the gradient of one op input goes. */
typedef struct {
    ap_node *node;     /* producing node on this tape, or NULL */
    int out;           /* its output index */
    ap_tensor *leaf;   /* a leaf requiring grad (retained), or NULL */
} ap_edge;

struct ap_node {
    const char *name;
    ap_backward_fn backward;
    void (*cleanup)(ap_node *n); /* frees anything in user (optional) */
    int n_in, n_out;
    ap_edge in[AP_NODE_MAX_IN];               /* in[i].node == NULL && leaf == NULL: no gradient */
    int in_ndim[AP_NODE_MAX_IN];
    int64_t in_shape[AP_NODE_MAX_IN][AP_MAX_DIMS];
    int out_ndim[AP_NODE_MAX_OUT];
    int64_t out_shape[AP_NODE_MAX_OUT][AP_MAX_DIMS];
    ap_tensor *out_grad[AP_NODE_MAX_OUT];     /* accumulated during backward */
    bool out_grad_fresh[AP_NODE_MAX_OUT];
    bool out_grad_borrowed[AP_NODE_MAX_OUT]; /* a view of a caller's seed: copy before adding to it */
    ap_tensor *saved[AP_NODE_MAX_SAVED];      /* retained tensors the backward needs */
    int64_t i[8];                             /* scalar attributes */
    float f[8];
    void *user;                               /* op-specific, freed by cleanup */
    ap_node *prev;                            /* tape order */
    /* bookkeeping of ap_grad_acc during this node's backward */
    bool acc_given[AP_NODE_MAX_IN];
    ap_tensor *acc_pending[AP_NODE_MAX_IN];   /* temporaries for aliased inputs */
};

/* Begins a node for an op with n_in inputs. Returns NULL when nothing needs
 * recording (grad disabled, or no input requires a gradient). NULL entries in
 * inputs are allowed (optional inputs such as a bias). */
ap_node *ap_node_begin(ap_ctx *c, const char *name, ap_backward_fn bw, int n_in,
                       ap_tensor *const *inputs);
/* Marks out as output k of node n (n may be NULL: then nothing happens). */
void ap_node_output(ap_node *n, int k, ap_tensor *out);
/* Retains t in slot k of n (n may be NULL). */
void ap_node_save(ap_node *n, int k, ap_tensor *t);
/* True when input i of the node wants a gradient. */
static inline bool ap_node_needs(const ap_node *n, int i) { return n->in[i].node || n->in[i].leaf; }
/* The gradient of output k during backward, or NULL when none reached it (treat as zero). */
static inline ap_tensor *ap_node_gout(ap_node *n, int k) { return n->out_grad[k]; }

/* The accumulator for the gradient of input i (f32, the input's shape), and
 * *beta (0: write, 1: add). NULL when input i needs no gradient, or on
 * allocation failure (error set in c). Call it once per input; the op must
 * then write every element (beta 0) or add to every element (beta 1). When two
 * inputs of a node are the same tensor the second call returns a temporary
 * that is added in after the backward function returns, so aliasing is safe. */
ap_tensor *ap_grad_acc(ap_ctx *c, ap_node *n, int i, float *beta);
/* dst = beta*dst + src over n floats (for ops that compute a contribution first). */
void ap_accumulate(float *dst, const float *src, int64_t n, float beta);

/* True when some tensor in the list requires a gradient and grad is enabled. */
bool ap_any_requires_grad(const ap_ctx *c, int n, ap_tensor *const *ts);

/* ------------------------------------------------------------ context */
typedef struct ap_tape {
    uint64_t id;
    ap_node *last;
    size_t count;
    struct ap_tape *parent;
} ap_tape;

struct ap_ctx {
    ap_status status;
    char msg[1024];
    ap_precision precision;
    int num_threads;
    bool grad_enabled;
    bool in_checkpoint_forward; /* ops record nothing but note trainable inputs */
    bool saw_requires_grad;
    ap_arena *arena;
    ap_tape *tape;
    uint64_t next_tape_id;
    double flops; /* matrix-product flops of forward ops since the last reset */
    void *backend; /* backend/cpu state (oneDNN engine and stream, caches), made on first use */
    void (*backend_free)(void *backend);
};

/* Sets the context's error (first error wins while sticky) and returns s. */
ap_status ap_seterr(ap_ctx *c, ap_status s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static inline bool ap_failed(const ap_ctx *c) { return c->status != AP_OK; }

/* ------------------------------------------------------------ tensor helpers */
/* A tensor sharing x's storage with another shape (same numel). No node. */
ap_tensor *ap_tensor_view(ap_ctx *c, ap_tensor *x, int ndim, const int64_t *shape);
/* A new f32 tensor with the shape of x. */
ap_tensor *ap_tensor_like(ap_ctx *c, const ap_tensor *x);
ap_tensor *ap_tensor_new_shape(ap_ctx *c, ap_dtype dt, int ndim, const int64_t *shape);
bool ap_same_shape(const ap_tensor *a, const ap_tensor *b);
/* "[2,64,64,320]" into buf. */
const char *ap_shape_str(const ap_tensor *t, char *buf, size_t n);
/* Checks x is non-NULL, the context has no error and x has dtype dt; sets an
 * error naming op otherwise. */
bool ap_check_input(ap_ctx *c, const char *op, const char *arg, const ap_tensor *x, ap_dtype dt);
/* Fetches a packed cache entry of t for kind (NULL when absent or stale). */
ap_packed *ap_tensor_packed(ap_tensor *t, int kind);
void ap_tensor_set_packed(ap_tensor *t, int kind, void *data, void (*free_fn)(void *));

/* ------------------------------------------------------------ numerics */
static inline float ap_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline uint16_t ap_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                          /* nearest even */
    return (uint16_t)(u >> 16);
}
float ap_f16_to_f32(uint16_t h);
uint16_t ap_f32_to_f16(float f);
/* Converts n elements between float dtypes (f32, bf16, f16) and ids (i32, i64).
 * Float conversions are exact (round to nearest even, NaN kept, subnormals
 * kept under FTZ/DAZ) and bit-identical to the scalar functions above; their
 * src needs no alignment. Runs of at most AP_CONVERT_SERIAL_MAX elements stay
 * on the calling thread (readers that convert tensor by tensor call it in
 * chunks: a parallel region per tensor stalls on a busy machine). */
#define AP_CONVERT_SERIAL_MAX 65536
ap_status ap_convert(void *dst, ap_dtype dt_dst, const void *src, ap_dtype dt_src, int64_t n);

/* Sets flush-to-zero and denormals-are-zero in the calling thread. */
void ap_set_ftz_daz(void);

#endif
