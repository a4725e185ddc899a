/* alignprop lora: operations on LoRA files. `mix` interpolates two adapters
 * trained on different rewards (AlignProp's mixing): out = alpha*A + (1-alpha)*B,
 * tensor by tensor. */
#include "core/internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int usage(void) {
    fprintf(stderr, "usage: alignprop lora mix A.safetensors B.safetensors --alpha X -o OUT.safetensors\n"
                    "  every tensor of A and B (same names and shapes; LoRA files of one format and rank)\n"
                    "  becomes alpha*A + (1-alpha)*B: alpha 1 gives A, alpha 0 gives B\n");
    return 2;
}

static int mix(int argc, char **argv) {
    const char *a = NULL, *b = NULL, *out = NULL;
    double alpha = NAN;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--alpha") && i + 1 < argc) {
            char *end;
            alpha = strtod(argv[++i], &end);
            if (*end || !isfinite(alpha)) {
                fprintf(stderr, "alignprop lora mix: --alpha %s: expected a number\n", argv[i]);
                return 2;
            }
        } else if (!strcmp(argv[i], "-o") && i + 1 < argc)
            out = argv[++i];
        else if (argv[i][0] == '-') {
            fprintf(stderr, "alignprop lora mix: unknown option '%s'\n", argv[i]);
            return usage();
        } else if (!a)
            a = argv[i];
        else if (!b)
            b = argv[i];
        else
            return usage();
    }
    if (!a || !b || !out || isnan(alpha)) return usage();
    ap_ctx *c = ap_ctx_create();
    ap_safetensors *sa = NULL, *sb = NULL;
    int rc = 1, n = 0;
    char **names = NULL;
    ap_tensor **ts = NULL;
    if (ap_st_open(c, a, &sa) != AP_OK || ap_st_open(c, b, &sb) != AP_OK) goto done;
    n = ap_st_count(sa);
    if (n != ap_st_count(sb)) {
        ap_seterr(c, AP_ERR_SHAPE, "%s has %d tensors, %s has %d: not the same adapter layout", a, n, b,
                  ap_st_count(sb));
        goto done;
    }
    names = calloc((size_t)n + 1, sizeof *names);
    ts = calloc((size_t)n + 1, sizeof *ts);
    for (int i = 0; i < n; i++) {
        const char *name = ap_st_name(sa, i);
        int j = ap_st_find(sb, name);
        int64_t s1[AP_MAX_DIMS], s2[AP_MAX_DIMS];
        int d1 = ap_st_shape(sa, i, s1), d2 = j >= 0 ? ap_st_shape(sb, j, s2) : -1;
        if (j < 0 || d1 != d2 || memcmp(s1, s2, sizeof(int64_t) * (size_t)(d1 > 0 ? d1 : 0))) {
            ap_seterr(c, AP_ERR_SHAPE, "tensor '%s': %s", name, j < 0 ? "missing from the second file" : "shapes differ");
            goto done;
        }
        ap_tensor *x = NULL, *y = NULL;
        if (ap_st_load(c, sa, name, AP_F32, &x) != AP_OK || ap_st_load(c, sb, name, AP_F32, &y) != AP_OK) {
            ap_tensor_release(x);
            goto done;
        }
        float *px = ap_f32(x);
        const float *py = ap_cf32(y);
        for (int64_t k = 0; k < x->numel; k++) px[k] = (float)(alpha * px[k] + (1.0 - alpha) * py[k]);
        ap_tensor_release(y);
        names[i] = strdup(name);
        ts[i] = x;
    }
    char alpha_s[64];
    snprintf(alpha_s, sizeof alpha_s, "%.17g", alpha);
    const char *keys[] = {"alignprop_mix_a", "alignprop_mix_b", "alignprop_mix_alpha"}, *vals[] = {a, b, alpha_s};
    if (ap_st_save(c, out, n, (const char *const *)names, ts, 3, keys, vals) != AP_OK) goto done;
    printf("wrote %s: %d tensors, %g * %s + %g * %s\n", out, n, alpha, a, 1.0 - alpha, b);
    rc = 0;
done:
    if (rc) fprintf(stderr, "alignprop lora mix: %s\n", ap_last_error(c));
    for (int i = 0; names && i < n; i++) {
        free(names[i]);
        ap_tensor_release(ts[i]);
    }
    free(names);
    free(ts);
    ap_st_close(sa);
    ap_st_close(sb);
    ap_ctx_free(c);
    return rc;
}

int ap_cli_lora(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "mix")) return mix(argc - 1, argv + 1);
    return usage();
}
