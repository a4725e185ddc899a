/* The procedural shapes dataset (docs/data.md): 64x64 RGB images of 1 to 5
 * circles, squares and triangles in six named colours on a plain background,
 * with a caption and the labels (count, kind and colour of every shape).
 *
 * Item i of seed s is a pure function of (s, i): any item can be regenerated
 * alone, in any order, on any thread, bit-identically. Shapes never overlap:
 * their bounding circles keep a gap of at least AP_SHAPES_GAP pixels, so every
 * shape is its own connected region and "the number of shapes" is well defined.
 * Edges are anti-aliased (coverage from the signed distance to the outline). */
#ifndef AP_TRAIN_SHAPES_H
#define AP_TRAIN_SHAPES_H

#include "alignprop.h"

#include <stddef.h>
#include <stdint.h>

#define AP_SHAPES_SIZE 64 /* images are AP_SHAPES_SIZE x AP_SHAPES_SIZE */
#define AP_SHAPES_MAX 5   /* 1..AP_SHAPES_MAX shapes per image */
#define AP_SHAPES_GAP 3   /* least gap between bounding circles, pixels */
#define AP_SHAPES_CAPTION_MAX 128

typedef enum { AP_SHAPE_CIRCLE = 0, AP_SHAPE_SQUARE, AP_SHAPE_TRIANGLE, AP_SHAPE_KINDS } ap_shape_kind;
typedef enum {
    AP_COLOR_RED = 0,
    AP_COLOR_GREEN,
    AP_COLOR_BLUE,
    AP_COLOR_YELLOW,
    AP_COLOR_PURPLE,
    AP_COLOR_ORANGE,
    AP_COLORS
} ap_shape_color;
#define AP_SHAPES_BACKGROUNDS 4

/* Caption styles (the generator picks one per item; see docs/data.md). */
typedef enum {
    AP_CAPTION_FULL = 0, /* "two red circles and a blue square" */
    AP_CAPTION_TOTAL,    /* "three shapes" */
    AP_CAPTION_KINDS,    /* "two circles and a square" */
    AP_CAPTION_COLORS,   /* "two red shapes and a blue shape" */
    AP_CAPTION_NOCOUNT,  /* "circles and squares" or "shapes in red and blue" */
    AP_CAPTION_STYLES
} ap_caption_style;

typedef struct {
    int kind;   /* ap_shape_kind */
    int color;  /* ap_shape_color */
    float cx, cy; /* centre, pixels (pixel centres are at integer + 0.5) */
    float radius; /* bounding-circle radius, pixels */
    float angle;  /* rotation, radians (squares and triangles) */
} ap_shape;

typedef struct {
    int count; /* 1..AP_SHAPES_MAX */
    ap_shape shapes[AP_SHAPES_MAX];
    int background; /* 0..AP_SHAPES_BACKGROUNDS-1 */
    int style;      /* ap_caption_style of caption */
    char caption[AP_SHAPES_CAPTION_MAX];
} ap_shapes_item;

/* Names ("circle", "red", "white") and palettes (sRGB bytes). */
extern const char *const ap_shape_kind_names[AP_SHAPE_KINDS];
extern const char *const ap_shape_color_names[AP_COLORS];
extern const unsigned char ap_shape_color_rgb[AP_COLORS][3];
extern const char *const ap_shape_background_names[AP_SHAPES_BACKGROUNDS];
extern const unsigned char ap_shape_background_rgb[AP_SHAPES_BACKGROUNDS][3];

/* The labels and caption of item `index` of the stream `seed` (no pixels). */
void ap_shapes_item_make(uint64_t seed, uint64_t index, ap_shapes_item *out);
/* The caption of it in a given style (what ap_shapes_item_make wrote for its
 * own style). Returns buf. */
const char *ap_shapes_caption(const ap_shapes_item *it, int style, char *buf, size_t n);

/* Renders it: rgb [64,64,3] bytes, or img [64,64,3] f32 in [-1,1] (the same
 * picture before quantisation). */
void ap_shapes_render_u8(const ap_shapes_item *it, unsigned char *rgb);
void ap_shapes_render_f32(const ap_shapes_item *it, float *img);

/* Items start..start+n-1 of stream seed: images [n,64,64,3] f32 in [-1,1] (a
 * new tensor in *images) and, when items is not NULL, their labels (n of them). */
ap_status ap_shapes_batch(ap_ctx *c, uint64_t seed, uint64_t start, int n, ap_tensor **images,
                          ap_shapes_item *items);

/* ------------------------------------------------------------ captions
 * A caption read back: groups such as "two red circles" (number 2, colour red,
 * kind circle), "shapes" in "shapes in red" (number -1: unnamed; kind -1: any).
 * The caption describes the whole image: each group's filter (colour, kind,
 * -1 = any) selects shapes, a numbered group holds exactly that many, an
 * unnumbered one at least one, and every shape falls in some group. */
typedef struct {
    int number; /* -1: not named */
    int color;  /* -1: any */
    int kind;   /* -1: any */
} ap_shapes_group;
typedef struct {
    int n;
    ap_shapes_group g[AP_SHAPES_MAX * 2];
} ap_shapes_query;

/* Returns 0 and fills q, or -1 when the caption is not in the grammar. */
int ap_shapes_caption_parse(const char *caption, ap_shapes_query *q);
/* 1 when the labels of it satisfy q. */
int ap_shapes_query_matches(const ap_shapes_query *q, const ap_shapes_item *it);
/* The total count q names (sum of its numbered groups when every group is
 * numbered), or -1 when it names none. */
int ap_shapes_query_total(const ap_shapes_query *q);

/* ------------------------------------------------------------ analysis
 * A model-free reading of a picture of shapes (a generated sample, say): each
 * pixel is background when its chroma (max - min channel, in [0,1]) is below
 * 0.25, else the nearest palette colour when within RGB distance 0.3, else
 * nothing; shapes are 8-connected regions of one colour of at least
 * AP_SHAPES_MIN_REGION pixels. img [H,W,3] f32 in [-1,1]. Returns the number of
 * shapes; per_color (may be NULL) receives the shapes of each colour. On the
 * dataset's own images it gives the labels exactly (tests/test_shapes.c). */
#define AP_SHAPES_MIN_REGION 12
int ap_shapes_analyze(const float *img, int H, int W, int per_color[AP_COLORS]);

#endif
