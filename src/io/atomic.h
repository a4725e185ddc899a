/* Atomic file writes: a temporary file in the destination's directory,
 * flushed and fsync'd, then renamed over the destination. A failure leaves the
 * old file (if any) untouched and no temporary behind. */
#ifndef AP_IO_ATOMIC_H
#define AP_IO_ATOMIC_H

#include "alignprop.h"

#include <stdio.h>

typedef struct {
    FILE *f;
    char *path, *tmp;
} ap_atomic_file;

ap_status ap_atomic_open(ap_ctx *c, const char *path, ap_atomic_file *af);
/* Flushes, syncs, renames. On any failure the temporary is removed. */
ap_status ap_atomic_commit(ap_ctx *c, ap_atomic_file *af);
void ap_atomic_abort(ap_atomic_file *af);

/* Whole files: writes n bytes atomically, and reads a file (at most max bytes)
 * into a malloc'd, NUL-terminated buffer (*len gets its length). Failures are
 * AP_ERR_IO with a message naming path and the system's reason. */
ap_status ap_write_file(ap_ctx *c, const char *path, const void *data, size_t n);
char *ap_read_file(ap_ctx *c, const char *path, size_t max, size_t *len);

#endif
