/* Rewards: one interface for every reward model, weighted mixtures parsed from
 * a spec string, a registry of reward names, and the losses that turn rewards
 * into the scalar the trainer backpropagates. See docs/rewards.md.
 *
 * A reward maps images [N,H,W,3] (f32, NHWC, values in [-1,1]) and their N
 * prompts to rewards [N]. It is built from differentiable core ops, so when the
 * images carry a gradient the tape backpropagates the reward to them (and on to
 * the model). Rewards hold no per-call state: forward may run many times. */
#ifndef AP_REWARDS_REWARD_H
#define AP_REWARDS_REWARD_H

#include "alignprop.h"

typedef struct ap_reward ap_reward;

struct ap_reward {
    const char *name; /* the registry name ("brightness") */
    /* images [N,H,W,3] -> rewards [N] (a new reference), or NULL with the error
     * in c. prompts: N strings, or NULL for rewards that ignore them. */
    ap_tensor *(*forward)(ap_ctx *c, ap_reward *self, ap_tensor *images, const char *const *prompts);
    void (*free)(ap_reward *self); /* frees user data and self; may be NULL (nothing owned) */
    void *user;
    /* Optional (NULL: none). Extra per-image numbers that evaluation reports
     * beside the reward, not differentiated (the jpeg rewards: libjpeg's exact
     * file size). For images [N,H,W,3] writes up to AP_REWARD_METRICS_MAX
     * names (static strings) and values[k*N + n]; returns how many, or -1 with
     * the error in c. */
    int (*metrics)(ap_ctx *c, ap_reward *self, ap_tensor *images, const char **names, double *values);
    /* The loss spec training uses when none is given ("target:10" for
     * aesthetic, as AlignProp's runs); NULL means "maximize". */
    const char *default_loss;
};
#define AP_REWARD_METRICS_MAX 8
/* The count reward's default gradient temperature (ap_reward_opts.count_temperature). */
#define AP_COUNT_GRAD_TEMPERATURE 4.0f

/* Options a reward's constructor may use. Zero-initialise; NULL means defaults. */
typedef struct {
    /* Where reward models find their weights; NULL: $AP_MODELS_DIR, else
     * $XDG_DATA_HOME/alignprop/models (~/.local/share/alignprop/models). See
     * ap_reward_models_dir. */
    const char *models_dir;
    /* The CLIP rewards' resize to their input size: "bilinear" (default),
     * "bilinear-noaa", "bicubic", "bicubic-noaa" (clip_rewards.h). */
    const char *resize;
    /* Storage of the reward models' frozen weights: AP_F32 (0) or AP_BF16 / AP_F16. */
    ap_dtype weights_dtype;
    /* The count reward's gradient temperature (0: AP_COUNT_GRAD_TEMPERATURE;
     * 1: the plain expected count's gradient). See count.c. */
    float count_temperature;
} ap_reward_opts;

/* The models directory opts (or the environment, or the default) names, in
 * buf; NULL when it does not fit. */
const char *ap_reward_models_dir(const ap_reward_opts *opts, char *buf, size_t n);

typedef ap_status (*ap_reward_create_fn)(ap_ctx *c, const ap_reward_opts *opts, ap_reward **out);

/* ------------------------------------------------------------ registry
 * Built-in rewards are listed in reward.c; ap_reward_register adds more at run
 * time (a plug-in, a test). Registration is not thread-safe: do it at start-up. */
ap_status ap_reward_register(ap_ctx *c, const char *name, ap_reward_create_fn create);
/* Number of registered names and the i-th, in registration order. */
int ap_reward_count(void);
const char *ap_reward_name(int i);
/* Creates the reward called name; unknown names are an error that lists the
 * known ones. */
ap_status ap_reward_create(ap_ctx *c, const char *name, const ap_reward_opts *opts, ap_reward **out);
void ap_reward_free(ap_reward *r); /* accepts NULL */

/* Checks images is f32 [N,H,W,3] with N, H, W >= 1; sets an error naming op
 * otherwise. Rewards call it first. */
int ap_reward_check_images(ap_ctx *c, const char *op, const ap_tensor *images);

/* ------------------------------------------------------------ mixtures
 * reward = sum_i w_i * r_i. Spec: comma-separated "NAME" (weight 1) or
 * "NAME=W" (W a finite decimal number, may be negative or 0), spaces around
 * items ignored, each name at most once: "brightness=1,saturation=0.5". */
#define AP_REWARD_MIX_MAX 16
typedef struct {
    int n;
    ap_reward *parts[AP_REWARD_MIX_MAX];
    float weights[AP_REWARD_MIX_MAX];
} ap_reward_mix;

/* Parses spec and creates its rewards. Errors name the offending item. */
ap_status ap_reward_mix_parse(ap_ctx *c, const char *spec, const ap_reward_opts *opts, ap_reward_mix **out);
void ap_reward_mix_free(ap_reward_mix *m); /* accepts NULL */
/* The mixture's rewards [N]. parts, when not NULL, receives each component's
 * rewards [N] (new references, on the tape like the total) for logging. */
ap_tensor *ap_reward_mix_forward(ap_ctx *c, ap_reward_mix *m, ap_tensor *images, const char *const *prompts,
                                 ap_tensor **parts);
/* The metrics of the mixture's parts, in order (a name two parts report is
 * kept once, from the first): names[k] and values[k*N + n], values holding
 * AP_REWARD_METRICS_MAX*N doubles. Returns how many (0 when no part has any),
 * or -1 with the error in c. */
int ap_reward_mix_metrics(ap_ctx *c, ap_reward_mix *m, ap_tensor *images, const char **names, double *values);
/* The loss training uses when the user names none: the reward's own default
 * (its default_loss) when the mixture is that one reward with weight 1, else
 * "maximize" (a target is a value of one reward, not of a weighted sum). */
const char *ap_reward_mix_default_loss(const ap_reward_mix *m);
/* The canonical spec ("brightness=1,saturation=0.5") into buf. */
const char *ap_reward_mix_str(const ap_reward_mix *m, char *buf, size_t n);

/* ------------------------------------------------------------ losses
 * maximize: -mean(r). minimize: mean(r). target:T: mean(|r - T|) (the aesthetic
 * runs of AlignProp; the gradient of |.| is sign, 0 at r == T). */
typedef enum { AP_LOSS_MAXIMIZE = 0, AP_LOSS_MINIMIZE, AP_LOSS_TARGET } ap_loss_kind;
typedef struct {
    ap_loss_kind kind;
    float target; /* AP_LOSS_TARGET only */
} ap_reward_loss;

ap_status ap_reward_loss_parse(ap_ctx *c, const char *spec, ap_reward_loss *out);
/* rewards [N] -> loss [1]. */
ap_tensor *ap_reward_loss_apply(ap_ctx *c, const ap_reward_loss *l, ap_tensor *rewards);
const char *ap_reward_loss_str(const ap_reward_loss *l, char *buf, size_t n);

/* ------------------------------------------------------------ built-ins (simple.c) */
ap_status ap_reward_create_brightness(ap_ctx *c, const ap_reward_opts *opts, ap_reward **out);
ap_status ap_reward_create_saturation(ap_ctx *c, const ap_reward_opts *opts, ap_reward **out);
/* jpeg.c: minus / plus the estimated JPEG size in kB at quality 95 */
ap_status ap_reward_create_jpeg(ap_ctx *c, const ap_reward_opts *opts, ap_reward **out);
ap_status ap_reward_create_jpeg_incompressibility(ap_ctx *c, const ap_reward_opts *opts, ap_reward **out);
/* count (count.c): the counting model's expected number of shapes, 1..5
 * (rewards/counter.h says where the weights come from). */
ap_status ap_reward_create_count(ap_ctx *c, const ap_reward_opts *opts, ap_reward **out);

#endif
