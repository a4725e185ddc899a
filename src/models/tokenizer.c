/* The CLIP byte-level BPE tokenizer (see tokenizer.h for the steps).
 *
 * Symbols (byte symbols, merge results, vocabulary entries) are interned
 * strings; BPE works on symbol indices with a table (left, right) -> (rank,
 * result). Each symbol carries the id it is emitted as: its vocabulary id, or
 * <|endoftext|> (CLIPTokenizer's unknown token) for a merge result a
 * vocab.json lacks.
 *
 * The text steps run on arrays of code points; the Unicode and HTML tables come
 * from Python (tests/ref/gen_tokenizer_tables.py), so that the steps agree with
 * the Python tokenizers character for character. */
#include "io/atomic.h"
#include "io/json.h"
#include "models/tokenizer.h"

#include "core/embed.h"
#include "core/internal.h"
#include "models/tokenizer_tables.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/* The 48,894 merges CLIP uses: 49152 - 256 - 2 (the vocabulary is 49408). */
#define TOK_N_MERGES 48894
#define TOK_MAX_TEXT ((size_t)16 << 20)
#define TOK_MAX_FILE ((size_t)256 << 20)
#define TOK_CACHE_SLOTS 4096 /* power of two; cleared when half full */
#define TOK_CACHE_WORD 64    /* longest word (bytes) that is cached */

const ap_tok_opts ap_tok_opts_sd1 = {0, AP_TOK_CONTEXT, AP_TOK_EOT};
const ap_tok_opts ap_tok_opts_openclip = {AP_TOK_HTML_UNESCAPE, AP_TOK_CONTEXT, 0};

/* ------------------------------------------------------------ the bundled merges
 * The build passes the asset's path as AP_CLIP_BPE_GZ (core/embed.h). */
#ifdef AP_CLIP_BPE_GZ
AP_EMBED_FILE(ap_clip_bpe_gz, AP_CLIP_BPE_GZ);
#endif

/* ------------------------------------------------------------ structures */
typedef struct {
    uint32_t off, len; /* in blob */
    int32_t id;        /* emitted id */
} tok_sym;

typedef struct {
    uint64_t key; /* pair_key(left, right); 0 marks a free slot */
    int32_t rank, result;
} tok_pair;

typedef struct {
    uint32_t hash;
    uint32_t len, n;
    uint8_t *word; /* len bytes, then n int32 ids (one allocation) */
} tok_cached;

struct ap_tokenizer {
    char *blob;
    size_t blob_len, blob_cap;
    tok_sym *syms;
    int32_t n_syms, cap_syms;
    int32_t *sym_slots; /* open addressing on the string; -1 free */
    uint32_t sym_mask;
    tok_pair *pairs;
    uint32_t pair_mask, n_pairs;
    int32_t byte_sym[256], byte_sym_w[256]; /* symbol of byte b, and of b + "</w>" */
    int32_t *vocab;                         /* id -> symbol, -1 for holes */
    int vocab_size;
    int sot, eot;
    int16_t byte_of_cp[324]; /* byte alphabet code point -> byte, -1 if none */
    tok_cached cache[TOK_CACHE_SLOTS];
    int cache_n;
    /* scratch of the BPE of one word */
    int32_t *w_sym, *w_next, *w_prev, *w_merged;
    uint64_t *w_heap;
    size_t w_cap;
};

/* ------------------------------------------------------------ hashing */
static uint32_t fnv1a(const void *p, size_t n) {
    const uint8_t *s = p;
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 16777619u;
    return h;
}

static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Keys are stored +1 so that 0 marks a free slot. */
static uint64_t pair_key(int32_t a, int32_t b) { return (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1; }

/* ------------------------------------------------------------ symbols */
static int32_t sym_find(const ap_tokenizer *t, const char *s, size_t n) {
    if (!t->sym_slots) return -1;
    for (uint32_t i = fnv1a(s, n) & t->sym_mask;; i = (i + 1) & t->sym_mask) {
        int32_t k = t->sym_slots[i];
        if (k < 0) return -1;
        if (t->syms[k].len == n && memcmp(t->blob + t->syms[k].off, s, n) == 0) return k;
    }
}

static bool sym_rehash(ap_tokenizer *t, uint32_t slots) {
    int32_t *ns = malloc(sizeof *ns * slots);
    if (!ns) return false;
    memset(ns, 0xff, sizeof *ns * slots);
    for (int32_t k = 0; k < t->n_syms; k++) {
        uint32_t i = fnv1a(t->blob + t->syms[k].off, t->syms[k].len) & (slots - 1);
        while (ns[i] >= 0) i = (i + 1) & (slots - 1);
        ns[i] = k;
    }
    free(t->sym_slots);
    t->sym_slots = ns;
    t->sym_mask = slots - 1;
    return true;
}

/* The symbol of string s (n bytes), interned with emitted id `id` when new;
 * -1 when out of memory. */
static int32_t sym_intern(ap_tokenizer *t, const char *s, size_t n, int32_t id) {
    int32_t k = sym_find(t, s, n);
    if (k >= 0) return k;
    if (n > UINT32_MAX / 2 || t->n_syms >= INT32_MAX / 4) return -1;
    if ((uint64_t)(t->n_syms + 1) * 2 > (uint64_t)t->sym_mask + 1 || !t->sym_slots)
        if (!sym_rehash(t, t->sym_slots ? (t->sym_mask + 1) * 2 : 1u << 16)) return -1;
    if (t->n_syms == t->cap_syms) {
        int32_t cap = t->cap_syms ? t->cap_syms * 2 : 1 << 15;
        tok_sym *ns = realloc(t->syms, sizeof *ns * (size_t)cap);
        if (!ns) return -1;
        t->syms = ns;
        t->cap_syms = cap;
    }
    if (t->blob_len + n + 1 > t->blob_cap) {
        size_t cap = t->blob_cap ? t->blob_cap : 1 << 19;
        while (cap < t->blob_len + n + 1) cap *= 2;
        char *nb = realloc(t->blob, cap);
        if (!nb) return -1;
        t->blob = nb;
        t->blob_cap = cap;
    }
    if (t->blob_len > UINT32_MAX - n - 1) return -1;
    memcpy(t->blob + t->blob_len, s, n);
    t->blob[t->blob_len + n] = 0;
    k = t->n_syms++;
    t->syms[k] = (tok_sym){(uint32_t)t->blob_len, (uint32_t)n, id};
    t->blob_len += n + 1;
    uint32_t i = fnv1a(s, n) & t->sym_mask;
    while (t->sym_slots[i] >= 0) i = (i + 1) & t->sym_mask;
    t->sym_slots[i] = k;
    return k;
}

/* ------------------------------------------------------------ pairs */
static const tok_pair *pair_find(const ap_tokenizer *t, int32_t a, int32_t b) {
    uint64_t key = pair_key(a, b);
    for (uint32_t i = (uint32_t)mix64(key) & t->pair_mask;; i = (i + 1) & t->pair_mask) {
        if (t->pairs[i].key == key) return &t->pairs[i];
        if (t->pairs[i].key == 0) return NULL;
    }
}

/* A later duplicate of a merge overrides the earlier rank, as the Python
 * dict(zip(merges, range(len(merges)))) does. */
static void pair_put(ap_tokenizer *t, int32_t a, int32_t b, int32_t rank, int32_t result) {
    uint64_t key = pair_key(a, b);
    uint32_t i = (uint32_t)mix64(key) & t->pair_mask;
    while (t->pairs[i].key != 0 && t->pairs[i].key != key) i = (i + 1) & t->pair_mask;
    if (t->pairs[i].key == 0) t->n_pairs++;
    t->pairs[i] = (tok_pair){key, rank, result};
}

/* ------------------------------------------------------------ building */
/* The byte alphabet: printable Latin-1 bytes stand for themselves; the 68
 * others (controls, space, 0x7f-0xa0, 0xad) get U+0100, U+0101, ... in byte
 * order. order[] is the id order of the first 256 vocabulary entries. */
static void byte_alphabet(uint32_t cp_of[256], int order[256]) {
    int n = 0, extra = 0;
    for (int b = 33; b <= 126; b++) order[n++] = b;
    for (int b = 161; b <= 172; b++) order[n++] = b;
    for (int b = 174; b <= 255; b++) order[n++] = b;
    for (int i = 0; i < n; i++) cp_of[order[i]] = (uint32_t)order[i];
    for (int b = 0; b < 256; b++) {
        bool in = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
        if (!in) {
            order[n++] = b;
            cp_of[b] = 256u + (uint32_t)extra++;
        }
    }
}

static int utf8_put(uint32_t cp, char *o) {
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

static ap_tokenizer *tok_alloc(void) {
    ap_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->pair_mask = (1u << 17) - 1;
    t->pairs = calloc(t->pair_mask + 1, sizeof *t->pairs);
    if (!t->pairs) {
        free(t);
        return NULL;
    }
    return t;
}

void ap_tokenizer_free(ap_tokenizer *t) {
    if (!t) return;
    for (int i = 0; i < TOK_CACHE_SLOTS; i++) free(t->cache[i].word);
    free(t->blob);
    free(t->syms);
    free(t->sym_slots);
    free(t->pairs);
    free(t->vocab);
    free(t->w_sym);
    free(t->w_next);
    free(t->w_prev);
    free(t->w_merged);
    free(t->w_heap);
    free(t);
}

static bool ascii_space(char ch) { return ch == ' ' || (ch >= '\t' && ch <= '\r') || (ch >= 0x1c && ch <= 0x1f); }

/* A line's two symbols, split on ASCII whitespace as Python's str.split() does
 * (the byte alphabet holds no other whitespace). Returns the number of parts
 * found (up to 3 are looked for). */
static int split_merge(const char *s, size_t n, const char **p, size_t *len) {
    int k = 0;
    size_t i = 0;
    while (k < 3) {
        while (i < n && ascii_space(s[i])) i++;
        if (i == n) break;
        size_t j = i;
        while (j < n && !ascii_space(s[j])) j++;
        if (k < 2) {
            p[k] = s + i;
            len[k] = j - i;
        }
        k++;
        i = j;
    }
    return k;
}

/* Adds the first TOK_N_MERGES merges of text (after the header line).
 * derive: the vocabulary is the merge results in order (OpenAI layout); else
 * the symbols must come from vocab.json already interned (HF layout). */
static ap_status add_merges(ap_ctx *c, ap_tokenizer *t, const char *what, const char *text, size_t n,
                            bool derive, int *n_merges) {
    size_t pos = 0;
    const char *nl = memchr(text, '\n', n);
    if (!nl) return ap_seterr(c, AP_ERR_FORMAT, "tokenizer: %s: no merges after the header line", what);
    pos = (size_t)(nl - text) + 1;
    int rank = 0;
    char *cat = NULL;
    size_t cat_cap = 0;
    for (int line = 2; rank < TOK_N_MERGES && pos < n; line++) {
        const char *s = text + pos;
        const char *e = memchr(s, '\n', n - pos);
        size_t len = e ? (size_t)(e - s) : n - pos;
        pos += len + (e ? 1 : 0);
        const char *p[2];
        size_t pl[2];
        int k = split_merge(s, len, p, pl);
        if (k == 0 && pos >= n) break; /* a last empty line */
        if (k != 2) {
            free(cat);
            return ap_seterr(c, AP_ERR_FORMAT, "tokenizer: %s line %d: a merge must be two symbols, found %d",
                             what, line, k);
        }
        if (pl[0] + pl[1] > cat_cap) {
            cat_cap = (pl[0] + pl[1]) * 2;
            char *nc = realloc(cat, cat_cap);
            if (!nc) {
                free(cat);
                return ap_seterr(c, AP_ERR_NOMEM, "tokenizer: out of memory");
            }
            cat = nc;
        }
        memcpy(cat, p[0], pl[0]);
        memcpy(cat + pl[0], p[1], pl[1]);
        /* symbols outside the vocabulary get id -1 (read as unknown in finish) */
        int32_t a = sym_intern(t, p[0], pl[0], -1), b = sym_intern(t, p[1], pl[1], -1);
        int32_t r = a < 0 || b < 0 ? -1 : sym_intern(t, cat, pl[0] + pl[1], -1);
        if (r < 0) {
            free(cat);
            return ap_seterr(c, AP_ERR_NOMEM, "tokenizer: out of memory");
        }
        /* a derived vocabulary is a Python dict built from the list in order:
         * a string that occurs twice keeps the later id */
        if (derive) t->syms[r].id = 512 + rank;
        pair_put(t, a, b, rank, r);
        rank++;
    }
    free(cat);
    *n_merges = rank;
    return AP_OK;
}

static ap_status finish(ap_ctx *c, ap_tokenizer *t, const char *what) {
    uint32_t cp_of[256];
    int order[256];
    byte_alphabet(cp_of, order);
    for (int i = 0; i < 324; i++) t->byte_of_cp[i] = -1;
    for (int b = 0; b < 256; b++) {
        char s[8];
        int n = utf8_put(cp_of[b], s);
        memcpy(s + n, "</w>", 4);
        t->byte_sym[b] = sym_find(t, s, (size_t)n);
        t->byte_sym_w[b] = sym_find(t, s, (size_t)n + 4);
        if (t->byte_sym[b] < 0 || t->byte_sym_w[b] < 0)
            return ap_seterr(c, AP_ERR_FORMAT, "tokenizer: %s: the vocabulary lacks the byte symbol of 0x%02x%s",
                             what, b, t->byte_sym[b] < 0 ? "" : " with </w>");
        t->byte_of_cp[cp_of[b]] = (int16_t)b;
    }
    int32_t s = sym_find(t, "<|startoftext|>", 15), e = sym_find(t, "<|endoftext|>", 13);
    if (s < 0 || e < 0 || t->syms[s].id < 0 || t->syms[e].id < 0)
        return ap_seterr(c, AP_ERR_FORMAT, "tokenizer: %s: the vocabulary lacks %s", what,
                         s < 0 ? "<|startoftext|>" : "<|endoftext|>");
    t->sot = t->syms[s].id;
    t->eot = t->syms[e].id;
    /* tokens that only merges.txt named (not in vocab.json) read as unknown */
    for (int32_t k = 0; k < t->n_syms; k++)
        if (t->syms[k].id < 0) t->syms[k].id = t->eot;
    return AP_OK;
}

/* ------------------------------------------------------------ files */
static ap_status read_file(ap_ctx *c, const char *path, char **out, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return ap_seterr(c, AP_ERR_IO, "tokenizer: cannot open %s", path);
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            if (cap >= TOK_MAX_FILE) {
                fclose(f);
                free(buf);
                return ap_seterr(c, AP_ERR_FORMAT, "tokenizer: %s is larger than %zu MiB", path, TOK_MAX_FILE >> 20);
            }
            cap = cap ? cap * 2 : 1 << 16;
            char *nb = realloc(buf, cap + 1);
            if (!nb) {
                fclose(f);
                free(buf);
                return ap_seterr(c, AP_ERR_NOMEM, "tokenizer: out of memory reading %s", path);
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    bool err = ferror(f);
    fclose(f);
    if (err) {
        free(buf);
        return ap_seterr(c, AP_ERR_IO, "tokenizer: error reading %s", path);
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return AP_OK;
}

/* Inflates gzip data until the header and TOK_N_MERGES merge lines are in
 * (the rest of the 262,145 lines is unused). */
static ap_status gunzip_merges(ap_ctx *c, const char *what, const unsigned char *gz, size_t n, char **out,
                               size_t *len) {
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) return ap_seterr(c, AP_ERR_NOMEM, "tokenizer: zlib init failed");
    size_t cap = 1 << 20, have = 0, lines = 0;
    char *buf = malloc(cap + 1);
    ap_status st = AP_OK;
    zs.next_in = (unsigned char *)gz;
    size_t left = n;
    for (;;) {
        if (!buf) {
            st = ap_seterr(c, AP_ERR_NOMEM, "tokenizer: out of memory inflating %s", what);
            break;
        }
        if (zs.avail_in == 0 && left > 0) {
            zs.avail_in = left > UINT32_MAX ? UINT32_MAX : (uInt)left;
            left -= zs.avail_in;
        }
        zs.next_out = (unsigned char *)buf + have;
        zs.avail_out = (uInt)(cap - have);
        int r = inflate(&zs, Z_NO_FLUSH);
        size_t got = (cap - have) - zs.avail_out;
        for (size_t i = have; i < have + got; i++) lines += buf[i] == '\n';
        have += got;
        if (lines > TOK_N_MERGES || r == Z_STREAM_END) break;
        if (r != Z_OK && r != Z_BUF_ERROR) {
            st = ap_seterr(c, AP_ERR_FORMAT, "tokenizer: %s: bad gzip data (%s)", what, zs.msg ? zs.msg : "zlib error");
            break;
        }
        if (r == Z_BUF_ERROR && zs.avail_in == 0 && left == 0) {
            st = ap_seterr(c, AP_ERR_FORMAT, "tokenizer: %s: truncated gzip data", what);
            break;
        }
        if (have == cap) {
            if (cap >= TOK_MAX_FILE) {
                st = ap_seterr(c, AP_ERR_FORMAT, "tokenizer: %s: merges longer than %zu MiB", what, TOK_MAX_FILE >> 20);
                break;
            }
            cap *= 2;
            char *nb = realloc(buf, cap + 1);
            if (!nb) free(buf);
            buf = nb;
        }
    }
    inflateEnd(&zs);
    if (st != AP_OK) {
        free(buf);
        return st;
    }
    buf[have] = 0;
    *out = buf;
    *len = have;
    return AP_OK;
}

/* OpenAI layout: 256 byte symbols, the same with </w>, the merges, specials. */
static ap_status load_openai(ap_ctx *c, const char *what, const char *text, size_t n, ap_tokenizer **out) {
    *out = NULL;
    ap_tokenizer *t = tok_alloc();
    if (!t) return ap_seterr(c, AP_ERR_NOMEM, "tokenizer: out of memory");
    uint32_t cp_of[256];
    int order[256];
    byte_alphabet(cp_of, order);
    for (int w = 0; w < 2; w++)
        for (int i = 0; i < 256; i++) {
            char s[8];
            int len = utf8_put(cp_of[order[i]], s);
            if (w) memcpy(s + len, "</w>", 4), len += 4;
            if (sym_intern(t, s, (size_t)len, w * 256 + i) < 0) {
                ap_tokenizer_free(t);
                return ap_seterr(c, AP_ERR_NOMEM, "tokenizer: out of memory");
            }
        }
    int nm = 0;
    ap_status st = add_merges(c, t, what, text, n, true, &nm);
    if (st == AP_OK) {
        t->vocab_size = 512 + nm + 2;
        int32_t s = sym_intern(t, "<|startoftext|>", 15, -1), e = sym_intern(t, "<|endoftext|>", 13, -1);
        if (s < 0 || e < 0) st = ap_seterr(c, AP_ERR_NOMEM, "tokenizer: out of memory");
        else t->syms[s].id = 512 + nm, t->syms[e].id = 513 + nm;
    }
    if (st == AP_OK) {
        t->vocab = malloc(sizeof *t->vocab * (size_t)t->vocab_size);
        if (!t->vocab) st = ap_seterr(c, AP_ERR_NOMEM, "tokenizer: out of memory");
    }
    if (st == AP_OK) {
        for (int i = 0; i < t->vocab_size; i++) t->vocab[i] = -1;
        for (int32_t k = 0; k < t->n_syms; k++)
            if (t->syms[k].id >= 0) t->vocab[t->syms[k].id] = k;
        st = finish(c, t, what);
    }
    if (st != AP_OK) {
        ap_tokenizer_free(t);
        return st;
    }
    *out = t;
    return AP_OK;
}

static ap_status load_merges_bytes(ap_ctx *c, const char *what, const unsigned char *data, size_t n,
                                   ap_tokenizer **out) {
    *out = NULL;
    if (n >= 2 && data[0] == 0x1f && data[1] == 0x8b) {
        char *text;
        size_t len;
        ap_status st = gunzip_merges(c, what, data, n, &text, &len);
        if (st != AP_OK) return st;
        st = load_openai(c, what, text, len, out);
        free(text);
        return st;
    }
    return load_openai(c, what, (const char *)data, n, out);
}

ap_status ap_tokenizer_load_bundled(ap_ctx *c, ap_tokenizer **out) {
    if (!out) return ap_seterr(c, AP_ERR_INVALID_ARG, "tokenizer: out is NULL");
    *out = NULL;
#ifdef AP_CLIP_BPE_GZ
    return load_merges_bytes(c, "bundled bpe_simple_vocab_16e6.txt.gz", ap_clip_bpe_gz,
                             AP_EMBED_SIZE(ap_clip_bpe_gz), out);
#else
    return ap_seterr(c, AP_ERR_UNSUPPORTED, "tokenizer: this build has no bundled merges");
#endif
}

ap_status ap_tokenizer_load_merges(ap_ctx *c, const char *path, ap_tokenizer **out) {
    if (!out || !path) return ap_seterr(c, AP_ERR_INVALID_ARG, "tokenizer: %s is NULL", out ? "path" : "out");
    *out = NULL;
    char *data;
    size_t n;
    ap_status st = read_file(c, path, &data, &n);
    if (st != AP_OK) return st;
    st = load_merges_bytes(c, path, (const unsigned char *)data, n, out);
    free(data);
    return st;
}

/* ------------------------------------------------------------ vocab.json */
typedef struct {
    const char *s;
    size_t n, i;
} json_in;

static void json_ws(json_in *j) {
    while (j->i < j->n && (j->s[j->i] == ' ' || j->s[j->i] == '\t' || j->s[j->i] == '\n' || j->s[j->i] == '\r'))
        j->i++;
}

static int hexval(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

static bool json_u4(json_in *j, uint32_t *v) {
    if (j->n - j->i < 4) return false;
    uint32_t x = 0;
    for (int k = 0; k < 4; k++) {
        int h = hexval(j->s[j->i + (size_t)k]);
        if (h < 0) return false;
        x = x * 16 + (uint32_t)h;
    }
    j->i += 4;
    *v = x;
    return true;
}

/* A JSON string at j->i (the opening quote) decoded to UTF-8 in *buf. */
static const char *json_string(json_in *j, char **buf, size_t *cap, size_t *len) {
    if (j->i >= j->n || j->s[j->i] != '"') return "expected a string";
    j->i++;
    size_t o = 0;
    for (;;) {
        if (j->i >= j->n) return "unterminated string";
        if (o + 8 > *cap) {
            size_t nc = *cap ? *cap * 2 : 256;
            char *nb = realloc(*buf, nc);
            if (!nb) return "out of memory";
            *buf = nb;
            *cap = nc;
        }
        unsigned char ch = (unsigned char)j->s[j->i++];
        if (ch == '"') break;
        if (ch < 0x20) return "control character in a string";
        if (ch != '\\') {
            (*buf)[o++] = (char)ch;
            continue;
        }
        if (j->i >= j->n) return "unterminated escape";
        char e = j->s[j->i++];
        uint32_t cp;
        switch (e) {
        case '"': cp = '"'; break;
        case '\\': cp = '\\'; break;
        case '/': cp = '/'; break;
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u':
            if (!json_u4(j, &cp)) return "bad \\u escape";
            if (cp >= 0xDC00 && cp <= 0xDFFF) return "lone low surrogate";
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                uint32_t lo;
                if (j->n - j->i < 2 || j->s[j->i] != '\\' || j->s[j->i + 1] != 'u') return "lone high surrogate";
                j->i += 2;
                if (!json_u4(j, &lo) || lo < 0xDC00 || lo > 0xDFFF) return "bad surrogate pair";
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            break;
        default: return "bad escape";
        }
        o += (size_t)utf8_put(cp, *buf + o);
    }
    *len = o;
    return NULL;
}

static ap_status load_vocab_json(ap_ctx *c, ap_tokenizer *t, const char *path, const char *s, size_t n) {
    json_in j = {s, n, 0};
    char *buf = NULL;
    size_t cap = 0, len;
    const char *err = NULL;
    int max_id = -1;
    json_ws(&j);
    if (j.i >= n || s[j.i] != '{') err = "expected an object";
    else j.i++;
    json_ws(&j);
    if (!err && j.i < n && s[j.i] == '}') j.i++;
    else
        while (!err) {
            json_ws(&j);
            if ((err = json_string(&j, &buf, &cap, &len))) break;
            json_ws(&j);
            if (j.i >= n || s[j.i] != ':') {
                err = "expected ':'";
                break;
            }
            j.i++;
            json_ws(&j);
            int64_t v = 0;
            size_t d0 = j.i;
            while (j.i < n && s[j.i] >= '0' && s[j.i] <= '9' && v <= (1 << 24)) v = v * 10 + (s[j.i++] - '0');
            if (j.i == d0 || (j.i < n && (s[j.i] == '.' || s[j.i] == 'e' || s[j.i] == 'E' || s[j.i] == '-'))) {
                err = "ids must be non-negative integers";
                break;
            }
            if (v >= (1 << 24)) {
                err = "id too large (at most 2^24)";
                break;
            }
            /* a repeated key keeps its last id, as json.load does */
            int32_t k = sym_find(t, buf, len);
            if (k >= 0) t->syms[k].id = (int32_t)v;
            else if (sym_intern(t, buf, len, (int32_t)v) < 0) err = "out of memory";
            if ((int)v > max_id) max_id = (int)v;
            json_ws(&j);
            if (j.i < n && s[j.i] == ',') {
                j.i++;
                continue;
            }
            if (j.i < n && s[j.i] == '}') {
                j.i++;
                break;
            }
            if (!err) err = "expected ',' or '}'";
        }
    free(buf);
    if (!err) {
        json_ws(&j);
        if (j.i != n) err = "trailing data after the object";
    }
    if (err)
        return ap_seterr(c, strcmp(err, "out of memory") ? AP_ERR_FORMAT : AP_ERR_NOMEM,
                         "tokenizer: %s: %s at byte %zu", path, err, j.i);
    if (max_id < 0) return ap_seterr(c, AP_ERR_FORMAT, "tokenizer: %s: empty vocabulary", path);
    t->vocab_size = max_id + 1;
    t->vocab = malloc(sizeof *t->vocab * (size_t)t->vocab_size);
    if (!t->vocab) return ap_seterr(c, AP_ERR_NOMEM, "tokenizer: out of memory");
    for (int i = 0; i < t->vocab_size; i++) t->vocab[i] = -1;
    for (int32_t k = 0; k < t->n_syms; k++) t->vocab[t->syms[k].id] = k;
    /* two keys with one id: the id decodes as the later key */
    return AP_OK;
}

/* HF's CLIPTokenizer reads merges.txt as read().strip().split("\n")[1:48895]. */
static void strip_ws(const char **s, size_t *n) {
    while (*n && ascii_space((*s)[0])) (*s)++, (*n)--;
    while (*n && ascii_space((*s)[*n - 1])) (*n)--;
}

ap_status ap_tokenizer_load_hf(ap_ctx *c, const char *vocab_json, const char *merges_txt, ap_tokenizer **out) {
    if (!out || !vocab_json || !merges_txt)
        return ap_seterr(c, AP_ERR_INVALID_ARG, "tokenizer: %s is NULL",
                         !out ? "out" : !vocab_json ? "vocab_json" : "merges_txt");
    *out = NULL;
    ap_tokenizer *t = tok_alloc();
    if (!t) return ap_seterr(c, AP_ERR_NOMEM, "tokenizer: out of memory");
    char *vj = NULL, *mt = NULL;
    size_t vn, mn;
    ap_status st = read_file(c, vocab_json, &vj, &vn);
    if (st == AP_OK) st = load_vocab_json(c, t, vocab_json, vj, vn);
    if (st == AP_OK) st = read_file(c, merges_txt, &mt, &mn);
    if (st == AP_OK) {
        const char *s = mt;
        size_t n = mn;
        strip_ws(&s, &n);
        int nm;
        st = add_merges(c, t, merges_txt, s, n, false, &nm);
    }
    if (st == AP_OK) st = finish(c, t, vocab_json);
    free(vj);
    free(mt);
    if (st != AP_OK) {
        ap_tokenizer_free(t);
        return st;
    }
    *out = t;
    return AP_OK;
}

ap_status ap_tokenizer_load_dir(ap_ctx *c, const char *dir, ap_tokenizer **out) {
    if (!out || !dir) return ap_seterr(c, AP_ERR_INVALID_ARG, "tokenizer: %s is NULL", out ? "dir" : "out");
    size_t n = strlen(dir) + 16;
    char *v = malloc(n), *m = malloc(n);
    ap_status st;
    if (!v || !m) st = ap_seterr(c, AP_ERR_NOMEM, "tokenizer: out of memory");
    else {
        snprintf(v, n, "%s/vocab.json", dir);
        snprintf(m, n, "%s/merges.txt", dir);
        st = ap_tokenizer_load_hf(c, v, m, out);
    }
    free(v);
    free(m);
    return st;
}

/* ------------------------------------------------------------ queries */
int ap_tokenizer_vocab_size(const ap_tokenizer *t) { return t ? t->vocab_size : 0; }
int ap_tokenizer_sot(const ap_tokenizer *t) { return t ? t->sot : -1; }
int ap_tokenizer_eot(const ap_tokenizer *t) { return t ? t->eot : -1; }

const char *ap_tokenizer_token(const ap_tokenizer *t, int id) {
    if (!t || id < 0 || id >= t->vocab_size || t->vocab[id] < 0) return NULL;
    return t->blob + t->syms[t->vocab[id]].off;
}

int ap_tokenizer_id(const ap_tokenizer *t, const char *token) {
    if (!t || !token) return -1;
    int32_t k = sym_find(t, token, strlen(token));
    if (k < 0) return -1;
    int id = t->syms[k].id;
    /* symbols that are not vocabulary entries (merges.txt only) have no id */
    return t->vocab[id] == k ? id : -1;
}

/* ------------------------------------------------------------ Unicode */
static bool in_ranges(const uint32_t (*r)[2], size_t n, uint32_t cp) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < r[mid][0]) hi = mid;
        else if (cp > r[mid][1]) lo = mid + 1;
        else return true;
    }
    return false;
}
#define IN_TABLE(tbl, cp) in_ranges(tbl, sizeof tbl / sizeof tbl[0], cp)

enum { CL_OTHER = 0, CL_LETTER = 1, CL_NUMBER = 2, CL_SKIP = 3 };

static bool is_space(uint32_t cp) {
    if (cp < 0x80) return cp == ' ' || (cp >= '\t' && cp <= '\r') || (cp >= 0x1c && cp <= 0x1f);
    size_t lo = 0, hi = sizeof tok_uc_space / sizeof tok_uc_space[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (tok_uc_space[mid] == cp) return true;
        if (tok_uc_space[mid] < cp) lo = mid + 1;
        else hi = mid;
    }
    return false;
}

/* The split pattern's class of a character; whitespace is CL_SKIP. */
static int char_class(uint32_t cp) {
    if (cp < 0x80) {
        if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') return CL_LETTER;
        if (cp >= '0' && cp <= '9') return CL_NUMBER;
        return is_space(cp) ? CL_SKIP : CL_OTHER;
    }
    if (is_space(cp)) return CL_SKIP;
    size_t lo = 0, hi = sizeof tok_uc_class / sizeof tok_uc_class[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < tok_uc_class[mid][0]) hi = mid;
        else if (cp > tok_uc_class[mid][1]) lo = mid + 1;
        else return (int)tok_uc_class[mid][2];
    }
    return CL_OTHER;
}

static uint32_t simple_lower(uint32_t cp) {
    if (cp < 0x80) return cp >= 'A' && cp <= 'Z' ? cp + 32 : cp;
    size_t lo = 0, hi = sizeof tok_uc_lower / sizeof tok_uc_lower[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if ((int64_t)cp < tok_uc_lower[mid][0]) hi = mid;
        else if ((int64_t)cp > tok_uc_lower[mid][1]) lo = mid + 1;
        else {
            if ((cp - (uint32_t)tok_uc_lower[mid][0]) % (uint32_t)tok_uc_lower[mid][3]) return cp;
            return (uint32_t)((int64_t)cp + tok_uc_lower[mid][2]);
        }
    }
    return cp;
}

/* UTF-8 -> code points; each maximal ill-formed subpart becomes one U+FFFD
 * (Python's decode(errors="replace")). Returns the count (<= n). */
static size_t utf8_decode(const uint8_t *s, size_t n, uint32_t *out) {
    size_t i = 0, o = 0;
    while (i < n) {
        uint8_t b = s[i];
        if (b < 0x80) {
            out[o++] = b;
            i++;
            continue;
        }
        int need;
        uint8_t lo2 = 0x80, hi2 = 0xBF;
        uint32_t cp;
        if (b >= 0xC2 && b <= 0xDF) need = 1, cp = b & 0x1F;
        else if (b >= 0xE0 && b <= 0xEF) {
            need = 2, cp = b & 0x0F;
            if (b == 0xE0) lo2 = 0xA0;
            if (b == 0xED) hi2 = 0x9F;
        } else if (b >= 0xF0 && b <= 0xF4) {
            need = 3, cp = b & 0x07;
            if (b == 0xF0) lo2 = 0x90;
            if (b == 0xF4) hi2 = 0x8F;
        } else {
            out[o++] = 0xFFFD;
            i++;
            continue;
        }
        size_t k = 1;
        for (; k <= (size_t)need; k++) {
            if (i + k >= n) break;
            uint8_t cb = s[i + k];
            uint8_t l = k == 1 ? lo2 : 0x80, h = k == 1 ? hi2 : 0xBF;
            if (cb < l || cb > h) break;
            cp = (cp << 6) | (cb & 0x3F);
        }
        if (k <= (size_t)need) {
            out[o++] = 0xFFFD;
            i += k;
        } else {
            out[o++] = cp;
            i += k;
        }
    }
    return o;
}

/* ------------------------------------------------------------ NFC */
enum { H_SBASE = 0xAC00, H_LBASE = 0x1100, H_VBASE = 0x1161, H_TBASE = 0x11A7 };
enum { H_LCOUNT = 19, H_VCOUNT = 21, H_TCOUNT = 28, H_NCOUNT = 21 * 28, H_SCOUNT = 19 * 21 * 28 };

static int ccc(uint32_t cp) {
    if (cp < 0x300) return 0;
    size_t lo = 0, hi = sizeof tok_nfc_ccc / sizeof tok_nfc_ccc[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < tok_nfc_ccc[mid][0]) hi = mid;
        else if (cp > tok_nfc_ccc[mid][1]) lo = mid + 1;
        else return (int)tok_nfc_ccc[mid][2];
    }
    return 0;
}

/* Full canonical decomposition of cp appended at out; returns the count (<= 4). */
static size_t decompose(uint32_t cp, uint32_t *out) {
    if (cp >= H_SBASE && cp < H_SBASE + H_SCOUNT) {
        uint32_t s = cp - H_SBASE, t = s % H_TCOUNT;
        out[0] = H_LBASE + s / H_NCOUNT;
        out[1] = H_VBASE + (s % H_NCOUNT) / H_TCOUNT;
        if (!t) return 2;
        out[2] = H_TBASE + t;
        return 3;
    }
    size_t lo = 0, hi = sizeof tok_nfc_decomp / sizeof tok_nfc_decomp[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < tok_nfc_decomp[mid][0]) hi = mid;
        else if (cp > tok_nfc_decomp[mid][0]) lo = mid + 1;
        else {
            size_t n = decompose(tok_nfc_decomp[mid][1], out);
            if (tok_nfc_decomp[mid][2]) n += decompose(tok_nfc_decomp[mid][2], out + n);
            return n;
        }
    }
    out[0] = cp;
    return 1;
}

/* The primary composite of a + b, or 0. */
static uint32_t compose(uint32_t a, uint32_t b) {
    if (a >= H_LBASE && a < H_LBASE + H_LCOUNT && b >= H_VBASE && b < H_VBASE + H_VCOUNT)
        return H_SBASE + ((a - H_LBASE) * H_VCOUNT + (b - H_VBASE)) * H_TCOUNT;
    if (a >= H_SBASE && a < H_SBASE + H_SCOUNT && (a - H_SBASE) % H_TCOUNT == 0 && b > H_TBASE &&
        b < H_TBASE + H_TCOUNT)
        return a + (b - H_TBASE);
    size_t lo = 0, hi = sizeof tok_nfc_comp / sizeof tok_nfc_comp[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (a < tok_nfc_comp[mid][0] || (a == tok_nfc_comp[mid][0] && b < tok_nfc_comp[mid][1])) hi = mid;
        else if (a > tok_nfc_comp[mid][0] || b > tok_nfc_comp[mid][1]) lo = mid + 1;
        else return tok_nfc_comp[mid][2];
    }
    return 0;
}

/* True when NFC could change s (a character with a combining class, one that
 * composes with what precedes it, or one NFC replaces). */
static bool nfc_needed(const uint32_t *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] >= 0x300 && IN_TABLE(tok_nfc_quick, s[i])) return true;
    return false;
}

/* NFC of s (n code points) into out (room for 4n): canonical decomposition,
 * canonical ordering of combining marks, then canonical composition (the
 * algorithm of UAX #15). Returns the count. */
static size_t nfc(const uint32_t *s, size_t n, uint32_t *out) {
    size_t m = 0;
    for (size_t i = 0; i < n; i++) m += decompose(s[i], out + m);
    /* stable insertion sort of each run of non-starters by class */
    for (size_t i = 1; i < m; i++) {
        int k = ccc(out[i]);
        if (!k) continue;
        uint32_t c = out[i];
        size_t j = i;
        while (j > 0 && ccc(out[j - 1]) > k) {
            out[j] = out[j - 1];
            j--;
        }
        out[j] = c;
    }
    if (m == 0) return 0;
    size_t starter = 0, o = 1;
    int last = ccc(out[0]) ? 256 : 0; /* a leading mark blocks composition */
    for (size_t i = 1; i < m; i++) {
        uint32_t c = out[i];
        int k = ccc(c);
        uint32_t comp = compose(out[starter], c);
        if (comp && (last < k || last == 0)) {
            out[starter] = comp;
            continue;
        }
        if (k == 0) starter = o;
        last = k;
        out[o++] = c;
    }
    return o;
}

/* ------------------------------------------------------------ html.unescape */
static int ent_find(const char *name) {
    size_t lo = 0, hi = sizeof tok_ent / sizeof tok_ent[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int r = strcmp(name, tok_ent_names + tok_ent[mid].name);
        if (r == 0) return (int)mid;
        if (r < 0) hi = mid;
        else lo = mid + 1;
    }
    return -1;
}

static bool ent_namechar(uint32_t cp) {
    return !(cp == '\t' || cp == '\n' || cp == '\f' || cp == ' ' || cp == '<' || cp == '&' || cp == '#' || cp == ';');
}

/* The characters a numeric reference stands for (0 or 1), as html.unescape. */
static size_t numeric_ref(uint32_t num, uint32_t *o) {
    for (size_t k = 0; k < sizeof tok_html_charref / sizeof tok_html_charref[0]; k++)
        if (tok_html_charref[k][0] == num) {
            o[0] = tok_html_charref[k][1];
            return 1;
        }
    if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) {
        o[0] = 0xFFFD;
        return 1;
    }
    if (IN_TABLE(tok_html_dropped, num)) return 0;
    o[0] = num;
    return 1;
}

/* One pass of Python's html.unescape over n code points; never lengthens. The
 * reference pattern is &(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?). */
static size_t html_unescape(const uint32_t *in, size_t n, uint32_t *out) {
    size_t i = 0, o = 0;
    while (i < n) {
        if (in[i] != '&') {
            out[o++] = in[i++];
            continue;
        }
        size_t j = i + 1;
        if (j < n && in[j] == '#') {
            size_t k = j + 1;
            bool hex = k < n && (in[k] == 'x' || in[k] == 'X');
            if (hex) k++;
            size_t d0 = k;
            uint32_t num = 0;
            for (; k < n; k++) {
                int v = in[k] >= 0x80 ? -1 : hex ? hexval((char)in[k]) : (int)in[k] - '0';
                if (!hex && v > 9) v = -1;
                if (v < 0) break;
                num = num > 0x10FFFF ? 0x110000 : num * (hex ? 16 : 10) + (uint32_t)v;
            }
            if (num > 0x10FFFF) num = 0x110000;
            if (k == d0) { /* "&#" with no digits: not a reference */
                out[o++] = in[i++];
                continue;
            }
            if (k < n && in[k] == ';') k++;
            o += numeric_ref(num, out + o);
            i = k;
            continue;
        }
        size_t k = j;
        while (k < n && k - j < 32 && ent_namechar(in[k])) k++;
        if (k == j) {
            out[o++] = in[i++];
            continue;
        }
        size_t end = k < n && in[k] == ';' ? k + 1 : k, len = end - j;
        /* the full name, then the longest prefix of at least 2 characters (only
         * the legacy names without ';' can match a prefix) */
        char name[40];
        size_t ascii = 0;
        while (ascii < len && in[j + ascii] < 0x80) {
            name[ascii] = (char)in[j + ascii];
            ascii++;
        }
        int e = -1;
        size_t x = len;
        if (ascii == len) {
            name[len] = 0;
            e = ent_find(name);
        }
        if (e < 0)
            for (x = len - 1; x >= 2; x--) {
                if (x > ascii) continue;
                name[x] = 0;
                if ((e = ent_find(name)) >= 0) break;
            }
        if (e < 0) { /* no reference: the text stays as it was */
            for (size_t q = i; q < end; q++) out[o++] = in[q];
        } else {
            out[o++] = tok_ent[e].cp[0];
            if (tok_ent[e].cp[1]) out[o++] = tok_ent[e].cp[1];
            for (size_t q = j + x; q < end; q++) out[o++] = in[q];
        }
        i = end;
    }
    return o;
}

/* ------------------------------------------------------------ cleaning */
/* Whitespace runs to one space, stripped at both ends; in place. */
static size_t collapse_ws(uint32_t *s, size_t n) {
    size_t o = 0;
    bool pending = false;
    for (size_t i = 0; i < n; i++) {
        if (is_space(s[i])) {
            pending = o > 0;
            continue;
        }
        if (pending) s[o++] = ' ';
        pending = false;
        s[o++] = s[i];
    }
    return o;
}

/* Python's str.lower: simple mappings, U+0130 -> "i\u0307", and capital sigma
 * as final sigma after a cased letter not followed by one (Case_Ignorable
 * characters skipped on both sides). out holds 2n. */
static size_t lowercase(const uint32_t *s, size_t n, uint32_t *out) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t cp = s[i];
        if (cp == 0x130) {
            out[o++] = 'i';
            out[o++] = 0x307;
        } else if (cp == 0x3A3) {
            size_t j = i;
            while (j > 0 && IN_TABLE(tok_uc_case_ignorable, s[j - 1])) j--;
            bool final = j > 0 && IN_TABLE(tok_uc_cased, s[j - 1]);
            if (final) {
                size_t k = i + 1;
                while (k < n && IN_TABLE(tok_uc_case_ignorable, s[k])) k++;
                final = k == n || !IN_TABLE(tok_uc_cased, s[k]);
            }
            out[o++] = final ? 0x3C2 : 0x3C3;
        } else {
            out[o++] = simple_lower(cp);
        }
    }
    return o;
}

/* ------------------------------------------------------------ BPE */
static void heap_push(uint64_t *h, size_t *n, uint64_t v) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p] <= v) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}

static uint64_t heap_pop(uint64_t *h, size_t *n) {
    uint64_t top = h[0], v = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, m = i;
        uint64_t mv = v;
        if (l < *n && h[l] < mv) m = l, mv = h[l];
        if (l + 1 < *n && h[l + 1] < mv) m = l + 1, mv = h[l + 1];
        if (m == i) break;
        h[i] = h[m];
        i = m;
    }
    if (*n) h[i] = v;
    return top;
}

static bool scratch(ap_tokenizer *t, size_t m) {
    if (m <= t->w_cap) return true;
    size_t cap = m < 64 ? 64 : m * 2;
    int32_t *a = realloc(t->w_sym, sizeof *a * cap);
    if (a) t->w_sym = a;
    int32_t *b = realloc(t->w_next, sizeof *b * cap);
    if (b) t->w_next = b;
    int32_t *p = realloc(t->w_prev, sizeof *p * cap);
    if (p) t->w_prev = p;
    int32_t *d = realloc(t->w_merged, sizeof *d * cap);
    if (d) t->w_merged = d;
    /* at most m - 1 initial pairs, plus two per merge */
    uint64_t *h = realloc(t->w_heap, sizeof *h * cap * 3);
    if (h) t->w_heap = h;
    if (!a || !b || !p || !d || !h) return false;
    t->w_cap = cap;
    return true;
}

static void push_pair(ap_tokenizer *t, size_t *hn, int32_t i) {
    int32_t j = t->w_next[i];
    if (j < 0) return;
    const tok_pair *p = pair_find(t, t->w_sym[i], t->w_sym[j]);
    if (p) heap_push(t->w_heap, hn, ((uint64_t)(uint32_t)p->rank << 32) | (uint32_t)i);
}

/* BPE of the m symbols in t->w_sym (the last already with </w>). The lowest-
 * ranked pair is merged at all its non-overlapping places, left to right,
 * before pairs that those merges made are looked at: the reference algorithm,
 * with a heap instead of rescans so that a long word costs O(m log m).
 * Returns the first symbol; the chain continues through t->w_next. */
static void bpe(ap_tokenizer *t, size_t m) {
    size_t hn = 0;
    for (size_t i = 0; i < m; i++) {
        t->w_next[i] = i + 1 < m ? (int32_t)i + 1 : -1;
        t->w_prev[i] = (int32_t)i - 1;
    }
    for (size_t i = 0; i + 1 < m; i++) push_pair(t, &hn, (int32_t)i);
    while (hn) {
        uint32_t rank = (uint32_t)(t->w_heap[0] >> 32);
        size_t nmerged = 0;
        while (hn && (uint32_t)(t->w_heap[0] >> 32) == rank) {
            int32_t i = (int32_t)(uint32_t)heap_pop(t->w_heap, &hn);
            int32_t j = t->w_next[i];
            if (t->w_sym[i] < 0 || j < 0) continue;
            const tok_pair *p = pair_find(t, t->w_sym[i], t->w_sym[j]);
            if (!p || (uint32_t)p->rank != rank) continue; /* stale */
            t->w_sym[i] = p->result;
            t->w_sym[j] = -1;
            t->w_next[i] = t->w_next[j];
            if (t->w_next[j] >= 0) t->w_prev[t->w_next[j]] = i;
            t->w_merged[nmerged++] = i;
        }
        for (size_t k = 0; k < nmerged; k++) {
            int32_t i = t->w_merged[k];
            if (t->w_prev[i] >= 0) push_pair(t, &hn, t->w_prev[i]);
            push_pair(t, &hn, i);
        }
    }
}

/* ------------------------------------------------------------ encoding */
typedef struct {
    int32_t *ids;
    int64_t cap, total, stop; /* stop: total at which the caller needs no more */
} id_out;

static void emit(id_out *o, int32_t id) {
    if (o->total < o->cap) o->ids[o->total] = id;
    o->total++;
}

static tok_cached *cache_slot(ap_tokenizer *t, const uint8_t *w, size_t n, uint32_t h) {
    for (uint32_t i = h & (TOK_CACHE_SLOTS - 1);; i = (i + 1) & (TOK_CACHE_SLOTS - 1)) {
        tok_cached *e = &t->cache[i];
        if (!e->word || (e->hash == h && e->len == n && memcmp(e->word, w, n) == 0)) return e;
    }
}

static void cache_clear(ap_tokenizer *t) {
    for (int i = 0; i < TOK_CACHE_SLOTS; i++) {
        free(t->cache[i].word);
        t->cache[i].word = NULL;
    }
    t->cache_n = 0;
}

/* BPE ids of one pre-token's bytes. */
static bool encode_word(ap_tokenizer *t, const uint8_t *w, size_t n, id_out *o) {
    if (n == 15 && memcmp(w, "<|startoftext|>", 15) == 0) return emit(o, t->sot), true;
    if (n == 13 && memcmp(w, "<|endoftext|>", 13) == 0) return emit(o, t->eot), true;
    uint32_t h = 0;
    tok_cached *e = NULL;
    if (n <= TOK_CACHE_WORD) {
        h = fnv1a(w, n);
        e = cache_slot(t, w, n, h);
        if (e->word) {
            const int32_t *ids = (const int32_t *)(e->word + ((e->len + 3) & ~3u));
            for (uint32_t k = 0; k < e->n; k++) emit(o, ids[k]);
            return true;
        }
    }
    if (!scratch(t, n)) return false;
    for (size_t k = 0; k < n; k++) t->w_sym[k] = t->byte_sym[w[k]];
    t->w_sym[n - 1] = t->byte_sym_w[w[n - 1]];
    bpe(t, n);
    int64_t first = o->total;
    for (int32_t i = 0; i >= 0; i = t->w_next[i]) emit(o, t->syms[t->w_sym[i]].id);
    if (e && o->total <= o->cap) {
        uint32_t cnt = (uint32_t)(o->total - first);
        size_t off = (n + 3) & ~(size_t)3;
        uint8_t *mem = malloc(off + sizeof(int32_t) * cnt);
        if (mem) { /* a failed cache insert only costs speed */
            if (t->cache_n >= TOK_CACHE_SLOTS / 2) {
                cache_clear(t);
                e = cache_slot(t, w, n, h);
            }
            memcpy(mem, w, n);
            memcpy(mem + off, o->ids + first, sizeof(int32_t) * cnt);
            *e = (tok_cached){h, (uint32_t)n, cnt, mem};
            t->cache_n++;
        }
    }
    return true;
}

/* The special token that the pattern matches at s (under IGNORECASE, where
 * long s U+017F matches 's'): its length, or 0. */
static size_t match_ci(const uint32_t *s, size_t n, const char *lit) {
    size_t k = 0;
    for (; lit[k]; k++) {
        if (k >= n) return 0;
        uint32_t c = s[k];
        if (!(c == (uint32_t)lit[k] || (lit[k] == 's' && c == 0x17F))) return 0;
    }
    return k;
}

static size_t match_contraction(const uint32_t *s, size_t n) {
    if (n < 2 || s[0] != '\'') return 0;
    switch (s[1]) {
    case 's': case 0x17F: case 't': case 'm': case 'd': return 2;
    case 'r': return n >= 3 && s[2] == 'e' ? 3 : 0;
    case 'v': return n >= 3 && s[2] == 'e' ? 3 : 0;
    case 'l': return n >= 3 && s[2] == 'l' ? 3 : 0;
    default: return 0;
    }
}

static int64_t tok_encode(ap_ctx *c, ap_tokenizer *t, const char *text, size_t len, unsigned flags, int32_t *ids,
                          int64_t cap, int64_t stop) {
    if (c && ap_failed(c)) return -1;
    if (!t) return ap_seterr(c, AP_ERR_INVALID_ARG, "tokenize: tokenizer is NULL"), -1;
    if (!text && len) return ap_seterr(c, AP_ERR_INVALID_ARG, "tokenize: text is NULL"), -1;
    if (cap < 0 || (cap > 0 && !ids))
        return ap_seterr(c, AP_ERR_INVALID_ARG, "tokenize: ids is NULL with cap %lld", (long long)cap), -1;
    if (len > TOK_MAX_TEXT)
        return ap_seterr(c, AP_ERR_INVALID_ARG, "tokenize: text of %zu bytes is over the limit of %zu MiB", len,
                         TOK_MAX_TEXT >> 20), -1;
    id_out o = {ids, cap, 0, stop};
    if (len == 0) return 0;
    /* code points: a holds the text, b the next step's output; NFC may grow
     * the text (up to 3x), lowercasing may double it */
    uint32_t *a = malloc(sizeof *a * (len + 1)), *b = NULL;
    uint8_t *word = NULL;
    size_t n = a ? utf8_decode((const uint8_t *)text, len, a) : 0;
    if (a && !(flags & AP_TOK_NO_NFC) && nfc_needed(a, n)) {
        uint32_t *d = malloc(sizeof *d * (4 * n + 1));
        if (d) n = nfc(a, n, d);
        free(a);
        a = d;
    }
    if (a) b = malloc(sizeof *b * (2 * n + 1));
    if (b) word = malloc(4 * (2 * n) + 1);
    if (!a || !b || !word) {
        free(a);
        free(b);
        free(word);
        return ap_seterr(c, AP_ERR_NOMEM, "tokenize: out of memory for %zu bytes of text", len), -1;
    }
    if (flags & AP_TOK_HTML_UNESCAPE) {
        n = html_unescape(a, n, b);
        n = html_unescape(b, n, a);
    }
    n = collapse_ws(a, n);
    n = lowercase(a, n, b);
    const uint32_t *s = b;
    bool ok = true;
    for (size_t i = 0; i < n && ok && (stop < 0 || o.total < stop);) {
        size_t m = 0;
        int cl = char_class(s[i]);
        if (s[i] == '<') {
            m = match_ci(s + i, n - i, "<|startoftext|>");
            if (!m) m = match_ci(s + i, n - i, "<|endoftext|>");
        } else if (s[i] == '\'') {
            m = match_contraction(s + i, n - i);
        }
        if (!m) {
            if (cl == CL_SKIP) {
                i++;
                continue;
            }
            m = 1;
            if (cl != CL_NUMBER)
                while (i + m < n && char_class(s[i + m]) == cl) m++;
        }
        size_t wl = 0;
        for (size_t k = 0; k < m; k++) wl += (size_t)utf8_put(s[i + k], (char *)word + wl);
        ok = encode_word(t, word, wl, &o);
        i += m;
    }
    free(a);
    free(b);
    free(word);
    if (!ok) return ap_seterr(c, AP_ERR_NOMEM, "tokenize: out of memory"), -1;
    return o.total;
}

int64_t ap_tokenize(ap_ctx *c, ap_tokenizer *t, const char *text, size_t len, unsigned flags, int32_t *ids,
                    int64_t cap) {
    return tok_encode(c, t, text, len, flags, ids, cap, -1);
}

ap_status ap_tokenize_seq(ap_ctx *c, ap_tokenizer *t, const char *text, const ap_tok_opts *o, int32_t *ids,
                          int64_t *n_text) {
    if (c && ap_failed(c)) return c->status;
    if (!o) o = &ap_tok_opts_sd1;
    if (!ids || !text) return ap_seterr(c, AP_ERR_INVALID_ARG, "tokenize: %s is NULL", ids ? "text" : "ids");
    if (!t) return ap_seterr(c, AP_ERR_INVALID_ARG, "tokenize: tokenizer is NULL");
    if (o->context < 2) return ap_seterr(c, AP_ERR_INVALID_ARG, "tokenize: context %d is below 2", o->context);
    int64_t room = o->context - 2;
    int64_t n = tok_encode(c, t, text, strlen(text), o->flags, ids + 1, room, n_text ? -1 : room);
    if (n < 0) return c ? c->status : AP_ERR_NOMEM;
    int64_t k = n < room ? n : room;
    ids[0] = t->sot;
    ids[k + 1] = t->eot;
    for (int64_t i = k + 2; i < o->context; i++) ids[i] = o->pad_id;
    if (n_text) *n_text = n;
    return AP_OK;
}

/* ------------------------------------------------------------ decoding */
int64_t ap_tokenizer_decode(const ap_tokenizer *t, const int32_t *ids, int64_t n, int skip_special, char *out,
                            size_t cap) {
    if (!t || (n > 0 && !ids) || (cap > 0 && !out)) return -1;
    int64_t len = 0;
#define PUT(ch)                                                                                                        \
    do {                                                                                                               \
        if ((size_t)len + 1 < cap) out[len] = (char)(ch);                                                              \
        len++;                                                                                                         \
    } while (0)
    for (int64_t i = 0; i < n; i++) {
        int id = ids[i];
        if (skip_special && (id == t->sot || id == t->eot)) continue;
        const char *s = ap_tokenizer_token(t, id);
        if (!s) return -1;
        size_t sl = strlen(s);
        bool word_end = sl >= 4 && memcmp(s + sl - 4, "</w>", 4) == 0;
        if (word_end) sl -= 4;
        uint32_t cps[64];
        for (size_t p = 0; p < sl;) {
            /* token strings are well-formed UTF-8 (made by utf8_put or the JSON reader) */
            size_t chunk = sl - p < 64 ? sl - p : 64;
            while (chunk < sl - p && ((unsigned char)s[p + chunk] & 0xC0) == 0x80) chunk--;
            size_t m = utf8_decode((const uint8_t *)s + p, chunk, cps);
            for (size_t q = 0; q < m; q++) {
                if (cps[q] < 324 && t->byte_of_cp[cps[q]] >= 0) {
                    PUT(t->byte_of_cp[cps[q]]);
                } else {
                    char u[4];
                    int k = utf8_put(cps[q], u);
                    for (int z = 0; z < k; z++) PUT(u[z]);
                }
            }
            p += chunk;
        }
        if (word_end) PUT(' ');
    }
#undef PUT
    if (cap > 0) out[(size_t)len < cap ? (size_t)len : cap - 1] = 0;
    return len;
}

/* ------------------------------------------------------------ saving (HF layout) */
typedef struct {
    int32_t rank, left, right;
} merge_rec;

static int merge_cmp(const void *a, const void *b) {
    int32_t x = ((const merge_rec *)a)->rank, y = ((const merge_rec *)b)->rank;
    return (x > y) - (x < y);
}

ap_status ap_tokenizer_save_hf(ap_ctx *c, const ap_tokenizer *t, const char *dir) {
    char path[4096];
    merge_rec *m = malloc(sizeof *m * (t->n_pairs ? t->n_pairs : 1));
    ap_json *vocab = ap_json_new_object();
    if (!m || !vocab) {
        free(m);
        ap_json_free(vocab);
        return ap_seterr(c, AP_ERR_NOMEM, "%s: out of memory writing the tokenizer", dir);
    }
    size_t nm = 0;
    for (uint32_t i = 0; i <= t->pair_mask && t->pairs; i++) {
        const tok_pair *p = &t->pairs[i];
        if (!p->key) continue;
        uint64_t k = p->key - 1;
        m[nm++] = (merge_rec){p->rank, (int32_t)(k >> 32), (int32_t)(uint32_t)k};
    }
    qsort(m, nm, sizeof *m, merge_cmp);
    bool ok = true;
    for (int id = 0; id < t->vocab_size && ok; id++) {
        const char *s = ap_tokenizer_token(t, id);
        if (s) ok = ap_json_add_int(vocab, s, id);
    }
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    ap_status st = ok ? ap_json_save(c, path, vocab, false)
                      : ap_seterr(c, AP_ERR_NOMEM, "%s: out of memory writing the tokenizer", dir);
    ap_json_free(vocab);
    ap_atomic_file af;
    if (st == AP_OK) {
        snprintf(path, sizeof path, "%s/merges.txt", dir);
        st = ap_atomic_open(c, path, &af);
        if (st == AP_OK) {
            fputs("#version: 0.2\n", af.f);
            for (size_t i = 0; i < nm; i++)
                fprintf(af.f, "%s %s\n", t->blob + t->syms[m[i].left].off, t->blob + t->syms[m[i].right].off);
            st = ap_atomic_commit(c, &af);
        }
    }
    free(m);
    return st;
}
