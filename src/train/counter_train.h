/* Training the counting model (rewards/counter.h) on the shapes stream
 * (train/shapes.h), with full weight gradients and AdamW. docs/rewards.md,
 * section count, says how the shipped weights were made. */
#ifndef AP_TRAIN_COUNTER_TRAIN_H
#define AP_TRAIN_COUNTER_TRAIN_H

#include "rewards/counter.h"

#include <stdbool.h>
#include <stdint.h>

/* The held-out stream: items 0.. of this seed, never used for training (a
 * training run with this seed is refused). */
#define AP_COUNTER_EVAL_SEED 0x5EEDC0C0ull

typedef struct {
    int steps;       /* optimizer steps */
    int batch;       /* images per step (32) */
    double lr;       /* peak learning rate (2e-3): 5% linear warm-up, cosine decay to 10% */
    double weight_decay; /* 1e-4 */
    uint64_t seed;   /* data stream, augmentations and initialisation */
    int augment;     /* 1: noise, blur, colour jitter, flips (default) */
    int cycle;       /* 0: fresh items every step; k > 0: cycle over items 0..k-1 (tests) */
    /* called after every step (may be NULL) */
    void (*on_step)(void *user, int step, int steps, double loss);
    void *user;
} ap_counter_train_opts;

void ap_counter_train_defaults(ap_counter_train_opts *o);

/* Trains m (its f32 weights) in place. losses, when not NULL, receives the
 * loss of every step (steps values). The loss per image is the Brier score of
 * the class probabilities plus 0.25 (count - true count)^2. Deterministic for
 * a given seed and thread count. */
ap_status ap_counter_train(ap_ctx *c, ap_counter *m, const ap_counter_train_opts *o, double *losses);

/* Accuracy (rounded expected count == true count) and mean absolute count
 * error on items 0..n-1 of stream seed: augment 0 clean, 1 augmented, 2 the
 * negative pictures of those items (ap_counter_negative, augmented; count 0). */
ap_status ap_counter_evaluate(ap_ctx *c, ap_counter *m, uint64_t seed, int n, int augment, double *accuracy,
                              double *mae);

/* The training augmentations, applied in place to one image [64,64,3] in
 * [-1,1]; a pure function of (seed, index). */
void ap_counter_augment(float *img, uint64_t seed, uint64_t index);

/* Class 0, "no countable shapes": whether item index of stream seed is
 * replaced by a negative picture in training (one in AP_COUNTER_CLASSES), and
 * that picture [64,64,3] in [-1,1]: a plain background, mush (overlapping
 * blobs, blurred), confetti (dots too small to be shapes) or a smooth random
 * texture. Pure functions of (seed, index). */
bool ap_counter_is_negative(uint64_t seed, uint64_t index);
void ap_counter_negative(float *img, uint64_t seed, uint64_t index);

#endif
