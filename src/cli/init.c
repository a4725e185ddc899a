/* alignprop init: a model with random weights, in both layouts. */
#include "models/sd.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int usage(void) {
    fprintf(stderr, "usage: alignprop init --config tiny|small|shapes64|sd15 [--seed N] [--dtype f32|bf16|f16] -o DIR\n"
                    "  writes DIR as a diffusers folder and DIR/model.safetensors as one LDM-named file\n");
    return 2;
}

int ap_cli_parse_dtype(const char *s, ap_dtype *out) {
    if (!strcmp(s, "f32")) *out = AP_F32;
    else if (!strcmp(s, "bf16")) *out = AP_BF16;
    else if (!strcmp(s, "f16")) *out = AP_F16;
    else return -1;
    return 0;
}

int ap_cli_init(int argc, char **argv) {
    const char *config = NULL, *outdir = NULL;
    unsigned long long seed = 0;
    ap_dtype dt = AP_F32;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--config") && i + 1 < argc)
            config = argv[++i];
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc) {
            char *end;
            seed = strtoull(argv[++i], &end, 10);
            if (*end || !*argv[i]) {
                fprintf(stderr, "alignprop init: --seed %s: expected a non-negative integer\n", argv[i]);
                return 2;
            }
        } else if (!strcmp(argv[i], "--dtype") && i + 1 < argc) {
            if (ap_cli_parse_dtype(argv[++i], &dt)) {
                fprintf(stderr, "alignprop init: --dtype %s: expected f32, bf16 or f16\n", argv[i]);
                return 2;
            }
        } else if (!strcmp(argv[i], "-o") && i + 1 < argc)
            outdir = argv[++i];
        else {
            fprintf(stderr, "alignprop init: unknown or incomplete option '%s'\n", argv[i]);
            return usage();
        }
    }
    if (!config || !outdir) {
        fprintf(stderr, "alignprop init: --config and -o are required\n");
        return usage();
    }
    ap_ctx *c = ap_ctx_create();
    ap_sd_config cfg;
    ap_sd_model *m = NULL;
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", outdir);
    if (ap_sd_preset(c, config, &cfg) != AP_OK || ap_sd_create(c, &cfg, dt, &m) != AP_OK ||
        ap_sd_init_random(c, m, seed) != AP_OK || ap_sd_save_diffusers(c, m, outdir) != AP_OK ||
        ap_sd_save_ldm(c, m, path) != AP_OK) {
        fprintf(stderr, "alignprop init: %s\n", ap_last_error(c));
        ap_sd_free(m);
        ap_ctx_free(c);
        return 1;
    }
    printf("wrote %s (diffusers folder) and %s (LDM single file): config %s, seed %llu, %s weights\n", outdir,
           path, config, seed, ap_dtype_name(dt));
    printf("parameters: unet %lld, vae %lld, text encoder %lld\n", (long long)ap_params_count(&m->unet->params),
           (long long)ap_params_count(&m->vae->params), (long long)ap_params_count(&m->text->params));
    ap_sd_free(m);
    ap_ctx_free(c);
    return 0;
}
