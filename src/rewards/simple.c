/* Simple differentiable rewards for tests and demos; they ignore the prompts.
 * Images x [N,H,W,3] in [-1,1]; u = (x+1)/2 is the image in [0,1].
 *
 * brightness: r[n] = mean over (h, w, c) of u. Range [0,1].
 * saturation: r[n] = mean over pixels of (sqrt(var_c(u) + eps) - sqrt(eps)),
 *   var_c the population variance of the pixel's three channels, eps = 1e-4.
 *   The per-pixel channel std is a smooth stand-in for max - min (which has a
 *   kink wherever two channels tie); eps keeps the gradient finite on grey
 *   pixels (there it is 0 by symmetry, and the value is exactly 0). Range
 *   [0, ~0.462]: a pure primary colour has std sqrt(2)/3 = 0.471.
 * Neither clamps: values outside [-1,1] extend the formulas linearly / as is,
 * so the gradient is never cut off. */
#include "core/internal.h"
#include "rewards/reward.h"

#include <math.h>
#include <stdlib.h>

#define SATURATION_EPS 1e-4f

static ap_tensor *brightness_forward(ap_ctx *c, ap_reward *self, ap_tensor *x, const char *const *prompts) {
    (void)self;
    (void)prompts;
    if (!ap_reward_check_images(c, "brightness", x)) return NULL;
    int64_t N = x->shape[0];
    ap_tensor *flat = ap_reshape(c, x, 2, (int64_t[]){N, -1}); // [N, H*W*3]
    ap_tensor *m = ap_mean_rows(c, flat);                       // [N], mean of x
    ap_tensor *h = ap_scale(c, m, 0.5f);
    ap_tensor *r = ap_add_scalar(c, h, 0.5f); /* mean of (x+1)/2 */
    ap_tensor_release(flat);
    ap_tensor_release(m);
    ap_tensor_release(h);
    return r;
}

static ap_tensor *saturation_forward(ap_ctx *c, ap_reward *self, ap_tensor *x, const char *const *prompts) {
    (void)self;
    (void)prompts;
    if (!ap_reward_check_images(c, "saturation", x)) return NULL;
    int64_t N = x->shape[0], H = x->shape[1], W = x->shape[2];
    ap_tensor *m = ap_mean_rows(c, x);                               // [N,H,W] channel mean
    ap_tensor *m1 = ap_reshape(c, m, 4, (int64_t[]){N, H, W, 1});   // [N,H,W,1]
    ap_tensor *d = ap_sub(c, x, m1);                                 // [N,H,W,3]
    ap_tensor *d2 = ap_square(c, d);
    ap_tensor *v = ap_mean_rows(c, d2);                              // [N,H,W] variance of x
    ap_tensor *vu = ap_scale(c, v, 0.25f);                           /* variance of u = (x+1)/2 */
    ap_tensor *ve = ap_add_scalar(c, vu, SATURATION_EPS);
    ap_tensor *s = ap_sqrt(c, ve);
    ap_tensor *sf = ap_reshape(c, s, 2, (int64_t[]){N, H * W});     // [N, H*W]
    ap_tensor *ms = ap_mean_rows(c, sf);                             // [N]
    ap_tensor *r = ap_add_scalar(c, ms, -sqrtf(SATURATION_EPS));
    ap_tensor *t[] = {m, m1, d, d2, v, vu, ve, s, sf, ms};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) ap_tensor_release(t[i]);
    return r;
}

static void simple_free(ap_reward *r) { free(r); }

static ap_status make(ap_ctx *c, const char *name,
                      ap_tensor *(*fwd)(ap_ctx *, ap_reward *, ap_tensor *, const char *const *),
                      ap_reward **out) {
    ap_reward *r = calloc(1, sizeof *r);
    if (!r) return ap_seterr(c, AP_ERR_NOMEM, "reward %s: out of memory", name);
    r->name = name;
    r->forward = fwd;
    r->free = simple_free;
    *out = r;
    return AP_OK;
}

ap_status ap_reward_create_brightness(ap_ctx *c, const ap_reward_opts *opts, ap_reward **out) {
    (void)opts;
    return make(c, "brightness", brightness_forward, out);
}

ap_status ap_reward_create_saturation(ap_ctx *c, const ap_reward_opts *opts, ap_reward **out) {
    (void)opts;
    return make(c, "saturation", saturation_forward, out);
}
