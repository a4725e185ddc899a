/* The procedural shapes dataset: labels, captions, rendering, caption parsing.
 * See shapes.h and docs/data.md. */
#include "train/shapes.h"

#include "core/internal.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const ap_shape_kind_names[AP_SHAPE_KINDS] = {"circle", "square", "triangle"};
static const char *const kind_plural[AP_SHAPE_KINDS] = {"circles", "squares", "triangles"};
const char *const ap_shape_color_names[AP_COLORS] = {"red", "green", "blue", "yellow", "purple", "orange"};
/* Saturated colours, far apart in hue, none close to the neutral backgrounds. */
const unsigned char ap_shape_color_rgb[AP_COLORS][3] = {
    {220, 30, 30}, {30, 160, 50}, {30, 70, 220}, {240, 210, 20}, {140, 40, 190}, {250, 130, 10},
};
const char *const ap_shape_background_names[AP_SHAPES_BACKGROUNDS] = {"white", "light gray", "dark gray",
                                                                      "black"};
const unsigned char ap_shape_background_rgb[AP_SHAPES_BACKGROUNDS][3] = {
    {245, 245, 245}, {190, 190, 190}, {70, 70, 70}, {15, 15, 15},
};
_Static_assert(sizeof ap_shape_color_names / sizeof ap_shape_color_names[0] == AP_COLORS, "colour names");
_Static_assert(sizeof ap_shape_kind_names / sizeof ap_shape_kind_names[0] == AP_SHAPE_KINDS, "kind names");

/* None of these is ever written by the generator: no count word, and the
 * colour+kind plurals ("red circles") only appear after a number there. */

static const char *const number_words[AP_SHAPES_MAX + 1] = {"zero", "one", "two", "three", "four", "five"};

/* ------------------------------------------------------------ random stream */
static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static double uniform(uint64_t *s) { return (double)(splitmix(s) >> 11) * 0x1.0p-53; }
static int below(uint64_t *s, int n) { return (int)(uniform(s) * n); }

/* ------------------------------------------------------------ captions */
typedef struct {
    char *p;
    size_t left;
} sbuf;
static void put(sbuf *b, const char *s) {
    size_t n = strlen(s);
    if (b->left == 0) return;
    if (n >= b->left) n = b->left - 1;
    memcpy(b->p, s, n);
    b->p += n;
    b->left -= n;
    *b->p = 0;
}
static void put_sep(sbuf *b, int i, int n) {
    if (i == 0) return;
    put(b, i == n - 1 ? " and " : ", ");
}

/* Groups of shapes that agree on the fields in `by` (1: colour, 2: kind), in
 * order of first appearance: key[g] = colour*AP_SHAPE_KINDS+kind, num[g]. */
static int group(const ap_shapes_item *it, int by, int *key, int *num) {
    int n = 0;
    for (int i = 0; i < it->count; i++) {
        int col = (by & 1) ? it->shapes[i].color : 0, kind = (by & 2) ? it->shapes[i].kind : 0;
        int k = col * AP_SHAPE_KINDS + kind, g = 0;
        while (g < n && key[g] != k) g++;
        if (g == n) {
            key[n] = k;
            num[n++] = 0;
        }
        num[g]++;
    }
    return n;
}

const char *ap_shapes_caption(const ap_shapes_item *it, int style, char *buf, size_t n) {
    sbuf b = {buf, n};
    if (n) buf[0] = 0;
    int key[AP_SHAPES_MAX], num[AP_SHAPES_MAX];
    if (style == AP_CAPTION_TOTAL) {
        put(&b, number_words[it->count]);
        put(&b, it->count == 1 ? " shape" : " shapes");
        return buf;
    }
    if (style == AP_CAPTION_NOCOUNT) {
        /* one of two forms, chosen from the labels so the caption is a function of the item */
        int by_color = (it->shapes[0].color + it->count) & 1;
        int ng = group(it, by_color ? 1 : 2, key, num);
        if (by_color) put(&b, "shapes in ");
        for (int g = 0; g < ng; g++) {
            put_sep(&b, g, ng);
            put(&b, by_color ? ap_shape_color_names[key[g] / AP_SHAPE_KINDS] : kind_plural[key[g] % AP_SHAPE_KINDS]);
        }
        return buf;
    }
    int by = style == AP_CAPTION_FULL ? 3 : style == AP_CAPTION_KINDS ? 2 : 1;
    int ng = group(it, by, key, num);
    for (int g = 0; g < ng; g++) {
        put_sep(&b, g, ng);
        const char *color = ap_shape_color_names[key[g] / AP_SHAPE_KINDS];
        put(&b, num[g] != 1 ? number_words[num[g]] : (by & 1) && color[0] == 'o' ? "an" : "a");
        put(&b, " ");
        if (by & 1) {
            put(&b, ap_shape_color_names[key[g] / AP_SHAPE_KINDS]);
            put(&b, " ");
        }
        int kind = key[g] % AP_SHAPE_KINDS;
        if (by & 2)
            put(&b, num[g] == 1 ? ap_shape_kind_names[kind] : kind_plural[kind]);
        else
            put(&b, num[g] == 1 ? "shape" : "shapes");
    }
    return buf;
}

/* ------------------------------------------------------------ labels */
void ap_shapes_item_make(uint64_t seed, uint64_t index, ap_shapes_item *out) {
    memset(out, 0, sizeof *out);
    uint64_t s = seed * 0x9e3779b97f4a7c15ull;
    uint64_t mix = splitmix(&s) ^ index;
    s = splitmix(&mix);
    out->count = 1 + below(&s, AP_SHAPES_MAX);
    out->background = below(&s, AP_SHAPES_BACKGROUNDS);
    for (int i = 0; i < out->count; i++) {
        out->shapes[i].kind = below(&s, AP_SHAPE_KINDS);
        out->shapes[i].color = below(&s, AP_COLORS);
        out->shapes[i].angle = (float)(uniform(&s) * 2 * M_PI);
    }
    /* Rejection sampling of non-overlapping bounding circles; when a layout
     * does not fit, the sizes shrink (the radius range is wide enough that 5
     * shapes fit almost always at the first try). */
    const double S = AP_SHAPES_SIZE;
    for (int round = 0;; round++) {
        double rmax = round < 5 ? 11.0 - round : 6.0;
        int placed = 0;
        for (int i = 0; i < out->count; i++) {
            ap_shape *sh = &out->shapes[i];
            double r = 6.0 + uniform(&s) * (rmax - 6.0);
            int ok = 0;
            for (int attempt = 0; attempt < 100 && !ok; attempt++) {
                double cx = r + 1 + uniform(&s) * (S - 2 * r - 2);
                double cy = r + 1 + uniform(&s) * (S - 2 * r - 2);
                ok = 1;
                for (int j = 0; j < i && ok; j++) {
                    double dx = cx - out->shapes[j].cx, dy = cy - out->shapes[j].cy;
                    double need = r + out->shapes[j].radius + AP_SHAPES_GAP;
                    if (dx * dx + dy * dy < need * need) ok = 0;
                }
                if (ok) {
                    sh->cx = (float)cx;
                    sh->cy = (float)cy;
                    sh->radius = (float)r;
                }
            }
            if (!ok) break;
            placed++;
        }
        if (placed == out->count) break;
        if (round >= 100) { /* never seen; keeps the loop finite */
            out->count = placed > 0 ? placed : 1;
            if (placed > 0) break;
        }
    }
    /* styles: full 40%, total, kinds, colours and no-count 15% each */
    int u = below(&s, 100);
    out->style = u < 40 ? AP_CAPTION_FULL
                 : u < 55 ? AP_CAPTION_TOTAL
                 : u < 70 ? AP_CAPTION_KINDS
                 : u < 85 ? AP_CAPTION_COLORS
                          : AP_CAPTION_NOCOUNT;
    ap_shapes_caption(out, out->style, out->caption, sizeof out->caption);
}

/* ------------------------------------------------------------ rendering */
/* Signed distance (pixels, negative inside) from (x, y) to the outline of sh.
 * Polygons use the largest distance to their edge lines: exact along the edges,
 * within the anti-aliasing band slightly short only next to a vertex. */
static double shape_sdf(const ap_shape *sh, double x, double y) {
    double dx = x - sh->cx, dy = y - sh->cy;
    switch (sh->kind) {
    case AP_SHAPE_CIRCLE:
        return sqrt(dx * dx + dy * dy) - 0.8 * sh->radius;
    case AP_SHAPE_SQUARE: {
        double ca = cos(sh->angle), sa = sin(sh->angle), h = sh->radius * M_SQRT1_2;
        double lx = ca * dx + sa * dy, ly = -sa * dx + ca * dy;
        return fmax(fabs(lx) - h, fabs(ly) - h);
    }
    default: { /* equilateral triangle, circumradius = radius, inradius = radius/2 */
        double d = -1e30;
        for (int k = 0; k < 3; k++) {
            double a = sh->angle + k * (2 * M_PI / 3);
            d = fmax(d, dx * cos(a) + dy * sin(a) - 0.5 * sh->radius);
        }
        return d;
    }
    }
}

/* v [64,64,3] in [0,1] */
static void render(const ap_shapes_item *it, float *v) {
    const int S = AP_SHAPES_SIZE;
    const unsigned char *bg = ap_shape_background_rgb[it->background];
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++) {
            double px[3] = {bg[0] / 255.0, bg[1] / 255.0, bg[2] / 255.0};
            for (int i = 0; i < it->count; i++) {
                const ap_shape *sh = &it->shapes[i];
                double dx = x + 0.5 - sh->cx, dy = y + 0.5 - sh->cy;
                if (dx * dx + dy * dy > (sh->radius + 1) * (sh->radius + 1)) continue;
                double a = 0.5 - shape_sdf(sh, x + 0.5, y + 0.5);
                if (a <= 0) continue;
                if (a > 1) a = 1;
                const unsigned char *col = ap_shape_color_rgb[sh->color];
                for (int k = 0; k < 3; k++) px[k] = px[k] * (1 - a) + col[k] / 255.0 * a;
            }
            for (int k = 0; k < 3; k++) v[((size_t)y * S + x) * 3 + k] = (float)px[k];
        }
}

void ap_shapes_render_u8(const ap_shapes_item *it, unsigned char *rgb) {
    static const int n = AP_SHAPES_SIZE * AP_SHAPES_SIZE * 3;
    float v[AP_SHAPES_SIZE * AP_SHAPES_SIZE * 3];
    render(it, v);
    for (int i = 0; i < n; i++) rgb[i] = (unsigned char)lrintf(v[i] * 255.0f);
}

void ap_shapes_render_f32(const ap_shapes_item *it, float *img) {
    static const int n = AP_SHAPES_SIZE * AP_SHAPES_SIZE * 3;
    render(it, img);
    for (int i = 0; i < n; i++) img[i] = img[i] * 2.0f - 1.0f;
}

ap_status ap_shapes_batch(ap_ctx *c, uint64_t seed, uint64_t start, int n, ap_tensor **images,
                          ap_shapes_item *items) {
    *images = NULL;
    if (ap_failed(c)) return c->status;
    if (n < 1) return ap_seterr(c, AP_ERR_INVALID_ARG, "shapes: batch size %d, need at least 1", n);
    const int64_t shape[4] = {n, AP_SHAPES_SIZE, AP_SHAPES_SIZE, 3};
    ap_tensor *t = ap_tensor_new(c, AP_F32, 4, shape);
    if (!t) return c->status;
    float *p = ap_f32(t);
    for (int i = 0; i < n; i++) {
        ap_shapes_item it;
        ap_shapes_item_make(seed, start + (uint64_t)i, &it);
        ap_shapes_render_f32(&it, p + (size_t)i * AP_SHAPES_SIZE * AP_SHAPES_SIZE * 3);
        if (items) items[i] = it;
    }
    *images = t;
    return AP_OK;
}

/* ------------------------------------------------------------ parsing */
static int word_index(const char *w, const char *const *list, int n) {
    for (int i = 0; i < n; i++)
        if (!strcmp(w, list[i])) return i;
    return -1;
}

int ap_shapes_caption_parse(const char *caption, ap_shapes_query *q) {
    memset(q, 0, sizeof *q);
    char buf[256];
    size_t len = strlen(caption);
    if (len >= sizeof buf) return -1;
    /* words, with "," and "and" as group separators (turned into "|") */
    char *words[64];
    int nw = 0;
    size_t o = 0;
    for (size_t i = 0; i <= len; i++) {
        char ch = (char)tolower((unsigned char)caption[i]);
        if (ch == ',') {
            buf[o++] = ' ';
            buf[o++] = '|';
            ch = ' ';
        }
        if (o + 2 >= sizeof buf) return -1;
        buf[o++] = ch;
    }
    for (char *tok = strtok(buf, " \t"); tok; tok = strtok(NULL, " \t")) {
        if (nw == 64) return -1;
        words[nw++] = !strcmp(tok, "and") ? "|" : tok;
    }
    int w = 0;
    int shapes_in = nw >= 2 && !strcmp(words[0], "shapes") && !strcmp(words[1], "in");
    if (shapes_in) w = 2;
    const int max_groups = (int)(sizeof q->g / sizeof q->g[0]);
    while (w < nw) {
        if (!strcmp(words[w], "|")) {
            w++;
            continue;
        }
        if (q->n == max_groups) return -1;
        ap_shapes_group g = {-1, -1, -1};
        if (shapes_in) {
            if ((g.color = word_index(words[w++], ap_shape_color_names, AP_COLORS)) < 0) return -1;
        } else {
            int num = word_index(words[w], number_words, AP_SHAPES_MAX + 1);
            if (!strcmp(words[w], "a") || !strcmp(words[w], "an")) num = 1;
            if (num == 0) return -1;
            if (num > 0) g.number = num, w++;
            if (w < nw && (g.color = word_index(words[w], ap_shape_color_names, AP_COLORS)) >= 0) w++;
            if (w >= nw) return -1;
            const char *noun = words[w++];
            int plural;
            if ((g.kind = word_index(noun, ap_shape_kind_names, AP_SHAPE_KINDS)) >= 0)
                plural = 0;
            else if ((g.kind = word_index(noun, kind_plural, AP_SHAPE_KINDS)) >= 0)
                plural = 1;
            else if (!strcmp(noun, "shape") || !strcmp(noun, "shapes"))
                plural = noun[5] == 's';
            else
                return -1;
            /* the noun agrees with the number: "a circle", "two circles", "circles" */
            if (plural != (g.number != 1)) return -1;
        }
        if (w < nw && strcmp(words[w], "|")) return -1; /* a group ends at a separator */
        q->g[q->n++] = g;
    }
    return q->n > 0 ? 0 : -1;
}

static int selects(const ap_shapes_group *g, const ap_shape *s) {
    return (g->color < 0 || g->color == s->color) && (g->kind < 0 || g->kind == s->kind);
}

int ap_shapes_query_matches(const ap_shapes_query *q, const ap_shapes_item *it) {
    for (int i = 0; i < q->n; i++) {
        int n = 0;
        for (int k = 0; k < it->count; k++) n += selects(&q->g[i], &it->shapes[k]);
        if (q->g[i].number >= 0 ? n != q->g[i].number : n < 1) return 0;
    }
    for (int k = 0; k < it->count; k++) {
        int any = 0;
        for (int i = 0; i < q->n && !any; i++) any = selects(&q->g[i], &it->shapes[k]);
        if (!any) return 0;
    }
    return 1;
}

int ap_shapes_query_total(const ap_shapes_query *q) {
    int total = 0;
    for (int i = 0; i < q->n; i++) {
        if (q->g[i].number < 0) return -1;
        for (int j = 0; j < i; j++) {
            const ap_shapes_group *a = &q->g[i], *b = &q->g[j];
            int colors_meet = a->color < 0 || b->color < 0 || a->color == b->color;
            int kinds_meet = a->kind < 0 || b->kind < 0 || a->kind == b->kind;
            if (colors_meet && kinds_meet) return -1; /* overlapping groups: no single total */
        }
        total += q->g[i].number;
    }
    return q->n > 0 ? total : -1;
}

/* ------------------------------------------------------------ analysis */
static int classify(const float *px) {
    float v[3], hi = -1e30f, lo = 1e30f;
    for (int k = 0; k < 3; k++) {
        v[k] = (px[k] + 1.0f) * 0.5f;
        hi = fmaxf(hi, v[k]);
        lo = fminf(lo, v[k]);
    }
    if (hi - lo < 0.25f) return -1;
    int best = -1;
    float bd = 0.3f * 0.3f;
    for (int c = 0; c < AP_COLORS; c++) {
        float d = 0;
        for (int k = 0; k < 3; k++) {
            float e = v[k] - ap_shape_color_rgb[c][k] / 255.0f;
            d += e * e;
        }
        if (d < bd) bd = d, best = c;
    }
    return best;
}

int ap_shapes_analyze(const float *img, int H, int W, int per_color[AP_COLORS]) {
    if (per_color)
        for (int c = 0; c < AP_COLORS; c++) per_color[c] = 0;
    if (H < 1 || W < 1) return 0;
    size_t n = (size_t)H * W;
    signed char *cls = malloc(n);
    int *stack = malloc(n * sizeof *stack);
    int total = 0;
    if (!cls || !stack) {
        free(cls);
        free(stack);
        return -1;
    }
    for (size_t i = 0; i < n; i++) cls[i] = (signed char)classify(img + i * 3);
    for (size_t i = 0; i < n; i++) {
        if (cls[i] < 0) continue;
        int col = cls[i], top = 0, area = 0;
        stack[top++] = (int)i;
        cls[i] = -2; /* visited */
        while (top) {
            int q = stack[--top], x = q % W, y = q / W;
            area++;
            for (int dy = -1; dy <= 1; dy++)
                for (int dx = -1; dx <= 1; dx++) {
                    int nx = x + dx, ny = y + dy;
                    if (nx < 0 || ny < 0 || nx >= W || ny >= H || cls[ny * W + nx] != col) continue;
                    cls[ny * W + nx] = -2;
                    stack[top++] = ny * W + nx;
                }
        }
        if (area >= AP_SHAPES_MIN_REGION) {
            total++;
            if (per_color) per_color[col]++;
        }
    }
    free(cls);
    free(stack);
    return total;
}
