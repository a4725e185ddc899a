#include "truncation.h"

#include "core/internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int parse_ints(const char *s, int *a, int *b) {
    char *end;
    long x = strtol(s, &end, 10);
    if (end == s) return 0;
    *a = (int)x;
    if (*end != ':') return *end ? -1 : 1;
    const char *t = end + 1;
    long y = strtol(t, &end, 10);
    if (end == t || *end) return -1;
    *b = (int)y;
    return 2;
}

ap_status ap_trunc_parse(ap_ctx *c, const char *spec, ap_trunc_policy *out) {
    memset(out, 0, sizeof *out);
    int a = 0, b = 0;
    if (!strcmp(spec, "full")) {
        out->kind = AP_TRUNC_FULL;
        return AP_OK;
    }
    if (!strncmp(spec, "fixed:", 6) && parse_ints(spec + 6, &a, &b) == 1 && a >= 1) {
        out->kind = AP_TRUNC_FIXED;
        out->k = a;
        return AP_OK;
    }
    if (!strncmp(spec, "rand-step:", 10) && parse_ints(spec + 10, &a, &b) == 2 && a >= 0 && b >= a) {
        out->kind = AP_TRUNC_RAND_STEP;
        out->lo = a, out->hi = b;
        return AP_OK;
    }
    if (!strncmp(spec, "rand:", 5) && parse_ints(spec + 5, &a, &b) == 2 && a >= 1 && b >= a) {
        out->kind = AP_TRUNC_RAND;
        out->lo = a, out->hi = b;
        return AP_OK;
    }
    if (!strncmp(spec, "gaussian:", 9)) {
        char *end;
        double m = strtod(spec + 9, &end);
        if (*end == ':') {
            char *e2;
            double s = strtod(end + 1, &e2);
            if (!*e2 && e2 != end + 1 && isfinite(m) && isfinite(s) && s >= 0) {
                out->kind = AP_TRUNC_GAUSSIAN;
                out->mean = (float)m, out->std = (float)s;
                return AP_OK;
            }
        }
    }
    return ap_seterr(c, AP_ERR_INVALID_ARG,
                     "truncation '%s': expected fixed:K (K >= 1), rand-step:MIN:MAX, rand:MIN:MAX (1 <= MIN <= MAX), "
                     "gaussian:MEAN:STD or full",
                     spec);
}

/* uniform integer in [lo, hi] */
static int draw_int(ap_rng *g, int lo, int hi) {
    float u;
    ap_rng_rand(g, &u, 1);
    int k = lo + (int)floorf(u * (float)(hi - lo + 1));
    return k > hi ? hi : k;
}

ap_status ap_trunc_plan(ap_ctx *c, const ap_trunc_policy *p, int steps, ap_rng *g, bool *keep) {
    if (steps < 1) return ap_seterr(c, AP_ERR_INVALID_ARG, "truncation: %d steps", steps);
    int K = steps;
    switch (p->kind) {
    case AP_TRUNC_FULL: K = steps; break;
    case AP_TRUNC_FIXED: K = p->k; break;
    case AP_TRUNC_RAND: K = draw_int(g, p->lo, p->hi); break;
    case AP_TRUNC_GAUSSIAN: {
        float z;
        ap_rng_randn(g, &z, 1);
        K = (int)lrintf(p->mean + p->std * z);
        break;
    }
    case AP_TRUNC_RAND_STEP:
        for (int i = 0; i < steps; i++) keep[i] = i >= draw_int(g, p->lo, p->hi);
        return AP_OK;
    }
    if (K < 1) K = 1;
    if (K > steps) K = steps;
    for (int i = 0; i < steps; i++) keep[i] = i >= steps - K;
    return AP_OK;
}

const char *ap_trunc_str(const ap_trunc_policy *p, char *buf, size_t n) {
    switch (p->kind) {
    case AP_TRUNC_FIXED: snprintf(buf, n, "fixed:%d", p->k); break;
    case AP_TRUNC_RAND_STEP: snprintf(buf, n, "rand-step:%d:%d", p->lo, p->hi); break;
    case AP_TRUNC_RAND: snprintf(buf, n, "rand:%d:%d", p->lo, p->hi); break;
    case AP_TRUNC_GAUSSIAN: snprintf(buf, n, "gaussian:%.9g:%.9g", p->mean, p->std); break;
    default: snprintf(buf, n, "full"); break;
    }
    return buf;
}
