/* PyTorch checkpoint reading speed: open (zip directory + data.pkl), and
 * loading every tensor as f32 and as bf16, reading stored entries in place
 * from the mapping ("direct") or through libzip's zip_fread ("libzip"). A
 * memcpy of the same bytes out of the mapping is the floor.
 *
 *   build/bench/torchio FILE [reps]
 *
 * A file shaped like SD1.5 (1,130 f32 tensors, 4.3 GB, ZIP64) can be written from the
 * spec's tensor list with Debian's python3-torch:
 *
 *   /usr/bin/python3 -c "import torch; sd = {}
 *   for l in open('../shared/spec/sd15_tensors.tsv'):
 *       if l.startswith('#'): continue
 *       c, n, s, _ = l.rstrip('\n').split('\t'); sd[n] = torch.randn(eval(s))
 *   torch.save({'state_dict': sd, 'global_step': 0}, '/tmp/sd15_like.ckpt')"
 *
 * The page cache is warm after the first pass (the numbers are for a file
 * already in memory; a cold read is bounded by the disk).
 */
#include "bench.h"
#include "core/internal.h"
#include "io/torchfile.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int is_float(const char *dt) { return dt[0] == 'F' || (dt[0] == 'B' && dt[1] == 'F'); }

/* Loads every floating tensor as dt; returns seconds. */
static double load_all(ap_ctx *c, ap_torchfile *pt, ap_dtype dt, size_t *stored_bytes) {
    double t0 = bench_now();
    size_t bytes = 0;
    for (int i = 0; i < ap_pt_count(pt); i++) {
        const char *d = ap_pt_dtype(pt, i);
        if (!is_float(d)) continue;
        ap_tensor *t = NULL;
        if (ap_pt_load(c, pt, ap_pt_name(pt, i), dt, &t) != AP_OK) {
            fprintf(stderr, "%s\n", ap_last_error(c));
            exit(1);
        }
        bytes += (size_t)ap_tensor_numel(t) * (d[1] == '3' ? 4 : d[1] == '6' ? 8 : 2);
        ap_tensor_release(t);
    }
    if (stored_bytes) *stored_bytes = bytes;
    return bench_now() - t0;
}

static double copy_all(ap_torchfile *pt, void *buf) {
    double t0 = bench_now();
    for (int i = 0; i < ap_pt_count(pt); i++) {
        size_t nb;
        const void *raw = ap_pt_raw(pt, i, &nb);
        if (raw) memcpy(buf, raw, nb);
    }
    return bench_now() - t0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE [reps]\n", argv[0]);
        return 2;
    }
    int reps = argc > 2 ? atoi(argv[2]) : 5;
    if (reps < 1) reps = 1;
    ap_ctx *c = ap_ctx_create();
    double *ts = calloc((size_t)reps, sizeof *ts);
    ap_torchfile *pt = NULL;
    for (int r = 0; r < reps; r++) {
        double t0 = bench_now();
        if (ap_pt_open(c, argv[1], &pt) != AP_OK) {
            fprintf(stderr, "%s\n", ap_last_error(c));
            return 1;
        }
        ts[r] = bench_now() - t0;
        if (r + 1 < reps) ap_pt_close(pt);
    }
    double t_open = bench_median(ts, reps);
    size_t bytes = 0, biggest = 0, n_raw = 0;
    for (int i = 0; i < ap_pt_count(pt); i++) {
        size_t nb;
        if (ap_pt_raw(pt, i, &nb)) n_raw++;
        if (nb > biggest) biggest = nb;
    }
    load_all(c, pt, AP_F32, &bytes); /* warm the page cache */
    printf("%s: %d tensors (%zu read in place), %.3f GB of floating-point storage, %d threads\n", argv[1],
           ap_pt_count(pt), n_raw, (double)bytes / 1e9, ap_get_num_threads(c));
    printf("%-28s %10s %10s\n", "operation (median)", "ms", "GB/s");
    printf("%-28s %10.1f %10s\n", "open (directory + data.pkl)", 1e3 * t_open, "-");
    void *buf = malloc(biggest ? biggest : 1);
    for (int r = 0; r < reps; r++) ts[r] = copy_all(pt, buf);
    double t = bench_median(ts, reps);
    printf("%-28s %10.1f %10.2f\n", "memcpy from the mapping", 1e3 * t, (double)bytes / t / 1e9);
    free(buf);
    static const struct {
        const char *name;
        ap_dtype dt;
        int direct;
    } modes[] = {
        {"load f32, direct", AP_F32, 1},
        {"load f32, libzip", AP_F32, 0},
        {"load bf16, direct", AP_BF16, 1},
        {"load bf16, libzip", AP_BF16, 0},
    };
    for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
        ap_pt_set_direct(pt, modes[m].direct);
        for (int r = 0; r < reps; r++) ts[r] = load_all(c, pt, modes[m].dt, NULL);
        t = bench_median(ts, reps);
        printf("%-28s %10.1f %10.2f\n", modes[m].name, 1e3 * t, (double)bytes / t / 1e9);
    }
    ap_pt_close(pt);
    free(ts);
    ap_ctx_free(c);
    return 0;
}
