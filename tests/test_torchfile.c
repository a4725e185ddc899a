/* PyTorch zip checkpoints: every format case against what PyTorch itself says
 * (tests/ref/torch/manifest.tsv, written by tests/ref/gen_torchfiles.py), the
 * real LAION aesthetic head, every malformed case as a clear error naming the
 * file, and a deterministic mutation smoke test of the zip reader and the
 * unpickler. */
#include "core/internal.h"
#include "io/pickle.h"
#include "io/torchfile.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define FIX "tests/ref/torch/"

static bool is_float_name(const char *dt) {
    return !strcmp(dt, "F32") || !strcmp(dt, "F16") || !strcmp(dt, "BF16") || !strcmp(dt, "F64");
}

/* Loads tensor `name` in its natural type (floats as f32, ints as i64) and
 * returns sum and position-weighted sum (weight i % 7 + 1) in double. */
static int sums(ap_ctx *c, ap_torchfile *pt, const char *name, double *sum, double *wsum, ap_tensor **keep) {
    int i = ap_pt_find(pt, name);
    if (i < 0) return -1;
    bool fl = is_float_name(ap_pt_dtype(pt, i));
    ap_tensor *t = NULL;
    if (ap_pt_load(c, pt, name, fl ? AP_F32 : AP_I64, &t) != AP_OK) return -1;
    *sum = *wsum = 0;
    for (int64_t k = 0; k < ap_tensor_numel(t); k++) {
        double v = fl ? (double)((const float *)ap_tensor_cdata(t))[k] : (double)((const int64_t *)ap_tensor_cdata(t))[k];
        *sum += v;
        *wsum += v * (double)(k % 7 + 1);
    }
    if (keep)
        *keep = t;
    else
        ap_tensor_release(t);
    return 0;
}

static int parse_list(char *s, int64_t *out) {
    int n = 0;
    if (!*s) return 0;
    for (char *tok = strtok(s, ","); tok && n < AP_MAX_DIMS + 1; tok = strtok(NULL, ",")) out[n++] = atoll(tok);
    return n;
}

/* Every tensor of every good fixture: names, dtypes, shapes, strides, offsets
 * and values agree with PyTorch; nothing extra is listed; the libzip read path
 * gives the same bytes as the mapping. */
static void test_manifest(ap_ctx *c) {
    size_t len;
    char *text = test_read_file(FIX "manifest.tsv", &len);
    CHECK(text != NULL);
    if (!text) return;
    char cur[128] = "";
    ap_torchfile *pt = NULL;
    int listed = 0, files = 0, lines = 0;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save);; line = strtok_r(NULL, "\n", &save)) {
        char *f[8] = {0};
        int nf = 0;
        if (line && line[0] != '#') {
            for (char *p = line; nf < 8; nf++) {
                f[nf] = p;
                char *tab = strchr(p, '\t');
                if (!tab) { nf++; break; }
                *tab = 0;
                p = tab + 1;
            }
            CHECK(nf == 8);
        }
        if (line && line[0] == '#') continue;
        if (!line || strcmp(f[0], cur)) { /* next file: everything listed was checked */
            if (pt) CHECK_MSG(ap_pt_count(pt) == listed, "%s: %d tensors, manifest %d", cur, ap_pt_count(pt), listed);
            ap_pt_close(pt);
            pt = NULL;
            if (!line) break;
            snprintf(cur, sizeof cur, "%s", f[0]);
            char rel[256];
            snprintf(rel, sizeof rel, FIX "%s", cur);
            CHECK_MSG(ap_pt_open(c, test_path(rel), &pt) == AP_OK, "%s: %s", cur, ap_last_error(c));
            ap_clear_error(c);
            listed = 0;
            files++;
        }
        lines++;
        listed++;
        if (!pt) continue;
        int i = ap_pt_find(pt, f[1]);
        CHECK_MSG(i >= 0, "%s: no tensor '%s'", cur, f[1]);
        if (i < 0) continue;
        CHECK_MSG(!strcmp(ap_pt_dtype(pt, i), f[2]), "%s %s: dtype %s, want %s", cur, f[1], ap_pt_dtype(pt, i), f[2]);
        int64_t shape[AP_MAX_DIMS + 1], strides[AP_MAX_DIMS + 1], got[AP_MAX_DIMS];
        int nd = parse_list(f[3], shape), ns = parse_list(f[4], strides);
        CHECK(ap_pt_shape(pt, i, got) == nd && !memcmp(got, shape, (size_t)nd * 8));
        CHECK(ap_pt_strides(pt, i, got) == ns && !memcmp(got, strides, (size_t)ns * 8));
        CHECK(ap_pt_storage_offset(pt, i) == atoll(f[5]));
        double s, w, want_s = strtod(f[6], NULL), want_w = strtod(f[7], NULL);
        CHECK_MSG(sums(c, pt, f[1], &s, &w, NULL) == 0, "%s %s: %s", cur, f[1], ap_last_error(c));
        ap_clear_error(c);
        /* exact (values are multiples of 1/64) except f64 read as f32 */
        double tol = !strcmp(f[2], "F64") ? 1e-6 * (1 + fabs(want_w)) : 0;
        CHECK_MSG(fabs(s - want_s) <= tol && fabs(w - want_w) <= tol, "%s %s: sums %.17g %.17g, torch %.17g %.17g",
                  cur, f[1], s, w, want_s, want_w);
        /* the libzip path reads the same values */
        ap_pt_set_direct(pt, 0);
        double s2 = 0, w2 = 0;
        CHECK(sums(c, pt, f[1], &s2, &w2, NULL) == 0 && s2 == s && w2 == w);
        ap_pt_set_direct(pt, 1);
    }
    CHECK(files == 10 && lines > 60);
    free(text);
}

static const float *F(const ap_tensor *t) { return (const float *)ap_tensor_cdata(t); }

/* Views of one storage: each view's values are the base's, at the view's indices. */
static void test_views(ap_ctx *c) {
    ap_torchfile *pt = NULL;
    CHECK(ap_pt_open(c, test_path(FIX "views.pt"), &pt) == AP_OK);
    if (!pt) return;
    ap_tensor *base, *t, *sl, *col, *row, *cube, *perm, *nar, *ex;
    CHECK(ap_pt_load(c, pt, "base", AP_F32, &base) == AP_OK);   /* [4,6] */
    CHECK(ap_pt_load(c, pt, "t", AP_F32, &t) == AP_OK);         /* base.t() [6,4] */
    CHECK(ap_pt_load(c, pt, "slice", AP_F32, &sl) == AP_OK);    /* base[1:3, ::2] [2,3] */
    CHECK(ap_pt_load(c, pt, "col", AP_F32, &col) == AP_OK);     /* base[:, 5] [4] */
    CHECK(ap_pt_load(c, pt, "row", AP_F32, &row) == AP_OK);     /* base[3] [6] */
    CHECK(ap_pt_load(c, pt, "cube", AP_F32, &cube) == AP_OK);   /* [2,3,4] */
    CHECK(ap_pt_load(c, pt, "permuted", AP_F32, &perm) == AP_OK); /* cube.permute(2,0,1) [4,2,3] */
    CHECK(ap_pt_load(c, pt, "narrow", AP_F32, &nar) == AP_OK);  /* cube[:, 1:, 1:3] [2,2,2] */
    CHECK(ap_pt_load(c, pt, "expand", AP_F32, &ex) == AP_OK);   /* [3,1].expand(3,4) */
    CHECK_OK(c);
    if (ap_failed(c)) return;
    int bad = 0;
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 6; j++) bad += F(t)[j * 4 + i] != F(base)[i * 6 + j];
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++) bad += F(sl)[i * 3 + j] != F(base)[(i + 1) * 6 + 2 * j];
    for (int i = 0; i < 4; i++) bad += F(col)[i] != F(base)[i * 6 + 5];
    for (int j = 0; j < 6; j++) bad += F(row)[j] != F(base)[3 * 6 + j];
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 3; b++)
            for (int k = 0; k < 4; k++) bad += F(perm)[(k * 2 + a) * 3 + b] != F(cube)[(a * 3 + b) * 4 + k];
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 2; b++)
            for (int k = 0; k < 2; k++) bad += F(nar)[(a * 2 + b) * 2 + k] != F(cube)[(a * 3 + b + 1) * 4 + k + 1];
    for (int i = 0; i < 3; i++)
        for (int j = 1; j < 4; j++) bad += F(ex)[i * 4 + j] != F(ex)[i * 4];
    CHECK_MSG(bad == 0, "%d view elements differ from the base", bad);
    /* raw bytes: only a contiguous tensor in a stored entry has them */
    size_t nb = 0;
    const void *raw = ap_pt_raw(pt, ap_pt_find(pt, "base"), &nb);
    CHECK(raw && nb == 24 * 4 && !memcmp(raw, F(base), nb));
    CHECK(ap_pt_raw(pt, ap_pt_find(pt, "t"), &nb) == NULL && nb == 0);
    CHECK(ap_pt_raw(pt, ap_pt_find(pt, "row"), &nb) != NULL && nb == 6 * 4); /* offset 18, contiguous */
    CHECK(ap_pt_raw(pt, -1, &nb) == NULL && ap_pt_name(pt, 99) == NULL && ap_pt_shape(pt, 99, NULL) == -1);
    /* f16 storage, transposed, read as bf16 and f16: same values (exact in both) */
    ap_tensor *h32, *h16, *hb;
    CHECK(ap_pt_load(c, pt, "half_t", AP_F32, &h32) == AP_OK && ap_pt_load(c, pt, "half_t", AP_F16, &h16) == AP_OK &&
          ap_pt_load(c, pt, "half_t", AP_BF16, &hb) == AP_OK);
    if (!ap_failed(c)) {
        for (int k = 0; k < 15; k++) {
            bad += ap_f16_to_f32(((const uint16_t *)ap_tensor_cdata(h16))[k]) != F(h32)[k];
            bad += ap_bf16_to_f32(((const uint16_t *)ap_tensor_cdata(hb))[k]) != F(h32)[k];
        }
        CHECK(bad == 0 && ap_tensor_dim(h32, 0) == 5 && ap_tensor_dim(h32, 1) == 3);
    }
    ap_tensor *ts[] = {base, t, sl, col, row, cube, perm, nar, ex, h32, h16, hb};
    for (size_t k = 0; k < sizeof ts / sizeof ts[0]; k++) ap_tensor_release(ts[k]);
    ap_pt_close(pt);
    /* compressed entries have no raw bytes but load the same */
    CHECK(ap_pt_open(c, test_path(FIX "deflate.pt"), &pt) == AP_OK);
    CHECK(pt && ap_pt_raw(pt, ap_pt_find(pt, "base"), &nb) == NULL);
    ap_pt_close(pt);
}

static void test_layouts(ap_ctx *c) {
    ap_torchfile *pt = NULL;
    /* Lightning: only 'state_dict' is listed; the callbacks, numpy scalars, sets,
     * bytes and devices around it are accepted and ignored */
    CHECK_MSG(ap_pt_open(c, test_path(FIX "lightning.ckpt"), &pt) == AP_OK, "%s", ap_last_error(c));
    CHECK(pt && ap_pt_from_state_dict(pt) && ap_pt_count(pt) == 4);
    CHECK(ap_pt_find(pt, "model.diffusion_model.input_blocks.0.0.weight") >= 0);
    CHECK(ap_pt_find(pt, "global_step") < 0 && ap_pt_find(pt, "state_dict") < 0 && ap_pt_find(pt, NULL) < 0);
    ap_tensor *ids = NULL;
    CHECK(ap_pt_load(c, pt, "cond_stage_model.transformer.text_model.embeddings.position_ids", AP_I32, &ids) == AP_OK);
    CHECK(ids && ap_tensor_ndim(ids) == 2 && ((const int32_t *)ap_tensor_cdata(ids))[6] == 6);
    ap_tensor_release(ids);
    ap_pt_close(pt);
    /* nested containers: names joined with '.', list indices and int keys as numbers */
    CHECK(ap_pt_open(c, test_path(FIX "nested.pt"), &pt) == AP_OK);
    const char *names[] = {"model.0.weight", "model.1.bias", "params.w", "params.frozen", "layers.0",
                           "layers.1.deep", "by_id.7"};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) CHECK_MSG(ap_pt_find(pt, names[k]) >= 0, "%s", names[k]);
    CHECK(!ap_pt_from_state_dict(pt));
    ap_pt_close(pt);
    /* a bare tensor is one tensor named "" */
    CHECK(ap_pt_open(c, test_path(FIX "tensor.pt"), &pt) == AP_OK);
    CHECK(pt && ap_pt_count(pt) == 1 && !strcmp(ap_pt_name(pt, 0), ""));
    ap_pt_close(pt);
    /* the same bytes from memory */
    size_t len;
    void *bytes = test_read_file(FIX "proto4.pt", &len);
    CHECK(bytes && ap_pt_open_memory(c, "proto4.pt", bytes, len, &pt) == AP_OK && ap_pt_count(pt) == 3);
    ap_pt_close(pt);
    free(bytes);
    CHECK_OK(c);
}

/* Conversions at load, and their errors. */
static void test_load(ap_ctx *c) {
    ap_torchfile *pt = NULL;
    CHECK(ap_pt_open(c, test_path(FIX "dtypes.pt"), &pt) == AP_OK);
    if (!pt) return;
    ap_tensor *t = NULL;
    CHECK(ap_pt_load(c, pt, "missing", AP_F32, &t) == AP_ERR_NOT_FOUND && t == NULL);
    CHECK(strstr(ap_last_error(c), "dtypes.pt") && strstr(ap_last_error(c), "'missing'"));
    ap_clear_error(c);
    CHECK(ap_pt_load(c, pt, "f32", AP_I64, &t) == AP_ERR_DTYPE && strstr(ap_last_error(c), "F32"));
    ap_clear_error(c);
    CHECK(ap_pt_load(c, pt, "f16", AP_I32, &t) == AP_ERR_DTYPE && strstr(ap_last_error(c), "'f16'"));
    ap_clear_error(c);
    CHECK(ap_pt_load(c, pt, "i64", AP_I32, &t) == AP_ERR_DTYPE && strstr(ap_last_error(c), "i32"));
    ap_clear_error(c);
    CHECK(ap_pt_load(c, pt, "f32", (ap_dtype)42, &t) == AP_ERR_DTYPE);
    ap_clear_error(c);
    /* sticky errors: nothing happens while the context has one */
    ap_seterr(c, AP_ERR_STATE, "earlier failure");
    CHECK(ap_pt_load(c, pt, "f32", AP_F32, &t) == AP_ERR_STATE && t == NULL);
    ap_torchfile *pt2 = (ap_torchfile *)1;
    CHECK(ap_pt_open(c, test_path(FIX "dtypes.pt"), &pt2) == AP_ERR_STATE && pt2 == NULL);
    ap_clear_error(c);
    /* small ints as i32 and i64 agree; i64 beyond 32 bits is intact as i64 */
    ap_tensor *a = NULL, *b = NULL, *big = NULL, *u8 = NULL, *bl = NULL;
    CHECK(ap_pt_load(c, pt, "i64_small", AP_I32, &a) == AP_OK && ap_pt_load(c, pt, "i64_small", AP_I64, &b) == AP_OK);
    CHECK(ap_pt_load(c, pt, "i64", AP_I64, &big) == AP_OK && ap_pt_load(c, pt, "u8", AP_I32, &u8) == AP_OK &&
          ap_pt_load(c, pt, "bool", AP_I32, &bl) == AP_OK);
    if (!ap_failed(c)) {
        for (int k = 0; k < 6; k++)
            CHECK(((const int32_t *)ap_tensor_cdata(a))[k] == ((const int64_t *)ap_tensor_cdata(b))[k]);
        const int64_t *g = ap_tensor_cdata(big);
        CHECK(g[2] == (INT64_C(1) << 40) && g[5] == -(INT64_C(1) << 35) && g[1] == -4);
        for (int k = 0; k < 8; k++) CHECK(((const int32_t *)ap_tensor_cdata(u8))[k] >= 0);
        for (int k = 0; k < 9; k++) CHECK((((const int32_t *)ap_tensor_cdata(bl))[k] & ~1) == 0);
        /* integers as floats: exact for these */
        ap_tensor *fi = NULL, *hb = NULL;
        CHECK(ap_pt_load(c, pt, "i64", AP_F32, &fi) == AP_OK && ap_pt_load(c, pt, "bool", AP_BF16, &hb) == AP_OK);
        if (fi && hb) {
            CHECK(F(fi)[2] == 1099511627776.0f && F(fi)[1] == -4.0f && F(fi)[5] == -34359738368.0f);
            for (int k = 0; k < 9; k++)
                CHECK(ap_bf16_to_f32(((const uint16_t *)ap_tensor_cdata(hb))[k]) ==
                      (float)((const int32_t *)ap_tensor_cdata(bl))[k]);
        }
        ap_tensor_release(fi);
        ap_tensor_release(hb);
    }
    ap_tensor_release(a);
    ap_tensor_release(b);
    ap_tensor_release(big);
    ap_tensor_release(u8);
    ap_tensor_release(bl);
    /* scalar and empty tensors */
    ap_tensor *s = NULL, *e = NULL;
    CHECK(ap_pt_load(c, pt, "scalar", AP_F32, &s) == AP_OK && ap_tensor_ndim(s) == 0 && F(s)[0] == 2.5f);
    CHECK(ap_pt_load(c, pt, "empty", AP_BF16, &e) == AP_OK && ap_tensor_numel(e) == 0 && ap_tensor_dim(e, 1) == 4);
    ap_tensor_release(s);
    ap_tensor_release(e);
    /* f32 stored, read as bf16: round-to-nearest-even of each value */
    ap_tensor *w32 = NULL, *w16 = NULL;
    CHECK(ap_pt_load(c, pt, "conv.weight", AP_F32, &w32) == AP_OK && ap_pt_load(c, pt, "conv.weight", AP_BF16, &w16) == AP_OK);
    if (w32 && w16)
        for (int k = 0; k < 108; k++) CHECK(((const uint16_t *)ap_tensor_cdata(w16))[k] == ap_f32_to_bf16(F(w32)[k]));
    ap_tensor_release(w32);
    ap_tensor_release(w16);
    ap_pt_close(pt);
    ap_pt_close(NULL);
    CHECK_OK(c);
}

/* The real LAION aesthetic head (MLP 768-1024-128-64-16-1). Values from PyTorch:
 * torch.load(...)[name] -> shape, float64 sum, first and last element. */
static void test_aesthetic(ap_ctx *c) {
    static const struct {
        const char *name;
        int64_t rows, cols;
        double sum, first, last;
    } want[] = {
        {"layers.0.weight", 1024, 768, -11.765618821832504, -0.12625516951084137, -0.049428436905145645},
        {"layers.0.bias", 1024, 0, -0.24403834371469202, -0.02204221673309803, -0.0010803531622514129},
        {"layers.2.weight", 128, 1024, 15.560105307348294, -0.0065643987618386745, 0.14921103417873383},
        {"layers.2.bias", 128, 0, -0.9988987763354089, -0.07317279279232025, -0.127188578248024},
        {"layers.4.weight", 64, 128, 2.5633030382896322, 0.001266952371224761, 0.044307395815849304},
        {"layers.4.bias", 64, 0, 2.8384753465652466, 0.3414905071258545, 0.22439615428447723},
        {"layers.6.weight", 16, 64, 0.09084817548864521, 0.020703336223959923, -0.08114822953939438},
        {"layers.6.bias", 16, 0, 7.606064677238464, 0.8865430355072021, 0.9228829741477966},
        {"layers.7.weight", 1, 16, 1.5261942148208618, 0.24315302073955536, 0.31173500418663025},
        {"layers.7.bias", 1, 0, 0.9899932146072388, 0.9899932146072388, 0.9899932146072388},
    };
    const char *file = "sac+logos+ava1-l14-linearMSE.pth";
    const char *dirs[] = {getenv("AP_SHARED_DIR"), "../shared", "../../shared"};
    char path[4096];
    FILE *f = NULL;
    for (size_t k = 0; k < sizeof dirs / sizeof dirs[0] && !f; k++) {
        if (!dirs[k]) continue;
        snprintf(path, sizeof path, "%s/data/%s", dirs[k][0] == '/' ? dirs[k] : test_path(dirs[k]), file);
        f = fopen(path, "rb");
    }
    if (!f) {
        printf("SKIP aesthetic head: %s not found (set AP_SHARED_DIR to the folder holding data/)\n", file);
        return;
    }
    fclose(f);
    ap_torchfile *pt = NULL;
    CHECK_MSG(ap_pt_open(c, path, &pt) == AP_OK, "%s", ap_last_error(c));
    if (!pt) return;
    CHECK(ap_pt_count(pt) == 10);
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
        int i = ap_pt_find(pt, want[k].name);
        int64_t shape[AP_MAX_DIMS];
        int nd = want[k].cols ? 2 : 1;
        CHECK_MSG(i >= 0 && ap_pt_shape(pt, i, shape) == nd && shape[0] == want[k].rows &&
                      (nd == 1 || shape[1] == want[k].cols) && !strcmp(ap_pt_dtype(pt, i), "F32"),
                  "%s", want[k].name);
        ap_tensor *t = NULL;
        CHECK(ap_pt_load(c, pt, want[k].name, AP_F32, &t) == AP_OK);
        if (!t) continue;
        int64_t n = ap_tensor_numel(t);
        double s = 0;
        for (int64_t j = 0; j < n; j++) s += F(t)[j];
        CHECK_MSG(fabs(s - want[k].sum) < 1e-9 * (1 + fabs(want[k].sum)) && F(t)[0] == (float)want[k].first &&
                      F(t)[n - 1] == (float)want[k].last,
                  "%s: sum %.17g want %.17g", want[k].name, s, want[k].sum);
        size_t nb;
        CHECK(ap_pt_raw(pt, i, &nb) != NULL && nb == (size_t)n * 4); /* stored entries read in place */
        ap_tensor_release(t);
    }
    ap_pt_close(pt);
}

/* Every malformed or hostile file: an error with the status, naming the file and saying what is wrong. */
static void test_errors(ap_ctx *c) {
    static const struct {
        const char *file;
        ap_status status;
        const char *say, *say2;
    } cases[] = {
        {"evil_global.pt", AP_ERR_UNSUPPORTED, "forbidden global 'os system'", "loading never runs code"},
        {"evil_stack_global.pt", AP_ERR_UNSUPPORTED, "forbidden global 'builtins eval'", "refusing to load"},
        {"bad_opcode.pt", AP_ERR_UNSUPPORTED, "unsupported pickle opcode 0x50 ('P')", "data.pkl"},
        {"invalid_opcode.pt", AP_ERR_UNSUPPORTED, "unsupported pickle opcode 0xff", "at byte 3"},
        {"underflow.pt", AP_ERR_FORMAT, "stack underflow", "data.pkl"},
        {"memo.pt", AP_ERR_FORMAT, "memo index 9", "never stored"},
        {"nostop.pt", AP_ERR_FORMAT, "without STOP", "truncated"},
        {"notdict.pt", AP_ERR_FORMAT, "top-level object (an int)", "not a dict"},
        {"deep.pt", AP_ERR_FORMAT, "nested deeper than 64", "k.k.k"},
        {"small_storage.pt", AP_ERR_FORMAT, "tensor 'w' needs 400 bytes of storage '0'", "holds 16"},
        {"bad_offset.pt", AP_ERR_FORMAT, "tensor 'w' needs 20 bytes", "holds 16"},
        {"short_entry.pt", AP_ERR_FORMAT, "storage entry 'archive/data/0' holds 16 bytes", "tensor 'w'"},
        {"missing_data.pt", AP_ERR_FORMAT, "storage entry 'archive/data/0' is missing", "tensor 'w'"},
        {"no_pkl.pt", AP_ERR_FORMAT, "without a data.pkl entry", "not a PyTorch checkpoint"},
        {"truncated.pt", AP_ERR_FORMAT, "not a valid zip archive", "truncated"},
        {"bigendian.pt", AP_ERR_UNSUPPORTED, "not little-endian", "big"},
        {"legacy.pt", AP_ERR_UNSUPPORTED, "legacy PyTorch format", "not supported"},
        {"garbage.pt", AP_ERR_FORMAT, "not a zip archive", "not a PyTorch checkpoint"},
        {"does_not_exist.pt", AP_ERR_NOT_FOUND, "cannot open", "No such file"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        char rel[256];
        snprintf(rel, sizeof rel, FIX "%s", cases[k].file);
        ap_torchfile *pt = (ap_torchfile *)1;
        ap_status s = ap_pt_open(c, test_path(rel), &pt);
        const char *m = ap_last_error(c);
        CHECK_MSG(s == cases[k].status && ap_last_status(c) == s && pt == NULL, "%s: status %d (%s)", cases[k].file,
                  (int)s, m);
        CHECK_MSG(strstr(m, cases[k].file) && strstr(m, cases[k].say) && strstr(m, cases[k].say2), "%s: message '%s'",
                  cases[k].file, m);
        ap_clear_error(c);
    }
    /* a directory, an empty file and bad arguments */
    ap_torchfile *pt = NULL;
    CHECK(ap_pt_open(c, test_path("tests/ref/torch"), &pt) == AP_ERR_FORMAT && strstr(ap_last_error(c), "regular file"));
    ap_clear_error(c);
    CHECK(ap_pt_open_memory(c, "empty.pt", "", 0, &pt) == AP_ERR_FORMAT && strstr(ap_last_error(c), "empty.pt"));
    ap_clear_error(c);
    CHECK(ap_pt_open(c, NULL, &pt) == AP_ERR_INVALID_ARG);
    ap_clear_error(c);
    CHECK(ap_pt_open(NULL, "x", &pt) == AP_ERR_INVALID_ARG);
}

/* Hand-assembled pickles straight into the unpickler: the opcodes and
 * reconstruction rules one by one, and hostile constructions. */
static ap_status pkl(ap_ctx *c, const char *bytes, size_t n, ap_pk_state *st) {
    ap_clear_error(c);
    return ap_pk_load_state(c, "t.pkl", (const uint8_t *)bytes, n, st);
}
#define PKL(c, lit, st) pkl(c, lit, sizeof(lit) - 1, st)

/* a FloatStorage key '0' with 4 elements; tensor [2,2] strides [2,1] */
#define STORAGE "(X\7\0\0\0storagectorch\nFloatStorage\nX\1\0\0\0" "0X\3\0\0\0cpuK\4tQ"
#define TENSOR "ctorch._utils\n_rebuild_tensor_v2\n(" STORAGE "K\0K\2K\2\x86K\2K\1\x86\x89}tR"

static void test_unpickler(ap_ctx *c) {
    ap_pk_state st;
    /* a plain dict with a tensor, through BINPUT/BINGET and a Parameter */
    CHECK(PKL(c, "\x80\2}q\0(X\1\0\0\0w" TENSOR "q\1X\1\0\0\0pctorch._utils\n_rebuild_parameter\nh\1\x88}\x87Ru.", &st) == AP_OK);
    CHECK_OK(c);
    CHECK(st.count == 2 && !strcmp(st.tensors[0].name, "w") && !strcmp(st.tensors[1].name, "p"));
    CHECK(st.tensors[0].ndim == 2 && st.tensors[0].shape[1] == 2 && st.tensors[0].stride[0] == 2 &&
          st.tensors[0].dtype == AP_PK_F32 && !strcmp(st.tensors[0].storage_key, "0") && st.tensors[0].storage_bytes == 16 &&
          st.tensors[0].byte_end == 16);
    ap_pk_state_free(&st);
    /* OrderedDict from a list of pairs, BINFLOAT, LONG1 (negative, big), None, bools, bytes, sets: all data */
    CHECK(PKL(c, "\x80\2ccollections\nOrderedDict\n](X\1\0\0\0a" TENSOR "\x86X\1\0\0\0bG\x3f\xf0\0\0\0\0\0\0\x86"
                 "X\1\0\0\0c\x8a\2\xff\xff\x86X\1\0\0\0d\x8a\x0a\1\2\3\4\5\6\7\x08\x09\x0a\x86X\1\0\0\0e(N\x88\x89" "C\2hi"
                 "\x8f(K\1\x90t\x86" "e\x85R.", &st) == AP_OK);
    CHECK(st.count == 1 && !strcmp(st.tensors[0].name, "a"));
    ap_pk_state_free(&st);
    CHECK_OK(c);
    /* a placeholder object takes SETITEMS / APPENDS / BUILD without complaint */
    CHECK(PKL(c, "\x80\2}(X\1\0\0\0ocnumpy\ndtype\nX\2\0\0\0f8\x85R(K\1K\2u(K\3eK\0bX\1\0\0\0w" TENSOR "u.", &st) == AP_OK);
    CHECK(st.count == 1);
    ap_pk_state_free(&st);
    /* hostile and malformed */
    static const struct {
        const char *bytes;
        size_t n;
        const char *say;
    } bad[] = {
#define B(lit, say) {lit, sizeof(lit) - 1, say}
        B("", "without STOP"),
        B("\x80\2cposix\nsystem\nX\2\0\0\0ls\x85R.", "forbidden global 'posix system'"),
        B("\x80\2csubprocess\nPopen\n.", "forbidden global"),
        B("\x80\2c__builtin__\neval\n.", "forbidden global '__builtin__ eval'"),
        B("\x80\2\x8c\2os\x8c\6system\x93.", "forbidden global 'os system'"),
        B("\x80\2\x8c\2osK\1\x93.", "STACK_GLOBAL"),
        B("\x80\2cos", "end of line"),
        B("\x80\x06}.", "protocol 6"),
        B("\x80\2X\xff\xff\xff\x7f.", "truncated"),
        B("\x80\2T\0\0\0\x80.", "negative length"),
        B("\x80\2\x8b\0\0\0\x80.", "negative length"),
        B("\x80\2\x95\xff\0\0\0\0\0\0\0}.", "FRAME"),
        B("\x80\2.", "stack underflow"),
        B("\x80\2(.", "stack underflow"),
        B("\x80\2}(K\1u.", "odd item count"),
        B("\x80\2K\0K\1K\2s.", "SETITEM at byte 8 on an int"),
        B("\x80\2K\1K\2a.", "on an int"),
        B("\x80\2)K\1\x85R.", "calls a tuple"),
        B("\x80\2ccollections\nOrderedDict\nK\1R.", "not a tuple"),
        B("\x80\2ctorch\nFloatStorage\n)R.", "unexpected call of 'torch FloatStorage'"),
        B("\x80\2ctorch._utils\n_rebuild_tensor_v2\n)\x81.", "NEWOBJ"),
        B("\x80\2r\0\0\0\1.", "stack underflow"),
        B("\x80\2}r\0\0\0\1.", "out of sequence"),
        B("\x80\2}j\0\0\0\0.", "never stored"),
        B("\x80\2X\4\0\0\0nopeQ.", "persistent id"),
        B("\x80\2(X\7\0\0\0storageK\1X\1\0\0\0" "0X\3\0\0\0cpuK\4tQ.", "storage type is an int"),
        B("\x80\2(X\7\0\0\0storagectorch\nComplexFloatStorage\nX\1\0\0\0" "0X\3\0\0\0cpuK\4tQ.",
          "'torch ComplexFloatStorage' is not supported"),
        B("\x80\2(X\7\0\0\0storagectorch\nFloatStorage\nX\3\0\0\0a/bX\3\0\0\0cpuK\4tQ.", "bad storage key"),
        B("\x80\2ctorch._utils\n_rebuild_tensor_v2\n(" STORAGE "K\0K\2\x85K\1K\1\x86\x89}tR.", "1 sizes but 2 strides"),
        B("\x80\2ctorch._utils\n_rebuild_tensor_v2\n(" STORAGE "J\xff\xff\xff\xffK\2\x85K\1\x85\x89}tR.", "negative"),
        B("\x80\2ctorch._utils\n_rebuild_tensor_v2\n(" STORAGE "K\0(K\1K\1K\1K\1K\1K\1K\1t(K\1K\1K\1K\1K\1K\1K\1t\x89}tR.",
          "7 dims"),
        B("\x80\2ctorch._utils\n_rebuild_tensor_v2\n(" STORAGE "K\0\x8a\x08\0\0\0\0\0\0\0\x40\x85K\1\x85\x89}tR.", "overflow"),
        B("\x80\2ctorch._utils\n_rebuild_tensor_v2\n(" STORAGE "K\0K\2\x85K\1\x85tR.", "4 arguments"),
        B("\x80\2ctorch._utils\n_rebuild_tensor_v2\n(K\0K\0K\2\x85K\1\x85\x89}tR.", "storage is an int"),
        B("\x80\2ctorch._utils\n_rebuild_tensor_v3\n(" STORAGE "K\0K\2\x85K\1\x85\x89}ctorch\nfloat8_e4m3fn\ntR.",
          "'torch.float8_e4m3fn' is not supported"),
        B("\x80\2ctorch._utils\n_rebuild_tensor_v2\n((X\7\0\0\0storagectorch\nUntypedStorage\nX\1\0\0\0"
          "0X\3\0\0\0cpuK\4tQK\0K\2\x85K\1\x85\x89}tR.", "untyped storage without a dtype"),
        B("\x80\2}(X\1\0\0\0w" TENSOR "X\1\0\0\0w" TENSOR "u.", "two tensors are named 'w'"),
        B("\x80\2}(X\3\0\0\0a.b" TENSOR "X\1\0\0\0a}X\1\0\0\0b" TENSOR "su.", "two tensors are named 'a.b'"),
        B("\x80\2}X\3\0\0\0a\0b" TENSOR "s.", "NUL byte"),
        B("\x80\2X\1\0\0\0s.", "top-level object (a str)"),
        /* a list that holds itself: the walk stops at the depth limit */
        B("\x80\2]q\0h\0a.", "nested deeper"),
#undef B
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        ap_status s = pkl(c, bad[k].bytes, bad[k].n, &st);
        CHECK_MSG(s != AP_OK && st.count == 0 && st.tensors == NULL && strstr(ap_last_error(c), bad[k].say) &&
                      strstr(ap_last_error(c), "t.pkl: data.pkl: "),
                  "case %zu: status %d, message '%s', want '%s'", k, (int)s, ap_last_error(c), bad[k].say);
    }
    ap_clear_error(c);
}

/* 2^30 paths through a DAG of shared containers (30 levels of a list holding a
 * tuple of the level below twice): the walk stops at its visit budget. */
static void test_dag(ap_ctx *c) {
    char b[512];
    size_t o = 0;
    memcpy(b, "\x80\2]K\0aq\0", 8);
    o = 8;
    for (int k = 0; k < 30; k++) {
        memcpy(b + o, "]h\0h\0\x86" "aq\0", 9);
        o += 9;
    }
    b[o++] = '.';
    ap_pk_state st;
    CHECK(pkl(c, b, o, &st) == AP_ERR_FORMAT && strstr(ap_last_error(c), "too large to flatten"));
    ap_clear_error(c);
}

/* A long name is an error, not an overflow. */
static void test_long_name(ap_ctx *c) {
    size_t n = AP_PK_MAX_NAME + 10;
    const char head[] = "\x80\2}X", tail[] = TENSOR "s.";
    char *b = malloc(sizeof head - 1 + 4 + n + sizeof tail);
    size_t o = 0;
    memcpy(b, head, sizeof head - 1);
    o += sizeof head - 1;
    b[o++] = (char)(n & 0xff);
    b[o++] = (char)(n >> 8);
    b[o++] = 0;
    b[o++] = 0;
    memset(b + o, 'x', n);
    o += n;
    memcpy(b + o, tail, sizeof tail - 1);
    o += sizeof tail - 1;
    ap_pk_state st;
    CHECK(pkl(c, b, o, &st) == AP_ERR_FORMAT && strstr(ap_last_error(c), "longer than"));
    ap_clear_error(c);
    free(b);
}

/* ------------------------------------------------------------ a checkpoint built here
 * A minimal zip writer (stored entries, no alignment: data offsets come out
 * unaligned) to make checkpoints larger than the committed fixtures. */
static uint32_t crc32_of(const uint8_t *p, size_t n) {
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
    }
    return ~c;
}

typedef struct {
    uint8_t *b;
    size_t n;
} buf;

static void put(buf *o, const void *p, size_t n) {
    o->b = realloc(o->b, o->n + n);
    memcpy(o->b + o->n, p, n);
    o->n += n;
}
#define PUTS(o, lit) put(o, lit, sizeof(lit) - 1)
static void put16(buf *o, uint32_t v) { put(o, (uint8_t[]){(uint8_t)v, (uint8_t)(v >> 8)}, 2); }
static void put32(buf *o, uint32_t v) { put16(o, v & 0xffff); put16(o, v >> 16); }

static buf make_zip(int n, const char *const *names, const buf *data) {
    buf z = {0}, cd = {0};
    for (int i = 0; i < n; i++) {
        uint32_t off = (uint32_t)z.n, crc = crc32_of(data[i].b, data[i].n), len = (uint32_t)strlen(names[i]);
        put32(&z, 0x04034b50); put16(&z, 20); put16(&z, 0); put16(&z, 0); put32(&z, 0);
        put32(&z, crc); put32(&z, (uint32_t)data[i].n); put32(&z, (uint32_t)data[i].n);
        put16(&z, len); put16(&z, 0); put(&z, names[i], len); put(&z, data[i].b, data[i].n);
        put32(&cd, 0x02014b50); put16(&cd, 20); put16(&cd, 20); put16(&cd, 0); put16(&cd, 0); put32(&cd, 0);
        put32(&cd, crc); put32(&cd, (uint32_t)data[i].n); put32(&cd, (uint32_t)data[i].n); put16(&cd, len);
        put16(&cd, 0); put16(&cd, 0); put16(&cd, 0); put16(&cd, 0); put32(&cd, 0); put32(&cd, off);
        put(&cd, names[i], len);
    }
    uint32_t cd_off = (uint32_t)z.n;
    put(&z, cd.b, cd.n);
    put32(&z, 0x06054b50); put16(&z, 0); put16(&z, 0); put16(&z, (uint32_t)n); put16(&z, (uint32_t)n);
    put32(&z, (uint32_t)cd.n); put32(&z, cd_off); put16(&z, 0);
    free(cd.b);
    return z;
}

/* Storages of random bit patterns (NaNs, infinities and subnormals included),
 * odd lengths, unaligned in the file, loaded as every float type: equal bit for
 * bit to the core's scalar conversions, through both read paths. */
static void test_conversions(ap_ctx *c) {
    enum { N = 5 * 16384 + 13 };
    static const char *storage[] = {"FloatStorage", "HalfStorage", "BFloat16Storage"};
    static const size_t el[] = {4, 2, 2};
    test_rng r = {77};
    buf pk = {0}, data[4] = {{0}};
    PUTS(&pk, "\x80\2}(");
    for (int s = 0; s < 3; s++) {
        char key[2] = {(char)('0' + s), 0};
        PUTS(&pk, "X\1\0\0\0"); put(&pk, key, 1); /* name = storage key */
        PUTS(&pk, "ctorch._utils\n_rebuild_tensor_v2\n((X\7\0\0\0storagectorch\n");
        put(&pk, storage[s], strlen(storage[s]));
        PUTS(&pk, "\nX\1\0\0\0"); put(&pk, key, 1); PUTS(&pk, "X\3\0\0\0cpuJ"); put32(&pk, N);
        PUTS(&pk, "tQK\0J"); put32(&pk, N); PUTS(&pk, "\x85K\1\x85\x89}tR");
        data[s + 1].n = N * el[s];
        data[s + 1].b = malloc(data[s + 1].n);
        for (size_t k = 0; k < data[s + 1].n; k++) data[s + 1].b[k] = (uint8_t)test_rng_next(&r);
    }
    PUTS(&pk, "u.");
    data[0] = pk;
    const char *names[] = {"ckpt/data.pkl", "ckpt/data/0", "ckpt/data/1", "ckpt/data/2"};
    buf z = make_zip(4, names, data);
    ap_torchfile *pt = NULL;
    CHECK_MSG(ap_pt_open_memory(c, "made.pt", z.b, z.n, &pt) == AP_OK, "%s", ap_last_error(c));
    int unaligned = 0;
    for (int s = 0; pt && s < 3; s++) {
        char key[2] = {(char)('0' + s), 0};
        size_t nb;
        const uint8_t *raw = ap_pt_raw(pt, ap_pt_find(pt, key), &nb);
        CHECK(raw && nb == N * el[s]);
        if (!raw) continue;
        unaligned += ((uintptr_t)raw % el[s]) != 0;
        for (int direct = 0; direct < 2; direct++) {
            ap_pt_set_direct(pt, direct);
            for (int d = 0; d < 3; d++) {
                ap_dtype dt = d == 0 ? AP_F32 : d == 1 ? AP_BF16 : AP_F16;
                ap_tensor *t = NULL;
                CHECK(ap_pt_load(c, pt, key, dt, &t) == AP_OK);
                if (!t) continue;
                int64_t bad = 0;
                for (int64_t k = 0; k < N; k++) {
                    float f;
                    uint16_t h;
                    if (s == 0) memcpy(&f, raw + 4 * k, 4);
                    else memcpy(&h, raw + 2 * k, 2);
                    if (s == 1) f = ap_f16_to_f32(h);
                    if (s == 2) f = ap_bf16_to_f32(h);
                    const void *got = (const uint8_t *)ap_tensor_cdata(t) + k * (int64_t)ap_dtype_size(dt);
                    if (dt == AP_F32) bad += memcmp(got, &f, 4) != 0;
                    else if (dt == AP_BF16) bad += *(const uint16_t *)got != (s == 2 ? h : ap_f32_to_bf16(f));
                    else bad += *(const uint16_t *)got != (s == 1 ? h : ap_f32_to_f16(f));
                }
                CHECK_MSG(bad == 0, "%s -> %s (direct %d): %lld elements differ", storage[s], ap_dtype_name(dt), direct,
                          (long long)bad);
                ap_tensor_release(t);
            }
        }
    }
    CHECK(unaligned > 0);
    ap_pt_close(pt);
    ap_clear_error(c);
    for (int k = 0; k < 4; k++) free(data[k].b);
    free(z.b);
}

/* Deterministic mutations: flipped bytes, interesting values, truncations and
 * repeated spans, of a whole checkpoint (zip + pickle + storages) and of its
 * data.pkl alone. Nothing may crash or leak (run under ASan in CI); whatever
 * opens must load. */
static size_t mutate(test_rng *r, uint8_t *b, size_t n, size_t cap) {
    static const uint8_t interesting[] = {0x00, 0xff, 0x7f, 0x80, 0x01, 0xfe, 'X', 'K', 'J', 't', 'R', 'Q', 'u',
                                          '(', '.', 'q', 'h', 'c', 0x85, 0x86, 0x93, 0x94, 0x95};
    int kind = (int)(test_rng_next(r) % 5);
    if (kind == 0 && n > 1) return 1 + test_rng_next(r) % (n - 1); /* truncate */
    if (kind == 1 && n > 8 && n + 64 <= cap) {                         /* repeat a span */
        size_t at = test_rng_next(r) % n, len = 1 + test_rng_next(r) % 32;
        if (at + len > n) len = n - at;
        memmove(b + at + len, b + at, n - at);
        return n + len;
    }
    int flips = 1 + (int)(test_rng_next(r) % 4);
    for (int k = 0; k < flips; k++) {
        size_t at = test_rng_next(r) % n;
        if (kind == 2)
            b[at] = interesting[test_rng_next(r) % sizeof interesting];
        else if (kind == 3)
            b[at] ^= (uint8_t)(1u << (test_rng_next(r) % 8));
        else
            b[at] = (uint8_t)test_rng_next(r);
    }
    return n;
}

static void test_mutations(ap_ctx *c) {
    size_t flen, plen;
    uint8_t *file = test_read_file(FIX "dtypes.pt", &flen), *pk = test_read_file(FIX "dtypes.pkl", &plen);
    CHECK(file && pk);
    if (!file || !pk) return;
    size_t cap = flen + 4096;
    uint8_t *b = malloc(cap);
    test_rng r = {20240611};
    int opened = 0, parsed = 0, loaded = 0;
    const int rounds = 2500;
    for (int it = 0; it < rounds; it++) {
        /* the whole file */
        memcpy(b, file, flen);
        size_t n = flen;
        int times = 1 + (int)(test_rng_next(&r) % 3);
        for (int k = 0; k < times; k++) n = mutate(&r, b, n, cap);
        ap_torchfile *pt = NULL;
        if (ap_pt_open_memory(c, "mutant.pt", b, n, &pt) == AP_OK) {
            opened++;
            for (int i = 0; i < ap_pt_count(pt); i++) {
                int64_t shape[AP_MAX_DIMS], numel = 1;
                int nd = ap_pt_shape(pt, i, shape);
                for (int k = 0; k < nd; k++) numel *= shape[k];
                if (numel > (1 << 20)) continue; /* zero strides may legitimately expand a small storage */
                bool fl = is_float_name(ap_pt_dtype(pt, i));
                ap_tensor *t = NULL;
                if (ap_pt_load(c, pt, ap_pt_name(pt, i), fl ? AP_BF16 : AP_I64, &t) == AP_OK) loaded++;
                ap_tensor_release(t);
                ap_clear_error(c);
            }
            ap_pt_close(pt);
        } else {
            CHECK(pt == NULL && ap_last_error(c)[0] && strstr(ap_last_error(c), "mutant.pt"));
        }
        ap_clear_error(c);
        /* the pickle alone */
        memcpy(b, pk, plen);
        n = plen;
        times = 1 + (int)(test_rng_next(&r) % 3);
        for (int k = 0; k < times; k++) n = mutate(&r, b, n, cap);
        ap_pk_state st;
        if (ap_pk_load_state(c, "mutant.pkl", b, n, &st) == AP_OK) parsed++;
        else CHECK(st.count == 0 && strstr(ap_last_error(c), "mutant.pkl: data.pkl: "));
        ap_pk_state_free(&st);
        ap_clear_error(c);
    }
    printf("mutations: %d files (%d opened, %d tensors loaded), %d pickles (%d parsed)\n", rounds, opened, loaded,
           rounds, parsed);
    CHECK(opened > 0 && parsed > 0 && opened < rounds && parsed < rounds);
    free(b);
    free(file);
    free(pk);
}

int main(void) {
    ap_ctx *c = test_ctx();
    test_manifest(c);
    test_views(c);
    test_layouts(c);
    test_load(c);
    test_aesthetic(c);
    test_errors(c);
    test_unpickler(c);
    test_long_name(c);
    test_dag(c);
    test_conversions(c);
    test_mutations(c);
    CHECK_OK(c);
    ap_ctx_free(c);
    return test_summary("torchfile");
}
