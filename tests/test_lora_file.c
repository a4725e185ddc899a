/* LoRA files merged at sampling time: every key format gives
 * W' = W + strength * (alpha / rank) * up @ down on the right module, and a
 * file that matches nothing is an error naming it. */
#include "core/internal.h"
#include "models/lora_file.h"
#include "test.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static const char *MOD = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k";

typedef struct {
    const char *label, *down, *up, *alpha; /* alpha NULL: no alpha tensor */
    float alpha_v, strength;
} fmt_case;

static void write_lora(ap_ctx *c, const char *path, const fmt_case *fc, ap_tensor *down, ap_tensor *up) {
    const char *names[3] = {fc->down, fc->up, fc->alpha};
    ap_tensor *a = ap_tensor_from_data(c, AP_F32, 0, NULL, &fc->alpha_v);
    ap_tensor *ts[3] = {down, up, a};
    CHECK(ap_st_save(c, path, fc->alpha ? 3 : 2, names, ts, 0, NULL, NULL) == AP_OK);
    ap_tensor_release(a);
}

int main(void) {
    ap_ctx *c = test_ctx();
    ap_sd_config cfg;
    CHECK(ap_sd_preset(c, "tiny", &cfg) == AP_OK);
    test_rng r = {11};
    char path[256];
    snprintf(path, sizeof path, "/tmp/ap_lora_test_%d.safetensors", (int)getpid());
    /* to_k of attn2 maps the 32-wide text context to 32 channels; rank 3 */
    int64_t R = 3, IN = 32, OUT = 32;
    ap_tensor *down = test_rand(c, &r, 2, (int64_t[]){R, IN}, -1, 1), *up = test_rand(c, &r, 2, (int64_t[]){OUT, R}, -1, 1);
    const fmt_case cases[] = {
        {"kohya", "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight",
         "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight",
         "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.alpha", 1.5f, 0.8f},
        {"kohya LDM path", "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k.lora_down.weight",
         "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k.lora_up.weight", NULL, 0, 1.0f},
        {"diffusers", "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora.down.weight",
         "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora.up.weight", NULL, 0, 1.0f},
        {"diffusers attn procs",
         "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.down.weight",
         "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.up.weight", NULL, 0, 0.5f},
        {"peft", "base_model.model.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight",
         "base_model.model.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight", NULL, 0, 2.0f},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        const fmt_case *fc = &cases[k];
        ap_sd_model *m = NULL;
        CHECK(ap_sd_create(c, &cfg, AP_F32, &m) == AP_OK && ap_sd_init_random(c, m, 4) == AP_OK);
        char wname[256];
        snprintf(wname, sizeof wname, "%s.weight", MOD);
        ap_param *p = ap_params_find(&m->unet->params, wname);
        CHECK(p != NULL);
        if (!p) break;
        ap_tensor *before = ap_copy(c, p->t);
        write_lora(c, path, fc, down, up);
        ap_lora_merge_info li;
        CHECK_MSG(ap_lora_merge_file(c, m, path, fc->strength, &li) == AP_OK, "%s: %s", fc->label, ap_last_error(c));
        CHECK_MSG(li.modules == 1 && li.unused_keys == 0, "%s: %d modules, %d unused", fc->label, li.modules,
                  li.unused_keys);
        double scale = fc->strength * (fc->alpha ? fc->alpha_v / (double)R : 1.0);
        double *want = malloc(sizeof(double) * (size_t)(OUT * IN));
        const float *w0 = ap_tensor_cdata(before), *dn = ap_tensor_cdata(down), *u = ap_tensor_cdata(up);
        for (int64_t o = 0; o < OUT; o++)
            for (int64_t i = 0; i < IN; i++) {
                double s = 0;
                for (int64_t q = 0; q < R; q++) s += (double)u[o * R + q] * dn[q * IN + i];
                want[o * IN + i] = w0[o * IN + i] + scale * s;
            }
        test_close(fc->label, ap_tensor_cdata(p->t), want, OUT * IN, 1e-5, 1e-6);
        /* nothing else changed: the attn2 to_q weight is untouched */
        snprintf(wname, sizeof wname, "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q.weight");
        ap_param *q = ap_params_find(&m->unet->params, wname);
        ap_sd_model *ref = NULL;
        ap_sd_create(c, &cfg, AP_F32, &ref);
        ap_sd_init_random(c, ref, 4);
        ap_param *q0 = ap_params_find(&ref->unet->params, wname);
        CHECK(q && q0 && memcmp(ap_tensor_cdata(q->t), ap_tensor_cdata(q0->t), ap_tensor_nbytes(q->t)) == 0);
        free(want);
        ap_tensor_release(before);
        ap_sd_free(ref);
        ap_sd_free(m);
    }
    /* a file that matches nothing, and one of the wrong shape */
    ap_sd_model *m = NULL;
    ap_sd_create(c, &cfg, AP_F32, &m);
    fmt_case none = {"none", "lora_unet_nothing_here.lora_down.weight", "lora_unet_nothing_here.lora_up.weight", NULL, 0, 1};
    write_lora(c, path, &none, down, up);
    ap_lora_merge_info li;
    CHECK(ap_lora_merge_file(c, m, path, 1.0f, &li) == AP_ERR_NOT_FOUND);
    CHECK(strstr(ap_last_error(c), path) != NULL);
    ap_clear_error(c);
    ap_tensor *bad = test_rand(c, &r, 2, (int64_t[]){R, IN + 1}, -1, 1);
    write_lora(c, path, &cases[0], bad, up);
    CHECK(ap_lora_merge_file(c, m, path, 1.0f, &li) == AP_ERR_SHAPE);
    CHECK(strstr(ap_last_error(c), "lora_down") != NULL);
    ap_clear_error(c);
    unlink(path);
    ap_tensor_release(bad);
    ap_sd_free(m);
    ap_tensor_release(down);
    ap_tensor_release(up);
    ap_ctx_free(c);
    return test_summary("lora_file");
}
