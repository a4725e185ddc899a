/* AdamW over f32 leaf tensors, as torch.optim.AdamW (decoupled weight decay),
 * with global-norm gradient clipping as torch.nn.utils.clip_grad_norm_, and
 * its state (step, m, v) saved to / loaded from safetensors for bit-exact
 * resume. */
#ifndef AP_TRAIN_OPTIM_H
#define AP_TRAIN_OPTIM_H

#include "alignprop.h"

#include <stdint.h>

typedef struct {
    double lr;            /* 1e-3 */
    double beta1, beta2;  /* 0.9, 0.999 */
    double eps;           /* 1e-8 */
    double weight_decay;  /* 1e-4 */
    double max_grad_norm; /* 1.0; <= 0 disables clipping */
} ap_adamw_config;

void ap_adamw_defaults(ap_adamw_config *cfg);

typedef struct {
    ap_ctx *ctx;
    ap_adamw_config cfg;
    int64_t step; /* steps taken */
    int n;
    ap_tensor **params; /* [n] retained, f32 */
    float *m, *v;       /* one allocation each, [total]: moment of params[i] at off[i] */
    int64_t *off;       /* [n+1] */
} ap_adamw;

/* The parameters must be distinct f32 tensors (typically leaves requiring a
 * gradient); moments start at zero. */
ap_status ap_adamw_create(ap_ctx *c, const ap_adamw_config *cfg, int n, ap_tensor *const *params, ap_adamw **out);
void ap_adamw_free(ap_adamw *o); /* accepts NULL */

/* Global 2-norm of the gradients of ts (those without a gradient count as
 * none), summed in double in a fixed order (tensor by tensor, element by
 * element). When max_norm > 0 and the norm exceeds it, every gradient is
 * multiplied by max_norm / (norm + 1e-6) (in f32, as torch does). Returns the
 * norm before clipping. */
double ap_clip_grad_norm(int n, ap_tensor *const *ts, double max_norm);

/* One step: clip (cfg.max_grad_norm), then for each parameter with a gradient
 * (one without is skipped, as torch skips p.grad None):
 *   p -= lr * wd * p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
 *   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
 * and ap_tensor_touch(p). grad_norm (may be NULL) receives the norm before
 * clipping. lr can be changed between steps through o->cfg.lr. */
ap_status ap_adamw_step(ap_adamw *o, double *grad_norm);
/* ap_tensor_zero_grad on every parameter. */
void ap_adamw_zero_grad(ap_adamw *o);

/* State file: "step" (i64 scalar), "m.<i>" and "v.<i>" (f32, the parameter's
 * shape), plus metadata with the config and each parameter's name. Written
 * atomically. Loading checks the count and shapes, and restores step, m, v
 * and the hyper-parameters, bit for bit. */
ap_status ap_adamw_save(ap_adamw *o, const char *path);
ap_status ap_adamw_load(ap_adamw *o, const char *path);

/* Learning-rate schedules, as the transformers / diffusers schedulers define
 * them: for the update after s completed steps (s = 0 for the first) of T,
 * with W warmup steps, factor = s/W while s < W, then with p = (s-W)/(T-W):
 * constant 1, linear 1 - p, cosine (1 + cos(pi p))/2 (never below 0). */
typedef enum { AP_LR_CONSTANT = 0, AP_LR_LINEAR, AP_LR_COSINE } ap_lr_kind;
typedef struct {
    ap_lr_kind kind;
    int warmup; /* steps */
} ap_lr_schedule;
/* "constant" | "linear" | "cosine"; -1 when unknown. */
int ap_lr_kind_parse(const char *name);
const char *ap_lr_kind_name(ap_lr_kind k);
/* The learning rate of the update after `done` completed steps of `total`. */
double ap_lr_at(const ap_lr_schedule *s, double base_lr, int done, int total);

#endif
