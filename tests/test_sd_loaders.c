/* Loading Stable Diffusion models from every layout: a diffusers folder, one
 * LDM-named safetensors file (ours, with the config in its metadata, and a
 * foreign one without), and a PyTorch .ckpt (the torch zip format, written
 * here from the model in memory: a tiny model is 10 MB of f32, too big for a
 * fixture); each must give the parameters of the model that was saved, bit
 * for bit. Then every malformed case must fail with an error that names the
 * file and, where there is one, the tensor. */
#define _GNU_SOURCE /* nftw */
#include "core/internal.h"
#include "models/sd.h"
#include "models/weights.h"
#include "test.h"

#include <ftw.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

static char root[64];

static const char *path_in(const char *rel) {
    static char buf[8][512];
    static int k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", root, rel);
    return buf[k];
}

static int rm_entry(const char *p, const struct stat *s, int flag, struct FTW *f) {
    (void)s;
    (void)flag;
    (void)f;
    return remove(p);
}
static void rm_tree(const char *p) { nftw(p, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

/* ------------------------------------------------------------ comparing models */
static const ap_params *comp(const ap_sd_model *m, int i) {
    return i == 0 ? &m->unet->params : i == 1 ? &m->vae->params : &m->text->params;
}

/* Every parameter of b equals a's converted to b's dtype, byte for byte. */
static int same_params(ap_ctx *c, const char *label, const ap_sd_model *a, const ap_sd_model *b) {
    int ok = 1;
    for (int k = 0; k < 3; k++) {
        const ap_params *pa = comp(a, k), *pb = comp(b, k);
        if (pa->n != pb->n) {
            CHECK_MSG(0, "%s: component %d has %d parameters, %d expected", label, k, pb->n, pa->n);
            return 0;
        }
        for (int i = 0; i < pa->n && ok; i++) {
            const ap_param *x = &pa->p[i], *y = &pb->p[i];
            ap_tensor *cx = ap_tensor_convert(c, x->t, ap_tensor_dtype(y->t));
            ok = !strcmp(x->name, y->name) && cx && ap_tensor_nbytes(cx) == ap_tensor_nbytes(y->t) &&
                 ap_tensor_ndim(x->t) == ap_tensor_ndim(y->t) &&
                 !memcmp(ap_tensor_cdata(cx), ap_tensor_cdata(y->t), ap_tensor_nbytes(cx));
            CHECK_MSG(ok, "%s: parameter %s differs", label, x->name);
            ap_tensor_release(cx);
        }
    }
    return ok;
}

static int same_config(const ap_sd_config *a, const ap_sd_config *b) {
    char *ja = ap_sd_config_json(a), *jb = ap_sd_config_json(b);
    int ok = ja && jb && !strcmp(ja, jb);
    if (!ok) fprintf(stderr, "config %s\n  expected %s\n", jb ? jb : "?", ja ? ja : "?");
    free(ja);
    free(jb);
    return ok;
}

static ap_sd_model *make_model(ap_ctx *c, const ap_sd_config *cfg, uint64_t seed) {
    ap_sd_model *m = NULL;
    if (ap_sd_create(c, cfg, AP_F32, &m) != AP_OK || ap_sd_init_random(c, m, seed) != AP_OK) {
        CHECK_MSG(0, "model: %s", ap_last_error(c));
        ap_sd_free(m);
        return NULL;
    }
    return m;
}

/* ------------------------------------------------------------ a PyTorch .ckpt writer
 * torch.save's layout (torch >= 1.6): a zip of stored entries archive/data.pkl
 * (pickle protocol 2), archive/data/<key> (raw little-endian storages) and
 * archive/version, each entry's data 64-byte aligned through an "FB" extra
 * field. The top level is a Lightning-style {"state_dict": OrderedDict(...),
 * "global_step": N} plus optional extra pickle bytes as one more entry. */
typedef struct {
    unsigned char *b;
    size_t n, cap;
} buf;

static void put(buf *b, const void *p, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 1024;
        b->b = realloc(b->b, b->cap);
    }
    memcpy(b->b + b->n, p, n);
    b->n += n;
}
static void put_u8(buf *b, unsigned v) { put(b, &(uint8_t){(uint8_t)v}, 1); }
static void put_u16(buf *b, unsigned v) { put(b, (uint8_t[]){(uint8_t)v, (uint8_t)(v >> 8)}, 2); }
static void put_u32(buf *b, uint32_t v) {
    put(b, (uint8_t[]){(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)}, 4);
}

static void pk_str(buf *b, const char *s) {
    put_u8(b, 'X');
    put_u32(b, (uint32_t)strlen(s));
    put(b, s, strlen(s));
}
static void pk_int(buf *b, int64_t v) {
    if (v >= 0 && v < 256) {
        put_u8(b, 'K');
        put_u8(b, (unsigned)v);
    } else {
        put_u8(b, 'J');
        put_u32(b, (uint32_t)(int32_t)v);
    }
}
static void pk_global(buf *b, const char *mod, const char *name) {
    put_u8(b, 'c');
    put(b, mod, strlen(mod));
    put_u8(b, '\n');
    put(b, name, strlen(name));
    put_u8(b, '\n');
}
static void pk_ordered_dict(buf *b) {
    pk_global(b, "collections", "OrderedDict");
    put_u8(b, ')'); /* EMPTY_TUPLE */
    put_u8(b, 'R'); /* REDUCE */
}

typedef struct {
    const char *name;
    ap_tensor *t; /* f32, f16, bf16 or i64 */
} ck_entry;

static void pk_tensor(buf *b, ap_tensor *t, int key) {
    static const char *storage[] = {[AP_F32] = "FloatStorage", [AP_BF16] = "BFloat16Storage",
                                    [AP_F16] = "HalfStorage", [AP_I32] = "IntStorage", [AP_I64] = "LongStorage"};
    char k[16];
    snprintf(k, sizeof k, "%d", key);
    pk_global(b, "torch._utils", "_rebuild_tensor_v2");
    put_u8(b, '('); /* MARK: the args */
    put_u8(b, '(');
    pk_str(b, "storage");
    pk_global(b, "torch", storage[ap_tensor_dtype(t)]);
    pk_str(b, k);
    pk_str(b, "cpu");
    pk_int(b, ap_tensor_numel(t));
    put_u8(b, 't'); /* TUPLE */
    put_u8(b, 'Q'); /* BINPERSID */
    pk_int(b, 0);   /* storage offset */
    int nd = ap_tensor_ndim(t);
    put_u8(b, '(');
    for (int i = 0; i < nd; i++) pk_int(b, ap_tensor_dim(t, i));
    put_u8(b, 't');
    put_u8(b, '(');
    for (int i = 0; i < nd; i++) {
        int64_t s = 1;
        for (int j = i + 1; j < nd; j++) s *= ap_tensor_dim(t, j);
        pk_int(b, s);
    }
    put_u8(b, 't');
    put_u8(b, 0x89); /* NEWFALSE: requires_grad */
    pk_ordered_dict(b); /* backward hooks */
    put_u8(b, 't');
    put_u8(b, 'R');
}

typedef struct {
    const char *name;
    const void *data;
    size_t n;
} zip_entry;

static int write_zip(const char *path, int n, const zip_entry *e) {
    buf z = {0}, cd = {0};
    for (int i = 0; i < n; i++) {
        size_t off = z.n, nl = strlen(e[i].name);
        size_t extra = (64 - (off + 30 + nl + 4) % 64) % 64 + 4; /* "FB" field: data 64-byte aligned */
        uint32_t crc = (uint32_t)crc32(0, e[i].data, (uInt)e[i].n);
        for (int central = 0; central < 2; central++) {
            buf *b = central ? &cd : &z;
            put_u32(b, central ? 0x02014b50 : 0x04034b50);
            if (central) put_u16(b, 20);
            put_u16(b, 20);
            put_u16(b, 0); /* flags */
            put_u16(b, 0); /* stored */
            put_u16(b, 0);
            put_u16(b, 0x21);
            put_u32(b, crc);
            put_u32(b, (uint32_t)e[i].n);
            put_u32(b, (uint32_t)e[i].n);
            put_u16(b, (unsigned)nl);
            put_u16(b, central ? 0 : (unsigned)extra);
            if (central) {
                put_u16(b, 0);
                put_u16(b, 0);
                put_u16(b, 0);
                put_u32(b, 0);
                put_u32(b, (uint32_t)off);
            }
            put(b, e[i].name, nl);
            if (!central) {
                put_u16(b, 0x4246);
                put_u16(b, (unsigned)(extra - 4));
                for (size_t k = 0; k < extra - 4; k++) put_u8(b, 'Z');
                put(b, e[i].data, e[i].n);
            }
        }
    }
    size_t cd_off = z.n;
    put(&z, cd.b, cd.n);
    put_u32(&z, 0x06054b50);
    put_u16(&z, 0);
    put_u16(&z, 0);
    put_u16(&z, (unsigned)n);
    put_u16(&z, (unsigned)n);
    put_u32(&z, (uint32_t)cd.n);
    put_u32(&z, (uint32_t)cd_off);
    put_u16(&z, 0);
    FILE *f = fopen(path, "wb");
    int ok = f && fwrite(z.b, 1, z.n, f) == z.n;
    if (f) ok &= fclose(f) == 0;
    free(z.b);
    free(cd.b);
    return ok;
}

/* extra: pickle bytes of one more top-level value (key "callbacks"), or NULL */
static int write_ckpt(const char *path, int n, const ck_entry *ts, const buf *extra) {
    buf p = {0};
    put_u8(&p, 0x80);
    put_u8(&p, 2);   /* PROTO 2 */
    put_u8(&p, '}'); /* EMPTY_DICT */
    put_u8(&p, '(');
    pk_str(&p, "state_dict");
    pk_ordered_dict(&p);
    put_u8(&p, '(');
    for (int i = 0; i < n; i++) {
        pk_str(&p, ts[i].name);
        pk_tensor(&p, ts[i].t, i);
    }
    put_u8(&p, 'u'); /* SETITEMS */
    pk_str(&p, "global_step");
    pk_int(&p, 470000);
    if (extra) {
        pk_str(&p, "callbacks");
        put(&p, extra->b, extra->n);
    }
    put_u8(&p, 'u');
    put_u8(&p, '.'); /* STOP */
    zip_entry *z = calloc((size_t)n + 2, sizeof *z);
    char(*names)[32] = calloc((size_t)n, sizeof *names);
    z[0] = (zip_entry){"archive/data.pkl", p.b, p.n};
    for (int i = 0; i < n; i++) {
        snprintf(names[i], sizeof names[i], "archive/data/%d", i);
        z[i + 1] = (zip_entry){names[i], ap_tensor_cdata(ts[i].t), ap_tensor_nbytes(ts[i].t)};
    }
    z[n + 1] = (zip_entry){"archive/version", "3\n", 2};
    int ok = write_zip(path, n + 2, z);
    free(z);
    free(names);
    free(p.b);
    return ok;
}

/* All tensors of a safetensors file (f32 as stored), in file order. */
typedef struct {
    int n;
    ck_entry *e;
    char **names;
} tensor_list;

static void list_free(tensor_list *l) {
    for (int i = 0; i < l->n; i++) {
        free(l->names[i]);
        ap_tensor_release(l->e[i].t);
    }
    free(l->names);
    free(l->e);
    memset(l, 0, sizeof *l);
}

static int list_load(ap_ctx *c, const char *path, tensor_list *l) {
    memset(l, 0, sizeof *l);
    ap_safetensors *st = NULL;
    if (ap_st_open(c, path, &st) != AP_OK) return 0;
    int n = ap_st_count(st);
    l->e = calloc((size_t)n + 4, sizeof *l->e);
    l->names = calloc((size_t)n + 4, sizeof *l->names);
    for (int i = 0; i < n; i++) {
        l->names[i] = strdup(ap_st_name(st, i));
        l->e[i].name = l->names[i];
        ap_st_load(c, st, l->names[i], AP_F32, &l->e[i].t);
        l->n++;
    }
    ap_st_close(st);
    return !ap_failed(c);
}

static int list_find(const tensor_list *l, const char *name) {
    for (int i = 0; i < l->n; i++)
        if (!strcmp(l->names[i], name)) return i;
    return -1;
}

static void list_add(tensor_list *l, const char *name, ap_tensor *t) {
    l->names[l->n] = strdup(name);
    l->e[l->n].name = l->names[l->n];
    l->e[l->n].t = t;
    l->n++;
}

/* Writes a safetensors file of the list, without metadata. */
static int list_save(ap_ctx *c, const char *path, const tensor_list *l) {
    ap_tensor **ts = malloc(sizeof *ts * (size_t)l->n);
    for (int i = 0; i < l->n; i++) ts[i] = l->e[i].t;
    ap_status st = ap_st_save(c, path, l->n, (const char *const *)l->names, ts, 0, NULL, NULL);
    free(ts);
    return st == AP_OK;
}

/* ------------------------------------------------------------ the tests */
static void expect_load_error(ap_ctx *c, const char *what, const char *path, ap_status want, const char *needle1,
                              const char *needle2) {
    ap_sd_model *m = NULL;
    ap_status st = ap_sd_load(c, path, AP_F32, &m);
    const char *msg = ap_last_error(c);
    printf("  %-34s -> %s\n", what, msg);
    CHECK_MSG(st != AP_OK && m == NULL, "%s: loaded", what);
    CHECK_MSG(want == AP_OK || st == want, "%s: status %s, expected %s", what, ap_strerror(st), ap_strerror(want));
    CHECK_MSG(strstr(msg, needle1) != NULL, "%s: '%s' does not name '%s'", what, msg, needle1);
    CHECK_MSG(!needle2 || strstr(msg, needle2) != NULL, "%s: '%s' does not name '%s'", what, msg, needle2);
    ap_sd_free(m);
    ap_clear_error(c);
}

static ap_sd_model *load_ok(ap_ctx *c, const char *what, const char *path, ap_dtype wdt, ap_sd_format fmt) {
    ap_sd_model *m = NULL;
    CHECK_MSG(ap_sd_load(c, path, wdt, &m) == AP_OK, "%s: %s", what, ap_last_error(c));
    ap_clear_error(c);
    if (m) CHECK_MSG(m->format == fmt, "%s: format %s, expected %s", what, ap_sd_format_name(m->format),
                     ap_sd_format_name(fmt));
    return m;
}

static void test_good_layouts(ap_ctx *c, ap_sd_model *ref) {
    ap_sd_model *d = load_ok(c, "diffusers folder", path_in("tiny"), AP_F32, AP_SD_FORMAT_DIFFUSERS);
    if (d) {
        CHECK(same_config(&ref->cfg, &d->cfg));
        same_params(c, "diffusers folder", ref, d);
        int32_t ids[77];
        CHECK(d->tok && ap_tokenize_seq(c, d->tok, "a photo of a cat", NULL, ids, NULL) == AP_OK && ids[2] == 1125 &&
              ids[5] == 2368 && ids[6] == 49407);
    }
    ap_sd_model *s = load_ok(c, "LDM safetensors", path_in("tiny/model.safetensors"), AP_F32,
                             AP_SD_FORMAT_LDM_SAFETENSORS);
    if (s) {
        CHECK(same_config(&ref->cfg, &s->cfg));
        same_params(c, "LDM safetensors", ref, s);
    }
    if (d && s) same_params(c, "diffusers vs single file", d, s);
    ap_sd_free(d);
    ap_sd_free(s);
    /* frozen weights held in bf16: the same values rounded */
    ap_sd_model *b = load_ok(c, "diffusers folder as bf16", path_in("tiny"), AP_BF16, AP_SD_FORMAT_DIFFUSERS);
    if (b) {
        CHECK(ap_tensor_dtype(b->unet->conv_in.w) == AP_BF16 && ap_tensor_dtype(b->unet->conv_in.b) == AP_F32);
        same_params(c, "diffusers folder as bf16", ref, b);
    }
    ap_sd_free(b);
    b = load_ok(c, "LDM safetensors as bf16", path_in("tiny/model.safetensors"), AP_BF16, AP_SD_FORMAT_LDM_SAFETENSORS);
    if (b) same_params(c, "LDM safetensors as bf16", ref, b);
    ap_sd_free(b);
}

/* A checkpoint as people have them: LDM names in a state_dict, with keys that
 * are no weights (schedule buffers, position_ids, EMA bookkeeping). */
static void add_extras(ap_ctx *c, tensor_list *l) {
    ap_tensor *acp = ap_tensor_zeros(c, AP_F32, 1, (int64_t[]){1000});
    ap_tensor *pid = ap_tensor_new(c, AP_I64, 2, (int64_t[]){1, 77});
    for (int i = 0; i < 77; i++) ((int64_t *)ap_tensor_data(pid))[i] = i;
    ap_tensor *decay = ap_tensor_from_data(c, AP_F32, 1, (int64_t[]){1}, (float[]){0.9999f});
    list_add(l, "alphas_cumprod", acp);
    list_add(l, "cond_stage_model.transformer.text_model.embeddings.position_ids", pid);
    list_add(l, "model_ema.decay", decay);
}

static void test_ckpt(ap_ctx *c, ap_sd_model *ref) {
    tensor_list l;
    CHECK_MSG(list_load(c, path_in("tiny/model.safetensors"), &l), "%s", ap_last_error(c));
    add_extras(c, &l);
    CHECK(write_ckpt(path_in("tiny.ckpt"), l.n, l.e, NULL));
    ap_sd_model *m = load_ok(c, ".ckpt", path_in("tiny.ckpt"), AP_F32, AP_SD_FORMAT_LDM_CKPT);
    if (m) {
        /* no metadata in a .ckpt: the layout comes from the shapes, heads and groups from the tiny preset */
        CHECK(same_config(&ref->cfg, &m->cfg));
        same_params(c, ".ckpt", ref, m);
    }
    ap_sd_free(m);
    /* a foreign safetensors file: the same tensors without our metadata */
    CHECK(list_save(c, path_in("foreign.safetensors"), &l));
    m = load_ok(c, "foreign LDM safetensors", path_in("foreign.safetensors"), AP_F32, AP_SD_FORMAT_LDM_SAFETENSORS);
    if (m) {
        CHECK(same_config(&ref->cfg, &m->cfg));
        same_params(c, "foreign LDM safetensors", ref, m);
    }
    ap_sd_free(m);

    /* malformed checkpoints */
    const char *gone = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight";
    int k = list_find(&l, gone);
    CHECK(k >= 0);
    if (k >= 0) {
        ck_entry e = l.e[k];
        l.e[k] = l.e[l.n - 1];
        l.n--;
        CHECK(write_ckpt(path_in("missing.ckpt"), l.n, l.e, NULL));
        expect_load_error(c, ".ckpt missing a tensor", path_in("missing.ckpt"), AP_ERR_NOT_FOUND, "missing.ckpt", gone);
        l.n++;
        l.e[l.n - 1] = l.e[k];
        l.e[k] = e;
    }
    const char *bent = "first_stage_model.decoder.up.0.block.0.conv1.weight";
    k = list_find(&l, bent);
    CHECK(k >= 0);
    if (k >= 0) {
        ap_tensor *orig = l.e[k].t;
        int64_t s0 = ap_tensor_dim(orig, 0), s1 = ap_tensor_dim(orig, 1);
        l.e[k].t = ap_reshape(c, orig, 4, (int64_t[]){s1, s0, 3, 3}); /* [out,in] swapped */
        CHECK(write_ckpt(path_in("shape.ckpt"), l.n, l.e, NULL));
        expect_load_error(c, ".ckpt with a wrong shape", path_in("shape.ckpt"), AP_ERR_SHAPE, "shape.ckpt", bent);
        ap_tensor_release(l.e[k].t);
        l.e[k].t = orig;
    }
    /* a callback object smuggled into an otherwise good checkpoint: os.system("...") */
    buf evil = {0};
    pk_global(&evil, "os", "system");
    put_u8(&evil, '(');
    pk_str(&evil, "echo owned > /tmp/ap_sd_owned");
    put_u8(&evil, 't');
    put_u8(&evil, 'R');
    CHECK(write_ckpt(path_in("evil.ckpt"), l.n, l.e, &evil));
    free(evil.b);
    unlink("/tmp/ap_sd_owned");
    expect_load_error(c, ".ckpt with a forbidden global", path_in("evil.ckpt"), AP_ERR_UNSUPPORTED, "evil.ckpt",
                      "forbidden global 'os system'");
    CHECK(access("/tmp/ap_sd_owned", F_OK) != 0);
    /* truncated: the good file cut in the middle of the storages (no central directory) */
    CHECK(truncate(path_in("tiny.ckpt"), 4 << 20) == 0);
    expect_load_error(c, "truncated .ckpt", path_in("tiny.ckpt"), AP_OK, "tiny.ckpt", "zip");
    list_free(&l);
}

/* A layout that is no preset: heads and groups follow the SD1.x conventions. */
static void test_custom_layout(ap_ctx *c) {
    ap_sd_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.unet = (ap_unet_config){.in_channels = 4, .out_channels = 4, .levels = 3, .block_out = {32, 64, 64},
                                .attention = {1, 1, 0}, .layers_per_block = 2, .heads = 8, .context_dim = 64,
                                .norm_groups = 32};
    cfg.vae = (ap_vae_config){.in_channels = 3, .out_channels = 3, .latent_channels = 4, .levels = 2,
                              .block_out = {32, 64}, .layers_per_block = 1, .norm_groups = 32,
                              .scaling_factor = 0.18215f};
    cfg.text = (ap_clip_text_config){.vocab = 1000, .max_positions = 77, .width = 64, .layers = 1, .heads = 1,
                                     .intermediate = 128, .act = AP_ACT_QUICK_GELU, .eps = 1e-5f};
    ap_sd_model *ref = make_model(c, &cfg, 9);
    if (!ref) return;
    CHECK(ap_sd_save_ldm(c, ref, path_in("custom.safetensors")) == AP_OK);
    tensor_list l;
    CHECK_MSG(list_load(c, path_in("custom.safetensors"), &l), "%s", ap_last_error(c));
    CHECK(write_ckpt(path_in("custom.ckpt"), l.n, l.e, NULL));
    list_free(&l);
    ap_sd_model *m = load_ok(c, "custom layout .ckpt", path_in("custom.ckpt"), AP_F32, AP_SD_FORMAT_LDM_CKPT);
    if (m) {
        CHECK(same_config(&ref->cfg, &m->cfg));
        same_params(c, "custom layout .ckpt", ref, m);
    }
    ap_sd_free(m);
    ap_sd_free(ref);
}

/* Rewrites a safetensors file of the folder: without `drop`, or with `bend` reshaped. */
static void mutate(ap_ctx *c, const char *path, const char *drop, const char *bend) {
    tensor_list l;
    CHECK_MSG(list_load(c, path, &l), "%s", ap_last_error(c));
    int k = list_find(&l, drop ? drop : bend);
    CHECK(k >= 0);
    if (k >= 0 && drop) {
        ck_entry e = l.e[k];
        l.e[k] = l.e[l.n - 1];
        l.e[l.n - 1] = e;
        char *nm = l.names[k];
        l.names[k] = l.names[l.n - 1];
        l.names[l.n - 1] = nm;
        list_save(c, path, &(tensor_list){l.n - 1, l.e, l.names});
    } else if (k >= 0) {
        ap_tensor *t = l.e[k].t;
        l.e[k].t = ap_reshape(c, t, 2, (int64_t[]){ap_tensor_dim(t, 1), ap_tensor_dim(t, 0)});
        ap_tensor_release(t);
        list_save(c, path, &l);
    }
    list_free(&l);
    CHECK_OK(c);
}

static void test_malformed_folders(ap_ctx *c, ap_sd_model *ref) {
    const char *dir = path_in("bad");
    /* a missing tensor */
    CHECK(ap_sd_save_diffusers(c, ref, dir) == AP_OK);
    const char *gone = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight";
    mutate(c, path_in("bad/unet/diffusion_pytorch_model.safetensors"), gone, NULL);
    expect_load_error(c, "folder missing a tensor", dir, AP_ERR_NOT_FOUND,
                      "bad/unet/diffusion_pytorch_model.safetensors", gone);
    /* a wrong shape */
    CHECK(ap_sd_save_diffusers(c, ref, dir) == AP_OK);
    const char *bent = "text_model.encoder.layers.1.mlp.fc2.weight";
    mutate(c, path_in("bad/text_encoder/model.safetensors"), NULL, bent);
    expect_load_error(c, "folder with a wrong shape", dir, AP_ERR_SHAPE, "bad/text_encoder/model.safetensors", bent);
    /* a truncated safetensors file */
    CHECK(ap_sd_save_diffusers(c, ref, dir) == AP_OK);
    CHECK(truncate(path_in("bad/vae/diffusion_pytorch_model.safetensors"), 100000) == 0);
    expect_load_error(c, "truncated safetensors", dir, AP_OK, "bad/vae/diffusion_pytorch_model.safetensors",
                      "truncated");
    /* a component's config missing */
    CHECK(ap_sd_save_diffusers(c, ref, dir) == AP_OK);
    CHECK(unlink(path_in("bad/vae/config.json")) == 0);
    expect_load_error(c, "folder without vae/config.json", dir, AP_OK, "bad/vae/config.json", NULL);
    /* no model_index.json: not a diffusers folder */
    CHECK(ap_sd_save_diffusers(c, ref, dir) == AP_OK);
    CHECK(unlink(path_in("bad/model_index.json")) == 0);
    expect_load_error(c, "folder without model_index.json", dir, AP_ERR_FORMAT, "bad", "model_index.json");
    rm_tree(dir);
    expect_load_error(c, "no such path", dir, AP_ERR_NOT_FOUND, "bad", NULL);

    /* the LDM single file: a missing tensor, a wrong shape, truncated */
    const char *file = path_in("bad.safetensors");
    CHECK(ap_sd_save_ldm(c, ref, file) == AP_OK);
    const char *lgone = "first_stage_model.decoder.mid.attn_1.q.weight";
    tensor_list l;
    CHECK(list_load(c, file, &l));
    int k = list_find(&l, lgone);
    CHECK(k >= 0);
    /* keep the metadata (the config): only the tensor is missing */
    ap_safetensors *st = NULL;
    CHECK(ap_st_open(c, file, &st) == AP_OK);
    char *cfg = st ? strdup(ap_st_metadata(st, "alignprop_config")) : NULL;
    ap_st_close(st);
    if (k >= 0 && cfg) {
        ap_tensor **ts = malloc(sizeof *ts * (size_t)l.n);
        const char **nm = malloc(sizeof *nm * (size_t)l.n);
        int n = 0;
        for (int i = 0; i < l.n; i++)
            if (i != k) ts[n] = l.e[i].t, nm[n++] = l.names[i];
        const char *mk[] = {"alignprop_config"}, *mv[] = {cfg};
        CHECK(ap_st_save(c, file, n, nm, ts, 1, mk, mv) == AP_OK);
        free(ts);
        free(nm);
        expect_load_error(c, "single file missing a tensor", file, AP_ERR_NOT_FOUND, "bad.safetensors", lgone);
    }
    free(cfg);
    list_free(&l);
    CHECK(ap_sd_save_ldm(c, ref, file) == AP_OK);
    CHECK(truncate(file, 3 << 20) == 0);
    expect_load_error(c, "truncated single file", file, AP_OK, "bad.safetensors", "truncated");
    /* a tensor file that is no Stable Diffusion checkpoint */
    ap_tensor *t = ap_tensor_zeros(c, AP_F32, 1, (int64_t[]){4});
    CHECK(ap_st_save(c, file, 1, (const char *[]){"weight"}, &t, 0, NULL, NULL) == AP_OK);
    ap_tensor_release(t);
    expect_load_error(c, "not an SD checkpoint", file, AP_ERR_FORMAT, "bad.safetensors", "not a Stable Diffusion");
    unlink(file);
}

int main(void) {
    ap_ctx *c = test_ctx();
    snprintf(root, sizeof root, "/tmp/ap_sd_loaders_XXXXXX");
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    /* what `alignprop init --config tiny` writes: a diffusers folder and one LDM file */
    ap_sd_config cfg;
    CHECK(ap_sd_preset(c, "tiny", &cfg) == AP_OK);
    ap_sd_model *ref = make_model(c, &cfg, 3);
    if (ref) {
        CHECK(ap_sd_save_diffusers(c, ref, path_in("tiny")) == AP_OK);
        CHECK(ap_sd_save_ldm(c, ref, path_in("tiny/model.safetensors")) == AP_OK);
        CHECK_OK(c);
        test_good_layouts(c, ref);
        test_ckpt(c, ref);
        test_custom_layout(c);
        test_malformed_folders(c, ref);
    }
    ap_sd_free(ref);
    rm_tree(root);
    ap_ctx_free(c);
    return test_summary("test_sd_loaders");
}
