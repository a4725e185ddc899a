/* Timestep embedding (forward-only) against the diffusers recipe computed in
 * double, and the token-embedding lookup: forward for i32/i64 ids and
 * f32/bf16/f16 tables, the table's gradient (scatter-add with repeated ids,
 * accumulation, determinism across thread counts), and error cases. */
#include "gradcheck.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const float *F(const ap_tensor *t) { return ap_tensor_cdata(t); }

static int same_bits(const ap_tensor *a, const ap_tensor *b) {
    return a && b && ap_tensor_numel(a) == ap_tensor_numel(b) &&
           memcmp(ap_tensor_cdata(a), ap_tensor_cdata(b), ap_tensor_nbytes(a)) == 0;
}

/* ------------------------------------------------------------ timestep embedding */
/* diffusers get_timestep_embedding: exponent = -ln(max_period) * i / (half - shift),
 * emb = t * exp(exponent), [sin, cos] (or [cos, sin] with flip), zero pad for odd dim.
 * f32_angle: the angle as PyTorch forms it in f32 (what the op promises to
 * match); otherwise all in double. */
static void ts_ref(double *out, const float *t, int B, int dim, int flip, double shift, double max_period,
                   int f32_angle) {
    int half = dim / 2;
    for (int b = 0; b < B; b++) {
        double *o = out + (size_t)b * dim;
        for (int i = 0; i < half; i++) {
            double ang;
            if (f32_angle) {
                float e = (float)-log(max_period) * (float)i;
                e = e / (float)((double)half - shift);
                ang = (double)(t[b] * (float)exp((double)e));
            } else {
                ang = (double)t[b] * exp(-log(max_period) * i / (half - shift));
            }
            o[i] = flip ? cos(ang) : sin(ang);
            o[half + i] = flip ? sin(ang) : cos(ang);
        }
        if (dim & 1) o[dim - 1] = 0;
    }
}

static void test_timestep(ap_ctx *c) {
    const float tv[5] = {0.0f, 1.0f, 999.0f, 500.5f, 37.25f};
    ap_tensor *t = ap_tensor_from_data(c, AP_F32, 1, (int64_t[]){5}, tv);
    ap_tensor_set_requires_grad(t, 1); /* forward-only: records nothing even so */
    const struct {
        int dim, flip;
        float shift, maxp;
    } cases[] = {{320, 1, 0.0f, 10000.0f}, {320, 0, 1.0f, 10000.0f}, {7, 1, 0.0f, 10000.0f},
                 {33, 0, 1.0f, 100.0f},    {2, 1, 0.0f, 10000.0f},   {1, 1, 0.0f, 10000.0f}};
    char label[96];
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        int dim = cases[k].dim;
        ap_tensor *y = ap_timestep_embedding(c, t, dim, cases[k].flip, cases[k].shift, cases[k].maxp);
        CHECK_OK(c);
        CHECK(y && ap_tensor_ndim(y) == 2 && ap_tensor_dim(y, 0) == 5 && ap_tensor_dim(y, 1) == dim);
        CHECK(!ap_tensor_requires_grad(y) && ap_tape_size(c) == 0);
        double *ref = malloc(sizeof(double) * 5 * (size_t)dim);
        ts_ref(ref, tv, 5, dim, cases[k].flip, cases[k].shift, cases[k].maxp, 1);
        snprintf(label, sizeof label, "timestep_embedding dim %d flip %d shift %g (f32 angle)", dim, cases[k].flip,
                 (double)cases[k].shift);
        test_close(label, F(y), ref, 5 * dim, 0, 1e-7);
        /* and within the f32 rounding of the angle (t * freq ~ 1000 -> ~6e-5) of exact math */
        ts_ref(ref, tv, 5, dim, cases[k].flip, cases[k].shift, cases[k].maxp, 0);
        snprintf(label, sizeof label, "timestep_embedding dim %d (exact angle)", dim);
        test_close(label, F(y), ref, 5 * dim, 0, 2e-4);
        /* t = 0: sin 0, cos 1; the pad column is zero */
        int half = dim / 2, ok = 1;
        for (int i = 0; i < half; i++) {
            ok &= F(y)[i] == (cases[k].flip ? 1.0f : 0.0f);
            ok &= F(y)[half + i] == (cases[k].flip ? 0.0f : 1.0f);
        }
        for (int b = 0; b < 5 && (dim & 1); b++) ok &= F(y)[b * dim + dim - 1] == 0.0f;
        CHECK_MSG(ok, "timestep_embedding dim %d: t=0 row and pad column", dim);
        free(ref);
        ap_tensor_release(y);
    }
    /* errors */
    CHECK(ap_timestep_embedding(c, t, 0, 1, 0, 10000) == NULL && ap_last_status(c) == AP_ERR_INVALID_ARG);
    CHECK(strstr(ap_last_error(c), "timestep_embedding") && strstr(ap_last_error(c), "dim"));
    ap_clear_error(c);
    CHECK(ap_timestep_embedding(c, t, 2, 1, 1.0f, 10000) == NULL && ap_last_status(c) == AP_ERR_INVALID_ARG);
    CHECK(strstr(ap_last_error(c), "shift") != NULL);
    ap_clear_error(c);
    CHECK(ap_timestep_embedding(c, t, 8, 1, 0, -1.0f) == NULL && ap_last_status(c) == AP_ERR_INVALID_ARG);
    ap_clear_error(c);
    ap_tensor *t2 = ap_tensor_zeros(c, AP_F32, 2, (int64_t[]){2, 1});
    CHECK(ap_timestep_embedding(c, t2, 8, 1, 0, 10000) == NULL && ap_last_status(c) == AP_ERR_SHAPE);
    ap_clear_error(c);
    ap_tensor *ti = ap_tensor_zeros(c, AP_I64, 1, (int64_t[]){2});
    CHECK(ap_timestep_embedding(c, ti, 8, 1, 0, 10000) == NULL && ap_last_status(c) == AP_ERR_DTYPE);
    ap_clear_error(c);
    ap_tensor_release(t2);
    ap_tensor_release(ti);
    ap_tensor_release(t);
}

/* ------------------------------------------------------------ embedding */
static ap_tensor *make_ids(ap_ctx *c, ap_dtype dt, int nd, const int64_t *shape, test_rng *r, int64_t V) {
    ap_tensor *ids = ap_tensor_new(c, dt, nd, shape);
    for (int64_t i = 0; i < ap_tensor_numel(ids); i++) {
        int64_t v = (int64_t)(test_rng_next(r) % (uint64_t)V);
        if (dt == AP_I32)
            ((int32_t *)ap_tensor_data(ids))[i] = (int32_t)v;
        else
            ((int64_t *)ap_tensor_data(ids))[i] = v;
    }
    return ids;
}

static int64_t id_at(const ap_tensor *ids, int64_t i) {
    return ap_tensor_dtype(ids) == AP_I32 ? ((const int32_t *)ap_tensor_cdata(ids))[i]
                                           : ((const int64_t *)ap_tensor_cdata(ids))[i];
}

static ap_tensor *emb_f(ap_ctx *c, void *u, int n, ap_tensor **in) { return ap_embedding(c, (ap_tensor *)u, in[0]); }

static void test_embedding(ap_ctx *c) {
    test_rng r = {31};
    const int64_t V = 11, C = 6;
    ap_tensor *table = test_rand_leaf(c, &r, 2, (int64_t[]){V, C}, -1, 1);
    ap_dtype idt[2] = {AP_I32, AP_I64};
    for (int d = 0; d < 2; d++) {
        ap_tensor *ids = make_ids(c, idt[d], 2, (int64_t[]){3, 5}, &r, 4); /* ids 0..3: repeats */
        ap_tensor *y = ap_embedding(c, ids, table);
        CHECK(y && ap_tensor_ndim(y) == 3 && ap_tensor_dim(y, 2) == C && ap_tensor_dim(y, 1) == 5);
        int ok = 1;
        for (int64_t t = 0; t < 15; t++)
            for (int64_t k = 0; k < C; k++) ok &= F(y)[t * C + k] == F(table)[id_at(ids, t) * C + k];
        CHECK_MSG(ok, "embedding forward gathers rows (%s ids)", ap_dtype_name(idt[d]));
        /* the table's gradient: scatter-add, twice to accumulate */
        ap_tensor *seed = test_rand(c, &r, 1, (int64_t[]){15 * C}, -1, 1);
        CHECK(ap_backward(c, y, seed) == AP_OK);
        ap_tensor_release(y);
        y = ap_embedding(c, ids, table);
        CHECK(ap_backward(c, y, seed) == AP_OK);
        double ref[11 * 6] = {0};
        for (int64_t t = 0; t < 15; t++)
            for (int64_t k = 0; k < C; k++) ref[id_at(ids, t) * C + k] += 2.0 * F(seed)[t * C + k];
        test_close("embedding table gradient (accumulated, unused rows zero)", F(ap_tensor_grad(table)), ref, V * C,
                   1e-6, 1e-7);
        ap_tensor_zero_grad(table);
        gradcheck(c, "embedding", emb_f, ids, 1, &table, &(gc_opts){.max_elems = -1});
        ap_tensor_zero_grad(table);
        ap_tensor_release(seed);
        ap_tensor_release(y);
        ap_tensor_release(ids);
    }
    /* bf16 and f16 tables give the converted rows; a frozen table records nothing */
    ap_dtype tdt[2] = {AP_BF16, AP_F16};
    ap_tensor *ids = make_ids(c, AP_I64, 1, (int64_t[]){9}, &r, V);
    for (int d = 0; d < 2; d++) {
        ap_tensor *tl = ap_tensor_convert(c, table, tdt[d]), *tf = ap_tensor_convert(c, tl, AP_F32);
        ap_tensor *y1 = ap_embedding(c, ids, tl), *y2 = ap_embedding(c, ids, tf);
        CHECK_MSG(same_bits(y1, y2), "embedding of a %s table equals the converted f32 table", ap_dtype_name(tdt[d]));
        CHECK(!ap_tensor_requires_grad(y1) && ap_tape_size(c) == 0);
        ap_tensor_release(y1);
        ap_tensor_release(y2);
        ap_tensor_release(tl);
        ap_tensor_release(tf);
    }
    /* errors: out-of-range ids name the id and its position */
    ((int64_t *)ap_tensor_data(ids))[4] = V;
    CHECK(ap_embedding(c, ids, table) == NULL && ap_last_status(c) == AP_ERR_INVALID_ARG);
    CHECK_MSG(strstr(ap_last_error(c), "embedding") && strstr(ap_last_error(c), "id 11") &&
                  strstr(ap_last_error(c), "position 4"),
              "%s", ap_last_error(c));
    ap_clear_error(c);
    ((int64_t *)ap_tensor_data(ids))[4] = -3;
    CHECK(ap_embedding(c, ids, table) == NULL && strstr(ap_last_error(c), "id -3"));
    ap_clear_error(c);
    ((int64_t *)ap_tensor_data(ids))[4] = 0;
    ap_tensor *fids = ap_tensor_zeros(c, AP_F32, 1, (int64_t[]){3});
    CHECK(ap_embedding(c, fids, table) == NULL && ap_last_status(c) == AP_ERR_DTYPE);
    ap_clear_error(c);
    ap_tensor *t1 = ap_tensor_zeros(c, AP_F32, 1, (int64_t[]){V});
    CHECK(ap_embedding(c, ids, t1) == NULL && ap_last_status(c) == AP_ERR_SHAPE);
    ap_clear_error(c);
    ap_tensor *ti = ap_tensor_zeros(c, AP_I32, 2, (int64_t[]){V, C});
    CHECK(ap_embedding(c, ids, ti) == NULL && ap_last_status(c) == AP_ERR_DTYPE);
    ap_clear_error(c);
    CHECK(ap_embedding(c, NULL, table) == NULL && ap_last_status(c) == AP_ERR_INVALID_ARG);
    ap_clear_error(c);
    ap_tensor_release(fids);
    ap_tensor_release(t1);
    ap_tensor_release(ti);
    ap_tensor_release(ids);
    ap_tensor_release(table);
}

/* A CLIP-sized lookup (threaded scatter): same gradient bits across runs and
 * thread counts, and equal to a double reference. */
static void test_embedding_large(ap_ctx *c) {
    test_rng r = {32};
    const int64_t V = 1000, C = 768, T = 2 * 77;
    ap_tensor *table = test_rand_leaf(c, &r, 2, (int64_t[]){V, C}, -1, 1);
    ap_tensor *ids = make_ids(c, AP_I32, 2, (int64_t[]){2, 77}, &r, 50); /* many repeats */
    ap_tensor *seed = test_rand(c, &r, 1, (int64_t[]){T * C}, -1, 1);
    int threads = ap_get_num_threads(c);
    ap_tensor *res[3];
    for (int run = 0; run < 3; run++) {
        ap_set_num_threads(c, run == 2 ? 1 : 2);
        ap_tensor_zero_grad(table);
        ap_tensor *y = ap_embedding(c, ids, table);
        CHECK(ap_backward(c, y, seed) == AP_OK);
        res[run] = ap_copy(c, ap_tensor_grad(table));
        ap_tensor_release(y);
    }
    ap_set_num_threads(c, threads);
    CHECK_MSG(same_bits(res[0], res[1]), "embedding gradient identical across runs");
    CHECK_MSG(same_bits(res[0], res[2]), "embedding gradient identical with 1 and 2 threads");
    double *ref = calloc((size_t)(V * C), sizeof(double));
    for (int64_t t = 0; t < T; t++)
        for (int64_t k = 0; k < C; k++) ref[id_at(ids, t) * C + k] += F(seed)[t * C + k];
    test_close("embedding gradient, large", F(res[0]), ref, V * C, 1e-6, 1e-6);
    free(ref);
    for (int run = 0; run < 3; run++) ap_tensor_release(res[run]);
    ap_tensor_release(seed);
    ap_tensor_release(ids);
    ap_tensor_release(table);
}

int main(void) {
    ap_ctx *c = test_ctx();
    test_timestep(c);
    test_embedding(c);
    test_embedding_large(c);
    CHECK(ap_tape_size(c) == 0);
    CHECK_MSG(ap_mem_in_use(c) == 0, "all tensors released (%zu bytes live)", ap_mem_in_use(c));
    ap_ctx_free(c);
    return test_summary("embed");
}
