/* Memory bounds: the packed-weight budget (ap_set_pack_cache) and the arena's
 * trimming of its cache. Neither may change a result: a tiny model's sampling
 * chain gives bit-identical images and LoRA gradients with every weight
 * cached, none cached and a budget in between, and with an arena that keeps
 * no cache; the packed bytes stay within the budget and the tensor accounting
 * (in use, peak) is the same whatever the arena trims. */
#include "backend/cpu/dnnl.h"
#include "core/internal.h"
#include "test.h"
#include "train/lora.h"
#include "train/sample_grad.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    ap_sd_model *m;
    ap_tensor *ctx, *xT;
    ap_tensor *ts[64];
    int n;
    int64_t nimg, ngrad;
} chain;

/* One training step (2 DDIM steps, both kept: forward and backward-data
 * layouts are both packed); the decoded image and the LoRA gradients into
 * img and grad. */
static void step(ap_ctx *c, chain *ch, float *img_out, float *grad_out) {
    ap_grad_sample_opts o;
    ap_grad_sample_defaults(&o);
    o.steps = 2;
    o.cfg = 3.0f;
    o.trunc.kind = AP_TRUNC_FULL;
    ap_rng g;
    ap_rng_init(&g, 7);
    for (int i = 0; i < ch->n; i++) ap_tensor_zero_grad(ch->ts[i]);
    ap_tensor *lat = NULL, *img = NULL;
    CHECK(ap_sample_with_grad(c, ch->m, &o, ch->ctx, ch->xT, &g, NULL, &lat, &img, NULL) == AP_OK);
    ap_tensor *r = img ? ap_mean(c, img) : NULL;
    CHECK(r && ap_backward(c, r, NULL) == AP_OK);
    CHECK_OK(c);
    if (img) {
        ch->nimg = ap_tensor_numel(img);
        memcpy(img_out, ap_tensor_cdata(img), (size_t)ch->nimg * sizeof(float));
    }
    int64_t off = 0;
    for (int i = 0; i < ch->n; i++) {
        ap_tensor *gt = ap_tensor_grad(ch->ts[i]);
        int64_t k = ap_tensor_numel(ch->ts[i]);
        if (gt) memcpy(grad_out + off, ap_tensor_cdata(gt), (size_t)k * sizeof(float));
        else memset(grad_out + off, 0, (size_t)k * sizeof(float));
        off += k;
    }
    ch->ngrad = off;
    ap_tensor_release(r);
    ap_tensor_release(lat);
    ap_tensor_release(img);
}

static int same_bits(const float *a, const float *b, int64_t n) { return !memcmp(a, b, (size_t)n * sizeof(float)); }

static void test_budget_on_chain(void) {
    ap_ctx *c = test_ctx();
    if (ap_cpu_has_bf16()) ap_set_precision(c, AP_PREC_BF16);
    ap_sd_config cfg;
    chain ch;
    memset(&ch, 0, sizeof ch);
    ap_lora_set *lora = NULL;
    CHECK(ap_sd_preset(c, "tiny", &cfg) == AP_OK);
    /* bf16 storage: every conv and linear weight is reordered or converted for use */
    CHECK(ap_sd_create(c, &cfg, AP_BF16, &ch.m) == AP_OK && ap_sd_init_random(c, ch.m, 3) == AP_OK);
    CHECK(ap_lora_create(c, &cfg.unet, 2, 0, 1, &lora) == AP_OK && ap_lora_attach(c, lora, ch.m->unet) == AP_OK);
    ch.n = ap_lora_tensors(lora, ch.ts);
    CHECK(ch.n > 0 && ch.n <= 64);
    test_rng r = {11};
    for (int i = 1; i < ch.n; i += 2) { /* nonzero up, so that every adapter gets a gradient */
        float *u = ap_tensor_data(ch.ts[i]);
        for (int64_t k = 0; k < ap_tensor_numel(ch.ts[i]); k++) u[k] = (float)(test_rng_uniform(&r) - 0.5);
        ap_tensor_touch(ch.ts[i]);
    }
    ch.ctx = test_rand(c, &r, 3, (int64_t[]){2, 77, cfg.unet.context_dim}, -1, 1);
    ch.xT = test_rand(c, &r, 4, (int64_t[]){1, 4, 4, 4}, -1, 1);
    CHECK_OK(c);
    enum { NI = 1 << 14, NG = 1 << 16 };
    static float img_all[NI], grad_all[NG], img[NI], grad[NG];

    /* everything cached: the second step packs nothing */
    CHECK(ap_set_pack_cache(c, SIZE_MAX) == AP_OK);
    step(c, &ch, img_all, grad_all);
    size_t base = ap_mem_in_use(c); /* the model and the LoRA gradients, made by the first step */
    CHECK(ch.nimg <= NI && ch.ngrad <= NG);
    ap_dnnl_stats s0 = ap_dnnl_get_stats(c);
    CHECK_MSG(s0.packs > 0 && s0.packs_transient == 0, "packs %lld, transient %lld", (long long)s0.packs,
              (long long)s0.packs_transient);
    size_t all_bytes = ap_mem_packed(c);
    CHECK(all_bytes > 0 && (int64_t)all_bytes == s0.pack_bytes);
    CHECK_MSG(all_bytes < AP_PACK_CACHE_DEFAULT, "the default budget holds a tiny model's %zu bytes", all_bytes);
    ap_mem_reset_peak(c);
    step(c, &ch, img, grad);
    size_t peak_all = ap_mem_peak(c);
    ap_dnnl_stats s1 = ap_dnnl_get_stats(c);
    CHECK_MSG(s1.packs == s0.packs && s1.packs_transient == 0, "no packing on the second step");
    CHECK(s1.pack_hits > s0.pack_hits);
    CHECK(same_bits(img, img_all, ch.nimg) && same_bits(grad, grad_all, ch.ngrad));
    CHECK(ap_mem_in_use(c) == base);

    /* none cached: lowering the budget frees the copies; every use packs into
     * the backend's scratch buffer for the one call */
    CHECK(ap_set_pack_cache(c, 0) == AP_OK);
    CHECK(ap_mem_packed(c) == 0 && ap_get_pack_cache(c) == 0);
    step(c, &ch, img, grad);
    ap_dnnl_stats s2 = ap_dnnl_get_stats(c);
    CHECK(s2.packs == s1.packs && s2.packs_transient > 0 && s2.pack_bytes == 0);
    CHECK(s2.pack_scratch_bytes > 0); /* one reused buffer, outside the tensors */
    CHECK_MSG(same_bits(img, img_all, ch.nimg), "image with no cache = with every weight cached");
    CHECK_MSG(same_bits(grad, grad_all, ch.ngrad), "LoRA gradients with no cache = with every weight cached");
    CHECK(ap_mem_in_use(c) == base);

    /* a budget of half the copies: some cached, the rest transient, never
     * more than the budget */
    size_t half = all_bytes / 2;
    CHECK(ap_set_pack_cache(c, half) == AP_OK);
    for (int rep = 0; rep < 2; rep++) {
        ap_dnnl_stats a = ap_dnnl_get_stats(c);
        step(c, &ch, img, grad);
        ap_dnnl_stats b = ap_dnnl_get_stats(c);
        CHECK_MSG(ap_mem_packed(c) <= half && ap_mem_packed(c) > 0, "packed %zu within the budget %zu",
                  ap_mem_packed(c), half);
        CHECK(b.packs_transient > a.packs_transient);
        if (rep == 1) CHECK_MSG(b.packs == a.packs && b.pack_evictions == a.pack_evictions, "a loop that does not fit keeps its cached set");
        CHECK(same_bits(img, img_all, ch.nimg) && same_bits(grad, grad_all, ch.ngrad));
    }

    /* an arena that keeps no cache: the same results and the same accounting */
    CHECK(ap_set_pack_cache(c, SIZE_MAX) == AP_OK);
    step(c, &ch, img, grad); /* packs everything again */
    ap_arena_set_keep(c->arena, 0);
    size_t trimmed0 = ap_arena_trimmed(c->arena);
    ap_mem_reset_peak(c);
    step(c, &ch, img, grad);
    CHECK_MSG(ap_mem_peak(c) == peak_all, "peak %zu with no arena cache = %zu", ap_mem_peak(c), peak_all);
    CHECK(ap_mem_in_use(c) == base);
    CHECK_MSG(ap_arena_trimmed(c->arena) == trimmed0, "a step of the same sizes finds every block: no trimming");
    CHECK(same_bits(img, img_all, ch.nimg) && same_bits(grad, grad_all, ch.ngrad));
    /* a request of a new size returns the whole cache */
    CHECK(ap_mem_reserved(c) > ap_mem_in_use(c));
    ap_tensor *other = ap_tensor_new(c, AP_F32, 1, (int64_t[]){777777});
    CHECK(ap_mem_reserved(c) == ap_mem_in_use(c) && ap_arena_trimmed(c->arena) > trimmed0);
    ap_tensor_release(other);

    ap_tensor_release(ch.ctx);
    ap_tensor_release(ch.xT);
    ap_lora_free(lora);
    ap_sd_free(ch.m);
    ap_ctx_free(c);
}

/* Cached copies that are no longer used (a model that ran once) make room for
 * the weights of a loop; the loop's own cached set is never evicted. */
static void test_dead_entries_make_room(void) {
    ap_ctx *c = test_ctx(); /* f32 precision: bf16 weights are converted for every use */
    test_rng r = {3};
    ap_tensor *x = test_rand(c, &r, 2, (int64_t[]){5, 48}, -1, 1);
    ap_tensor *w[5];
    for (int i = 0; i < 5; i++) {
        ap_tensor *wf = test_rand(c, &r, 2, (int64_t[]){48, 48}, -1, 1);
        w[i] = ap_tensor_new(c, AP_BF16, 2, (int64_t[]){48, 48});
        ap_convert(ap_tensor_data(w[i]), AP_BF16, ap_tensor_cdata(wf), AP_F32, 48 * 48);
        ap_tensor_release(wf);
    }
    ap_tensor *y = ap_linear(c, x, w[0], NULL); /* measures one copy's size */
    ap_tensor_release(y);
    size_t one = ap_mem_packed(c);
    CHECK(one >= 48 * 48 * sizeof(float));
    CHECK(ap_set_pack_cache(c, 0) == AP_OK && ap_set_pack_cache(c, 2 * one) == AP_OK);
    for (int i = 1; i <= 2; i++) ap_tensor_release(ap_linear(c, x, w[i], NULL)); /* used once: fill the budget */
    ap_dnnl_stats s0 = ap_dnnl_get_stats(c);
    for (int it = 0; it < 4; it++)
        for (int i = 3; i <= 4; i++) ap_tensor_release(ap_linear(c, x, w[i], NULL));
    ap_dnnl_stats s1 = ap_dnnl_get_stats(c);
    CHECK_OK(c);
    CHECK_MSG(s1.pack_evictions - s0.pack_evictions == 2, "the two dead copies evicted (%lld)",
              (long long)(s1.pack_evictions - s0.pack_evictions));
    CHECK(s1.packs - s0.packs == 2);
    CHECK_MSG(s1.pack_hits - s0.pack_hits >= 4, "the loop's weights then come from the cache");
    CHECK(ap_mem_packed(c) <= 2 * one);
    /* the first iteration had no reuse to judge by: it packed transiently */
    CHECK(s1.packs_transient - s0.packs_transient == 2);
    for (int i = 0; i < 5; i++) ap_tensor_release(w[i]);
    ap_tensor_release(x);
    ap_ctx_free(c);
}

static void test_env(void) {
    const char *bad[] = {"12X", "-5", "", "M"};
    for (int i = 0; i < 4; i++) {
        if (!*bad[i]) continue; /* an empty value means the default */
        setenv("AP_PACK_CACHE", bad[i], 1);
        ap_ctx *c = test_ctx();
        ap_get_pack_cache(c);
        CHECK_MSG(ap_last_status(c) == AP_ERR_INVALID_ARG && strstr(ap_last_error(c), "AP_PACK_CACHE"),
                  "'%s': %s", bad[i], ap_last_error(c));
        ap_ctx_free(c);
    }
    struct {
        const char *s;
        size_t v;
    } good[] = {{"64M", (size_t)64 << 20}, {"3k", 3072}, {"1G", (size_t)1 << 30}, {"0", 0}, {"all", SIZE_MAX}};
    for (int i = 0; i < 5; i++) {
        setenv("AP_PACK_CACHE", good[i].s, 1);
        ap_ctx *c = test_ctx();
        CHECK_MSG(ap_get_pack_cache(c) == good[i].v, "AP_PACK_CACHE=%s", good[i].s);
        CHECK_OK(c);
        ap_ctx_free(c);
    }
    unsetenv("AP_PACK_CACHE");
    ap_ctx *c = test_ctx();
    CHECK(ap_get_pack_cache(c) == AP_PACK_CACHE_DEFAULT);
    ap_ctx_free(c);
}

/* The arena on its own: a miss over the keep limit frees the blocks released
 * longest ago, hits never trim, and the counts stay exact. */
static void test_arena_trim(void) {
    ap_arena *a = ap_arena_create();
    CHECK(a != NULL);
    if (!a) return;
    const size_t MB = (size_t)1 << 20;
    ap_arena_set_keep(a, 2 * MB);
    void *p[6];
    for (int i = 0; i < 6; i++) p[i] = ap_arena_alloc(a, MB); /* class of exactly 1 MiB */
    CHECK(ap_arena_in_use(a) == 6 * MB && ap_arena_reserved(a) == 6 * MB && ap_arena_peak(a) == 6 * MB);
    for (int i = 0; i < 6; i++) ap_arena_release(a, p[i], MB);
    CHECK(ap_arena_in_use(a) == 0 && ap_arena_reserved(a) == 6 * MB && ap_arena_trimmed(a) == 0);
    /* hits do not trim, whatever the cache holds */
    void *q = ap_arena_alloc(a, MB);
    CHECK(q == p[5] && ap_arena_reserved(a) == 6 * MB); /* the most recent block of the class */
    ap_arena_release(a, q, MB);
    /* a miss (another class) with 6 MiB cached: back to 2 MiB cached, oldest first */
    void *big = ap_arena_alloc(a, 3 * MB);
    CHECK(ap_arena_trimmed(a) == 4 * MB);
    CHECK(ap_arena_reserved(a) == 2 * MB + 3 * MB && ap_arena_in_use(a) == 3 * MB);
    CHECK(ap_arena_peak(a) == 6 * MB);
    void *k1 = ap_arena_alloc(a, MB), *k2 = ap_arena_alloc(a, MB); /* the two kept are the newest */
    CHECK((k1 == p[5] || k1 == p[4]) && (k2 == p[5] || k2 == p[4]) && k1 != k2);
    CHECK(ap_arena_reserved(a) == 5 * MB && ap_arena_in_use(a) == 5 * MB);
    ap_arena_release(a, k1, MB);
    ap_arena_release(a, k2, MB);
    ap_arena_release(a, big, 3 * MB);
    /* a steady loop of mixed sizes: after the first round, no more trimming */
    ap_arena_set_keep(a, 0);
    size_t t0 = 0;
    for (int it = 0; it < 5; it++) {
        void *x = ap_arena_alloc(a, 700 << 10), *y = ap_arena_alloc(a, 5000), *z = ap_arena_alloc(a, 3 * MB);
        ap_arena_release(a, y, 5000);
        void *v = ap_arena_alloc(a, 5000);
        ap_arena_release(a, x, 700 << 10);
        ap_arena_release(a, v, 5000);
        ap_arena_release(a, z, 3 * MB);
        CHECK(ap_arena_in_use(a) == 0);
        if (it == 1) t0 = ap_arena_trimmed(a);
        if (it > 1) CHECK_MSG(ap_arena_trimmed(a) == t0, "round %d trims nothing", it);
    }
    ap_arena_trim(a);
    CHECK(ap_arena_reserved(a) == 0 && ap_arena_in_use(a) == 0);
    ap_arena_free(a);
}

int main(void) {
    test_arena_trim();
    test_env();
    test_dead_entries_make_room();
    test_budget_on_chain();
    return test_summary("memory");
}
