/* JSON for the readers and writers in io/ and the layers above (run configs,
 * logs): a thin layer over cJSON, so no other file includes cJSON.h and the
 * parser can be swapped without touching callers.
 *
 * Parsing is strict where cJSON is lenient about bytes: the text must be valid
 * UTF-8 and may hold no raw control characters (JSON allows only tab, CR and
 * LF, and only between tokens), so a value that parses here is one every other
 * JSON reader would read the same way. Number spelling stays cJSON's: it reads
 * every number as a double and accepts forms such as "1." or "01"; callers
 * that need integers use ap_json_int, which accepts only integral values with
 * |v| <= 2^53 (where a double is exact).
 *
 * Values are trees of ap_json nodes (cJSON items). A tree is freed with
 * ap_json_free on its root; the getters return borrowed pointers into it.
 * Separate trees may be used from separate threads (cJSON also notes each
 * failed parse in a global of its own, which nothing here reads). */
#ifndef AP_IO_JSON_H
#define AP_IO_JSON_H

#include "alignprop.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct cJSON ap_json;

typedef enum {
    AP_JSON_INVALID = 0,
    AP_JSON_NULL,
    AP_JSON_BOOL,
    AP_JSON_NUMBER,
    AP_JSON_STRING,
    AP_JSON_ARRAY,
    AP_JSON_OBJECT,
} ap_json_kind;

/* 1 when s[0..n) is well-formed UTF-8 (no overlong forms, surrogates or code
 * points above U+10FFFF). When it is not and bad_at is non-NULL, *bad_at is
 * the offset of the first bad byte. */
bool ap_json_utf8_valid(const char *s, size_t n, size_t *bad_at);

/* Parses one JSON value from text[0..len) (no NUL terminator needed). JSON
 * whitespace may follow the value, nothing else. On failure returns NULL and
 * writes a reason with its place ("line 3, column 14: ...") to err. */
ap_json *ap_json_parse(const char *text, size_t len, char *err, size_t errlen);
void ap_json_free(ap_json *j); /* accepts NULL */

ap_json_kind ap_json_kind_of(const ap_json *j); /* AP_JSON_INVALID for NULL */
/* "an object", "a string", ... for messages ("dtype is a number, expected ..."). */
const char *ap_json_kind_name(const ap_json *j);

/* Members of an object or elements of an array, in document order. Objects
 * keep duplicate keys as separate members (callers decide what a duplicate
 * means). */
int ap_json_size(const ap_json *j); /* 0 for scalars */
ap_json *ap_json_first(const ap_json *j);
ap_json *ap_json_next(const ap_json *j);
const char *ap_json_key(const ap_json *member); /* NULL for array elements */
/* The first member named key (case-sensitive), or NULL. */
ap_json *ap_json_get(const ap_json *obj, const char *key);

/* Typed reads: NULL / false when j is absent or of another kind. */
const char *ap_json_str(const ap_json *j);
bool ap_json_num(const ap_json *j, double *out);
bool ap_json_bool(const ap_json *j, bool *out);
/* An integral number in [lo, hi] (and within +-2^53). */
bool ap_json_int(const ap_json *j, int64_t lo, int64_t hi, int64_t *out);

/* Building. The constructors return NULL when out of memory. ap_json_add
 * appends child to an array (key NULL) or object (key copied) and takes
 * ownership of child in every case: on failure (out of memory, or parent or
 * child NULL) it frees child and returns false, so calls can be chained and
 * checked once. */
ap_json *ap_json_new_object(void);
ap_json *ap_json_new_array(void);
ap_json *ap_json_new_str(const char *s);
ap_json *ap_json_new_num(double v);  /* NaN and infinities print as null */
ap_json *ap_json_new_int(int64_t v); /* printed exactly, never in exponent form */
ap_json *ap_json_new_bool(bool v);
ap_json *ap_json_new_null(void);
bool ap_json_add(ap_json *parent, const char *key, ap_json *child);
bool ap_json_add_str(ap_json *obj, const char *key, const char *s);
bool ap_json_add_int(ap_json *obj, const char *key, int64_t v);
bool ap_json_add_num(ap_json *obj, const char *key, double v);
bool ap_json_add_bool(ap_json *obj, const char *key, bool v);

/* Serialises j: compact (no whitespace, the form serde_json writes) or
 * indented. Returns a NUL-terminated string to release with ap_json_free_str,
 * or NULL when out of memory. */
char *ap_json_print(const ap_json *j, bool pretty);
void ap_json_free_str(char *s);

/* Reads and parses a JSON file (an error names the file and the place), and
 * prints j to a file atomically. */
ap_json *ap_json_load(ap_ctx *c, const char *path);
ap_status ap_json_save(ap_ctx *c, const char *path, const ap_json *j, bool pretty);

#endif
