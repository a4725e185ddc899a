/* Shared by bench/clip and bench/rewards: the flops ap_flops does not count.
 * ap_flops counts forward ops only; the input gradient of a conv or linear
 * costs what its forward did (frozen weights: no weight gradients) and
 * attention's backward 2.5x its forward (FlashAttention's convention, as
 * bench/attention), so backward = forward + 1.5 * attention. */
#ifndef AP_BENCH_CLIP_FLOPS_H
#define AP_BENCH_CLIP_FLOPS_H

#include "models/clip_vision.h"

/* Attention's forward flops of the vision tower for batch B: QK^T and PV,
 * 2 * 2 * T^2 * W per layer and image (all heads together); the last layer
 * attends from the class token only (T queries -> 1). */
static inline double clip_attention_flops(const ap_clip_vision_config *cfg, int B) {
    double G = (double)(cfg->image_size / cfg->patch), T = 1.0 + G * G;
    return 4.0 * T * cfg->width * ((cfg->layers - 1) * T + 1) * B;
}

/* Forward + input-gradient flops from the counted forward flops. */
static inline double clip_fwd_bwd_flops(double forward, const ap_clip_vision_config *cfg, int B) {
    return 2 * forward + 1.5 * clip_attention_flops(cfg, B);
}

#endif
