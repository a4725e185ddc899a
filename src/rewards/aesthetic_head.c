/* The LAION aesthetic predictor v2 head (sac+logos+ava1-l14-linearMSE.pth),
 * embedded in the library and collapsed to one affine map.
 *
 * The head is nn.Sequential(Linear 768->1024, Dropout, Linear 1024->128,
 * Dropout, Linear 128->64, Dropout, Linear 64->16, Linear 16->1) with no
 * activations, and dropout is the identity at inference, so
 *   score(e) = W7 (W6 (W4 (W2 (W0 e + b0) + b2) + b4) + b6) + b7 = w . e + b
 * with w = (W7 W6 W4 W2 W0)^T and b = score(0). Both are computed once, in
 * double, from the file's f32 tensors: the reward then costs one dot product
 * per image and stays f32 whatever the context's precision (a bf16 matmul
 * would cost the score about two significant digits). */
#include "rewards/clip_rewards.h"

#include "core/embed.h"
#include "core/internal.h"
#include "io/torchfile.h"

#include <stdlib.h>

/* The build passes the asset's path as AP_AESTHETIC_PTH (core/embed.h). */
#ifdef AP_AESTHETIC_PTH
AP_EMBED_FILE(ap_aesthetic_pth, AP_AESTHETIC_PTH);
#endif

#define N_LAYERS 5
static const char *const LAYER[N_LAYERS] = {"layers.0", "layers.2", "layers.4", "layers.6", "layers.7"};
static const int64_t DIMS[N_LAYERS + 1] = {AP_AESTHETIC_DIM, 1024, 128, 64, 16, 1};

ap_status ap_aesthetic_head_from_torchfile(ap_ctx *c, const ap_torchfile *pt, const char *what,
                                           ap_aesthetic_head *out) {
    if (ap_failed(c)) return c->status;
    ap_tensor *wt[N_LAYERS] = {0}, *bt[N_LAYERS] = {0};
    ap_status st = AP_OK;
    for (int l = 0; l < N_LAYERS && st == AP_OK; l++) {
        char name[64];
        int64_t shape[AP_MAX_DIMS];
        for (int k = 0; k < 2 && st == AP_OK; k++) {
            snprintf(name, sizeof name, "%s.%s", LAYER[l], k ? "bias" : "weight");
            int i = ap_pt_find(pt, name);
            if (i < 0) {
                st = ap_seterr(c, AP_ERR_NOT_FOUND, "aesthetic head %s: tensor %s is missing", what, name);
                break;
            }
            int nd = ap_pt_shape(pt, i, shape);
            bool ok = k ? nd == 1 && shape[0] == DIMS[l + 1]
                        : nd == 2 && shape[0] == DIMS[l + 1] && shape[1] == DIMS[l];
            if (!ok) {
                char want[48];
                if (k) snprintf(want, sizeof want, "[%lld]", (long long)DIMS[l + 1]);
                else snprintf(want, sizeof want, "[%lld,%lld]", (long long)DIMS[l + 1], (long long)DIMS[l]);
                st = ap_seterr(c, AP_ERR_SHAPE, "aesthetic head %s: tensor %s has the wrong shape (expected %s)", what,
                               name, want);
                break;
            }
            st = ap_pt_load(c, pt, name, AP_F32, k ? &bt[l] : &wt[l]);
        }
    }
    double *v = NULL, *a = NULL;
    if (st == AP_OK) {
        v = malloc(sizeof(double) * 1024);
        a = malloc(sizeof(double) * 1024);
        if (!v || !a) st = ap_seterr(c, AP_ERR_NOMEM, "aesthetic head: out of memory");
    }
    if (st == AP_OK) {
        /* b = the forward pass from e = 0 */
        for (int64_t j = 0; j < DIMS[1]; j++) a[j] = ap_cf32(bt[0])[j];
        for (int l = 1; l < N_LAYERS; l++) {
            const float *W = ap_cf32(wt[l]), *B = ap_cf32(bt[l]);
            for (int64_t o = 0; o < DIMS[l + 1]; o++) {
                double s = B[o];
                for (int64_t i = 0; i < DIMS[l]; i++) s += (double)W[o * DIMS[l] + i] * a[i];
                v[o] = s;
            }
            for (int64_t o = 0; o < DIMS[l + 1]; o++) a[o] = v[o];
        }
        out->b = a[0];
        /* w^T = W7 W6 W4 W2 W0: a row vector pushed back through the layers */
        a[0] = 1.0;
        for (int l = N_LAYERS - 1; l >= 0; l--) {
            const float *W = ap_cf32(wt[l]);
            for (int64_t i = 0; i < DIMS[l]; i++) v[i] = 0.0;
            for (int64_t o = 0; o < DIMS[l + 1]; o++)
                for (int64_t i = 0; i < DIMS[l]; i++) v[i] += a[o] * W[o * DIMS[l] + i];
            for (int64_t i = 0; i < DIMS[l]; i++) a[i] = v[i];
        }
        for (int i = 0; i < AP_AESTHETIC_DIM; i++) out->w[i] = a[i];
    }
    free(v);
    free(a);
    for (int l = 0; l < N_LAYERS; l++) {
        ap_tensor_release(wt[l]);
        ap_tensor_release(bt[l]);
    }
    return st;
}

ap_status ap_aesthetic_head_load(ap_ctx *c, const char *path, ap_aesthetic_head *out) {
    if (!c) return AP_ERR_INVALID_ARG;
    if (!out || !path) return ap_seterr(c, AP_ERR_INVALID_ARG, "aesthetic head: %s is NULL", out ? "path" : "out");
    ap_torchfile *pt = NULL;
    ap_status st = ap_pt_open(c, path, &pt);
    if (st == AP_OK) st = ap_aesthetic_head_from_torchfile(c, pt, path, out);
    ap_pt_close(pt);
    return st;
}

ap_status ap_aesthetic_head_builtin(ap_ctx *c, ap_aesthetic_head *out) {
    if (!c || !out) return c ? ap_seterr(c, AP_ERR_INVALID_ARG, "aesthetic head: out is NULL") : AP_ERR_INVALID_ARG;
#ifdef AP_AESTHETIC_PTH
    static const char name[] = "bundled sac+logos+ava1-l14-linearMSE.pth";
    ap_torchfile *pt = NULL;
    ap_status st = ap_pt_open_memory(c, name, ap_aesthetic_pth, AP_EMBED_SIZE(ap_aesthetic_pth), &pt);
    if (st == AP_OK) st = ap_aesthetic_head_from_torchfile(c, pt, name, out);
    ap_pt_close(pt);
    return st;
#else
    return ap_seterr(c, AP_ERR_UNSUPPORTED,
                     "aesthetic head: this build has no bundled sac+logos+ava1-l14-linearMSE.pth");
#endif
}
