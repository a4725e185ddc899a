/* Checkpoint directories and run-directory logs shared by the trainers. */
#include "train/checkpoint.h"

#include "core/internal.h"
#include "io/atomic.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

int ap_rm_tree(const char *path) {
    struct stat sb;
    if (lstat(path, &sb) != 0) return errno == ENOENT ? 0 : -1;
    if (!S_ISDIR(sb.st_mode)) return unlink(path);
    DIR *d = opendir(path);
    if (!d) return -1;
    struct dirent *e;
    char sub[4096];
    int rc = 0;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
        if (ap_rm_tree(sub) != 0) rc = -1;
    }
    closedir(d);
    return rc == 0 ? rmdir(path) : -1;
}

static int fsync_path(const char *path) {
    int fd = open(path, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* "step_" followed by digits only (so "step_000004.tmp" is not one) -> step, else -1. */
static int64_t ckpt_step_of(const char *name) {
    if (strncmp(name, "step_", 5) != 0 || !name[5]) return -1;
    int64_t v = 0;
    for (const char *p = name + 5; *p; p++) {
        if (*p < '0' || *p > '9' || v > 100000000) return -1;
        v = v * 10 + (*p - '0');
    }
    return v;
}

int ap_ckpt_list(const char *dir, int64_t **steps) {
    *steps = NULL;
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0, cap = 0;
    struct dirent *e;
    char p[4096];
    while ((e = readdir(d))) {
        int64_t s = ckpt_step_of(e->d_name);
        if (s < 0) continue;
        snprintf(p, sizeof p, "%s/%s/DONE", dir, e->d_name);
        if (access(p, F_OK) != 0) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            int64_t *t = realloc(*steps, sizeof *t * (size_t)cap);
            if (!t) {
                free(*steps);
                *steps = NULL;
                closedir(d);
                return -1;
            }
            *steps = t;
        }
        (*steps)[n++] = s;
    }
    closedir(d);
    for (int i = 1; i < n; i++) /* insertion sort: a handful of entries */
        for (int j = i; j > 0 && (*steps)[j - 1] > (*steps)[j]; j--) {
            int64_t t = (*steps)[j];
            (*steps)[j] = (*steps)[j - 1];
            (*steps)[j - 1] = t;
        }
    return n;
}

ap_status ap_ckpt_begin(ap_ctx *c, const char *run_dir, int64_t step, char *tmp, size_t n) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/checkpoints", run_dir);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return ap_seterr(c, AP_ERR_IO, "%s: cannot create: %s", dir, strerror(errno));
    snprintf(tmp, n, "%s/step_%06lld.tmp", dir, (long long)step);
    if (ap_rm_tree(tmp) != 0 || mkdir(tmp, 0755) != 0)
        return ap_seterr(c, AP_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    return AP_OK;
}

ap_status ap_ckpt_commit(ap_ctx *c, const char *run_dir, int64_t step, const char *tmp, int keep,
                         const ap_json *state) {
    char dir[4096], fin[4200], p[4400];
    snprintf(dir, sizeof dir, "%s/checkpoints", run_dir);
    snprintf(fin, sizeof fin, "%s/step_%06lld", dir, (long long)step);
    snprintf(p, sizeof p, "%s/state.json", tmp);
    ap_status st = ap_failed(c) ? c->status : state ? ap_json_save(c, p, state, true) : AP_OK;
    snprintf(p, sizeof p, "%s/DONE", tmp);
    if (st == AP_OK) st = ap_write_file(c, p, "complete\n", 9);
    /* a leftover final directory can only be an incomplete one from a crashed run */
    if (st == AP_OK && (fsync_path(tmp) != 0 || ap_rm_tree(fin) != 0 || rename(tmp, fin) != 0 || fsync_path(dir) != 0))
        st = ap_seterr(c, AP_ERR_IO, "%s: cannot complete the checkpoint: %s", fin, strerror(errno));
    if (st != AP_OK) {
        ap_rm_tree(tmp);
        return st;
    }
    if (keep > 0) {
        int64_t *steps;
        int k = ap_ckpt_list(dir, &steps);
        for (int i = 0; i < k - keep; i++) {
            snprintf(p, sizeof p, "%s/step_%06lld", dir, (long long)steps[i]);
            ap_rm_tree(p);
        }
        free(steps);
    }
    return AP_OK;
}

ap_status ap_ckpt_latest(ap_ctx *c, const char *run_dir, const char *who, char *out, size_t n, int64_t *step) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/checkpoints", run_dir);
    int64_t *steps;
    int k = ap_ckpt_list(dir, &steps);
    if (k < 0) return ap_seterr(c, AP_ERR_NOMEM, "out of memory");
    if (k == 0) return ap_seterr(c, AP_ERR_NOT_FOUND, "%s --resume: no complete checkpoint in %s", who, dir);
    *step = steps[k - 1];
    free(steps);
    snprintf(out, n, "%s/step_%06lld", dir, (long long)*step);
    return AP_OK;
}

void ap_hex_encode(const uint8_t *b, size_t n, char *out) {
    static const char H[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = H[b[i] >> 4];
        out[2 * i + 1] = H[b[i] & 15];
    }
    out[2 * n] = 0;
}

int ap_hex_decode(const char *s, uint8_t *out, size_t n) {
    if (!s || strlen(s) != 2 * n) return 0;
    for (size_t i = 0; i < 2 * n; i++) {
        char ch = s[i];
        int v = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
        if (v < 0) return 0;
        if (i & 1) out[i / 2] |= (uint8_t)v;
        else out[i / 2] = (uint8_t)(v << 4);
    }
    return 1;
}

ap_status ap_log_trim(ap_ctx *c, const char *path, int64_t upto) {
    if (access(path, F_OK) != 0) return AP_OK; /* nothing logged yet */
    size_t len = 0;
    char *text = ap_read_file(c, path, (size_t)1 << 30, &len);
    if (!text) return c->status;
    ap_atomic_file af;
    ap_status st = ap_atomic_open(c, path, &af);
    if (st != AP_OK) {
        free(text);
        return st;
    }
    for (char *line = text; st == AP_OK && *line;) {
        char *nl = strchr(line, '\n');
        size_t n = nl ? (size_t)(nl - line + 1) : strlen(line);
        long long s = 0;
        if (sscanf(line, "{\"step\": %lld", &s) == 1 && s <= upto && nl && fwrite(line, 1, n, af.f) != n)
            st = ap_seterr(c, AP_ERR_IO, "%s: cannot write", path);
        line += n;
    }
    free(text);
    if (st == AP_OK) return ap_atomic_commit(c, &af);
    ap_atomic_abort(&af);
    return st;
}

ap_status ap_ckpt_check_config(ap_ctx *c, const char *who, const char *path, const ap_json *saved, const ap_json *cur,
                               const char *const *keys, int n) {
    if (ap_failed(c)) return c->status;
    for (int i = 0; i < n && !ap_failed(c); i++) {
        char *a = ap_json_print(ap_json_get(saved, keys[i]), false);
        char *b = ap_json_print(ap_json_get(cur, keys[i]), false);
        if (!a || !b || strcmp(a, b) != 0)
            ap_seterr(c, AP_ERR_INVALID_ARG, "%s --resume: the checkpoint %s was made with %s = %s, this run has %s = %s",
                      who, path, keys[i], a ? a : "(none)", keys[i], b ? b : "(none)");
        ap_json_free_str(a);
        ap_json_free_str(b);
    }
    return c->status;
}
