/* Merging LoRA files into frozen weights. One loop over the model's linear
 * (and 1x1 conv) weights; for each, the candidate keys of every format. */
#include "lora_file.h"

#include "core/internal.h"
#include "models/names.h"
#include "models/weights.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* "a.b.c" -> "a_b_c" */
static void underscores(char *s) {
    for (; *s; s++)
        if (*s == '.') *s = '_';
}

int ap_lora_key_candidates(const char *comp, const char *P, ap_lora_keys *k, int max, const ap_name_table *tab) {
    int n = 0;
    char base[512];
    const char *kpre = !strcmp(comp, "unet") ? "lora_unet_" : !strcmp(comp, "text_encoder") ? "lora_te_" : NULL;
    if (kpre && n < max) { /* kohya, diffusers path */
        AP_FMT(base, "%s%s", kpre, P);
        underscores(base + strlen(kpre));
        AP_FMT(k[n].down, "%s.lora_down.weight", base);
        AP_FMT(k[n].up, "%s.lora_up.weight", base);
        AP_FMT(k[n].alpha, "%s.alpha", base);
        k[n++].format = "kohya";
    }
    if (!strcmp(comp, "unet") && tab && n < max) { /* kohya with LDM paths */
        char full[512], ldm[512];
        AP_FMT(full, "unet.%s.weight", P);
        if (ap_name_to_ldm(tab, full, ldm, sizeof ldm, NULL) == AP_OK) {
            const char *pre = "model.diffusion_model.";
            size_t lp = strlen(pre), L = strlen(ldm);
            if (!strncmp(ldm, pre, lp) && L > lp + 7) {
                ldm[L - 7] = 0; /* drop ".weight" */
                AP_FMT(base, "lora_unet_%s", ldm + lp);
                underscores(base + 10);
                AP_FMT(k[n].down, "%s.lora_down.weight", base);
                AP_FMT(k[n].up, "%s.lora_up.weight", base);
                AP_FMT(k[n].alpha, "%s.alpha", base);
                k[n++].format = "kohya";
            }
        }
    }
    const char *prefixes[] = {"", "unet.", "text_encoder.", "base_model.model."};
    for (int i = 0; i < 4 && n + 3 <= max; i++) {
        const char *pre = prefixes[i];
        if (!strcmp(pre, "unet.") && strcmp(comp, "unet")) continue;
        if (!strcmp(pre, "text_encoder.") && strcmp(comp, "text_encoder")) continue;
        AP_FMT(k[n].down, "%s%s.lora.down.weight", pre, P);
        AP_FMT(k[n].up, "%s%s.lora.up.weight", pre, P);
        AP_FMT(k[n].alpha, "%s%s.alpha", pre, P);
        k[n++].format = "diffusers";
        AP_FMT(k[n].down, "%s%s.lora_A.weight", pre, P);
        AP_FMT(k[n].up, "%s%s.lora_B.weight", pre, P);
        AP_FMT(k[n].alpha, "%s%s.alpha", pre, P);
        k[n++].format = "peft";
        /* old attention processors: <attn>.processor.to_q_lora.down.weight */
        const char *leafs[][2] = {{".to_q", "to_q_lora"}, {".to_k", "to_k_lora"}, {".to_v", "to_v_lora"},
                                  {".to_out.0", "to_out_lora"}};
        size_t L = strlen(P);
        for (int j = 0; j < 4; j++) {
            size_t l = strlen(leafs[j][0]);
            if (L > l && !strcmp(P + L - l, leafs[j][0])) {
                AP_FMT(k[n].down, "%s%.*s.processor.%s.down.weight", pre, (int)(L - l), P, leafs[j][1]);
                AP_FMT(k[n].up, "%s%.*s.processor.%s.up.weight", pre, (int)(L - l), P, leafs[j][1]);
                AP_FMT(k[n].alpha, "%s%.*s.processor.%s.alpha", pre, (int)(L - l), P, leafs[j][1]);
                k[n++].format = "diffusers-attn-procs";
                break;
            }
        }
    }
    return n;
}

static bool is_lora_key(const char *s) {
    return strstr(s, "lora") != NULL || (strlen(s) > 6 && !strcmp(s + strlen(s) - 6, ".alpha"));
}

ap_status ap_lora_merge_file(ap_ctx *c, ap_sd_model *m, const char *path, float strength, ap_lora_merge_info *info) {
    memset(info, 0, sizeof *info);
    info->strength = strength;
    if (ap_failed(c)) return c->status;
    ap_weights *w = NULL;
    if (ap_weights_open(c, path, &w) != AP_OK) return c->status;
    int nk = ap_weights_count(w);
    char *used = calloc((size_t)nk + 1, 1);
    ap_name_table *tab = NULL;
    if (ap_sd_name_table(c, &m->cfg, &tab) != AP_OK) ap_clear_error(c); /* LDM-path keys then don't match */
    ap_status st = used ? AP_OK : ap_seterr(c, AP_ERR_NOMEM, "out of memory");
    ap_params *comps[2] = {&m->unet->params, &m->text->params};
    const char *cnames[2] = {"unet", "text_encoder"};
    for (int ci = 0; ci < 2 && st == AP_OK; ci++) {
        ap_params *ps = comps[ci];
        for (int pi = 0; pi < ps->n && st == AP_OK; pi++) {
            ap_param *p = &ps->p[pi];
            size_t L = strlen(p->name);
            if (p->kind != AP_PARAM_WEIGHT || p->t->ndim != 2 || L < 8 || strcmp(p->name + L - 7, ".weight")) continue;
            char P[512];
            AP_FMT(P, "%.*s", (int)(L - 7), p->name);
            ap_lora_keys k[16];
            int n = ap_lora_key_candidates(cnames[ci], P, k, 16, tab);
            int hit = -1, id = -1, iu = -1;
            for (int j = 0; j < n && hit < 0; j++) {
                id = ap_weights_find(w, k[j].down);
                iu = ap_weights_find(w, k[j].up);
                if (id >= 0 && iu >= 0) hit = j;
            }
            if (hit < 0) continue;
            int64_t sd[AP_MAX_DIMS], su[AP_MAX_DIMS];
            int nd = ap_weights_shape(w, id, sd), nu = ap_weights_shape(w, iu, su);
            int64_t out = p->t->shape[0], in = p->t->shape[1];
            /* 4-D [r,in,1,1] / [out,r,1,1] from 1x1 convs are the same bytes */
            bool ok = nd >= 2 && nu >= 2 && sd[1] == in && su[0] == out && su[1] == sd[0];
            for (int j = 2; j < nd; j++) ok &= sd[j] == 1;
            for (int j = 2; j < nu; j++) ok &= su[j] == 1;
            if (!ok) {
                st = ap_seterr(c, AP_ERR_SHAPE, "%s: LoRA '%s' does not fit %s.%s ([%lld,%lld])", path, k[hit].down,
                               cnames[ci], p->name, (long long)out, (long long)in);
                break;
            }
            int64_t r = sd[0];
            float scale = strength;
            int ia = ap_weights_find(w, k[hit].alpha);
            if (ia >= 0) {
                ap_tensor *a = NULL;
                if (ap_weights_load(c, w, ia, AP_F32, &a) != AP_OK) break;
                float alpha = ap_tensor_numel(a) == 1 ? ap_f32(a)[0] : 0.0f;
                ap_tensor_release(a);
                if (alpha > 0) scale *= alpha / (float)r;
                used[ia] = 1;
            }
            ap_tensor *D = NULL, *U = NULL;
            if (ap_weights_load(c, w, id, AP_F32, &D) != AP_OK || ap_weights_load(c, w, iu, AP_F32, &U) != AP_OK) {
                ap_tensor_release(D);
                break;
            }
            used[id] = used[iu] = 1;
            float *W = malloc(sizeof(float) * (size_t)(out * in));
            if (!W) {
                st = ap_seterr(c, AP_ERR_NOMEM, "out of memory");
                break;
            }
            ap_convert(W, AP_F32, ap_data(p->t), p->t->dtype, out * in);
            const float *dn = ap_f32(D), *up = ap_f32(U);
#pragma omp parallel for schedule(static)
            for (int64_t o = 0; o < out; o++)
                for (int64_t q = 0; q < r; q++) {
                    float u = scale * up[o * r + q];
                    for (int64_t i = 0; i < in; i++) W[o * in + i] += u * dn[q * in + i];
                }
            ap_convert(ap_data(p->t), p->t->dtype, W, AP_F32, out * in);
            ap_tensor_touch(p->t);
            free(W);
            ap_tensor_release(D);
            ap_tensor_release(U);
            info->modules++;
            info->format = k[hit].format;
        }
    }
    if (st == AP_OK && !ap_failed(c)) {
        for (int i = 0; i < nk; i++)
            if (!used[i] && is_lora_key(ap_weights_name(w, i))) info->unused_keys++;
        if (info->modules == 0)
            st = ap_seterr(c, AP_ERR_NOT_FOUND,
                           "%s: no LoRA module in this file matches the model (looked for kohya, diffusers and peft keys)",
                           path);
    }
    free(used);
    ap_name_table_free(tab);
    ap_weights_close(w);
    return ap_failed(c) ? c->status : st;
}

ap_status ap_lora_merge_spec(ap_ctx *c, ap_sd_model *m, const char *spec, ap_lora_merge_info *info) {
    char file[4096];
    float strength = 1.0f;
    snprintf(file, sizeof file, "%s", spec);
    char *colon = strrchr(file, ':');
    if (colon) {
        char *end;
        double v = strtod(colon + 1, &end);
        if (!*end && end != colon + 1 && isfinite(v)) {
            strength = (float)v;
            *colon = 0;
        }
    }
    return ap_lora_merge_file(c, m, file, strength, info);
}
