/* bench/tokenizer: loading the bundled CLIP tokenizer, tokenizing prompts to
 * 77-id sequences (cold: a fresh tokenizer per pass, so every word goes
 * through BPE; warm: the word cache filled), one long word, and mapping all
 * SD1.5 tensor names both ways. Medians of --runs runs (default 7).
 *
 *   build/bench/tokenizer [--runs N] [--prompts FILE]
 * FILE defaults to $AP_SHARED_DIR/data/prompts/hps_v2_all.txt (752 captions);
 * without it, synthetic prompts are used. */
#include "bench.h"
#include "models/names.h"
#include "models/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static char **read_prompts(const char *path, int *n) {
    FILE *f = path ? fopen(path, "rb") : NULL;
    char **p = malloc(sizeof *p * 4096);
    *n = 0;
    if (f) {
        char line[4096];
        while (*n < 4096 && fgets(line, sizeof line, f)) {
            line[strcspn(line, "\r\n")] = 0;
            if (line[0]) p[(*n)++] = strdup(line);
        }
        fclose(f);
    }
    if (*n == 0) { /* synthetic: 500 prompts of 12 words from a small word list */
        static const char *w[] = {"a", "photo", "of", "cat", "astronaut", "riding", "horse", "on", "the", "moon",
                                  "highly", "detailed", "painting", "by", "greg", "rutkowski", "trending", "artstation",
                                  "4k", "cinematic", "lighting", "portrait", "forest", "sunset"};
        for (int i = 0; i < 500; i++) {
            char buf[512] = "";
            for (int k = 0; k < 12; k++) {
                strcat(buf, w[(i * 7 + k * 13) % 24]);
                strcat(buf, " ");
            }
            p[(*n)++] = strdup(buf);
        }
    }
    return p;
}

int main(int argc, char **argv) {
    int runs = 7;
    const char *prompts_path = NULL;
    char def[4096];
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--prompts") && i + 1 < argc) prompts_path = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--runs N] [--prompts FILE]\n", argv[0]);
            return 2;
        }
    }
    if (runs < 1) runs = 1;
    if (!prompts_path && getenv("AP_SHARED_DIR")) {
        snprintf(def, sizeof def, "%s/data/prompts/hps_v2_all.txt", getenv("AP_SHARED_DIR"));
        prompts_path = def;
    }
    int np;
    char **prompts = read_prompts(prompts_path, &np);
    double *t = malloc(sizeof *t * (size_t)runs);

    ap_tokenizer *tok = NULL;
    for (int r = 0; r < runs; r++) {
        ap_tokenizer_free(tok);
        double t0 = bench_now();
        if (ap_tokenizer_load_bundled(NULL, &tok) != AP_OK) return 1;
        t[r] = bench_now() - t0;
    }
    printf("%-34s %10.2f ms\n", "load bundled merges (inflate+build)", 1e3 * bench_median(t, runs));

    int32_t ids[AP_TOK_CONTEXT];
    int64_t total = 0, nt;
    for (int i = 0; i < np; i++) {
        ap_tokenize_seq(NULL, tok, prompts[i], NULL, ids, &nt);
        total += nt;
    }
    for (int pass = 0; pass < 2; pass++) {
        for (int r = 0; r < runs; r++) {
            ap_tokenizer *tk = tok;
            if (pass == 0) ap_tokenizer_load_bundled(NULL, &tk); /* cold: an empty cache */
            double t0 = bench_now();
            for (int i = 0; i < np; i++) ap_tokenize_seq(NULL, tk, prompts[i], NULL, ids, &nt);
            t[r] = bench_now() - t0;
            if (pass == 0) ap_tokenizer_free(tk);
        }
        double m = bench_median(t, runs);
        printf("%-34s %10.2f us/prompt  %8.2f M ids/s  (%d prompts, %.1f ids each, %s)\n",
               pass ? "tokenize to 77, warm cache" : "tokenize to 77, cold cache", 1e6 * m / np,
               (double)total / m * 1e-6, np, (double)total / np, prompts_path ? prompts_path : "synthetic");
    }

    size_t big = 1 << 20;
    char *word = malloc(big);
    unsigned s = 1;
    for (size_t i = 0; i < big; i++) word[i] = (char)('a' + (s = s * 1103515245u + 12345u) % 26);
    for (int r = 0; r < runs; r++) {
        double t0 = bench_now();
        ap_tokenize(NULL, tok, word, big, 0, NULL, 0);
        t[r] = bench_now() - t0;
    }
    printf("%-34s %10.2f ms\n", "one 1 MiB word (heap BPE)", 1e3 * bench_median(t, runs));
    free(word);

    const ap_name_table *nt_sd1 = ap_name_table_sd1();
    int n = ap_name_table_count(nt_sd1);
    char (*ldm)[160] = malloc(sizeof *ldm * (size_t)n), (*dif)[160] = malloc(sizeof *dif * (size_t)n);
    for (int i = 0; i < n; i++) ap_name_table_get(nt_sd1, i, ldm[i], 160, dif[i], 160, NULL);
    for (int r = 0; r < runs; r++) {
        char out[256];
        double t0 = bench_now();
        for (int i = 0; i < n; i++) {
            ap_name_ldm_to_diffusers(ldm[i], out, sizeof out, NULL);
            ap_name_diffusers_to_ldm(dif[i], out, sizeof out, NULL);
        }
        t[r] = bench_now() - t0;
    }
    printf("%-34s %10.2f ms  (%d names, %.2f us per mapping)\n", "map all SD1.5 names both ways",
           1e3 * bench_median(t, runs), n, 1e6 * bench_median(t, runs) / (2.0 * n));
    free(ldm);
    free(dif);
    ap_tokenizer_free(tok);
    for (int i = 0; i < np; i++) free(prompts[i]);
    free(prompts);
    free(t);
    return 0;
}
