#include "core/weight_args.h"

#include <stdio.h>

static bool is_float(ap_dtype dt) { return dt == AP_F32 || dt == AP_BF16 || dt == AP_F16; }

ap_status ap_check_weight(ap_ctx *c, const char *op, const ap_tensor *w, char *label, size_t label_size) {
    if (!w) return ap_seterr(c, AP_ERR_INVALID_ARG, "%s: weight is NULL", op);
    if (w->name && *w->name)
        snprintf(label, label_size, "weight %s", w->name);
    else
        snprintf(label, label_size, "weight");
    if (!is_float(w->dtype))
        return ap_seterr(c, AP_ERR_DTYPE, "%s: %s has dtype %s (need f32, bf16 or f16)", op, label,
                         ap_dtype_name(w->dtype));
    return AP_OK;
}

ap_status ap_check_bias(ap_ctx *c, const char *op, const ap_tensor *bias, const ap_tensor *w, const char *wl,
                        const char *what) {
    char a[96], b[96];
    if (!bias) return AP_OK;
    if (!is_float(bias->dtype)) return ap_seterr(c, AP_ERR_DTYPE, "%s: bias has dtype %s", op, ap_dtype_name(bias->dtype));
    if (bias->ndim != 1 || bias->shape[0] != w->shape[0])
        return ap_seterr(c, AP_ERR_SHAPE, "%s: bias %s does not match %s %s (%lld %s)", op,
                         ap_shape_str(bias, a, sizeof a), wl, ap_shape_str(w, b, sizeof b), (long long)w->shape[0],
                         what);
    return AP_OK;
}
