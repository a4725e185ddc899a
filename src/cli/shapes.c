/* alignprop shapes: a look at the procedural shapes dataset (a PNG grid and
 * its captions). */
#include "io/atomic.h"
#include "io/image.h"
#include "train/shapes.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int usage(void) {
    fprintf(stderr, "usage: alignprop shapes [--seed S] [--start I] [-n N] -o DIR\n"
                    "  writes DIR/grid.png (items I..I+N-1 of stream S, 8 per row) and DIR/captions.txt\n"
                    "  (index, count, caption per line); N at most 1024, default 64\n");
    return 2;
}

static int parse_u64(const char *flag, const char *s, unsigned long long *out) {
    char *end;
    errno = 0;
    *out = strtoull(s, &end, 10);
    if (!*s || *end || errno || s[0] == '-') {
        fprintf(stderr, "alignprop shapes: %s %s: expected a non-negative integer\n", flag, s);
        return -1;
    }
    return 0;
}

int ap_cli_shapes(int argc, char **argv) {
    unsigned long long seed = 0, start = 0, n = 64;
    const char *outdir = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seed") && i + 1 < argc) {
            if (parse_u64("--seed", argv[++i], &seed)) return 2;
        } else if (!strcmp(argv[i], "--start") && i + 1 < argc) {
            if (parse_u64("--start", argv[++i], &start)) return 2;
        } else if (!strcmp(argv[i], "-n") && i + 1 < argc) {
            if (parse_u64("-n", argv[++i], &n)) return 2;
            if (n < 1 || n > 1024) {
                fprintf(stderr, "alignprop shapes: -n %llu: expected 1 to 1024\n", n);
                return 2;
            }
        } else if (!strcmp(argv[i], "-o") && i + 1 < argc)
            outdir = argv[++i];
        else {
            fprintf(stderr, "alignprop shapes: unknown or incomplete option '%s'\n", argv[i]);
            return usage();
        }
    }
    if (!outdir) {
        fprintf(stderr, "alignprop shapes: -o DIR is required\n");
        return usage();
    }
    if (mkdir(outdir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "alignprop shapes: cannot create %s: %s\n", outdir, strerror(errno));
        return 1;
    }
    ap_ctx *c = ap_ctx_create();
    ap_tensor *images = NULL;
    ap_shapes_item *items = malloc(n * sizeof *items);
    char *text = malloc(n * (AP_SHAPES_CAPTION_MAX + 32));
    char grid[4096], capf[4096];
    snprintf(grid, sizeof grid, "%s/grid.png", outdir);
    snprintf(capf, sizeof capf, "%s/captions.txt", outdir);
    int rc = 1;
    if (!items || !text) {
        fprintf(stderr, "alignprop shapes: out of memory\n");
        goto done;
    }
    if (ap_shapes_batch(c, seed, start, (int)n, &images, items) != AP_OK) goto fail;
    size_t len = 0;
    for (unsigned long long i = 0; i < n; i++)
        len += (size_t)sprintf(text + len, "%llu\t%d\t%s\n", start + i, items[i].count, items[i].caption);
    char seed_s[32];
    snprintf(seed_s, sizeof seed_s, "%llu", seed);
    const char *keys[] = {"dataset", "seed"}, *vals[] = {"alignprop shapes", seed_s};
    if (ap_png_write_grid(c, grid, images, 8, 2, keys, vals) != AP_OK) goto fail;
    if (ap_write_file(c, capf, text, len) != AP_OK) goto fail;
    printf("wrote %s and %s: items %llu..%llu of seed %llu\n", grid, capf, start, start + n - 1, seed);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "alignprop shapes: %s\n", ap_last_error(c));
done:
    ap_tensor_release(images);
    free(items);
    free(text);
    ap_ctx_free(c);
    return rc;
}
