#include "gradcheck.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* loss = sum(out * R) in double, with gradients off. */
static double eval_loss(ap_ctx *c, gc_fn f, void *user, int n, ap_tensor **in, const float *R) {
    int prev = ap_set_grad_enabled(c, 0);
    ap_tensor *out = f(c, user, n, in);
    ap_set_grad_enabled(c, prev);
    if (!out) return NAN;
    const float *o = ap_tensor_cdata(out);
    double s = 0;
    for (int64_t i = 0; i < ap_tensor_numel(out); i++) s += (double)o[i] * R[i];
    ap_tensor_release(out);
    return s;
}

int gradcheck(ap_ctx *c, const char *label, gc_fn f, void *user, int n, ap_tensor **in,
              const gc_opts *opts) {
    gc_opts o = {1e-3, 1e-2, 1e-3, 64, 1234, 0};
    if (opts) {
        if (opts->eps > 0) o.eps = opts->eps;
        if (opts->rtol > 0) o.rtol = opts->rtol;
        if (opts->atol > 0) o.atol = opts->atol;
        if (opts->max_elems) o.max_elems = opts->max_elems;
        if (opts->seed) o.seed = opts->seed;
        o.verbose = opts->verbose;
    }
    test_rng rng = {o.seed};
    for (int i = 0; i < n; i++) ap_tensor_zero_grad(in[i]);

    ap_tensor *out = f(c, user, n, in);
    if (!out) {
        test_checks++;
        test_failures++;
        fprintf(stderr, "FAIL %s: forward failed: %s\n", label, ap_last_error(c));
        return 0;
    }
    int64_t m = ap_tensor_numel(out);
    ap_tensor *R = ap_tensor_new(c, AP_F32, 1, (int64_t[]){m});
    float *r = ap_tensor_data(R);
    for (int64_t i = 0; i < m; i++) r[i] = (float)(2.0 * test_rng_uniform(&rng) - 1.0);
    ap_tensor *G = ap_tensor_new(c, AP_F32, 1, (int64_t[]){m});
    memcpy(ap_tensor_data(G), r, (size_t)m * sizeof(float));
    ap_status st = ap_backward(c, out, G);
    ap_tensor_release(out);
    ap_tensor_release(G);
    if (st != AP_OK) {
        test_checks++;
        test_failures++;
        fprintf(stderr, "FAIL %s: backward failed: %s\n", label, ap_last_error(c));
        ap_tensor_release(R);
        return 0;
    }

    int ok = 1;
    for (int t = 0; t < n; t++) {
        if (!in[t] || !ap_tensor_requires_grad(in[t])) continue;
        int64_t numel = ap_tensor_numel(in[t]);
        ap_tensor *g = ap_tensor_grad(in[t]);
        float *x = ap_tensor_data(in[t]);
        const float *ga = g ? ap_tensor_cdata(g) : NULL;
        double gmax = 0;
        for (int64_t i = 0; ga && i < numel; i++) gmax = fmax(gmax, fabs(ga[i]));
        int64_t k = (o.max_elems < 0 || o.max_elems >= numel) ? numel : o.max_elems;
        double worst = 0, wa = 0, wn = 0;
        int64_t wi = -1, bad = 0;
        for (int64_t j = 0; j < k; j++) {
            int64_t i = (k == numel) ? j : (int64_t)(test_rng_next(&rng) % (uint64_t)numel);
            float x0 = x[i];
            x[i] = (float)(x0 + o.eps);
            ap_tensor_touch(in[t]);
            double lp = eval_loss(c, f, user, n, in, r);
            x[i] = (float)(x0 - o.eps);
            ap_tensor_touch(in[t]);
            double lm = eval_loss(c, f, user, n, in, r);
            x[i] = x0;
            ap_tensor_touch(in[t]);
            double num = (lp - lm) / (2 * o.eps), ana = ga ? ga[i] : 0.0;
            double err = fabs(num - ana), lim = o.atol * fmax(gmax, 1e-6) + o.rtol * fmax(fabs(num), fabs(ana));
            if (!(err <= lim)) bad++;
            double ratio = err / lim;
            if (wi < 0 || !(ratio <= worst)) {
                worst = isnan(ratio) ? INFINITY : ratio;
                wi = i;
                wa = ana;
                wn = num;
            }
        }
        test_checks++;
        const char *nm = ap_tensor_name(in[t]);
        if (bad) {
            ok = 0;
            test_failures++;
            fprintf(stderr,
                    "FAIL gradcheck %s input %d %s: %lld of %lld elements off; worst [%lld] analytic %.8g numeric %.8g (max|g| %.3g)\n",
                    label, t, nm, (long long)bad, (long long)k, (long long)wi, wa, wn, gmax);
        } else if (o.verbose) {
            printf("gradcheck %s input %d %s: ok (%lld elements, worst ratio %.3f)\n", label, t, nm,
                   (long long)k, worst);
        }
    }
    ap_tensor_release(R);
    return ok;
}
