/* One reusable gradient check: central finite differences against ap_backward.
 *
 * f builds any output from the leaves in[0..n-1] (and whatever parameters it
 * reaches through user). The check contracts the output with a fixed random
 * tensor R (loss = sum(out * R), in double), backpropagates R, and compares the
 * gradient of every leaf that requires one (inputs and parameters alike, listed
 * in in[]) with (loss(x+eps) - loss(x-eps)) / 2eps, element by element (all
 * elements, or a random sample of max_elems per tensor). It prints the worst
 * mismatch per tensor. Used on single ops, whole blocks and the whole
 * reward-to-LoRA chain. */
#ifndef AP_GRADCHECK_H
#define AP_GRADCHECK_H

#include "alignprop.h"

typedef ap_tensor *(*gc_fn)(ap_ctx *c, void *user, int n, ap_tensor **in);

typedef struct {
    double eps;     /* perturbation (default 1e-3) */
    double rtol;    /* relative tolerance (default 1e-2) */
    double atol;    /* absolute tolerance, relative to the largest |grad| of the tensor (default 1e-3) */
    int max_elems;  /* elements checked per tensor; 0 = default 64; -1 = all */
    uint64_t seed;  /* for R and the sample */
    int verbose;
} gc_opts;

/* Returns 1 when every checked element passes (counts as one check per tensor). */
int gradcheck(ap_ctx *c, const char *label, gc_fn f, void *user, int n, ap_tensor **in,
              const gc_opts *opts);

#endif
