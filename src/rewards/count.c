/* The `count` reward: the counting model's expected number of shapes (0..5)
 * in each image, differentiable with respect to the image. Its weights are
 * frozen; see counter.h for the model and where its weights come from. */
#include "core/internal.h"
#include "rewards/counter.h"
#include "rewards/reward.h"

#include <math.h>
#include <stdlib.h>

typedef struct {
    ap_counter *m;
    float temperature;
} count_reward;

/* The reward's value is the expected count E = sum_k k softmax(l)_k of the
 * counter's logits l. Its gradient is that of the tempered count
 * E_T = sum_k k softmax(l / T)_k: the counter is confident on most images
 * (softmax saturated), so dE/dl = p_k (k - E) is nearly zero on exactly the
 * images a count loss must move, and an image drawn to a wrong count stays
 * there. The value is detach(E) + (E_T - detach(E_T)): E exactly, with E_T's
 * gradient. */
static ap_tensor *count_forward(ap_ctx *c, ap_reward *self, ap_tensor *x, const char *const *prompts) {
    (void)prompts;
    if (!ap_reward_check_images(c, "count", x)) return NULL;
    count_reward *cr = self->user;
    ap_counter *m = cr->m;
    const float T = cr->temperature;
    ap_tensor *logits = ap_counter_logits(c, m, x); // [N,6]
    ap_tensor *r = ap_counter_expected(c, m, logits, NULL); // [N]
    if (r && T != 1.0f && ap_grad_enabled(c)) {
        ap_tensor *sl = ap_scale(c, logits, 1.0f / T);
        ap_tensor *et = sl ? ap_counter_expected(c, m, sl, NULL) : NULL;
        ap_tensor *dt = et ? ap_detach(c, et) : NULL;
        ap_tensor *d = dt ? ap_axpby(c, 1.0f, et, -1.0f, dt) : NULL;
        ap_tensor *rd = d ? ap_detach(c, r) : NULL;
        ap_tensor *r2 = rd ? ap_axpby(c, 1.0f, rd, 1.0f, d) : NULL;
        ap_tensor_release(rd);
        ap_tensor_release(sl);
        ap_tensor_release(et);
        ap_tensor_release(dt);
        ap_tensor_release(d);
        ap_tensor_release(r);
        r = r2;
    }
    ap_tensor_release(logits);
    return r;
}

static void count_free(ap_reward *r) {
    count_reward *cr = r->user;
    ap_counter_free(cr->m);
    free(cr);
    free(r);
}

ap_status ap_reward_count_from(ap_ctx *c, ap_counter *m, float temperature, ap_reward **out) {
    *out = NULL;
    if (temperature == 0) temperature = AP_COUNT_GRAD_TEMPERATURE;
    if (!(temperature > 0) || !isfinite(temperature))
        return ap_seterr(c, AP_ERR_INVALID_ARG, "reward count: the gradient temperature must be > 0 (got %g)",
                         (double)temperature);
    ap_reward *r = calloc(1, sizeof *r);
    count_reward *cr = calloc(1, sizeof *cr);
    if (!r || !cr) {
        free(r);
        free(cr);
        return ap_seterr(c, AP_ERR_NOMEM, "reward count: out of memory");
    }
    cr->m = m;
    cr->temperature = temperature;
    r->name = "count";
    r->forward = count_forward;
    r->free = count_free;
    r->user = cr;
    *out = r;
    return AP_OK;
}

ap_status ap_reward_create_count(ap_ctx *c, const ap_reward_opts *opts, ap_reward **out) {
    *out = NULL;
    ap_counter *m = NULL;
    if (ap_counter_load_default(c, opts ? opts->models_dir : NULL, &m) != AP_OK) return c->status;
    ap_status s = ap_reward_count_from(c, m, opts ? opts->count_temperature : 0.0f, out);
    if (s != AP_OK) ap_counter_free(m);
    return s;
}
