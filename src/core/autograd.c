/* The autograd tape, backward, and the checkpoint primitive.
 *
 * A tape is a list of nodes in creation order; reversed, that is a valid
 * topological order, so backward is one walk from the end. Each node keeps the
 * edges of its inputs (the producing node and output index, or a leaf tensor),
 * the tensors its backward needs, and, during backward, the gradients of its
 * outputs. After a node's backward runs, everything it held is released, so
 * memory falls as backward proceeds. Checkpointing pushes a nested tape. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>

static bool tape_is_current(const ap_ctx *c, uint64_t id) { return c->tape && c->tape->id == id; }

static bool tape_is_live(const ap_ctx *c, uint64_t id) {
    for (const ap_tape *t = c->tape; t; t = t->parent)
        if (t->id == id) return true;
    return false;
}

/* Where a gradient for t goes: 1 = somewhere (edge filled), 0 = nowhere,
 * -1 = error (t has history on an enclosing tape: a checkpointed function used
 * a tensor with gradient history that is not one of its inputs). */
static int tensor_edge(const ap_ctx *c, ap_tensor *t, ap_edge *e) {
    memset(e, 0, sizeof *e);
    if (!t || !t->requires_grad) return 0;
    if (!t->node) {
        e->leaf = t;
        return 1;
    }
    if (tape_is_current(c, t->tape_id)) {
        e->node = t->node;
        e->out = t->node_out;
        return 1;
    }
    return tape_is_live(c, t->tape_id) ? -1 : 0;
}

bool ap_any_requires_grad(const ap_ctx *c, int n, ap_tensor *const *ts) {
    if (!c->grad_enabled) return false;
    for (int i = 0; i < n; i++) {
        ap_edge e;
        if (tensor_edge(c, ts[i], &e) != 0) return true;
    }
    return false;
}

int ap_tensor_requires_grad(const ap_tensor *t) {
    if (!t || !t->requires_grad) return 0;
    return !t->node || tape_is_live(t->ctx, t->tape_id);
}

ap_status ap_tensor_set_requires_grad(ap_tensor *t, int on) {
    if (!t) return AP_ERR_INVALID_ARG;
    if (t->node && tape_is_live(t->ctx, t->tape_id))
        return ap_seterr(t->ctx, AP_ERR_STATE,
                         "set_requires_grad: %s is the output of an op; only leaves can be marked",
                         t->name ? t->name : "tensor");
    if (on && t->dtype != AP_F32)
        return ap_seterr(t->ctx, AP_ERR_DTYPE,
                         "set_requires_grad: %s is %s; only f32 tensors can have gradients",
                         t->name ? t->name : "tensor", ap_dtype_name(t->dtype));
    t->node = NULL;
    t->requires_grad = on != 0;
    return AP_OK;
}

ap_tensor *ap_tensor_grad(ap_tensor *t) { return (t && t->grad && !t->grad_fresh) ? t->grad : NULL; }
void ap_tensor_zero_grad(ap_tensor *t) {
    if (t) t->grad_fresh = true;
}

ap_node *ap_node_begin(ap_ctx *c, const char *name, ap_backward_fn bw, int n_in,
                       ap_tensor *const *inputs) {
    if (ap_failed(c) || !c->grad_enabled) return NULL;
    ap_edge edges[AP_NODE_MAX_IN];
    bool any = false;
    if (n_in > AP_NODE_MAX_IN) {
        ap_seterr(c, AP_ERR_INVALID_ARG, "%s: %d inputs (at most %d)", name, n_in, AP_NODE_MAX_IN);
        return NULL;
    }
    for (int i = 0; i < n_in; i++) {
        int r = tensor_edge(c, inputs[i], &edges[i]);
        if (r < 0) {
            ap_seterr(c, AP_ERR_STATE,
                      "%s: an input has gradient history from outside the checkpointed function; "
                      "pass it to ap_checkpoint as an input",
                      name);
            return NULL;
        }
        if (r > 0 && c->in_checkpoint_forward && edges[i].node) {
            /* inside a checkpointed function every input is a fresh view, so
             * history can only come from a tensor the function closed over */
            ap_seterr(c, AP_ERR_STATE,
                      "%s: an input has gradient history from outside the checkpointed function; "
                      "pass it to ap_checkpoint as an input",
                      name);
            return NULL;
        }
        any |= r > 0;
    }
    if (!any) return NULL;
    if (c->in_checkpoint_forward) { /* no recording: just note that gradients will be needed */
        c->saw_requires_grad = true;
        return NULL;
    }
    ap_node *n = calloc(1, sizeof *n);
    if (!n) {
        ap_seterr(c, AP_ERR_NOMEM, "%s: out of memory recording the tape", name);
        return NULL;
    }
    n->name = name;
    n->backward = bw;
    n->n_in = n_in;
    for (int i = 0; i < n_in; i++) {
        n->in[i] = edges[i];
        ap_tensor_retain(edges[i].leaf);
        if (inputs[i]) {
            n->in_ndim[i] = inputs[i]->ndim;
            memcpy(n->in_shape[i], inputs[i]->shape, sizeof n->in_shape[i]);
        }
    }
    n->prev = c->tape->last;
    c->tape->last = n;
    c->tape->count++;
    return n;
}

void ap_node_output(ap_node *n, int k, ap_tensor *out) {
    if (!n || !out) return;
    ap_ctx *c = out->ctx;
    if (k + 1 > n->n_out) n->n_out = k + 1;
    n->out_ndim[k] = out->ndim;
    memcpy(n->out_shape[k], out->shape, sizeof n->out_shape[k]);
    out->requires_grad = true;
    out->node = n;
    out->node_out = k;
    out->tape_id = c->tape->id;
}

void ap_node_save(ap_node *n, int k, ap_tensor *t) {
    if (!n) return;
    ap_tensor_retain(t);
    ap_tensor_release(n->saved[k]);
    n->saved[k] = t;
}

static void node_free(ap_node *n) {
    for (int i = 0; i < AP_NODE_MAX_IN; i++) {
        ap_tensor_release(n->in[i].leaf);
        ap_tensor_release(n->acc_pending[i]);
    }
    for (int i = 0; i < AP_NODE_MAX_OUT; i++) ap_tensor_release(n->out_grad[i]);
    for (int i = 0; i < AP_NODE_MAX_SAVED; i++) ap_tensor_release(n->saved[i]);
    if (n->cleanup) n->cleanup(n);
    free(n);
}

void ap_tape_clear(ap_ctx *c) {
    if (!c || !c->tape) return;
    for (ap_node *n = c->tape->last; n;) {
        ap_node *p = n->prev;
        node_free(n);
        n = p;
    }
    c->tape->last = NULL;
    c->tape->count = 0;
    c->tape->id = c->next_tape_id++; /* tensors made on the old tape now read as constants */
}

size_t ap_tape_size(const ap_ctx *c) { return c->tape ? c->tape->count : 0; }

void ap_accumulate(float *dst, const float *src, int64_t n, float beta) {
    if (beta == 0.0f) {
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    }
#pragma omp parallel for simd schedule(static) if (n > 32768)
    for (int64_t i = 0; i < n; i++) dst[i] += src[i];
}

static bool same_edge(const ap_edge *a, const ap_edge *b) {
    return (a->node || a->leaf) && a->node == b->node && a->out == b->out && a->leaf == b->leaf;
}

/* The accumulator an edge points at, allocated on first use. A borrowed seed
 * (a view of the caller's gradient) is copied before anything is added to it. */
static ap_tensor *edge_acc(ap_ctx *c, const ap_edge *e, int ndim, const int64_t *shape, float *beta) {
    ap_tensor **slot;
    bool *fresh;
    if (e->node) {
        slot = &e->node->out_grad[e->out];
        fresh = &e->node->out_grad_fresh[e->out];
        if (*slot && e->node->out_grad_borrowed[e->out]) {
            ap_tensor *own = ap_tensor_new_shape(c, AP_F32, ndim, shape);
            if (!own) return NULL;
            memcpy(ap_data(own), ap_data(*slot), (size_t)own->numel * sizeof(float));
            ap_tensor_release(*slot);
            *slot = own;
            e->node->out_grad_borrowed[e->out] = false;
        }
    } else {
        slot = &e->leaf->grad;
        fresh = &e->leaf->grad_fresh;
    }
    if (!*slot) {
        *slot = ap_tensor_new_shape(c, AP_F32, ndim, shape);
        if (!*slot) return NULL;
        *fresh = true;
    }
    *beta = *fresh ? 0.0f : 1.0f;
    *fresh = false;
    return *slot;
}

ap_tensor *ap_grad_acc(ap_ctx *c, ap_node *n, int i, float *beta) {
    *beta = 1.0f;
    if (ap_failed(c) || i >= n->n_in || !ap_node_needs(n, i)) return NULL;
    for (int j = 0; j < n->n_in; j++) {
        if (j != i && n->acc_given[j] && same_edge(&n->in[i], &n->in[j])) {
            /* aliased with an input whose accumulator is already out: use a temporary */
            ap_tensor *t = ap_tensor_new_shape(c, AP_F32, n->in_ndim[i], n->in_shape[i]);
            ap_tensor_release(n->acc_pending[i]);
            n->acc_pending[i] = t;
            *beta = 0.0f;
            return t;
        }
    }
    n->acc_given[i] = true;
    return edge_acc(c, &n->in[i], n->in_ndim[i], n->in_shape[i], beta);
}

static void flush_pending(ap_ctx *c, ap_node *n) {
    for (int i = 0; i < n->n_in; i++) {
        ap_tensor *t = n->acc_pending[i];
        if (!t) continue;
        float beta;
        ap_tensor *acc = edge_acc(c, &n->in[i], n->in_ndim[i], n->in_shape[i], &beta);
        if (acc) ap_accumulate(ap_f32(acc), ap_f32(t), t->numel, beta);
        ap_tensor_release(t);
        n->acc_pending[i] = NULL;
    }
}

/* Adds a seed gradient g (f32, numel of y) into y's accumulator. */
static ap_status seed(ap_ctx *c, ap_tensor *y, const ap_tensor *g) {
    ap_edge e;
    int r = tensor_edge(c, y, &e);
    if (r <= 0)
        return ap_seterr(c, AP_ERR_STATE,
                         "backward: %s does not require a gradient (no recorded op leads to it)",
                         y->name ? y->name : "the output");
    if (g && (g->dtype != AP_F32 || g->numel != y->numel)) {
        char a[96], b[96];
        return ap_seterr(c, AP_ERR_SHAPE, "backward: seed gradient %s %s does not match output %s",
                         ap_dtype_name(g->dtype), ap_shape_str(g, a, sizeof a),
                         ap_shape_str(y, b, sizeof b));
    }
    if (!g && y->numel != 1)
        return ap_seterr(c, AP_ERR_INVALID_ARG,
                         "backward: output has %lld elements; give a seed gradient",
                         (long long)y->numel);
    if (g && e.node && !e.node->out_grad[e.out]) {
        /* the first seed of an op output: borrow the caller's gradient (a view
         * with the output's shape) instead of copying it; edge_acc copies it
         * if anything is ever added to it */
        ap_tensor *v = ap_tensor_view(c, (ap_tensor *)g, y->ndim, y->shape);
        if (!v) return c->status;
        e.node->out_grad[e.out] = v;
        e.node->out_grad_fresh[e.out] = false;
        e.node->out_grad_borrowed[e.out] = true;
        return AP_OK;
    }
    float beta;
    ap_tensor *acc = edge_acc(c, &e, y->ndim, y->shape, &beta);
    if (!acc) return c->status;
    if (g) {
        ap_accumulate(ap_f32(acc), ap_cf32(g), y->numel, beta);
    } else {
        /* beta 0: acc is uninitialised and must not be read (0 * NaN is NaN) */
        ap_f32(acc)[0] = beta != 0.0f ? ap_f32(acc)[0] + 1.0f : 1.0f;
    }
    return AP_OK;
}

ap_status ap_backward_multi(ap_ctx *c, int n, ap_tensor *const *ys, ap_tensor *const *gs) {
    if (!c) return AP_ERR_INVALID_ARG;
    if (ap_failed(c)) return c->status;
    ap_status st = AP_OK;
    for (int i = 0; i < n && st == AP_OK; i++) st = seed(c, ys[i], gs ? gs[i] : NULL);
    int prev_enabled = c->grad_enabled;
    c->grad_enabled = false; /* backward kernels record nothing */
    ap_tape *tape = c->tape;
    for (ap_node *nd = tape->last; nd && st == AP_OK;) {
        bool reached = false;
        for (int k = 0; k < nd->n_out; k++) reached |= nd->out_grad[k] != NULL;
        if (reached) {
            nd->backward(c, nd);
            flush_pending(c, nd);
            st = c->status;
        }
        ap_node *p = nd->prev;
        tape->last = p;
        tape->count--;
        node_free(nd); /* frees saved activations and this node's gradients now */
        nd = p;
    }
    c->grad_enabled = prev_enabled;
    ap_tape_clear(c);
    return st;
}

ap_status ap_backward(ap_ctx *c, ap_tensor *y, const ap_tensor *grad_y) {
    ap_tensor *g = (ap_tensor *)grad_y;
    return ap_backward_multi(c, 1, &y, grad_y ? &g : NULL);
}

/* ------------------------------------------------------------ checkpoint */
typedef struct {
    ap_checkpoint_fn fn;
    void *user;        /* the caller's pointer, or copy below */
    size_t copy_size;  /* > 0: the node owns a copy of the caller's user bytes */
    _Alignas(16) unsigned char copy[];
} ckpt_user;

static void ckpt_cleanup(ap_node *n) { free(n->user); }

/* Runs fn on leaf views of the inputs; views[i] requires grad when want[i]. */
static ap_status run_on_views(ap_ctx *c, ckpt_user *cu, int n_in, ap_tensor *const *in,
                              const bool *want, int n_out, ap_tensor **out, ap_tensor **views) {
    for (int i = 0; i < n_in; i++) {
        views[i] = in[i] ? ap_tensor_view(c, in[i], in[i]->ndim, in[i]->shape) : NULL;
        if (in[i] && !views[i]) return c->status;
        if (views[i]) views[i]->requires_grad = want && want[i];
    }
    for (int k = 0; k < n_out; k++) out[k] = NULL;
    ap_status st = cu->fn(c, cu->user, n_in, views, n_out, out);
    if (st != AP_OK && !ap_failed(c)) ap_seterr(c, st, "checkpoint: function failed (%s)", ap_strerror(st));
    return ap_failed(c) ? c->status : AP_OK;
}

static void ckpt_backward(ap_ctx *c, ap_node *n) {
    ckpt_user *cu = n->user;
    int n_in = n->n_in, n_out = n->n_out;
    ap_tensor *views[AP_NODE_MAX_IN] = {0}, *outs[AP_NODE_MAX_OUT] = {0};
    bool want[AP_NODE_MAX_IN];
    for (int i = 0; i < n_in; i++) want[i] = ap_node_needs(n, i);

    ap_tape *tape = calloc(1, sizeof *tape);
    if (!tape) {
        ap_seterr(c, AP_ERR_NOMEM, "checkpoint: out of memory");
        return;
    }
    tape->id = c->next_tape_id++;
    tape->parent = c->tape;
    c->tape = tape;
    int prev_enabled = ap_set_grad_enabled(c, 1);
    bool prev_ckf = c->in_checkpoint_forward;
    c->in_checkpoint_forward = false;

    ap_status st = run_on_views(c, cu, n_in, n->saved, want, n_out, outs, views);
    if (st == AP_OK) {
        ap_tensor *ys[AP_NODE_MAX_OUT], *gs[AP_NODE_MAX_OUT];
        int m = 0;
        for (int k = 0; k < n_out; k++) {
            if (!n->out_grad[k] || !outs[k] || !ap_tensor_requires_grad(outs[k])) continue;
            ys[m] = outs[k];
            gs[m] = n->out_grad[k];
            m++;
        }
        if (m > 0) st = ap_backward_multi(c, m, ys, gs);
    }
    ap_tape_clear(c);
    c->tape = tape->parent;
    free(tape);
    c->in_checkpoint_forward = prev_ckf;
    ap_set_grad_enabled(c, prev_enabled);

    for (int i = 0; i < n_in && st == AP_OK; i++) {
        if (!want[i]) continue;
        float beta;
        ap_tensor *acc = ap_grad_acc(c, n, i, &beta);
        if (!acc) break;
        ap_tensor *g = views[i] ? ap_tensor_grad(views[i]) : NULL;
        if (g)
            ap_accumulate(ap_f32(acc), ap_f32(g), acc->numel, beta);
        else if (beta == 0.0f)
            memset(ap_data(acc), 0, (size_t)acc->numel * sizeof(float));
    }
    for (int i = 0; i < n_in; i++) ap_tensor_release(views[i]);
    for (int k = 0; k < n_out; k++) ap_tensor_release(outs[k]);
}

ap_status ap_checkpoint(ap_ctx *c, ap_checkpoint_fn fn, void *user, int n_in,
                        ap_tensor *const *in, int n_out, ap_tensor **out) {
    return ap_checkpoint_copy(c, fn, user, 0, n_in, in, n_out, out);
}

ap_status ap_checkpoint_copy(ap_ctx *c, ap_checkpoint_fn fn, const void *user, size_t user_size, int n_in,
                             ap_tensor *const *in, int n_out, ap_tensor **out) {
    if (!c) return AP_ERR_INVALID_ARG;
    for (int k = 0; k < n_out && out; k++) out[k] = NULL;
    if (ap_failed(c)) return c->status;
    if (!fn || n_in < 0 || n_out < 1 || !out || n_in > AP_NODE_MAX_IN || n_out > AP_NODE_MAX_OUT)
        return ap_seterr(c, AP_ERR_INVALID_ARG,
                         "checkpoint: need a function, 0..%d inputs and 1..%d outputs",
                         AP_NODE_MAX_IN, AP_NODE_MAX_OUT);
    ckpt_user cu = {fn, (void *)user, 0};
    if (!c->grad_enabled || c->in_checkpoint_forward) {
        /* nothing to record (or an enclosing checkpoint records): run plainly,
         * but still report trainable inputs to an enclosing checkpoint */
        if (c->in_checkpoint_forward && ap_any_requires_grad(c, n_in, in)) c->saw_requires_grad = true;
        ap_status st = fn(c, (void *)user, n_in, in, n_out, out);
        if (st != AP_OK && !ap_failed(c)) ap_seterr(c, st, "checkpoint: function failed (%s)", ap_strerror(st));
        return c->status;
    }
    /* the edges are taken before running, so an input that is also an output is safe */
    bool inputs_need = ap_any_requires_grad(c, n_in, in);
    bool prev_saw = c->saw_requires_grad;
    c->in_checkpoint_forward = true;
    c->saw_requires_grad = false;
    ap_tensor *views[AP_NODE_MAX_IN] = {0};
    ap_status st = run_on_views(c, &cu, n_in, in, NULL, n_out, out, views);
    bool needs = inputs_need || c->saw_requires_grad;
    c->in_checkpoint_forward = false;
    c->saw_requires_grad = prev_saw;
    for (int i = 0; i < n_in; i++) ap_tensor_release(views[i]);
    if (st != AP_OK) {
        for (int k = 0; k < n_out; k++) {
            ap_tensor_release(out[k]);
            out[k] = NULL;
        }
        return st;
    }
    if (!needs) return AP_OK;

    /* record one node that keeps only the inputs */
    ap_node *n = ap_node_begin(c, "checkpoint", ckpt_backward, n_in, in);
    if (!n && !ap_failed(c)) { /* inputs need nothing: only parameters inside fn do */
        n = calloc(1, sizeof *n);
        if (n) {
            n->name = "checkpoint";
            n->backward = ckpt_backward;
            n->n_in = n_in;
            for (int i = 0; i < n_in; i++)
                if (in[i]) {
                    n->in_ndim[i] = in[i]->ndim;
                    memcpy(n->in_shape[i], in[i]->shape, sizeof n->in_shape[i]);
                }
            n->prev = c->tape->last;
            c->tape->last = n;
            c->tape->count++;
        } else {
            ap_seterr(c, AP_ERR_NOMEM, "checkpoint: out of memory");
        }
    }
    if (!n) {
        for (int k = 0; k < n_out; k++) {
            ap_tensor_release(out[k]);
            out[k] = NULL;
        }
        return c->status;
    }
    ckpt_user *u = malloc(sizeof *u + user_size);
    if (!u) return ap_seterr(c, AP_ERR_NOMEM, "checkpoint: out of memory");
    *u = cu;
    if (user_size > 0) { /* the recomputation gets the node's own copy */
        memcpy(u->copy, user, user_size);
        u->user = u->copy;
        u->copy_size = user_size;
    }
    n->user = u;
    n->cleanup = ckpt_cleanup;
    for (int i = 0; i < n_in; i++) ap_node_save(n, i, in[i]);
    for (int k = 0; k < n_out; k++) {
        if (!out[k]) continue;
        if (out[k]->node || out[k]->requires_grad) {
            /* fn returned one of its inputs or a leaf: give the node its own header */
            ap_tensor *v = ap_tensor_view(c, out[k], out[k]->ndim, out[k]->shape);
            ap_tensor_release(out[k]);
            out[k] = v;
            if (!v) return c->status;
        }
        ap_node_output(n, k, out[k]);
    }
    n->n_out = n_out;
    return AP_OK;
}
