/* LDM <-> diffusers names: all 1,130 SD1.5 tensors of shared/spec/sd15_tensors.tsv
 * both ways, the table's own list equal to the TSV's, other layouts, ignored
 * keys, and names that must not map. */
#include "models/names.h"
#include "test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *comp_prefix(const char *comp) {
    if (!strcmp(comp, "unet")) return "unet.";
    if (!strcmp(comp, "vae")) return "vae.";
    if (!strcmp(comp, "clip_text")) return "text_encoder.";
    return NULL;
}

typedef struct {
    char ldm[160], diff[160], shape[64];
    int squeeze;
} row;

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Reads the TSV; returns the number of rows, or -1 when shared/ is absent. */
static int read_tsv(row **out) {
    const char *dir = getenv("AP_SHARED_DIR");
    char path[4096];
    if (dir && *dir) snprintf(path, sizeof path, "%s/spec/sd15_tensors.tsv", dir);
    else snprintf(path, sizeof path, "%s", test_path("../shared/spec/sd15_tensors.tsv"));
    size_t len;
    char *buf = test_read_file(path, &len);
    if (!buf) {
        printf("test_names: %s not found (set AP_SHARED_DIR): the SD1.5 table checks are skipped\n", path);
        return -1;
    }
    int n = 0;
    row *rows = calloc(2000, sizeof *rows);
    for (char *line = strtok(buf, "\n"); line && n < 2000; line = strtok(NULL, "\n")) {
        if (line[0] == '#') continue;
        char *f[4] = {0};
        int k = 0;
        for (char *p = line; k < 4; k++) {
            f[k] = p;
            char *tab = strchr(p, '\t');
            if (!tab) {
                k++;
                break;
            }
            *tab = 0;
            p = tab + 1;
        }
        if (k != 4) {
            CHECK_MSG(0, "bad TSV row: %s", line);
            continue;
        }
        row *r = &rows[n++];
        const char *pre = comp_prefix(f[0]);
        CHECK_MSG(pre != NULL, "unknown component %s", f[0]);
        /* the diffusers column may carry a note: "to_q.weight  (squeeze to [512,512])" */
        char *note = strstr(f[3], "  (squeeze");
        r->squeeze = note != NULL;
        if (note) *note = 0;
        snprintf(r->ldm, sizeof r->ldm, "%s", f[1]);
        snprintf(r->diff, sizeof r->diff, "%s%s", pre ? pre : "", f[3]);
        snprintf(r->shape, sizeof r->shape, "%s", f[2]);
    }
    free(buf);
    *out = rows;
    return n;
}

static void test_sd15_tsv(void) {
    row *rows = NULL;
    int n = read_tsv(&rows);
    if (n < 0) return;
    CHECK_MSG(n == 1130, "%d rows", n);
    int bad = 0, squeezed = 0;
    for (int i = 0; i < n; i++) {
        const row *r = &rows[i];
        char out[256];
        unsigned fl = 99;
        ap_status s = ap_name_ldm_to_diffusers(r->ldm, out, sizeof out, &fl);
        int ok = s == AP_OK && !strcmp(out, r->diff) && (fl == AP_NAME_SQUEEZE) == r->squeeze;
        s = ap_name_diffusers_to_ldm(r->diff, out, sizeof out, &fl);
        ok &= s == AP_OK && !strcmp(out, r->ldm) && (fl == AP_NAME_SQUEEZE) == r->squeeze;
        /* the flag marks exactly the 4-D [C,C,1,1] tensors that are linear in diffusers */
        if (r->squeeze) ok &= strstr(r->shape, ", 1, 1]") != NULL && !strncmp(r->ldm, "first_stage_model.", 18);
        squeezed += r->squeeze;
        ok &= !ap_name_ldm_ignored(r->ldm) && !ap_name_diffusers_ignored(r->diff);
        if (!ok && bad++ < 10) fprintf(stderr, "row %d: %s <-> %s (got %s)\n", i, r->ldm, r->diff, out);
    }
    CHECK_MSG(bad == 0, "%d of %d rows do not map both ways", bad, n);
    CHECK(squeezed == 8);

    /* the table lists exactly these tensors: same sets, compared sorted */
    const ap_name_table *t = ap_name_table_sd1();
    CHECK(ap_name_table_count(t) == n);
    if (ap_name_table_count(t) == n) {
        char **a = malloc(sizeof *a * (size_t)n), **b = malloc(sizeof *b * (size_t)n);
        char **c = malloc(sizeof *c * (size_t)n), **d = malloc(sizeof *d * (size_t)n);
        for (int i = 0; i < n; i++) {
            a[i] = rows[i].ldm;
            b[i] = rows[i].diff;
            c[i] = malloc(160);
            d[i] = malloc(160);
            unsigned fl;
            CHECK(ap_name_table_get(t, i, c[i], 160, d[i], 160, &fl) == AP_OK);
            /* each listed pair maps onto itself */
            char out[256];
            unsigned f2;
            CHECK(ap_name_to_diffusers(t, c[i], out, sizeof out, &f2) == AP_OK && !strcmp(out, d[i]) && f2 == fl);
        }
        qsort(a, (size_t)n, sizeof *a, cmp_str);
        qsort(b, (size_t)n, sizeof *b, cmp_str);
        qsort(c, (size_t)n, sizeof *c, cmp_str);
        qsort(d, (size_t)n, sizeof *d, cmp_str);
        int diff = 0;
        for (int i = 0; i < n; i++) diff += strcmp(a[i], c[i]) != 0 || strcmp(b[i], d[i]) != 0;
        CHECK_MSG(diff == 0, "%d names differ between the table's list and the TSV", diff);
        for (int i = 0; i < n; i++) {
            free(c[i]);
            free(d[i]);
        }
        free(a);
        free(b);
        free(c);
        free(d);
    }
    free(rows);
}

/* Hand-picked names from SD_FACTS 1.7 / 2.5 (they hold without the TSV). */
static void test_examples(void) {
    static const struct {
        const char *ldm, *diff;
        unsigned flags;
    } ex[] = {
        {"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
         "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight", 0},
        {"model.diffusion_model.time_embed.0.weight", "unet.time_embedding.linear_1.weight", 0},
        {"model.diffusion_model.input_blocks.0.0.bias", "unet.conv_in.bias", 0},
        {"model.diffusion_model.input_blocks.3.0.op.weight", "unet.down_blocks.0.downsamplers.0.conv.weight", 0},
        {"model.diffusion_model.input_blocks.9.0.op.bias", "unet.down_blocks.2.downsamplers.0.conv.bias", 0},
        {"model.diffusion_model.input_blocks.4.0.skip_connection.weight",
         "unet.down_blocks.1.resnets.0.conv_shortcut.weight", 0},
        {"model.diffusion_model.input_blocks.11.0.out_layers.3.weight", "unet.down_blocks.3.resnets.1.conv2.weight", 0},
        {"model.diffusion_model.middle_block.1.proj_in.weight", "unet.mid_block.attentions.0.proj_in.weight", 0},
        {"model.diffusion_model.middle_block.2.emb_layers.1.bias", "unet.mid_block.resnets.1.time_emb_proj.bias", 0},
        {"model.diffusion_model.output_blocks.2.1.conv.weight", "unet.up_blocks.0.upsamplers.0.conv.weight", 0},
        {"model.diffusion_model.output_blocks.5.2.conv.bias", "unet.up_blocks.1.upsamplers.0.conv.bias", 0},
        {"model.diffusion_model.output_blocks.11.1.transformer_blocks.0.ff.net.0.proj.weight",
         "unet.up_blocks.3.attentions.2.transformer_blocks.0.ff.net.0.proj.weight", 0},
        {"model.diffusion_model.out.0.weight", "unet.conv_norm_out.weight", 0},
        {"model.diffusion_model.out.2.bias", "unet.conv_out.bias", 0},
        {"first_stage_model.decoder.up.3.block.0.conv1.weight", "vae.decoder.up_blocks.0.resnets.0.conv1.weight", 0},
        {"first_stage_model.decoder.up.3.upsample.conv.weight", "vae.decoder.up_blocks.0.upsamplers.0.conv.weight", 0},
        {"first_stage_model.decoder.up.0.block.2.norm2.bias", "vae.decoder.up_blocks.3.resnets.2.norm2.bias", 0},
        {"first_stage_model.decoder.up.1.block.0.nin_shortcut.weight",
         "vae.decoder.up_blocks.2.resnets.0.conv_shortcut.weight", 0},
        {"first_stage_model.encoder.down.1.block.0.nin_shortcut.bias",
         "vae.encoder.down_blocks.1.resnets.0.conv_shortcut.bias", 0},
        {"first_stage_model.encoder.mid.attn_1.q.weight", "vae.encoder.mid_block.attentions.0.to_q.weight",
         AP_NAME_SQUEEZE},
        {"first_stage_model.decoder.mid.attn_1.proj_out.weight", "vae.decoder.mid_block.attentions.0.to_out.0.weight",
         AP_NAME_SQUEEZE},
        {"first_stage_model.decoder.mid.attn_1.proj_out.bias", "vae.decoder.mid_block.attentions.0.to_out.0.bias", 0},
        {"first_stage_model.decoder.mid.attn_1.norm.weight", "vae.decoder.mid_block.attentions.0.group_norm.weight", 0},
        {"first_stage_model.encoder.norm_out.weight", "vae.encoder.conv_norm_out.weight", 0},
        {"first_stage_model.post_quant_conv.weight", "vae.post_quant_conv.weight", 0},
        {"cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.bias",
         "text_encoder.text_model.encoder.layers.11.mlp.fc2.bias", 0},
        {"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
         "text_encoder.text_model.embeddings.token_embedding.weight", 0},
    };
    for (size_t i = 0; i < sizeof ex / sizeof ex[0]; i++) {
        char out[256];
        unsigned fl = 99;
        CHECK_MSG(ap_name_ldm_to_diffusers(ex[i].ldm, out, sizeof out, &fl) == AP_OK && !strcmp(out, ex[i].diff) &&
                      fl == ex[i].flags,
                  "%s -> %s", ex[i].ldm, out);
        CHECK_MSG(ap_name_diffusers_to_ldm(ex[i].diff, out, sizeof out, &fl) == AP_OK && !strcmp(out, ex[i].ldm) &&
                      fl == ex[i].flags,
                  "%s -> %s", ex[i].diff, out);
    }
    /* the deprecated VAE attention names read as the current ones */
    static const char *old[][2] = {
        {"vae.decoder.mid_block.attentions.0.query.weight", "first_stage_model.decoder.mid.attn_1.q.weight"},
        {"vae.encoder.mid_block.attentions.0.key.bias", "first_stage_model.encoder.mid.attn_1.k.bias"},
        {"vae.decoder.mid_block.attentions.0.value.weight", "first_stage_model.decoder.mid.attn_1.v.weight"},
        {"vae.decoder.mid_block.attentions.0.proj_attn.weight", "first_stage_model.decoder.mid.attn_1.proj_out.weight"},
    };
    for (size_t i = 0; i < 4; i++) {
        char out[256], back[256];
        unsigned fl = 0, f2 = 0;
        CHECK(ap_name_diffusers_to_ldm(old[i][0], out, sizeof out, &fl) == AP_OK && !strcmp(out, old[i][1]));
        CHECK(fl & AP_NAME_DEPRECATED);
        CHECK((fl & AP_NAME_SQUEEZE) == (strstr(old[i][0], ".weight") ? AP_NAME_SQUEEZE : 0u));
        /* and map back to the current spelling */
        CHECK(ap_name_ldm_to_diffusers(out, back, sizeof back, &f2) == AP_OK && !(f2 & AP_NAME_DEPRECATED));
        CHECK(strstr(back, "to_") != NULL);
    }
}

static void test_unknown(void) {
    static const char *ldm_bad[] = {
        "",
        "unet",
        "foo.weight",
        "model.diffusion_model.",
        "model.diffusion_model.time_embed.0.weight.extra",
        "model.diffusion_model.time_embed.1.weight",
        "model.diffusion_model.input_blocks.1.1.foo.weight",
        "model.diffusion_model.input_blocks.12.0.in_layers.0.weight",
        "model.diffusion_model.input_blocks.1.0.skip_connection.weight", /* 320 -> 320: no shortcut */
        "model.diffusion_model.input_blocks.10.1.norm.weight",           /* level 3 has no attention */
        "model.diffusion_model.input_blocks.12.0.op.weight",
        "model.diffusion_model.output_blocks.2.2.conv.weight",           /* up_blocks.0 has no attention: .1.conv */
        "model.diffusion_model.output_blocks.11.2.conv.weight",          /* no upsampler at the last level */
        "model.diffusion_model.middle_block.1.transformer_blocks.1.attn1.to_q.weight", /* depth 1 */
        "model.diffusion_model.middle_block.0.skip_connection.weight",
        "first_stage_model.decoder.up.0.upsample.conv.weight",
        "first_stage_model.encoder.down.3.downsample.conv.weight",
        "first_stage_model.encoder.down.0.block.2.conv1.weight", /* the encoder has 2 per level */
        "first_stage_model.decoder.up.2.block.0.nin_shortcut.weight", /* 512 -> 512 */
        "first_stage_model.decoder.mid.attn_1.query.weight",        /* old names are diffusers-side only */
        "cond_stage_model.transformer.text_model.encoder.layers.12.mlp.fc1.weight",
        "cond_stage_model.transformer.text_model.embeddings.position_ids",
        "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight", /* SD2 OpenCLIP */
        "model_ema.decay",
        "unet.conv_in.weight", /* an internal name is not an LDM name */
    };
    for (size_t i = 0; i < sizeof ldm_bad / sizeof ldm_bad[0]; i++) {
        char out[256] = "untouched";
        unsigned fl = 99;
        ap_status s = ap_name_ldm_to_diffusers(ldm_bad[i], out, sizeof out, &fl);
        CHECK_MSG(s == AP_ERR_NOT_FOUND && fl == 0, "\"%s\" mapped (%d) to %s", ldm_bad[i], s, out);
    }
    char out[256];
    static const char *diff_bad[] = {
        "down_blocks.0.resnets.0.norm1.weight", /* no component prefix */
        "unet.down_blocks.3.attentions.0.norm.weight",
        "unet.down_blocks.3.downsamplers.0.conv.weight",
        "unet.up_blocks.3.upsamplers.0.conv.weight",
        "unet.up_blocks.0.resnets.3.conv1.weight",
        "unet.down_blocks.0.resnets.0.conv_shortcut.weight",
        "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.bias", /* SD1 q/k/v have no bias */
        "vae.decoder.up_blocks.3.upsamplers.0.conv.weight",
        "vae.encoder.down_blocks.3.downsamplers.0.conv.weight",
        "vae.decoder.mid_block.attentions.0.to_out.1.weight",
        "text_encoder.text_model.embeddings.position_ids",
        "text_encoder.text_model.encoder.layers.0.self_attn.qkv.weight",
        "text_encoder.text_projection.weight",
        "model.diffusion_model.conv_in.weight",
    };
    for (size_t i = 0; i < sizeof diff_bad / sizeof diff_bad[0]; i++) {
        unsigned fl = 99;
        ap_status s = ap_name_diffusers_to_ldm(diff_bad[i], out, sizeof out, &fl);
        CHECK_MSG(s == AP_ERR_NOT_FOUND && fl == 0, "\"%s\" mapped (%d) to %s", diff_bad[i], s, out);
    }
    /* buffers too small, NULL arguments */
    char tiny[8];
    CHECK(ap_name_ldm_to_diffusers("model.diffusion_model.out.2.bias", tiny, sizeof tiny, NULL) == AP_ERR_INVALID_ARG);
    CHECK(ap_name_ldm_to_diffusers("model.diffusion_model.out.2.bias", out, 18, NULL) == AP_ERR_INVALID_ARG);
    CHECK(ap_name_ldm_to_diffusers("model.diffusion_model.out.2.bias", out, 19, NULL) == AP_OK &&
          !strcmp(out, "unet.conv_out.bias"));
    CHECK(ap_name_ldm_to_diffusers(NULL, out, sizeof out, NULL) == AP_ERR_INVALID_ARG);
    CHECK(ap_name_ldm_to_diffusers("model.diffusion_model.out.2.bias", NULL, 10, NULL) == AP_ERR_INVALID_ARG);
    CHECK(ap_name_to_ldm(NULL, "unet.conv_out.bias", out, sizeof out, NULL) == AP_ERR_INVALID_ARG);
    CHECK(ap_name_table_get(ap_name_table_sd1(), -1, out, sizeof out, out, sizeof out, NULL) == AP_ERR_INVALID_ARG);
    CHECK(ap_name_table_get(ap_name_table_sd1(), 1130, out, sizeof out, out, sizeof out, NULL) == AP_ERR_INVALID_ARG);
}

static void test_ignored(void) {
    static const char *yes[] = {"model_ema.decay", "model_ema.num_updates",
                                "model_ema.diffusion_modelinput_blocks00weight",
                                "betas", "alphas_cumprod", "posterior_mean_coef2", "scale_factor",
                                "cond_stage_model.transformer.text_model.embeddings.position_ids"};
    static const char *no[] = {"model.diffusion_model.out.2.bias", "betas.x", "alphas", "model_emax",
                               "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight", ""};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) CHECK_MSG(ap_name_ldm_ignored(yes[i]), "%s", yes[i]);
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) CHECK_MSG(!ap_name_ldm_ignored(no[i]), "%s", no[i]);
    CHECK(!ap_name_ldm_ignored(NULL));
    CHECK(ap_name_diffusers_ignored("text_encoder.text_model.embeddings.position_ids"));
    CHECK(!ap_name_diffusers_ignored("text_encoder.text_model.embeddings.position_embedding.weight"));
}

/* Other layouts: a tiny model (2 levels, 1 resnet per level, attention on
 * level 0 only, depth 2), checked by hand from the rules, and round trips of
 * every name of several layouts. */
static void test_layouts(void) {
    ap_name_layout tiny = {.unet_levels = 2, .unet_mult = {1, 2}, .unet_layers = 1, .unet_attn = 0x1,
                           .unet_depth = 2, .vae_levels = 2, .vae_mult = {1, 1}, .vae_layers = 1, .text_layers = 2};
    ap_name_table *t = NULL;
    CHECK(ap_name_table_new(&tiny, &t) == AP_OK && t);
    if (!t) return;
    static const char *pairs[][2] = {
        {"model.diffusion_model.input_blocks.1.0.in_layers.0.weight", "unet.down_blocks.0.resnets.0.norm1.weight"},
        {"model.diffusion_model.input_blocks.1.1.transformer_blocks.1.attn2.to_k.weight",
         "unet.down_blocks.0.attentions.0.transformer_blocks.1.attn2.to_k.weight"},
        {"model.diffusion_model.input_blocks.2.0.op.weight", "unet.down_blocks.0.downsamplers.0.conv.weight"},
        {"model.diffusion_model.input_blocks.3.0.skip_connection.weight",
         "unet.down_blocks.1.resnets.0.conv_shortcut.weight"},
        {"model.diffusion_model.output_blocks.0.0.skip_connection.bias",
         "unet.up_blocks.0.resnets.0.conv_shortcut.bias"},
        {"model.diffusion_model.output_blocks.1.1.conv.weight", "unet.up_blocks.0.upsamplers.0.conv.weight"},
        {"model.diffusion_model.output_blocks.2.1.proj_out.weight", "unet.up_blocks.1.attentions.0.proj_out.weight"},
        {"model.diffusion_model.output_blocks.3.1.transformer_blocks.1.norm3.bias",
         "unet.up_blocks.1.attentions.1.transformer_blocks.1.norm3.bias"},
        {"first_stage_model.decoder.up.1.block.1.conv2.weight", "vae.decoder.up_blocks.0.resnets.1.conv2.weight"},
        {"first_stage_model.decoder.up.1.upsample.conv.bias", "vae.decoder.up_blocks.0.upsamplers.0.conv.bias"},
        {"first_stage_model.encoder.down.0.downsample.conv.weight",
         "vae.encoder.down_blocks.0.downsamplers.0.conv.weight"},
        {"cond_stage_model.transformer.text_model.encoder.layers.1.layer_norm2.bias",
         "text_encoder.text_model.encoder.layers.1.layer_norm2.bias"},
    };
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        char out[256];
        CHECK_MSG(ap_name_to_diffusers(t, pairs[i][0], out, sizeof out, NULL) == AP_OK && !strcmp(out, pairs[i][1]),
                  "tiny: %s -> %s", pairs[i][0], out);
        CHECK_MSG(ap_name_to_ldm(t, pairs[i][1], out, sizeof out, NULL) == AP_OK && !strcmp(out, pairs[i][0]),
                  "tiny: %s -> %s", pairs[i][1], out);
    }
    static const char *absent[] = {
        "model.diffusion_model.input_blocks.4.0.in_layers.0.weight",
        "model.diffusion_model.input_blocks.3.1.norm.weight", /* level 1: no attention */
        "model.diffusion_model.output_blocks.3.2.conv.weight",
        "model.diffusion_model.input_blocks.1.0.skip_connection.weight",
        "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight", /* mult 1 -> 1 */
        "cond_stage_model.transformer.text_model.encoder.layers.2.mlp.fc1.weight",
    };
    for (size_t i = 0; i < sizeof absent / sizeof absent[0]; i++) {
        char out[256];
        CHECK_MSG(ap_name_to_diffusers(t, absent[i], out, sizeof out, NULL) == AP_ERR_NOT_FOUND, "tiny: %s", absent[i]);
    }
    ap_name_table_free(t);

    /* every name of several layouts maps both ways, and no two names collide */
    ap_name_layout ls[3] = {ap_name_layout_sd1, tiny, ap_name_layout_sd1};
    ls[2].unet_levels = 3;
    ls[2].unet_attn = 0x6;
    ls[2].unet_layers = 3;
    ls[2].vae_levels = 3;
    ls[2].vae_mult[2] = 1;
    for (int k = 0; k < 3; k++) {
        CHECK(ap_name_table_new(&ls[k], &t) == AP_OK);
        if (!t) continue;
        int n = ap_name_table_count(t), bad = 0;
        char **names = malloc(sizeof *names * (size_t)n);
        for (int i = 0; i < n; i++) {
            char l[256], d[256], o[256];
            unsigned fl, f2 = 99, f3 = 99;
            names[i] = NULL;
            if (ap_name_table_get(t, i, l, sizeof l, d, sizeof d, &fl) != AP_OK) {
                bad++;
                continue;
            }
            names[i] = strdup(d);
            bad += !(ap_name_to_diffusers(t, l, o, sizeof o, &f2) == AP_OK && !strcmp(o, d) && f2 == fl);
            bad += !(ap_name_to_ldm(t, d, o, sizeof o, &f3) == AP_OK && !strcmp(o, l) && f3 == fl);
        }
        CHECK_MSG(bad == 0, "layout %d: %d names do not round-trip", k, bad);
        qsort(names, (size_t)n, sizeof *names, cmp_str);
        int dup = 0;
        for (int i = 1; i < n; i++) dup += names[i] && names[i - 1] && !strcmp(names[i], names[i - 1]);
        CHECK_MSG(dup == 0, "layout %d: %d duplicate names", k, dup);
        for (int i = 0; i < n; i++) free(names[i]);
        free(names);
        ap_name_table_free(t);
        t = NULL;
    }
    /* bad layouts */
    ap_name_layout badl = ap_name_layout_sd1;
    badl.unet_levels = 0;
    CHECK(ap_name_table_new(&badl, &t) == AP_ERR_INVALID_ARG && t == NULL);
    badl = ap_name_layout_sd1;
    badl.unet_attn = 0x10; /* level 4 of 4 levels */
    CHECK(ap_name_table_new(&badl, &t) == AP_ERR_INVALID_ARG);
    badl = ap_name_layout_sd1;
    badl.vae_mult[1] = 0;
    CHECK(ap_name_table_new(&badl, &t) == AP_ERR_INVALID_ARG);
    CHECK(ap_name_table_new(NULL, &t) == AP_ERR_INVALID_ARG);
    ap_name_table_free(NULL);
}

int main(void) {
    test_sd15_tsv();
    test_examples();
    test_unknown();
    test_ignored();
    test_layouts();
    return test_summary("test_names");
}
