/* CLIP checkpoints: layout detection, the OpenCLIP name map, configs from
 * shapes, and loading the towers (see clip.h). */
#include "clip.h"

#include "core/internal.h"
#include "io/json.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

struct ap_clip_file {
    ap_weights *w;
    ap_clip_layout layout;
    char prefix[128];
    bool vision, text;
    ap_json *config; /* config.json of an HF folder, or NULL */
};

/* ------------------------------------------------------------ names */
static int find(const ap_clip_file *f, const char *name) {
    char b[640];
    snprintf(b, sizeof b, "%s%s", f->prefix, name);
    return ap_weights_find(f->w, b);
}

/* ndim of the tensor name (prefix added) with its shape, or -1 when absent. */
static int shape_of(const ap_clip_file *f, const char *name, int64_t *s) {
    int k = find(f, name);
    return k < 0 ? -1 : ap_weights_shape(f->w, k, s);
}

/* Whether some tensor ends with suffix; the part before it becomes the prefix. */
static bool detect(ap_clip_file *f, const char *suffix) {
    size_t ls = strlen(suffix);
    for (int i = 0; i < ap_weights_count(f->w); i++) {
        const char *n = ap_weights_name(f->w, i);
        size_t ln = strlen(n);
        if (ln < ls || strcmp(n + ln - ls, suffix) || ln - ls >= sizeof f->prefix) continue;
        if (ln > ls && n[ln - ls - 1] != '.') continue; /* a whole module path, not a longer name */
        memcpy(f->prefix, n, ln - ls);
        f->prefix[ln - ls] = 0;
        return true;
    }
    return false;
}

/* OpenCLIP <-> HF: whole tensors, and the leaves of a layer. */
static const struct {
    const char *hf, *oc;
    int transpose;
} oc_top[] = {
    {"vision_model.embeddings.class_embedding", "visual.class_embedding", 0},
    {"vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight", 0},
    {"vision_model.embeddings.position_embedding.weight", "visual.positional_embedding", 0},
    {"vision_model.pre_layrnorm.weight", "visual.ln_pre.weight", 0},
    {"vision_model.pre_layrnorm.bias", "visual.ln_pre.bias", 0},
    {"vision_model.post_layernorm.weight", "visual.ln_post.weight", 0},
    {"vision_model.post_layernorm.bias", "visual.ln_post.bias", 0},
    {"visual_projection.weight", "visual.proj", 1},
    {"text_model.embeddings.token_embedding.weight", "token_embedding.weight", 0},
    {"text_model.embeddings.position_embedding.weight", "positional_embedding", 0},
    {"text_model.final_layer_norm.weight", "ln_final.weight", 0},
    {"text_model.final_layer_norm.bias", "ln_final.bias", 0},
    {"text_projection.weight", "text_projection", 1},
};
static const struct {
    const char *hf, *oc;
} oc_leaf[] = {
    {"layer_norm1.", "ln_1."}, {"layer_norm2.", "ln_2."}, {"self_attn.out_proj.", "attn.out_proj."},
    {"mlp.fc1.", "mlp.c_fc."}, {"mlp.fc2.", "mlp.c_proj."},
};
static const struct {
    const char *hf, *oc;
} oc_tower[] = {
    {"vision_model.encoder.layers.", "visual.transformer.resblocks."},
    {"text_model.encoder.layers.", "transformer.resblocks."},
};

typedef struct {
    const ap_clip_file *f;
    int64_t width; /* of the tower being loaded: the rows of each of q, k, v in in_proj */
} name_map;

static int map_name(void *user, const char *param, ap_name_target *out) {
    const name_map *m = user;
    const ap_clip_file *f = m->f;
    if (f->layout == AP_CLIP_HF) {
        snprintf(out->name, sizeof out->name, "%s%s", f->prefix, param);
        return 0;
    }
    for (size_t i = 0; i < sizeof oc_top / sizeof oc_top[0]; i++)
        if (!strcmp(param, oc_top[i].hf)) {
            snprintf(out->name, sizeof out->name, "%s%s", f->prefix, oc_top[i].oc);
            out->transpose = oc_top[i].transpose;
            return 0;
        }
    for (size_t t = 0; t < sizeof oc_tower / sizeof oc_tower[0]; t++) {
        size_t lp = strlen(oc_tower[t].hf);
        if (strncmp(param, oc_tower[t].hf, lp)) continue;
        char *end;
        long l = strtol(param + lp, &end, 10);
        if (end == param + lp || *end != '.') return 1;
        const char *leaf = end + 1;
        for (size_t i = 0; i < sizeof oc_leaf / sizeof oc_leaf[0]; i++) {
            size_t ll = strlen(oc_leaf[i].hf);
            if (!strncmp(leaf, oc_leaf[i].hf, ll)) {
                snprintf(out->name, sizeof out->name, "%s%s%ld.%s%s", f->prefix, oc_tower[t].oc, l, oc_leaf[i].oc,
                         leaf + ll);
                return 0;
            }
        }
        /* self_attn.{q,k,v}_proj.{weight,bias}: rows of the fused in_proj */
        static const char qkv[3] = {'q', 'k', 'v'};
        for (int i = 0; i < 3; i++) {
            char w[32], b[32];
            snprintf(w, sizeof w, "self_attn.%c_proj.weight", qkv[i]);
            snprintf(b, sizeof b, "self_attn.%c_proj.bias", qkv[i]);
            bool is_w = !strcmp(leaf, w);
            if (!is_w && strcmp(leaf, b)) continue;
            snprintf(out->name, sizeof out->name, "%s%s%ld.attn.in_proj_%s", f->prefix, oc_tower[t].oc, l,
                     is_w ? "weight" : "bias");
            out->rows = m->width;
            out->row0 = i * m->width;
            out->file_rows = 3 * m->width;
            return 0;
        }
        return 1;
    }
    return 1;
}

/* ------------------------------------------------------------ open */
static bool is_dir(const char *p) {
    struct stat s;
    return stat(p, &s) == 0 && S_ISDIR(s.st_mode);
}
static bool is_file(const char *p) {
    struct stat s;
    return stat(p, &s) == 0 && S_ISREG(s.st_mode);
}

ap_status ap_clip_open(ap_ctx *c, const char *path, ap_clip_file **out) {
    *out = NULL;
    if (ap_failed(c)) return c->status;
    char file[4096];
    snprintf(file, sizeof file, "%s", path);
    bool dir = is_dir(path);
    if (dir) {
        static const char *const names[] = {"model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
                                            "open_clip_pytorch_model.bin"};
        size_t i = 0;
        for (; i < sizeof names / sizeof names[0]; i++) {
            snprintf(file, sizeof file, "%s/%s", path, names[i]);
            if (is_file(file)) break;
        }
        if (i == sizeof names / sizeof names[0])
            return ap_seterr(c, AP_ERR_NOT_FOUND,
                             "%s: no CLIP weights in the folder (model.safetensors, pytorch_model.bin, "
                             "open_clip_model.safetensors or open_clip_pytorch_model.bin)", path);
    }
    ap_clip_file *f = calloc(1, sizeof *f);
    if (!f) return ap_seterr(c, AP_ERR_NOMEM, "%s: out of memory", path);
    if (ap_weights_open(c, file, &f->w) != AP_OK) {
        free(f);
        return c->status;
    }
    if (detect(f, "vision_model.embeddings.class_embedding") ||
        detect(f, "text_model.embeddings.token_embedding.weight")) {
        f->layout = AP_CLIP_HF;
        f->vision = find(f, "vision_model.embeddings.class_embedding") >= 0;
        f->text = find(f, "text_model.embeddings.token_embedding.weight") >= 0;
    } else if (detect(f, "visual.class_embedding") || detect(f, "ln_final.weight")) {
        f->layout = AP_CLIP_OPENCLIP;
        f->vision = find(f, "visual.class_embedding") >= 0;
        f->text = find(f, "token_embedding.weight") >= 0;
    } else {
        ap_clip_close(f);
        return ap_seterr(c, AP_ERR_FORMAT,
                         "%s: not a CLIP checkpoint (no 'vision_model.*' / 'text_model.*' tensors of "
                         "transformers, nor 'visual.*' / 'ln_final.*' of OpenCLIP)", file);
    }
    if (dir && f->layout == AP_CLIP_HF) {
        char cj[4200];
        snprintf(cj, sizeof cj, "%s/config.json", path);
        if (is_file(cj) && !(f->config = ap_json_load(c, cj))) {
            ap_clip_close(f);
            return c->status;
        }
    }
    *out = f;
    return AP_OK;
}

void ap_clip_close(ap_clip_file *f) {
    if (!f) return;
    ap_weights_close(f->w);
    ap_json_free(f->config);
    free(f);
}

ap_clip_layout ap_clip_layout_of(const ap_clip_file *f) { return f->layout; }
const char *ap_clip_layout_name(ap_clip_layout l) { return l == AP_CLIP_HF ? "transformers" : "open_clip"; }
const ap_weights *ap_clip_weights(const ap_clip_file *f) { return f->w; }
const char *ap_clip_prefix(const ap_clip_file *f) { return f->prefix; }
int ap_clip_has_vision(const ap_clip_file *f) { return f->vision; }
int ap_clip_has_text(const ap_clip_file *f) { return f->text; }

/* ------------------------------------------------------------ configs */
static int count_layers(const ap_clip_file *f, const char *fmt) {
    int n = 0;
    char b[256];
    for (;; n++) {
        snprintf(b, sizeof b, fmt, n);
        if (find(f, b) < 0) return n;
    }
}

/* heads and activation from config.json's section (vision_config / text_config,
 * or the top level of a single-tower config). */
static void from_config_json(const ap_clip_file *f, const char *section, int *heads, ap_activation *act, float *eps) {
    if (!f->config) return;
    const ap_json *s = ap_json_get(f->config, section);
    if (!s) s = f->config;
    int64_t h;
    if (ap_json_int(ap_json_get(s, "num_attention_heads"), 1, 4096, &h)) *heads = (int)h;
    const char *a = ap_json_str(ap_json_get(s, "hidden_act"));
    if (a && !strcmp(a, "quick_gelu")) *act = AP_ACT_QUICK_GELU;
    else if (a && !strcmp(a, "gelu")) *act = AP_ACT_GELU;
    double e;
    if (ap_json_num(ap_json_get(s, "layer_norm_eps"), &e) && e > 0) *eps = (float)e;
}

static ap_status missing(ap_ctx *c, const ap_clip_file *f, const char *name) {
    return ap_seterr(c, AP_ERR_NOT_FOUND, "%s: missing tensor '%s%s'", ap_weights_path(f->w), f->prefix, name);
}

ap_status ap_clip_vision_config_of(ap_ctx *c, const ap_clip_file *f, ap_clip_vision_config *out) {
    if (ap_failed(c)) return c->status;
    memset(out, 0, sizeof *out);
    bool hf = f->layout == AP_CLIP_HF;
    const char *n_cls = hf ? "vision_model.embeddings.class_embedding" : "visual.class_embedding";
    const char *n_conv = hf ? "vision_model.embeddings.patch_embedding.weight" : "visual.conv1.weight";
    const char *n_pos = hf ? "vision_model.embeddings.position_embedding.weight" : "visual.positional_embedding";
    const char *n_fc1 = hf ? "vision_model.encoder.layers.0.mlp.fc1.weight" : "visual.transformer.resblocks.0.mlp.c_fc.weight";
    const char *n_proj = hf ? "visual_projection.weight" : "visual.proj";
    const char *n_layer = hf ? "vision_model.encoder.layers.%d.layer_norm1.weight" : "visual.transformer.resblocks.%d.ln_1.weight";
    int64_t s[AP_MAX_DIMS];
    if (shape_of(f, n_cls, s) != 1) return missing(c, f, n_cls);
    out->width = (int)s[0];
    if (shape_of(f, n_conv, s) != 4 || s[1] != 3 || s[2] != s[3]) return missing(c, f, n_conv);
    out->patch = (int)s[2];
    if (shape_of(f, n_pos, s) != 2) return missing(c, f, n_pos);
    int g = 0;
    while ((int64_t)(g + 1) * (g + 1) <= s[0] - 1) g++;
    if ((int64_t)g * g != s[0] - 1)
        return ap_seterr(c, AP_ERR_SHAPE, "%s: '%s%s' has %lld positions, not 1 + a square number of patches",
                         ap_weights_path(f->w), f->prefix, n_pos, (long long)s[0]);
    out->image_size = g * out->patch;
    if (shape_of(f, n_fc1, s) != 2) return missing(c, f, n_fc1);
    out->mlp = (int)s[0];
    if (shape_of(f, n_proj, s) != 2) return missing(c, f, n_proj);
    out->proj_dim = (int)(hf ? s[0] : s[1]);
    out->layers = count_layers(f, n_layer);
    out->eps = 1e-5f;
    const ap_clip_vision_config *known[2] = {&ap_clip_vision_config_l14, &ap_clip_vision_config_h14};
    out->heads = out->width % 64 == 0 ? out->width / 64 : 0;
    out->act = hf ? AP_ACT_QUICK_GELU : AP_ACT_GELU;
    for (int i = 0; i < 2; i++)
        if (known[i]->width == out->width && known[i]->layers == out->layers && known[i]->patch == out->patch)
            out->heads = known[i]->heads, out->act = known[i]->act;
    from_config_json(f, "vision_config", &out->heads, &out->act, &out->eps);
    if (out->heads < 1 || out->width % out->heads)
        return ap_seterr(c, AP_ERR_UNSUPPORTED,
                         "%s: vision tower of width %d: its number of heads is unknown (pass a config)",
                         ap_weights_path(f->w), out->width);
    return AP_OK;
}

ap_status ap_clip_text_config_of(ap_ctx *c, const ap_clip_file *f, ap_clip_text_config *out) {
    if (ap_failed(c)) return c->status;
    memset(out, 0, sizeof *out);
    bool hf = f->layout == AP_CLIP_HF;
    const char *n_tok = hf ? "text_model.embeddings.token_embedding.weight" : "token_embedding.weight";
    const char *n_pos = hf ? "text_model.embeddings.position_embedding.weight" : "positional_embedding";
    const char *n_fc1 = hf ? "text_model.encoder.layers.0.mlp.fc1.weight" : "transformer.resblocks.0.mlp.c_fc.weight";
    const char *n_proj = hf ? "text_projection.weight" : "text_projection";
    const char *n_layer = hf ? "text_model.encoder.layers.%d.layer_norm1.weight" : "transformer.resblocks.%d.ln_1.weight";
    int64_t s[AP_MAX_DIMS];
    if (shape_of(f, n_tok, s) != 2) return missing(c, f, n_tok);
    out->vocab = (int)s[0];
    out->width = (int)s[1];
    if (shape_of(f, n_pos, s) != 2) return missing(c, f, n_pos);
    out->max_positions = (int)s[0];
    if (shape_of(f, n_fc1, s) != 2) return missing(c, f, n_fc1);
    out->intermediate = (int)s[0];
    if (shape_of(f, n_proj, s) == 2) out->proj_dim = (int)(hf ? s[0] : s[1]);
    out->layers = count_layers(f, n_layer);
    out->eps = 1e-5f;
    out->heads = out->width % 64 == 0 ? out->width / 64 : 0;
    /* OpenAI's text towers use quick_gelu (SD1.x's, 768 wide, 12 layers); LAION's GELU */
    out->act = hf ? AP_ACT_QUICK_GELU : AP_ACT_GELU;
    if (out->width == 768 && out->layers == 12) out->act = AP_ACT_QUICK_GELU;
    if (out->width == 1024 && out->layers == 24) out->act = AP_ACT_GELU;
    from_config_json(f, "text_config", &out->heads, &out->act, &out->eps);
    if (out->heads < 1 || out->width % out->heads)
        return ap_seterr(c, AP_ERR_UNSUPPORTED, "%s: text tower of width %d: its number of heads is unknown (pass a config)",
                         ap_weights_path(f->w), out->width);
    return AP_OK;
}

/* ------------------------------------------------------------ loading */
ap_status ap_clip_load_vision(ap_ctx *c, const ap_clip_file *f, const ap_clip_vision_config *cfg, ap_dtype wdt,
                              ap_clip_vision **out) {
    *out = NULL;
    if (ap_failed(c)) return c->status;
    if (!f->vision)
        return ap_seterr(c, AP_ERR_NOT_FOUND, "%s: the checkpoint has no vision tower", ap_weights_path(f->w));
    ap_clip_vision_config inferred;
    if (!cfg) {
        if (ap_clip_vision_config_of(c, f, &inferred) != AP_OK) return c->status;
        cfg = &inferred;
    }
    ap_clip_vision *m = NULL;
    if (ap_clip_vision_create(c, cfg, wdt, &m) != AP_OK) return c->status;
    name_map nm = {f, cfg->width};
    if (ap_params_load_ex(c, &m->params, f->w, map_name, &nm) != AP_OK) {
        ap_clip_vision_free(m);
        return c->status;
    }
    *out = m;
    return AP_OK;
}

ap_status ap_clip_load_text(ap_ctx *c, const ap_clip_file *f, const ap_clip_text_config *cfg, ap_dtype wdt,
                            ap_clip_text **out) {
    *out = NULL;
    if (ap_failed(c)) return c->status;
    if (!f->text) return ap_seterr(c, AP_ERR_NOT_FOUND, "%s: the checkpoint has no text tower", ap_weights_path(f->w));
    ap_clip_text_config inferred;
    if (!cfg) {
        if (ap_clip_text_config_of(c, f, &inferred) != AP_OK) return c->status;
        cfg = &inferred;
    }
    ap_clip_text *m = NULL;
    if (ap_clip_text_create(c, cfg, wdt, &m) != AP_OK) return c->status;
    name_map nm = {f, cfg->width};
    if (ap_params_load_ex(c, &m->params, f->w, map_name, &nm) != AP_OK) {
        ap_clip_text_free(m);
        return c->status;
    }
    *out = m;
    return AP_OK;
}

ap_status ap_clip_logit_scale(ap_ctx *c, const ap_clip_file *f, float *out) {
    if (ap_failed(c)) return c->status;
    int k = find(f, "logit_scale");
    int64_t s[AP_MAX_DIMS];
    if (k < 0) return missing(c, f, "logit_scale");
    int nd = ap_weights_shape(f->w, k, s);
    if (nd > 1 || (nd == 1 && s[0] != 1))
        return ap_seterr(c, AP_ERR_SHAPE, "%s: tensor '%slogit_scale' is not a scalar", ap_weights_path(f->w),
                         f->prefix);
    ap_tensor *t = NULL;
    if (ap_weights_load(c, f->w, k, AP_F32, &t) != AP_OK) return c->status;
    *out = ((const float *)ap_tensor_cdata(t))[0];
    ap_tensor_release(t);
    return AP_OK;
}

int64_t ap_clip_param_count(const ap_clip_file *f, int vision) {
    int64_t total = 0;
    size_t lp = strlen(f->prefix);
    for (int i = 0; i < ap_weights_count(f->w); i++) {
        const char *n = ap_weights_name(f->w, i), *dt = ap_weights_dtype(f->w, i);
        if (strncmp(n, f->prefix, lp) || !(dt[0] == 'F' || dt[0] == 'B') || !strcmp(dt, "BOOL")) continue;
        n += lp;
        bool is_v = f->layout == AP_CLIP_HF ? !strncmp(n, "vision_model.", 13) || !strncmp(n, "visual_projection.", 18)
                                            : !strncmp(n, "visual.", 7);
        bool is_t = f->layout == AP_CLIP_HF ? !strncmp(n, "text_model.", 11) || !strncmp(n, "text_projection.", 16)
                                            : !is_v && strcmp(n, "logit_scale");
        if (!(vision ? is_v : is_t)) continue;
        int64_t s[AP_MAX_DIMS], numel = 1;
        int nd = ap_weights_shape(f->w, i, s);
        for (int d = 0; d < nd; d++) numel *= s[d];
        total += numel;
    }
    return total;
}
