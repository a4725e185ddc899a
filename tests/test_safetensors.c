/* safetensors reader and writer: round trips of every dtype, byte-exact layout
 * against files assembled here, every malformation, conversions against a
 * long-double reference, atomic saves, and a deterministic fuzz smoke test.
 * Also the JSON helpers of io/json.h that the reader is built on. */
#include "core/internal.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "test.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[256];

static const char *tmp_path(const char *name) {
    static char buf[4][512];
    static int k;
    k = (k + 1) & 3;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

static void put_file(const char *path, const void *bytes, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f || (len && fwrite(bytes, 1, len, f) != len)) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(2);
    }
    fclose(f);
}

static unsigned char *get_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)n + 1);
    if (fread(b, 1, (size_t)n, f) != (size_t)n) n = -1;
    fclose(f);
    if (n < 0) {
        free(b);
        return NULL;
    }
    *len = (size_t)n;
    return b;
}

/* Number of entries in tmpdir (to see that no temporary file is left). */
static int dir_entries(void) {
    DIR *d = opendir(tmpdir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));) n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    if (d) closedir(d);
    return n;
}

static void rm_tmpdir(void) {
    DIR *d = opendir(tmpdir);
    for (struct dirent *e; d && (e = readdir(d));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        const char *p = tmp_path(e->d_name);
        if (unlink(p) != 0) rmdir(p);
    }
    if (d) closedir(d);
    rmdir(tmpdir);
}

/* ------------------------------------------------------------ assembling files by hand */
typedef struct {
    const char *name, *dtype;
    int ndim;
    int64_t shape[8];
    const void *data;
    size_t nbytes;
} ent;

/* A file holding e[0..n) in that order with tiling offsets, an optional raw
 * metadata object, the header padded with spaces to a multiple of pad. */
static unsigned char *assemble(const char *meta, const ent *e, int n, int pad, size_t *len) {
    static char h[1 << 16];
    size_t o = (size_t)snprintf(h, sizeof h, "{");
    if (meta) o += (size_t)snprintf(h + o, sizeof h - o, "\"__metadata__\":%s", meta);
    size_t off = 0, data_len = 0;
    for (int i = 0; i < n; i++) data_len += e[i].nbytes;
    for (int i = 0; i < n; i++) {
        o += (size_t)snprintf(h + o, sizeof h - o, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[",
                              (meta || i) ? "," : "", e[i].name, e[i].dtype);
        for (int d = 0; d < e[i].ndim; d++)
            o += (size_t)snprintf(h + o, sizeof h - o, d ? ",%lld" : "%lld", (long long)e[i].shape[d]);
        o += (size_t)snprintf(h + o, sizeof h - o, "],\"data_offsets\":[%zu,%zu]}", off, off + e[i].nbytes);
        off += e[i].nbytes;
    }
    o += (size_t)snprintf(h + o, sizeof h - o, "}");
    while (o % (size_t)pad) h[o++] = ' ';
    unsigned char *b = malloc(8 + o + data_len + 1);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)o >> (8 * i));
    memcpy(b + 8, h, o);
    size_t p = 8 + o;
    for (int i = 0; i < n; i++) {
        if (e[i].nbytes) memcpy(b + p, e[i].data, e[i].nbytes);
        p += e[i].nbytes;
    }
    *len = p;
    return b;
}

/* A file with header text hdr (its length as N) followed by dlen data bytes. */
static unsigned char *raw_file(const char *hdr, const void *data, size_t dlen, size_t *len) {
    size_t n = strlen(hdr);
    unsigned char *b = malloc(8 + n + dlen + 1);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)n >> (8 * i));
    memcpy(b + 8, hdr, n);
    if (dlen) memcpy(b + 8 + n, data, dlen);
    *len = 8 + n + dlen;
    return b;
}

/* Opens bytes saved as tmpdir/fname and checks the failure: status, no
 * handle, and a message naming the file, the tensor and what (when given). */
static void expect_fail(ap_ctx *c, const char *fname, const unsigned char *bytes, size_t len, ap_status want,
                        const char *tensor, const char *what) {
    const char *path = tmp_path(fname);
    put_file(path, bytes, len);
    ap_safetensors *st = (ap_safetensors *)1;
    ap_status s = ap_st_open(c, path, &st);
    const char *m = ap_last_error(c);
    char tq[256] = "";
    if (tensor) snprintf(tq, sizeof tq, "'%s'", tensor);
    CHECK_MSG(s == want && ap_last_status(c) == want && st == NULL, "%s: status %d (%s), want %d", fname,
              (int)s, m, (int)want);
    CHECK_MSG(strstr(m, fname) != NULL, "%s: message does not name the file: %s", fname, m);
    CHECK_MSG(!tensor || strstr(m, tq), "%s: message does not name tensor %s: %s", fname, tq, m);
    CHECK_MSG(!what || strstr(m, what), "%s: message lacks \"%s\": %s", fname, what, m);
    ap_clear_error(c);
    ap_st_close(st == (ap_safetensors *)1 ? NULL : st);
    unlink(path);
}

static void expect_raw_fail(ap_ctx *c, const char *fname, const char *hdr, size_t dlen, const char *tensor,
                            const char *what) {
    static const unsigned char zeros[256];
    size_t len;
    unsigned char *b = raw_file(hdr, zeros, dlen, &len);
    expect_fail(c, fname, b, len, AP_ERR_FORMAT, tensor, what);
    free(b);
}

/* ------------------------------------------------------------ a reference for rounding */
/* The value of bits in a binary format with ebits/mbits, exactly (long double). */
static long double decode(uint32_t bits, int ebits, int mbits) {
    int emax = (1 << (ebits - 1)) - 1;
    uint32_t ex = (bits >> mbits) & ((1u << ebits) - 1), man = bits & ((1u << mbits) - 1);
    long double v;
    if (ex == (1u << ebits) - 1)
        v = man ? NAN : INFINITY;
    else if (ex == 0)
        v = ldexpl((long double)man, 1 - emax - mbits);
    else
        v = ldexpl((long double)(man + (1u << mbits)), (int)ex - emax - mbits);
    return (bits >> (ebits + mbits)) & 1 ? -v : v;
}

/* x rounded to nearest-even in that format, computed in x87 long double (which
 * the FTZ/DAZ bits of SSE do not touch): scale to an integer count of the
 * format's quantum at x's binade, nearbyintl, scale back. */
static long double ref_round(long double x, int ebits, int mbits) {
    if (isnan(x) || isinf(x) || x == 0) return x;
    int emax = (1 << (ebits - 1)) - 1, emin = 1 - emax, e;
    frexpl(fabsl(x), &e);
    int E = e - 1 < emin ? emin : e - 1;
    long double v = ldexpl(nearbyintl(ldexpl(fabsl(x), mbits - E)), E - mbits);
    if (v > ldexpl(2.0L - ldexpl(1.0L, -mbits), emax)) v = INFINITY;
    return x < 0 ? -v : v;
}

static int fmt_ebits(ap_dtype dt) { return dt == AP_F16 ? 5 : 8; }
static int fmt_mbits(ap_dtype dt) { return dt == AP_F32 ? 23 : dt == AP_BF16 ? 7 : 10; }
static uint32_t elem_bits(const ap_tensor *t, int64_t i) {
    if (ap_tensor_dtype(t) == AP_F32) {
        uint32_t u;
        memcpy(&u, (const char *)ap_tensor_cdata(t) + 4 * i, 4);
        return u;
    }
    return ((const uint16_t *)ap_tensor_cdata(t))[i];
}

/* Counts elements of t (a float dtype) that differ from ref_round(want[i]);
 * NaN must stay NaN. Prints the first few. */
static int count_misrounded(const char *label, const ap_tensor *t, const long double *want, int64_t n) {
    ap_dtype dt = ap_tensor_dtype(t);
    int eb = fmt_ebits(dt), mb = fmt_mbits(dt), bad = 0;
    for (int64_t i = 0; i < n; i++) {
        long double got = decode(elem_bits(t, i), eb, mb), ref = ref_round(want[i], eb, mb);
        bool ok = isnan(ref) ? isnan(got) : (got == ref && signbit(got) == signbit(ref));
        if (!ok && bad++ < 4)
            fprintf(stderr, "%s: [%lld] of %.21Lg: got %.21Lg want %.21Lg\n", label, (long long)i, want[i],
                    got, ref);
    }
    return bad;
}

/* ------------------------------------------------------------ JSON helpers */
static void test_json(void) {
    char err[128];
    const char *doc = " {\"a\": [1, 2.5, -3], \"s\": \"h\\u00e9\\n\", \"b\": true, \"n\": null, \"a\": 7}\n ";
    ap_json *j = ap_json_parse(doc, strlen(doc), err, sizeof err);
    CHECK_MSG(j != NULL, "%s", err);
    CHECK(ap_json_kind_of(j) == AP_JSON_OBJECT && ap_json_size(j) == 5);
    ap_json *a = ap_json_get(j, "a");
    int64_t v;
    double d;
    bool bv;
    CHECK(ap_json_kind_of(a) == AP_JSON_ARRAY && ap_json_size(a) == 3);
    CHECK(ap_json_int(ap_json_first(a), 0, 10, &v) && v == 1);
    CHECK(!ap_json_int(ap_json_next(ap_json_first(a)), -100, 100, &v)); /* 2.5 */
    CHECK(ap_json_num(ap_json_next(ap_json_first(a)), &d) && d == 2.5);
    CHECK(!ap_json_int(ap_json_next(ap_json_next(ap_json_first(a))), 0, 10, &v)); /* -3 below lo */
    CHECK(ap_json_str(ap_json_get(j, "s")) && !strcmp(ap_json_str(ap_json_get(j, "s")), "h\xc3\xa9\n"));
    CHECK(ap_json_bool(ap_json_get(j, "b"), &bv) && bv);
    CHECK(ap_json_kind_of(ap_json_get(j, "n")) == AP_JSON_NULL && !ap_json_str(ap_json_get(j, "n")));
    /* duplicate keys are kept in order; get returns the first */
    int dup = 0;
    for (ap_json *m = ap_json_first(j); m; m = ap_json_next(m)) dup += !strcmp(ap_json_key(m), "a");
    CHECK(dup == 2);
    ap_json_free(j);

    /* not JSON, with the place of the error */
    static const struct {
        const char *text, *where;
    } bad[] = {
        {"{\"a\":1,}", "line 1, column 8"},
        {"{\"a\":1} x", "column 9"},
        {"{\"a\":\n  tru}", "line 2"},
        {"{\"a\":\"\x01\"}", "control character"},
        {"{\"a\":\"\xc3\x28\"}", "UTF-8"},
        {"\"\xed\xa0\x80\"", "UTF-8"},
        {"", "end of input"},
        {"[1,2", "end of input"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        j = ap_json_parse(bad[i].text, strlen(bad[i].text), err, sizeof err);
        CHECK_MSG(j == NULL && strstr(err, bad[i].where), "'%s': got '%s', want '%s'", bad[i].text, err,
                  bad[i].where);
        ap_json_free(j);
    }
    /* a length, not a terminator, bounds the text */
    j = ap_json_parse("[1]xyz", 3, err, sizeof err);
    CHECK(j && ap_json_size(j) == 1);
    ap_json_free(j);

    /* building and printing: compact, exact integers, escapes */
    ap_json *o = ap_json_new_object(), *arr = ap_json_new_array();
    bool ok = ap_json_add_str(o, "k", "q\"\\\n\xc3\xa9") && ap_json_add(o, "arr", arr) &&
              ap_json_add(arr, NULL, ap_json_new_int(INT64_C(9007199254740993))) &&
              ap_json_add(arr, NULL, ap_json_new_int(1000000000000000)) &&
              ap_json_add(arr, NULL, ap_json_new_int(-5)) && ap_json_add_num(o, "x", 0.5) &&
              ap_json_add_bool(o, "t", false);
    CHECK(ok);
    CHECK(!ap_json_add(arr, "key-in-array", ap_json_new_int(1))); /* freed, not added */
    char *s = ap_json_print(o, false);
    CHECK_MSG(s &&
                  !strcmp(s, "{\"k\":\"q\\\"\\\\\\n\xc3\xa9\",\"arr\":[9007199254740993,1000000000000000,-5],"
                             "\"x\":0.5,\"t\":false}"),
              "%s", s ? s : "(null)");
    /* what it prints parses back to the same values */
    j = s ? ap_json_parse(s, strlen(s), err, sizeof err) : NULL;
    CHECK(j && ap_json_int(ap_json_next(ap_json_first(ap_json_get(j, "arr"))), 0, INT64_MAX, &v) &&
          v == 1000000000000000);
    CHECK(ap_json_int(ap_json_first(ap_json_get(o, "arr")), 0, INT64_MAX, &v) &&
          v == INT64_C(9007199254740993));
    ap_json_free(j);
    ap_json_free_str(s);
    ap_json_free(o);
}

/* ------------------------------------------------------------ round trip */
static ap_tensor *rand_bits(ap_ctx *c, test_rng *r, ap_dtype dt, int ndim, const int64_t *shape) {
    ap_tensor *t = ap_tensor_new(c, dt, ndim, shape);
    unsigned char *p = ap_tensor_data(t);
    for (size_t i = 0; i < ap_tensor_nbytes(t); i++) p[i] = (unsigned char)test_rng_next(r);
    return t;
}

static void test_roundtrip(ap_ctx *c) {
    test_rng r = {11};
    struct {
        const char *name;
        ap_dtype dt;
        int ndim;
        int64_t shape[4];
    } spec[] = {
        {"unet.conv_in.weight", AP_F32, 3, {2, 3, 5}},
        {"te.emb", AP_BF16, 1, {7}},
        {"half.w", AP_F16, 3, {3, 1, 4}},
        {"ids32", AP_I32, 1, {5}},
        {"ids64", AP_I64, 2, {2, 3}},
        {"lora.alpha", AP_F32, 0, {0}},      /* 0-dim scalar */
        {"empty.f16", AP_F16, 3, {3, 0, 2}}, /* no bytes */
        {"empty.i64", AP_I64, 1, {0}},
        {"\xc3\xa9t\xc3\xa9 \"quoted\"\\", AP_BF16, 2, {1, 3}}, /* a name that needs escaping */
    };
    enum { N = sizeof spec / sizeof spec[0] };
    ap_tensor *ts[N];
    const char *names[N];
    for (int i = 0; i < N; i++) {
        ts[i] = rand_bits(c, &r, spec[i].dt, spec[i].ndim, spec[i].shape);
        names[i] = spec[i].name;
    }
    const char *mk[] = {"format", "notes"}, *mv[] = {"pt", "line 1\nline \"2\" \xe2\x9c\x93"};
    char path[512];
    snprintf(path, sizeof path, "%s", tmp_path("roundtrip.safetensors"));
    CHECK(ap_st_save(c, path, N, names, ts, 2, mk, mv) == AP_OK);
    CHECK_OK(c);
    CHECK(dir_entries() == 1);

    size_t flen;
    unsigned char *fb = get_file(path, &flen);
    uint64_t hn = 0;
    for (int i = 0; i < 8; i++) hn |= (uint64_t)fb[i] << (8 * i);
    CHECK_MSG(hn % 8 == 0, "header length %llu is a multiple of 8", (unsigned long long)hn);
    CHECK(!memcmp(fb + 8, "{\"__metadata__\":{", 17)); /* metadata first */
    free(fb);

    ap_safetensors *st = NULL;
    CHECK(ap_st_open(c, path, &st) == AP_OK && st);
    CHECK_OK(c);
    CHECK(ap_st_count(st) == N);
    CHECK(ap_st_metadata_count(st) == 2 && !strcmp(ap_st_metadata_key(st, 0), "format") &&
          !strcmp(ap_st_metadata_key(st, 1), "notes"));
    CHECK(ap_st_metadata(st, "format") && !strcmp(ap_st_metadata(st, "format"), "pt"));
    CHECK(ap_st_metadata(st, "notes") && !strcmp(ap_st_metadata(st, "notes"), mv[1]));
    CHECK(ap_st_metadata(st, "missing") == NULL && ap_st_metadata_key(st, 2) == NULL);
    CHECK(ap_st_find(st, "nope") == -1 && ap_st_name(st, N) == NULL && ap_st_dtype(st, -1) == NULL);

    /* Index order is data order: the writer's order, by dtype rank (I64, F32,
     * I32, BF16, F16) then name. */
    static const char *const order[N] = {"empty.i64",
                                         "ids64",
                                         "lora.alpha",
                                         "unet.conv_in.weight",
                                         "ids32",
                                         "te.emb",
                                         "\xc3\xa9t\xc3\xa9 \"quoted\"\\",
                                         "empty.f16",
                                         "half.w"};
    for (int k = 0; k < N; k++)
        CHECK_MSG(!strcmp(ap_st_name(st, k), order[k]), "position %d: %s", k, ap_st_name(st, k));

    static const char *const stname[] = {
        [AP_F32] = "F32", [AP_BF16] = "BF16", [AP_F16] = "F16", [AP_I32] = "I32", [AP_I64] = "I64"};
    for (int i = 0; i < N; i++) {
        int k = ap_st_find(st, names[i]);
        CHECK_MSG(k >= 0 && !strcmp(ap_st_name(st, k), names[i]), "find %s", names[i]);
        if (k < 0) continue;
        CHECK(!strcmp(ap_st_dtype(st, k), stname[spec[i].dt]));
        int64_t shape[AP_MAX_DIMS];
        CHECK(ap_st_shape(st, k, shape) == spec[i].ndim);
        for (int d = 0; d < spec[i].ndim; d++) CHECK(shape[d] == spec[i].shape[d]);
        size_t nb;
        const void *raw = ap_st_raw(st, k, &nb);
        CHECK(nb == ap_tensor_nbytes(ts[i]) && (nb == 0 || !memcmp(raw, ap_tensor_cdata(ts[i]), nb)));
        CHECK_MSG((uintptr_t)raw % ap_dtype_size(spec[i].dt) == 0, "%s: data aligned to its element",
                  names[i]);
        ap_tensor *t = NULL;
        CHECK(ap_st_load(c, st, names[i], spec[i].dt, &t) == AP_OK && t);
        CHECK_OK(c);
        if (!t) continue;
        CHECK(ap_tensor_dtype(t) == spec[i].dt && ap_tensor_ndim(t) == spec[i].ndim);
        CHECK(ap_tensor_numel(t) == ap_tensor_numel(ts[i]));
        CHECK(!strcmp(ap_tensor_name(t), names[i]));
        CHECK(ap_tensor_nbytes(t) == 0 ||
              !memcmp(ap_tensor_cdata(t), ap_tensor_cdata(ts[i]), ap_tensor_nbytes(t)));
        ap_tensor_release(t);
    }
    ap_st_close(st);

    /* saving over an existing file replaces it; no metadata, no tensors */
    CHECK(ap_st_save(c, path, 0, NULL, NULL, 0, NULL, NULL) == AP_OK);
    fb = get_file(path, &flen);
    CHECK(fb && flen == 16 && !memcmp(fb, "\x08\0\0\0\0\0\0\0{}      ", 16));
    free(fb);
    CHECK(dir_entries() == 1);
    for (int i = 0; i < N; i++) ap_tensor_release(ts[i]);
    unlink(path);
}

/* ------------------------------------------------------------ exact layout */
static void test_layout(ap_ctx *c) {
    /* Writer: bytes compared with a file assembled here by hand. */
    float v6[6] = {0, 1, 2, 3, 4, 5};
    ap_tensor *t = ap_tensor_from_data(c, AP_F32, 3, (int64_t[]){1, 2, 3}, v6);
    const char *mk = "framework", *mv = "pt", *nm = "attn.0";
    const char *path = tmp_path("layout.safetensors");
    CHECK(ap_st_save(c, path, 1, &nm, &t, 1, &mk, &mv) == AP_OK);
    const char *hdr =
        "{\"__metadata__\":{\"framework\":\"pt\"},\"attn.0\":{\"dtype\":\"F32\",\"shape\":[1,2,3],"
        "\"data_offsets\":[0,24]}}";
    size_t hl = strlen(hdr), padded = (hl + 7) / 8 * 8, want_len = 8 + padded + 24;
    unsigned char want[512];
    for (int i = 0; i < 8; i++) want[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    memcpy(want + 8, hdr, hl);
    memset(want + 8 + hl, ' ', padded - hl);
    for (int i = 0; i < 6; i++) { /* little-endian f32, written out byte by byte */
        uint32_t u;
        memcpy(&u, &v6[i], 4);
        for (int b = 0; b < 4; b++) want[8 + padded + 4 * i + b] = (unsigned char)(u >> (8 * b));
    }
    size_t got_len;
    unsigned char *got = get_file(path, &got_len);
    CHECK_MSG(got && got_len == want_len && !memcmp(got, want, want_len), "writer layout (%zu vs %zu bytes)",
              got_len, want_len);
    free(got);
    ap_tensor_release(t);

    /* Order across dtypes: I64 before F32 before F16, whatever the names. */
    int64_t i1 = -2;
    uint16_t h2[2] = {0x3c00, 0xc000};
    float s1 = 0.25f;
    ap_tensor *ts[3] = {ap_tensor_from_data(c, AP_F16, 1, (int64_t[]){2}, h2),
                        ap_tensor_from_data(c, AP_I64, 1, (int64_t[]){1}, &i1),
                        ap_tensor_from_data(c, AP_F32, 0, NULL, &s1)};
    const char *names[3] = {"a", "b", "c"};
    CHECK(ap_st_save(c, path, 3, names, ts, 0, NULL, NULL) == AP_OK);
    hdr = "{\"b\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]},"
          "\"c\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[8,12]},"
          "\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[12,16]}}";
    hl = strlen(hdr);
    padded = (hl + 7) / 8 * 8;
    want_len = 8 + padded + 16;
    for (int i = 0; i < 8; i++) want[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    memcpy(want + 8, hdr, hl);
    memset(want + 8 + hl, ' ', padded - hl);
    unsigned char *d = want + 8 + padded;
    memcpy(d,
           "\xfe\xff\xff\xff\xff\xff\xff\xff"
           "\x00\x00\x80\x3e"
           "\x00\x3c\x00\xc0",
           16);
    got = get_file(path, &got_len);
    CHECK_MSG(got && got_len == want_len && !memcmp(got, want, want_len), "writer order (%zu vs %zu bytes)",
              got_len, want_len);
    free(got);
    for (int i = 0; i < 3; i++) ap_tensor_release(ts[i]);

    /* Reader: a hand-written file as other writers make them: no padding (so
     * the data is misaligned), whitespace around the object, members in any
     * order, an extra member, JSON order unlike data order. */
    const char *h = " \n{\"w\":{\"shape\":[3],\"data_offsets\":[8,14],\"dtype\":\"BF16\",\"extra\":[1]},"
                    "\"v\":{\"dtype\":\"F32\",\"data_offsets\":[0,8],\"shape\":[2]}} \t\r\n";
    unsigned char data[14];
    float fv[2] = {1.5f, -0.125f};
    uint16_t bv[3] = {0x3f80, 0xc040, 0x0001}; /* 1, -3, a subnormal */
    memcpy(data, fv, 8);
    memcpy(data + 8, bv, 6);
    size_t len;
    unsigned char *b = raw_file(h, data, 14, &len);
    CHECK(strlen(h) % 2 == 1); /* odd header: every tensor is misaligned */
    path = tmp_path("handmade.safetensors");
    put_file(path, b, len);
    free(b);
    ap_safetensors *st = NULL;
    CHECK(ap_st_open(c, path, &st) == AP_OK);
    CHECK_OK(c);
    if (st) {
        CHECK(ap_st_count(st) == 2 && !strcmp(ap_st_name(st, 0), "v") && !strcmp(ap_st_name(st, 1), "w"));
        CHECK(ap_st_metadata_count(st) == 0 && ap_st_metadata(st, "x") == NULL);
        ap_tensor *tv = NULL, *tw = NULL, *tw16 = NULL;
        CHECK(ap_st_load(c, st, "v", AP_F32, &tv) == AP_OK && ap_st_load(c, st, "w", AP_F32, &tw) == AP_OK &&
              ap_st_load(c, st, "w", AP_BF16, &tw16) == AP_OK);
        CHECK_OK(c);
        if (tv && tw && tw16) {
            const float *pv = ap_tensor_cdata(tv);
            CHECK(pv[0] == 1.5f && pv[1] == -0.125f);
            CHECK(elem_bits(tw, 0) == 0x3f800000u && elem_bits(tw, 1) == 0xc0400000u &&
                  elem_bits(tw, 2) == 0x00010000u);
            CHECK(!memcmp(ap_tensor_cdata(tw16), bv, 6));
        }
        ap_tensor_release(tv);
        ap_tensor_release(tw);
        ap_tensor_release(tw16);
        ap_st_close(st);
    }
    unlink(path);
}

/* ------------------------------------------------------------ malformed files */
static void test_malformed(ap_ctx *c) {
    size_t len;
    unsigned char *b;
    /* too short, empty, header length beyond the file or the limit */
    expect_fail(c, "short.safetensors", (const unsigned char *)"\x02\0\0\0\0", 5, AP_ERR_FORMAT, NULL,
                "too short");
    expect_fail(c, "empty.safetensors", (const unsigned char *)"", 0, AP_ERR_FORMAT, NULL, "too short");
    expect_fail(c, "hlen.safetensors", (const unsigned char *)"\xe8\x03\0\0\0\0\0\0{}", 10, AP_ERR_FORMAT,
                NULL, "past the end of the file");
    expect_fail(c, "hbig.safetensors", (const unsigned char *)"\x00\xc2\xeb\x0b\0\0\0\0{}", 10, AP_ERR_FORMAT,
                NULL, "limit");
    expect_fail(c, "hhuge.safetensors", (const unsigned char *)"\xff\xff\xff\xff\xff\xff\xff\xff{}", 10,
                AP_ERR_FORMAT, NULL, "limit");

    /* truncated: a valid file cut in the data, and cut in the header */
    float f6[6] = {1, 2, 3, 4, 5, 6};
    ent e1[] = {{"a.weight", "F32", 2, {2, 3}, f6, 24}};
    b = assemble(NULL, e1, 1, 8, &len);
    expect_fail(c, "trunc_data.safetensors", b, len - 3, AP_ERR_FORMAT, "a.weight", "truncated");
    expect_fail(c, "trunc_hdr.safetensors", b, 20, AP_ERR_FORMAT, NULL, "truncated");
    /* and a byte too many */
    b = realloc(b, len + 1);
    b[len] = 0;
    expect_fail(c, "extra_byte.safetensors", b, len + 1, AP_ERR_FORMAT, NULL, "unused bytes at the end");
    free(b);

    /* not JSON, not UTF-8, not an object */
    expect_raw_fail(c, "badjson.safetensors", "{\"a\":{\"dtype\":\"F32\",}", 0, NULL, "not valid JSON");
    expect_raw_fail(c, "badjson2.safetensors", "{\"a\":{}} {}", 0, NULL, "not valid JSON");
    expect_raw_fail(c, "utf8.safetensors",
                    "{\"a\xff\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}", 4, NULL, "UTF-8");
    expect_raw_fail(c, "nul.safetensors",
                    "{\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}\x01", 4, NULL,
                    "control character");
    expect_raw_fail(c, "array.safetensors", "[{\"dtype\":\"F32\"}]", 0, NULL, "not a JSON object");
    expect_raw_fail(c, "string.safetensors", "\"abc\"", 0, NULL, "not a JSON object");
    expect_raw_fail(c, "blank.safetensors", "        ", 0, NULL, "empty");
    b = raw_file("\xef\xbb\xbf{}", NULL, 0, &len); /* a byte-order mark is not JSON */
    expect_fail(c, "bom.safetensors", b, len, AP_ERR_FORMAT, NULL, "not a JSON object");
    free(b);

    /* entries */
    static const struct {
        const char *file, *hdr;
        size_t dlen;
        const char *tensor, *what;
    } cases[] = {
        {"entry_num.safetensors", "{\"t1\":5}", 0, "t1", "expected an object"},
        {"no_dtype.safetensors", "{\"t1\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "t1", "missing dtype"},
        {"dtype_num.safetensors", "{\"t1\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "t1",
         "dtype is a number"},
        {"dtype_bad.safetensors", "{\"t1\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
         "t1", "unknown dtype 'F33'"},
        {"dtype_lower.safetensors", "{\"t1\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
         "t1", "unknown dtype"},
        {"dtype_twice.safetensors",
         "{\"t1\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "t1",
         "twice"},
        {"no_shape.safetensors", "{\"t1\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "t1",
         "missing shape"},
        {"shape_obj.safetensors", "{\"t1\":{\"dtype\":\"F32\",\"shape\":{},\"data_offsets\":[0,4]}}", 4, "t1",
         "shape is an object"},
        {"shape_neg.safetensors", "{\"t1\":{\"dtype\":\"F32\",\"shape\":[2,-2],\"data_offsets\":[0,16]}}", 16,
         "t1", "shape[1] is -2"},
        {"shape_frac.safetensors", "{\"t1\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,10]}}", 10,
         "t1", "shape[0] is 2.5"},
        {"shape_str.safetensors", "{\"t1\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", 8,
         "t1", "shape[0] is a string"},
        {"shape_negzero.safetensors", "{\"t1\":{\"dtype\":\"F32\",\"shape\":[-0],\"data_offsets\":[0,0]}}", 0,
         "t1", "non-negative integer"},
        {"shape_huge.safetensors", "{\"t1\":{\"dtype\":\"F32\",\"shape\":[1e300],\"data_offsets\":[0,0]}}", 0,
         "t1", "non-negative integer"},
        {"shape_overflow.safetensors",
         "{\"t1\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,0]}}", 0, "t1",
         "too large"},
        {"shape_overflow2.safetensors",
         "{\"t1\":{\"dtype\":\"F64\",\"shape\":[1152921504606846976,8],\"data_offsets\":[0,0]}}", 0, "t1",
         "non-negative integer"},
        {"shape_overflow3.safetensors",
         "{\"t1\":{\"dtype\":\"F64\",\"shape\":[4503599627370496,4096],\"data_offsets\":[0,0]}}", 0, "t1",
         "too large"},
        {"no_offs.safetensors", "{\"t1\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "t1",
         "missing data_offsets"},
        {"offs_one.safetensors", "{\"t1\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4]}}", 4, "t1",
         "expected [begin, end]"},
        {"offs_str.safetensors", "{\"t1\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":\"0,4\"}}", 4,
         "t1", "expected [begin, end]"},
        {"offs_neg.safetensors", "{\"t1\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4,
         "t1", "data_offsets[0] is -4"},
        {"offs_rev.safetensors", "{\"t1\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4, "t1",
         "end before they begin"},
        {"offs_out.safetensors", "{\"t1\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[100,104]}}", 4,
         "t1", "past the end of the 4-byte data buffer"},
        {"offs_far.safetensors",
         "{\"t1\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[18446744073709551612,"
         "18446744073709551616]}}",
         4, "t1", "non-negative integer"},
        {"size.safetensors", "{\"a.weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,12]}}", 12,
         "a.weight", "data_offsets [0, 12] hold 12 bytes but shape [2,3] of F32 needs 24"},
        {"overlap.safetensors",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
         12, "b", "overlap tensor 'a'"},
        {"overlap_empty.safetensors",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}",
         8, "e", "overlap"},
        {"same_span.safetensors",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
         8, "b", "overlap tensor 'a'"},
        {"gap.safetensors",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}",
         20, "b", "4 unused bytes after tensor 'a'"},
        {"gap_start.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12,
         "a", "start of the data buffer"},
        {"dup.safetensors",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
         16, "a", "twice"},
        {"meta_num.safetensors", "{\"__metadata__\":5}", 0, NULL, "__metadata__ is a number"},
        {"meta_val.safetensors", "{\"__metadata__\":{\"k\":\"v\",\"epoch\":3}}", 0, NULL, "value of 'epoch'"},
        {"meta_nested.safetensors", "{\"__metadata__\":{\"k\":{\"x\":\"y\"}}}", 0, NULL, "is an object"},
        {"meta_dupkey.safetensors", "{\"__metadata__\":{\"k\":\"v\",\"k\":\"w\"}}", 0, NULL, "key 'k'"},
        {"meta_twice.safetensors", "{\"__metadata__\":{},\"__metadata__\":{}}", 0, NULL, "twice"},
        {"meta_after.safetensors",
         "{\"t1\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"__metadata__\":[\"x\"]}", 4,
         NULL, "__metadata__ is an array"},
        {"f4_odd.safetensors", "{\"t1\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,1]}}", 1, "t1",
         "whole number of bytes"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_raw_fail(c, cases[i].file, cases[i].hdr, cases[i].dlen, cases[i].tensor, cases[i].what);

    /* a control character inside a name is shown escaped */
    expect_raw_fail(c, "ctrl_name.safetensors",
                    "{\"x\\u0007y\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8, "x\\x07y",
                    "hold 8 bytes");

    /* not a file, no file */
    ap_safetensors *st = (ap_safetensors *)1;
    CHECK(ap_st_open(c, tmp_path("missing.safetensors"), &st) == AP_ERR_NOT_FOUND && st == NULL);
    CHECK(strstr(ap_last_error(c), "missing.safetensors"));
    ap_clear_error(c);
    CHECK(ap_st_open(c, tmpdir, &st) == AP_ERR_IO && st == NULL);
    CHECK(strstr(ap_last_error(c), "not a regular file"));
    ap_clear_error(c);
    CHECK(ap_st_open(c, NULL, &st) == AP_ERR_INVALID_ARG);
    ap_clear_error(c);
    CHECK(ap_st_open(c, tmp_path("x"), NULL) == AP_ERR_INVALID_ARG);
    ap_clear_error(c);
    /* in memory: the same checks, the name standing for the file */
    CHECK(ap_st_open_memory(c, "mem.safetensors", NULL, 16, &st) == AP_ERR_INVALID_ARG && st == NULL);
    ap_clear_error(c);
    CHECK(ap_st_open_memory(c, "mem.safetensors", "\x02\0\0\0", 4, &st) == AP_ERR_FORMAT &&
          strstr(ap_last_error(c), "mem.safetensors: file is 4 bytes"));
    ap_clear_error(c);
    b = raw_file("{\"t\":{\"dtype\":\"I32\",\"shape\":[],\"data_offsets\":[0,4]}}", "\x07\0\0\0", 4, &len);
    CHECK(ap_st_open_memory(c, "mem.safetensors", b, len, &st) == AP_OK && st && ap_st_count(st) == 1);
    ap_tensor *t = NULL;
    CHECK(ap_st_load(c, st, "t", AP_I64, &t) == AP_OK && t && *(const int64_t *)ap_tensor_cdata(t) == 7);
    ap_tensor_release(t);
    ap_st_close(st);
    CHECK(ap_st_open_memory(c, "mem.safetensors", b, len - 1, &st) == AP_ERR_FORMAT &&
          strstr(ap_last_error(c), "mem.safetensors: tensor 't'"));
    ap_clear_error(c);
    free(b);
    /* sticky errors: an earlier failure stops open before it starts */
    ap_seterr(c, AP_ERR_SHAPE, "earlier failure");
    b = assemble(NULL, e1, 1, 8, &len);
    put_file(tmp_path("good.safetensors"), b, len);
    free(b);
    st = (ap_safetensors *)1;
    CHECK(ap_st_open(c, tmp_path("good.safetensors"), &st) == AP_ERR_SHAPE && st == NULL);
    CHECK(!strcmp(ap_last_error(c), "earlier failure"));
    ap_clear_error(c);
    unlink(tmp_path("good.safetensors"));
}

/* ------------------------------------------------------------ dtypes the file has, we do not */
static void test_unsupported(ap_ctx *c) {
    unsigned char fp8[4] = {0x38, 0x40, 0xb8, 0x00};
    float one = 1.0f;
    uint16_t seven[1] = {0x3c00};
    ent e[] = {{"scale", "F32", 0, {0}, &one, 4},
               {"w8", "F8_E4M3", 2, {2, 2}, fp8, 4},
               {"deep", "F16", 7, {1, 1, 1, 1, 1, 1, 1}, seven, 2},
               {"c", "C64", 1, {1}, "\0\0\x80\x3f\0\0\0\0", 8}};
    size_t len;
    unsigned char *b = assemble("{\"note\":\"fp8\"}", e, 4, 8, &len);
    const char *path = tmp_path("fp8.safetensors");
    put_file(path, b, len);
    free(b);
    ap_safetensors *st = NULL;
    CHECK(ap_st_open(c, path, &st) == AP_OK);
    CHECK_OK(c);
    if (!st) return;
    int k = ap_st_find(st, "w8");
    size_t nb;
    CHECK(k >= 0 && !strcmp(ap_st_dtype(st, k), "F8_E4M3") && !memcmp(ap_st_raw(st, k, &nb), fp8, 4) &&
          nb == 4);
    ap_tensor *t = (ap_tensor *)1;
    CHECK(ap_st_load(c, st, "w8", AP_F32, &t) == AP_ERR_DTYPE && t == NULL);
    CHECK_MSG(strstr(ap_last_error(c), "fp8.safetensors") && strstr(ap_last_error(c), "'w8'") &&
                  strstr(ap_last_error(c), "unsupported dtype F8_E4M3"),
              "%s", ap_last_error(c));
    ap_clear_error(c);
    CHECK(ap_st_load(c, st, "c", AP_F32, &t) == AP_ERR_DTYPE);
    ap_clear_error(c);
    int64_t shape[AP_MAX_DIMS];
    CHECK(ap_st_shape(st, ap_st_find(st, "deep"), shape) == 7);
    CHECK(ap_st_load(c, st, "deep", AP_F32, &t) == AP_ERR_UNSUPPORTED && strstr(ap_last_error(c), "'deep'"));
    ap_clear_error(c);
    CHECK(ap_st_load(c, st, "nothere", AP_F32, &t) == AP_ERR_NOT_FOUND &&
          strstr(ap_last_error(c), "'nothere'"));
    ap_clear_error(c);
    CHECK(ap_st_load(c, st, "scale", (ap_dtype)99, &t) == AP_ERR_DTYPE);
    ap_clear_error(c);
    CHECK(ap_st_load(c, st, "scale", AP_F32, &t) == AP_OK && t && ap_tensor_ndim(t) == 0 &&
          *(const float *)ap_tensor_cdata(t) == 1.0f);
    ap_tensor_release(t);
    ap_st_close(st);
    unlink(path);
}

/* ------------------------------------------------------------ conversions */
static ap_safetensors *open_ents(ap_ctx *c, const char *fname, const ent *e, int n, int pad) {
    size_t len;
    unsigned char *b = assemble(NULL, e, n, pad, &len);
    put_file(tmp_path(fname), b, len);
    free(b);
    ap_safetensors *st = NULL;
    ap_st_open(c, tmp_path(fname), &st);
    CHECK_OK(c);
    return st;
}

static void check_float_load(ap_ctx *c, ap_safetensors *st, const char *name, ap_dtype dt,
                             const long double *want, int64_t n) {
    ap_tensor *t = NULL;
    CHECK_MSG(ap_st_load(c, st, name, dt, &t) == AP_OK && t, "%s as %s: %s", name, ap_dtype_name(dt),
              ap_last_error(c));
    ap_clear_error(c);
    if (!t) return;
    char label[96];
    snprintf(label, sizeof label, "%s as %s", name, ap_dtype_name(dt));
    int bad = count_misrounded(label, t, want, n);
    CHECK_MSG(bad == 0, "%s: %d of %lld elements not rounded to nearest even", label, bad, (long long)n);
    ap_tensor_release(t);
}

static void test_conversions(ap_ctx *c) {
    test_rng r = {42};
    enum { NF = 70001 }; /* more than one parallel chunk, odd */
    /* f32 sources: random bit patterns (subnormals, NaN, infinities, all
     * binades) and the halfway cases of bf16 and f16 */
    uint32_t *f32 = malloc(NF * 4);
    for (int i = 0; i < NF; i++) f32[i] = (uint32_t)test_rng_next(&r);
    for (int i = 0; i < 4000; i++) {
        uint32_t u = (uint32_t)test_rng_next(&r), sign = u & 0x80000000u, man = u & 0x7fffffu;
        f32[i] = (u & 0xffff0000u) | 0x8000u;                                      /* bf16 ties */
        f32[4000 + i] = sign | (113 + u % 30) << 23 | (man & 0x7fe000u) | 0x1000u; /* f16 normal ties */
        f32[8000 + i] = sign | (102 + u % 11) << 23 | man;                         /* f16 subnormals */
        f32[12000 + i] = sign | (142 + u % 2) << 23 | man;                         /* f16 overflow edge */
    }
    f32[16000] = 0x477fefffu; /* just under 65520: 65504 */
    f32[16001] = 0x477ff000u; /* 65520: to infinity */
    f32[16002] = 0x80000000u; /* -0 */
    f32[16003] = 0x00000001u; /* smallest subnormal */
    long double *want = malloc(sizeof *want * NF);
    for (int i = 0; i < NF; i++) want[i] = decode(f32[i], 8, 23);

    /* f64 sources: all binades of interest, double-rounding traps, specials */
    enum { ND = 20000 };
    uint64_t *f64 = malloc(ND * 8);
    for (int i = 0; i < ND; i++) {
        uint64_t u = test_rng_next(&r);
        int ex = 1023 - 160 + (int)(test_rng_uniform(&r) * 300); /* 2^-160 .. 2^140 */
        f64[i] = (u & 0x800fffffffffffffull) | ((uint64_t)ex << 52);
    }
    double traps[] = {1 + 0x1p-8 + 0x1p-30,
                      1 + 0x1p-11 + 0x1p-40,
                      1 + 0x1p-24 + 0x1p-50,
                      1 + 0x1p-8,
                      1 + 0x1p-24,
                      65519.99999999,
                      65520.0,
                      0x1p-25,
                      0x1.0000000001p-25,
                      0x1p-150,
                      0x1.0000001p-150,
                      0x1p-149,
                      1e300,
                      -1e300,
                      1e-300,
                      4.9e-324 /* double subnormal */,
                      -0.0,
                      INFINITY,
                      -INFINITY,
                      NAN,
                      0x1.fffffefffffffp127 /* f32 max + a little under half an ulp */,
                      0x1.ffffffp127 /* f32 max + half an ulp: ties to infinity */};
    memcpy(f64, traps, sizeof traps);
    long double *want64 = malloc(sizeof *want64 * ND);
    for (int i = 0; i < ND; i++) {
        double dv;
        memcpy(&dv, &f64[i], 8);
        want64[i] = dv; /* x87 load: exact, subnormals included */
    }

    /* 16-bit sources: every pattern */
    uint16_t *all16 = malloc(65536 * 2);
    for (int i = 0; i < 65536; i++) all16[i] = (uint16_t)i;
    long double *want_h = malloc(sizeof *want_h * 65536), *want_b = malloc(sizeof *want_b * 65536);
    for (int i = 0; i < 65536; i++) {
        want_h[i] = decode((uint32_t)i, 5, 10);
        want_b[i] = decode((uint32_t)i, 8, 7);
    }

    for (int pad = 8; pad >= 1; pad -= 7) { /* aligned, then misaligned data */
        ent e[] = {{"f32", "F32", 1, {NF}, f32, NF * 4},
                   {"f64", "F64", 2, {ND / 4, 4}, f64, ND * 8},
                   {"f16", "F16", 1, {65536}, all16, 65536 * 2},
                   {"bf16", "BF16", 1, {65536}, all16, 65536 * 2}};
        char fname[64];
        snprintf(fname, sizeof fname, "conv%d.safetensors", pad);
        ap_safetensors *st = open_ents(c, fname, e, 4, pad);
        if (!st) continue;
        if (pad == 1) {
            size_t nb;
            CHECK((uintptr_t)ap_st_raw(st, 0, &nb) % 4 != 0); /* the misaligned path is exercised */
        }
        for (ap_dtype dt = AP_F32; dt <= AP_F16; dt++) {
            check_float_load(c, st, "f32", dt, want, NF);
            check_float_load(c, st, "f64", dt, want64, ND);
            check_float_load(c, st, "f16", dt, want_h, 65536);
            check_float_load(c, st, "bf16", dt, want_b, 65536);
        }
        /* floats do not become integers */
        ap_tensor *t = (ap_tensor *)1;
        CHECK(ap_st_load(c, st, "f32", AP_I32, &t) == AP_ERR_DTYPE && t == NULL &&
              strstr(ap_last_error(c), "'f32'"));
        ap_clear_error(c);
        CHECK(ap_st_load(c, st, "f64", AP_I64, &t) == AP_ERR_DTYPE);
        ap_clear_error(c);
        ap_st_close(st);
        unlink(tmp_path(fname));
    }
    /* bf16 -> f32 is exact bit for bit, subnormals included (DAZ must not flush them) */
    {
        ent e[] = {{"bf16", "BF16", 1, {65536}, all16, 65536 * 2}};
        ap_safetensors *st = open_ents(c, "bf16.safetensors", e, 1, 8);
        ap_tensor *t = NULL;
        if (st && ap_st_load(c, st, "bf16", AP_F32, &t) == AP_OK) {
            int bad = 0;
            for (int i = 0; i < 65536; i++) bad += elem_bits(t, i) != (uint32_t)i << 16;
            CHECK_MSG(bad == 0, "%d bf16 -> f32 not exact", bad);
        }
        ap_tensor_release(t);
        ap_st_close(st);
        unlink(tmp_path("bf16.safetensors"));
    }
    /* ap_tensor_convert (core) keeps subnormals too: its float path used to go
     * through double, and DAZ flushed them */
    {
        uint16_t sub[2] = {0x0001, 0x807f};
        ap_tensor *b16 = ap_tensor_from_data(c, AP_BF16, 1, (int64_t[]){2}, sub);
        ap_tensor *f = ap_tensor_convert(c, b16, AP_F32), *h = ap_tensor_convert(c, b16, AP_F16);
        CHECK(f && elem_bits(f, 0) == 0x00010000u && elem_bits(f, 1) == 0x807f0000u);
        ap_tensor *back = f ? ap_tensor_convert(c, f, AP_BF16) : NULL;
        CHECK(back && !memcmp(ap_tensor_cdata(back), sub, 4));
        CHECK(h && elem_bits(h, 0) == 0 && elem_bits(h, 1) == 0x8000); /* far below f16's range */
        ap_tensor_release(b16);
        ap_tensor_release(f);
        ap_tensor_release(h);
        ap_tensor_release(back);
    }
    free(f32);
    free(want);
    free(f64);
    free(want64);
    free(all16);
    free(want_h);
    free(want_b);

    /* integers */
    int8_t i8[] = {-128, -1, 0, 127};
    uint8_t u8[] = {0, 1, 200, 255}, bl[] = {0, 1, 2, 255};
    int16_t i16[] = {-32768, 32767, -3};
    uint16_t u16[] = {65535, 0, 7};
    uint32_t u32[] = {4294967295u, 5};
    int32_t i32[] = {INT32_MIN, INT32_MAX, -9};
    int64_t i64ok[] = {INT32_MIN, INT32_MAX, 0, -1};
    int64_t i64big[] = {1, 2, INT64_C(1) << 40, 4};
    int64_t i64f[] = {(INT64_C(1) << 53) + 1, (INT64_C(1) << 24) + 1, (INT64_C(1) << 24) + 3, INT64_MIN,
                      -((INT64_C(1) << 24) + 1)};
    uint64_t u64[] = {UINT64_MAX, 3};
    ent e[] = {{"i8", "I8", 1, {4}, i8, 4},           {"u8", "U8", 1, {4}, u8, 4},
               {"bool", "BOOL", 1, {4}, bl, 4},       {"i16", "I16", 1, {3}, i16, 6},
               {"u16", "U16", 1, {3}, u16, 6},        {"u32", "U32", 1, {2}, u32, 8},
               {"i32", "I32", 1, {3}, i32, 12},       {"i64ok", "I64", 1, {4}, i64ok, 32},
               {"i64big", "I64", 1, {4}, i64big, 32}, {"i64f", "I64", 1, {5}, i64f, 40},
               {"u64", "U64", 1, {2}, u64, 16}};
    for (int pad = 8; pad >= 1; pad -= 7) {
        ap_safetensors *st = open_ents(c, "ints.safetensors", e, 11, pad);
        if (!st) break;
        struct {
            const char *name;
            int64_t want[5];
            int n;
            bool fits_i32;
        } ic[] = {{"i8", {-128, -1, 0, 127}, 4, true},
                  {"u8", {0, 1, 200, 255}, 4, true},
                  {"bool", {0, 1, 1, 1}, 4, true},
                  {"i16", {-32768, 32767, -3}, 3, true},
                  {"u16", {65535, 0, 7}, 3, true},
                  {"u32", {4294967295, 5}, 2, false},
                  {"i32", {INT32_MIN, INT32_MAX, -9}, 3, true},
                  {"i64ok", {INT32_MIN, INT32_MAX, 0, -1}, 4, true},
                  {"i64big", {1, 2, INT64_C(1) << 40, 4}, 4, false}};
        for (size_t k = 0; k < sizeof ic / sizeof ic[0]; k++) {
            for (ap_dtype dt = AP_I32; dt <= AP_I64; dt++) {
                ap_tensor *t = NULL;
                ap_status s = ap_st_load(c, st, ic[k].name, dt, &t);
                if (dt == AP_I32 && !ic[k].fits_i32) {
                    CHECK_MSG(s == AP_ERR_DTYPE && !t && strstr(ap_last_error(c), "does not fit") &&
                                  strstr(ap_last_error(c), ic[k].name),
                              "%s as i32: %s", ic[k].name, ap_last_error(c));
                    ap_clear_error(c);
                    continue;
                }
                CHECK_MSG(s == AP_OK && t, "%s as %s: %s", ic[k].name, ap_dtype_name(dt), ap_last_error(c));
                ap_clear_error(c);
                if (!t) continue;
                int bad = 0;
                for (int i = 0; i < ic[k].n; i++) {
                    int64_t got = dt == AP_I32 ? ((const int32_t *)ap_tensor_cdata(t))[i]
                                               : ((const int64_t *)ap_tensor_cdata(t))[i];
                    bad += got != ic[k].want[i];
                }
                CHECK_MSG(bad == 0, "%s as %s: %d wrong", ic[k].name, ap_dtype_name(dt), bad);
                ap_tensor_release(t);
            }
        }
        ap_tensor *t = NULL;
        CHECK(ap_st_load(c, st, "i64big", AP_I32, &t) == AP_ERR_DTYPE &&
              strstr(ap_last_error(c), "element 2"));
        ap_clear_error(c);
        CHECK(ap_st_load(c, st, "u64", AP_I64, &t) == AP_ERR_DTYPE &&
              strstr(ap_last_error(c), "18446744073709551615"));
        ap_clear_error(c);
        /* integers to floats round to nearest even too */
        long double wf[5] = {(long double)i64f[0], (long double)i64f[1], (long double)i64f[2],
                             (long double)i64f[3], (long double)i64f[4]};
        long double wu[2] = {(long double)u64[0], 3}, wb[4] = {0, 1, 1, 1};
        for (ap_dtype dt = AP_F32; dt <= AP_F16; dt++) {
            check_float_load(c, st, "i64f", dt, wf, 5);
            check_float_load(c, st, "u64", dt, wu, 2);
            check_float_load(c, st, "bool", dt, wb, 4);
        }
        CHECK(ap_st_load(c, st, "i64f", AP_F32, &t) == AP_OK && t &&
              ((const float *)ap_tensor_cdata(t))[0] == 0x1p53f &&
              ((const float *)ap_tensor_cdata(t))[2] == 16777220.0f);
        ap_tensor_release(t);
        ap_st_close(st);
        unlink(tmp_path("ints.safetensors"));
    }
}

/* ------------------------------------------------------------ writer errors, atomicity */
static void test_save_errors(ap_ctx *c) {
    float v[4] = {1, 2, 3, 4};
    ap_tensor *a = ap_tensor_from_data(c, AP_F32, 1, (int64_t[]){4}, v);
    ap_tensor *big = ap_tensor_zeros(c, AP_F32, 1, (int64_t[]){4096});
    char path[512];
    snprintf(path, sizeof path, "%s", tmp_path("keep.safetensors"));
    const char *n1 = "a";
    CHECK(ap_st_save(c, path, 1, &n1, &a, 0, NULL, NULL) == AP_OK);
    size_t keep_len;
    unsigned char *keep = get_file(path, &keep_len);
    int base = dir_entries();

    /* argument errors: nothing is written, the old file stays */
    struct {
        int n;
        const char *names[2];
        ap_tensor *ts[2];
        int n_meta;
        const char *mk[2], *mv[2];
        const char *what;
    } bad[] = {
        {2, {"w", "w"}, {a, a}, 0, {0}, {0}, "given twice"},
        {1, {"__metadata__"}, {a}, 0, {0}, {0}, "reserved"},
        {1, {"x"}, {NULL}, 0, {0}, {0}, "NULL"},
        {1, {NULL}, {a}, 0, {0}, {0}, "NULL"},
        {1, {"bad\xff"}, {a}, 0, {0}, {0}, "UTF-8"},
        {1, {"x"}, {a}, 2, {"k", "k"}, {"1", "2"}, "given twice"},
        {1, {"x"}, {a}, 1, {"k"}, {NULL}, "NULL"},
        {-1, {0}, {0}, 0, {0}, {0}, "n = -1"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ap_status s =
            ap_st_save(c, path, bad[i].n, bad[i].names, bad[i].ts, bad[i].n_meta, bad[i].mk, bad[i].mv);
        CHECK_MSG(s == AP_ERR_INVALID_ARG && strstr(ap_last_error(c), "keep.safetensors") &&
                      strstr(ap_last_error(c), bad[i].what),
                  "case %zu: %d %s", i, (int)s, ap_last_error(c));
        ap_clear_error(c);
    }
    size_t len;
    unsigned char *now = get_file(path, &len);
    CHECK(now && len == keep_len && !memcmp(now, keep, len));
    free(now);
    CHECK(dir_entries() == base);

    /* a directory that does not exist */
    CHECK(ap_st_save(c, tmp_path("no/such/dir.safetensors"), 1, &n1, &a, 0, NULL, NULL) == AP_ERR_IO);
    CHECK(strstr(ap_last_error(c), "dir.safetensors"));
    ap_clear_error(c);
    /* the destination is a directory: rename fails after the data was written */
    mkdir(tmp_path("adir"), 0755);
    base = dir_entries();
    CHECK(ap_st_save(c, tmp_path("adir"), 1, &n1, &a, 0, NULL, NULL) == AP_ERR_IO);
    ap_clear_error(c);
    CHECK_MSG(dir_entries() == base, "no temporary file left after a failed rename");
    rmdir(tmp_path("adir"));
    base = dir_entries();

    /* a write that fails half-way (file size limit): the old file is intact,
     * and no temporary file is left */
    struct rlimit old;
    getrlimit(RLIMIT_FSIZE, &old);
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim = old;
    lim.rlim_cur = 1024;
    if (setrlimit(RLIMIT_FSIZE, &lim) == 0) {
        const char *nb = "big";
        ap_status s = ap_st_save(c, path, 1, &nb, &big, 0, NULL, NULL);
        setrlimit(RLIMIT_FSIZE, &old);
        CHECK_MSG(s == AP_ERR_IO && strstr(ap_last_error(c), "keep.safetensors"), "%d %s", (int)s,
                  ap_last_error(c));
        ap_clear_error(c);
        now = get_file(path, &len);
        CHECK(now && len == keep_len && !memcmp(now, keep, len));
        free(now);
        CHECK_MSG(dir_entries() == base, "no temporary file left after a failed write");
    }
    signal(SIGXFSZ, prev);
    free(keep);
    unlink(path);
    ap_tensor_release(a);
    ap_tensor_release(big);
}

/* ------------------------------------------------------------ fuzz smoke */
/* Opens (and loads everything from) a file that may be anything: it must
 * either open, with self-consistent answers, or fail with a message. With
 * bytes, opens them in memory (an exact-size heap copy, where ASan sees any
 * read past the end), else the file at path. */
static int probe(ap_ctx *c, const char *path, const unsigned char *bytes, size_t len) {
    ap_safetensors *st = NULL;
    ap_status s = bytes ? ap_st_open_memory(c, path, bytes, len, &st) : ap_st_open(c, path, &st);
    if (s != AP_OK) {
        CHECK(st == NULL && ap_last_status(c) == s && ap_last_error(c)[0]);
        ap_clear_error(c);
        return 0;
    }
    CHECK(st != NULL);
    int n = ap_st_count(st);
    for (int i = 0; i < n; i++) {
        const char *name = ap_st_name(st, i);
        CHECK(name && ap_st_find(st, name) == i);
        int64_t shape[AP_MAX_DIMS];
        int nd = ap_st_shape(st, i, shape);
        size_t nb;
        const unsigned char *raw = ap_st_raw(st, i, &nb);
        CHECK(nd >= 0 && raw);
        volatile unsigned char sink = 0;
        for (size_t k = 0; k < nb; k++) sink ^= raw[k]; /* every byte is inside the mapping */
        (void)sink;
        for (ap_dtype dt = AP_F32; dt < AP_DTYPE_COUNT_; dt++) {
            ap_tensor *t = NULL;
            ap_status ls = ap_st_load(c, st, name, dt, &t);
            CHECK((ls == AP_OK) == (t != NULL));
            if (t) CHECK(ap_tensor_nbytes(t) == (size_t)ap_tensor_numel(t) * ap_dtype_size(dt));
            ap_tensor_release(t);
            ap_clear_error(c);
        }
    }
    for (int i = 0; i < ap_st_metadata_count(st); i++) {
        const char *k = ap_st_metadata_key(st, i);
        CHECK(k && ap_st_metadata(st, k));
    }
    ap_st_close(st);
    return 1;
}

static void mutate(test_rng *r, unsigned char *b, size_t *len, size_t cap) {
    static const char *const tokens[] = {"\"",
                                         "{",
                                         "}",
                                         "[",
                                         "]",
                                         ",",
                                         ":",
                                         "-",
                                         "0",
                                         "9",
                                         "1e9",
                                         "2.5",
                                         "null",
                                         "\"F32\"",
                                         "\"F8_E4M3\"",
                                         "\"dtype\"",
                                         "\"shape\"",
                                         "\"data_offsets\"",
                                         "\"__metadata__\"",
                                         "18446744073709551615",
                                         "\\u0000",
                                         "\xff",
                                         " "};
    int nmut = 1 + (int)(test_rng_next(r) % 4);
    for (int m = 0; m < nmut; m++) {
        size_t n = *len;
        uint64_t x = test_rng_next(r);
        size_t at = n ? (size_t)(test_rng_next(r) % n) : 0;
        /* header bytes are where the parser lives: aim there most of the time */
        uint64_t hn = 0;
        for (int i = 0; i < 8 && i < (int)n; i++) hn |= (uint64_t)b[i] << (8 * i);
        if (n > 8 && (x & 0x100) && hn < n - 8 && hn > 0) at = 8 + (size_t)(test_rng_next(r) % hn);
        switch (x % 7) {
        case 0:
            if (n) b[at] = (unsigned char)test_rng_next(r);
            break;
        case 1:
            if (n) b[at] ^= (unsigned char)(1u << (test_rng_next(r) % 8));
            break;
        case 2: *len = n ? (size_t)(test_rng_next(r) % n) : 0; break; /* truncate */
        case 3: {                                                     /* insert a token */
            const char *t = tokens[test_rng_next(r) % (sizeof tokens / sizeof tokens[0])];
            size_t tl = strlen(t);
            if (n + tl > cap) break;
            memmove(b + at + tl, b + at, n - at);
            memcpy(b + at, t, tl);
            *len = n + tl;
            break;
        }
        case 4: { /* delete a run */
            size_t k = 1 + (size_t)(test_rng_next(r) % 8);
            if (at + k > n) k = n - at;
            memmove(b + at, b + at + k, n - at - k);
            *len = n - k;
            break;
        }
        case 5: /* the header length, off by a little */
            if (n >= 8) {
                hn += (uint64_t)(int64_t)((int)(test_rng_next(r) % 17) - 8);
                for (int i = 0; i < 8; i++) b[i] = (unsigned char)(hn >> (8 * i));
            }
            break;
        default: /* a digit changed (offsets and dims) */
            for (size_t k = at; k < n; k++)
                if (b[k] >= '0' && b[k] <= '9') {
                    b[k] = (unsigned char)('0' + test_rng_next(r) % 10);
                    break;
                }
            break;
        }
    }
}

static void test_fuzz_smoke(ap_ctx *c) {
    /* seeds: files made here, and the libFuzzer seed corpus when present */
    enum { MAXSEED = 16, CAP = 1 << 14 };
    unsigned char *seeds[MAXSEED];
    size_t seed_len[MAXSEED];
    int ns = 0;
    {
        float f[6] = {1, -2, 3.5f, 0, 1e-40f, -0.0f};
        uint16_t h[3] = {0x3c00, 0x8001, 0x7c00};
        int64_t ids[2] = {7, -1};
        unsigned char fp8[2] = {1, 2};
        ent e[] = {{"w", "F32", 2, {2, 3}, f, 24},  {"h", "F16", 1, {3}, h, 6},
                   {"ids", "I64", 1, {2}, ids, 16}, {"s", "F32", 0, {0}, f, 4},
                   {"z", "BF16", 2, {0, 4}, h, 0},  {"q", "F8_E5M2", 1, {2}, fp8, 2},
                   {"b", "BOOL", 1, {2}, fp8, 2}};
        seeds[ns] = assemble("{\"a\":\"b\",\"format\":\"pt\"}", e, 7, 8, &seed_len[ns]);
        ns++;
        seeds[ns] = assemble(NULL, e, 3, 1, &seed_len[ns]);
        ns++;
    }
    static const char *const corpus[] = {
        "tests/fuzz/corpus/minimal.safetensors", "tests/fuzz/corpus/lora.safetensors",
        "tests/fuzz/corpus/dtypes.safetensors", "tests/fuzz/corpus/unpadded.safetensors"};
    for (size_t i = 0; i < sizeof corpus / sizeof corpus[0] && ns < MAXSEED; i++) {
        size_t len;
        unsigned char *b = test_read_file(corpus[i], &len);
        if (!b) continue;
        seeds[ns] = b;
        seed_len[ns++] = len;
    }
    const char *path = tmp_path("fuzz.safetensors");
    for (int i = 0; i < ns; i++) {
        put_file(path, seeds[i], seed_len[i]);
        CHECK_MSG(probe(c, path, NULL, 0) == 1, "seed %d opens: %s", i, ap_last_error(c));
    }
    test_rng r = {2024};
    unsigned char *buf = malloc(CAP);
    int opened = 0, iters = 5000;
    for (int it = 0; it < iters; it++) {
        int k = (int)(test_rng_next(&r) % (uint64_t)ns);
        size_t len = seed_len[k] < CAP ? seed_len[k] : CAP;
        memcpy(buf, seeds[k], len);
        mutate(&r, buf, &len, CAP);
        if (it % 10 == 0) { /* through a file now and then */
            put_file(path, buf, len);
            opened += probe(c, path, NULL, 0);
        } else {
            unsigned char *exact = malloc(len ? len : 1);
            memcpy(exact, buf, len);
            opened += probe(c, "fuzz.safetensors", exact, len);
            free(exact);
        }
    }
    printf("fuzz smoke: %d mutated files, %d opened, %d rejected with a message\n", iters, opened,
           iters - opened);
    CHECK(opened < iters); /* the mutations do reach the validation */
    free(buf);
    for (int i = 0; i < ns; i++) free(seeds[i]);
    unlink(path);
}

int main(void) {
    const char *td = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/ap_st_XXXXXX", td && *td ? td : "/tmp");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 2;
    }
    ap_ctx *c = test_ctx();
    test_json();
    test_roundtrip(c);
    test_layout(c);
    test_malformed(c);
    test_unsupported(c);
    test_conversions(c);
    test_save_errors(c);
    test_fuzz_smoke(c);
    ap_ctx_free(c);
    rm_tmpdir();
    return test_summary("safetensors");
}
