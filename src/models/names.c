/* LDM single-file names <-> diffusers module paths (see names.h).
 *
 * A name is component prefix + block prefix + leaf. The block prefixes are
 * generated once per layout from the index rules of SD_FACTS 1.7 / 2.5 (the
 * only place those rules live); the leaves are fixed tables per kind of block.
 * Mapping is a lookup of (block prefix, leaf) on one side and a print of the
 * other side's pair, so both directions use the same rows. */
#include "models/names.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const ap_name_layout ap_name_layout_sd1 = {
    .unet_levels = 4,
    .unet_mult = {1, 2, 4, 4},
    .unet_layers = 2,
    .unet_attn = 0x7,
    .unet_depth = 1,
    .vae_levels = 4,
    .vae_mult = {1, 2, 4, 4},
    .vae_layers = 2,
    .text_layers = 12,
};

/* ------------------------------------------------------------ components */
enum { C_UNET, C_VAE, C_TEXT, C_COUNT };
static const struct {
    const char *ldm, *diff;
} comp_prefix[C_COUNT] = {
    [C_UNET] = {"model.diffusion_model.", "unet."},
    [C_VAE] = {"first_stage_model.", "vae."},
    [C_TEXT] = {"cond_stage_model.transformer.", "text_encoder."},
};

/* ------------------------------------------------------------ leaves */
#define L_SHORTCUT 0x100u /* present only in a block with a channel change */
#define L_ALIAS 0x200u    /* an old diffusers spelling, read but never written */

typedef struct {
    const char *ldm, *diff;
    unsigned flags; /* AP_NAME_* | L_* */
} leaf;

#define WB(l, d, f) {l ".weight", d ".weight", (f)}, {l ".bias", d ".bias", (f) & ~AP_NAME_SQUEEZE}

enum { K_WB, K_UNET_RES, K_ST, K_TBLOCK, K_VAE_RES, K_VAE_ATTN, K_CLIP_EMB, K_CLIP_LAYER, K_COUNT };

static const leaf leaf_wb[] = {{"weight", "weight", 0}, {"bias", "bias", 0}};
static const leaf leaf_unet_res[] = {
    WB("in_layers.0", "norm1", 0u),       WB("in_layers.2", "conv1", 0u),
    WB("emb_layers.1", "time_emb_proj", 0u), WB("out_layers.0", "norm2", 0u),
    WB("out_layers.3", "conv2", 0u),      WB("skip_connection", "conv_shortcut", L_SHORTCUT),
};
/* transformer names are the same in both formats */
static const leaf leaf_st[] = {WB("norm", "norm", 0u), WB("proj_in", "proj_in", 0u), WB("proj_out", "proj_out", 0u)};
static const leaf leaf_tblock[] = {
    {"attn1.to_q.weight", "attn1.to_q.weight", 0}, {"attn1.to_k.weight", "attn1.to_k.weight", 0},
    {"attn1.to_v.weight", "attn1.to_v.weight", 0}, WB("attn1.to_out.0", "attn1.to_out.0", 0u),
    WB("ff.net.0.proj", "ff.net.0.proj", 0u),      WB("ff.net.2", "ff.net.2", 0u),
    {"attn2.to_q.weight", "attn2.to_q.weight", 0}, {"attn2.to_k.weight", "attn2.to_k.weight", 0},
    {"attn2.to_v.weight", "attn2.to_v.weight", 0}, WB("attn2.to_out.0", "attn2.to_out.0", 0u),
    WB("norm1", "norm1", 0u),                      WB("norm2", "norm2", 0u),
    WB("norm3", "norm3", 0u),
};
static const leaf leaf_vae_res[] = {
    WB("norm1", "norm1", 0u), WB("conv1", "conv1", 0u), WB("norm2", "norm2", 0u),
    WB("conv2", "conv2", 0u), WB("nin_shortcut", "conv_shortcut", L_SHORTCUT),
};
static const leaf leaf_vae_attn[] = {
    WB("norm", "group_norm", 0u),
    WB("q", "to_q", AP_NAME_SQUEEZE),
    WB("k", "to_k", AP_NAME_SQUEEZE),
    WB("v", "to_v", AP_NAME_SQUEEZE),
    WB("proj_out", "to_out.0", AP_NAME_SQUEEZE),
    WB("q", "query", AP_NAME_SQUEEZE | AP_NAME_DEPRECATED | L_ALIAS),
    WB("k", "key", AP_NAME_SQUEEZE | AP_NAME_DEPRECATED | L_ALIAS),
    WB("v", "value", AP_NAME_SQUEEZE | AP_NAME_DEPRECATED | L_ALIAS),
    WB("proj_out", "proj_attn", AP_NAME_SQUEEZE | AP_NAME_DEPRECATED | L_ALIAS),
};
static const leaf leaf_clip_emb[] = {
    {"token_embedding.weight", "token_embedding.weight", 0},
    {"position_embedding.weight", "position_embedding.weight", 0},
};
static const leaf leaf_clip_layer[] = {
    WB("self_attn.k_proj", "self_attn.k_proj", 0u), WB("self_attn.v_proj", "self_attn.v_proj", 0u),
    WB("self_attn.q_proj", "self_attn.q_proj", 0u), WB("self_attn.out_proj", "self_attn.out_proj", 0u),
    WB("layer_norm1", "layer_norm1", 0u),           WB("mlp.fc1", "mlp.fc1", 0u),
    WB("mlp.fc2", "mlp.fc2", 0u),                   WB("layer_norm2", "layer_norm2", 0u),
};

static const struct {
    const leaf *v;
    int n;
} leaves[K_COUNT] = {
#define LEAVES(k, a) [k] = {a, (int)(sizeof a / sizeof a[0])}
    LEAVES(K_WB, leaf_wb),           LEAVES(K_UNET_RES, leaf_unet_res), LEAVES(K_ST, leaf_st),
    LEAVES(K_TBLOCK, leaf_tblock),   LEAVES(K_VAE_RES, leaf_vae_res),   LEAVES(K_VAE_ATTN, leaf_vae_attn),
    LEAVES(K_CLIP_EMB, leaf_clip_emb), LEAVES(K_CLIP_LAYER, leaf_clip_layer),
#undef LEAVES
};

/* ------------------------------------------------------------ block prefixes */
typedef struct {
    unsigned char comp, kind;
    bool shortcut; /* the block has a shortcut conv */
    char ldm[64], diff[64];
} block;

struct ap_name_table {
    block *b;
    int n, cap;
    int count; /* tensors */
    bool failed;
};

static void add(ap_name_table *t, int comp, int kind, bool shortcut, const char *ldm, const char *diff) {
    if (t->failed) return;
    if (t->n == t->cap) {
        int cap = t->cap ? t->cap * 2 : 128;
        block *nb = realloc(t->b, sizeof *nb * (size_t)cap);
        if (!nb) {
            t->failed = true;
            return;
        }
        t->b = nb;
        t->cap = cap;
    }
    block *b = &t->b[t->n++];
    *b = (block){(unsigned char)comp, (unsigned char)kind, shortcut, "", ""};
    snprintf(b->ldm, sizeof b->ldm, "%s", ldm);
    snprintf(b->diff, sizeof b->diff, "%s", diff);
    for (int i = 0; i < leaves[kind].n; i++) {
        unsigned f = leaves[kind].v[i].flags;
        t->count += !(f & L_ALIAS) && (!(f & L_SHORTCUT) || shortcut);
    }
}

/* A transformer: its outer layers and each of its transformer blocks. */
static void add_transformer(ap_name_table *t, const ap_name_layout *l, const char *ldm, const char *diff) {
    add(t, C_UNET, K_ST, false, ldm, diff);
    for (int d = 0; d < l->unet_depth; d++) {
        char a[64], b[64];
        snprintf(a, sizeof a, "%stransformer_blocks.%d.", ldm, d);
        snprintf(b, sizeof b, "%stransformer_blocks.%d.", diff, d);
        add(t, C_UNET, K_TBLOCK, false, a, b);
    }
}

/* The UNet (SD_FACTS 1.6, 1.7). LDM numbers input_blocks and output_blocks
 * through all levels; diffusers numbers blocks per level. A resnet has a
 * shortcut conv when its input and output channels differ; the up path's
 * inputs are concatenations with the skips the down path pushed. */
static void build_unet(ap_name_table *t, const ap_name_layout *l) {
    int L = l->unet_levels, R = l->unet_layers;
    int skips[AP_NAME_MAX_LEVELS * 9 + 1], ns = 0; /* channel multipliers of the pushed skips */
    add(t, C_UNET, K_WB, false, "time_embed.0.", "time_embedding.linear_1.");
    add(t, C_UNET, K_WB, false, "time_embed.2.", "time_embedding.linear_2.");
    add(t, C_UNET, K_WB, false, "input_blocks.0.0.", "conv_in.");
    skips[ns++] = l->unet_mult[0];
    int idx = 1, ch = l->unet_mult[0];
    for (int b = 0; b < L; b++) {
        for (int j = 0; j < R; j++, idx++) {
            char a[64], d[64];
            snprintf(a, sizeof a, "input_blocks.%d.0.", idx);
            snprintf(d, sizeof d, "down_blocks.%d.resnets.%d.", b, j);
            add(t, C_UNET, K_UNET_RES, ch != l->unet_mult[b], a, d);
            ch = l->unet_mult[b];
            if (l->unet_attn >> b & 1) {
                snprintf(a, sizeof a, "input_blocks.%d.1.", idx);
                snprintf(d, sizeof d, "down_blocks.%d.attentions.%d.", b, j);
                add_transformer(t, l, a, d);
            }
            skips[ns++] = ch;
        }
        if (b < L - 1) {
            char a[64], d[64];
            snprintf(a, sizeof a, "input_blocks.%d.0.op.", idx);
            snprintf(d, sizeof d, "down_blocks.%d.downsamplers.0.conv.", b);
            add(t, C_UNET, K_WB, false, a, d);
            skips[ns++] = ch;
            idx++;
        }
    }
    add(t, C_UNET, K_UNET_RES, false, "middle_block.0.", "mid_block.resnets.0.");
    add_transformer(t, l, "middle_block.1.", "mid_block.attentions.0.");
    add(t, C_UNET, K_UNET_RES, false, "middle_block.2.", "mid_block.resnets.1.");
    idx = 0;
    for (int u = 0; u < L; u++) {
        int b = L - 1 - u;
        for (int j = 0; j <= R; j++, idx++) {
            char a[64], d[64];
            int in = ch + skips[--ns];
            snprintf(a, sizeof a, "output_blocks.%d.0.", idx);
            snprintf(d, sizeof d, "up_blocks.%d.resnets.%d.", u, j);
            add(t, C_UNET, K_UNET_RES, in != l->unet_mult[b], a, d);
            ch = l->unet_mult[b];
            int sub = 1;
            if (l->unet_attn >> b & 1) {
                snprintf(a, sizeof a, "output_blocks.%d.1.", idx);
                snprintf(d, sizeof d, "up_blocks.%d.attentions.%d.", u, j);
                add_transformer(t, l, a, d);
                sub = 2;
            }
            if (j == R && b > 0) {
                snprintf(a, sizeof a, "output_blocks.%d.%d.conv.", idx, sub);
                snprintf(d, sizeof d, "up_blocks.%d.upsamplers.0.conv.", u);
                add(t, C_UNET, K_WB, false, a, d);
            }
        }
    }
    add(t, C_UNET, K_WB, false, "out.0.", "conv_norm_out.");
    add(t, C_UNET, K_WB, false, "out.2.", "conv_out.");
}

/* The VAE (SD_FACTS 2.3-2.5). The decoder's LDM up.k is stored in resolution
 * order and run k = L-1 .. 0; diffusers' up_blocks are in run order. */
static void build_vae(ap_name_table *t, const ap_name_layout *l) {
    int L = l->vae_levels, R = l->vae_layers;
    const int *m = l->vae_mult;
    char a[64], d[64];
    for (int half = 0; half < 2; half++) {
        const char *p = half ? "decoder" : "encoder";
        snprintf(a, sizeof a, "%s.conv_in.", p);
        add(t, C_VAE, K_WB, false, a, a);
        if (!half) {
            int ch = m[0];
            for (int i = 0; i < L; i++) {
                for (int j = 0; j < R; j++) {
                    snprintf(a, sizeof a, "encoder.down.%d.block.%d.", i, j);
                    snprintf(d, sizeof d, "encoder.down_blocks.%d.resnets.%d.", i, j);
                    add(t, C_VAE, K_VAE_RES, ch != m[i], a, d);
                    ch = m[i];
                }
                if (i < L - 1) {
                    snprintf(a, sizeof a, "encoder.down.%d.downsample.conv.", i);
                    snprintf(d, sizeof d, "encoder.down_blocks.%d.downsamplers.0.conv.", i);
                    add(t, C_VAE, K_WB, false, a, d);
                }
            }
        }
        snprintf(a, sizeof a, "%s.mid.block_1.", p);
        snprintf(d, sizeof d, "%s.mid_block.resnets.0.", p);
        add(t, C_VAE, K_VAE_RES, false, a, d);
        snprintf(a, sizeof a, "%s.mid.attn_1.", p);
        snprintf(d, sizeof d, "%s.mid_block.attentions.0.", p);
        add(t, C_VAE, K_VAE_ATTN, false, a, d);
        snprintf(a, sizeof a, "%s.mid.block_2.", p);
        snprintf(d, sizeof d, "%s.mid_block.resnets.1.", p);
        add(t, C_VAE, K_VAE_RES, false, a, d);
        if (half) {
            int ch = m[L - 1];
            for (int k = L - 1; k >= 0; k--) {
                for (int j = 0; j <= R; j++) {
                    snprintf(a, sizeof a, "decoder.up.%d.block.%d.", k, j);
                    snprintf(d, sizeof d, "decoder.up_blocks.%d.resnets.%d.", L - 1 - k, j);
                    add(t, C_VAE, K_VAE_RES, ch != m[k], a, d);
                    ch = m[k];
                }
                if (k > 0) {
                    snprintf(a, sizeof a, "decoder.up.%d.upsample.conv.", k);
                    snprintf(d, sizeof d, "decoder.up_blocks.%d.upsamplers.0.conv.", L - 1 - k);
                    add(t, C_VAE, K_WB, false, a, d);
                }
            }
        }
        snprintf(a, sizeof a, "%s.norm_out.", p);
        snprintf(d, sizeof d, "%s.conv_norm_out.", p);
        add(t, C_VAE, K_WB, false, a, d);
        snprintf(a, sizeof a, "%s.conv_out.", p);
        add(t, C_VAE, K_WB, false, a, a);
    }
    add(t, C_VAE, K_WB, false, "quant_conv.", "quant_conv.");
    add(t, C_VAE, K_WB, false, "post_quant_conv.", "post_quant_conv.");
}

/* The CLIP text encoder: HF names in both formats (SD_FACTS 3.2). */
static void build_text(ap_name_table *t, const ap_name_layout *l) {
    add(t, C_TEXT, K_CLIP_EMB, false, "text_model.embeddings.", "text_model.embeddings.");
    for (int i = 0; i < l->text_layers; i++) {
        char a[64];
        snprintf(a, sizeof a, "text_model.encoder.layers.%d.", i);
        add(t, C_TEXT, K_CLIP_LAYER, false, a, a);
    }
    add(t, C_TEXT, K_WB, false, "text_model.final_layer_norm.", "text_model.final_layer_norm.");
}

ap_status ap_name_table_new(const ap_name_layout *l, ap_name_table **out) {
    if (!out) return AP_ERR_INVALID_ARG;
    *out = NULL;
    if (!l || l->unet_levels < 1 || l->unet_levels > AP_NAME_MAX_LEVELS || l->unet_layers < 1 || l->unet_layers > 8 ||
        l->unet_depth < 1 || l->unet_depth > 16 || l->vae_levels < 1 || l->vae_levels > AP_NAME_MAX_LEVELS ||
        l->vae_layers < 1 || l->vae_layers > 8 || l->text_layers < 1 || l->text_layers > 64 ||
        (l->unet_attn >> l->unet_levels) != 0)
        return AP_ERR_INVALID_ARG;
    for (int i = 0; i < l->unet_levels; i++)
        if (l->unet_mult[i] < 1) return AP_ERR_INVALID_ARG;
    for (int i = 0; i < l->vae_levels; i++)
        if (l->vae_mult[i] < 1) return AP_ERR_INVALID_ARG;
    ap_name_table *t = calloc(1, sizeof *t);
    if (!t) return AP_ERR_NOMEM;
    build_unet(t, l);
    build_vae(t, l);
    build_text(t, l);
    if (t->failed) {
        ap_name_table_free(t);
        return AP_ERR_NOMEM;
    }
    *out = t;
    return AP_OK;
}

void ap_name_table_free(ap_name_table *t) {
    if (!t) return;
    free(t->b);
    free(t);
}

static ap_name_table *sd1_table;
static pthread_once_t sd1_once = PTHREAD_ONCE_INIT;
static void sd1_build(void) { ap_name_table_new(&ap_name_layout_sd1, &sd1_table); }

const ap_name_table *ap_name_table_sd1(void) {
    pthread_once(&sd1_once, sd1_build);
    return sd1_table;
}

/* ------------------------------------------------------------ mapping */
static size_t has_prefix(const char *s, const char *p) {
    size_t n = strlen(p);
    return strncmp(s, p, n) == 0 ? n : 0;
}

static ap_status map(const ap_name_table *t, const char *name, int to_diff, char *out, size_t n, unsigned *flags) {
    if (flags) *flags = 0;
    if (!t || !name || (!out && n)) return AP_ERR_INVALID_ARG;
    for (int c = 0; c < C_COUNT; c++) {
        const char *src = to_diff ? comp_prefix[c].ldm : comp_prefix[c].diff;
        size_t k = has_prefix(name, src);
        if (!k) continue;
        const char *rest = name + k;
        for (int i = 0; i < t->n; i++) {
            const block *b = &t->b[i];
            if (b->comp != c) continue;
            size_t m = has_prefix(rest, to_diff ? b->ldm : b->diff);
            if (!m) continue;
            for (int j = 0; j < leaves[b->kind].n; j++) {
                const leaf *lf = &leaves[b->kind].v[j];
                if ((lf->flags & L_SHORTCUT) && !b->shortcut) continue;
                if ((lf->flags & L_ALIAS) && to_diff) continue;
                if (strcmp(rest + m, to_diff ? lf->ldm : lf->diff)) continue;
                int w = snprintf(out, n, "%s%s%s", to_diff ? comp_prefix[c].diff : comp_prefix[c].ldm,
                                 to_diff ? b->diff : b->ldm, to_diff ? lf->diff : lf->ldm);
                if (flags) *flags = lf->flags & (AP_NAME_SQUEEZE | AP_NAME_DEPRECATED);
                return w >= 0 && (size_t)w < n ? AP_OK : AP_ERR_INVALID_ARG;
            }
        }
        return AP_ERR_NOT_FOUND;
    }
    return AP_ERR_NOT_FOUND;
}

ap_status ap_name_to_diffusers(const ap_name_table *t, const char *ldm, char *out, size_t n, unsigned *flags) {
    return map(t, ldm, 1, out, n, flags);
}
ap_status ap_name_to_ldm(const ap_name_table *t, const char *name, char *out, size_t n, unsigned *flags) {
    return map(t, name, 0, out, n, flags);
}
ap_status ap_name_ldm_to_diffusers(const char *ldm, char *out, size_t n, unsigned *flags) {
    const ap_name_table *t = ap_name_table_sd1();
    if (!t) return AP_ERR_NOMEM;
    return map(t, ldm, 1, out, n, flags);
}
ap_status ap_name_diffusers_to_ldm(const char *name, char *out, size_t n, unsigned *flags) {
    const ap_name_table *t = ap_name_table_sd1();
    if (!t) return AP_ERR_NOMEM;
    return map(t, name, 0, out, n, flags);
}

int ap_name_table_count(const ap_name_table *t) { return t ? t->count : 0; }

ap_status ap_name_table_get(const ap_name_table *t, int i, char *ldm, size_t nl, char *name, size_t nn,
                            unsigned *flags) {
    if (flags) *flags = 0;
    if (!t || i < 0 || i >= t->count || (!ldm && nl) || (!name && nn)) return AP_ERR_INVALID_ARG;
    for (int k = 0; k < t->n; k++) {
        const block *b = &t->b[k];
        for (int j = 0; j < leaves[b->kind].n; j++) {
            const leaf *lf = &leaves[b->kind].v[j];
            if ((lf->flags & L_ALIAS) || ((lf->flags & L_SHORTCUT) && !b->shortcut)) continue;
            if (i-- > 0) continue;
            int a = snprintf(ldm, nl, "%s%s%s", comp_prefix[b->comp].ldm, b->ldm, lf->ldm);
            int d = snprintf(name, nn, "%s%s%s", comp_prefix[b->comp].diff, b->diff, lf->diff);
            if (flags) *flags = lf->flags & (AP_NAME_SQUEEZE | AP_NAME_DEPRECATED);
            return a >= 0 && d >= 0 && (size_t)a < nl && (size_t)d < nn ? AP_OK : AP_ERR_INVALID_ARG;
        }
    }
    return AP_ERR_INVALID_ARG; /* not reached: count matches the loop */
}

/* ------------------------------------------------------------ ignored keys */
static const char *const ldm_ignored[] = {
    /* LatentDiffusion's schedule buffers (top level) */
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "lvlb_weights", "scale_factor",
    /* a buffer, 0..76, sometimes stored corrupted: always regenerated */
    "cond_stage_model.transformer.text_model.embeddings.position_ids",
};

int ap_name_ldm_ignored(const char *ldm) {
    if (!ldm) return 0;
    if (has_prefix(ldm, "model_ema.")) return 1; /* EMA copies: model_ema.<key without dots>, decay, num_updates */
    for (size_t i = 0; i < sizeof ldm_ignored / sizeof ldm_ignored[0]; i++)
        if (!strcmp(ldm, ldm_ignored[i])) return 1;
    return 0;
}

int ap_name_diffusers_ignored(const char *name) {
    return name && !strcmp(name, "text_encoder.text_model.embeddings.position_ids");
}
