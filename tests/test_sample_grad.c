/* The AlignProp chain on the tiny model: the gradient of a reward of the
 * decoded image reaches LoRA weights through the DDIM steps (checked by finite
 * differences), checkpointing changes nothing but memory, and truncation keeps
 * exactly the steps its policy names. */
#include "core/internal.h"
#include "gradcheck.h"
#include "test.h"
#include "train/sample_grad.h"

#include <math.h>
#include <string.h>

typedef struct {
    ap_sd_model *m;
    ap_grad_sample_opts o;
    ap_tensor *ctx, *xT;
} chain;

/* reward = mean of the image; the check contracts it with a random seed */
static ap_tensor *run_chain(ap_ctx *c, void *u, int n, ap_tensor **in) {
    chain *ch = u;
    ap_rng g;
    ap_rng_init(&g, 7);
    ap_tensor *lat = NULL, *img = NULL;
    if (ap_sample_with_grad(c, ch->m, &ch->o, ch->ctx, ch->xT, &g, NULL, &lat, &img, NULL) != AP_OK) return NULL;
    ap_tensor *r = ap_mean(c, img);
    ap_tensor_release(lat);
    ap_tensor_release(img);
    return r;
}

static void grads_of(ap_ctx *c, chain *ch, ap_tensor **leaves, int n, float *out) {
    for (int i = 0; i < n; i++) ap_tensor_zero_grad(leaves[i]);
    ap_tensor *r = run_chain(c, ch, 0, NULL);
    CHECK_OK(c);
    CHECK(ap_backward(c, r, NULL) == AP_OK);
    ap_tensor_release(r);
    int64_t o = 0;
    for (int i = 0; i < n; i++) {
        ap_tensor *g = ap_tensor_grad(leaves[i]);
        int64_t k = ap_tensor_numel(leaves[i]);
        if (g)
            memcpy(out + o, ap_tensor_cdata(g), (size_t)k * sizeof(float));
        else
            memset(out + o, 0, (size_t)k * sizeof(float));
        o += k;
    }
}

int main(void) {
    ap_ctx *c = test_ctx();
    ap_sd_config cfg;
    chain ch;
    memset(&ch, 0, sizeof ch);
    CHECK(ap_sd_preset(c, "tiny", &cfg) == AP_OK);
    CHECK(ap_sd_create(c, &cfg, AP_F32, &ch.m) == AP_OK && ap_sd_init_random(c, ch.m, 3) == AP_OK);
    /* one LoRA on the first self-attention's to_q, and one on the cross-attention's to_v */
    test_rng r = {5};
    /* strong adapters (scale 20): the finite differences of a reward of a
     * 4x4-latent image need a gradient well above the f32 rounding of the chain */
    ap_lora l1 = {test_rand_leaf(c, &r, 2, (int64_t[]){2, 32}, -1, 1), test_rand_leaf(c, &r, 2, (int64_t[]){32, 2}, -1, 1), 20.0f};
    ap_lora l2 = {test_rand_leaf(c, &r, 2, (int64_t[]){2, 32}, -1, 1), test_rand_leaf(c, &r, 2, (int64_t[]){32, 2}, -1, 1), 20.0f};
    ap_unet_block *d0 = &ch.m->unet->down[0];
    d0->attns[0].block.attn1.to_q.lora = &l1;
    d0->attns[0].block.attn2.to_v.lora = &l2;
    ap_tensor *leaves[4] = {l1.down, l1.up, l2.down, l2.up};
    ch.ctx = test_rand(c, &r, 3, (int64_t[]){2, 77, 32}, -1, 1);
    ch.xT = test_rand(c, &r, 4, (int64_t[]){1, 4, 4, 4}, -1, 1);
    ap_grad_sample_defaults(&ch.o);
    ch.o.steps = 3;
    ch.o.cfg = 3.0f;
    ch.o.trunc.kind = AP_TRUNC_FULL;

    /* finite differences through 3 guided UNet calls and the decoder */
    gradcheck(c, "reward -> LoRA through DDIM (full)", run_chain, &ch, 4, leaves,
              &(gc_opts){.eps = 1e-2, .rtol = 3e-2, .atol = 3e-3, .max_elems = 6});

    /* checkpointing changes nothing but memory */
    float g_ck[4 * 64], g_plain[4 * 64];
    size_t base = ap_mem_in_use(c);
    ap_mem_reset_peak(c);
    grads_of(c, &ch, leaves, 4, g_ck);
    size_t peak_ck = ap_mem_peak(c) - base;
    ch.o.checkpoint = false;
    ap_mem_reset_peak(c);
    grads_of(c, &ch, leaves, 4, g_plain);
    size_t peak_plain = ap_mem_peak(c) - base;
    ch.o.checkpoint = true;
    /* the same gradients up to rounding (oneDNN may accumulate in another order) */
    test_close_f("checkpointed chain = plain chain", g_ck, g_plain, 256, 1e-4, 1e-6);
    CHECK_MSG(peak_ck < peak_plain, "peak %zu checkpointed < %zu plain", peak_ck, peak_plain);

    /* truncation: fixed:3 over 3 steps is full; fixed:1 keeps only the last step,
     * and differs from the full gradient */
    ch.o.trunc = (ap_trunc_policy){.kind = AP_TRUNC_FIXED, .k = 3};
    float g3[256], g1[256];
    grads_of(c, &ch, leaves, 4, g3);
    test_close_f("fixed:3 of 3 steps = full", g3, g_ck, 256, 0, 0);
    ch.o.trunc.k = 1;
    grads_of(c, &ch, leaves, 4, g1);
    double diff = 0, norm = 0;
    for (int i = 0; i < 256; i++) diff += fabs(g1[i] - g3[i]), norm += fabs(g3[i]);
    CHECK_MSG(diff > 1e-2 * norm, "fixed:1 drops the earlier steps' gradient");

    /* the truncated gradient is the exact derivative of the chain whose
     * non-kept UNet outputs are constants: record them once, replay them in
     * every finite-difference evaluation */
    ap_tensor *rec[3] = {0};
    for (int K = 1; K <= 2; K++) {
        /* fixed:1 with SD's leading timesteps keeps only the step from t = 1,
         * which weighs eps by about 0.01: its gradient is below the f32 noise of
         * finite differences on this tiny chain. Trailing timesteps (999, 666,
         * 332) make the last step a large one; its gradients (~1e-5) still sit
         * near the noise (~1e-7), so the step is larger and elements below 1% of
         * the largest are compared absolutely. */
        ch.o.spacing = K == 1 ? AP_SPACING_TRAILING : AP_SPACING_DEFAULT;
        ch.o.trunc.k = K;
        ch.o.record = rec;
        ap_tensor *r0 = run_chain(c, &ch, 0, NULL);
        ap_tensor_release(r0);
        ap_tape_clear(c);
        ch.o.record = NULL;
        ch.o.replay = rec;
        CHECK(rec[0] != NULL && (rec[1] != NULL) == (K == 1) && rec[2] == NULL); /* the last K steps kept */
        char name[96];
        snprintf(name, sizeof name, "reward -> LoRA, fixed:%d%s (replayed constants)", K,
                 K == 1 ? ", trailing timesteps" : "");
        gc_opts go = {.eps = 1e-2, .rtol = 3e-2, .atol = 3e-3, .max_elems = 6};
        if (K == 1) { /* measured: eps 4e-2..5e-2 pass, below the noise wins, above the curvature */
            go.eps = 5e-2;
            go.atol = 1e-2;
        }
        gradcheck(c, name, run_chain, &ch, 4, leaves, &go);
        ch.o.replay = NULL;
        for (int i = 0; i < 3; i++) ap_tensor_release(rec[i]), rec[i] = NULL;
    }
    ch.o.spacing = AP_SPACING_DEFAULT;

    /* plans */
    bool keep[10];
    ap_rng g;
    ap_rng_init(&g, 1);
    ap_trunc_policy p;
    CHECK(ap_trunc_parse(c, "fixed:2", &p) == AP_OK && ap_trunc_plan(c, &p, 5, &g, keep) == AP_OK);
    CHECK(!keep[0] && !keep[1] && !keep[2] && keep[3] && keep[4]);
    CHECK(ap_trunc_parse(c, "rand-step:0:3", &p) == AP_OK && ap_trunc_plan(c, &p, 10, &g, keep) == AP_OK);
    CHECK(keep[3] && keep[9]); /* i >= 3 always kept when K_i <= 3 */
    CHECK(ap_trunc_parse(c, "rand:2:2", &p) == AP_OK && ap_trunc_plan(c, &p, 4, &g, keep) == AP_OK);
    CHECK(!keep[1] && keep[2] && keep[3]);
    CHECK(ap_trunc_parse(c, "gaussian:2:0", &p) == AP_OK && ap_trunc_plan(c, &p, 4, &g, keep) == AP_OK);
    CHECK(!keep[1] && keep[2]);
    /* specs print back to themselves */
    const char *good[] = {"fixed:3", "rand-step:0:50", "rand:2:7", "gaussian:10:2.5", "full"};
    for (int i = 0; i < 5; i++) {
        char buf[64];
        CHECK(ap_trunc_parse(c, good[i], &p) == AP_OK);
        CHECK_MSG(!strcmp(ap_trunc_str(&p, buf, sizeof buf), good[i]), "%s printed as %s", good[i], buf);
    }
    const char *bad[] = {"fixed:0", "rand:3:2", "gaussian:1", "sometimes", "fixed:2x", "rand-step:-1:3"};
    for (int i = 0; i < 6; i++) {
        CHECK_MSG(ap_trunc_parse(c, bad[i], &p) == AP_ERR_INVALID_ARG && strstr(ap_last_error(c), bad[i]), "%s", bad[i]);
        ap_clear_error(c);
    }
    /* a mismatched context batch is an error, not a crash */
    ap_tensor *lat = NULL, *img = NULL;
    ap_tensor *ctx1 = test_rand(c, &r, 3, (int64_t[]){1, 77, 32}, -1, 1);
    CHECK(ap_sample_with_grad(c, ch.m, &ch.o, ctx1, ch.xT, &g, NULL, &lat, &img, NULL) == AP_ERR_SHAPE);
    ap_clear_error(c);

    /* stepping over a chain (what a data-parallel rank does with the other
     * ranks' chains) leaves the three streams where sampling it does: the
     * latents, a random plan drawn per step and DDIM noise (eta > 0) */
    {
        ap_grad_sample_opts so = ch.o;
        so.eta = 0.7f;
        CHECK(ap_trunc_parse(c, "rand-step:0:3", &so.trunc) == AP_OK);
        ap_rng ga[3], gb[3];
        for (int i = 0; i < 3; i++) {
            ap_rng_init(&ga[i], 10 + (uint64_t)i);
            ap_rng_init(&gb[i], 10 + (uint64_t)i);
        }
        int prev = ap_set_grad_enabled(c, 0);
        for (int rep = 0; rep < 2; rep++) {
            ap_tensor *xT = ap_rng_randn_latents(c, &ga[0], 1, 4, 4, 4), *l = NULL, *im = NULL;
            CHECK_MSG(ap_sample_with_grad(c, ch.m, &so, ch.ctx, xT, &ga[1], &ga[2], &l, &im, NULL) == AP_OK, "%s",
                      ap_last_error(c));
            ap_tensor_release(xT);
            ap_tensor_release(l);
            ap_tensor_release(im);
            CHECK(ap_sample_skip_draws(c, &so, 1, 4, 4, 4, &gb[0], &gb[1], &gb[2]) == AP_OK);
        }
        ap_set_grad_enabled(c, prev);
        static uint8_t sa[AP_RNG_STATE_BYTES], sb[AP_RNG_STATE_BYTES];
        for (int i = 0; i < 3; i++) {
            ap_rng_get_state(&ga[i], sa);
            ap_rng_get_state(&gb[i], sb);
            CHECK_MSG(!memcmp(sa, sb, sizeof sa), "stream %d: skipping two chains = sampling them", i);
        }
        uint8_t s0[AP_RNG_STATE_BYTES];
        ap_rng fresh;
        ap_rng_init(&fresh, 12);
        ap_rng_get_state(&fresh, s0);
        CHECK_MSG(memcmp(s0, sb, sizeof s0) != 0, "the noise stream was drawn from");
    }

    for (int i = 0; i < 4; i++) ap_tensor_release(leaves[i]);
    ap_tensor_release(ctx1);
    ap_tensor_release(ch.ctx);
    ap_tensor_release(ch.xT);
    ap_sd_free(ch.m);
    ap_ctx_free(c);
    return test_summary("sample_grad");
}
