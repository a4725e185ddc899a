/* The CLIP rewards aesthetic, hps and pickscore (clip_rewards.h), and their
 * preprocessing. Reward = a few core ops on the towers of models/clip.h:
 *
 *   aesthetic   head(normalize(vision(pre(x))))                 (ViT-L/14, HF layout)
 *   hps         normalize(vision(pre(x))) . normalize(text(p))  (ViT-H/14, OpenCLIP layout)
 *   pickscore   exp(logit_scale) * the same cosine              (CLIP-H, HF layout)
 *
 * Text embeddings need no gradient: they are computed with the tape off and
 * kept, normalised, in a small per-reward cache keyed by the prompt (training
 * cycles through a fixed prompt set). */
#include "rewards/clip_rewards.h"

#include "core/internal.h"
#include "models/tokenizer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

const float ap_clip_mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
const float ap_clip_std[3] = {0.26862954f, 0.26130258f, 0.27577711f};

/* ------------------------------------------------------------ preprocessing */
static const struct {
    const char *spec;
    ap_clip_resize r;
} RESIZES[] = {
    {"bilinear", {AP_RESIZE_BILINEAR, 1}},
    {"bilinear-noaa", {AP_RESIZE_BILINEAR, 0}},
    {"bicubic", {AP_RESIZE_BICUBIC, 1}},
    {"bicubic-noaa", {AP_RESIZE_BICUBIC, 0}},
};
#define N_RESIZES (int)(sizeof RESIZES / sizeof RESIZES[0])

ap_status ap_clip_resize_parse(ap_ctx *c, const char *spec, ap_clip_resize *out) {
    if (!c || !out) return AP_ERR_INVALID_ARG;
    if (ap_failed(c)) return c->status;
    if (!spec || !*spec) {
        *out = RESIZES[0].r;
        return AP_OK;
    }
    for (int i = 0; i < N_RESIZES; i++)
        if (!strcmp(spec, RESIZES[i].spec)) {
            *out = RESIZES[i].r;
            return AP_OK;
        }
    return ap_seterr(c, AP_ERR_INVALID_ARG,
                     "clip resize: unknown mode '%s' (bilinear, bilinear-noaa, bicubic or bicubic-noaa)", spec);
}

const char *ap_clip_resize_str(const ap_clip_resize *r) {
    for (int i = 0; i < N_RESIZES; i++)
        if (RESIZES[i].r.mode == r->mode && RESIZES[i].r.antialias == (r->antialias != 0)) return RESIZES[i].spec;
    return "?";
}

/* torchvision's Resize(S) on a tensor: the shorter side becomes S, the longer
 * int(S * long / short) (the truncation of the float product, as Python's int()). */
static void resized_size(int64_t H, int64_t W, int S, int64_t *oh, int64_t *ow) {
    if (H <= W) {
        *oh = S;
        *ow = (int64_t)((double)S * (double)W / (double)H);
    } else {
        *ow = S;
        *oh = (int64_t)((double)S * (double)H / (double)W);
    }
}

ap_tensor *ap_clip_preprocess(ap_ctx *c, ap_tensor *images, int size, const ap_clip_resize *r) {
    if (!c || ap_failed(c)) return NULL;
    if (!ap_reward_check_images(c, "clip preprocess", images)) return NULL;
    if (size < 1) {
        ap_seterr(c, AP_ERR_INVALID_ARG, "clip preprocess: size %d must be positive", size);
        return NULL;
    }
    ap_clip_resize def = RESIZES[0].r;
    if (!r) r = &def;
    const int64_t H = images->shape[1], W = images->shape[2];
    int64_t oh, ow;
    resized_size(H, W, size, &oh, &ow);
    if (oh > INT32_MAX || ow > INT32_MAX) {
        ap_seterr(c, AP_ERR_SHAPE, "clip preprocess: images %lldx%lld are too elongated", (long long)H, (long long)W);
        return NULL;
    }
    ap_tensor *h = ap_scale(c, images, 0.5f);
    ap_tensor *u = ap_add_scalar(c, h, 0.5f);
    ap_tensor *cl = ap_clamp(c, u, 0.0f, 1.0f);
    ap_tensor *rs = oh == H && ow == W ? ap_tensor_retain(cl)
                                       : ap_resize(c, cl, (int)oh, (int)ow, r->mode, r->antialias);
    /* CenterCrop: int(round((len - S) / 2.0)), Python's round (half to even) */
    int64_t top = (int64_t)nearbyint((double)(oh - size) / 2.0), left = (int64_t)nearbyint((double)(ow - size) / 2.0);
    ap_tensor *cr = oh == size && ow == size ? ap_tensor_retain(rs) : ap_crop(c, rs, top, left, size, size);
    float inv[3], shift[3];
    for (int k = 0; k < 3; k++) {
        inv[k] = 1.0f / ap_clip_std[k];
        shift[k] = -ap_clip_mean[k] / ap_clip_std[k];
    }
    ap_tensor *ti = ap_tensor_from_data(c, AP_F32, 1, (int64_t[]){3}, inv);
    ap_tensor *ts = ap_tensor_from_data(c, AP_F32, 1, (int64_t[]){3}, shift);
    ap_tensor *m = ap_mul(c, cr, ti);
    ap_tensor *y = ap_add(c, m, ts);
    ap_tensor *t[] = {h, u, cl, rs, cr, ti, ts, m};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) ap_tensor_release(t[i]);
    return y;
}

/* ------------------------------------------------------------ the aesthetic head */
ap_tensor *ap_aesthetic_head_forward(ap_ctx *c, const ap_aesthetic_head *hd, ap_tensor *emb) {
    if (!c || !ap_check_input(c, "aesthetic head", "embeddings", emb, AP_F32)) return NULL;
    if (emb->ndim != 2 || emb->shape[1] != AP_AESTHETIC_DIM) {
        char s[96];
        ap_seterr(c, AP_ERR_SHAPE, "aesthetic head: embeddings %s, expected [N,%d] (CLIP ViT-L/14's)",
                  ap_shape_str(emb, s, sizeof s), AP_AESTHETIC_DIM);
        return NULL;
    }
    float w[AP_AESTHETIC_DIM];
    for (int i = 0; i < AP_AESTHETIC_DIM; i++) w[i] = (float)hd->w[i];
    ap_tensor *tw = ap_tensor_from_data(c, AP_F32, 1, (int64_t[]){AP_AESTHETIC_DIM}, w);
    ap_tensor *p = ap_mul(c, emb, tw);
    ap_tensor *s = ap_sum_rows(c, p);
    ap_tensor *y = ap_add_scalar(c, s, (float)hd->b);
    ap_tensor_release(tw);
    ap_tensor_release(p);
    ap_tensor_release(s);
    return y;
}

/* ------------------------------------------------------------ weights on disk */
/* The models directory, or an error. */
static ap_status models_dir(ap_ctx *c, const char *who, const ap_reward_opts *o, char *buf, size_t n) {
    if (!ap_reward_models_dir(o, buf, n))
        return ap_seterr(c, AP_ERR_INVALID_ARG, "%s: the models directory path is too long", who);
    return AP_OK;
}

static bool exists(const char *path, bool want_dir) {
    struct stat sb;
    return stat(path, &sb) == 0 && (want_dir ? S_ISDIR(sb.st_mode) : S_ISREG(sb.st_mode));
}

/* An HF folder with its weights: folder/model.safetensors or pytorch_model.bin. */
static bool hf_folder_ok(const char *dir) {
    char p[4200];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    if (exists(p, false)) return true;
    snprintf(p, sizeof p, "%s/pytorch_model.bin", dir);
    return exists(p, false);
}

static ap_status missing_hf(ap_ctx *c, const char *who, const char *what, const char *dir, const char *folder,
                            const char *repo) {
    return ap_seterr(c, AP_ERR_NOT_FOUND,
                     "%s: the %s weights are missing: expected the folder %s/%s holding model.safetensors "
                     "(or pytorch_model.bin) and config.json, as in the Hugging Face repo %s; download it yourself "
                     "(alignprop never downloads) and pass --models-dir DIR or set AP_MODELS_DIR (now: %s)",
                     who, what, dir, folder, repo, dir);
}

/* ------------------------------------------------------------ aesthetic */
typedef struct {
    ap_clip_vision *tower;
    ap_aesthetic_head head;
    ap_clip_resize resize;
} aesthetic_model;

static ap_tensor *aesthetic_forward(ap_ctx *c, ap_reward *self, ap_tensor *x, const char *const *prompts) {
    (void)prompts;
    if (!ap_reward_check_images(c, "aesthetic", x)) return NULL;
    aesthetic_model *m = self->user;
    ap_tensor *px = ap_clip_preprocess(c, x, m->tower->cfg.image_size, &m->resize);
    ap_tensor *e = ap_clip_vision_forward(c, m->tower, px); // [N,768]
    ap_tensor *en = ap_l2_normalize(c, e);
    ap_tensor *r = ap_aesthetic_head_forward(c, &m->head, en);
    ap_tensor_release(px);
    ap_tensor_release(e);
    ap_tensor_release(en);
    return r;
}

static void aesthetic_free(ap_reward *r) {
    if (!r) return;
    aesthetic_model *m = r->user;
    if (m) ap_clip_vision_free(m->tower);
    free(m);
    free(r);
}

ap_status ap_reward_aesthetic_from(ap_ctx *c, ap_clip_vision *tower, const ap_aesthetic_head *head,
                                   const ap_clip_resize *rs, ap_reward **out) {
    if (!c || !out || ap_failed(c)) {
        ap_clip_vision_free(tower);
        if (out) *out = NULL;
        return c ? (ap_failed(c) ? c->status : ap_seterr(c, AP_ERR_INVALID_ARG, "aesthetic: out is NULL"))
                 : AP_ERR_INVALID_ARG;
    }
    *out = NULL;
    if (!tower || !head) {
        ap_clip_vision_free(tower);
        return ap_seterr(c, AP_ERR_INVALID_ARG, "aesthetic: %s is NULL", tower ? "head" : "tower");
    }
    if (tower->cfg.proj_dim != AP_AESTHETIC_DIM) {
        int d = tower->cfg.proj_dim;
        ap_clip_vision_free(tower);
        return ap_seterr(c, AP_ERR_SHAPE,
                         "aesthetic: the CLIP vision tower projects to %d, the aesthetic head takes %d "
                         "(CLIP ViT-L/14's embedding)", d, AP_AESTHETIC_DIM);
    }
    ap_reward *r = calloc(1, sizeof *r);
    aesthetic_model *m = calloc(1, sizeof *m);
    if (!r || !m) {
        free(r);
        free(m);
        ap_clip_vision_free(tower);
        return ap_seterr(c, AP_ERR_NOMEM, "aesthetic: out of memory");
    }
    m->tower = tower;
    m->head = *head;
    m->resize = rs ? *rs : RESIZES[0].r;
    r->name = "aesthetic";
    r->forward = aesthetic_forward;
    r->free = aesthetic_free;
    r->user = m;
    r->default_loss = "target:10";
    *out = r;
    return AP_OK;
}

ap_status ap_reward_aesthetic_open(ap_ctx *c, const char *clip_path, const ap_reward_opts *opts, ap_reward **out) {
    if (!c || !out) return AP_ERR_INVALID_ARG;
    *out = NULL;
    if (ap_failed(c)) return c->status;
    ap_reward_opts none = {0};
    if (!opts) opts = &none;
    ap_clip_resize rs;
    ap_aesthetic_head head;
    ap_clip_file *f = NULL;
    ap_clip_vision *v = NULL;
    ap_status st = ap_clip_resize_parse(c, opts->resize, &rs);
    if (st == AP_OK) st = ap_aesthetic_head_builtin(c, &head);
    if (st == AP_OK) st = ap_clip_open(c, clip_path, &f);
    if (st == AP_OK && !ap_clip_has_vision(f))
        st = ap_seterr(c, AP_ERR_FORMAT, "aesthetic: %s has no CLIP vision tower", clip_path);
    if (st == AP_OK) st = ap_clip_load_vision(c, f, NULL, opts->weights_dtype, &v);
    ap_clip_close(f);
    if (st != AP_OK) {
        ap_clip_vision_free(v);
        return st;
    }
    return ap_reward_aesthetic_from(c, v, &head, &rs, out);
}

ap_status ap_reward_create_aesthetic(ap_ctx *c, const ap_reward_opts *opts, ap_reward **out) {
    char dir[4096], path[4200];
    ap_status st = models_dir(c, "aesthetic", opts, dir, sizeof dir);
    if (st != AP_OK) return st;
    snprintf(path, sizeof path, "%s/clip-vit-large-patch14", dir);
    if (!hf_folder_ok(path))
        return missing_hf(c, "aesthetic", "CLIP ViT-L/14", dir, "clip-vit-large-patch14",
                          "openai/clip-vit-large-patch14");
    return ap_reward_aesthetic_open(c, path, opts, out);
}

/* ------------------------------------------------------------ hps, pickscore */
#define TEXT_CACHE 64

typedef struct {
    ap_clip_score_kind kind;
    ap_clip_vision *vision;
    ap_clip_text *text;
    ap_tokenizer *tok;
    ap_tok_opts tok_opts;
    float scale;
    ap_clip_resize resize;
    int dim;                     /* the embedding width both towers project to */
    char *cache_key[TEXT_CACHE]; /* prompts, with their normalised text embeddings */
    float *cache_emb[TEXT_CACHE];
    int cache_next;              /* the slot replaced next (round robin) */
} score_model;

static const char *kind_name(ap_clip_score_kind k) { return k == AP_CLIP_SCORE_HPS ? "hps" : "pickscore"; }

/* The normalised text embedding of prompt [dim], from the cache or computed
 * (tape off). Borrowed; NULL on error. */
static const float *text_embedding(ap_ctx *c, score_model *m, const char *prompt) {
    for (int i = 0; i < TEXT_CACHE; i++)
        if (m->cache_key[i] && !strcmp(m->cache_key[i], prompt)) return m->cache_emb[i];
    int32_t ids[AP_TOK_CONTEXT];
    if (m->tok_opts.context > AP_TOK_CONTEXT) {
        ap_seterr(c, AP_ERR_INVALID_ARG, "%s: context %d is over %d", kind_name(m->kind), m->tok_opts.context,
                  AP_TOK_CONTEXT);
        return NULL;
    }
    if (ap_tokenize_seq(c, m->tok, prompt, &m->tok_opts, ids, NULL) != AP_OK) return NULL;
    int prev = ap_set_grad_enabled(c, 0);
    ap_tensor *t = ap_tensor_from_data(c, AP_I32, 2, (int64_t[]){1, m->tok_opts.context}, ids);
    ap_tensor *e = ap_clip_text_embed(c, m->text, t);
    ap_tensor *en = ap_l2_normalize(c, e);
    ap_set_grad_enabled(c, prev);
    const float *res = NULL;
    if (en && ap_tensor_numel(en) == m->dim) {
        int k = m->cache_next;
        m->cache_next = (k + 1) % TEXT_CACHE;
        free(m->cache_key[k]);
        free(m->cache_emb[k]);
        m->cache_key[k] = strdup(prompt);
        m->cache_emb[k] = malloc(sizeof(float) * (size_t)m->dim);
        if (m->cache_key[k] && m->cache_emb[k]) {
            memcpy(m->cache_emb[k], ap_tensor_cdata(en), sizeof(float) * (size_t)m->dim);
            res = m->cache_emb[k];
        } else {
            free(m->cache_key[k]);
            free(m->cache_emb[k]);
            m->cache_key[k] = NULL;
            m->cache_emb[k] = NULL;
            ap_seterr(c, AP_ERR_NOMEM, "%s: out of memory", kind_name(m->kind));
        }
    } else if (en) {
        ap_seterr(c, AP_ERR_SHAPE, "%s: the text embedding has %lld values, the image embedding %d",
                  kind_name(m->kind), (long long)ap_tensor_numel(en), m->dim);
    }
    ap_tensor_release(t);
    ap_tensor_release(e);
    ap_tensor_release(en);
    return res;
}

static ap_tensor *score_forward(ap_ctx *c, ap_reward *self, ap_tensor *x, const char *const *prompts) {
    score_model *m = self->user;
    const char *name = kind_name(m->kind);
    if (!ap_reward_check_images(c, name, x)) return NULL;
    if (!prompts) {
        ap_seterr(c, AP_ERR_INVALID_ARG, "%s: scores an image against its prompt, and no prompts were given", name);
        return NULL;
    }
    const int64_t N = x->shape[0];
    ap_tensor *txt = ap_tensor_new(c, AP_F32, 2, (int64_t[]){N, m->dim}); // [N,D], normalised
    for (int64_t i = 0; txt && i < N; i++) {
        if (!prompts[i]) {
            ap_seterr(c, AP_ERR_INVALID_ARG, "%s: prompt %lld is NULL", name, (long long)i);
            break;
        }
        const float *e = text_embedding(c, m, prompts[i]);
        if (!e) break;
        memcpy(ap_f32(txt) + i * m->dim, e, sizeof(float) * (size_t)m->dim);
    }
    ap_tensor *px = ap_clip_preprocess(c, x, m->vision->cfg.image_size, &m->resize);
    ap_tensor *e = ap_clip_vision_forward(c, m->vision, px); // [N,D]
    ap_tensor *en = ap_l2_normalize(c, e);
    ap_tensor *p = ap_mul(c, en, txt);
    ap_tensor *cs = ap_sum_rows(c, p); // [N] cosine
    ap_tensor *r = m->scale == 1.0f ? ap_tensor_retain(cs) : ap_scale(c, cs, m->scale);
    ap_tensor *t[] = {txt, px, e, en, p, cs};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) ap_tensor_release(t[i]);
    if (ap_failed(c)) {
        ap_tensor_release(r);
        return NULL;
    }
    return r;
}

static void score_free(ap_reward *r) {
    if (!r) return;
    score_model *m = r->user;
    if (m) {
        ap_clip_vision_free(m->vision);
        ap_clip_text_free(m->text);
        ap_tokenizer_free(m->tok);
        for (int i = 0; i < TEXT_CACHE; i++) {
            free(m->cache_key[i]);
            free(m->cache_emb[i]);
        }
    }
    free(m);
    free(r);
}

ap_status ap_reward_clip_score_from(ap_ctx *c, ap_clip_score_kind kind, ap_clip_vision *vision, ap_clip_text *text,
                                    float scale, const ap_clip_resize *rs, ap_reward **out) {
    const char *name = kind_name(kind);
    if (!c || !out) {
        ap_clip_vision_free(vision);
        ap_clip_text_free(text);
        return c ? ap_seterr(c, AP_ERR_INVALID_ARG, "%s: out is NULL", name) : AP_ERR_INVALID_ARG;
    }
    *out = NULL;
    ap_status st = c->status;
    if (st == AP_OK && (!vision || !text))
        st = ap_seterr(c, AP_ERR_INVALID_ARG, "%s: the %s tower is NULL", name, vision ? "text" : "vision");
    if (st == AP_OK && vision->cfg.proj_dim != text->cfg.proj_dim)
        st = ap_seterr(c, AP_ERR_SHAPE, "%s: the vision tower projects to %d, the text tower to %d", name,
                       vision->cfg.proj_dim, text->cfg.proj_dim);
    if (st == AP_OK && text->cfg.proj_dim < 1)
        st = ap_seterr(c, AP_ERR_SHAPE, "%s: the text tower has no projection", name);
    if (st == AP_OK && !isfinite(scale))
        st = ap_seterr(c, AP_ERR_INVALID_ARG, "%s: the logit scale is not finite", name);
    ap_reward *r = NULL;
    score_model *m = NULL;
    if (st == AP_OK) {
        r = calloc(1, sizeof *r);
        m = calloc(1, sizeof *m);
        if (!r || !m) st = ap_seterr(c, AP_ERR_NOMEM, "%s: out of memory", name);
    }
    if (st == AP_OK) st = ap_tokenizer_load_bundled(c, &m->tok);
    if (st != AP_OK) {
        if (m) ap_tokenizer_free(m->tok);
        free(r);
        free(m);
        ap_clip_vision_free(vision);
        ap_clip_text_free(text);
        return st;
    }
    m->kind = kind;
    m->vision = vision;
    m->text = text;
    m->tok_opts = kind == AP_CLIP_SCORE_HPS ? ap_tok_opts_openclip : ap_tok_opts_sd1;
    m->scale = scale;
    m->resize = rs ? *rs : RESIZES[0].r;
    m->dim = vision->cfg.proj_dim;
    r->name = name;
    r->forward = score_forward;
    r->free = score_free;
    r->user = m;
    *out = r;
    return AP_OK;
}

static ap_status score_open(ap_ctx *c, ap_clip_score_kind kind, const char *path, const ap_reward_opts *opts,
                            ap_reward **out) {
    if (!c || !out) return AP_ERR_INVALID_ARG;
    *out = NULL;
    if (ap_failed(c)) return c->status;
    const char *name = kind_name(kind);
    ap_reward_opts none = {0};
    if (!opts) opts = &none;
    ap_clip_resize rs;
    ap_clip_file *f = NULL;
    ap_clip_vision *v = NULL;
    ap_clip_text *t = NULL;
    float ls = 0.0f;
    ap_status st = ap_clip_resize_parse(c, opts->resize, &rs);
    if (st == AP_OK) st = ap_clip_open(c, path, &f);
    if (st == AP_OK && (!ap_clip_has_vision(f) || !ap_clip_has_text(f)))
        st = ap_seterr(c, AP_ERR_FORMAT, "%s: %s lacks the CLIP %s tower", name, path,
                       ap_clip_has_vision(f) ? "text" : "vision");
    if (st == AP_OK) st = ap_clip_load_vision(c, f, NULL, opts->weights_dtype, &v);
    if (st == AP_OK) st = ap_clip_load_text(c, f, NULL, opts->weights_dtype, &t);
    if (st == AP_OK && kind == AP_CLIP_SCORE_PICKSCORE) st = ap_clip_logit_scale(c, f, &ls);
    ap_clip_close(f);
    if (st != AP_OK) {
        ap_clip_vision_free(v);
        ap_clip_text_free(t);
        return st;
    }
    /* HPSv2 is the plain cosine; PickScore multiplies by the trained scale */
    return ap_reward_clip_score_from(c, kind, v, t, kind == AP_CLIP_SCORE_HPS ? 1.0f : expf(ls), &rs, out);
}

ap_status ap_reward_hps_open(ap_ctx *c, const char *path, const ap_reward_opts *opts, ap_reward **out) {
    return score_open(c, AP_CLIP_SCORE_HPS, path, opts, out);
}
ap_status ap_reward_pickscore_open(ap_ctx *c, const char *path, const ap_reward_opts *opts, ap_reward **out) {
    return score_open(c, AP_CLIP_SCORE_PICKSCORE, path, opts, out);
}

ap_status ap_reward_create_hps(ap_ctx *c, const ap_reward_opts *opts, ap_reward **out) {
    char dir[4096], path[4200];
    ap_status st = models_dir(c, "hps", opts, dir, sizeof dir);
    if (st != AP_OK) return st;
    static const char *const FILES[] = {"HPS_v2.1_compressed.pt", "HPS_v2_compressed.pt"};
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, FILES[i]);
        if (exists(path, false)) return ap_reward_hps_open(c, path, opts, out);
    }
    return ap_seterr(c, AP_ERR_NOT_FOUND,
                     "hps: the HPSv2 weights are missing: expected %s/HPS_v2.1_compressed.pt (or "
                     "HPS_v2_compressed.pt), the file of that name from the Hugging Face repo xswu/HPSv2 (OpenCLIP "
                     "ViT-H/14); download it yourself (alignprop never downloads) and pass --models-dir DIR or set "
                     "AP_MODELS_DIR (now: %s)",
                     dir, dir);
}

ap_status ap_reward_create_pickscore(ap_ctx *c, const ap_reward_opts *opts, ap_reward **out) {
    char dir[4096], path[4200];
    ap_status st = models_dir(c, "pickscore", opts, dir, sizeof dir);
    if (st != AP_OK) return st;
    snprintf(path, sizeof path, "%s/PickScore_v1", dir);
    if (!hf_folder_ok(path))
        return missing_hf(c, "pickscore", "PickScore_v1 (CLIP-H)", dir, "PickScore_v1", "yuvalkirstain/PickScore_v1");
    return ap_reward_pickscore_open(c, path, opts, out);
}
