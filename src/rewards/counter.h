/* The counting model behind the `count` reward: a small CNN that predicts how
 * many shapes (0..5) an image of the shapes dataset holds, 0 standing for
 * "no countable shapes" (a blank picture, mush, a texture) (docs/rewards.md,
 * section count; the trainer is train/counter_train.h).
 *
 * images [N,64,64,3] in [-1,1] (other sizes are resized to 64x64 first)
 *   conv 3->16 s2, GN, SiLU          [N,32,32,16]
 *   conv 16->32, GN, SiLU            [N,32,32,32]
 *   conv 32->48 s2, GN, SiLU         [N,16,16,48]
 *   conv 48->64, GN, SiLU            [N,16,16,64]
 *   conv 64->64 s2, SiLU             [N,8,8,64]   (no norm: a per-image norm right
 *                                                  before the pooling would rescale
 *                                                  the per-shape evidence by the count)
 *   mean over the 8x8 positions      [N,64]
 *   linear 64->64, SiLU, linear 64->6  logits over the counts 0..5
 * count = sum_k p_k * k, p = softmax(logits): a smooth, bounded [0,5] count,
 * differentiable with respect to the image. All convs are 3x3, padding 1. */
#ifndef AP_REWARDS_COUNTER_H
#define AP_REWARDS_COUNTER_H

#include "alignprop.h"
#include "nn/nn.h"
#include "rewards/reward.h"

#define AP_COUNTER_CLASSES 6 /* counts 0..5; class k is the count k, 0: no countable shapes */
#define AP_COUNTER_SIZE 64   /* input resolution */
#define AP_COUNTER_CONVS 5

typedef struct {
    ap_params params; /* names "convs.<i>.weight", "norms.<i>.weight", "fc1.weight", ... */
    ap_conv_layer conv[AP_COUNTER_CONVS];
    ap_gn_layer norm[AP_COUNTER_CONVS - 1];
    ap_linear_layer fc1, fc2;
    ap_tensor *pool;   /* [64,1] 1/64: the mean over positions as a matmul */
    ap_tensor *counts; /* [1,6] the values 0..5 */
} ap_counter;

/* A counter with zeroed weights of dtype weight_dtype (f32 to train). */
ap_status ap_counter_create(ap_ctx *c, ap_dtype weight_dtype, ap_counter **out);
void ap_counter_free(ap_counter *m); /* accepts NULL */
/* PyTorch-style random initialisation (ap_params_init_random). */
ap_status ap_counter_init_random(ap_counter *m, uint64_t seed);
/* Loads f32 weights from a safetensors file (any float dtype stored), or from
 * a safetensors blob in memory (name stands for it in messages). Every
 * parameter must be present with its shape. */
ap_status ap_counter_load(ap_ctx *c, const char *path, ap_counter **out);
ap_status ap_counter_load_memory(ap_ctx *c, const char *name, const void *bytes, size_t len, ap_counter **out);
/* Writes the weights as dtype dt (f32 or f16), with n_meta metadata pairs. */
ap_status ap_counter_save(ap_counter *m, const char *path, ap_dtype dt, int n_meta, const char *const *keys,
                          const char *const *values);

/* images [N,H,W,3] -> logits [N,5]. */
ap_tensor *ap_counter_logits(ap_ctx *c, ap_counter *m, ap_tensor *images);
/* logits [N,6] -> probabilities (*probs, may be NULL) and the expected count [N]. */
ap_tensor *ap_counter_expected(ap_ctx *c, ap_counter *m, ap_tensor *logits, ap_tensor **probs);

/* The shipped weights embedded in the library (NULL and 0 when the build had
 * none), and the weights the count reward uses: $AP_COUNTER_WEIGHTS if set,
 * else models_dir/counter.safetensors when models_dir is given and the file
 * exists, else the embedded ones; none is an error saying how to get some. */
const void *ap_counter_embedded(size_t *len);
ap_status ap_counter_load_default(ap_ctx *c, const char *models_dir, ap_counter **out);

/* The count reward over the counter m, which it then owns (tests, a counter
 * just trained), with gradient temperature T (0: the default; 1: the plain
 * expected count's gradient; see count.c). On error m is not taken. */
ap_status ap_reward_count_from(ap_ctx *c, ap_counter *m, float temperature, ap_reward **out);

#endif
