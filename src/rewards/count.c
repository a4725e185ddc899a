/* The `count` reward: the counting model's expected number of shapes (1..5)
 * in each image, differentiable with respect to the image. Its weights are
 * frozen; see counter.h for the model and where its weights come from. */
#include "core/internal.h"
#include "rewards/counter.h"
#include "rewards/reward.h"

#include <stdlib.h>

static ap_tensor *count_forward(ap_ctx *c, ap_reward *self, ap_tensor *x, const char *const *prompts) {
    (void)prompts;
    if (!ap_reward_check_images(c, "count", x)) return NULL;
    ap_counter *m = self->user;
    ap_tensor *logits = ap_counter_logits(c, m, x); // [N,5]
    ap_tensor *r = ap_counter_expected(c, m, logits, NULL); // [N]
    ap_tensor_release(logits);
    return r;
}

static void count_free(ap_reward *r) {
    ap_counter_free(r->user);
    free(r);
}

ap_status ap_reward_count_from(ap_ctx *c, ap_counter *m, ap_reward **out) {
    ap_reward *r = calloc(1, sizeof *r);
    if (!r) return ap_seterr(c, AP_ERR_NOMEM, "reward count: out of memory");
    r->name = "count";
    r->forward = count_forward;
    r->free = count_free;
    r->user = m;
    *out = r;
    return AP_OK;
}

ap_status ap_reward_create_count(ap_ctx *c, const ap_reward_opts *opts, ap_reward **out) {
    *out = NULL;
    ap_counter *m = NULL;
    if (ap_counter_load_default(c, opts ? opts->models_dir : NULL, &m) != AP_OK) return c->status;
    ap_status s = ap_reward_count_from(c, m, out);
    if (s != AP_OK) ap_counter_free(m);
    return s;
}
