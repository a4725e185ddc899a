/* The context: errors, precision, threads, memory accounting. */
#include "internal.h"

#include <ctype.h>
#ifdef __clang__
#include <cpuid.h>
#endif
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <xmmintrin.h>
#include <pmmintrin.h>

unsigned ap_version(void) { return AP_VERSION_NUMBER; }
const char *ap_version_string(void) { return AP_VERSION_STRING; }

static const char *const status_str[] = {
    [AP_OK] = "ok",
    [AP_ERR_INVALID_ARG] = "invalid argument",
    [AP_ERR_SHAPE] = "shape mismatch",
    [AP_ERR_DTYPE] = "unsupported dtype",
    [AP_ERR_NOMEM] = "out of memory",
    [AP_ERR_IO] = "input/output error",
    [AP_ERR_FORMAT] = "malformed file",
    [AP_ERR_NOT_FOUND] = "not found",
    [AP_ERR_UNSUPPORTED] = "unsupported",
    [AP_ERR_BACKEND] = "compute backend error",
    [AP_ERR_STATE] = "invalid state",
};
_Static_assert(sizeof status_str / sizeof status_str[0] == AP_ERR_COUNT_, "status table");

const char *ap_strerror(ap_status s) {
    if ((unsigned)s >= AP_ERR_COUNT_) return "unknown status";
    return status_str[s];
}

ap_status ap_seterr(ap_ctx *c, ap_status s, const char *fmt, ...) {
    if (!c || s == AP_OK) return s;
    if (c->status != AP_OK) return c->status; /* keep the first, root-cause message */
    c->status = s;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->msg, sizeof c->msg, fmt, ap);
    va_end(ap);
    return s;
}

ap_status ap_last_status(const ap_ctx *c) { return c ? c->status : AP_ERR_INVALID_ARG; }
const char *ap_last_error(const ap_ctx *c) { return c ? c->msg : "no context"; }
void ap_clear_error(ap_ctx *c) {
    if (!c) return;
    c->status = AP_OK;
    c->msg[0] = 0;
}

void ap_set_ftz_daz(void) {
    _MM_SET_FLUSH_ZERO_MODE(_MM_FLUSH_ZERO_ON);
    _MM_SET_DENORMALS_ZERO_MODE(_MM_DENORMALS_ZERO_ON);
}

/* FTZ/DAZ in the calling thread and in every OpenMP worker (oneDNN shares the
 * same GNU OpenMP pool). Called whenever the pool may have grown. */
static void ftz_all_threads(int n) {
    ap_set_ftz_daz();
#pragma omp parallel num_threads(n)
    ap_set_ftz_daz();
}

int ap_cpu_has_bf16(void) {
    __builtin_cpu_init();
#ifdef __clang__ /* clang (14) has no "amx-bf16" feature string: AMX-BF16 is CPUID.(7,0):EDX[22] */
    unsigned a, b, c, d;
    int amx = __get_cpuid_count(7, 0, &a, &b, &c, &d) && ((d >> 22) & 1);
    return __builtin_cpu_supports("avx512bf16") || amx;
#else
    return __builtin_cpu_supports("avx512bf16") || __builtin_cpu_supports("amx-bf16");
#endif
}

ap_status ap_set_num_threads(ap_ctx *c, int n) {
    if (!c) return AP_ERR_INVALID_ARG;
    if (n < 1 || n > 4096)
        return ap_seterr(c, AP_ERR_INVALID_ARG, "thread count %d: must be between 1 and 4096", n);
    c->num_threads = n;
    omp_set_num_threads(n);
    ftz_all_threads(n);
    return AP_OK;
}
int ap_get_num_threads(const ap_ctx *c) { return c ? c->num_threads : 0; }

ap_status ap_set_precision(ap_ctx *c, ap_precision p) {
    if (!c) return AP_ERR_INVALID_ARG;
    if (p != AP_PREC_F32 && p != AP_PREC_BF16)
        return ap_seterr(c, AP_ERR_INVALID_ARG, "precision %d: must be f32 or bf16", (int)p);
    c->precision = p;
    return AP_OK;
}
ap_precision ap_get_precision(const ap_ctx *c) { return c ? c->precision : AP_PREC_F32; }

size_t ap_mem_in_use(const ap_ctx *c) { return ap_arena_in_use(c->arena); }
size_t ap_mem_peak(const ap_ctx *c) { return ap_arena_peak(c->arena); }
size_t ap_mem_reserved(const ap_ctx *c) { return ap_arena_reserved(c->arena); }
void ap_mem_reset_peak(ap_ctx *c) { ap_arena_reset_peak(c->arena); }
void ap_mem_trim(ap_ctx *c) { ap_arena_trim(c->arena); }

int ap_set_grad_enabled(ap_ctx *c, int on) {
    int prev = c->grad_enabled;
    c->grad_enabled = on != 0;
    return prev;
}
int ap_grad_enabled(const ap_ctx *c) { return c->grad_enabled; }

/* Reads AP_NUM_THREADS and AP_PRECISION; a bad value is an error naming it. */
static ap_status read_env(ap_ctx *c) {
    const char *s = getenv("AP_NUM_THREADS");
    int n = omp_get_max_threads();
    ap_status st = AP_OK;
    if (s && *s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (*end || v < 1 || v > 4096)
            st = ap_seterr(c, AP_ERR_INVALID_ARG,
                           "AP_NUM_THREADS=%s: expected a thread count between 1 and 4096", s);
        else
            n = (int)v;
    }
    ap_status st2 = ap_set_num_threads(c, n);
    if (st == AP_OK) st = st2;
    s = getenv("AP_PRECISION");
    if (s && *s) {
        if (!strcmp(s, "f32") || !strcmp(s, "fp32"))
            c->precision = AP_PREC_F32;
        else if (!strcmp(s, "bf16"))
            c->precision = AP_PREC_BF16;
        else if (st == AP_OK)
            st = ap_seterr(c, AP_ERR_INVALID_ARG, "AP_PRECISION=%s: expected f32 or bf16", s);
    }
    return st;
}

ap_status ap_ctx_create_checked(ap_ctx **out) {
    *out = NULL;
    ap_ctx *c = calloc(1, sizeof *c);
    if (!c) return AP_ERR_NOMEM;
    c->arena = ap_arena_create();
    c->tape = calloc(1, sizeof *c->tape);
    if (!c->arena || !c->tape) {
        ap_arena_free(c->arena);
        free(c->tape);
        free(c);
        return AP_ERR_NOMEM;
    }
    c->next_tape_id = 1;
    c->tape->id = c->next_tape_id++;
    c->grad_enabled = true;
    c->precision = AP_PREC_F32;
    *out = c;
    return read_env(c);
}

ap_ctx *ap_ctx_create(void) {
    ap_ctx *c;
    ap_ctx_create_checked(&c);
    return c;
}

void ap_ctx_free(ap_ctx *c) {
    if (!c) return;
    ap_tape_clear(c);
    while (c->tape) {
        ap_tape *p = c->tape->parent;
        free(c->tape);
        c->tape = p;
    }
    if (c->backend_free) c->backend_free(c->backend);
    ap_arena_free(c->arena);
    free(c);
}
