/* libFuzzer target for the CLIP tokenizer. Build with clang:
 *   cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DAP_FUZZ=ON
 *   cmake --build build-fuzz --target fuzz_tokenizer
 *   build-fuzz/fuzz_tokenizer -max_len=4096 -max_total_time=60
 * It links tokenizer.c alone (with the stand-in for the context's error
 * setter below), so the rest of the library need not build with clang.
 * The first byte picks the mode: text through ap_tokenize / ap_tokenize_seq
 * (invariants checked, any violation traps), or (high bit set) the rest as a
 * vocab.json for the HF loader, which must fail cleanly or load. */
#include "models/tokenizer.h"

#include "core/internal.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef AP_FUZZ_STANDALONE
/* the tokenizer is called with a NULL context here; a message must still be
 * well-formed */
ap_status ap_seterr(ap_ctx *c, ap_status s, const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    (void)c;
    return s;
}
#endif

static ap_tokenizer *tok;
static char dir[64];

static void setup(void) {
    if (tok) return;
    if (ap_tokenizer_load_bundled(NULL, &tok) != AP_OK) __builtin_trap();
    snprintf(dir, sizeof dir, "/tmp/fuzz_tokenizer_XXXXXX");
    if (!mkdtemp(dir)) __builtin_trap();
    char path[128];
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    FILE *f = fopen(path, "wb");
    if (!f) __builtin_trap();
    fputs("#version: 0.2\ni n\nt h\nth e</w>\n", f);
    fclose(f);
}

static void fuzz_text(const uint8_t *data, size_t size, unsigned flags) {
    int32_t ids[1024];
    int64_t n = ap_tokenize(NULL, tok, (const char *)data, size, flags, ids, 1024);
    if (n < 0 || n > 12 * (int64_t)size + 4) __builtin_trap(); /* NFC can triple, lower double */
    for (int64_t i = 0; i < n && i < 1024; i++)
        if (ids[i] < 0 || ids[i] >= 49408) __builtin_trap();
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = 0;
    ap_tok_opts o = {flags, AP_TOK_CONTEXT, flags & 1 ? 0 : AP_TOK_EOT};
    int32_t seq[AP_TOK_CONTEXT];
    int64_t nt = -1;
    if (ap_tokenize_seq(NULL, tok, text, &o, seq, &nt) != AP_OK || seq[0] != AP_TOK_SOT || nt < 0) __builtin_trap();
    int64_t k = nt < AP_TOK_CONTEXT - 2 ? nt : AP_TOK_CONTEXT - 2;
    if (seq[k + 1] != AP_TOK_EOT) __builtin_trap();
    for (int64_t i = k + 2; i < AP_TOK_CONTEXT; i++)
        if (seq[i] != o.pad_id) __builtin_trap();
    char out[256];
    if (ap_tokenizer_decode(tok, seq, AP_TOK_CONTEXT, 1, out, sizeof out) < 0) __builtin_trap();
    free(text);
}

static void fuzz_vocab(const uint8_t *data, size_t size) {
    char path[128];
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    FILE *f = fopen(path, "wb");
    if (!f) return;
    fwrite(data, 1, size, f);
    fclose(f);
    ap_tokenizer *t = NULL;
    ap_status st = ap_tokenizer_load_dir(NULL, dir, &t);
    if ((st == AP_OK) != (t != NULL)) __builtin_trap();
    if (t) {
        int32_t ids[64];
        int64_t n = ap_tokenize(NULL, t, "the thin tin", 12, 0, ids, 64);
        if (n < 0) __builtin_trap();
        for (int64_t i = 0; i < n && i < 64; i++)
            if (ids[i] < 0 || ids[i] >= ap_tokenizer_vocab_size(t)) __builtin_trap();
    }
    ap_tokenizer_free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    setup();
    if (size == 0) return 0;
    if (data[0] & 0x80) fuzz_vocab(data + 1, size - 1);
    else fuzz_text(data + 1, size - 1, data[0] & 3u);
    return 0;
}
