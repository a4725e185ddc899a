#include "atomic.h"

#include "core/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

ap_status ap_atomic_open(ap_ctx *c, const char *path, ap_atomic_file *af) {
    memset(af, 0, sizeof *af);
    size_t n = strlen(path);
    af->path = strdup(path);
    af->tmp = malloc(n + 16);
    if (!af->path || !af->tmp) {
        ap_atomic_abort(af);
        return ap_seterr(c, AP_ERR_NOMEM, "%s: out of memory", path);
    }
    snprintf(af->tmp, n + 16, "%s.tmpXXXXXX", path);
    int fd = mkstemp(af->tmp);
    if (fd < 0) {
        int err = errno;
        free(af->tmp);
        af->tmp = NULL;
        ap_atomic_abort(af);
        return ap_seterr(c, AP_ERR_IO, "%s: cannot create a temporary file beside it: %s", path, strerror(err));
    }
    /* mkstemp makes the file 0600; give it the mode a plain fopen would */
    mode_t mask = umask(0);
    umask(mask);
    fchmod(fd, 0666 & ~mask);
    af->f = fdopen(fd, "wb");
    if (!af->f) {
        close(fd);
        ap_atomic_abort(af);
        return ap_seterr(c, AP_ERR_IO, "%s: cannot open for writing", path);
    }
    return AP_OK;
}

void ap_atomic_abort(ap_atomic_file *af) {
    if (af->f) fclose(af->f);
    if (af->tmp) unlink(af->tmp);
    free(af->tmp);
    free(af->path);
    memset(af, 0, sizeof *af);
}

ap_status ap_atomic_commit(ap_ctx *c, ap_atomic_file *af) {
    int err = 0;
    if (fflush(af->f) != 0 || ferror(af->f)) err = errno ? errno : EIO;
    if (!err && fsync(fileno(af->f)) != 0) err = errno;
    if (fclose(af->f) != 0 && !err) err = errno ? errno : EIO;
    af->f = NULL;
    if (!err && rename(af->tmp, af->path) != 0) err = errno;
    if (err) {
        ap_status s = ap_seterr(c, AP_ERR_IO, "%s: write failed: %s", af->path, strerror(err));
        ap_atomic_abort(af);
        return s;
    }
    free(af->tmp);
    af->tmp = NULL;
    ap_atomic_abort(af);
    return AP_OK;
}

ap_status ap_write_file(ap_ctx *c, const char *path, const void *data, size_t n) {
    ap_atomic_file af;
    ap_status st = ap_atomic_open(c, path, &af);
    if (st != AP_OK) return st;
    if (n && fwrite(data, 1, n, af.f) != n) {
        ap_atomic_abort(&af);
        return ap_seterr(c, AP_ERR_IO, "%s: cannot write", path);
    }
    return ap_atomic_commit(c, &af);
}

char *ap_read_file(ap_ctx *c, const char *path, size_t max, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        ap_seterr(c, AP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    size_t cap = 0, n = 0, r;
    do { /* grows as it reads: works for pipes and files that change size */
        if (n == cap) {
            if (cap >= max) {
                free(buf);
                fclose(f);
                ap_seterr(c, AP_ERR_IO, "%s: larger than %zu bytes", path, max);
                return NULL;
            }
            cap = cap ? (2 * cap < max ? 2 * cap : max) : (65536 < max ? 65536 : max);
            char *t = realloc(buf, cap + 1);
            if (!t) {
                free(buf);
                fclose(f);
                ap_seterr(c, AP_ERR_NOMEM, "%s: out of memory", path);
                return NULL;
            }
            buf = t;
        }
        r = fread(buf + n, 1, cap - n, f);
        n += r;
    } while (r > 0);
    bool bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        ap_seterr(c, AP_ERR_IO, "%s: cannot read", path);
        return NULL;
    }
    if (!buf && !(buf = malloc(1))) {
        ap_seterr(c, AP_ERR_NOMEM, "%s: out of memory", path);
        return NULL;
    }
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}
