/* Attention speed: forward and backward of ap_attention on SD1.5 shapes, f32
 * and bf16, median of several runs, beside the machine's measured peaks.
 *
 * FLOP convention (FlashAttention's): forward 4*B*H*T*S*d (the two products
 * Q K^T and P V), backward 2.5x the forward = 10*B*H*T*S*d (five products,
 * including recomputing Q K^T); halved when causal. Softmax work is not
 * counted. Effective GFLOP/s = counted flops / measured time.
 *
 * usage: attention [runs] [json path] [case filter]   (AP_NUM_THREADS sets the threads) */
#include "bench.h"
#include "peaks.h"

#include "alignprop.h"
#include "backend/cpu/attention.h"

#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    const char *name;
    int64_t B, T, S, heads, d;
    int causal;
} bcase;

int main(int argc, char **argv) {
    int runs = argc > 1 ? atoi(argv[1]) : 5;
    const char *json = argc > 2 ? argv[2] : "attention.json";
    const char *filter = argc > 3 ? argv[3] : NULL;
    if (runs < 1) runs = 1;
    ap_ctx *c = ap_ctx_create();
    if (!c || ap_last_status(c) != AP_OK) {
        fprintf(stderr, "context: %s\n", c ? ap_last_error(c) : "out of memory");
        return 1;
    }
    int threads = ap_get_num_threads(c);
    ap_attn_isa isa = ap_attn_isa_best();
    double pf = isa >= AP_ATTN_ISA_AVX512 ? peak_gflops(PEAK_FMA, 4000000L) : 0;
    double pb = isa >= AP_ATTN_ISA_AVX512_BF16 ? peak_gflops(PEAK_BF16DP, 4000000L) : 0;
    printf("attention benchmark: %d threads, path %s; measured peak f32 FMA %.0f GFLOP/s, "
           "bf16 dot %.0f GFLOP/s\n", threads, ap_attn_isa_name(isa), pf, pb);
    printf("flops: fwd 4*B*H*T*S*d, bwd 10*B*H*T*S*d (FlashAttention convention), median of %d runs\n\n",
           runs);
    printf("%-34s %-5s %9s %9s %9s %8s %8s %8s\n", "case", "prec", "fwd ms", "bwd ms", "total ms",
           "fwd GF/s", "bwd GF/s", "all GF/s");
    const bcase cases[] = {
        {"self B2 H8 T4096 d40", 2, 4096, 4096, 8, 40, 0},
        {"self B2 H8 T1024 d80", 2, 1024, 1024, 8, 80, 0},
        {"cross B2 H8 T4096 S77 d40", 2, 4096, 77, 8, 40, 0},
        {"cross B2 H8 T1024 S77 d80", 2, 1024, 77, 8, 80, 0},
        {"clip causal B2 H12 T77 d64", 2, 77, 77, 12, 64, 1},
    };
    FILE *jf = fopen(json, "w");
    if (jf)
        fprintf(jf, "{\"threads\": %d, \"path\": \"%s\", \"peak_f32_gflops\": %.1f, \"peak_bf16_gflops\": %.1f, \"runs\": %d, \"results\": [",
                threads, ap_attn_isa_name(isa), pf, pb, runs);
    int first = 1;
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const bcase *b = &cases[ci];
        if (filter && !strstr(b->name, filter)) continue;
        int64_t C = b->heads * b->d;
        ap_tensor *q = ap_tensor_new(c, AP_F32, 3, (int64_t[]){b->B, b->T, C});
        ap_tensor *k = ap_tensor_new(c, AP_F32, 3, (int64_t[]){b->B, b->S, C});
        ap_tensor *v = ap_tensor_new(c, AP_F32, 3, (int64_t[]){b->B, b->S, C});
        ap_tensor *g = ap_tensor_new(c, AP_F32, 3, (int64_t[]){b->B, b->T, C});
        ap_tensor *ts[4] = {q, k, v, g};
        unsigned seed = 1;
        for (int t = 0; t < 4; t++) {
            float *p = ap_tensor_data(ts[t]);
            for (int64_t i = 0; i < ap_tensor_numel(ts[t]); i++) {
                seed = seed * 1664525u + 1013904223u;
                p[i] = ((seed >> 8) * (1.0f / 16777216.0f) - 0.5f) * 2.0f;
            }
        }
        for (int t = 0; t < 3; t++) ap_tensor_set_requires_grad(ts[t], 1);
        double fl = (double)b->B * b->heads * b->T * b->S * b->d * (b->causal ? 0.5 : 1.0);
        for (int prec = 0; prec < 2; prec++) {
            if (prec && isa < AP_ATTN_ISA_AVX512_BF16) continue;
            ap_set_precision(c, prec ? AP_PREC_BF16 : AP_PREC_F32);
            double *tf = malloc(sizeof(double) * runs), *tb = malloc(sizeof(double) * runs);
            for (int r = -1; r < runs; r++) { /* one warm-up run */
                for (int t = 0; t < 3; t++) ap_tensor_zero_grad(ts[t]);
                double t0 = bench_now();
                ap_tensor *y = ap_attention(c, q, k, v, (int)b->heads, 0, b->causal);
                double t1 = bench_now();
                ap_backward(c, y, g);
                double t2 = bench_now();
                ap_tensor_release(y);
                if (r >= 0) {
                    tf[r] = t1 - t0;
                    tb[r] = t2 - t1;
                }
            }
            if (ap_last_status(c) != AP_OK) {
                fprintf(stderr, "%s: %s\n", b->name, ap_last_error(c));
                return 1;
            }
            double *tall = malloc(sizeof(double) * runs);
            for (int r = 0; r < runs; r++) tall[r] = tf[r] + tb[r];
            double ma = bench_median(tall, runs), mf = bench_median(tf, runs), mb = bench_median(tb, runs);
            free(tall);
            double gf = 4 * fl / mf / 1e9, gb = 10 * fl / mb / 1e9, ga = 14 * fl / ma / 1e9;
            printf("%-34s %-5s %9.2f %9.2f %9.2f %8.1f %8.1f %8.1f\n", b->name, prec ? "bf16" : "f32",
                   1e3 * mf, 1e3 * mb, 1e3 * ma, gf, gb, ga);
            if (jf) {
                fprintf(jf, "%s\n  {\"case\": \"%s\", \"precision\": \"%s\", \"fwd_ms\": %.3f, \"bwd_ms\": %.3f, \"total_ms\": %.3f, \"fwd_gflops\": %.1f, \"bwd_gflops\": %.1f, \"total_gflops\": %.1f}",
                        first ? "" : ",", b->name, prec ? "bf16" : "f32", 1e3 * mf, 1e3 * mb, 1e3 * ma,
                        gf, gb, ga);
                first = 0;
            }
            free(tf);
            free(tb);
        }
        for (int t = 0; t < 4; t++) ap_tensor_release(ts[t]);
    }
    if (jf) {
        fprintf(jf, "\n]}\n");
        fclose(jf);
        printf("\nwrote %s\n", json);
    }
    ap_ctx_free(c);
    return 0;
}
