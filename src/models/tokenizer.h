/* The CLIP tokenizer: byte-level BPE as OpenAI CLIP's simple_tokenizer and
 * HF's CLIPTokenizer do it, for the text towers of SD1.x, of the CLIP reward
 * models and of OpenCLIP.
 *
 * Text -> ids in six steps: UTF-8 decode (invalid bytes become U+FFFD, as
 * Python's errors="replace"), NFC, optional html.unescape twice, whitespace
 * runs to one space and strip, Unicode lowercase (Python's str.lower), then the
 * split pattern
 *   <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
 * and BPE of each piece's UTF-8 bytes with "</w>" on the last symbol.
 * Not done: ftfy's other repairs (see docs/tokenizer.md).
 *
 * A tokenizer caches the BPE of recent words, so one must not be used by two
 * threads at once.
 */
#ifndef AP_MODELS_TOKENIZER_H
#define AP_MODELS_TOKENIZER_H

#include "alignprop.h"

#include <stddef.h>
#include <stdint.h>

#define AP_TOK_SOT 49406   /* <|startoftext|> in the CLIP vocabulary */
#define AP_TOK_EOT 49407   /* <|endoftext|> */
#define AP_TOK_CONTEXT 77  /* sequence length of the CLIP text towers */

typedef struct ap_tokenizer ap_tokenizer;

/* Text cleaning flags. */
#define AP_TOK_HTML_UNESCAPE 1u /* html.unescape twice: OpenAI CLIP and OpenCLIP do, HF CLIPTokenizer not */
#define AP_TOK_NO_NFC 2u        /* skip NFC (which ftfy and HF's normalisers apply) */

/* How a prompt becomes a fixed-length sequence. */
typedef struct {
    unsigned flags; /* AP_TOK_* */
    int context;    /* sequence length, >= 2 */
    int pad_id;     /* id after the end token */
} ap_tok_opts;

/* SD1.x (HF CLIPTokenizer, as diffusers and the LDM code use it): NFC, no
 * unescape, 77, padded with <|endoftext|>. */
extern const ap_tok_opts ap_tok_opts_sd1;
/* OpenAI clip.tokenize and OpenCLIP (HPSv2): NFC, unescape, 77, padded with 0. */
extern const ap_tok_opts ap_tok_opts_openclip;

/* The merges bundled in the library (OpenAI's bpe_simple_vocab_16e6.txt.gz). */
ap_status ap_tokenizer_load_bundled(ap_ctx *c, ap_tokenizer **out);
/* A merges file in OpenAI's layout: gzip or plain text, a header line, then
 * merges; the vocabulary is derived from the first 48,894 merges. */
ap_status ap_tokenizer_load_merges(ap_ctx *c, const char *path, ap_tokenizer **out);
/* HF layout: vocab.json (token -> id) and merges.txt (a #version line, then
 * merges; the first 48,894 are used, as CLIPTokenizer does). */
ap_status ap_tokenizer_load_hf(ap_ctx *c, const char *vocab_json, const char *merges_txt,
                               ap_tokenizer **out);
/* A model folder's tokenizer: dir/vocab.json and dir/merges.txt. */
ap_status ap_tokenizer_load_dir(ap_ctx *c, const char *dir, ap_tokenizer **out);
void ap_tokenizer_free(ap_tokenizer *t); /* accepts NULL */
/* Writes dir/vocab.json and dir/merges.txt (HF layout, as diffusers folders hold). */
ap_status ap_tokenizer_save_hf(ap_ctx *c, const ap_tokenizer *t, const char *dir);

int ap_tokenizer_vocab_size(const ap_tokenizer *t); /* 49408 for CLIP */
int ap_tokenizer_sot(const ap_tokenizer *t);
int ap_tokenizer_eot(const ap_tokenizer *t);
/* The token string of id (bytes_to_unicode alphabet, "</w>" word ends), or
 * NULL when the vocabulary has no such id. */
const char *ap_tokenizer_token(const ap_tokenizer *t, int id);
/* The id of a token string, or -1. */
int ap_tokenizer_id(const ap_tokenizer *t, const char *token);

/* BPE ids of len bytes of text (any bytes), without start and end tokens.
 * Writes the first min(total, cap) ids to ids (which may be NULL when cap is 0)
 * and returns the total, as snprintf does; -1 on error (out of memory, or a
 * text over 16 MiB), with the reason in c. c may be NULL. flags: AP_TOK_*. */
int64_t ap_tokenize(ap_ctx *c, ap_tokenizer *t, const char *text, size_t len, unsigned flags, int32_t *ids,
                    int64_t cap);

/* The sequence a CLIP text tower takes for a NUL-terminated prompt: start,
 * the first context-2 ids, end, then pad_id up to context. ids holds
 * o->context entries. n_text (optional) gets the number of ids the text had
 * before truncation (so callers can warn about truncation). o NULL means SD1.x. */
ap_status ap_tokenize_seq(ap_ctx *c, ap_tokenizer *t, const char *text, const ap_tok_opts *o,
                          int32_t *ids, int64_t *n_text);

/* Text of n ids: the token strings joined, "</w>" read as a space, the byte
 * alphabet mapped back to bytes; skip_special drops start, end and padding
 * ids equal to them. Writes a NUL-terminated string of at most cap bytes and
 * returns the full length (snprintf style); -1 when an id is not in the
 * vocabulary. */
int64_t ap_tokenizer_decode(const ap_tokenizer *t, const int32_t *ids, int64_t n, int skip_special,
                            char *out, size_t cap);

#endif
