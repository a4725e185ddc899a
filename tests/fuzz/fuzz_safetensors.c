/* libFuzzer target for the safetensors reader (and the JSON parser under it).
 *
 * Built only with clang, on request, and never by default:
 *   cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DAP_FUZZ=ON
 *   cmake --build build-fuzz --target fuzz_safetensors
 *   build-fuzz/fuzz_safetensors -dict=tests/fuzz/safetensors.dict -max_len=65536 \
 *       corpus-dir tests/fuzz/corpus
 * (libFuzzer adds new inputs to the first directory: give it a scratch one.)
 *
 * Each input is a whole file, opened in place with ap_st_open_memory: libFuzzer
 * hands over an exact-size heap buffer, so AddressSanitizer catches a read
 * even one byte past the end (a mapped file would hide it in the rest of its
 * last page). A file that opens is then read in every way the API offers:
 * every tensor's bytes, every tensor loaded as every dtype, the metadata. */
#include "alignprop.h"
#include "io/safetensors.h"

#include <stdint.h>
#include <stdlib.h>

static ap_ctx *ctx;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!ctx) {
        ctx = ap_ctx_create();
        if (!ctx) abort();
        ap_set_num_threads(ctx, 1);
    }
    ap_safetensors *st = NULL;
    if (ap_st_open_memory(ctx, "fuzz.safetensors", data, size, &st) != AP_OK) {
        if (st || !ap_last_error(ctx)[0]) abort(); /* a failure leaves no handle and says why */
        ap_clear_error(ctx);
        return 0;
    }
    volatile unsigned sink = 0;
    for (int i = 0; i < ap_st_count(st); i++) {
        const char *name = ap_st_name(st, i);
        if (!name || ap_st_find(st, name) != i || !ap_st_dtype(st, i)) abort();
        int64_t shape[AP_MAX_DIMS];
        if (ap_st_shape(st, i, shape) < 0) abort();
        size_t nb;
        const unsigned char *raw = ap_st_raw(st, i, &nb);
        for (size_t k = 0; k < nb; k++) sink += raw[k];
        for (int dt = 0; dt < AP_DTYPE_COUNT_; dt++) {
            ap_tensor *t = NULL;
            ap_status s = ap_st_load(ctx, st, name, (ap_dtype)dt, &t);
            if ((s == AP_OK) != (t != NULL)) abort();
            ap_tensor_release(t);
            ap_clear_error(ctx);
        }
    }
    for (int i = 0; i < ap_st_metadata_count(st); i++)
        if (!ap_st_metadata(st, ap_st_metadata_key(st, i))) abort();
    ap_st_close(st);
    return 0;
}
