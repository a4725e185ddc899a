/* Argument checks shared by the ops that take a weight and an optional bias
 * (conv2d, linear): the same rules and the same messages for both. */
#ifndef AP_CORE_WEIGHT_ARGS_H
#define AP_CORE_WEIGHT_ARGS_H

#include "core/internal.h"

/* w is non-NULL and f32, bf16 or f16; label gets "weight" or "weight <name>"
 * for the caller's later messages. AP_OK or the error, set in c. */
ap_status ap_check_weight(ap_ctx *c, const char *op, const ap_tensor *w, char *label, size_t label_size);

/* A NULL bias is fine; else it is float and 1-D with w->shape[0] elements
 * (what: "outputs", "output channels"). wl: the label of ap_check_weight. */
ap_status ap_check_bias(ap_ctx *c, const char *op, const ap_tensor *bias, const ap_tensor *w, const char *wl,
                        const char *what);

#endif
