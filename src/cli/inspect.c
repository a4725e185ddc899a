/* alignprop inspect: what a model or weights file holds. */
#include "models/clip.h"
#include "models/sd.h"
#include "models/weights.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static void print_model(const ap_sd_model *m) {
    const ap_sd_config *g = &m->cfg;
    printf("architecture: Stable Diffusion 1.x family\n");
    printf("  unet: channels");
    for (int i = 0; i < g->unet.levels; i++) printf(" %d%s", g->unet.block_out[i], g->unet.attention[i] ? "(attn)" : "");
    printf(", %d layers per block, %d heads, context %d: %lld parameters\n", g->unet.layers_per_block, g->unet.heads,
           g->unet.context_dim, (long long)ap_params_count(&m->unet->params));
    printf("  vae: channels");
    for (int i = 0; i < g->vae.levels; i++) printf(" %d", g->vae.block_out[i]);
    printf(", latent %d, scale %g: %lld parameters\n", g->vae.latent_channels, g->vae.scaling_factor,
           (long long)ap_params_count(&m->vae->params));
    printf("  text encoder: width %d, %d layers, %d heads, vocab %d: %lld parameters\n", g->text.width,
           g->text.layers, g->text.heads, g->text.vocab, (long long)ap_params_count(&m->text->params));
}

static const char *heads_str(char *b, int h) {
    if (h < 1) return "? (unknown)";
    snprintf(b, 16, "%d", h);
    return b;
}

/* A CLIP checkpoint (file or HF folder): layout and towers. Returns 0 when it
 * is one (printed), 1 when it is not (nothing printed, no error left). */
static int print_clip(ap_ctx *c, const char *path) {
    ap_clip_file *f = NULL;
    if (ap_clip_open(c, path, &f) != AP_OK) {
        ap_clear_error(c);
        return 1;
    }
    const char *acts[2] = {"quick_gelu", "gelu"};
    char hb[16];
    printf("architecture: CLIP, %s layout%s%s%s\n", ap_clip_layout_name(ap_clip_layout_of(f)),
           *ap_clip_prefix(f) ? " (names prefixed '" : "", ap_clip_prefix(f), *ap_clip_prefix(f) ? "')" : "");
    ap_clip_vision_config v;
    ap_clip_text_config t;
    if (ap_clip_has_vision(f)) {
        if (ap_clip_vision_config_of(c, f, &v) == AP_OK || v.width)
            printf("  vision: %dx%d, patch %d, width %d, %d layers, %s heads, mlp %d, %s, projection %d: %lld parameters\n",
                   v.image_size, v.image_size, v.patch, v.width, v.layers, heads_str(hb, v.heads), v.mlp, acts[v.act], v.proj_dim,
                   (long long)ap_clip_param_count(f, 1));
        if (ap_last_status(c) != AP_OK) printf("  vision: %s\n", ap_last_error(c));
        ap_clear_error(c);
    }
    if (ap_clip_has_text(f)) {
        if (ap_clip_text_config_of(c, f, &t) == AP_OK || t.width)
            printf("  text: width %d, %d layers, %s heads, mlp %d, %s, vocab %d, context %d, projection %d: %lld "
                   "parameters\n", t.width, t.layers, heads_str(hb, t.heads), t.intermediate, acts[t.act], t.vocab,
                   t.max_positions, t.proj_dim, (long long)ap_clip_param_count(f, 0));
        if (ap_last_status(c) != AP_OK) printf("  text: %s\n", ap_last_error(c));
        ap_clear_error(c);
    }
    float ls;
    if (ap_clip_logit_scale(c, f, &ls) == AP_OK) printf("  logit_scale: %g (scale %g)\n", ls, expf(ls));
    ap_clear_error(c);
    ap_clip_close(f);
    return 0;
}

int ap_cli_inspect(int argc, char **argv) {
    const char *path = NULL;
    int list = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tensors"))
            list = 1;
        else if (argv[i][0] == '-') {
            fprintf(stderr, "alignprop inspect: unknown option '%s'\nusage: alignprop inspect PATH [--tensors]\n", argv[i]);
            return 2;
        } else
            path = argv[i];
    }
    if (!path) {
        fprintf(stderr, "usage: alignprop inspect PATH [--tensors]\n");
        return 2;
    }
    ap_ctx *c = ap_ctx_create();
    struct stat s;
    int rc = 0;
    if (stat(path, &s) == 0 && S_ISDIR(s.st_mode)) {
        char mi[4096];
        snprintf(mi, sizeof mi, "%s/model_index.json", path);
        struct stat s2;
        if (stat(mi, &s2) != 0 && print_clip(c, path) == 0) { /* an HF CLIP folder */
            ap_ctx_free(c);
            return 0;
        }
        ap_sd_model *m = NULL;
        if (ap_sd_load(c, path, AP_BF16, &m) != AP_OK) {
            fprintf(stderr, "alignprop inspect: %s\n", ap_last_error(c));
            rc = 1;
        } else {
            printf("%s: %s\n", path, ap_sd_format_name(m->format));
            print_model(m);
        }
        ap_sd_free(m);
        ap_ctx_free(c);
        return rc;
    }
    ap_weights *w = NULL;
    if (ap_weights_open(c, path, &w) != AP_OK) {
        fprintf(stderr, "alignprop inspect: %s\n", ap_last_error(c));
        ap_ctx_free(c);
        return 1;
    }
    int n = ap_weights_count(w);
    const char *names[16];
    long long counts[16] = {0}, params[16] = {0};
    int nd = 0;
    long long total = 0;
    for (int i = 0; i < n; i++) {
        int64_t shape[AP_MAX_DIMS];
        int k = ap_weights_shape(w, i, shape);
        long long numel = 1;
        for (int j = 0; j < k; j++) numel *= shape[j];
        total += numel;
        const char *dt = ap_weights_dtype(w, i);
        int d = 0;
        while (d < nd && strcmp(names[d], dt)) d++;
        if (d == nd && nd < 16) names[nd++] = dt;
        if (d < 16) counts[d]++, params[d] += numel;
        if (list) {
            printf("%s %s [", ap_weights_name(w, i), dt);
            for (int j = 0; j < k; j++) printf(j ? ",%lld" : "%lld", (long long)shape[j]);
            printf("]\n");
        }
    }
    printf("%s: %s, %d tensors, %lld parameters\n", path,
           ap_weights_format_of(w) == AP_WEIGHTS_TORCH ? "PyTorch checkpoint (zip)" : "safetensors", n, total);
    for (int d = 0; d < nd; d++) printf("  %s: %lld tensors, %lld parameters\n", names[d], counts[d], params[d]);
    int is_sd = ap_weights_find(w, "model.diffusion_model.input_blocks.0.0.weight") >= 0;
    ap_weights_close(w);
    if (is_sd) {
        ap_sd_model *m = NULL;
        if (ap_sd_load(c, path, AP_BF16, &m) != AP_OK) {
            fprintf(stderr, "alignprop inspect: %s\n", ap_last_error(c));
            rc = 1;
        } else {
            print_model(m);
        }
        ap_sd_free(m);
    } else if (print_clip(c, path) != 0) {
        printf("architecture: not a Stable Diffusion checkpoint (a plain tensor file)\n");
    }
    ap_ctx_free(c);
    return rc;
}
