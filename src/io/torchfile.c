/* PyTorch zip checkpoints (see torchfile.h). */
#include "io/torchfile.h"

#include "core/internal.h"
#include "io/pickle.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zip.h>

#define NO_OFFSET UINT64_MAX

typedef struct {
    int64_t entry;     /* zip index of the storage entry */
    uint64_t data_off; /* offset of its bytes in the file when stored and verified, else NO_OFFSET */
} tensor_src;

struct ap_torchfile {
    char *path;               /* as given, for messages */
    const uint8_t *data;      /* the whole file */
    size_t size;
    int mapped;               /* data is our mmap */
    zip_t *zip;
    pthread_mutex_t zip_lock; /* libzip handles are not thread-safe */
    int direct;               /* read stored entries from the mapping */
    ap_pk_state st;
    tensor_src *src;          /* [st.count] */
    int *hash;                /* name -> index, open addressing, -1 empty */
    size_t hash_cap;
};

/* ------------------------------------------------------------ helpers */
static uint64_t rd(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static uint64_t fnv1a(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static int build_hash(ap_torchfile *pt) {
    size_t cap = 16;
    while (cap < (size_t)pt->st.count * 2) cap *= 2;
    pt->hash = malloc(cap * sizeof *pt->hash);
    if (!pt->hash) return -1;
    for (size_t i = 0; i < cap; i++) pt->hash[i] = -1;
    pt->hash_cap = cap;
    for (int i = 0; i < pt->st.count; i++) {
        size_t h = (size_t)fnv1a(pt->st.tensors[i].name) & (cap - 1);
        while (pt->hash[h] >= 0) h = (h + 1) & (cap - 1);
        pt->hash[h] = i;
    }
    return 0;
}

static bool is_float(ap_pk_dtype d) { return d <= AP_PK_F64; }

/* ------------------------------------------------------------ the central directory
 * libzip validates the archive and reads compressed entries, but does not say
 * where an entry's bytes start. We find the local header offsets ourselves and
 * accept them only when every entry agrees with libzip (name, sizes, method);
 * anything else leaves direct reads off and libzip reads every entry. */
static int central_offsets(const ap_torchfile *pt, uint64_t *lho /* [n] */, int64_t n) {
    const uint8_t *d = pt->data;
    size_t size = pt->size;
    if (size < 22) return -1;
    size_t lo = size - 22 > 65535 ? size - 22 - 65535 : 0, eocd = SIZE_MAX;
    for (size_t p = size - 22 + 1; p-- > lo;) {
        if (rd(d + p, 4) == 0x06054b50 && p + 22 + rd(d + p + 20, 2) <= size) {
            eocd = p;
            break;
        }
    }
    if (eocd == SIZE_MAX) return -1;
    uint64_t count = rd(d + eocd + 10, 2), cd_size = rd(d + eocd + 12, 4), cd_off = rd(d + eocd + 16, 4);
    if (eocd >= 20 && rd(d + eocd - 20, 4) == 0x07064b50) { /* ZIP64 locator */
        uint64_t z = rd(d + eocd - 20 + 8, 8);
        if (z > size || size - z < 56 || rd(d + z, 4) != 0x06064b50) return -1;
        count = rd(d + z + 32, 8);
        cd_size = rd(d + z + 40, 8);
        cd_off = rd(d + z + 48, 8);
    }
    if (count != (uint64_t)n || cd_off > size || cd_size > size - cd_off) return -1;
    uint64_t p = cd_off, end = cd_off + cd_size;
    for (int64_t i = 0; i < n; i++) {
        if (end - p < 46 || rd(d + p, 4) != 0x02014b50) return -1;
        uint64_t method = rd(d + p + 10, 2), csize = rd(d + p + 20, 4), usize = rd(d + p + 24, 4);
        uint64_t nlen = rd(d + p + 28, 2), elen = rd(d + p + 30, 2), clen = rd(d + p + 32, 2);
        uint64_t off = rd(d + p + 42, 4);
        if (end - p - 46 < nlen + elen + clen) return -1;
        const uint8_t *name = d + p + 46, *ex = name + nlen, *ex_end = ex + elen;
        while (ex_end - ex >= 4) { /* ZIP64 extended information: only the fields that overflowed */
            uint64_t id = rd(ex, 2), sz = rd(ex + 2, 2);
            const uint8_t *f = ex + 4;
            if ((uint64_t)(ex_end - f) < sz) return -1;
            if (id == 1) {
                const uint8_t *fe = f + sz;
                if (usize == 0xffffffff) { if (fe - f < 8) return -1; usize = rd(f, 8); f += 8; }
                if (csize == 0xffffffff) { if (fe - f < 8) return -1; csize = rd(f, 8); f += 8; }
                if (off == 0xffffffff) { if (fe - f < 8) return -1; off = rd(f, 8); }
            }
            ex += 4 + sz;
        }
        const char *zname = zip_get_name(pt->zip, (zip_uint64_t)i, ZIP_FL_ENC_RAW);
        zip_stat_t zs;
        if (!zname || strlen(zname) != nlen || memcmp(zname, name, nlen) ||
            zip_stat_index(pt->zip, (zip_uint64_t)i, 0, &zs) || !(zs.valid & ZIP_STAT_SIZE) ||
            !(zs.valid & ZIP_STAT_COMP_SIZE) || zs.size != usize || zs.comp_size != csize ||
            ((zs.valid & ZIP_STAT_COMP_METHOD) && zs.comp_method != (int32_t)method))
            return -1;
        lho[i] = off;
        p += 46 + nlen + elen + clen;
    }
    return 0;
}

/* Where a stored entry's bytes start, from its local header (whose name and
 * extra lengths differ from the central ones: torch pads the extra field so
 * the data is 64-byte aligned). */
static uint64_t stored_data_offset(const ap_torchfile *pt, uint64_t lho, const char *name, uint64_t nbytes) {
    const uint8_t *d = pt->data;
    size_t nl = strlen(name);
    if (lho > pt->size || pt->size - lho < 30 || rd(d + lho, 4) != 0x04034b50 || rd(d + lho + 8, 2) != 0)
        return NO_OFFSET;
    uint64_t nlen = rd(d + lho + 26, 2), elen = rd(d + lho + 28, 2);
    if (nlen != nl || pt->size - lho - 30 < nlen + elen || memcmp(d + lho + 30, name, nl)) return NO_OFFSET;
    uint64_t off = lho + 30 + nlen + elen;
    if (pt->size - off < nbytes) return NO_OFFSET;
    return off;
}

/* ------------------------------------------------------------ reading entries through libzip */
/* Reads the first n bytes of entry idx into buf. */
static ap_status zip_read(ap_ctx *c, ap_torchfile *pt, int64_t idx, void *buf, uint64_t n) {
    const char *what = zip_get_name(pt->zip, (zip_uint64_t)idx, 0);
    if (!what) what = "?";
    pthread_mutex_lock(&pt->zip_lock);
    ap_status s = AP_OK;
    zip_file_t *f = zip_fopen_index(pt->zip, (zip_uint64_t)idx, 0);
    if (!f) {
        s = ap_seterr(c, AP_ERR_FORMAT, "%s: cannot open zip entry '%s': %s", pt->path, what,
                      zip_strerror(pt->zip));
    } else {
        uint64_t got = 0;
        while (got < n) {
            zip_int64_t r = zip_fread(f, (char *)buf + got, n - got);
            if (r < 0) {
                s = ap_seterr(c, AP_ERR_FORMAT, "%s: cannot read zip entry '%s': %s", pt->path, what,
                              zip_file_strerror(f));
                break;
            }
            if (r == 0) {
                s = ap_seterr(c, AP_ERR_FORMAT, "%s: zip entry '%s' ends after %llu of %llu bytes", pt->path,
                              what, (unsigned long long)got, (unsigned long long)n);
                break;
            }
            got += (uint64_t)r;
        }
        zip_fclose(f);
    }
    pthread_mutex_unlock(&pt->zip_lock);
    return s;
}

/* ------------------------------------------------------------ open */
static ap_status fail(ap_ctx *c, ap_torchfile *pt, ap_status s) {
    ap_pt_close(pt);
    return s;
}

static ap_status open_common(ap_ctx *c, ap_torchfile *pt, ap_torchfile **out) {
    const char *path = pt->path;
    const uint8_t *d = pt->data;
    /* pre-1.6 files are a bare pickle stream (magic number 0x1950a86a20f9469cfc6c
     * first) or, older still, a tar archive */
    if ((pt->size >= 2 && d[0] == 0x80 && d[1] <= 5) || (pt->size >= 262 && !memcmp(d + 257, "ustar", 5)))
        return fail(c, pt, ap_seterr(c, AP_ERR_UNSUPPORTED,
                                     "%s: legacy PyTorch format (before torch 1.6, not a zip archive) is not "
                                     "supported; re-save it with a newer torch.save or convert it to safetensors",
                                     path));
    if (pt->size < 4 || memcmp(d, "PK", 2))
        return fail(c, pt, ap_seterr(c, AP_ERR_FORMAT, "%s: not a PyTorch checkpoint (not a zip archive)", path));
    zip_error_t ze;
    zip_error_init(&ze);
    zip_source_t *zsrc = zip_source_buffer_create(d, pt->size, 0, &ze);
    if (zsrc) {
        pt->zip = zip_open_from_source(zsrc, ZIP_RDONLY | ZIP_CHECKCONS, &ze);
        if (!pt->zip) zip_source_free(zsrc);
    }
    if (!pt->zip) {
        ap_seterr(c, AP_ERR_FORMAT, "%s: not a valid zip archive (truncated or corrupt?): %s", path,
                  zip_error_strerror(&ze));
        zip_error_fini(&ze);
        return fail(c, pt, c->status);
    }
    zip_error_fini(&ze);

    /* the archive prefix: "<prefix>data.pkl" */
    int64_t n = zip_get_num_entries(pt->zip, 0), pkl = -1;
    for (int64_t i = 0; i < n; i++) {
        const char *nm = zip_get_name(pt->zip, (zip_uint64_t)i, 0);
        size_t l = nm ? strlen(nm) : 0;
        if (l >= 8 && !strcmp(nm + l - 8, "data.pkl") && (l == 8 || nm[l - 9] == '/')) {
            if (pkl >= 0)
                return fail(c, pt, ap_seterr(c, AP_ERR_FORMAT, "%s: several data.pkl entries ('%s' and '%s')",
                                             path, zip_get_name(pt->zip, (zip_uint64_t)pkl, 0), nm));
            pkl = i;
        }
    }
    if (pkl < 0)
        return fail(c, pt, ap_seterr(c, AP_ERR_FORMAT,
                                     "%s: zip archive without a data.pkl entry: not a PyTorch checkpoint", path));
    const char *pkl_name = zip_get_name(pt->zip, (zip_uint64_t)pkl, 0);
    size_t plen = strlen(pkl_name) - 8;
    char *prefix = strndup(pkl_name, plen);
    if (!prefix) return fail(c, pt, ap_seterr(c, AP_ERR_NOMEM, "%s: out of memory", path));

    /* storages are little-endian unless a byteorder entry says otherwise */
    char ename[512];
    snprintf(ename, sizeof ename, "%sbyteorder", prefix);
    int64_t bo = zip_name_locate(pt->zip, ename, 0);
    if (bo >= 0) {
        zip_stat_t zs;
        char buf[16] = {0};
        if (zip_stat_index(pt->zip, (zip_uint64_t)bo, 0, &zs) || zs.size >= sizeof buf ||
            zip_read(c, pt, bo, buf, zs.size) || strcmp(buf, "little")) {
            free(prefix);
            if (!ap_failed(c))
                ap_seterr(c, AP_ERR_UNSUPPORTED, "%s: storages are not little-endian (byteorder '%s')", path, buf);
            return fail(c, pt, c->status);
        }
    }

    /* data.pkl */
    zip_stat_t zs;
    if (zip_stat_index(pt->zip, (zip_uint64_t)pkl, 0, &zs) || !(zs.valid & ZIP_STAT_SIZE)) {
        free(prefix);
        return fail(c, pt, ap_seterr(c, AP_ERR_FORMAT, "%s: cannot stat '%s'", path, pkl_name));
    }
    if (zs.size > AP_PK_MAX_BYTES) {
        free(prefix);
        return fail(c, pt, ap_seterr(c, AP_ERR_UNSUPPORTED, "%s: data.pkl is %llu bytes (at most %u MiB are read)",
                                     path, (unsigned long long)zs.size, AP_PK_MAX_BYTES >> 20));
    }
    uint8_t *pk = malloc(zs.size ? zs.size : 1);
    if (!pk) {
        free(prefix);
        return fail(c, pt, ap_seterr(c, AP_ERR_NOMEM, "%s: out of memory", path));
    }
    if (zip_read(c, pt, pkl, pk, zs.size) || ap_pk_load_state(c, path, pk, zs.size, &pt->st)) {
        free(pk);
        free(prefix);
        return fail(c, pt, c->status);
    }
    free(pk);

    /* each tensor's storage entry, and where its bytes are */
    uint64_t *lho = n > 0 ? malloc((size_t)n * sizeof *lho) : NULL;
    bool have_offsets = lho && central_offsets(pt, lho, n) == 0;
    pt->src = calloc((size_t)pt->st.count + 1, sizeof *pt->src);
    if (!pt->src || build_hash(pt)) {
        free(lho);
        free(prefix);
        return fail(c, pt, ap_seterr(c, AP_ERR_NOMEM, "%s: out of memory", path));
    }
    ap_status s = AP_OK;
    for (int i = 0; i < pt->st.count && s == AP_OK; i++) {
        const ap_pk_tensor *t = &pt->st.tensors[i];
        snprintf(ename, sizeof ename, "%sdata/%s", prefix, t->storage_key);
        int64_t e = zip_name_locate(pt->zip, ename, 0);
        zip_stat_t es;
        if (e < 0) {
            s = ap_seterr(c, AP_ERR_FORMAT, "%s: tensor '%s': storage entry '%s' is missing", path, t->name, ename);
        } else if (zip_stat_index(pt->zip, (zip_uint64_t)e, 0, &es) || !(es.valid & ZIP_STAT_SIZE)) {
            s = ap_seterr(c, AP_ERR_FORMAT, "%s: cannot stat '%s'", path, ename);
        } else if (es.size < t->storage_bytes) {
            s = ap_seterr(c, AP_ERR_FORMAT, "%s: tensor '%s': storage entry '%s' holds %llu bytes, its storage %llu",
                          path, t->name, ename, (unsigned long long)es.size, (unsigned long long)t->storage_bytes);
        } else if ((es.valid & ZIP_STAT_ENCRYPTION_METHOD) && es.encryption_method != ZIP_EM_NONE) {
            s = ap_seterr(c, AP_ERR_UNSUPPORTED, "%s: zip entry '%s' is encrypted", path, ename);
        } else {
            pt->src[i].entry = e;
            pt->src[i].data_off = NO_OFFSET;
            if (have_offsets && (es.valid & ZIP_STAT_COMP_METHOD) && es.comp_method == ZIP_CM_STORE)
                pt->src[i].data_off = stored_data_offset(pt, lho[e], ename, es.size);
        }
    }
    free(lho);
    free(prefix);
    if (s != AP_OK) return fail(c, pt, s);
    *out = pt;
    return AP_OK;
}

static ap_torchfile *new_handle(ap_ctx *c, const char *path) {
    ap_torchfile *pt = calloc(1, sizeof *pt);
    if (pt) pt->path = strdup(path);
    if (!pt || !pt->path) {
        free(pt);
        ap_seterr(c, AP_ERR_NOMEM, "%s: out of memory", path);
        return NULL;
    }
    pthread_mutex_init(&pt->zip_lock, NULL);
    pt->direct = 1;
    return pt;
}

ap_status ap_pt_open(ap_ctx *c, const char *path, ap_torchfile **out) {
    if (out) *out = NULL;
    if (!c) return AP_ERR_INVALID_ARG;
    if (ap_failed(c)) return c->status;
    if (!path || !out) return ap_seterr(c, AP_ERR_INVALID_ARG, "torchfile: path and out must not be NULL");
    ap_torchfile *pt = new_handle(c, path);
    if (!pt) return c->status;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0) {
        ap_seterr(c, errno == ENOENT ? AP_ERR_NOT_FOUND : AP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        if (fd >= 0) close(fd);
        return fail(c, pt, c->status);
    }
    if (!S_ISREG(sb.st_mode) || sb.st_size == 0) {
        close(fd);
        return fail(c, pt, ap_seterr(c, AP_ERR_FORMAT, "%s: %s", path,
                                     S_ISREG(sb.st_mode) ? "empty file" : "not a regular file"));
    }
    void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return fail(c, pt, ap_seterr(c, AP_ERR_IO, "%s: cannot map: %s", path, strerror(errno)));
    pt->data = m;
    pt->size = (size_t)sb.st_size;
    pt->mapped = 1;
    return open_common(c, pt, out);
}

ap_status ap_pt_open_memory(ap_ctx *c, const char *name, const void *data, size_t len, ap_torchfile **out) {
    if (out) *out = NULL;
    if (!c) return AP_ERR_INVALID_ARG;
    if (ap_failed(c)) return c->status;
    if (!name) name = "(memory)";
    if (!out || (!data && len)) return ap_seterr(c, AP_ERR_INVALID_ARG, "torchfile: bad arguments for '%s'", name);
    ap_torchfile *pt = new_handle(c, name);
    if (!pt) return c->status;
    pt->data = data;
    pt->size = len;
    return open_common(c, pt, out);
}

void ap_pt_close(ap_torchfile *pt) {
    if (!pt) return;
    if (pt->zip) zip_discard(pt->zip);
    if (pt->mapped) munmap((void *)pt->data, pt->size);
    ap_pk_state_free(&pt->st);
    pthread_mutex_destroy(&pt->zip_lock);
    free(pt->src);
    free(pt->hash);
    free(pt->path);
    free(pt);
}

/* ------------------------------------------------------------ queries */
int ap_pt_count(const ap_torchfile *pt) { return pt ? pt->st.count : 0; }

static const ap_pk_tensor *tensor_at(const ap_torchfile *pt, int i) {
    return pt && i >= 0 && i < pt->st.count ? &pt->st.tensors[i] : NULL;
}

const char *ap_pt_name(const ap_torchfile *pt, int i) {
    const ap_pk_tensor *t = tensor_at(pt, i);
    return t ? t->name : NULL;
}

int ap_pt_find(const ap_torchfile *pt, const char *name) {
    if (!pt || !name || !pt->hash) return -1;
    for (size_t h = (size_t)fnv1a(name) & (pt->hash_cap - 1);; h = (h + 1) & (pt->hash_cap - 1)) {
        int i = pt->hash[h];
        if (i < 0) return -1;
        if (!strcmp(pt->st.tensors[i].name, name)) return i;
    }
}

const char *ap_pt_dtype(const ap_torchfile *pt, int i) {
    const ap_pk_tensor *t = tensor_at(pt, i);
    return t ? ap_pk_dtype_name(t->dtype) : NULL;
}

int ap_pt_shape(const ap_torchfile *pt, int i, int64_t *shape) {
    const ap_pk_tensor *t = tensor_at(pt, i);
    if (!t) return -1;
    if (shape) memcpy(shape, t->shape, (size_t)t->ndim * sizeof *shape);
    return t->ndim;
}

int ap_pt_strides(const ap_torchfile *pt, int i, int64_t *strides) {
    const ap_pk_tensor *t = tensor_at(pt, i);
    if (!t) return -1;
    if (strides) memcpy(strides, t->stride, (size_t)t->ndim * sizeof *strides);
    return t->ndim;
}

int64_t ap_pt_storage_offset(const ap_torchfile *pt, int i) {
    const ap_pk_tensor *t = tensor_at(pt, i);
    return t ? t->offset : -1;
}

int ap_pt_from_state_dict(const ap_torchfile *pt) { return pt ? pt->st.from_state_dict : 0; }

void ap_pt_set_direct(ap_torchfile *pt, int on) {
    if (pt) pt->direct = on != 0;
}

static int64_t numel_of(const ap_pk_tensor *t) {
    int64_t n = 1;
    for (int k = 0; k < t->ndim; k++) n *= t->shape[k];
    return n;
}

/* Row-major contiguous, ignoring the strides of size-1 dims (torch gives them any value). */
static bool contiguous(const ap_pk_tensor *t) {
    int64_t expect = 1;
    for (int k = t->ndim - 1; k >= 0; k--) {
        if (t->shape[k] == 1) continue;
        if (t->stride[k] != expect) return false;
        expect *= t->shape[k];
    }
    return true;
}

const void *ap_pt_raw(const ap_torchfile *pt, int i, size_t *nbytes) {
    const ap_pk_tensor *t = tensor_at(pt, i);
    if (nbytes) *nbytes = 0;
    if (!t || pt->src[i].data_off == NO_OFFSET || !contiguous(t)) return NULL;
    size_t el = ap_pk_dtype_size(t->dtype);
    if (nbytes) *nbytes = (size_t)numel_of(t) * el;
    return pt->data + pt->src[i].data_off + (size_t)t->offset * el;
}

/* ------------------------------------------------------------ load */
/* Copies the strided elements of t (storage at base) into dst, contiguous. */
static void gather(void *dst, const uint8_t *base, const ap_pk_tensor *t, size_t el) {
    int64_t idx[AP_MAX_DIMS] = {0};
    int nd = t->ndim;
    int64_t inner = nd ? t->shape[nd - 1] : 1, istride = nd ? t->stride[nd - 1] : 1;
    int64_t rows = numel_of(t) / (inner ? inner : 1);
    uint8_t *o = dst;
    for (int64_t r = 0; r < rows; r++) {
        int64_t off = t->offset;
        for (int k = 0; k < nd - 1; k++) off += idx[k] * t->stride[k];
        const uint8_t *s = base + (size_t)off * el;
        switch (el) {
        case 1: for (int64_t j = 0; j < inner; j++) o[j] = s[j * istride]; break;
        case 2: for (int64_t j = 0; j < inner; j++) memcpy(o + 2 * j, s + 2 * j * istride, 2); break;
        case 4: for (int64_t j = 0; j < inner; j++) memcpy(o + 4 * j, s + 4 * j * istride, 4); break;
        default: for (int64_t j = 0; j < inner; j++) memcpy(o + 8 * j, s + 8 * j * istride, 8); break;
        }
        o += (size_t)inner * el;
        for (int k = nd - 2; k >= 0; k--) { /* odometer over the outer dims */
            if (++idx[k] < t->shape[k]) break;
            idx[k] = 0;
        }
    }
}

/* ------------------------------------------------------------ float conversion
 * Float storages convert through ap_convert (exact, at memory speed), in
 * chunks short enough to stay on this thread: loading a checkpoint converts
 * tensor by tensor, and an OpenMP region per tensor ran 2-4x slower whenever
 * the shared machine was busy (one late worker stalls the region;
 * bench/torchio.c, docs/torchfile.md). f64 storages (rare: torch.double)
 * round through f32 here. Sources may be unaligned (zip data offsets need not
 * be); ap_convert accepts that. */
#define PT_CHUNK 65536
_Static_assert(PT_CHUNK <= AP_CONVERT_SERIAL_MAX, "chunks convert on the calling thread");

static void scalar_out(void *d, ap_dtype dt, int64_t i, float f) {
    if (dt == AP_F32) ((float *)d)[i] = f;
    else if (dt == AP_BF16) ((uint16_t *)d)[i] = ap_f32_to_bf16(f);
    else ((uint16_t *)d)[i] = ap_f32_to_f16(f);
}

static ap_dtype float_ap(ap_pk_dtype d) { return d == AP_PK_F32 ? AP_F32 : d == AP_PK_F16 ? AP_F16 : AP_BF16; }

/* n contiguous floating elements of src (stored sd) into dst (dt). */
static void convert_floats(void *dst, ap_dtype dt, const uint8_t *src, ap_pk_dtype sd, int64_t n) {
    if (sd == AP_PK_F64) {
        for (int64_t i = 0; i < n; i++) {
            double v;
            memcpy(&v, src + 8 * (size_t)i, 8);
            scalar_out(dst, dt, i, (float)v);
        }
        return;
    }
    size_t ss = ap_pk_dtype_size(sd), ds = ap_dtype_size(dt);
    for (int64_t i = 0; i < n; i += PT_CHUNK)
        ap_convert((char *)dst + (size_t)i * ds, dt, src + (size_t)i * ss, float_ap(sd),
                   n - i < PT_CHUNK ? n - i : PT_CHUNK);
}

/* Converts n contiguous elements of src (stored dtype of t) into dst (dt);
 * integer sources must be aligned. Integers to floats round through f32
 * (exact up to 2^24, which covers ids and counts). */
static ap_status convert(ap_ctx *c, const ap_torchfile *pt, const ap_pk_tensor *t, void *dst, ap_dtype dt,
                         const void *src, int64_t n) {
    ap_pk_dtype sd = t->dtype;
    if (is_float(sd)) {
        convert_floats(dst, dt, src, sd, n);
        return AP_OK;
    }
    for (int64_t i = 0; i < n; i++) {
        int64_t v;
        switch (sd) {
        case AP_PK_I64: v = ((const int64_t *)src)[i]; break;
        case AP_PK_I32: v = ((const int32_t *)src)[i]; break;
        case AP_PK_I16: v = ((const int16_t *)src)[i]; break;
        case AP_PK_I8: v = ((const int8_t *)src)[i]; break;
        case AP_PK_U8: v = ((const uint8_t *)src)[i]; break;
        default: v = ((const uint8_t *)src)[i] != 0; break; /* BOOL */
        }
        if (dt == AP_I64) {
            ((int64_t *)dst)[i] = v;
        } else if (dt != AP_I32) {
            scalar_out(dst, dt, i, (float)v);
        } else {
            if (v < INT32_MIN || v > INT32_MAX)
                return ap_seterr(c, AP_ERR_DTYPE, "%s: tensor '%s': element %lld = %lld does not fit in i32", pt->path,
                                 t->name, (long long)i, (long long)v);
            ((int32_t *)dst)[i] = (int32_t)v;
        }
    }
    return AP_OK;
}

ap_status ap_pt_load(ap_ctx *c, const ap_torchfile *pt, const char *name, ap_dtype dt, ap_tensor **out) {
    if (out) *out = NULL;
    if (!c) return AP_ERR_INVALID_ARG;
    if (ap_failed(c)) return c->status;
    if (!pt || !name || !out) return ap_seterr(c, AP_ERR_INVALID_ARG, "torchfile load: NULL argument");
    int i = ap_pt_find(pt, name);
    if (i < 0) return ap_seterr(c, AP_ERR_NOT_FOUND, "%s: no tensor named '%s'", pt->path, name);
    const ap_pk_tensor *t = &pt->st.tensors[i];
    bool fsrc = is_float(t->dtype), fdst = dt == AP_F32 || dt == AP_BF16 || dt == AP_F16;
    if ((unsigned)dt >= AP_DTYPE_COUNT_ || (fsrc && !fdst)) /* truncating weights is never what was meant */
        return ap_seterr(c, AP_ERR_DTYPE, "%s: tensor '%s' is stored as %s and cannot be loaded as %s", pt->path, name,
                         ap_pk_dtype_name(t->dtype), ap_dtype_name(dt));
    ap_tensor *o = ap_tensor_new(c, dt, t->ndim, t->shape);
    if (!o) return c->status;
    int64_t n = o->numel;
    size_t el = ap_pk_dtype_size(t->dtype);
    const tensor_src *s = &pt->src[i];
    uint8_t *zbuf = NULL, *tmp = NULL;
    const uint8_t *base;
    ap_status st = AP_OK;
    if (n == 0) goto done;
    if (pt->direct && s->data_off != NO_OFFSET) {
        base = pt->data + s->data_off;
    } else {
        zbuf = malloc(t->byte_end);
        if (!zbuf) {
            st = ap_seterr(c, AP_ERR_NOMEM, "%s: tensor '%s': out of memory", pt->path, name);
            goto done;
        }
        if ((st = zip_read(c, (ap_torchfile *)pt, s->entry, zbuf, t->byte_end))) goto done;
        base = zbuf;
    }
    const uint8_t *src = base + (size_t)t->offset * el;
    /* the common case, a contiguous float tensor, converts straight from the mapping */
    if (!contiguous(t) || (!fsrc && ((uintptr_t)src % el))) {
        tmp = malloc((size_t)n * el);
        if (!tmp) {
            st = ap_seterr(c, AP_ERR_NOMEM, "%s: tensor '%s': out of memory", pt->path, name);
            goto done;
        }
        if (contiguous(t)) memcpy(tmp, src, (size_t)n * el);
        else gather(tmp, base, t, el);
        src = tmp;
    }
    st = convert(c, pt, t, ap_data(o), dt, src, n);
done:
    free(zbuf);
    free(tmp);
    if (st != AP_OK) {
        ap_tensor_release(o);
        return st;
    }
    *out = o;
    return AP_OK;
}
