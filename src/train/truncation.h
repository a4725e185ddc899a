/* Truncated backpropagation through the sampling chain: which DDIM steps keep
 * the gradient of their UNet output. Exact definitions in docs/truncation.md. */
#ifndef AP_TRAIN_TRUNCATION_H
#define AP_TRAIN_TRUNCATION_H

#include "alignprop.h"
#include "diffusion/rng.h"

#include <stdbool.h>

typedef enum {
    AP_TRUNC_FIXED = 0,  /* fixed:K     gradient through the last K steps */
    AP_TRUNC_RAND_STEP,  /* rand-step:MIN:MAX  AlignProp's original: at every step i draw K_i in [MIN,MAX];
                            the UNet output of step i is detached when i < K_i */
    AP_TRUNC_RAND,       /* rand:MIN:MAX  one K in [MIN,MAX] per sample; the last K steps keep the gradient */
    AP_TRUNC_GAUSSIAN,   /* gaussian:MEAN:STD  one K ~ round(N(MEAN,STD)) clamped to [1,steps] per sample */
    AP_TRUNC_FULL,       /* full        every step */
} ap_trunc_kind;

typedef struct {
    ap_trunc_kind kind;
    int k, lo, hi;
    float mean, std;
} ap_trunc_policy;

/* Parses "fixed:K", "rand-step:MIN:MAX", "rand:MIN:MAX", "gaussian:MEAN:STD", "full". */
ap_status ap_trunc_parse(ap_ctx *c, const char *spec, ap_trunc_policy *out);
/* The spec of p, as ap_trunc_parse reads it, into buf. */
const char *ap_trunc_str(const ap_trunc_policy *p, char *buf, size_t n);
/* keep[i] for steps i = 0..steps-1 (0 = the first, noisiest step), drawing what
 * the policy needs from g (uniform draws, deterministic in the stream). */
ap_status ap_trunc_plan(ap_ctx *c, const ap_trunc_policy *p, int steps, ap_rng *g, bool *keep);

#endif
