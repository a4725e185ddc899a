/* Embeddings: the sinusoidal timestep embedding (forward-only) and the
 * token-embedding lookup (the table gets a gradient when it requires one). */
#include "backend/cpu/cpu_kernels.h"
#include "internal.h"

#include <math.h>
#include <stdlib.h>

ap_tensor *ap_timestep_embedding(ap_ctx *c, ap_tensor *t, int dim, int flip_sin_to_cos, float shift,
                                 float max_period) {
    if (!c || !ap_check_input(c, "timestep_embedding", "t", t, AP_F32)) return NULL;
    char s[96];
    if (t->ndim != 1) {
        ap_seterr(c, AP_ERR_SHAPE, "timestep_embedding: t %s must be [B]", ap_shape_str(t, s, sizeof s));
        return NULL;
    }
    if (dim < 1) {
        ap_seterr(c, AP_ERR_INVALID_ARG, "timestep_embedding: dim %d must be >= 1", dim);
        return NULL;
    }
    if (!(max_period > 0.0f) || isinf(max_period)) {
        ap_seterr(c, AP_ERR_INVALID_ARG, "timestep_embedding: max_period %g must be finite and > 0",
                  (double)max_period);
        return NULL;
    }
    if (dim >= 2 && !((float)(dim / 2) - shift != 0.0f && isfinite(shift))) {
        ap_seterr(c, AP_ERR_INVALID_ARG,
                  "timestep_embedding: shift %g must be finite and differ from dim/2 = %d", (double)shift,
                  dim / 2);
        return NULL;
    }
    ap_tensor *y = ap_tensor_new_shape(c, AP_F32, 2, (int64_t[]){t->shape[0], dim});
    if (!y) return NULL;
    ap_cpu_timestep_embedding(ap_f32(y), ap_f32(t), t->shape[0], dim, flip_sin_to_cos, shift, max_period);
    return y; /* forward-only: no node, the output is a constant */
}

/* ids as int64 in a malloc'd array, each checked against [0, V). NULL with an
 * error set on a bad id or no memory. */
static int64_t *load_ids(ap_ctx *c, const char *op, const ap_tensor *ids, int64_t V) {
    int64_t T = ids->numel;
    int64_t *out = malloc((size_t)(T ? T : 1) * sizeof *out);
    if (!out) {
        ap_seterr(c, AP_ERR_NOMEM, "%s: out of memory", op);
        return NULL;
    }
    for (int64_t i = 0; i < T; i++) {
        int64_t id = ids->dtype == AP_I32 ? ((const int32_t *)ap_data(ids))[i] : ((const int64_t *)ap_data(ids))[i];
        if (id < 0 || id >= V) {
            ap_seterr(c, AP_ERR_INVALID_ARG, "%s: id %lld at position %lld is out of range [0, %lld)", op,
                      (long long)id, (long long)i, (long long)V);
            free(out);
            return NULL;
        }
        out[i] = id;
    }
    return out;
}

enum { SAVE_IDS };

static void embedding_backward(ap_ctx *c, ap_node *n) {
    float beta;
    ap_tensor *g = ap_grad_acc(c, n, 1, &beta);
    if (!g) return;
    int64_t V = n->in_shape[1][0], C = n->in_shape[1][1];
    ap_tensor *ids = n->saved[SAVE_IDS];
    int64_t *id = load_ids(c, "embedding backward", ids, V);
    if (!id) return;
    ap_cpu_embedding_bwd(ap_f32(g), ap_f32(ap_node_gout(n, 0)), id, ids->numel, V, C, beta);
    free(id);
}

ap_tensor *ap_embedding(ap_ctx *c, ap_tensor *ids, ap_tensor *table) {
    if (!c || ap_failed(c)) return NULL;
    char s[96];
    if (!ids || !table) {
        ap_seterr(c, AP_ERR_INVALID_ARG, "embedding: %s is NULL", ids ? "table" : "ids");
        return NULL;
    }
    if (ids->dtype != AP_I32 && ids->dtype != AP_I64) {
        ap_seterr(c, AP_ERR_DTYPE, "embedding: ids have dtype %s, expected i32 or i64", ap_dtype_name(ids->dtype));
        return NULL;
    }
    if (table->dtype != AP_F32 && table->dtype != AP_BF16 && table->dtype != AP_F16) {
        ap_seterr(c, AP_ERR_DTYPE, "embedding: table%s%s has dtype %s, expected f32, bf16 or f16",
                  table->name ? " " : "", table->name ? table->name : "", ap_dtype_name(table->dtype));
        return NULL;
    }
    if (table->ndim != 2) {
        ap_seterr(c, AP_ERR_SHAPE, "embedding: table %s must be [V, C]", ap_shape_str(table, s, sizeof s));
        return NULL;
    }
    if (ids->ndim + 1 > AP_MAX_DIMS) {
        ap_seterr(c, AP_ERR_SHAPE, "embedding: ids %s have too many dims (at most %d)",
                  ap_shape_str(ids, s, sizeof s), AP_MAX_DIMS - 1);
        return NULL;
    }
    int64_t V = table->shape[0], C = table->shape[1], shape[AP_MAX_DIMS];
    for (int i = 0; i < ids->ndim; i++) shape[i] = ids->shape[i];
    shape[ids->ndim] = C;
    int64_t *id = load_ids(c, "embedding", ids, V);
    if (!id) return NULL;
    ap_tensor *y = ap_tensor_new_shape(c, AP_F32, ids->ndim + 1, shape);
    if (y) ap_cpu_embedding_fwd(ap_f32(y), id, ap_data(table), table->dtype, ids->numel, C);
    free(id);
    if (!y) return NULL;
    ap_tensor *ins[2] = {ids, table};
    ap_node *n = ap_node_begin(c, "embedding", embedding_backward, 2, ins);
    ap_node_save(n, SAVE_IDS, ids);
    ap_node_output(n, 0, y);
    return y;
}
