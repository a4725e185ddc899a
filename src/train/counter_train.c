/* Training and evaluating the counting model (counter_train.h). */
#include "train/counter_train.h"

#include "core/internal.h"
#include "train/optim.h"
#include "train/shapes.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define S AP_SHAPES_SIZE
#define IMG (S * S * 3)

void ap_counter_train_defaults(ap_counter_train_opts *o) {
    memset(o, 0, sizeof *o);
    o->steps = 600;
    o->batch = 32;
    o->lr = 2e-3;
    o->weight_decay = 1e-4;
    o->augment = 1;
}

static uint64_t mix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static double unif(uint64_t *s) { return (double)(mix(s) >> 11) * 0x1.0p-53; }
static double gauss(uint64_t *s) {
    double u = unif(s), v = unif(s);
    return sqrt(-2.0 * log(u + 1e-300)) * cos(2 * M_PI * v);
}

/* [1,2,1]/4 blur along x and y, edges clamped. tmp [IMG]. */
static void blur(float *img, float *tmp) {
    for (int pass = 0; pass < 2; pass++) {
        const float *src = pass ? tmp : img;
        float *dst = pass ? img : tmp;
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++) {
                int a = pass ? (y > 0 ? y - 1 : 0) : (x > 0 ? x - 1 : 0);
                int b = pass ? (y < S - 1 ? y + 1 : y) : (x < S - 1 ? x + 1 : x);
                for (int k = 0; k < 3; k++) {
                    float l = pass ? src[(a * S + x) * 3 + k] : src[(y * S + a) * 3 + k];
                    float r = pass ? src[(b * S + x) * 3 + k] : src[(y * S + b) * 3 + k];
                    dst[(y * S + x) * 3 + k] = 0.25f * l + 0.5f * src[(y * S + x) * 3 + k] + 0.25f * r;
                }
            }
    }
}

/* A disc of colour col ([-1,1]) at (cx, cy), radius r, anti-aliased. */
static void disc(float *img, double cx, double cy, double r, const float col[3]) {
    for (int y = (int)floor(cy - r - 1); y <= (int)ceil(cy + r + 1); y++)
        for (int x = (int)floor(cx - r - 1); x <= (int)ceil(cx + r + 1); x++) {
            if (x < 0 || y < 0 || x >= S || y >= S) continue;
            double d = sqrt((x + 0.5 - cx) * (x + 0.5 - cx) + (y + 0.5 - cy) * (y + 0.5 - cy)) - r;
            float a = (float)fmin(1.0, fmax(0.0, 0.5 - d));
            for (int k = 0; k < 3; k++) img[(y * S + x) * 3 + k] = (1 - a) * img[(y * S + x) * 3 + k] + a * col[k];
        }
}

static void random_colour(uint64_t *s, float col[3]) {
    if (unif(s) < 0.6) {
        const unsigned char *rgb = ap_shape_color_rgb[(int)(AP_COLORS * unif(s)) % AP_COLORS];
        for (int k = 0; k < 3; k++) col[k] = rgb[k] / 127.5f - 1.0f;
    } else {
        for (int k = 0; k < 3; k++) col[k] = (float)(2 * unif(s) - 1);
    }
}

/* Specks: 1 to 12 anti-aliased dots of a palette colour, radius 0.6 to 2
 * pixels (the smallest shape has radius 6), which count for nothing. A
 * diffusion model fine-tuned on the count reward without them learned to
 * raise the count by scattering such confetti. */
static void specks(float *img, uint64_t *s) {
    int n = 1 + (int)(12 * unif(s));
    for (int j = 0; j < n; j++) {
        const unsigned char *rgb = ap_shape_color_rgb[(int)(AP_COLORS * unif(s)) % AP_COLORS];
        const float col[3] = {rgb[0] / 127.5f - 1.0f, rgb[1] / 127.5f - 1.0f, rgb[2] / 127.5f - 1.0f};
        double cx = S * unif(s), cy = S * unif(s), r = 0.6 + 1.4 * unif(s);
        disc(img, cx, cy, r, col);
    }
}

bool ap_counter_is_negative(uint64_t seed, uint64_t index) {
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + index * 0xd1342543de82ef95ull + 0x5851f42d4c957f2dull;
    return mix(&s) % AP_COUNTER_CLASSES == 0;
}

void ap_counter_negative(float *img, uint64_t seed, uint64_t index) {
    uint64_t s = seed * 0xbf58476d1ce4e5b9ull + 0x94d049bb133111ebull;
    s ^= mix(&s) + index;
    mix(&s);
    const unsigned char *bg = ap_shape_background_rgb[(int)(AP_SHAPES_BACKGROUNDS * unif(&s)) % AP_SHAPES_BACKGROUNDS];
    for (int i = 0; i < S * S; i++)
        for (int k = 0; k < 3; k++) img[i * 3 + k] = bg[k] / 127.5f - 1.0f;
    float col[3], tmp[IMG];
    int kind = (int)(4 * unif(&s)) % 4;
    if (kind == 1) { /* mush: many overlapping blobs of all sizes, softened */
        int n = 12 + (int)(30 * unif(&s));
        for (int j = 0; j < n; j++) {
            random_colour(&s, col);
            disc(img, S * unif(&s), S * unif(&s), 2 + 12 * unif(&s), col);
        }
        int blurs = 1 + (int)(3 * unif(&s));
        for (int b = 0; b < blurs; b++) blur(img, tmp);
    } else if (kind == 2) { /* confetti: only dots too small to be shapes */
        int n = 15 + (int)(60 * unif(&s));
        for (int j = 0; j < n; j++) {
            random_colour(&s, col);
            disc(img, S * unif(&s), S * unif(&s), 0.6 + 1.4 * unif(&s), col);
        }
    } else if (kind == 3) { /* texture: smooth random colour fields on a grid of 4 to 16 cells a side */
        int g = 4 << ((int)(3 * unif(&s)) % 3);
        float amp = (float)(0.3 + 0.7 * unif(&s)), grid[17 * 17 * 3];
        for (int i = 0; i < (g + 1) * (g + 1) * 3; i++) grid[i] = (float)(2 * unif(&s) - 1);
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++) {
                double fx = (double)x * g / S, fy = (double)y * g / S;
                int x0 = (int)fx, y0 = (int)fy;
                double ax = fx - x0, ay = fy - y0;
                for (int k = 0; k < 3; k++) {
                    double v = (1 - ax) * (1 - ay) * grid[(y0 * (g + 1) + x0) * 3 + k] +
                               ax * (1 - ay) * grid[(y0 * (g + 1) + x0 + 1) * 3 + k] +
                               (1 - ax) * ay * grid[((y0 + 1) * (g + 1) + x0) * 3 + k] +
                               ax * ay * grid[((y0 + 1) * (g + 1) + x0 + 1) * 3 + k];
                    float *p = &img[(y * S + x) * 3 + k];
                    *p = (1 - amp) * *p + amp * (float)v;
                }
            }
    } /* kind 0: the plain background */
}

/* Cheap stand-ins for what a tiny diffusion model gets wrong: soft edges,
 * grain, specks, shifted colours and brightness. Flips keep the count. */
void ap_counter_augment(float *img, uint64_t seed, uint64_t index) {
    uint64_t s = seed * 0xd1342543de82ef95ull + 0x632be59bd9b4e019ull;
    s ^= mix(&s) + index;
    mix(&s);
    float tmp[IMG];
    if (unif(&s) < 0.5) { /* horizontal flip */
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S / 2; x++)
                for (int k = 0; k < 3; k++) {
                    float t = img[(y * S + x) * 3 + k];
                    img[(y * S + x) * 3 + k] = img[(y * S + S - 1 - x) * 3 + k];
                    img[(y * S + S - 1 - x) * 3 + k] = t;
                }
    }
    if (unif(&s) < 0.5) { /* vertical flip */
        for (int y = 0; y < S / 2; y++)
            for (int i = 0; i < S * 3; i++) {
                float t = img[y * S * 3 + i];
                img[y * S * 3 + i] = img[(S - 1 - y) * S * 3 + i];
                img[(S - 1 - y) * S * 3 + i] = t;
            }
    }
    if (unif(&s) < 0.5) specks(img, &s);
    double u = unif(&s);
    int blurs = u < 0.4 ? 0 : u < 0.75 ? 1 : 2;
    for (int b = 0; b < blurs; b++) blur(img, tmp);
    /* colour jitter: contrast about 0, brightness, per-channel gain and offset */
    float contrast = (float)(0.7 + 0.5 * unif(&s)), bright = (float)(0.3 * (unif(&s) - 0.5));
    float gain[3], off[3];
    for (int k = 0; k < 3; k++) {
        gain[k] = (float)(0.85 + 0.3 * unif(&s));
        off[k] = (float)(0.12 * (unif(&s) - 0.5));
    }
    float sigma = unif(&s) < 0.3 ? 0.0f : (float)(0.15 * unif(&s));
    for (int i = 0; i < S * S; i++)
        for (int k = 0; k < 3; k++) {
            float v = img[i * 3 + k] * contrast * gain[k] + bright + off[k];
            if (sigma > 0) v += sigma * (float)gauss(&s);
            img[i * 3 + k] = v;
        }
}

/* The batch of step `step`: images [B,64,64,3] and their true counts. */
static ap_tensor *make_batch(ap_ctx *c, const ap_counter_train_opts *o, int step, int *counts) {
    ap_tensor *x = ap_tensor_new(c, AP_F32, 4, (int64_t[]){o->batch, S, S, 3});
    if (!x) return NULL;
    float *p = ap_f32(x);
    for (int i = 0; i < o->batch; i++) {
        uint64_t index = (uint64_t)step * (uint64_t)o->batch + (uint64_t)i;
        if (o->cycle > 0) index %= (uint64_t)o->cycle;
        ap_shapes_item it;
        ap_shapes_item_make(o->seed, index, &it);
        counts[i] = it.count;
        if (ap_counter_is_negative(o->seed, index)) {
            ap_counter_negative(p + (size_t)i * IMG, o->seed, index);
            counts[i] = 0;
        } else {
            ap_shapes_render_f32(&it, p + (size_t)i * IMG);
        }
        /* augmentations are drawn per step, so a cycled item is seen differently each time */
        if (o->augment) ap_counter_augment(p + (size_t)i * IMG, o->seed, (uint64_t)step * o->batch + i);
    }
    return x;
}

/* Brier score + 0.25 squared count error, averaged over the batch -> [1]. */
static ap_tensor *count_loss(ap_ctx *c, ap_counter *m, ap_tensor *x, const int *counts, int B) {
    float onehot[256 * AP_COUNTER_CLASSES], target[256];
    for (int i = 0; i < B; i++) {
        for (int k = 0; k < AP_COUNTER_CLASSES; k++) onehot[i * AP_COUNTER_CLASSES + k] = (k == counts[i]);
        target[i] = (float)counts[i];
    }
    ap_tensor *oh = ap_tensor_from_data(c, AP_F32, 2, (int64_t[]){B, AP_COUNTER_CLASSES}, onehot);
    ap_tensor *tg = ap_tensor_from_data(c, AP_F32, 1, (int64_t[]){B}, target);
    ap_tensor *probs = NULL;
    ap_tensor *logits = ap_counter_logits(c, m, x);
    ap_tensor *e = ap_counter_expected(c, m, logits, &probs); // [B]
    ap_tensor *d = ap_sub(c, probs, oh);
    ap_tensor *d2 = ap_square(c, d);
    ap_tensor *brier = ap_sum_rows(c, d2); // [B]
    ap_tensor *de = ap_sub(c, e, tg);
    ap_tensor *de2 = ap_square(c, de);
    ap_tensor *per = ap_axpby(c, 1.0f, brier, 0.25f, de2);
    ap_tensor *loss = ap_mean(c, per);
    ap_tensor *t[] = {oh, tg, probs, logits, e, d, d2, brier, de, de2, per};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) ap_tensor_release(t[i]);
    return loss;
}

ap_status ap_counter_train(ap_ctx *c, ap_counter *m, const ap_counter_train_opts *o, double *losses) {
    if (ap_failed(c)) return c->status;
    if (o->steps < 1 || o->batch < 1 || o->batch > 256)
        return ap_seterr(c, AP_ERR_INVALID_ARG, "train-counter: steps %d and batch %d (need steps >= 1, batch 1..256)",
                         o->steps, o->batch);
    if (o->seed == AP_COUNTER_EVAL_SEED)
        return ap_seterr(c, AP_ERR_INVALID_ARG, "train-counter: seed %llu is the held-out stream's",
                         (unsigned long long)o->seed);
    if (m->params.weight_dtype != AP_F32)
        return ap_seterr(c, AP_ERR_DTYPE, "train-counter: the counter must have f32 weights to train");
    int n = m->params.n;
    ap_tensor **ps = malloc((size_t)n * sizeof *ps);
    if (!ps) return ap_seterr(c, AP_ERR_NOMEM, "train-counter: out of memory");
    for (int i = 0; i < n; i++) {
        ps[i] = m->params.p[i].t;
        ap_tensor_set_requires_grad(ps[i], 1);
    }
    ap_adamw_config cfg;
    ap_adamw_defaults(&cfg);
    cfg.lr = o->lr;
    cfg.weight_decay = o->weight_decay;
    ap_adamw *opt = NULL;
    int prev = ap_set_grad_enabled(c, 1);
    int counts[256];
    if (ap_adamw_create(c, &cfg, n, ps, &opt) == AP_OK) {
        int warm = o->steps / 20 > 0 ? o->steps / 20 : 1;
        for (int step = 0; step < o->steps && !ap_failed(c); step++) {
            double f = step < warm ? (step + 1.0) / warm
                                   : 0.1 + 0.45 * (1 + cos(M_PI * (step - warm) / fmax(1, o->steps - warm)));
            opt->cfg.lr = o->lr * f;
            ap_tensor *x = make_batch(c, o, step, counts);
            ap_tensor *loss = x ? count_loss(c, m, x, counts, o->batch) : NULL;
            double lv = loss ? ap_cf32(loss)[0] : NAN;
            if (loss && ap_backward(c, loss, NULL) == AP_OK) ap_adamw_step(opt, NULL);
            ap_adamw_zero_grad(opt);
            ap_tensor_release(x);
            ap_tensor_release(loss);
            if (ap_failed(c)) break;
            if (losses) losses[step] = lv;
            if (o->on_step) o->on_step(o->user, step + 1, o->steps, lv);
        }
    }
    ap_tape_clear(c);
    ap_set_grad_enabled(c, prev);
    for (int i = 0; i < n; i++) {
        ap_tensor_zero_grad(ps[i]);
        ap_tensor_set_requires_grad(ps[i], 0);
    }
    ap_adamw_free(opt);
    free(ps);
    return c->status;
}

ap_status ap_counter_evaluate(ap_ctx *c, ap_counter *m, uint64_t seed, int n, int augment, double *accuracy,
                              double *mae) {
    if (ap_failed(c)) return c->status;
    if (n < 1) return ap_seterr(c, AP_ERR_INVALID_ARG, "counter evaluation: %d images, need at least 1", n);
    int prev = ap_set_grad_enabled(c, 0);
    const int B = 50;
    int right = 0;
    double err = 0;
    for (int start = 0; start < n && !ap_failed(c); start += B) {
        int b = n - start < B ? n - start : B;
        ap_shapes_item items[50];
        ap_tensor *x = NULL;
        if (ap_shapes_batch(c, seed, (uint64_t)start, b, &x, items) != AP_OK) break;
        for (int i = 0; augment == 2 && i < b; i++) {
            ap_counter_negative(ap_f32(x) + (size_t)i * IMG, seed, (uint64_t)(start + i));
            items[i].count = 0;
        }
        if (augment)
            for (int i = 0; i < b; i++) ap_counter_augment(ap_f32(x) + (size_t)i * IMG, seed, (uint64_t)(start + i));
        ap_tensor *logits = ap_counter_logits(c, m, x);
        ap_tensor *e = ap_counter_expected(c, m, logits, NULL);
        if (e)
            for (int i = 0; i < b; i++) {
                double v = ap_cf32(e)[i];
                right += (int)lround(v) == items[i].count;
                err += fabs(v - items[i].count);
            }
        ap_tensor_release(x);
        ap_tensor_release(logits);
        ap_tensor_release(e);
    }
    ap_set_grad_enabled(c, prev);
    if (ap_failed(c)) return c->status;
    if (accuracy) *accuracy = (double)right / n;
    if (mae) *mae = err / n;
    return AP_OK;
}
