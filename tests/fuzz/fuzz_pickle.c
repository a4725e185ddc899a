/* libFuzzer target for the PyTorch checkpoint reader: an input starting with
 * "PK" is a whole checkpoint (zip directory, data.pkl, storages: every tensor
 * that opens is loaded), anything else is a data.pkl for the unpickler alone.
 * The committed fixtures are a seed corpus for both.
 *
 * Not part of the default build (it needs clang). From the repository root,
 * after `make` (the reader is compiled instrumented; the rest of the library
 * comes from build/libalignprop.a):
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -fopenmp -march=x86-64-v3 -Iinclude -Isrc \
 *       tests/fuzz/fuzz_pickle.c src/io/pickle.c src/io/torchfile.c build/libalignprop.a \
 *       -ldnnl -lzip -lm -o build/fuzz_pickle
 *   mkdir -p build/fuzz_corpus && build/fuzz_pickle -max_len=65536 build/fuzz_corpus tests/ref/torch
 */
#include "io/pickle.h"
#include "io/torchfile.h"

#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static ap_ctx *c;
    if (!c) {
        c = ap_ctx_create();
        ap_set_num_threads(c, 1);
    }
    ap_clear_error(c);
    if (size >= 2 && !memcmp(data, "PK", 2)) {
        ap_torchfile *pt = NULL;
        if (ap_pt_open_memory(c, "fuzz.pt", data, size, &pt) == AP_OK) {
            for (int i = 0; i < ap_pt_count(pt); i++) {
                int64_t shape[AP_MAX_DIMS], numel = 1;
                int nd = ap_pt_shape(pt, i, shape);
                for (int k = 0; k < nd; k++) numel *= shape[k];
                if (numel > (1 << 20)) continue; /* a zero stride may expand a small storage a lot */
                const char *dt = ap_pt_dtype(pt, i);
                int fl = dt[0] == 'F' || (dt[0] == 'B' && dt[1] == 'F');
                size_t nb;
                const uint8_t *raw = ap_pt_raw(pt, i, &nb);
                volatile uint8_t sink = 0;
                for (size_t k = 0; raw && k < nb; k += 4096) sink ^= raw[k]; /* must lie inside the input */
                (void)sink;
                for (int direct = 0; direct < 2; direct++) {
                    ap_tensor *t = NULL;
                    ap_pt_set_direct(pt, direct);
                    ap_pt_load(c, pt, ap_pt_name(pt, i), fl ? AP_BF16 : AP_I64, &t);
                    ap_tensor_release(t);
                    ap_clear_error(c);
                }
            }
            ap_pt_close(pt);
        }
    } else {
        ap_pk_state st;
        ap_pk_load_state(c, "fuzz.pkl", data, size, &st);
        ap_pk_state_free(&st);
    }
    ap_clear_error(c);
    return 0;
}
