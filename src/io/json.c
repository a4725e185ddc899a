/* JSON over cJSON (see json.h for what is checked beyond cJSON). */
#include "io/json.h"

#include "core/internal.h"
#include "io/atomic.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JSON_EXACT_INT 9007199254740992.0 /* 2^53: doubles are exact integers up to here */

bool ap_json_utf8_valid(const char *str, size_t n, size_t *bad_at) {
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        unsigned lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
        if (c >= 0xc2 && c <= 0xdf)
            len = 2;
        else if (c >= 0xe0 && c <= 0xef) {
            len = 3;
            if (c == 0xe0) lo = 0xa0; /* overlong */
            if (c == 0xed) hi = 0x9f; /* UTF-16 surrogates */
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4;
            if (c == 0xf0) lo = 0x90; /* overlong */
            if (c == 0xf4) hi = 0x8f; /* above U+10FFFF */
        } else
            goto bad;
        if (n - i < len || s[i + 1] < lo || s[i + 1] > hi) goto bad;
        for (size_t k = 2; k < len; k++)
            if ((s[i + k] & 0xc0) != 0x80) goto bad;
        i += len;
    }
    return true;
bad:
    if (bad_at) *bad_at = i;
    return false;
}

static void where(const char *text, size_t pos, char *err, size_t errlen, const char *what) {
    size_t line = 1, col = 1;
    for (size_t i = 0; i < pos; i++) {
        if (text[i] == '\n') {
            line++;
            col = 1;
        } else
            col++;
    }
    if (err && errlen) snprintf(err, errlen, "line %zu, column %zu: %s", line, col, what);
}

static bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* True when text ends inside a string or an unclosed array or object, or
 * holds nothing but whitespace. */
static bool ends_early(const char *t, size_t n) {
    long depth = 0;
    bool in_str = false, any = false;
    for (size_t i = 0; i < n; i++) {
        char c = t[i];
        any |= !is_ws(c);
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = false;
        } else if (c == '"')
            in_str = true;
        else if (c == '{' || c == '[')
            depth++;
        else if (c == '}' || c == ']')
            depth--;
    }
    return in_str || depth > 0 || !any;
}

ap_json *ap_json_parse(const char *text, size_t len, char *err, size_t errlen) {
    if (err && errlen) err[0] = 0;
    if (!text) {
        if (err && errlen) snprintf(err, errlen, "no text");
        return NULL;
    }
    size_t bad;
    if (!ap_json_utf8_valid(text, len, &bad)) {
        where(text, bad, err, errlen, "invalid UTF-8");
        return NULL;
    }
    /* cJSON skips every byte <= 0x20 as whitespace and copies raw control
     * characters into strings; JSON allows neither. */
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)text[i];
        if (ch < 0x20 && !is_ws((char)ch)) {
            char what[64];
            snprintf(what, sizeof what, "control character 0x%02x", ch);
            where(text, i, err, errlen, what);
            return NULL;
        }
    }
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    size_t pos = end && end >= text && end <= text + len ? (size_t)(end - text) : len;
    if (!j) {
        /* cJSON's error place is approximate, and running off the end is
         * reported at the last byte; a cut-short text is told apart here. */
        char what[64];
        if (pos >= len || ends_early(text, len)) {
            pos = len;
            snprintf(what, sizeof what, "unexpected end of input");
        } else if ((unsigned char)text[pos] >= 0x21 && (unsigned char)text[pos] < 0x7f)
            snprintf(what, sizeof what, "syntax error near '%c'", text[pos]);
        else
            snprintf(what, sizeof what, "syntax error");
        where(text, pos, err, errlen, what);
        return NULL;
    }
    while (pos < len && is_ws(text[pos])) pos++;
    if (pos < len) {
        where(text, pos, err, errlen, "unexpected text after the value");
        cJSON_Delete(j);
        return NULL;
    }
    return j;
}

void ap_json_free(ap_json *j) {
    if (j) cJSON_Delete(j);
}

ap_json_kind ap_json_kind_of(const ap_json *j) {
    if (!j) return AP_JSON_INVALID;
    switch (j->type & 0xff) {
    case cJSON_NULL: return AP_JSON_NULL;
    case cJSON_False:
    case cJSON_True: return AP_JSON_BOOL;
    case cJSON_Number:
    case cJSON_Raw: return AP_JSON_NUMBER; /* raw items are only made by ap_json_new_int */
    case cJSON_String: return AP_JSON_STRING;
    case cJSON_Array: return AP_JSON_ARRAY;
    case cJSON_Object: return AP_JSON_OBJECT;
    default: return AP_JSON_INVALID;
    }
}

const char *ap_json_kind_name(const ap_json *j) {
    static const char *const names[] = {
        [AP_JSON_INVALID] = "nothing",  [AP_JSON_NULL] = "null",       [AP_JSON_BOOL] = "a boolean",
        [AP_JSON_NUMBER] = "a number",  [AP_JSON_STRING] = "a string", [AP_JSON_ARRAY] = "an array",
        [AP_JSON_OBJECT] = "an object",
    };
    _Static_assert(sizeof names / sizeof names[0] == AP_JSON_OBJECT + 1, "kind names");
    return names[ap_json_kind_of(j)];
}

int ap_json_size(const ap_json *j) {
    ap_json_kind k = ap_json_kind_of(j);
    return k == AP_JSON_ARRAY || k == AP_JSON_OBJECT ? cJSON_GetArraySize(j) : 0;
}

ap_json *ap_json_first(const ap_json *j) {
    ap_json_kind k = ap_json_kind_of(j);
    return k == AP_JSON_ARRAY || k == AP_JSON_OBJECT ? j->child : NULL;
}
ap_json *ap_json_next(const ap_json *j) { return j ? j->next : NULL; }
const char *ap_json_key(const ap_json *member) { return member ? member->string : NULL; }

ap_json *ap_json_get(const ap_json *obj, const char *key) {
    if (ap_json_kind_of(obj) != AP_JSON_OBJECT || !key) return NULL;
    for (cJSON *m = obj->child; m; m = m->next)
        if (m->string && !strcmp(m->string, key)) return m;
    return NULL;
}

const char *ap_json_str(const ap_json *j) {
    return ap_json_kind_of(j) == AP_JSON_STRING ? j->valuestring : NULL;
}

bool ap_json_num(const ap_json *j, double *out) {
    if (ap_json_kind_of(j) != AP_JSON_NUMBER) return false;
    *out = (j->type & 0xff) == cJSON_Raw ? strtod(j->valuestring, NULL) : j->valuedouble;
    return true;
}

bool ap_json_bool(const ap_json *j, bool *out) {
    if (ap_json_kind_of(j) != AP_JSON_BOOL) return false;
    *out = (j->type & 0xff) == cJSON_True;
    return true;
}

bool ap_json_int(const ap_json *j, int64_t lo, int64_t hi, int64_t *out) {
    if (ap_json_kind_of(j) != AP_JSON_NUMBER) return false;
    int64_t v;
    if ((j->type & 0xff) == cJSON_Raw) {
        char *end;
        long long r = strtoll(j->valuestring, &end, 10);
        if (*end) return false;
        v = r;
    } else {
        double d = j->valuedouble;
        if (!(fabs(d) <= JSON_EXACT_INT) || d != floor(d)) return false;
        v = (int64_t)d;
    }
    if (v < lo || v > hi) return false;
    *out = v;
    return true;
}

ap_json *ap_json_new_object(void) { return cJSON_CreateObject(); }
ap_json *ap_json_new_array(void) { return cJSON_CreateArray(); }
ap_json *ap_json_new_str(const char *s) { return s ? cJSON_CreateString(s) : NULL; }
ap_json *ap_json_new_num(double v) { return cJSON_CreateNumber(v); }
ap_json *ap_json_new_bool(bool v) { return cJSON_CreateBool(v); }
ap_json *ap_json_new_null(void) { return cJSON_CreateNull(); }

ap_json *ap_json_new_int(int64_t v) {
    /* cJSON prints numbers with %g, which turns large integers into exponent
     * form ("1e+15") that integer readers such as serde's usize reject; a raw
     * item prints the exact decimal digits. */
    char buf[32];
    snprintf(buf, sizeof buf, "%" PRId64, v);
    return cJSON_CreateRaw(buf);
}

bool ap_json_add(ap_json *parent, const char *key, ap_json *child) {
    if (!child) return false;
    bool ok = false;
    if (ap_json_kind_of(parent) == AP_JSON_ARRAY && !key)
        ok = cJSON_AddItemToArray(parent, child);
    else if (ap_json_kind_of(parent) == AP_JSON_OBJECT && key)
        ok = cJSON_AddItemToObject(parent, key, child);
    if (!ok) cJSON_Delete(child);
    return ok;
}

bool ap_json_add_str(ap_json *obj, const char *key, const char *s) {
    return ap_json_add(obj, key, ap_json_new_str(s));
}
bool ap_json_add_int(ap_json *obj, const char *key, int64_t v) {
    return ap_json_add(obj, key, ap_json_new_int(v));
}
bool ap_json_add_num(ap_json *obj, const char *key, double v) {
    return ap_json_add(obj, key, ap_json_new_num(v));
}
bool ap_json_add_bool(ap_json *obj, const char *key, bool v) {
    return ap_json_add(obj, key, ap_json_new_bool(v));
}

char *ap_json_print(const ap_json *j, bool pretty) {
    if (!j) return NULL;
    return pretty ? cJSON_Print(j) : cJSON_PrintUnformatted(j);
}

void ap_json_free_str(char *s) {
    if (s) cJSON_free(s);
}

ap_json *ap_json_load(ap_ctx *c, const char *path) {
    size_t n = 0;
    char *t = ap_read_file(c, path, (size_t)64 << 20, &n);
    if (!t) return NULL;
    char err[256];
    ap_json *j = ap_json_parse(t, n, err, sizeof err);
    free(t);
    if (!j) ap_seterr(c, AP_ERR_FORMAT, "%s: bad JSON: %s", path, err);
    return j;
}

ap_status ap_json_save(ap_ctx *c, const char *path, const ap_json *j, bool pretty) {
    char *s = j ? ap_json_print(j, pretty) : NULL;
    if (!s) return ap_seterr(c, AP_ERR_NOMEM, "%s: out of memory", path);
    ap_status st = ap_write_file(c, path, s, strlen(s));
    ap_json_free_str(s);
    return st;
}
