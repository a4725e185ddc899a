/* Batch concatenation and slicing: values, gradients, errors. */
#include "gradcheck.h"
#include "test.h"

#include <string.h>

static ap_tensor *cat_fn(ap_ctx *c, void *u, int n, ap_tensor **in) { return ap_concat_batch(c, in[0], in[1]); }
static ap_tensor *slice_fn(ap_ctx *c, void *u, int n, ap_tensor **in) { return ap_slice_batch(c, in[0], 1, 2); }
/* guidance as the trainer runs it: uncond and cond halves of one batch */
static ap_tensor *cfg_fn(ap_ctx *c, void *u, int n, ap_tensor **in) {
    ap_tensor *xx = ap_concat_batch(c, in[0], in[0]);
    ap_tensor *e = ap_scale(c, xx, 1.0f);
    ap_tensor *un = ap_slice_batch(c, e, 0, 2), *co = ap_slice_batch(c, e, 2, 2);
    ap_tensor *y = ap_axpby(c, -6.5f, un, 7.5f, co);
    ap_tensor *ts[] = {xx, e, un, co};
    for (int i = 0; i < 4; i++) ap_tensor_release(ts[i]);
    return y;
}

int main(void) {
    ap_ctx *c = test_ctx();
    test_rng r = {21};
    ap_tensor *a = test_rand_leaf(c, &r, 3, (int64_t[]){2, 3, 5}, -1, 1);
    ap_tensor *b = test_rand_leaf(c, &r, 3, (int64_t[]){3, 3, 5}, -1, 1);
    ap_tensor *y = ap_concat_batch(c, a, b);
    CHECK(y && ap_tensor_dim(y, 0) == 5 && ap_tensor_numel(y) == 75);
    CHECK(y && !memcmp(ap_tensor_cdata(y), ap_tensor_cdata(a), 30 * sizeof(float)) &&
          !memcmp((const float *)ap_tensor_cdata(y) + 30, ap_tensor_cdata(b), 45 * sizeof(float)));
    ap_tensor *s = ap_slice_batch(c, b, 1, 2);
    CHECK(s && ap_tensor_dim(s, 0) == 2 && !memcmp(ap_tensor_cdata(s), (const float *)ap_tensor_cdata(b) + 15, 30 * sizeof(float)));
    ap_tape_clear(c);
    ap_tensor *in[2] = {a, b};
    gradcheck(c, "concat_batch", cat_fn, NULL, 2, in, &(gc_opts){.max_elems = -1});
    gradcheck(c, "slice_batch", slice_fn, NULL, 1, &b, &(gc_opts){.max_elems = -1});
    ap_tensor *x = test_rand_leaf(c, &r, 4, (int64_t[]){2, 2, 2, 3}, -1, 1);
    gradcheck(c, "guidance through one batch", cfg_fn, NULL, 1, &x, &(gc_opts){.max_elems = -1});
    /* errors */
    ap_tensor *bad = test_rand(c, &r, 3, (int64_t[]){2, 4, 5}, -1, 1);
    CHECK(ap_concat_batch(c, a, bad) == NULL && ap_last_status(c) == AP_ERR_SHAPE);
    ap_clear_error(c);
    CHECK(ap_slice_batch(c, a, 1, 2) == NULL && ap_last_status(c) == AP_ERR_SHAPE);
    ap_clear_error(c);
    ap_tensor *ts[] = {a, b, y, s, x, bad};
    for (int i = 0; i < 6; i++) ap_tensor_release(ts[i]);
    ap_ctx_free(c);
    return test_summary("batch_ops");
}
