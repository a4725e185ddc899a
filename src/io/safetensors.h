/* Internal entry points of the safetensors reader, beside the public ones in
 * alignprop.h. */
#ifndef AP_IO_SAFETENSORS_H
#define AP_IO_SAFETENSORS_H

#include "alignprop.h"

#include <stddef.h>

/* As ap_st_open, over bytes[0..len) already in memory (a safetensors blob
 * inside another container, say). The caller keeps the bytes alive and
 * unchanged until ap_st_close; name stands for the file in messages. The fuzz
 * tests use it with exact-size heap copies, where AddressSanitizer sees a read
 * one byte past the end (past the end of a mapped file it would not: the page
 * runs on). */
ap_status ap_st_open_memory(ap_ctx *c, const char *name, const void *bytes, size_t len, ap_safetensors **out);

#endif
