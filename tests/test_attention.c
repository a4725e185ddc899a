/* ap_attention: forward and backward against a naive double-precision
 * reference (materialised score matrices), gradcheck, partial gradients,
 * accumulation and aliasing, checkpointing, bf16 against f32, memory that
 * does not grow with T x S, determinism, and argument errors. Every
 * instruction-set path the CPU has is exercised (the AMX tile code also on
 * its software model). */
#include "backend/cpu/attention.h"
#include "gradcheck.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int64_t B, T, S, H, d;
    float scale; /* 0: 1/sqrt(d) */
    int causal;
} shape_t;

static float eff_scale(const shape_t *s) { return s->scale != 0 ? s->scale : 1.0f / sqrtf((float)s->d); }

/* Reference forward and (when dout) backward in double. Outputs may be NULL. */
static void reference(const shape_t *s, const float *q, const float *k, const float *v,
                      const float *dout, double *out, double *dq, double *dk, double *dv) {
    int64_t C = s->H * s->d, T = s->T, S = s->S, d = s->d;
    double sc = eff_scale(s);
    double *P = malloc(sizeof(double) * T * S), *dP = malloc(sizeof(double) * T * S);
    if (dq) memset(dq, 0, sizeof(double) * s->B * T * C);
    if (dk) memset(dk, 0, sizeof(double) * s->B * S * C);
    if (dv) memset(dv, 0, sizeof(double) * s->B * S * C);
    for (int64_t b = 0; b < s->B; b++)
        for (int64_t h = 0; h < s->H; h++) {
            const float *qh = q + b * T * C + h * d, *kh = k + b * S * C + h * d,
                        *vh = v + b * S * C + h * d;
            for (int64_t t = 0; t < T; t++) {
                double mx = -INFINITY;
                for (int64_t j = 0; j < S; j++) {
                    double a = 0;
                    for (int64_t c = 0; c < d; c++) a += (double)qh[t * C + c] * kh[j * C + c];
                    a *= sc;
                    if (s->causal && j > t) a = -INFINITY;
                    P[t * S + j] = a;
                    if (a > mx) mx = a;
                }
                double sum = 0;
                for (int64_t j = 0; j < S; j++) sum += (P[t * S + j] = exp(P[t * S + j] - mx));
                for (int64_t j = 0; j < S; j++) P[t * S + j] /= sum;
                if (out)
                    for (int64_t c = 0; c < d; c++) {
                        double o = 0;
                        for (int64_t j = 0; j < S; j++) o += P[t * S + j] * vh[j * C + c];
                        out[b * T * C + t * C + h * d + c] = o;
                    }
            }
            if (!dout) continue;
            const float *gh = dout + b * T * C + h * d;
            for (int64_t t = 0; t < T; t++) {
                double D = 0;
                for (int64_t j = 0; j < S; j++) {
                    double a = 0;
                    for (int64_t c = 0; c < d; c++) a += (double)gh[t * C + c] * vh[j * C + c];
                    dP[t * S + j] = a;
                    D += a * P[t * S + j];
                }
                for (int64_t j = 0; j < S; j++) {
                    double p = P[t * S + j], ds = p * (dP[t * S + j] - D) * sc;
                    for (int64_t c = 0; c < d; c++) {
                        if (dv) dv[b * S * C + j * C + h * d + c] += p * gh[t * C + c];
                        if (dq) dq[b * T * C + t * C + h * d + c] += ds * kh[j * C + c];
                        if (dk) dk[b * S * C + j * C + h * d + c] += ds * qh[t * C + c];
                    }
                }
            }
        }
    free(P);
    free(dP);
}

static double max_abs(const double *x, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) m = fmax(m, fabs(x[i]));
    return m;
}

typedef struct {
    ap_tensor *q, *k, *v, *gy;
} inputs_t;

static inputs_t make_inputs(ap_ctx *c, test_rng *r, const shape_t *s, float amp) {
    inputs_t in;
    int64_t C = s->H * s->d;
    in.q = test_rand(c, r, 3, (int64_t[]){s->B, s->T, C}, -amp, amp);
    in.k = test_rand(c, r, 3, (int64_t[]){s->B, s->S, C}, -amp, amp);
    in.v = test_rand(c, r, 3, (int64_t[]){s->B, s->S, C}, -1, 1);
    in.gy = test_rand(c, r, 3, (int64_t[]){s->B, s->T, C}, -1, 1);
    return in;
}
static void free_inputs(inputs_t *in) {
    ap_tensor_release(in->q);
    ap_tensor_release(in->k);
    ap_tensor_release(in->v);
    ap_tensor_release(in->gy);
}

/* Runs forward (and backward for the inputs marked in want[3]) and compares
 * with the reference: forward within ftol, gradients within gtol of the
 * largest reference gradient. */
static void check_against_reference(ap_ctx *c, const char *label, const shape_t *s,
                                    const int want[3], double ftol, double gtol, uint64_t seed) {
    test_rng r = {seed};
    inputs_t in = make_inputs(c, &r, s, 1.5f);
    ap_tensor *x[3] = {in.q, in.k, in.v};
    for (int i = 0; i < 3; i++) ap_tensor_set_requires_grad(x[i], want[i]);
    ap_tensor *y = ap_attention(c, in.q, in.k, in.v, (int)s->H, s->scale, s->causal);
    CHECK_OK(c);
    if (!y) {
        free_inputs(&in);
        return;
    }
    int64_t nq = s->B * s->T * s->H * s->d, nk = s->B * s->S * s->H * s->d;
    double *out = malloc(sizeof(double) * nq), *g[3];
    g[0] = malloc(sizeof(double) * nq);
    g[1] = malloc(sizeof(double) * nk);
    g[2] = malloc(sizeof(double) * nk);
    reference(s, ap_tensor_cdata(in.q), ap_tensor_cdata(in.k), ap_tensor_cdata(in.v),
              ap_tensor_cdata(in.gy), out, g[0], g[1], g[2]);
    char buf[160];
    snprintf(buf, sizeof buf, "%s forward", label);
    test_close(buf, ap_tensor_cdata(y), out, nq, ftol, ftol * max_abs(out, nq));
    if (want[0] || want[1] || want[2]) {
        CHECK(ap_backward(c, y, in.gy) == AP_OK);
        const char *nm[3] = {"dq", "dk", "dv"};
        for (int i = 0; i < 3; i++) {
            ap_tensor *gi = ap_tensor_grad(x[i]);
            if (!want[i]) {
                CHECK_MSG(gi == NULL, "%s: %s computed though not asked for", label, nm[i]);
                continue;
            }
            CHECK_MSG(gi != NULL, "%s: no %s", label, nm[i]);
            if (!gi) continue;
            int64_t n = i == 0 ? nq : nk;
            snprintf(buf, sizeof buf, "%s %s", label, nm[i]);
            test_close(buf, ap_tensor_cdata(gi), g[i], n, gtol, gtol * max_abs(g[i], n));
        }
    }
    ap_tensor_release(y);
    free(out);
    for (int i = 0; i < 3; i++) free(g[i]);
    free_inputs(&in);
}

static const shape_t shapes[] = {
    {2, 37, 23, 3, 5, 0, 0},      /* odd everything, cross-attention */
    {1, 19, 19, 2, 8, 0, 1},      /* causal */
    {1, 130, 130, 2, 40, 0, 0},   /* SD head width, several tiles, partial last tiles */
    {1, 130, 77, 1, 80, 0, 0},    /* cross-attention to 77 text tokens */
    {2, 77, 77, 2, 64, 0, 1},     /* CLIP: causal, d = 64 */
    {1, 70, 150, 1, 16, 0.3f, 0},    /* explicit scale */
    {1, 33, 33, 1, 12, -0.4f, 1}, /* negative scale, causal */
    {1, 20, 130, 1, 7, 0, 0},     /* one head, 2 threads: key range split across threads */
};
#define NSHAPES ((int)(sizeof shapes / sizeof shapes[0]))

static void test_paths_f32(ap_ctx *c) {
    const int all[3] = {1, 1, 1};
    ap_set_precision(c, AP_PREC_F32);
    for (int isa = AP_ATTN_ISA_GENERIC; isa <= AP_ATTN_ISA_AVX512; isa++) {
        if ((int)ap_attn_isa_set((ap_attn_isa)isa) != isa) continue;
        for (int i = 0; i < NSHAPES; i++) {
            char label[96];
            snprintf(label, sizeof label, "f32/%s shape %d", ap_attn_isa_name((ap_attn_isa)isa), i);
            check_against_reference(c, label, &shapes[i], all, 2e-5, 2e-5, 100 + i);
        }
    }
    ap_attn_isa_set(ap_attn_isa_best());
}

/* bf16 tile products: against the double reference with a bf16 tolerance
 * (operands are rounded to 8 significant bits: relative 2^-9 each). */
static void test_paths_bf16(ap_ctx *c) {
    const int all[3] = {1, 1, 1};
    ap_set_precision(c, AP_PREC_BF16);
    for (int isa = AP_ATTN_ISA_AVX512_BF16; isa <= AP_ATTN_ISA_AMX_EMU; isa++) {
        if ((int)ap_attn_isa_set((ap_attn_isa)isa) != isa) continue;
        for (int i = 0; i < NSHAPES; i++) {
            /* the tile model is slow: its larger shapes are covered by the smaller ones */
            if (isa == AP_ATTN_ISA_AMX_EMU && shapes[i].T * shapes[i].S * shapes[i].d > 400000) continue;
            char label[96];
            snprintf(label, sizeof label, "bf16/%s shape %d", ap_attn_isa_name((ap_attn_isa)isa), i);
            check_against_reference(c, label, &shapes[i], all, 2e-2, 3e-2, 200 + i);
        }
    }
    CHECK_MSG(ap_attn_amx_emu_faults() == 0, "the AMX tile model saw %d rule violations",
              ap_attn_amx_emu_faults());
    ap_attn_isa_set(ap_attn_isa_best());
    ap_set_precision(c, AP_PREC_F32);
}

/* bf16 against f32 on the same inputs, SD shapes: the stated tolerance is
 * 1% of the largest output and 2% of the largest gradient. */
static void test_bf16_vs_f32(ap_ctx *c) {
    if (ap_attn_isa_best() < AP_ATTN_ISA_AVX512_BF16) {
        printf("bf16 vs f32: skipped (no AVX512-BF16 on this CPU: bf16 falls back to f32)\n");
        return;
    }
    const shape_t cases[] = {{2, 130, 130, 2, 40, 0, 0}, {1, 130, 77, 2, 80, 0, 0}, {1, 77, 77, 2, 64, 0, 1}};
    for (int ci = 0; ci < 3; ci++) {
        const shape_t *s = &cases[ci];
        test_rng r = {300 + ci};
        inputs_t in = make_inputs(c, &r, s, 1.5f);
        ap_tensor *x[3] = {in.q, in.k, in.v};
        float *res[2][4];
        int64_t n[4] = {ap_tensor_numel(in.q), ap_tensor_numel(in.q), ap_tensor_numel(in.k),
                        ap_tensor_numel(in.k)};
        for (int prec = 0; prec < 2; prec++) {
            ap_set_precision(c, prec ? AP_PREC_BF16 : AP_PREC_F32);
            for (int i = 0; i < 3; i++) {
                ap_tensor_set_requires_grad(x[i], 1);
                ap_tensor_zero_grad(x[i]);
            }
            ap_tensor *y = ap_attention(c, in.q, in.k, in.v, (int)s->H, 0, s->causal);
            CHECK(ap_backward(c, y, in.gy) == AP_OK);
            res[prec][0] = malloc(n[0] * 4);
            memcpy(res[prec][0], ap_tensor_cdata(y), n[0] * 4);
            for (int i = 0; i < 3; i++) {
                res[prec][i + 1] = malloc(n[i + 1] * 4);
                memcpy(res[prec][i + 1], ap_tensor_cdata(ap_tensor_grad(x[i])), n[i + 1] * 4);
            }
            ap_tensor_release(y);
        }
        const char *nm[4] = {"out", "dq", "dk", "dv"};
        for (int t = 0; t < 4; t++) {
            double mx = 0, err = 0;
            for (int64_t i = 0; i < n[t]; i++) {
                mx = fmax(mx, fabs(res[0][t][i]));
                err = fmax(err, fabs(res[0][t][i] - res[1][t][i]));
            }
            double tol = (t == 0 ? 0.01 : 0.02) * mx;
            CHECK_MSG(err <= tol, "bf16 vs f32 case %d %s: max error %.3g > %.3g", ci, nm[t], err, tol);
            printf("bf16 vs f32 case %d %s: max |diff| %.3g = %.2f%% of max |f32| (%s)\n", ci, nm[t], err,
                   100 * err / mx, ap_attn_isa_name(ap_attn_isa_get()));
            free(res[0][t]);
            free(res[1][t]);
        }
        free_inputs(&in);
    }
    ap_set_precision(c, AP_PREC_F32);
}

/* Only some inputs need a gradient: the others get none. */
static void test_partial_grads(ap_ctx *c) {
    shape_t s = {2, 45, 70, 2, 24, 0, 0};
    const int masks[][3] = {{1, 0, 0}, {0, 1, 0}, {0, 0, 1}, {0, 1, 1}, {1, 0, 1}};
    for (int bf = 0; bf < 2; bf++) {
        if (bf && ap_attn_isa_best() < AP_ATTN_ISA_AVX512_BF16) break;
        ap_set_precision(c, bf ? AP_PREC_BF16 : AP_PREC_F32);
        for (int m = 0; m < 5; m++) {
            char label[64];
            snprintf(label, sizeof label, "%s grads q%d k%d v%d", bf ? "bf16" : "f32", masks[m][0],
                     masks[m][1], masks[m][2]);
            check_against_reference(c, label, &s, masks[m], bf ? 2e-2 : 2e-5, bf ? 3e-2 : 2e-5, 400 + m);
        }
    }
    ap_set_precision(c, AP_PREC_F32);
    /* nothing requires a gradient: nothing recorded */
    test_rng r = {9};
    inputs_t in = make_inputs(c, &r, &s, 1);
    ap_tensor *y = ap_attention(c, in.q, in.k, in.v, 2, 0, 0);
    CHECK(y && !ap_tensor_requires_grad(y) && ap_tape_size(c) == 0);
    ap_tensor_release(y);
    free_inputs(&in);
}

/* Finite differences on tiny sizes. */
typedef struct {
    int heads, causal;
    float scale;
} gc_attn;
static ap_tensor *gc_fn_attn(ap_ctx *c, void *u, int n, ap_tensor **in) {
    gc_attn *a = u;
    return ap_attention(c, in[0], in[1], in[2], a->heads, a->scale, a->causal);
}
static ap_tensor *gc_fn_self(ap_ctx *c, void *u, int n, ap_tensor **in) {
    gc_attn *a = u;
    return ap_attention(c, in[0], in[0], in[0], a->heads, a->scale, a->causal);
}

static void test_gradcheck(ap_ctx *c) {
    ap_set_precision(c, AP_PREC_F32);
    test_rng r = {7};
    gc_opts o = {.eps = 1e-2, .max_elems = -1};
    {
        gc_attn a = {2, 0, 0};
        ap_tensor *in[3] = {test_rand_leaf(c, &r, 3, (int64_t[]){2, 5, 6}, -1, 1),
                            test_rand_leaf(c, &r, 3, (int64_t[]){2, 4, 6}, -1, 1),
                            test_rand_leaf(c, &r, 3, (int64_t[]){2, 4, 6}, -1, 1)};
        gradcheck(c, "attention q,k,v", gc_fn_attn, &a, 3, in, &o);
        for (int i = 0; i < 3; i++) ap_tensor_release(in[i]);
    }
    {
        gc_attn a = {1, 1, 0.7f};
        ap_tensor *in[3] = {test_rand_leaf(c, &r, 3, (int64_t[]){1, 6, 3}, -1, 1),
                            test_rand_leaf(c, &r, 3, (int64_t[]){1, 6, 3}, -1, 1),
                            test_rand_leaf(c, &r, 3, (int64_t[]){1, 6, 3}, -1, 1)};
        gradcheck(c, "attention causal", gc_fn_attn, &a, 3, in, &o);
        for (int i = 0; i < 3; i++) ap_tensor_release(in[i]);
    }
    {
        /* q = k = v: the three gradients meet in one accumulator */
        gc_attn a = {2, 0, 0};
        ap_tensor *x = test_rand_leaf(c, &r, 3, (int64_t[]){1, 5, 4}, -1, 1);
        gradcheck(c, "attention self (q=k=v)", gc_fn_self, &a, 1, &x, &o);
        ap_tensor_release(x);
    }
}

/* Gradients of leaves accumulate across backward passes (beta 1); the second
 * shape has one head, so with 2 threads its keys are split across threads
 * and dQ goes through the partial sums. */
static void test_accumulate(ap_ctx *c) {
    const shape_t cases[] = {{1, 30, 20, 2, 8, 0, 0}, {1, 40, 200, 1, 8, 0, 0}};
    for (int ci = 0; ci < 2; ci++) {
        const shape_t *s = &cases[ci];
        test_rng r = {11 + ci};
        inputs_t in = make_inputs(c, &r, s, 1);
        ap_tensor *x[3] = {in.q, in.k, in.v};
        for (int i = 0; i < 3; i++) ap_tensor_set_requires_grad(x[i], 1);
        float *first[3];
        for (int pass = 0; pass < 2; pass++) {
            ap_tensor *y = ap_attention(c, in.q, in.k, in.v, (int)s->H, 0, 0);
            CHECK(ap_backward(c, y, in.gy) == AP_OK);
            ap_tensor_release(y);
            for (int i = 0; i < 3; i++) {
                ap_tensor *g = ap_tensor_grad(x[i]);
                int64_t n = ap_tensor_numel(g);
                if (pass == 0) {
                    first[i] = malloc(n * 4);
                    memcpy(first[i], ap_tensor_cdata(g), n * 4);
                } else {
                    float *twice = malloc(n * 4);
                    for (int64_t j = 0; j < n; j++) twice[j] = 2 * first[i][j];
                    test_close_f("second backward adds", ap_tensor_cdata(g), twice, n, 1e-6, 1e-7);
                    free(twice);
                    free(first[i]);
                }
            }
        }
        free_inputs(&in);
    }
}

/* Inside a checkpoint the forward records nothing; backward re-runs it. */
static ap_status ckpt_attn(ap_ctx *c, void *u, int n_in, ap_tensor *const *in, int n_out,
                           ap_tensor **out) {
    out[0] = ap_attention(c, in[0], in[1], in[2], 2, 0, 1);
    return out[0] ? AP_OK : ap_last_status(c);
}

static void test_checkpoint(ap_ctx *c) {
    shape_t s = {1, 40, 40, 2, 8, 0, 1};
    test_rng r = {12};
    inputs_t in = make_inputs(c, &r, &s, 1);
    ap_tensor *x[3] = {in.q, in.k, in.v};
    float *g0[3];
    for (int mode = 0; mode < 2; mode++) {
        for (int i = 0; i < 3; i++) {
            ap_tensor_set_requires_grad(x[i], 1);
            ap_tensor_zero_grad(x[i]);
        }
        ap_tensor *y = NULL;
        if (mode)
            CHECK(ap_checkpoint(c, ckpt_attn, NULL, 3, x, 1, &y) == AP_OK);
        else
            ckpt_attn(c, NULL, 3, x, 1, &y);
        CHECK(ap_backward(c, y, in.gy) == AP_OK);
        ap_tensor_release(y);
        for (int i = 0; i < 3; i++) {
            const float *g = ap_tensor_cdata(ap_tensor_grad(x[i]));
            int64_t n = ap_tensor_numel(x[i]);
            if (!mode) {
                g0[i] = malloc(n * 4);
                memcpy(g0[i], g, n * 4);
            } else {
                test_close_f("checkpointed attention gradient", g, g0[i], n, 0, 0);
                free(g0[i]);
            }
        }
    }
    free_inputs(&in);
}

/* Same inputs and threads: bit-identical; the forward also across thread counts. */
static void test_determinism(ap_ctx *c) {
    shape_t s = {1, 150, 150, 1, 40, 0, 0};
    test_rng r = {13};
    inputs_t in = make_inputs(c, &r, &s, 1.5f);
    ap_tensor *x[3] = {in.q, in.k, in.v};
    int nt = ap_get_num_threads(c);
    for (int bf = 0; bf < 2; bf++) {
        if (bf && ap_attn_isa_best() < AP_ATTN_ISA_AVX512_BF16) break;
        ap_set_precision(c, bf ? AP_PREC_BF16 : AP_PREC_F32);
        float *ref[4] = {0};
        int64_t n[4] = {ap_tensor_numel(in.q), ap_tensor_numel(in.q), ap_tensor_numel(in.k),
                        ap_tensor_numel(in.k)};
        for (int run = 0; run < 3; run++) {
            ap_set_num_threads(c, run == 2 ? 1 : nt);
            for (int i = 0; i < 3; i++) {
                ap_tensor_set_requires_grad(x[i], 1);
                ap_tensor_zero_grad(x[i]);
            }
            ap_tensor *y = ap_attention(c, in.q, in.k, in.v, 1, 0, 0);
            CHECK(ap_backward(c, y, in.gy) == AP_OK);
            const float *got[4] = {ap_tensor_cdata(y), ap_tensor_cdata(ap_tensor_grad(in.q)),
                                   ap_tensor_cdata(ap_tensor_grad(in.k)),
                                   ap_tensor_cdata(ap_tensor_grad(in.v))};
            for (int t = 0; t < 4; t++) {
                if (run == 0) {
                    ref[t] = malloc(n[t] * 4);
                    memcpy(ref[t], got[t], n[t] * 4);
                } else if (run == 1 || t == 0) {
                    CHECK_MSG(memcmp(ref[t], got[t], n[t] * 4) == 0,
                              "%s run %d tensor %d not bit-identical", bf ? "bf16" : "f32", run, t);
                }
            }
            ap_tensor_release(y);
        }
        for (int t = 0; t < 4; t++) free(ref[t]);
    }
    ap_set_num_threads(c, nt);
    ap_set_precision(c, AP_PREC_F32);
    free_inputs(&in);
}

/* Memory: forward + backward at T = S = 2048 must stay far below one T x S
 * f32 matrix (16 MiB) beyond the inputs, output and gradients, and the
 * scratch must grow linearly in T (from 1024 to 2048: x2, not x4). */
static size_t attn_scratch_peak(ap_ctx *c, int64_t T, int bf) {
    shape_t s = {1, T, T, 1, 40, 0, 0};
    ap_set_precision(c, bf ? AP_PREC_BF16 : AP_PREC_F32);
    test_rng r = {14};
    inputs_t in = make_inputs(c, &r, &s, 1);
    ap_tensor *x[3] = {in.q, in.k, in.v};
    for (int i = 0; i < 3; i++) ap_tensor_set_requires_grad(x[i], 1);
    size_t base = ap_mem_in_use(c), tensor = (size_t)s.T * s.d * 4;
    ap_mem_reset_peak(c);
    ap_tensor *y = ap_attention(c, in.q, in.k, in.v, 1, 0, 0);
    CHECK(ap_backward(c, y, in.gy) == AP_OK);
    ap_tensor_release(y);
    size_t extra = ap_mem_peak(c) - base;
    free_inputs(&in);
    /* output, three gradients and the lse are unavoidable */
    size_t floor_bytes = 4 * tensor + (size_t)s.T * 4;
    return extra > floor_bytes ? extra - floor_bytes : 0;
}

static void test_memory(ap_ctx *c) {
    int nt = ap_get_num_threads(c);
    ap_set_num_threads(c, 2); /* scratch is per thread: fix the count the bound assumes */
    for (int bf = 0; bf < 2; bf++) {
        size_t s1 = attn_scratch_peak(c, 1024, bf), s2 = attn_scratch_peak(c, 2048, bf);
        size_t txs = (size_t)2048 * 2048 * 4;
        CHECK_MSG(s2 < txs / 3, "attention T=S=2048 used %zu scratch bytes (T*S*4 = %zu)", s2, txs);
        CHECK_MSG(s2 < 3 * s1, "scratch grows faster than T: %zu at T=1024, %zu at 2048", s1, s2);
        printf("memory d=40 %s: scratch %zu bytes at T=S=1024, %zu at 2048 (T*S*4 = %zu)\n",
               bf ? "bf16" : "f32", s1, s2, txs);
    }
    ap_set_precision(c, AP_PREC_F32);
    ap_set_num_threads(c, nt);
}

static void expect_error(ap_ctx *c, ap_tensor *y, ap_status st, const char *needle) {
    CHECK(y == NULL);
    CHECK_MSG(ap_last_status(c) == st, "status %d, want %d (%s)", ap_last_status(c), st, ap_last_error(c));
    CHECK_MSG(strstr(ap_last_error(c), needle) != NULL, "message '%s' lacks '%s'", ap_last_error(c), needle);
    ap_clear_error(c);
}

static void test_errors(ap_ctx *c) {
    test_rng r = {15};
    ap_tensor *q = test_rand(c, &r, 3, (int64_t[]){2, 5, 12}, -1, 1);
    ap_tensor *k = test_rand(c, &r, 3, (int64_t[]){2, 7, 12}, -1, 1);
    ap_tensor *k1 = test_rand(c, &r, 3, (int64_t[]){1, 7, 12}, -1, 1);
    ap_tensor *k8 = test_rand(c, &r, 3, (int64_t[]){2, 7, 8}, -1, 1);
    ap_tensor *v6 = test_rand(c, &r, 3, (int64_t[]){2, 6, 12}, -1, 1);
    ap_tensor *q2 = test_rand(c, &r, 2, (int64_t[]){5, 12}, -1, 1);
    ap_tensor *kb = ap_tensor_convert(c, k, AP_BF16);
    expect_error(c, ap_attention(c, q, k, k, 5, 0, 0), AP_ERR_SHAPE, "not divisible by 5 heads");
    expect_error(c, ap_attention(c, q, k1, k1, 3, 0, 0), AP_ERR_SHAPE, "batch");
    expect_error(c, ap_attention(c, q, k, k1, 3, 0, 0), AP_ERR_SHAPE, "v");
    expect_error(c, ap_attention(c, q, k, k, 3, 0, 1), AP_ERR_SHAPE, "causal");
    expect_error(c, ap_attention(c, q, k8, k8, 2, 0, 0), AP_ERR_SHAPE, "channels");
    expect_error(c, ap_attention(c, q, k, v6, 2, 0, 0), AP_ERR_SHAPE, "tokens");
    expect_error(c, ap_attention(c, q2, k, k, 2, 0, 0), AP_ERR_SHAPE, "q is [5,12]");
    expect_error(c, ap_attention(c, q, k, k, 0, 0, 0), AP_ERR_INVALID_ARG, "heads");
    expect_error(c, ap_attention(c, q, NULL, k, 2, 0, 0), AP_ERR_INVALID_ARG, "k is NULL");
    expect_error(c, ap_attention(c, q, kb, k, 2, 0, 0), AP_ERR_DTYPE, "bf16");
    expect_error(c, ap_attention(c, q, k, k, 2, NAN, 0), AP_ERR_INVALID_ARG, "scale");
    /* no queries: an empty output, and zero gradients for k and v */
    {
        ap_tensor *q0 = test_rand(c, &r, 3, (int64_t[]){2, 0, 12}, -1, 1);
        ap_tensor *kk = test_rand_leaf(c, &r, 3, (int64_t[]){2, 7, 12}, -1, 1);
        ap_tensor *vv = test_rand_leaf(c, &r, 3, (int64_t[]){2, 7, 12}, -1, 1);
        ap_tensor *y0 = ap_attention(c, q0, kk, vv, 3, 0, 0);
        CHECK_OK(c);
        CHECK(y0 && ap_tensor_numel(y0) == 0);
        ap_tensor *g0 = ap_tensor_new(c, AP_F32, 3, (int64_t[]){2, 0, 12});
        CHECK(ap_backward(c, y0, g0) == AP_OK);
        ap_tensor *gs[2] = {ap_tensor_grad(kk), ap_tensor_grad(vv)};
        for (int i = 0; i < 2; i++) {
            int zero = gs[i] != NULL;
            for (int64_t j = 0; gs[i] && j < ap_tensor_numel(gs[i]); j++) zero &= ((const float *)ap_tensor_cdata(gs[i]))[j] == 0.0f;
            CHECK_MSG(zero, "no queries: gradient %d is zero", i);
        }
        ap_tensor *zs[] = {q0, kk, vv, y0, g0};
        for (size_t i = 0; i < 5; i++) ap_tensor_release(zs[i]);
    }
    ap_tensor *qz = test_rand(c, &r, 3, (int64_t[]){2, 5, 0}, -1, 1);
    expect_error(c, ap_attention(c, qz, qz, qz, 1, 0, 0), AP_ERR_SHAPE, "no channels");
    ap_tensor_release(qz);
    /* a NaN in q reaches the output of its row, on every path */
    {
        ap_tensor *qn = ap_copy(c, q);
        ((float *)ap_tensor_data(qn))[0] = NAN;
        for (int bf = 0; bf < 2; bf++) {
            ap_set_precision(c, bf ? AP_PREC_BF16 : AP_PREC_F32);
            for (int isa = AP_ATTN_ISA_GENERIC; isa <= AP_ATTN_ISA_AVX512_BF16; isa++) {
                if ((int)ap_attn_isa_set((ap_attn_isa)isa) != isa) continue;
                ap_tensor *yn = ap_attention(c, qn, k, k, 2, 0, 0);
                CHECK_MSG(yn && isnan(((const float *)ap_tensor_cdata(yn))[0]),
                          "NaN input lost (%s, %s)", bf ? "bf16" : "f32", ap_attn_isa_name((ap_attn_isa)isa));
                ap_tensor_release(yn);
            }
        }
        ap_attn_isa_set(ap_attn_isa_best());
        ap_set_precision(c, AP_PREC_F32);
        ap_tensor_release(qn);
    }
    /* sticky: after an error, a valid call also returns NULL */
    CHECK(ap_attention(c, q, k, k, 5, 0, 0) == NULL);
    CHECK(ap_attention(c, q, k, k, 2, 0, 0) == NULL);
    ap_clear_error(c);
    ap_tensor *ok = ap_attention(c, q, k, k, 2, 0, 0);
    CHECK(ok != NULL);
    CHECK_OK(c);
    ap_tensor *ts[] = {q, k, k1, k8, v6, q2, kb, ok};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) ap_tensor_release(ts[i]);
}

int main(void) {
    ap_ctx *c = test_ctx();
    printf("attention paths: best %s\n", ap_attn_isa_name(ap_attn_isa_best()));
    test_paths_f32(c);
    test_paths_bf16(c);
    test_bf16_vs_f32(c);
    test_partial_grads(c);
    test_gradcheck(c);
    test_accumulate(c);
    test_checkpoint(c);
    test_determinism(c);
    test_memory(c);
    test_errors(c);
    CHECK(ap_mem_in_use(c) == 0);
    ap_ctx_free(c);
    return test_summary("attention");
}
