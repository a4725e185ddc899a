/* How well a pretrained shapes model follows its captions (the model card's
 * numbers): N held-out items of the shapes stream (their full-style captions:
 * "two red circles and a blue square"), one sample each; a pixel classifier
 * counts the shapes (connected regions that differ from the background) and
 * names each one's colour (nearest palette colour of its mean). Reports the
 * share of named colours present and the share of images whose count matches
 * the caption, for the samples and, as the classifier's own check, for the
 * dataset's images of the same items, and for the VAE's reconstructions of
 * them (with their L1 error). The count reward's counting model reads the
 * samples too: how often its most likely count matches the caption's and the
 * pixel count's (how far the demo's reward can be trusted on this model).
 *
 * usage: pretrain MODEL [-n N] [--steps S] [--cfg G] [--seed S] [--grid OUT.png]
 *        [--recon-grid OUT.png]   (data | reconstruction pairs) */
#include "bench.h"
#include "core/internal.h"
#include "io/image.h"
#include "models/sd.h"
#include "pipeline/txt2img.h"
#include "rewards/counter.h"
#include "train/shapes.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S AP_SHAPES_SIZE
#define MIN_AREA 10 /* pixels: smaller regions are noise */

typedef struct {
    int count;
    int colors[AP_COLORS]; /* regions of each palette colour */
} analysis;

static double dist2(const double *a, const unsigned char *b) {
    double d = 0;
    for (int k = 0; k < 3; k++) d += (a[k] - b[k]) * (a[k] - b[k]);
    return d;
}

/* img [S,S,3] f32 in [-1,1] */
static void analyse(const float *img, analysis *out) {
    unsigned char px[S * S * 3];
    for (int i = 0; i < S * S * 3; i++) {
        double v = (img[i] + 1.0) * 127.5;
        px[i] = (unsigned char)(v < 0 ? 0 : v > 255 ? 255 : lrint(v));
    }
    /* background: the mean of the border pixels closest to their median */
    double bg[3] = {0, 0, 0};
    int nb = 0;
    unsigned char border[4 * S][3];
    for (int i = 0; i < S; i++) {
        int idx[4] = {i, (S - 1) * S + i, i * S, i * S + S - 1};
        for (int k = 0; k < 4; k++) memcpy(border[nb++], px + idx[k] * 3, 3);
    }
    for (int ch = 0; ch < 3; ch++) {
        int hist[256] = {0};
        for (int i = 0; i < nb; i++) hist[border[i][ch]]++;
        int acc = 0, m = 0;
        while (acc + hist[m] < nb / 2) acc += hist[m++];
        bg[ch] = m;
    }
    /* foreground: far from the background; 4-connected regions */
    static int label[S * S], stack[S * S];
    memset(out, 0, sizeof *out);
    for (int i = 0; i < S * S; i++) label[i] = dist2(bg, px + i * 3) > 70.0 * 70.0 ? 0 : -1;
    int next = 1;
    for (int i = 0; i < S * S; i++) {
        if (label[i] != 0) continue;
        int sp = 0, area = 0;
        double sum[3] = {0, 0, 0};
        stack[sp++] = i;
        label[i] = next;
        while (sp) {
            int p = stack[--sp], y = p / S, x = p % S;
            area++;
            for (int k = 0; k < 3; k++) sum[k] += px[p * 3 + k];
            int nbr[4] = {y > 0 ? p - S : -1, y < S - 1 ? p + S : -1, x > 0 ? p - 1 : -1, x < S - 1 ? p + 1 : -1};
            for (int k = 0; k < 4; k++)
                if (nbr[k] >= 0 && label[nbr[k]] == 0) {
                    label[nbr[k]] = next;
                    stack[sp++] = nbr[k];
                }
        }
        next++;
        if (area < MIN_AREA) continue;
        double mean[3] = {sum[0] / area, sum[1] / area, sum[2] / area};
        int best = 0;
        for (int c = 1; c < AP_COLORS; c++)
            if (dist2(mean, ap_shape_color_rgb[c]) < dist2(mean, ap_shape_color_rgb[best])) best = c;
        out->count++;
        out->colors[best]++;
    }
}

typedef struct {
    int images, count_ok, named, named_present;
} score;

static void add_score(score *s, const ap_shapes_item *it, const analysis *a) {
    s->images++;
    s->count_ok += a->count == it->count;
    bool named[AP_COLORS] = {false};
    for (int k = 0; k < it->count; k++) named[it->shapes[k].color] = true;
    for (int c = 0; c < AP_COLORS; c++)
        if (named[c]) s->named++, s->named_present += a->colors[c] > 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL [-n N] [--steps S] [--cfg G] [--seed S] [--grid OUT.png]\n", argv[0]);
        return 2;
    }
    const char *model = argv[1], *grid = NULL, *rgrid = NULL;
    int n = 64, steps = 50;
    float cfg = 5.0f;
    uint64_t seed = 1000;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "-n")) n = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--steps")) steps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--cfg")) cfg = (float)atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--seed")) seed = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--grid")) grid = argv[i + 1];
        else if (!strcmp(argv[i], "--recon-grid")) rgrid = argv[i + 1];
    }
    ap_ctx *c = ap_ctx_create();
    ap_set_precision(c, ap_cpu_has_bf16() ? AP_PREC_BF16 : AP_PREC_F32);
    ap_sd_model *m = NULL;
    if (ap_sd_load(c, model, AP_BF16, &m) != AP_OK) {
        fprintf(stderr, "%s\n", ap_last_error(c));
        return 1;
    }
    ap_counter *counter = NULL;
    if (ap_counter_load_default(c, NULL, &counter) != AP_OK) {
        fprintf(stderr, "%s\n", ap_last_error(c));
        return 1;
    }
    int ctr_caption = 0, ctr_pixels = 0;
    score gen = {0}, data = {0}, recon = {0};
    double l1 = 0, t0 = bench_now();
    ap_tensor *all = NULL, *rall = NULL;
    /* held-out items: a stream seed the pretraining (seed 0) never reads */
    for (int i = 0; i < n && !ap_failed(c); i++) {
        ap_shapes_item it;
        ap_shapes_item_make(seed, (uint64_t)i, &it);
        char cap[AP_SHAPES_CAPTION_MAX];
        ap_shapes_caption(&it, AP_CAPTION_FULL, cap, sizeof cap);
        float ref[S * S * 3];
        ap_shapes_render_f32(&it, ref);
        analysis a;
        analyse(ref, &a);
        add_score(&data, &it, &a);
        /* the VAE's reconstruction of the data image (mean latent) */
        ap_tensor *x = ap_tensor_from_data(c, AP_F32, 4, (int64_t[]){1, S, S, 3}, ref);
        ap_tensor *mo = x ? ap_vae_encode_moments(c, m->vae, x) : NULL;
        if (mo) {
            int64_t h = mo->shape[1], w = mo->shape[2], z = mo->shape[3] / 2;
            ap_tensor *mean = ap_tensor_new(c, AP_F32, 4, (int64_t[]){1, h, w, z});
            for (int64_t p = 0; mean && p < h * w; p++)
                for (int64_t k = 0; k < z; k++)
                    ap_f32(mean)[p * z + k] = ap_cf32(mo)[p * 2 * z + k] * m->vae->cfg.scaling_factor;
            ap_tensor *rec = mean ? ap_vae_decode(c, m->vae, mean) : NULL;
            for (int64_t k = 0; rec && k < S * S * 3; k++) l1 += fabs(ap_cf32(rec)[k] - ref[k]);
            if (rec && rgrid && i < 16) { /* data and reconstruction side by side */
                ap_tensor *pair = ap_concat_batch(c, x, rec);
                ap_tensor *cat = rall ? ap_concat_batch(c, rall, pair) : ap_tensor_retain(pair);
                ap_tensor_release(rall);
                ap_tensor_release(pair);
                rall = cat;
            }
            if (rec) {
                analyse(ap_cf32(rec), &a);
                add_score(&recon, &it, &a);
            }
            ap_tensor_release(mean);
            ap_tensor_release(rec);
        }
        ap_tensor_release(x);
        ap_tensor_release(mo);
        ap_txt2img_opts o;
        ap_txt2img_defaults(&o);
        o.prompt = cap;
        o.steps = steps;
        o.cfg = cfg;
        o.seed = (uint64_t)i;
        o.width = o.height = S;
        ap_tensor *img = NULL;
        if (ap_txt2img(c, m, &o, &img) != AP_OK) break;
        analyse(ap_cf32(img), &a);
        add_score(&gen, &it, &a);
        ap_tensor *lg = ap_counter_logits(c, counter, img);
        int best = 0;
        for (int k = 1; lg && k < AP_COUNTER_CLASSES; k++)
            if (ap_cf32(lg)[k] > ap_cf32(lg)[best]) best = k;
        ap_tensor_release(lg);
        ctr_caption += best == it.count;
        ctr_pixels += best == a.count;
        printf("%3d  count %d/%d (counter %d)  %s\n", i, a.count, it.count, best, cap);
        if (grid && i < 32) {
            ap_tensor *cat = all ? ap_concat_batch(c, all, img) : ap_tensor_retain(img);
            ap_tensor_release(all);
            all = cat;
        }
        ap_tensor_release(img);
    }
    if (ap_failed(c)) {
        fprintf(stderr, "%s\n", ap_last_error(c));
        return 1;
    }
    if (grid && all) ap_png_write_grid(c, grid, all, 8, 0, NULL, NULL);
    if (rgrid && rall) ap_png_write_grid(c, rgrid, rall, 8, 0, NULL, NULL);
    ap_tensor_release(all);
    ap_tensor_release(rall);
    printf("\n%-28s %10s %10s %10s\n", "", "samples", "data", "VAE recon");
    printf("%-28s %9.1f%% %9.1f%% %9.1f%%\n", "named colours present", 100.0 * gen.named_present / gen.named,
           100.0 * data.named_present / data.named, 100.0 * recon.named_present / recon.named);
    printf("%-28s %9.1f%% %9.1f%% %9.1f%%\n", "count matches caption", 100.0 * gen.count_ok / gen.images,
           100.0 * data.count_ok / data.images, 100.0 * recon.count_ok / recon.images);
    printf("VAE reconstruction L1 (mean |x - x'|, [-1,1] scale): %.4f\n", l1 / ((double)n * S * S * 3));
    printf("counting model on the samples: matches the caption %.1f%%, the pixel count %.1f%%\n",
           100.0 * ctr_caption / n, 100.0 * ctr_pixels / n);
    printf("{\"model\": \"%s\", \"images\": %d, \"steps\": %d, \"cfg\": %g, \"colours_present\": %.4f, "
           "\"count_match\": %.4f, \"data_colours_present\": %.4f, \"data_count_match\": %.4f, \"recon_colours_present\": %.4f, \"recon_count_match\": %.4f, \"vae_l1\": %.5f, "
           "\"counter_caption\": %.4f, \"counter_pixels\": %.4f, \"seconds\": %.1f}\n",
           model, n, steps, cfg, (double)gen.named_present / gen.named, (double)gen.count_ok / gen.images,
           (double)data.named_present / data.named, (double)data.count_ok / data.images,
           (double)recon.named_present / recon.named, (double)recon.count_ok / recon.images, l1 / ((double)n * S * S * 3), (double)ctr_caption / n,
           (double)ctr_pixels / n, bench_now() - t0);
    ap_counter_free(counter);
    ap_sd_free(m);
    ap_ctx_free(c);
    return 0;
}
