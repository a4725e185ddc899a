/* The shapes dataset: determinism, labels checked against the rendered pixels
 * (connected components per colour, found by a flood fill here), captions that
 * parse back to the labels, held-out captions the generator never writes. */
#include "test.h"
#include "train/shapes.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define S AP_SHAPES_SIZE
#define NPIX (S * S)

/* Components of pixels whose colour is exactly palette colour `col` (pixels a
 * shape covers fully), 8-connected (a triangle's sharp vertex
 * pixel may touch its body only at a corner; shapes are AP_SHAPES_GAP apart). Writes each component's area and centroid. */
static int components(const unsigned char *rgb, int col, int *area, double *cx, double *cy, int max) {
    static int mask[NPIX], stack[NPIX];
    const unsigned char *p = ap_shape_color_rgb[col];
    for (int i = 0; i < NPIX; i++)
        mask[i] = rgb[i * 3] == p[0] && rgb[i * 3 + 1] == p[1] && rgb[i * 3 + 2] == p[2];
    int n = 0;
    for (int i = 0; i < NPIX; i++) {
        if (mask[i] != 1) continue;
        int top = 0, a = 0;
        double sx = 0, sy = 0;
        stack[top++] = i;
        mask[i] = 2;
        while (top) {
            int q = stack[--top], x = q % S, y = q / S;
            a++;
            sx += x + 0.5;
            sy += y + 0.5;
            const int nb[8][2] = {{x - 1, y},     {x + 1, y},     {x, y - 1},     {x, y + 1},
                                  {x - 1, y - 1}, {x + 1, y - 1}, {x - 1, y + 1}, {x + 1, y + 1}};
            for (int k = 0; k < 8; k++) {
                int nx = nb[k][0], ny = nb[k][1];
                if (nx < 0 || ny < 0 || nx >= S || ny >= S || mask[ny * S + nx] != 1) continue;
                mask[ny * S + nx] = 2;
                stack[top++] = ny * S + nx;
            }
        }
        if (n < max) {
            area[n] = a;
            cx[n] = sx / a;
            cy[n] = sy / a;
        }
        n++;
    }
    return n;
}

/* Area of a shape of kind with bounding radius r, as the generator defines
 * the outlines (circle radius 0.8r, square half-diagonal r, triangle
 * circumradius r). */
static double expected_area(int kind, double r) {
    if (kind == AP_SHAPE_CIRCLE) return M_PI * 0.64 * r * r;
    if (kind == AP_SHAPE_SQUARE) return 2 * r * r;
    return 3 * sqrt(3) / 4 * r * r;
}

static void test_determinism(void) {
    ap_shapes_item a, b;
    unsigned char ra[NPIX * 3], rb[NPIX * 3];
    for (uint64_t i = 0; i < 50; i++) {
        ap_shapes_item_make(7, i, &a);
        ap_shapes_item_make(7, i, &b);
        ap_shapes_render_u8(&a, ra);
        ap_shapes_render_u8(&b, rb);
        CHECK(!memcmp(&a, &b, sizeof a));
        CHECK(!memcmp(ra, rb, sizeof ra));
    }
    /* items do not depend on their neighbours, and seeds give different streams */
    ap_ctx *c = test_ctx();
    ap_tensor *x = NULL, *y = NULL;
    ap_shapes_item items[6];
    CHECK(ap_shapes_batch(c, 11, 100, 6, &x, items) == AP_OK);
    CHECK(ap_shapes_batch(c, 11, 103, 2, &y, NULL) == AP_OK);
    CHECK(x && y && ap_tensor_dim(x, 0) == 6 && ap_tensor_dim(x, 1) == S && ap_tensor_dim(x, 3) == 3);
    if (x && y)
        CHECK(!memcmp((const float *)ap_tensor_cdata(x) + 3 * NPIX * 3, ap_tensor_cdata(y), 2 * NPIX * 3 * 4));
    float img[NPIX * 3];
    ap_shapes_item_make(11, 104, &a);
    ap_shapes_render_f32(&a, img);
    if (x) CHECK(!memcmp((const float *)ap_tensor_cdata(x) + 4 * NPIX * 3, img, sizeof img));
    CHECK(!memcmp(&items[4], &a, sizeof a));
    float lo = 1, hi = -1;
    for (int i = 0; i < NPIX * 3; i++) lo = fminf(lo, img[i]), hi = fmaxf(hi, img[i]);
    CHECK(lo >= -1 && hi <= 1 && hi > lo);
    int differ = 0;
    for (uint64_t i = 0; i < 20; i++) {
        ap_shapes_item_make(1, i, &a);
        ap_shapes_item_make(2, i, &b);
        differ += memcmp(&a, &b, sizeof a) != 0;
    }
    CHECK(differ >= 18);
    /* errors */
    ap_tensor_release(x);
    CHECK(ap_shapes_batch(c, 1, 0, 0, &x, NULL) != AP_OK && x == NULL);
    CHECK(strstr(ap_last_error(c), "shapes") != NULL);
    ap_tensor_release(y);
    ap_ctx_free(c);
}

static void test_labels_match_pixels(void) {
    unsigned char rgb[NPIX * 3];
    int hist[AP_SHAPES_MAX + 1] = {0}, colors[AP_COLORS] = {0}, kinds[AP_SHAPE_KINDS] = {0};
    int bad = 0;
    for (uint64_t i = 0; i < 400; i++) {
        ap_shapes_item it;
        ap_shapes_item_make(42, i, &it);
        ap_shapes_render_u8(&it, rgb);
        CHECK(it.count >= 1 && it.count <= AP_SHAPES_MAX);
        if (it.count < 1 || it.count > AP_SHAPES_MAX) continue;
        hist[it.count]++;
        /* shapes inside the image, apart by the promised gap */
        for (int k = 0; k < it.count; k++) {
            const ap_shape *s = &it.shapes[k];
            colors[s->color]++;
            kinds[s->kind]++;
            CHECK(s->cx - s->radius >= 0 && s->cx + s->radius <= S && s->cy - s->radius >= 0 &&
                  s->cy + s->radius <= S);
            for (int j = 0; j < k; j++) {
                double d = hypot(s->cx - it.shapes[j].cx, s->cy - it.shapes[j].cy);
                CHECK(d >= s->radius + it.shapes[j].radius + AP_SHAPES_GAP - 1e-4);
            }
        }
        /* per colour: one component per labelled shape, at its centre, of its area */
        for (int col = 0; col < AP_COLORS; col++) {
            int area[AP_SHAPES_MAX + 4];
            double cx[AP_SHAPES_MAX + 4], cy[AP_SHAPES_MAX + 4];
            int n = components(rgb, col, area, cx, cy, AP_SHAPES_MAX + 4);
            int want = 0;
            for (int k = 0; k < it.count; k++) want += it.shapes[k].color == col;
            if (n != want) {
                bad++;
                fprintf(stderr, "item %d: %d %s components, labels say %d\n", (int)i, n, ap_shape_color_names[col],
                        want);
                continue;
            }
            for (int m = 0; m < n; m++) {
                int found = 0;
                for (int k = 0; k < it.count; k++) {
                    const ap_shape *s = &it.shapes[k];
                    if (s->color != col || hypot(cx[m] - s->cx, cy[m] - s->cy) > 1.5) continue;
                    /* fully covered pixels: the area less about half a pixel of rim */
                    double full = expected_area(s->kind, s->radius);
                    found = area[m] <= full + 1 && area[m] >= full * 0.6;
                    if (!found)
                        fprintf(stderr, "item %d: %s %s area %d, expected about %.0f\n", (int)i,
                                ap_shape_color_names[col], ap_shape_kind_names[s->kind], area[m], full);
                }
                bad += !found;
            }
        }
    }
    CHECK_MSG(bad == 0, "%d label mismatches", bad);
    for (int n = 1; n <= AP_SHAPES_MAX; n++) CHECK_MSG(hist[n] > 50, "count %d drawn %d times of 400", n, hist[n]);
    for (int k = 0; k < AP_COLORS; k++) CHECK(colors[k] > 60);
    for (int k = 0; k < AP_SHAPE_KINDS; k++) CHECK(kinds[k] > 150);
}

/* Anti-aliased: some pixels are strictly between a shape's colour and the background. */
static void test_antialiased(void) {
    ap_shapes_item it;
    ap_shapes_item_make(3, 0, &it);
    unsigned char rgb[NPIX * 3];
    ap_shapes_render_u8(&it, rgb);
    const unsigned char *bg = ap_shape_background_rgb[it.background];
    int mixed = 0;
    for (int i = 0; i < NPIX; i++) {
        int is_bg = !memcmp(rgb + i * 3, bg, 3), is_shape = 0;
        for (int k = 0; k < AP_COLORS; k++) is_shape |= !memcmp(rgb + i * 3, ap_shape_color_rgb[k], 3);
        mixed += !is_bg && !is_shape;
    }
    CHECK(mixed > 10);
}

static void test_captions(void) {
    int styles[AP_CAPTION_STYLES] = {0}, bad = 0;
    for (uint64_t i = 0; i < 3000; i++) {
        ap_shapes_item it;
        ap_shapes_item_make(5, i, &it);
        styles[it.style]++;
        for (int st = 0; st < AP_CAPTION_STYLES; st++) {
            char cap[AP_SHAPES_CAPTION_MAX];
            ap_shapes_caption(&it, st, cap, sizeof cap);
            if (st == it.style) CHECK(!strcmp(cap, it.caption));
            ap_shapes_query q;
            int ok = ap_shapes_caption_parse(cap, &q) == 0 && ap_shapes_query_matches(&q, &it);
            int total = ok ? ap_shapes_query_total(&q) : -2;
            int want_total = st == AP_CAPTION_NOCOUNT ? -1 : it.count;
            if (!ok || total != want_total) {
                if (bad++ < 5) fprintf(stderr, "caption '%s' (style %d, %d shapes): parse/match %d total %d\n", cap,
                                       st, it.count, ok, total);
            }
            /* a caption does not match the labels of a different count */
            if (st != AP_CAPTION_NOCOUNT && it.count > 1) {
                ap_shapes_item fewer = it;
                fewer.count--;
                if (ok && ap_shapes_query_matches(&q, &fewer)) bad++;
            }
        }
    }
    CHECK_MSG(bad == 0, "%d caption failures", bad);
    for (int st = 0; st < AP_CAPTION_STYLES; st++) CHECK_MSG(styles[st] > 300, "style %d: %d", st, styles[st]);

    /* the grammar */
    ap_shapes_query q;
    CHECK(ap_shapes_caption_parse("two red circles and a blue square", &q) == 0 && q.n == 2 &&
          q.g[0].number == 2 && q.g[0].color == AP_COLOR_RED && q.g[0].kind == AP_SHAPE_CIRCLE &&
          q.g[1].number == 1 && q.g[1].color == AP_COLOR_BLUE && q.g[1].kind == AP_SHAPE_SQUARE &&
          ap_shapes_query_total(&q) == 3);
    CHECK(ap_shapes_caption_parse("Three Shapes", &q) == 0 && ap_shapes_query_total(&q) == 3);
    CHECK(ap_shapes_caption_parse("a yellow triangle", &q) == 0 && ap_shapes_query_total(&q) == 1);
    CHECK(ap_shapes_caption_parse("four circles", &q) == 0 && q.g[0].color == -1 && ap_shapes_query_total(&q) == 4);
    CHECK(ap_shapes_caption_parse("shapes in red, green and blue", &q) == 0 && q.n == 3 &&
          q.g[2].color == AP_COLOR_BLUE && ap_shapes_query_total(&q) == -1);
    CHECK(ap_shapes_caption_parse("red circles", &q) == 0 && ap_shapes_query_total(&q) == -1);
    CHECK(ap_shapes_caption_parse("two circles and a red circle", &q) == 0 && ap_shapes_query_total(&q) == -1);
    const char *bad_caps[] = {"", "two red circle", "a circles", "seven shapes", "zero shapes", "some shapes",
                              "two red", "two red circles blue squares", "shapes in", "shapes in pink"};
    for (size_t i = 0; i < sizeof bad_caps / sizeof bad_caps[0]; i++)
        CHECK_MSG(ap_shapes_caption_parse(bad_caps[i], &q) == -1, "'%s' parsed", bad_caps[i]);
}

/* The model-free reading gives the labels back on the dataset's images, also
 * after the blur and noise of a lossy model (a 2x downsampling and back). */
static void test_analyze(void) {
    ap_ctx *c = test_ctx();
    ap_tensor *x = NULL;
    ap_shapes_item items[200];
    CHECK(ap_shapes_batch(c, 8, 0, 200, &x, items) == AP_OK);
    ap_tensor *d = ap_resize(c, x, 32, 32, AP_RESIZE_BILINEAR, 1);
    ap_tensor *u = ap_resize(c, d, 64, 64, AP_RESIZE_BILINEAR, 0);
    CHECK_OK(c);
    int exact = 0, exact_soft = 0;
    for (int i = 0; x && u && i < 200; i++) {
        int per[AP_COLORS], want[AP_COLORS] = {0};
        for (int k = 0; k < items[i].count; k++) want[items[i].shapes[k].color]++;
        int n = ap_shapes_analyze((const float *)ap_tensor_cdata(x) + (size_t)i * NPIX * 3, S, S, per);
        exact += n == items[i].count && !memcmp(per, want, sizeof per);
        n = ap_shapes_analyze((const float *)ap_tensor_cdata(u) + (size_t)i * NPIX * 3, S, S, per);
        exact_soft += n == items[i].count && !memcmp(per, want, sizeof per);
    }
    CHECK_MSG(exact == 200, "%d of 200 read exactly", exact);
    CHECK_MSG(exact_soft >= 190, "%d of 200 read exactly after blurring", exact_soft);
    /* a plain gray picture has no shapes */
    float gray[NPIX * 3];
    for (int i = 0; i < NPIX * 3; i++) gray[i] = 0.1f;
    CHECK(ap_shapes_analyze(gray, S, S, NULL) == 0);
    ap_tensor_release(x);
    ap_tensor_release(d);
    ap_tensor_release(u);
    ap_ctx_free(c);
}

int main(void) {
    test_determinism();
    test_labels_match_pixels();
    test_antialiased();
    test_captions();
    test_analyze();
    return test_summary("shapes");
}
