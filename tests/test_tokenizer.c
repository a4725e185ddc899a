/* The CLIP tokenizer: the vocabulary it derives, ids against the spec's vectors
 * and against tests/ref/tokenizer_cases.txt (written by the independent Python
 * reference tests/ref/gen_tokenizer.py), the three ways to load it, decoding,
 * malformed files, and random bytes. */
#include "models/tokenizer.h"
#include "test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

static ap_tokenizer *bundled;

static int seq_equals(const int32_t *got, const int32_t *want, int n) {
    for (int i = 0; i < n; i++)
        if (got[i] != want[i]) return 0;
    return 1;
}

static void print_ids(const char *label, const int32_t *ids, int64_t n) {
    fprintf(stderr, "  %s (%lld):", label, (long long)n);
    for (int64_t i = 0; i < n && i < 90; i++) fprintf(stderr, " %d", ids[i]);
    fputc('\n', stderr);
}

/* ---------------------------------------------------------------- vocabulary */
static void test_vocab(void) {
    ap_tokenizer *t = bundled;
    CHECK(ap_tokenizer_vocab_size(t) == 49408);
    CHECK(ap_tokenizer_sot(t) == AP_TOK_SOT && ap_tokenizer_eot(t) == AP_TOK_EOT);
    CHECK(!strcmp(ap_tokenizer_token(t, 0), "!"));
    CHECK(!strcmp(ap_tokenizer_token(t, 93), "~"));
    CHECK(!strcmp(ap_tokenizer_token(t, 94), "\xc2\xa1"));  /* U+00A1 */
    CHECK(!strcmp(ap_tokenizer_token(t, 187), "\xc3\xbf")); /* U+00FF */
    CHECK(!strcmp(ap_tokenizer_token(t, 188), "\xc4\x80")); /* byte 0 -> U+0100 */
    CHECK(!strcmp(ap_tokenizer_token(t, 256), "!</w>"));
    CHECK(!strcmp(ap_tokenizer_token(t, 320), "a</w>"));
    CHECK(!strcmp(ap_tokenizer_token(t, 512), "in"));            /* first merge: i n */
    CHECK(!strcmp(ap_tokenizer_token(t, 49405), "jekyll</w>"));  /* last used merge */
    CHECK(!strcmp(ap_tokenizer_token(t, 49406), "<|startoftext|>"));
    CHECK(!strcmp(ap_tokenizer_token(t, 49407), "<|endoftext|>"));
    CHECK(ap_tokenizer_token(t, 49408) == NULL && ap_tokenizer_token(t, -1) == NULL);
    CHECK(ap_tokenizer_id(t, "a</w>") == 320 && ap_tokenizer_id(t, "no such token") == -1);
    /* the id of every token string is the token's own id (no duplicates) */
    int bad = 0;
    for (int id = 0; id < 49408; id++) bad += ap_tokenizer_id(t, ap_tokenizer_token(t, id)) != id;
    CHECK_MSG(bad == 0, "%d ids do not round-trip through their strings", bad);
    /* the byte symbols: space is U+0120, byte 0xad is the last remapped one */
    CHECK(ap_tokenizer_id(t, "\xc4\xa0") >= 188 && ap_tokenizer_id(t, "\xc5\x83") == 255);
}

/* ---------------------------------------------------------------- spec vectors */
static void check_seq(ap_ctx *c, const char *text, const ap_tok_opts *o, const int32_t *want, int nwant) {
    int32_t ids[AP_TOK_CONTEXT];
    int64_t n = -1;
    CHECK(ap_tokenize_seq(c, bundled, text, o, ids, &n) == AP_OK);
    CHECK_OK(c);
    int pad = o ? o->pad_id : AP_TOK_EOT;
    int ok = seq_equals(ids, want, nwant) && n == nwant - 2;
    for (int i = nwant; i < AP_TOK_CONTEXT; i++) ok &= ids[i] == pad;
    CHECK_MSG(ok, "sequence of \"%s\"", text);
    if (!ok) print_ids("got", ids, AP_TOK_CONTEXT);
}

static void test_spec_vectors(ap_ctx *c) {
    check_seq(c, "a photo of a cat", NULL, (const int32_t[]){49406, 320, 1125, 539, 320, 2368, 49407}, 7);
    check_seq(c, "An astronaut riding a horse on the moon.", NULL,
              (const int32_t[]){49406, 550, 18376, 6765, 320, 4558, 525, 518, 3293, 269, 49407}, 11);
    check_seq(c, "a cat's toy, 2 dogs!!", NULL,
              (const int32_t[]){49406, 320, 2368, 568, 5988, 267, 273, 3255, 748, 49407}, 10);
    check_seq(c, "", NULL, (const int32_t[]){49406, 49407}, 2);
    check_seq(c, "", &ap_tok_opts_openclip, (const int32_t[]){49406, 49407}, 2);
    check_seq(c, "a photo of a cat", &ap_tok_opts_openclip,
              (const int32_t[]){49406, 320, 1125, 539, 320, 2368, 49407}, 7);
    /* the cases the task names, by construction from single ids where they are known */
    int32_t ids[8];
    CHECK(ap_tokenize(c, bundled, "!", 1, 0, ids, 8) == 1 && ids[0] == 256);
    CHECK(ap_tokenize(c, bundled, "A CAT", 5, 0, ids, 8) == 2 && ids[0] == 320 && ids[1] == 2368);
    CHECK(ap_tokenize(c, bundled, "  a \t\n cat  ", 12, 0, ids, 8) == 2 && ids[0] == 320 && ids[1] == 2368);
    /* each digit is its own token: "2" is 273 in the spec's vector */
    CHECK(ap_tokenize(c, bundled, "22", 2, 0, ids, 8) == 2 && ids[0] == 273 && ids[1] == 273);
    /* a literal special token in the text is that token */
    CHECK(ap_tokenize(c, bundled, "<|endoftext|>", 13, 0, ids, 8) == 1 && ids[0] == AP_TOK_EOT);
}

/* Truncation keeps start, the first 75 ids and end; n_text tells the full count. */
static void test_truncation(ap_ctx *c) {
    char text[4096] = "";
    for (int i = 0; i < 40; i++) strcat(text, "a photo of a cat ");
    int32_t raw[300], ids[AP_TOK_CONTEXT];
    int64_t total = ap_tokenize(c, bundled, text, strlen(text), 0, raw, 300);
    CHECK(total == 200);
    int64_t n = 0;
    CHECK(ap_tokenize_seq(c, bundled, text, NULL, ids, &n) == AP_OK && n == 200);
    CHECK(ids[0] == AP_TOK_SOT && ids[76] == AP_TOK_EOT && seq_equals(ids + 1, raw, 75));
    /* without n_text it stops early, with the same ids */
    int32_t ids2[AP_TOK_CONTEXT];
    CHECK(ap_tokenize_seq(c, bundled, text, NULL, ids2, NULL) == AP_OK && seq_equals(ids, ids2, AP_TOK_CONTEXT));
    /* exactly 75 text ids: no truncation, no padding */
    char t75[512] = "";
    for (int i = 0; i < 15; i++) strcat(t75, "a photo of a cat ");
    CHECK(ap_tokenize_seq(c, bundled, t75, NULL, ids, &n) == AP_OK && n == 75 && ids[76] == AP_TOK_EOT &&
          ids[75] == 2368);
    /* a short context */
    ap_tok_opts o = {0u, 4, 0};
    CHECK(ap_tokenize_seq(c, bundled, "a photo of a cat", &o, ids, &n) == AP_OK && n == 5);
    CHECK(ids[0] == AP_TOK_SOT && ids[1] == 320 && ids[2] == 1125 && ids[3] == AP_TOK_EOT);
    o.context = 2;
    CHECK(ap_tokenize_seq(c, bundled, "a photo", &o, ids, NULL) == AP_OK && ids[0] == AP_TOK_SOT &&
          ids[1] == AP_TOK_EOT);
    /* snprintf-style counts */
    CHECK(ap_tokenize(c, bundled, "a photo of a cat", 16, 0, NULL, 0) == 5);
    int32_t two[2] = {-1, -1};
    CHECK(ap_tokenize(c, bundled, "a photo of a cat", 16, 0, two, 2) == 5 && two[0] == 320 && two[1] == 1125);
}

/* ---------------------------------------------------------------- fixtures */
static int unhex(const char *h, size_t n, char *out) {
    if (n == 1 && h[0] == '-') return 0;
    for (size_t i = 0; i + 1 < n; i += 2) {
        unsigned v;
        if (sscanf(h + i, "%2x", &v) != 1) return -1;
        out[i / 2] = (char)v;
    }
    return (int)(n / 2);
}

typedef struct {
    int seq, pad;
    unsigned flags;
    char *text;
    int text_len;
    int32_t *ids;
    int n_ids;
} fixture;

static int read_fixtures(fixture **out) {
    size_t len;
    char *buf = test_read_file("tests/ref/tokenizer_cases.txt", &len);
    CHECK_MSG(buf != NULL, "cannot read tests/ref/tokenizer_cases.txt");
    if (!buf) return 0;
    int n = 0, cap = 0;
    fixture *f = NULL;
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
        if (line[0] == '#') continue;
        fixture x = {0};
        char kind[8], hex[16384];
        int pos = 0;
        x.seq = !strncmp(line, "seq", 3);
        int got = x.seq ? sscanf(line, "%7s %u %d %16383s : %n", kind, &x.flags, &x.pad, hex, &pos)
                        : sscanf(line, "%7s %u %16383s : %n", kind, &x.flags, hex, &pos);
        if (got != (x.seq ? 4 : 3) || pos == 0) {
            CHECK_MSG(0, "bad fixture line: %.60s", line);
            continue;
        }
        x.text = malloc(strlen(hex) / 2 + 1);
        x.text_len = unhex(hex, strlen(hex), x.text);
        x.text[x.text_len < 0 ? 0 : x.text_len] = 0;
        x.ids = malloc(sizeof(int32_t) * (strlen(line + pos) / 2 + 1));
        for (char *p = line + pos, *e; *p; p = e) {
            long v = strtol(p, &e, 10);
            if (e == p) break;
            x.ids[x.n_ids++] = (int32_t)v;
        }
        if (n == cap) f = realloc(f, sizeof *f * (size_t)(cap = cap ? cap * 2 : 256));
        f[n++] = x;
    }
    free(buf);
    *out = f;
    return n;
}

static void free_fixtures(fixture *f, int n) {
    for (int i = 0; i < n; i++) {
        free(f[i].text);
        free(f[i].ids);
    }
    free(f);
}

/* Runs every fixture through t; returns the number of mismatches. */
static int run_fixtures(ap_ctx *c, ap_tokenizer *t, const fixture *f, int n, const char *label) {
    int bad = 0;
    for (int i = 0; i < n; i++) {
        const fixture *x = &f[i];
        int32_t got[AP_TOK_CONTEXT > 4096 ? AP_TOK_CONTEXT : 4096];
        int ok;
        int64_t m = 0;
        if (x->seq) {
            ap_tok_opts o = {x->flags, AP_TOK_CONTEXT, x->pad};
            ok = ap_tokenize_seq(c, t, x->text, &o, got, NULL) == AP_OK && x->n_ids == AP_TOK_CONTEXT &&
                 seq_equals(got, x->ids, AP_TOK_CONTEXT);
            m = AP_TOK_CONTEXT;
        } else {
            m = ap_tokenize(c, t, x->text, (size_t)x->text_len, x->flags, got, 4096);
            ok = m == x->n_ids && seq_equals(got, x->ids, x->n_ids);
        }
        if (!ok) {
            if (bad < 8) {
                fprintf(stderr, "%s: case %d (flags %u) \"%.80s\" differs\n", label, i, x->flags, x->text);
                print_ids("want", x->ids, x->n_ids);
                print_ids("got ", got, m < 0 ? 0 : m);
            }
            bad++;
        }
    }
    return bad;
}

static void test_fixtures(ap_ctx *c, const fixture *f, int n) {
    CHECK_MSG(n > 350, "only %d fixture cases", n);
    int bad = run_fixtures(c, bundled, f, n, "bundled");
    CHECK_MSG(bad == 0, "%d of %d fixture cases differ", bad, n);
    /* again: now the words come from the cache */
    bad = run_fixtures(c, bundled, f, n, "bundled, cached");
    CHECK_MSG(bad == 0, "%d of %d fixture cases differ on the second run", bad, n);
    CHECK_OK(c);
}

/* ---------------------------------------------------------------- loading from files */
static char tmpdir[256];

static const char *tmp_path(const char *name) {
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

static void write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return;
    fwrite(data, 1, n, f);
    fclose(f);
}

/* The merges text (header + lines) inflated from the asset. */
static char *asset_text(size_t *len) {
    size_t gzn;
    unsigned char *gz = test_read_file("assets/clip/bpe_simple_vocab_16e6.txt.gz", &gzn);
    if (!gz) return NULL;
    size_t cap = 8u << 20;
    char *out = malloc(cap);
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    inflateInit2(&zs, 16 + MAX_WBITS);
    zs.next_in = gz;
    zs.avail_in = (uInt)gzn;
    zs.next_out = (unsigned char *)out;
    zs.avail_out = (uInt)cap;
    int r = inflate(&zs, Z_FINISH);
    *len = cap - zs.avail_out;
    inflateEnd(&zs);
    free(gz);
    if (r != Z_STREAM_END) {
        free(out);
        return NULL;
    }
    return out;
}

/* The first `lines` lines of text (header included) joined with sep between. */
static size_t head_lines(const char *text, size_t n, int lines) {
    size_t i = 0;
    for (int k = 0; k < lines && i < n; k++) {
        const char *e = memchr(text + i, '\n', n - i);
        i = e ? (size_t)(e - text) + 1 : n;
    }
    return i;
}

static void json_str(FILE *f, const char *s, int ascii) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        if (*p == '"' || *p == '\\') {
            fprintf(f, "\\%c", *p++);
        } else if (ascii && *p >= 0x80) {
            /* two-byte UTF-8 (the byte alphabet stays below U+0800) as \uXXXX */
            unsigned cp = ((p[0] & 0x1Fu) << 6) | (p[1] & 0x3Fu);
            fprintf(f, "\\u%04X", cp);
            p += 2;
        } else {
            fputc(*p++, f);
        }
    }
    fputc('"', f);
}

/* vocab.json of the bundled vocabulary, in a shuffled order (ids are values),
 * with escapes when ascii is set. */
static void write_vocab_json(const char *path, int ascii, int drop_id) {
    FILE *f = fopen(path, "wb");
    if (!f) return;
    fputs("{\n", f);
    int first = 1;
    for (int k = 0; k < 49408; k++) {
        int id = (int)(((int64_t)k * 7919) % 49408); /* 7919 is prime: a permutation */
        if (id == drop_id) continue;
        if (!first) fputs(",\n", f);
        first = 0;
        fputs("  ", f);
        json_str(f, ap_tokenizer_token(bundled, id), ascii);
        fprintf(f, " : %d", id);
    }
    fputs("\n}\n", f);
    fclose(f);
}

static void test_load_files(ap_ctx *c, const fixture *fx, int nfx) {
    size_t n;
    char *text = asset_text(&n);
    CHECK_MSG(text != NULL, "cannot inflate the asset");
    if (!text) return;
    ap_tokenizer *t = NULL;

    /* the gzip file itself, and its text */
    CHECK(ap_tokenizer_load_merges(c, test_path("assets/clip/bpe_simple_vocab_16e6.txt.gz"), &t) == AP_OK);
    CHECK(t && run_fixtures(c, t, fx, nfx, "merges .gz") == 0);
    ap_tokenizer_free(t);
    size_t used = head_lines(text, n, 48895);
    write_file(tmp_path("merges_plain.txt"), text, used);
    CHECK(ap_tokenizer_load_merges(c, tmp_path("merges_plain.txt"), &t) == AP_OK);
    CHECK(t && ap_tokenizer_vocab_size(t) == 49408 && run_fixtures(c, t, fx, nfx, "merges text") == 0);
    ap_tokenizer_free(t);
    CHECK_OK(c);

    /* HF layout: vocab.json (plain UTF-8, then \u escapes) + merges.txt */
    const char *hdr = "#version: 0.2\n";
    size_t h0 = head_lines(text, n, 1);
    char *mt = malloc(used + 64);
    memcpy(mt, hdr, strlen(hdr));
    memcpy(mt + strlen(hdr), text + h0, used - h0);
    write_file(tmp_path("merges.txt"), mt, strlen(hdr) + used - h0);
    for (int ascii = 0; ascii < 2; ascii++) {
        write_vocab_json(tmp_path("vocab.json"), ascii, -1);
        CHECK(ap_tokenizer_load_dir(c, tmpdir, &t) == AP_OK);
        CHECK_OK(c);
        CHECK(t && ap_tokenizer_vocab_size(t) == 49408 && ap_tokenizer_eot(t) == AP_TOK_EOT);
        CHECK(t && run_fixtures(c, t, fx, nfx, ascii ? "hf, escaped" : "hf") == 0);
        int bad = 0;
        for (int id = 0; t && id < 49408; id++)
            bad += strcmp(ap_tokenizer_token(t, id), ap_tokenizer_token(bundled, id)) != 0;
        CHECK_MSG(bad == 0, "%d token strings differ from the bundled vocabulary", bad);
        ap_tokenizer_free(t);
        t = NULL;
    }
    /* a merge result that vocab.json lacks is emitted as the unknown token
     * (<|endoftext|>); "cat</w>" is 2368 */
    write_vocab_json(tmp_path("vocab.json"), 0, 2368);
    CHECK(ap_tokenizer_load_dir(c, tmpdir, &t) == AP_OK);
    int32_t ids[8];
    CHECK(t && ap_tokenize(c, t, "a cat", 5, 0, ids, 8) == 2 && ids[0] == 320 && ids[1] == AP_TOK_EOT);
    CHECK(t && ap_tokenizer_id(t, "cat</w>") == -1 && ap_tokenizer_token(t, 2368) == NULL);
    ap_tokenizer_free(t);
    t = NULL;
    CHECK_OK(c);
    /* CRLF line ends and a trailing blank line in merges.txt */
    {
        FILE *f = fopen(tmp_path("merges.txt"), "wb");
        fputs("#version: 0.2\r\n", f);
        for (size_t i = h0; i < used;) {
            const char *e = memchr(text + i, '\n', used - i);
            size_t l = (size_t)(e - (text + i));
            fwrite(text + i, 1, l, f);
            fputs("\r\n", f);
            i += l + 1;
        }
        fputs("\r\n\r\n", f);
        fclose(f);
        write_vocab_json(tmp_path("vocab.json"), 0, -1);
        CHECK(ap_tokenizer_load_dir(c, tmpdir, &t) == AP_OK);
        CHECK(t && run_fixtures(c, t, fx, nfx, "hf, crlf") == 0);
        ap_tokenizer_free(t);
        t = NULL;
    }
    free(mt);
    free(text);
    CHECK_OK(c);
}

/* A small vocabulary whose JSON uses a surrogate pair and duplicate keys. */
static void test_small_hf(ap_ctx *c) {
    ap_tokenizer *base = bundled, *t = NULL;
    FILE *f = fopen(tmp_path("vocab.json"), "wb");
    fputs("{", f);
    for (int id = 0; id < 512; id++) {
        json_str(f, ap_tokenizer_token(base, id), 0);
        fprintf(f, ":%d,", id);
    }
    /* U+1F431 as a surrogate pair, never produced by the byte alphabet */
    fputs("\"\\ud83d\\udc31\":512, \"ab</w>\":513, \"<|startoftext|>\":514, \"<|endoftext|>\":999, \"ab</w>\":515, "
          "\"<|endoftext|>\":516}",
          f);
    fclose(f);
    write_file(tmp_path("merges.txt"), "#version: 0.2\na b</w>\n", 22);
    CHECK(ap_tokenizer_load_dir(c, tmpdir, &t) == AP_OK);
    CHECK_OK(c);
    if (!t) return;
    CHECK(ap_tokenizer_vocab_size(t) == 1000); /* the largest id seen, 999, though later overridden */
    CHECK(ap_tokenizer_eot(t) == 516 && ap_tokenizer_sot(t) == 514);
    CHECK(ap_tokenizer_id(t, "\xf0\x9f\x90\xb1") == 512);
    int32_t ids[8];
    /* "ab" merges to ab</w> (515, the later duplicate); "ba" stays bytes */
    CHECK(ap_tokenize(c, t, "ab ba", 5, 0, ids, 8) == 3 && ids[0] == 515 && ids[1] == 65 && ids[2] == 256 + 64);
    int32_t seq[AP_TOK_CONTEXT];
    CHECK(ap_tokenize_seq(c, t, "ab", NULL, seq, NULL) == AP_OK && seq[0] == 514 && seq[1] == 515 && seq[2] == 516);
    ap_tokenizer_free(t);
}

/* ---------------------------------------------------------------- errors */
static void expect_error(ap_ctx *c, ap_status st, ap_status want, const char *needle, const char *what) {
    CHECK_MSG(st == want, "%s: status %d, want %d (%s)", what, st, want, ap_last_error(c));
    CHECK_MSG(strstr(ap_last_error(c), needle) != NULL, "%s: message \"%s\" lacks \"%s\"", what, ap_last_error(c),
              needle);
    ap_clear_error(c);
}

static void write_str(const char *name, const char *s) { write_file(tmp_path(name), s, strlen(s)); }

static void test_errors(ap_ctx *c) {
    ap_tokenizer *t = (ap_tokenizer *)1;
    expect_error(c, ap_tokenizer_load_merges(c, tmp_path("missing.txt.gz"), &t), AP_ERR_IO, "missing.txt.gz",
                 "missing file");
    CHECK(t == NULL);
    expect_error(c, ap_tokenizer_load_dir(c, tmp_path("nodir"), &t), AP_ERR_IO, "vocab.json", "missing folder");
    expect_error(c, ap_tokenizer_load_merges(c, NULL, &t), AP_ERR_INVALID_ARG, "path", "NULL path");

    /* merges files */
    write_str("m1.txt", "#version\ni n\nt h e\n");
    expect_error(c, ap_tokenizer_load_merges(c, tmp_path("m1.txt"), &t), AP_ERR_FORMAT, "line 3", "three symbols");
    write_str("m2.txt", "just a header");
    expect_error(c, ap_tokenizer_load_merges(c, tmp_path("m2.txt"), &t), AP_ERR_FORMAT, "no merges", "no merges");
    /* gzip: corrupt, then truncated */
    size_t gzn;
    unsigned char *gz = test_read_file("assets/clip/bpe_simple_vocab_16e6.txt.gz", &gzn);
    if (gz) {
        unsigned char *bad = malloc(4096);
        memcpy(bad, gz, 4096);
        for (int i = 40; i < 4096; i += 3) bad[i] ^= 0x5a;
        write_file(tmp_path("bad.gz"), bad, 4096);
        expect_error(c, ap_tokenizer_load_merges(c, tmp_path("bad.gz"), &t), AP_ERR_FORMAT, "bad.gz", "corrupt gzip");
        write_file(tmp_path("short.gz"), gz, 5000);
        expect_error(c, ap_tokenizer_load_merges(c, tmp_path("short.gz"), &t), AP_ERR_FORMAT, "truncated",
                     "truncated gzip");
        free(bad);
        free(gz);
    }
    /* a few merges only: a smaller vocabulary whose specials follow the merges */
    write_str("m3.txt", "#version: 0.2\ni n\nt h\n");
    CHECK(ap_tokenizer_load_merges(c, tmp_path("m3.txt"), &t) == AP_OK);
    CHECK(t && ap_tokenizer_vocab_size(t) == 516 && ap_tokenizer_eot(t) == 515);
    int32_t ids[8];
    /* "inx": i n merge (512); x</w> is 256 + ('x' - '!') */
    CHECK(t && ap_tokenize(c, t, "inx", 3, 0, ids, 8) == 2 && ids[0] == 512 && ids[1] == 256 + 'x' - '!');
    /* "in" alone: the last symbol is n</w>, which no merge names */
    CHECK(t && ap_tokenize(c, t, "in", 2, 0, ids, 8) == 2 && ids[0] == 'i' - '!' && ids[1] == 256 + 'n' - '!');
    ap_tokenizer_free(t);

    /* vocab.json */
    write_str("merges.txt", "#version: 0.2\ni n\n");
    static const struct {
        const char *json, *needle;
    } bad_json[] = {
        {"", "expected an object"},
        {"[1,2]", "expected an object"},
        {"{\"a\": 1", "expected ','"},
        {"{\"a\" 1}", "expected ':'"},
        {"{\"a\": -1}", "non-negative"},
        {"{\"a\": 1.5}", "non-negative"},
        {"{\"a\": 99999999999}", "too large"},
        {"{\"a\": \"x\"}", "non-negative"},
        {"{\"a\\q\": 1}", "bad escape"},
        {"{\"\\ud800\": 1}", "lone high surrogate"},
        {"{\"\\udc00\": 1}", "lone low surrogate"},
        {"{\"\\ud800\\u0041\": 1}", "bad surrogate"},
        {"{\"\\u12G4\": 1}", "bad \\u"},
        {"{\"a\nb\": 1}", "control character"},
        {"{\"abc", "unterminated"},
        {"{\"a\": 1} x", "trailing data"},
        {"{}", "empty vocabulary"},
        {"{\"a\": 1}", "lacks the byte symbol"},
    };
    for (size_t i = 0; i < sizeof bad_json / sizeof bad_json[0]; i++) {
        write_str("vocab.json", bad_json[i].json);
        char what[64];
        snprintf(what, sizeof what, "vocab.json case %zu", i);
        expect_error(c, ap_tokenizer_load_dir(c, tmpdir, &t), AP_ERR_FORMAT, bad_json[i].needle, what);
        CHECK(t == NULL);
    }
    /* a vocabulary without <|endoftext|> */
    write_vocab_json(tmp_path("vocab.json"), 0, AP_TOK_EOT);
    expect_error(c, ap_tokenizer_load_dir(c, tmpdir, &t), AP_ERR_FORMAT, "<|endoftext|>", "no end token");

    /* tokenizing */
    int32_t seq[AP_TOK_CONTEXT];
    expect_error(c, ap_tokenize_seq(c, bundled, NULL, NULL, seq, NULL), AP_ERR_INVALID_ARG, "text", "NULL text");
    expect_error(c, ap_tokenize_seq(c, NULL, "a", NULL, seq, NULL), AP_ERR_INVALID_ARG, "tokenizer", "NULL tokenizer");
    ap_tok_opts o = {0u, 1, 0};
    expect_error(c, ap_tokenize_seq(c, bundled, "a", &o, seq, NULL), AP_ERR_INVALID_ARG, "context", "context 1");
    CHECK(ap_tokenize(c, bundled, "abc", 3, 0, NULL, 5) == -1);
    expect_error(c, ap_last_status(c), AP_ERR_INVALID_ARG, "ids", "NULL ids");
    /* sticky: with an error pending, nothing runs */
    ap_set_num_threads(c, 0); /* sets an error */
    CHECK(ap_tokenize(c, bundled, "a", 1, 0, seq, 8) == -1);
    CHECK(ap_tokenize_seq(c, bundled, "a", NULL, seq, NULL) == AP_ERR_INVALID_ARG);
    ap_clear_error(c);
    /* a NULL context is allowed */
    CHECK(ap_tokenize(NULL, bundled, "a cat", 5, 0, seq, 8) == 2);
    CHECK(ap_tokenize(NULL, bundled, "a cat", 5, 0, NULL, 8) == -1);
    /* decode of an unknown id */
    char out[16];
    CHECK(ap_tokenizer_decode(bundled, (const int32_t[]){49408}, 1, 0, out, sizeof out) == -1);
    ap_tokenizer_free(NULL);
}

/* ---------------------------------------------------------------- decoding */
static void test_decode(ap_ctx *c) {
    const char *texts[] = {"a photo of a cat", "caf\xc3\xa9 \xf0\x9f\x90\xb1 it's 42!", "\xe4\xb8\x80\xe5\x8f\xaa"};
    for (size_t i = 0; i < 3; i++) {
        int32_t ids[64];
        int64_t n = ap_tokenize(c, bundled, texts[i], strlen(texts[i]), 0, ids, 64);
        char out[256];
        int64_t len = ap_tokenizer_decode(bundled, ids, n, 0, out, sizeof out);
        /* words come back with a space after each (the </w> marks) */
        char want[256];
        snprintf(want, sizeof want, "%s ", texts[i]);
        if (i == 1) snprintf(want, sizeof want, "caf\xc3\xa9 \xf0\x9f\x90\xb1 it 's 4 2 ! ");
        CHECK_MSG(len == (int64_t)strlen(want) && !strcmp(out, want), "decode: \"%s\" want \"%s\"", out, want);
    }
    int32_t seq[AP_TOK_CONTEXT];
    ap_tokenize_seq(c, bundled, "a cat", NULL, seq, NULL);
    char out[2048];
    CHECK(ap_tokenizer_decode(bundled, seq, AP_TOK_CONTEXT, 1, out, sizeof out) == 6 && !strcmp(out, "a cat "));
    int64_t full = ap_tokenizer_decode(bundled, seq, 3, 0, out, sizeof out);
    CHECK(full == 21 && !strcmp(out, "<|startoftext|>a cat "));
    /* a short buffer gets a NUL-terminated prefix and the full length */
    char small[5];
    CHECK(ap_tokenizer_decode(bundled, seq, 3, 0, small, sizeof small) == 21 && !strcmp(small, "<|st"));
}

/* ---------------------------------------------------------------- random input */
static void test_random(ap_ctx *c) {
    test_rng r = {42};
    ap_tokenizer *fresh = NULL;
    CHECK(ap_tokenizer_load_bundled(c, &fresh) == AP_OK);
    static const char *pieces[] = {"&amp;", "&#", "&lt", "<|endoftext|>", "<|startoftext|>", "'s", "'ll", "\xc4\xb0",
                                   "\xce\xa3", "\xc5\xbf", "\xcd\x85", "\xf0\x9f\x90\xb1", " ", "\t", "\xe3\x80\x80"};
    int bad = 0;
    for (int it = 0; it < 3000; it++) {
        char text[257];
        int n = (int)(test_rng_next(&r) % 256);
        for (int i = 0; i < n; i++) {
            uint64_t v = test_rng_next(&r);
            if (v % 7 == 0) {
                const char *p = pieces[(v >> 8) % (sizeof pieces / sizeof pieces[0])];
                size_t l = strlen(p);
                if (i + (int)l <= n) {
                    memcpy(text + i, p, l);
                    i += (int)l - 1;
                    continue;
                }
            }
            text[i] = (char)(v % 3 == 0 ? 'a' + (v >> 8) % 26 : (v >> 16) & 0xff);
        }
        text[n] = 0;
        unsigned flags = (unsigned)it & 3u;
        int32_t ids[512], ids2[512];
        int64_t total = ap_tokenize(c, bundled, text, (size_t)n, flags, ids, 512);
        int64_t count = ap_tokenize(c, bundled, text, (size_t)n, flags, NULL, 0);
        int64_t again = ap_tokenize(c, fresh, text, (size_t)n, flags, ids2, 512);
        int ok = total >= 0 && total <= 12 * n && count == total && again == total && seq_equals(ids, ids2, (int)total);
        for (int64_t i = 0; ok && i < total; i++) ok = ids[i] >= 0 && ids[i] < 49408;
        /* the fixed-length sequence of the NUL-terminated prefix */
        ap_tok_opts o = {flags, AP_TOK_CONTEXT, it & 4 ? 0 : AP_TOK_EOT};
        int32_t seq[AP_TOK_CONTEXT];
        int64_t nt = -1;
        ok &= ap_tokenize_seq(c, bundled, text, &o, seq, &nt) == AP_OK;
        ok &= seq[0] == AP_TOK_SOT && nt >= 0;
        int64_t k = nt < 75 ? nt : 75;
        ok &= seq[k + 1] == AP_TOK_EOT;
        for (int64_t i = k + 2; i < AP_TOK_CONTEXT; i++) ok &= seq[i] == o.pad_id;
        if (!ok && bad++ < 5) fprintf(stderr, "random case %d failed (n %d, total %lld)\n", it, n, (long long)total);
    }
    CHECK_MSG(bad == 0, "%d random cases failed", bad);
    CHECK_OK(c);
    ap_tokenizer_free(fresh);
}

/* More distinct words than the cache holds: results must not change when it is
 * cleared, and a very long word is fast (the heap BPE). */
static void test_cache_and_long_words(ap_ctx *c) {
    ap_tokenizer *fresh = NULL;
    CHECK(ap_tokenizer_load_bundled(c, &fresh) == AP_OK);
    if (!fresh) return;
    char *text = malloc(6000 * 8);
    size_t n = 0;
    test_rng r = {7};
    for (int w = 0; w < 6000; w++) {
        int len = 2 + (int)(test_rng_next(&r) % 5);
        for (int i = 0; i < len; i++) text[n++] = (char)('a' + test_rng_next(&r) % 26);
        text[n++] = ' ';
    }
    int32_t *a = malloc(sizeof(int32_t) * 60000), *b = malloc(sizeof(int32_t) * 60000);
    int64_t na = ap_tokenize(c, bundled, text, n, 0, a, 60000);
    int64_t nb = ap_tokenize(c, fresh, text, n, 0, b, 60000);
    int64_t nc = ap_tokenize(c, fresh, text, n, 0, b, 60000);
    CHECK(na > 6000 && na == nb && nb == nc && seq_equals(a, b, (int)na));
    /* each word tokenized alone gives the same ids as in the text */
    int64_t pos = 0;
    int bad = 0;
    for (size_t i = 0, s = 0; i < n; i++)
        if (text[i] == ' ') {
            int32_t w[16];
            int64_t m = ap_tokenize(c, fresh, text + s, i - s, 0, w, 16);
            bad += !(m > 0 && pos + m <= na && seq_equals(w, a + pos, (int)m));
            pos += m;
            s = i + 1;
        }
    CHECK(bad == 0 && pos == na);
    free(a);
    free(b);
    free(text);

    size_t big = 1u << 20;
    char *word = malloc(big);
    for (size_t i = 0; i < big; i++) word[i] = (char)('a' + test_rng_next(&r) % 26);
    clock_t t0 = clock();
    int64_t m = ap_tokenize(c, fresh, word, big, 0, NULL, 0);
    double secs = (double)(clock() - t0) / CLOCKS_PER_SEC;
    CHECK(m > 1000 && m < (int64_t)big);
    printf("a 1 MiB word: %lld ids in %.3f s\n", (long long)m, secs);
    free(word);
    ap_tokenizer_free(fresh);
    CHECK_OK(c);
}

int main(void) {
    ap_ctx *c = test_ctx();
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ap_test_tokenizer_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 2;
    }
    clock_t t0 = clock();
    CHECK(ap_tokenizer_load_bundled(c, &bundled) == AP_OK);
    CHECK_OK(c);
    printf("bundled tokenizer loaded in %.1f ms\n", 1e3 * (double)(clock() - t0) / CLOCKS_PER_SEC);
    if (!bundled) return test_summary("test_tokenizer");
    fixture *fx = NULL;
    int nfx = read_fixtures(&fx);
    test_vocab();
    test_spec_vectors(c);
    test_truncation(c);
    test_fixtures(c, fx, nfx);
    test_load_files(c, fx, nfx);
    test_small_hf(c);
    test_errors(c);
    test_decode(c);
    test_random(c);
    test_cache_and_long_words(c);
    free_fixtures(fx, nfx);
    ap_tokenizer_free(bundled);
    ap_ctx_free(c);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return test_summary("test_tokenizer");
}
