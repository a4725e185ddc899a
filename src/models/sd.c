/* Stable Diffusion 1.x: presets, loading from every layout, saving both layouts. */
#include "sd.h"

#include "core/internal.h"
#include "io/atomic.h"
#include "io/json.h"
#include "models/names.h"
#include "models/weights.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

/* ------------------------------------------------------------ presets */
ap_status ap_sd_preset(ap_ctx *c, const char *name, ap_sd_config *out) {
    memset(out, 0, sizeof *out);
    if (!strcmp(name, "sd15")) {
        out->unet = ap_unet_config_sd15;
        out->vae = ap_vae_config_sd15;
        out->text = ap_clip_text_config_sd15;
        return AP_OK;
    }
    ap_clip_text_config text = {.vocab = 49408, .max_positions = 77, .act = AP_ACT_QUICK_GELU, .eps = 1e-5f};
    if (!strcmp(name, "tiny")) {
        /* the smallest model that still has every kind of block: tests */
        out->unet = (ap_unet_config){.in_channels = 4, .out_channels = 4, .levels = 2, .block_out = {32, 64},
                                     .attention = {1, 0}, .layers_per_block = 1, .heads = 2, .context_dim = 32,
                                     .norm_groups = 8};
        out->vae = (ap_vae_config){.in_channels = 3, .out_channels = 3, .latent_channels = 4, .levels = 2,
                                   .block_out = {16, 32}, .layers_per_block = 1, .norm_groups = 8,
                                   .scaling_factor = 0.18215f};
        text.width = 32, text.layers = 2, text.heads = 2, text.intermediate = 64;
        out->text = text;
        return AP_OK;
    }
    if (!strcmp(name, "small")) {
        /* 64x64 images, 16x16x4 latents: the size of the shipped demo model */
        out->unet = (ap_unet_config){.in_channels = 4, .out_channels = 4, .levels = 3, .block_out = {64, 128, 256},
                                     .attention = {1, 1, 0}, .layers_per_block = 1, .heads = 4, .context_dim = 128,
                                     .norm_groups = 16};
        out->vae = (ap_vae_config){.in_channels = 3, .out_channels = 3, .latent_channels = 4, .levels = 3,
                                   .block_out = {32, 64, 128}, .layers_per_block = 1, .norm_groups = 16,
                                   .scaling_factor = 0.18215f};
        text.width = 128, text.layers = 4, text.heads = 4, text.intermediate = 512;
        out->text = text;
        return AP_OK;
    }
    if (!strcmp(name, "shapes64")) {
        /* the model `alignprop pretrain` trains on the shapes dataset (docs/pretrain.md):
         * 64x64 images, 16x16x4 latents, a transformer per UNet level; the text encoder
         * keeps CLIP's vocabulary and 77 positions, so its 49408 x 64 token table is
         * about half of all parameters */
        out->unet = (ap_unet_config){.in_channels = 4, .out_channels = 4, .levels = 2, .block_out = {64, 128},
                                     .attention = {1, 1}, .layers_per_block = 1, .heads = 4, .context_dim = 64,
                                     .norm_groups = 16};
        out->vae = (ap_vae_config){.in_channels = 3, .out_channels = 3, .latent_channels = 4, .levels = 3,
                                   .block_out = {32, 64, 64}, .layers_per_block = 1, .norm_groups = 16,
                                   .scaling_factor = 0.18215f};
        text.width = 64, text.layers = 3, text.heads = 4, text.intermediate = 256;
        out->text = text;
        return AP_OK;
    }
    return ap_seterr(c, AP_ERR_INVALID_ARG, "unknown model config '%s' (expected tiny, small, shapes64 or sd15)",
                     name);
}

const char *ap_sd_format_name(ap_sd_format f) {
    switch (f) {
    case AP_SD_FORMAT_DIFFUSERS: return "diffusers folder";
    case AP_SD_FORMAT_LDM_SAFETENSORS: return "single-file safetensors (LDM names)";
    case AP_SD_FORMAT_LDM_CKPT: return "single-file PyTorch checkpoint (LDM names)";
    default: return "none (made in memory)";
    }
}

/* ------------------------------------------------------------ config JSON */
/* The shortest decimal that reads back as v: config files say 0.18215 and
 * 1e-05 as diffusers writes them, not the f32 value's double expansion
 * (0.18215000629425049). */
static double f32_decimal(float v) {
    char b[32];
    for (int p = 6; p <= 9; p++) {
        snprintf(b, sizeof b, "%.*g", p, (double)v);
        if ((float)strtod(b, NULL) == v) return strtod(b, NULL);
    }
    return v;
}

static ap_json *int_array(const int *v, int n) {
    ap_json *a = ap_json_new_array();
    for (int i = 0; i < n; i++) ap_json_add(a, NULL, ap_json_new_int(v[i]));
    return a;
}

static ap_json *config_to_json(const ap_sd_config *cfg) {
    ap_json *root = ap_json_new_object(), *u = ap_json_new_object(), *v = ap_json_new_object(),
            *t = ap_json_new_object();
    const ap_unet_config *uc = &cfg->unet;
    ap_json_add_int(u, "in_channels", uc->in_channels);
    ap_json_add_int(u, "out_channels", uc->out_channels);
    ap_json_add(u, "block_out_channels", int_array(uc->block_out, uc->levels));
    ap_json_add(u, "attention", int_array(uc->attention, uc->levels));
    ap_json_add_int(u, "layers_per_block", uc->layers_per_block);
    ap_json_add_int(u, "heads", uc->heads);
    ap_json_add_int(u, "head_dim", uc->head_dim);
    ap_json_add_int(u, "context_dim", uc->context_dim);
    ap_json_add_int(u, "norm_groups", uc->norm_groups);
    ap_json_add_bool(u, "use_linear_projection", uc->use_linear_projection);
    const ap_vae_config *vc = &cfg->vae;
    ap_json_add_int(v, "in_channels", vc->in_channels);
    ap_json_add_int(v, "out_channels", vc->out_channels);
    ap_json_add_int(v, "latent_channels", vc->latent_channels);
    ap_json_add(v, "block_out_channels", int_array(vc->block_out, vc->levels));
    ap_json_add_int(v, "layers_per_block", vc->layers_per_block);
    ap_json_add_int(v, "norm_groups", vc->norm_groups);
    ap_json_add_num(v, "scaling_factor", f32_decimal(vc->scaling_factor));
    const ap_clip_text_config *tc = &cfg->text;
    ap_json_add_int(t, "vocab_size", tc->vocab);
    ap_json_add_int(t, "max_position_embeddings", tc->max_positions);
    ap_json_add_int(t, "hidden_size", tc->width);
    ap_json_add_int(t, "num_hidden_layers", tc->layers);
    ap_json_add_int(t, "num_attention_heads", tc->heads);
    ap_json_add_int(t, "intermediate_size", tc->intermediate);
    ap_json_add_str(t, "hidden_act", tc->act == AP_ACT_GELU ? "gelu" : "quick_gelu");
    ap_json_add_num(t, "layer_norm_eps", f32_decimal(tc->eps));
    ap_json_add(root, "unet", u);
    ap_json_add(root, "vae", v);
    ap_json_add(root, "text_encoder", t);
    return root;
}

char *ap_sd_config_json(const ap_sd_config *cfg) {
    ap_json *j = config_to_json(cfg);
    char *s = j ? ap_json_print(j, false) : NULL;
    ap_json_free(j);
    char *r = s ? strdup(s) : NULL;
    ap_json_free_str(s);
    return r;
}

typedef struct {
    ap_ctx *c;
    const char *where;
    ap_status st;
} jctx;

static int jint(jctx *jc, const ap_json *o, const char *key, int lo, int hi, int dflt, bool required) {
    const ap_json *v = ap_json_get(o, key);
    int64_t x;
    if (!v) {
        if (required && jc->st == AP_OK)
            jc->st = ap_seterr(jc->c, AP_ERR_FORMAT, "%s: config has no '%s'", jc->where, key);
        return dflt;
    }
    bool b;
    if (ap_json_bool(v, &b)) return b;
    if (!ap_json_int(v, lo, hi, &x)) {
        if (jc->st == AP_OK)
            jc->st = ap_seterr(jc->c, AP_ERR_FORMAT, "%s: config '%s' must be an integer in [%d, %d]", jc->where,
                               key, lo, hi);
        return dflt;
    }
    return (int)x;
}

static int jarr(jctx *jc, const ap_json *o, const char *key, int *out, int max, int lo, int hi) {
    const ap_json *a = ap_json_get(o, key);
    int n = ap_json_size(a);
    if (ap_json_kind_of(a) != AP_JSON_ARRAY || n < 1 || n > max) {
        if (jc->st == AP_OK)
            jc->st = ap_seterr(jc->c, AP_ERR_FORMAT, "%s: config '%s' must be a list of 1 to %d integers", jc->where,
                               key, max);
        return 0;
    }
    int i = 0;
    for (const ap_json *e = ap_json_first(a); e; e = ap_json_next(e)) {
        int64_t x = 0;
        bool b;
        if (ap_json_bool(e, &b))
            x = b;
        else if (!ap_json_int(e, lo, hi, &x) && jc->st == AP_OK)
            jc->st = ap_seterr(jc->c, AP_ERR_FORMAT, "%s: config '%s' has a bad entry", jc->where, key);
        out[i++] = (int)x;
    }
    return n;
}

static double jnum(const ap_json *o, const char *key, double dflt) {
    double x;
    return ap_json_num(ap_json_get(o, key), &x) ? x : dflt;
}

/* The text encoder's config: transformers' CLIPTextConfig keys, which our own
 * metadata uses too (required there; defaults to SD1.x's for diffusers folders). */
static void text_config_parse(jctx *jc, const ap_json *t, bool required, ap_clip_text_config *tc) {
    tc->vocab = jint(jc, t, "vocab_size", 1, 1 << 24, 49408, required);
    tc->max_positions = jint(jc, t, "max_position_embeddings", 1, 4096, 77, required);
    tc->width = jint(jc, t, "hidden_size", 1, 1 << 16, 768, required);
    tc->layers = jint(jc, t, "num_hidden_layers", 1, AP_CLIP_MAX_LAYERS, 12, required);
    tc->heads = jint(jc, t, "num_attention_heads", 1, 1024, 12, required);
    tc->intermediate = jint(jc, t, "intermediate_size", 1, 1 << 20, 3072, required);
    const char *act = ap_json_str(ap_json_get(t, "hidden_act"));
    tc->act = act && !strcmp(act, "gelu") ? AP_ACT_GELU : AP_ACT_QUICK_GELU;
    tc->eps = (float)jnum(t, "layer_norm_eps", 1e-5);
}

ap_status ap_sd_config_from_json(ap_ctx *c, const char *text, const char *where, ap_sd_config *out) {
    char err[256];
    ap_json *root = ap_json_parse(text, strlen(text), err, sizeof err);
    if (!root) return ap_seterr(c, AP_ERR_FORMAT, "%s: bad config JSON: %s", where, err);
    jctx jc = {c, where, AP_OK};
    memset(out, 0, sizeof *out);
    const ap_json *u = ap_json_get(root, "unet"), *v = ap_json_get(root, "vae"), *t = ap_json_get(root, "text_encoder");
    ap_unet_config *uc = &out->unet;
    uc->in_channels = jint(&jc, u, "in_channels", 1, 64, 4, true);
    uc->out_channels = jint(&jc, u, "out_channels", 1, 64, 4, true);
    uc->levels = jarr(&jc, u, "block_out_channels", uc->block_out, AP_UNET_MAX_LEVELS, 1, 1 << 16);
    int na = jarr(&jc, u, "attention", uc->attention, AP_UNET_MAX_LEVELS, 0, 1);
    if (na != uc->levels && jc.st == AP_OK)
        jc.st = ap_seterr(c, AP_ERR_FORMAT, "%s: config 'attention' must have one entry per level", where);
    uc->layers_per_block = jint(&jc, u, "layers_per_block", 1, AP_UNET_MAX_LAYERS - 1, 2, true);
    uc->heads = jint(&jc, u, "heads", 0, 1024, 8, true);
    uc->head_dim = jint(&jc, u, "head_dim", 0, 1024, 0, false);
    uc->context_dim = jint(&jc, u, "context_dim", 1, 1 << 16, 768, true);
    uc->norm_groups = jint(&jc, u, "norm_groups", 1, 1024, 32, true);
    uc->use_linear_projection = jint(&jc, u, "use_linear_projection", 0, 1, 0, false);
    ap_vae_config *vc = &out->vae;
    vc->in_channels = jint(&jc, v, "in_channels", 1, 64, 3, true);
    vc->out_channels = jint(&jc, v, "out_channels", 1, 64, 3, true);
    vc->latent_channels = jint(&jc, v, "latent_channels", 1, 64, 4, true);
    vc->levels = jarr(&jc, v, "block_out_channels", vc->block_out, AP_VAE_MAX_LEVELS, 1, 1 << 16);
    vc->layers_per_block = jint(&jc, v, "layers_per_block", 1, AP_VAE_MAX_LAYERS - 1, 2, true);
    vc->norm_groups = jint(&jc, v, "norm_groups", 1, 1024, 32, true);
    vc->scaling_factor = (float)jnum(v, "scaling_factor", 0.18215);
    text_config_parse(&jc, t, true, &out->text);
    ap_json_free(root);
    return jc.st;
}

/* ------------------------------------------------------------ the model */
ap_status ap_sd_create(ap_ctx *c, const ap_sd_config *cfg, ap_dtype wdt, ap_sd_model **out) {
    *out = NULL;
    if (ap_failed(c)) return c->status;
    ap_sd_model *m = calloc(1, sizeof *m);
    if (!m) return ap_seterr(c, AP_ERR_NOMEM, "model: out of memory");
    m->cfg = *cfg;
    ap_status st = ap_unet_create(c, &cfg->unet, wdt, &m->unet);
    if (st == AP_OK) st = ap_vae_create(c, &cfg->vae, wdt, &m->vae);
    if (st == AP_OK) st = ap_clip_text_create(c, &cfg->text, wdt, &m->text);
    if (st == AP_OK && cfg->text.vocab == 49408) st = ap_tokenizer_load_bundled(c, &m->tok);
    if (st != AP_OK) {
        ap_sd_free(m);
        return st;
    }
    *out = m;
    return AP_OK;
}

void ap_sd_free(ap_sd_model *m) {
    if (!m) return;
    ap_unet_free(m->unet);
    ap_vae_free(m->vae);
    ap_clip_text_free(m->text);
    ap_tokenizer_free(m->tok);
    free(m);
}

ap_status ap_sd_init_random(ap_ctx *c, ap_sd_model *m, uint64_t seed) {
    ap_params_init_random(&m->unet->params, seed);
    ap_params_init_random(&m->vae->params, seed + 1);
    ap_params_init_random(&m->text->params, seed + 2);
    return c->status;
}

ap_status ap_sd_name_table(ap_ctx *c, const ap_sd_config *cfg, ap_name_table **out) {
    ap_name_layout l;
    memset(&l, 0, sizeof l);
    const ap_unet_config *u = &cfg->unet;
    l.unet_levels = u->levels;
    l.unet_layers = u->layers_per_block;
    l.unet_depth = 1;
    for (int i = 0; i < u->levels; i++) {
        if (u->block_out[i] % u->block_out[0])
            return ap_seterr(c, AP_ERR_UNSUPPORTED,
                             "model: UNet channels %d are not a multiple of %d: no LDM names for this layout",
                             u->block_out[i], u->block_out[0]);
        l.unet_mult[i] = u->block_out[i] / u->block_out[0];
        if (u->attention[i]) l.unet_attn |= 1u << i;
    }
    const ap_vae_config *v = &cfg->vae;
    l.vae_levels = v->levels;
    l.vae_layers = v->layers_per_block;
    for (int i = 0; i < v->levels; i++) {
        if (v->block_out[i] % v->block_out[0])
            return ap_seterr(c, AP_ERR_UNSUPPORTED, "model: VAE channels are not multiples of the first level's");
        l.vae_mult[i] = v->block_out[i] / v->block_out[0];
    }
    l.text_layers = cfg->text.layers;
    ap_status st = ap_name_table_new(&l, out);
    if (st != AP_OK) return ap_seterr(c, st, "model: this layout has no LDM name table");
    return AP_OK;
}

/* ------------------------------------------------------------ saving */
static ap_status mkdir_p(ap_ctx *c, const char *dir) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", dir);
    for (char *p = buf + 1;; p++) {
        char ch = *p;
        if (ch == '/' || ch == 0) {
            *p = 0;
            if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                return ap_seterr(c, AP_ERR_IO, "%s: cannot create directory: %s", buf, strerror(errno));
            *p = ch;
        }
        if (!ch) break;
    }
    return AP_OK;
}

/* Prints and frees j (the builders above hand over new trees). */
static ap_status write_json(ap_ctx *c, const char *path, ap_json *j) {
    ap_status st = ap_json_save(c, path, j, true);
    ap_json_free(j);
    return st;
}

static ap_json *str_array(const char *const *v, int n) {
    ap_json *a = ap_json_new_array();
    for (int i = 0; i < n; i++) ap_json_add(a, NULL, v[i] ? ap_json_new_str(v[i]) : ap_json_new_null());
    return a;
}

static ap_json *unet_config_json(const ap_unet_config *u) {
    ap_json *j = ap_json_new_object();
    const char *down[AP_UNET_MAX_LEVELS], *up[AP_UNET_MAX_LEVELS];
    for (int i = 0; i < u->levels; i++) {
        down[i] = u->attention[i] ? "CrossAttnDownBlock2D" : "DownBlock2D";
        up[u->levels - 1 - i] = u->attention[i] ? "CrossAttnUpBlock2D" : "UpBlock2D";
    }
    ap_json_add_str(j, "_class_name", "UNet2DConditionModel");
    ap_json_add_str(j, "_diffusers_version", "0.27.0");
    ap_json_add_str(j, "act_fn", "silu");
    ap_json_add_int(j, "attention_head_dim", u->head_dim > 0 ? u->head_dim : u->heads);
    ap_json_add(j, "block_out_channels", int_array(u->block_out, u->levels));
    ap_json_add_bool(j, "center_input_sample", false);
    ap_json_add_int(j, "cross_attention_dim", u->context_dim);
    ap_json_add(j, "down_block_types", str_array(down, u->levels));
    ap_json_add_int(j, "downsample_padding", 1);
    ap_json_add_bool(j, "flip_sin_to_cos", true);
    ap_json_add_int(j, "freq_shift", 0);
    ap_json_add_int(j, "in_channels", u->in_channels);
    ap_json_add_int(j, "layers_per_block", u->layers_per_block);
    ap_json_add_str(j, "mid_block_type", "UNetMidBlock2DCrossAttn");
    ap_json_add_int(j, "mid_block_scale_factor", 1);
    ap_json_add_num(j, "norm_eps", 1e-5);
    ap_json_add_int(j, "norm_num_groups", u->norm_groups);
    ap_json_add_int(j, "out_channels", u->out_channels);
    ap_json_add(j, "up_block_types", str_array(up, u->levels));
    ap_json_add_bool(j, "use_linear_projection", u->use_linear_projection);
    ap_json_add_int(j, "sample_size", 8 << (u->levels - 1));
    return j;
}

static ap_json *vae_config_json(const ap_vae_config *v) {
    ap_json *j = ap_json_new_object();
    const char *down[AP_VAE_MAX_LEVELS], *up[AP_VAE_MAX_LEVELS];
    for (int i = 0; i < v->levels; i++) down[i] = "DownEncoderBlock2D", up[i] = "UpDecoderBlock2D";
    ap_json_add_str(j, "_class_name", "AutoencoderKL");
    ap_json_add_str(j, "_diffusers_version", "0.27.0");
    ap_json_add_str(j, "act_fn", "silu");
    ap_json_add(j, "block_out_channels", int_array(v->block_out, v->levels));
    ap_json_add(j, "down_block_types", str_array(down, v->levels));
    ap_json_add_int(j, "in_channels", v->in_channels);
    ap_json_add_int(j, "latent_channels", v->latent_channels);
    ap_json_add_int(j, "layers_per_block", v->layers_per_block);
    ap_json_add_int(j, "norm_num_groups", v->norm_groups);
    ap_json_add_int(j, "out_channels", v->out_channels);
    ap_json_add_num(j, "scaling_factor", f32_decimal(v->scaling_factor));
    ap_json_add(j, "up_block_types", str_array(up, v->levels));
    return j;
}

static ap_json *text_config_json(const ap_clip_text_config *t) {
    ap_json *j = ap_json_new_object();
    ap_json_add(j, "architectures", str_array((const char *[]){"CLIPTextModel"}, 1));
    ap_json_add_str(j, "model_type", "clip_text_model");
    ap_json_add_int(j, "vocab_size", t->vocab);
    ap_json_add_int(j, "max_position_embeddings", t->max_positions);
    ap_json_add_int(j, "hidden_size", t->width);
    ap_json_add_int(j, "num_hidden_layers", t->layers);
    ap_json_add_int(j, "num_attention_heads", t->heads);
    ap_json_add_int(j, "intermediate_size", t->intermediate);
    ap_json_add_int(j, "projection_dim", t->width);
    ap_json_add_str(j, "hidden_act", t->act == AP_ACT_GELU ? "gelu" : "quick_gelu");
    ap_json_add_num(j, "layer_norm_eps", f32_decimal(t->eps));
    ap_json_add_int(j, "bos_token_id", 49406);
    ap_json_add_int(j, "eos_token_id", 49407);
    ap_json_add_int(j, "pad_token_id", 1);
    ap_json_add_str(j, "torch_dtype", "float32");
    return j;
}

ap_status ap_sd_save_diffusers(ap_ctx *c, const ap_sd_model *m, const char *dir) {
    char p[4096];
    const char *subdirs[] = {"", "/unet", "/vae", "/text_encoder", "/tokenizer", "/scheduler"};
    for (size_t i = 0; i < sizeof subdirs / sizeof *subdirs; i++) {
        snprintf(p, sizeof p, "%s%s", dir, subdirs[i]);
        if (mkdir_p(c, p) != AP_OK) return c->status;
    }
    ap_json *mi = ap_json_new_object();
    ap_json_add_str(mi, "_class_name", "StableDiffusionPipeline");
    ap_json_add_str(mi, "_diffusers_version", "0.27.0");
    const char *comps[][3] = {{"scheduler", "diffusers", "DDIMScheduler"},
                              {"text_encoder", "transformers", "CLIPTextModel"},
                              {"tokenizer", "transformers", "CLIPTokenizer"},
                              {"unet", "diffusers", "UNet2DConditionModel"},
                              {"vae", "diffusers", "AutoencoderKL"}};
    for (int i = 0; i < 5; i++) ap_json_add(mi, comps[i][0], str_array(&comps[i][1], 2));
    ap_json_add(mi, "safety_checker", str_array((const char *[]){NULL, NULL}, 2));
    ap_json_add(mi, "feature_extractor", str_array((const char *[]){NULL, NULL}, 2));
    ap_json_add_bool(mi, "requires_safety_checker", false);
    snprintf(p, sizeof p, "%s/model_index.json", dir);
    if (write_json(c, p, mi) != AP_OK) return c->status;

    ap_json *sc = ap_json_new_object();
    ap_json_add_str(sc, "_class_name", "DDIMScheduler");
    ap_json_add_str(sc, "_diffusers_version", "0.27.0");
    ap_json_add_num(sc, "beta_start", 0.00085);
    ap_json_add_num(sc, "beta_end", 0.012);
    ap_json_add_str(sc, "beta_schedule", "scaled_linear");
    ap_json_add_bool(sc, "clip_sample", false);
    ap_json_add_int(sc, "num_train_timesteps", 1000);
    ap_json_add_bool(sc, "set_alpha_to_one", false);
    ap_json_add_int(sc, "steps_offset", 1);
    ap_json_add_str(sc, "prediction_type", "epsilon");
    snprintf(p, sizeof p, "%s/scheduler/scheduler_config.json", dir);
    if (write_json(c, p, sc) != AP_OK) return c->status;

    snprintf(p, sizeof p, "%s/unet/config.json", dir);
    if (write_json(c, p, unet_config_json(&m->cfg.unet)) != AP_OK) return c->status;
    snprintf(p, sizeof p, "%s/vae/config.json", dir);
    if (write_json(c, p, vae_config_json(&m->cfg.vae)) != AP_OK) return c->status;
    snprintf(p, sizeof p, "%s/text_encoder/config.json", dir);
    if (write_json(c, p, text_config_json(&m->cfg.text)) != AP_OK) return c->status;

    const char *mk[] = {"format"}, *mv[] = {"pt"};
    snprintf(p, sizeof p, "%s/unet/diffusion_pytorch_model.safetensors", dir);
    if (ap_params_save(c, &m->unet->params, p, NULL, NULL, 1, mk, mv) != AP_OK) return c->status;
    snprintf(p, sizeof p, "%s/vae/diffusion_pytorch_model.safetensors", dir);
    if (ap_params_save(c, &m->vae->params, p, NULL, NULL, 1, mk, mv) != AP_OK) return c->status;
    snprintf(p, sizeof p, "%s/text_encoder/model.safetensors", dir);
    if (ap_params_save(c, &m->text->params, p, NULL, NULL, 1, mk, mv) != AP_OK) return c->status;

    snprintf(p, sizeof p, "%s/tokenizer", dir);
    if (m->tok && ap_tokenizer_save_hf(c, m->tok, p) != AP_OK) return c->status;
    ap_json *tc = ap_json_new_object();
    ap_json_add_int(tc, "model_max_length", 77);
    ap_json_add_str(tc, "tokenizer_class", "CLIPTokenizer");
    ap_json_add_str(tc, "bos_token", "<|startoftext|>");
    ap_json_add_str(tc, "eos_token", "<|endoftext|>");
    ap_json_add_str(tc, "pad_token", "<|endoftext|>");
    ap_json_add_str(tc, "unk_token", "<|endoftext|>");
    ap_json_add_bool(tc, "do_lower_case", true);
    snprintf(p, sizeof p, "%s/tokenizer/tokenizer_config.json", dir);
    if (write_json(c, p, tc) != AP_OK) return c->status;
    ap_json *sp = ap_json_new_object();
    ap_json_add_str(sp, "bos_token", "<|startoftext|>");
    ap_json_add_str(sp, "eos_token", "<|endoftext|>");
    ap_json_add_str(sp, "pad_token", "<|endoftext|>");
    ap_json_add_str(sp, "unk_token", "<|endoftext|>");
    snprintf(p, sizeof p, "%s/tokenizer/special_tokens_map.json", dir);
    return write_json(c, p, sp);
}

/* internal registry name (within a component) <-> LDM single-file name */
typedef struct {
    const ap_name_table *tab;
    const char *component; /* "unet", "vae", "text_encoder" */
} ldm_map;

static int to_ldm(void *user, const char *param, char *out, size_t n) {
    ldm_map *m = user;
    char full[512];
    snprintf(full, sizeof full, "%s.%s", m->component, param);
    return ap_name_to_ldm(m->tab, full, out, n, NULL) != AP_OK;
}

static const ap_params *component_params(const ap_sd_model *m, int i) {
    return i == 0 ? &m->unet->params : i == 1 ? &m->vae->params : &m->text->params;
}
static const char *const COMPONENTS[3] = {"unet", "vae", "text_encoder"};

ap_status ap_sd_save_ldm(ap_ctx *c, const ap_sd_model *m, const char *path) {
    ap_name_table *tab = NULL;
    if (ap_sd_name_table(c, &m->cfg, &tab) != AP_OK) return c->status;
    int total = 0;
    for (int i = 0; i < 3; i++) total += component_params(m, i)->n;
    char **names = calloc((size_t)total, sizeof *names);
    ap_tensor **ts = calloc((size_t)total, sizeof *ts);
    char *cfg_json = ap_sd_config_json(&m->cfg);
    ap_status st = (names && ts && cfg_json) ? AP_OK : ap_seterr(c, AP_ERR_NOMEM, "%s: out of memory", path);
    int k = 0;
    char buf[512];
    for (int i = 0; i < 3 && st == AP_OK; i++) {
        const ap_params *ps = component_params(m, i);
        ldm_map lm = {tab, COMPONENTS[i]};
        for (int j = 0; j < ps->n && st == AP_OK; j++, k++) {
            const ap_param *p = &ps->p[j];
            if (to_ldm(&lm, p->name, buf, sizeof buf)) {
                st = ap_seterr(c, AP_ERR_NOT_FOUND, "%s: no LDM name for %s.%s", path, COMPONENTS[i], p->name);
                break;
            }
            names[k] = strdup(buf);
            ts[k] = p->file_ndim ? ap_tensor_view(c, p->t, p->file_ndim, p->file_shape) : ap_tensor_retain(p->t);
            if (!names[k] || !ts[k]) st = ap_failed(c) ? c->status : ap_seterr(c, AP_ERR_NOMEM, "out of memory");
        }
    }
    if (st == AP_OK) {
        const char *keys[] = {"format", "alignprop_config"}, *vals[] = {"pt", cfg_json};
        st = ap_st_save(c, path, total, (const char *const *)names, ts, 2, keys, vals);
    }
    for (int i = 0; names && ts && i < total; i++) {
        free(names[i]);
        ap_tensor_release(ts[i]);
    }
    free(names);
    free(ts);
    free(cfg_json);
    ap_name_table_free(tab);
    return st;
}

/* ------------------------------------------------------------ loading */
/* diffusers config.json files -> our config */
static ap_status config_from_diffusers(ap_ctx *c, const char *dir, ap_sd_config *cfg) {
    char p[4096];
    memset(cfg, 0, sizeof *cfg);
    snprintf(p, sizeof p, "%s/unet/config.json", dir);
    ap_json *u = ap_json_load(c, p);
    if (!u) return c->status;
    jctx jc = {c, p, AP_OK};
    ap_unet_config *uc = &cfg->unet;
    uc->in_channels = jint(&jc, u, "in_channels", 1, 64, 4, false);
    uc->out_channels = jint(&jc, u, "out_channels", 1, 64, 4, false);
    uc->levels = jarr(&jc, u, "block_out_channels", uc->block_out, AP_UNET_MAX_LEVELS, 1, 1 << 16);
    const ap_json *dt = ap_json_get(u, "down_block_types");
    int i = 0;
    for (const ap_json *e = ap_json_first(dt); e && i < AP_UNET_MAX_LEVELS; e = ap_json_next(e), i++) {
        const char *s = ap_json_str(e);
        uc->attention[i] = s && strstr(s, "CrossAttn") != NULL;
    }
    if (i != uc->levels && jc.st == AP_OK)
        jc.st = ap_seterr(c, AP_ERR_FORMAT, "%s: down_block_types must have one entry per level", p);
    uc->layers_per_block = jint(&jc, u, "layers_per_block", 1, AP_UNET_MAX_LAYERS - 1, 2, false);
    /* diffusers: num_attention_heads, else attention_head_dim (which SD1 uses for the head count) */
    const ap_json *nh = ap_json_get(u, "num_attention_heads");
    uc->heads = jint(&jc, u, nh && ap_json_kind_of(nh) == AP_JSON_NUMBER ? "num_attention_heads" : "attention_head_dim",
                     1, 1024, 8, false);
    uc->context_dim = jint(&jc, u, "cross_attention_dim", 1, 1 << 16, 768, false);
    uc->norm_groups = jint(&jc, u, "norm_num_groups", 1, 1024, 32, false);
    uc->use_linear_projection = jint(&jc, u, "use_linear_projection", 0, 1, 0, false);
    ap_json_free(u);
    if (jc.st != AP_OK) return jc.st;

    snprintf(p, sizeof p, "%s/vae/config.json", dir);
    ap_json *v = ap_json_load(c, p);
    if (!v) return c->status;
    jc.where = p;
    ap_vae_config *vc = &cfg->vae;
    vc->in_channels = jint(&jc, v, "in_channels", 1, 64, 3, false);
    vc->out_channels = jint(&jc, v, "out_channels", 1, 64, 3, false);
    vc->latent_channels = jint(&jc, v, "latent_channels", 1, 64, 4, false);
    vc->levels = jarr(&jc, v, "block_out_channels", vc->block_out, AP_VAE_MAX_LEVELS, 1, 1 << 16);
    vc->layers_per_block = jint(&jc, v, "layers_per_block", 1, AP_VAE_MAX_LAYERS - 1, 2, false);
    vc->norm_groups = jint(&jc, v, "norm_num_groups", 1, 1024, 32, false);
    vc->scaling_factor = (float)jnum(v, "scaling_factor", 0.18215);
    ap_json_free(v);
    if (jc.st != AP_OK) return jc.st;

    snprintf(p, sizeof p, "%s/text_encoder/config.json", dir);
    ap_json *t = ap_json_load(c, p);
    if (!t) return c->status;
    text_config_parse(&jc, t, false, &cfg->text);
    ap_json_free(t);
    return jc.st;
}

static bool file_exists(const char *p) {
    struct stat s;
    return stat(p, &s) == 0 && S_ISREG(s.st_mode);
}

/* The weights file of a diffusers component: safetensors first, then .bin. */
static ap_status component_file(ap_ctx *c, const char *dir, const char *comp, const char *stem, char *out, size_t n) {
    const char *sfx[] = {".safetensors", ".fp16.safetensors", ".bin", ".fp16.bin"};
    for (int i = 0; i < 4; i++) {
        snprintf(out, n, "%s/%s/%s%s", dir, comp, stem, sfx[i]);
        if (file_exists(out)) return AP_OK;
    }
    return ap_seterr(c, AP_ERR_NOT_FOUND, "%s/%s: no weights file (%s.safetensors or %s.bin)", dir, comp, stem, stem);
}

static ap_status load_diffusers(ap_ctx *c, const char *dir, ap_dtype wdt, ap_sd_model **out) {
    ap_sd_config cfg;
    if (config_from_diffusers(c, dir, &cfg) != AP_OK) return c->status;
    ap_sd_model *m = NULL;
    if (ap_sd_create(c, &cfg, wdt, &m) != AP_OK) return c->status;
    m->format = AP_SD_FORMAT_DIFFUSERS;
    const char *comp[3] = {"unet", "vae", "text_encoder"}, *stem[3] = {"diffusion_pytorch_model", "diffusion_pytorch_model", "model"};
    char p[4096];
    for (int i = 0; i < 3; i++) {
        const char *stem_i = stem[i];
        if (i == 2) { /* transformers names it model.safetensors or pytorch_model.bin */
            snprintf(p, sizeof p, "%s/text_encoder/model.safetensors", dir);
            if (!file_exists(p)) stem_i = "pytorch_model";
        }
        ap_weights *w = NULL;
        if (component_file(c, dir, comp[i], stem_i, p, sizeof p) != AP_OK || ap_weights_open(c, p, &w) != AP_OK ||
            ap_params_load(c, (ap_params *)component_params(m, i), w, NULL, NULL) != AP_OK) {
            ap_weights_close(w);
            ap_sd_free(m);
            return c->status;
        }
        ap_weights_close(w);
    }
    snprintf(p, sizeof p, "%s/tokenizer/vocab.json", dir);
    if (file_exists(p)) {
        ap_tokenizer_free(m->tok);
        m->tok = NULL;
        snprintf(p, sizeof p, "%s/tokenizer", dir);
        if (ap_tokenizer_load_dir(c, p, &m->tok) != AP_OK) {
            ap_sd_free(m);
            return c->status;
        }
    }
    *out = m;
    return AP_OK;
}

/* ------------------------------------------------------------ foreign single files
 * A single file without our config in its metadata (every checkpoint people
 * have, and every .ckpt, which has no metadata): the layout is read off the
 * LDM tensor shapes (channels per level, resnets per level, which levels have
 * transformers, context width, VAE levels, text width, depth and vocabulary).
 * Attention heads and group-norm groups are in no shape: a layout equal to a
 * preset's (sd15, tiny, small) takes the preset's; any other takes the SD1.x
 * conventions (8 UNet heads, 32 groups, CLIP heads 64 wide). */
#define LDM_UNET "model.diffusion_model."
#define LDM_VAE "first_stage_model."
#define LDM_TEXT "cond_stage_model.transformer.text_model."

/* ndim of the tensor named by fmt (and its shape), or -1 when the file has none */
static int wdim(const ap_weights *w, int64_t *shape, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int wdim(const ap_weights *w, int64_t *shape, const char *fmt, ...) {
    char name[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    int k = ap_weights_find(w, name);
    return k < 0 ? -1 : ap_weights_shape(w, k, shape);
}

static bool same_layout(const ap_sd_config *a, const ap_sd_config *b) {
    const ap_unet_config *u = &a->unet, *v = &b->unet;
    if (u->in_channels != v->in_channels || u->out_channels != v->out_channels || u->levels != v->levels ||
        u->layers_per_block != v->layers_per_block || u->context_dim != v->context_dim ||
        u->use_linear_projection != v->use_linear_projection)
        return false;
    for (int i = 0; i < u->levels; i++)
        if (u->block_out[i] != v->block_out[i] || !u->attention[i] != !v->attention[i]) return false;
    const ap_vae_config *x = &a->vae, *y = &b->vae;
    if (x->in_channels != y->in_channels || x->out_channels != y->out_channels ||
        x->latent_channels != y->latent_channels || x->levels != y->levels ||
        x->layers_per_block != y->layers_per_block)
        return false;
    for (int i = 0; i < x->levels; i++)
        if (x->block_out[i] != y->block_out[i]) return false;
    const ap_clip_text_config *s = &a->text, *t = &b->text;
    return s->vocab == t->vocab && s->max_positions == t->max_positions && s->width == t->width &&
           s->layers == t->layers && s->intermediate == t->intermediate;
}

static ap_status config_from_ldm_shapes(ap_ctx *c, const ap_weights *w, const char *path, ap_sd_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    int64_t s[AP_MAX_DIMS];
    ap_unet_config *u = &cfg->unet;
    if (wdim(w, s, LDM_UNET "input_blocks.0.0.weight") != 4)
        return ap_seterr(c, AP_ERR_FORMAT, "%s: not a Stable Diffusion 1.x checkpoint (no tensor '"
                         LDM_UNET "input_blocks.0.0.weight')", path);
    u->in_channels = (int)s[1];
    if (wdim(w, s, LDM_UNET "out.2.weight") != 4)
        return ap_seterr(c, AP_ERR_NOT_FOUND, "%s: missing tensor '" LDM_UNET "out.2.weight'", path);
    u->out_channels = (int)s[0];
    if (wdim(w, s, LDM_UNET "middle_block.1.transformer_blocks.0.attn2.to_k.weight") != 2)
        return ap_seterr(c, AP_ERR_NOT_FOUND,
                         "%s: missing tensor '" LDM_UNET "middle_block.1.transformer_blocks.0.attn2.to_k.weight' "
                         "(the mid block's cross-attention)", path);
    u->context_dim = (int)s[1];
    if (u->context_dim == 1024)
        return ap_seterr(c, AP_ERR_UNSUPPORTED,
                         "%s: the UNet's text context is 1024 wide: Stable Diffusion 2.x, not supported "
                         "(SD1.x has 768)", path);
    if (wdim(w, s, LDM_UNET "middle_block.1.transformer_blocks.1.norm1.weight") >= 0)
        return ap_seterr(c, AP_ERR_UNSUPPORTED, "%s: transformers with more than one block are not supported", path);
    u->use_linear_projection = wdim(w, s, LDM_UNET "middle_block.1.proj_in.weight") == 2;
    int level = 0, nres = 0, layers = -1;
    for (int i = 1; i < 64; i++) {
        if (wdim(w, s, LDM_UNET "input_blocks.%d.0.op.weight", i) >= 0) { /* a downsampler ends a level */
            if (nres == 0 || (layers >= 0 && nres != layers) || level + 1 >= AP_UNET_MAX_LEVELS ||
                nres > AP_UNET_MAX_LAYERS - 1)
                return ap_seterr(c, AP_ERR_UNSUPPORTED, "%s: unsupported UNet layout (input_blocks.%d)", path, i);
            layers = nres;
            level++;
            nres = 0;
            continue;
        }
        if (wdim(w, s, LDM_UNET "input_blocks.%d.0.out_layers.3.weight", i) != 4) break;
        if (nres == 0) {
            u->block_out[level] = (int)s[0];
            u->attention[level] = wdim(w, s, LDM_UNET "input_blocks.%d.1.proj_in.weight", i) >= 0;
        } else if (s[0] != u->block_out[level]) {
            return ap_seterr(c, AP_ERR_UNSUPPORTED, "%s: unsupported UNet layout (input_blocks.%d changes channels "
                             "inside a level)", path, i);
        }
        nres++;
    }
    if (nres == 0 || (layers >= 0 && nres != layers) || nres > AP_UNET_MAX_LAYERS - 1)
        return ap_seterr(c, AP_ERR_UNSUPPORTED, "%s: unsupported UNet layout (%d resnets in the last level)", path,
                         nres);
    u->layers_per_block = nres;
    u->levels = level + 1;

    ap_vae_config *v = &cfg->vae;
    if (wdim(w, s, LDM_VAE "encoder.conv_in.weight") != 4)
        return ap_seterr(c, AP_ERR_NOT_FOUND, "%s: missing tensor '" LDM_VAE "encoder.conv_in.weight'", path);
    v->in_channels = (int)s[1];
    if (wdim(w, s, LDM_VAE "decoder.conv_out.weight") != 4)
        return ap_seterr(c, AP_ERR_NOT_FOUND, "%s: missing tensor '" LDM_VAE "decoder.conv_out.weight'", path);
    v->out_channels = (int)s[0];
    if (wdim(w, s, LDM_VAE "post_quant_conv.weight") != 4)
        return ap_seterr(c, AP_ERR_NOT_FOUND, "%s: missing tensor '" LDM_VAE "post_quant_conv.weight'", path);
    v->latent_channels = (int)s[0];
    while (v->levels < AP_VAE_MAX_LEVELS && wdim(w, s, LDM_VAE "encoder.down.%d.block.0.conv2.weight", v->levels) == 4)
        v->block_out[v->levels++] = (int)s[0];
    while (v->layers_per_block < AP_VAE_MAX_LAYERS &&
           wdim(w, s, LDM_VAE "encoder.down.0.block.%d.conv1.weight", v->layers_per_block) == 4)
        v->layers_per_block++;
    if (v->levels == 0 || v->layers_per_block == 0 || v->layers_per_block > AP_VAE_MAX_LAYERS - 1)
        return ap_seterr(c, AP_ERR_UNSUPPORTED, "%s: unsupported VAE layout (%d levels of %d resnets)", path, v->levels,
                         v->layers_per_block);
    v->scaling_factor = 0.18215f;

    ap_clip_text_config *t = &cfg->text;
    if (wdim(w, s, LDM_TEXT "embeddings.token_embedding.weight") != 2)
        return ap_seterr(c, AP_ERR_NOT_FOUND, "%s: missing tensor '" LDM_TEXT "embeddings.token_embedding.weight'",
                         path);
    t->vocab = (int)s[0];
    t->width = (int)s[1];
    if (wdim(w, s, LDM_TEXT "embeddings.position_embedding.weight") != 2)
        return ap_seterr(c, AP_ERR_NOT_FOUND, "%s: missing tensor '" LDM_TEXT "embeddings.position_embedding.weight'",
                         path);
    t->max_positions = (int)s[0];
    while (t->layers < AP_CLIP_MAX_LAYERS &&
           wdim(w, s, LDM_TEXT "encoder.layers.%d.layer_norm1.weight", t->layers) >= 0)
        t->layers++;
    if (t->layers == 0 || wdim(w, s, LDM_TEXT "encoder.layers.0.mlp.fc1.weight") != 2)
        return ap_seterr(c, AP_ERR_NOT_FOUND, "%s: missing tensor '" LDM_TEXT "encoder.layers.0.mlp.fc1.weight'", path);
    t->intermediate = (int)s[0];
    t->act = AP_ACT_QUICK_GELU;
    t->eps = 1e-5f;

    const char *presets[] = {"sd15", "tiny", "small", "shapes64"};
    for (size_t i = 0; i < sizeof presets / sizeof *presets; i++) {
        ap_sd_config p;
        ap_sd_preset(c, presets[i], &p);
        if (same_layout(cfg, &p)) {
            *cfg = p;
            return AP_OK;
        }
    }
    /* SD1.x conventions for what shapes do not tell */
    u->heads = 8;
    u->norm_groups = v->norm_groups = 32;
    t->heads = t->width / 64;
    for (int i = 0; i < u->levels; i++)
        if (u->block_out[i] % 32)
            return ap_seterr(c, AP_ERR_UNSUPPORTED, "%s: UNet channels %d: cannot tell the group norm's groups of this "
                             "layout (save it with alignprop, which records its config)", path, u->block_out[i]);
    for (int i = 0; i < v->levels; i++)
        if (v->block_out[i] % 32)
            return ap_seterr(c, AP_ERR_UNSUPPORTED, "%s: VAE channels %d: cannot tell the group norm's groups of this "
                             "layout (save it with alignprop, which records its config)", path, v->block_out[i]);
    if (t->width % 64)
        return ap_seterr(c, AP_ERR_UNSUPPORTED, "%s: text width %d: cannot tell the attention heads of this layout",
                         path, t->width);
    return AP_OK;
}

static ap_status load_single(ap_ctx *c, const char *path, ap_dtype wdt, ap_sd_model **out) {
    ap_weights *w = NULL;
    if (ap_weights_open(c, path, &w) != AP_OK) return c->status;
    ap_sd_config cfg;
    const char *meta = ap_weights_metadata(w, "alignprop_config");
    ap_status st = meta ? ap_sd_config_from_json(c, meta, path, &cfg) : config_from_ldm_shapes(c, w, path, &cfg);
    ap_sd_model *m = NULL;
    ap_name_table *tab = NULL;
    if (st == AP_OK) st = ap_sd_create(c, &cfg, wdt, &m);
    if (st == AP_OK) st = ap_sd_name_table(c, &cfg, &tab);
    for (int i = 0; i < 3 && st == AP_OK; i++) {
        ldm_map lm = {tab, COMPONENTS[i]};
        st = ap_params_load(c, (ap_params *)component_params(m, i), w, to_ldm, &lm);
    }
    if (st == AP_OK) m->format = ap_weights_format_of(w) == AP_WEIGHTS_TORCH ? AP_SD_FORMAT_LDM_CKPT : AP_SD_FORMAT_LDM_SAFETENSORS;
    ap_name_table_free(tab);
    ap_weights_close(w);
    if (st != AP_OK) {
        ap_sd_free(m);
        return st;
    }
    *out = m;
    return AP_OK;
}

ap_status ap_sd_load(ap_ctx *c, const char *path, ap_dtype wdt, ap_sd_model **out) {
    *out = NULL;
    if (ap_failed(c)) return c->status;
    struct stat s;
    if (stat(path, &s) != 0) return ap_seterr(c, AP_ERR_NOT_FOUND, "%s: no such file or folder", path);
    if (S_ISDIR(s.st_mode)) {
        char p[4096];
        snprintf(p, sizeof p, "%s/model_index.json", path);
        if (!file_exists(p))
            return ap_seterr(c, AP_ERR_FORMAT, "%s: a folder without model_index.json is not a diffusers model", path);
        return load_diffusers(c, path, wdt, out);
    }
    return load_single(c, path, wdt, out);
}
