/* A varied set of procedural images for checking that the jpeg reward's size
 * estimate ranks images like libjpeg's real size (tests/test_jpeg.c on a small
 * set, bench/jpeg_rank.c on the full one). Image i is a pure function of i:
 * its kind is i % JIMG_KINDS, its size (64..256 on each side, any value, so
 * the padding to multiples of 16 is exercised) and parameters come from a
 * generator seeded with i. Header-only. */
#ifndef AP_TESTS_JPEG_IMAGES_H
#define AP_TESTS_JPEG_IMAGES_H

#include <math.h>
#include <stdint.h>

#define JIMG_MAX 256 /* largest side */
#define JIMG_KINDS 9

typedef struct {
    uint64_t s;
} jimg_rng;

static inline uint64_t jimg_next(jimg_rng *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static inline double jimg_u(jimg_rng *r) { return (double)(jimg_next(r) >> 11) * 0x1.0p-53; } /* [0,1) */
static inline double jimg_n(jimg_rng *r) { /* standard normal, Box-Muller */
    double u = jimg_u(r), v = jimg_u(r);
    return sqrt(-2.0 * log(u + 1e-300)) * cos(2.0 * M_PI * v);
}

static const char *const jimg_kind_names[JIMG_KINDS] = {
    "gradient", "shapes", "checkerboard", "text", "smooth-noise", "white-noise", "stripes", "blend", "photo-like"};

/* Value noise at cell size `cell` (pixels): random colours on a grid,
 * interpolated with smoothstep weights, added into x with amplitude amp. */
static inline void jimg_value_noise(jimg_rng *r, float *x, int H, int W, double cell, double amp) {
    int gh = (int)(H / cell) + 2, gw = (int)(W / cell) + 2;
    static float g[(JIMG_MAX + 2) * (JIMG_MAX + 2) * 3];
    for (int i = 0; i < gh * gw * 3; i++) g[i] = (float)(2 * jimg_u(r) - 1);
    for (int y = 0; y < H; y++)
        for (int xx = 0; xx < W; xx++) {
            double fy = y / cell, fx = xx / cell;
            int iy = (int)fy, ix = (int)fx;
            double ty = fy - iy, tx = fx - ix;
            ty = ty * ty * (3 - 2 * ty), tx = tx * tx * (3 - 2 * tx);
            for (int ch = 0; ch < 3; ch++) {
                double a = g[(iy * gw + ix) * 3 + ch], b = g[(iy * gw + ix + 1) * 3 + ch];
                double cc = g[((iy + 1) * gw + ix) * 3 + ch], d = g[((iy + 1) * gw + ix + 1) * 3 + ch];
                double v = (a * (1 - tx) + b * tx) * (1 - ty) + (cc * (1 - tx) + d * tx) * ty;
                x[(y * W + xx) * 3 + ch] += (float)(amp * v);
            }
        }
}

static inline void jimg_fill(float *x, int H, int W, const double col[3]) {
    for (int i = 0; i < H * W; i++)
        for (int ch = 0; ch < 3; ch++) x[i * 3 + ch] = (float)col[ch];
}

static inline void jimg_colour(jimg_rng *r, double col[3]) {
    for (int ch = 0; ch < 3; ch++) col[ch] = 2 * jimg_u(r) - 1;
}

static inline void jimg_clamp(float *x, int n) {
    for (int i = 0; i < n; i++) x[i] = x[i] < -1 ? -1 : x[i] > 1 ? 1 : x[i];
}

static void jimg_kind(int kind, jimg_rng *r, float *x, int H, int W);

/* 3x5 glyphs of "text": random bitmaps, scaled, in lines. */
static inline void jimg_text(jimg_rng *r, float *x, int H, int W) {
    double bg[3], fg[3];
    double l = 0.6 + 0.4 * jimg_u(r);
    for (int ch = 0; ch < 3; ch++) bg[ch] = l - 0.1 * jimg_u(r), fg[ch] = -0.9 + 0.3 * jimg_u(r);
    jimg_fill(x, H, W, bg);
    int s = 1 + (int)(jimg_u(r) * 4); /* glyph pixel size */
    int gh = 5 * s, gw = 3 * s, lead = gh + s * (1 + (int)(jimg_u(r) * 4));
    for (int y0 = s; y0 + gh < H; y0 += lead)
        for (int x0 = s; x0 + gw < W; x0 += gw + s) {
            if (jimg_u(r) < 0.15) continue; /* a space */
            unsigned bits = (unsigned)jimg_next(r);
            for (int gy = 0; gy < 5; gy++)
                for (int gx = 0; gx < 3; gx++)
                    if (bits >> (gy * 3 + gx) & 1)
                        for (int py = 0; py < s; py++)
                            for (int px = 0; px < s; px++)
                                for (int ch = 0; ch < 3; ch++)
                                    x[((y0 + gy * s + py) * W + x0 + gx * s + px) * 3 + ch] = (float)fg[ch];
        }
}

static void jimg_kind(int kind, jimg_rng *r, float *x, int H, int W) {
    double a[3], b[3];
    jimg_colour(r, a);
    jimg_colour(r, b);
    switch (kind) {
    case 0: { /* linear gradient in a random direction */
        double th = 2 * M_PI * jimg_u(r), cx = cos(th), sy = sin(th), span = fabs(cx) * W + fabs(sy) * H;
        for (int y = 0; y < H; y++)
            for (int xx = 0; xx < W; xx++) {
                double t = ((xx - W / 2.0) * cx + (y - H / 2.0) * sy) / span + 0.5;
                for (int ch = 0; ch < 3; ch++) x[(y * W + xx) * 3 + ch] = (float)(a[ch] + (b[ch] - a[ch]) * t);
            }
        break;
    }
    case 1: { /* flat discs and rectangles on a flat background */
        jimg_fill(x, H, W, a);
        int n = 1 + (int)(jimg_u(r) * 12);
        for (int k = 0; k < n; k++) {
            jimg_colour(r, b);
            double cy = jimg_u(r) * H, cx = jimg_u(r) * W, rad = 4 + jimg_u(r) * 0.3 * (H < W ? H : W);
            int disc = jimg_u(r) < 0.5;
            for (int y = 0; y < H; y++)
                for (int xx = 0; xx < W; xx++) {
                    double dy = y - cy, dx = xx - cx;
                    int in = disc ? dy * dy + dx * dx < rad * rad : fabs(dy) < rad && fabs(dx) < 0.7 * rad;
                    if (in)
                        for (int ch = 0; ch < 3; ch++) x[(y * W + xx) * 3 + ch] = (float)b[ch];
                }
        }
        break;
    }
    case 2: { /* checkerboard, cells of 1..48 pixels */
        int cell = 1 + (int)(pow(jimg_u(r), 2) * 48);
        for (int y = 0; y < H; y++)
            for (int xx = 0; xx < W; xx++) {
                const double *c = ((y / cell + xx / cell) & 1) ? a : b;
                for (int ch = 0; ch < 3; ch++) x[(y * W + xx) * 3 + ch] = (float)c[ch];
            }
        break;
    }
    case 3: jimg_text(r, x, H, W); break;
    case 4: { /* smooth noise, one octave at a cell size of 2..128 pixels */
        jimg_fill(x, H, W, (double[3]){0, 0, 0});
        jimg_value_noise(r, x, H, W, pow(2, 1 + jimg_u(r) * 6), 0.3 + 0.7 * jimg_u(r));
        break;
    }
    case 5: { /* white noise of std 0.003..0.5 on a flat colour */
        double sd = 0.003 * pow(0.5 / 0.003, jimg_u(r));
        for (int ch = 0; ch < 3; ch++) a[ch] *= 0.5;
        jimg_fill(x, H, W, a);
        for (int i = 0; i < H * W * 3; i++) x[i] += (float)(sd * jimg_n(r));
        break;
    }
    case 6: { /* sinusoidal stripes, period 2..64 pixels, random orientation */
        double th = M_PI * jimg_u(r), per = pow(2, 1 + jimg_u(r) * 5);
        for (int y = 0; y < H; y++)
            for (int xx = 0; xx < W; xx++) {
                double t = 0.5 + 0.5 * sin(2 * M_PI * (xx * cos(th) + y * sin(th)) / per);
                for (int ch = 0; ch < 3; ch++) x[(y * W + xx) * 3 + ch] = (float)(a[ch] + (b[ch] - a[ch]) * t);
            }
        break;
    }
    case 7: { /* a blend of two images of other kinds */
        static float tmp[JIMG_MAX * JIMG_MAX * 3];
        int k1 = (int)(jimg_u(r) * 7), k2 = (int)(jimg_u(r) * 7);
        double w = jimg_u(r);
        jimg_kind(k1, r, x, H, W);
        jimg_kind(k2, r, tmp, H, W);
        for (int i = 0; i < H * W * 3; i++) x[i] = (float)((1 - w) * x[i] + w * tmp[i]);
        break;
    }
    default: { /* "photo-like": noise at several scales (1/f), shapes, a little sensor noise */
        jimg_kind(1, r, x, H, W);
        double amp = 0.5 * jimg_u(r);
        for (double cell = 64; cell >= 2; cell /= 2, amp *= 0.6) jimg_value_noise(r, x, H, W, cell, amp);
        double sd = 0.02 * jimg_u(r);
        for (int i = 0; i < H * W * 3; i++) x[i] += (float)(sd * jimg_n(r));
        break;
    }
    }
    jimg_clamp(x, H * W * 3);
}

/* Image i of the set into x (room for JIMG_MAX*JIMG_MAX*3 floats), values in [-1,1]. */
static inline void jimg_make(int i, int *H, int *W, float *x) {
    jimg_rng r = {0x5eedull + 7919ull * (uint64_t)i};
    jimg_next(&r);
    *H = 64 + (int)(jimg_u(&r) * (JIMG_MAX - 64 + 1));
    *W = 64 + (int)(jimg_u(&r) * (JIMG_MAX - 64 + 1));
    jimg_kind(i % JIMG_KINDS, &r, x, *H, *W);
}

#endif
