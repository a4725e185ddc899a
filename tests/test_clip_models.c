/* The CLIP towers against the PyTorch reference (tests/ref/gen_clip.py ->
 * tests/ref/clip/): a tiny vision and text tower loaded from the same values in
 * the transformers layout (safetensors) and the OpenCLIP layout (a torch zip
 * with a 'state_dict' wrapper, 'module.' prefixes, fused in_proj and x @ P
 * projections), the pixel gradient of the vision tower, OpenCLIP
 * tokenisation, config inference, and the loaders' errors.
 *
 * Agreement is max|got - ref| / max|ref| over each output: f32 at most 1e-4;
 * bf16 (bf16 weights, AP_PREC_BF16) at most TOL_BF16. */
#include "core/internal.h"
#include "gradcheck.h"
#include "models/clip.h"
#include "models/tokenizer.h"
#include "test.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DIR_REF "tests/ref/clip/"
#define TOL_F32 1e-4
/* bf16 rounds every matmul / conv / attention operand to 8 bits of mantissa;
 * through two layers of the tiny towers that is ~0.5-1% of the output range
 * (measured on AVX512-BF16: image embeds 5.8e-3, text hidden 7.9e-3, text
 * embeds 5.6e-3); a factor ~4 of margin for other bf16 kernels (AMX). */
#define TOL_BF16 3e-2

static const ap_clip_text_config text_tiny = {
    .vocab = 600, .max_positions = 16, .width = 24, .layers = 2, .heads = 3,
    .intermediate = 40, .act = AP_ACT_GELU, .eps = 1e-5f, .proj_dim = 16,
};

static ap_safetensors *ref;

static ap_tensor *fx(ap_ctx *c, const char *name, ap_dtype dt) {
    ap_tensor *t = NULL;
    if (ap_st_load(c, ref, name, dt, &t) != AP_OK) CHECK_MSG(0, "fixture tensor %s: %s", name, ap_last_error(c));
    return t;
}

static double compare(const char *label, ap_tensor *got, ap_tensor *want, double tol) {
    if (!got || !want || ap_tensor_numel(got) != ap_tensor_numel(want) || ap_tensor_ndim(got) != ap_tensor_ndim(want)) {
        CHECK_MSG(0, "%s: missing output or wrong size", label);
        return INFINITY;
    }
    const float *g = ap_tensor_cdata(got), *e = ap_tensor_cdata(want);
    double err = 0, mx = 0;
    int64_t wi = 0;
    for (int64_t i = 0; i < ap_tensor_numel(want); i++) {
        double d = fabs((double)g[i] - e[i]);
        if (!(d <= err)) err = d, wi = i;
        mx = fmax(mx, fabs((double)e[i]));
    }
    double rel = err / fmax(mx, 1e-30);
    printf("  %-34s max abs err %.3e  max|ref| %.3e  rel %.3e  (tol %.0e)\n", label, err, mx, rel, tol);
    CHECK_MSG(rel <= tol, "%s: rel error %.3e > %.0e (worst [%lld] got %.7g want %.7g)", label, rel, tol,
              (long long)wi, g[wi], e[wi]);
    return rel;
}

static const char *const files[2] = {DIR_REF "tiny_hf.safetensors", DIR_REF "tiny_openclip.pt"};

/* ------------------------------------------------------------ towers vs reference */
static void test_towers(ap_ctx *c, int which, ap_dtype wdt, double tol) {
    ap_precision prev = ap_get_precision(c);
    ap_set_precision(c, wdt == AP_BF16 ? AP_PREC_BF16 : AP_PREC_F32);
    ap_clip_file *f = NULL;
    ap_clip_vision *v = NULL;
    ap_clip_text *t = NULL;
    char lab[96];
    if (ap_clip_open(c, test_path(files[which]), &f) != AP_OK) {
        CHECK_MSG(0, "open %s: %s", files[which], ap_last_error(c));
        return;
    }
    CHECK(ap_clip_layout_of(f) == (which ? AP_CLIP_OPENCLIP : AP_CLIP_HF));
    CHECK(!strcmp(ap_clip_prefix(f), which ? "module." : ""));
    CHECK(ap_clip_has_vision(f) && ap_clip_has_text(f));
    ap_clip_load_vision(c, f, &ap_clip_vision_config_tiny, wdt, &v);
    ap_clip_load_text(c, f, &text_tiny, wdt, &t);
    float ls = 0;
    ap_clip_logit_scale(c, f, &ls);
    CHECK_OK(c);
    CHECK(fabsf(ls - logf(1 / 0.07f)) < 1e-5f);
    const char *tag = which ? "open_clip" : "transformers";
    const char *dt = wdt == AP_BF16 ? "bf16" : "f32";
    if (v) {
        ap_tensor *px = fx(c, "pixels", AP_F32), *want = fx(c, "image_embeds", AP_F32);
        ap_tensor *got = ap_clip_vision_forward(c, v, px);
        CHECK_OK(c);
        snprintf(lab, sizeof lab, "%s %s image embeds", tag, dt);
        compare(lab, got, want, tol);
        ap_tensor_release(got);
        ap_tensor_release(px);
        ap_tensor_release(want);
    }
    if (t) {
        ap_tensor *ids = fx(c, "ids", AP_I64);
        ap_tensor *hid = ap_clip_text_forward(c, t, ids, 0), *emb = ap_clip_text_embed(c, t, ids);
        ap_tensor *want_h = fx(c, "text_hidden", AP_F32), *want_e = fx(c, "text_embeds", AP_F32);
        CHECK_OK(c);
        snprintf(lab, sizeof lab, "%s %s text hidden", tag, dt);
        compare(lab, hid, want_h, tol);
        snprintf(lab, sizeof lab, "%s %s text embeds", tag, dt);
        compare(lab, emb, want_e, tol);
        ap_tensor *ts[] = {ids, hid, emb, want_h, want_e};
        for (int i = 0; i < 5; i++) ap_tensor_release(ts[i]);
    }
    ap_clip_vision_free(v);
    ap_clip_text_free(t);
    ap_clip_close(f);
    ap_set_precision(c, prev);
}

/* ------------------------------------------------------------ gradient w.r.t. the pixels */
static ap_tensor *vision_fn(ap_ctx *c, void *user, int n, ap_tensor **in) {
    (void)n;
    return ap_clip_vision_forward(c, user, in[0]);
}

static void test_pixel_grad(ap_ctx *c) {
    ap_clip_file *f = NULL;
    ap_clip_vision *v = NULL;
    if (ap_clip_open(c, test_path(files[1]), &f) != AP_OK ||
        ap_clip_load_vision(c, f, &ap_clip_vision_config_tiny, AP_F32, &v) != AP_OK) {
        CHECK_MSG(0, "%s", ap_last_error(c));
        ap_clip_close(f);
        return;
    }
    ap_tensor *px = fx(c, "pixels", AP_F32);
    ap_tensor_set_requires_grad(px, 1);
    ap_tensor_set_name(px, "pixels");
    ap_tensor *in[] = {px};
    gc_opts o = {.eps = 1e-2, .rtol = 2e-2, .atol = 2e-3, .max_elems = 64, .seed = 5, .verbose = 1};
    gradcheck(c, "clip vision (pixels)", vision_fn, v, 1, in, &o);
    CHECK_OK(c);
    /* the weights are frozen: no gradient reached them */
    CHECK(ap_tensor_grad(v->patch_w) == NULL);
    CHECK(ap_tensor_grad(v->layer[0].attn.to_q.w) == NULL);
    ap_tensor_release(px);
    ap_clip_vision_free(v);
    ap_clip_close(f);
}

/* ------------------------------------------------------------ configs from the files */
static void test_configs(ap_ctx *c) {
    for (int which = 0; which < 2; which++) {
        ap_clip_file *f = NULL;
        if (ap_clip_open(c, test_path(files[which]), &f) != AP_OK) {
            CHECK_MSG(0, "%s", ap_last_error(c));
            continue;
        }
        ap_clip_vision_config vc;
        ap_clip_text_config tc;
        /* widths 32 and 24 are not multiples of 64 and match no known tower: heads are unknown */
        CHECK(ap_clip_vision_config_of(c, f, &vc) == AP_ERR_UNSUPPORTED);
        CHECK(strstr(ap_last_error(c), "heads") != NULL);
        ap_clear_error(c);
        const ap_clip_vision_config *e = &ap_clip_vision_config_tiny;
        CHECK(vc.image_size == e->image_size && vc.patch == e->patch && vc.width == e->width &&
              vc.layers == e->layers && vc.mlp == e->mlp && vc.proj_dim == e->proj_dim);
        CHECK(ap_clip_text_config_of(c, f, &tc) == AP_ERR_UNSUPPORTED);
        ap_clear_error(c);
        CHECK(tc.vocab == text_tiny.vocab && tc.max_positions == text_tiny.max_positions &&
              tc.width == text_tiny.width && tc.layers == text_tiny.layers &&
              tc.intermediate == text_tiny.intermediate && tc.proj_dim == text_tiny.proj_dim);
        /* what the file holds per tower, against the tiny configs' own count */
        int64_t W = 32, P = 6, Tk = 26, L = 2, M = 72, D = 16;
        int64_t nv = W + W * 3 * P * P + Tk * W + 2 * W + L * (4 * W * W + 4 * W + 4 * W + 2 * W * M + M + W) +
                     2 * W + W * D;
        W = 24, M = 40;
        int64_t nt = 600 * W + 16 * W + L * (4 * W * W + 4 * W + 4 * W + 2 * W * M + M + W) + 2 * W + W * D;
        CHECK(ap_clip_param_count(f, 1) == nv);
        CHECK(ap_clip_param_count(f, 0) == nt);
        ap_clip_close(f);
    }
    /* an HF folder: the weights file and a config.json with heads and activations */
    char dir[] = "/tmp/ap_clip_XXXXXX";
    if (!mkdtemp(dir)) {
        CHECK_MSG(0, "mkdtemp");
        return;
    }
    char p[256], q[256];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    char *target = realpath(test_path(files[0]), NULL);
    CHECK(target && symlink(target, p) == 0);
    free(target);
    snprintf(q, sizeof q, "%s/config.json", dir);
    FILE *fp = fopen(q, "w");
    if (fp) {
        fputs("{\"model_type\": \"clip\", \"text_config\": {\"num_attention_heads\": 3, \"hidden_act\": \"gelu\"},"
              " \"vision_config\": {\"num_attention_heads\": 4, \"hidden_act\": \"quick_gelu\"}}", fp);
        fclose(fp);
    }
    ap_clip_file *f = NULL;
    ap_clip_vision *v = NULL;
    ap_clip_text *t = NULL;
    if (ap_clip_open(c, dir, &f) == AP_OK) {
        ap_clip_load_vision(c, f, NULL, AP_F32, &v);
        ap_clip_load_text(c, f, NULL, AP_F32, &t);
        CHECK_OK(c);
        if (v && t) {
            CHECK(memcmp(&v->cfg, &ap_clip_vision_config_tiny, sizeof v->cfg) == 0);
            CHECK(memcmp(&t->cfg, &text_tiny, sizeof t->cfg) == 0);
            ap_tensor *px = fx(c, "pixels", AP_F32), *want = fx(c, "image_embeds", AP_F32);
            ap_tensor *got = ap_clip_vision_forward(c, v, px);
            compare("folder + config.json image embeds", got, want, TOL_F32);
            ap_tensor_release(px);
            ap_tensor_release(want);
            ap_tensor_release(got);
        }
    } else {
        CHECK_MSG(0, "open folder: %s", ap_last_error(c));
    }
    ap_clip_vision_free(v);
    ap_clip_text_free(t);
    ap_clip_close(f);
    f = NULL;
    unlink(p);
    /* a folder with a pytorch_model.bin: the layout comes from the names inside (here OpenCLIP's) */
    snprintf(p, sizeof p, "%s/pytorch_model.bin", dir);
    target = realpath(test_path(files[1]), NULL);
    CHECK(target && symlink(target, p) == 0);
    free(target);
    if (ap_clip_open(c, dir, &f) == AP_OK) {
        CHECK(ap_clip_layout_of(f) == AP_CLIP_OPENCLIP);
        CHECK(strstr(ap_weights_path(ap_clip_weights(f)), "pytorch_model.bin") != NULL);
    } else {
        CHECK_MSG(0, "open folder with pytorch_model.bin: %s", ap_last_error(c));
    }
    ap_clip_close(f);
    unlink(p);
    unlink(q);
    rmdir(dir);
}

/* ------------------------------------------------------------ errors */
/* Copies the f32 tensors of src into a safetensors file at path, dropping the
 * one named drop (or, when drop ends with '*', every one not starting with
 * drop's text before the '*') and cutting the first dimension of the one named
 * cut by one. */
static void write_variant(ap_ctx *c, const char *src, const char *path, const char *drop, const char *cut) {
    size_t keep = drop && drop[strlen(drop) - 1] == '*' ? strlen(drop) - 1 : 0;
    ap_weights *w = NULL;
    if (ap_weights_open(c, test_path(src), &w) != AP_OK) return;
    int n = ap_weights_count(w), k = 0;
    const char **names = calloc((size_t)n, sizeof *names);
    ap_tensor **ts = calloc((size_t)n, sizeof *ts);
    for (int i = 0; i < n; i++) {
        const char *nm = ap_weights_name(w, i);
        if (strcmp(ap_weights_dtype(w, i), "F32") || (drop && !keep && !strcmp(nm, drop))) continue;
        if (keep && strncmp(nm, drop, keep)) continue;
        ap_tensor *t = NULL;
        ap_weights_load(c, w, i, AP_F32, &t);
        if (!t) break;
        if (cut && !strcmp(nm, cut)) {
            int64_t s[AP_MAX_DIMS];
            int nd = ap_weights_shape(w, i, s);
            s[0] -= 1;
            ap_tensor *u = ap_tensor_new(c, AP_F32, nd, s);
            memcpy(ap_tensor_data(u), ap_tensor_cdata(t), ap_tensor_nbytes(u));
            ap_tensor_release(t);
            t = u;
        }
        names[k] = nm;
        ts[k++] = t;
    }
    ap_st_save(c, path, k, names, ts, 0, NULL, NULL);
    for (int i = 0; i < k; i++) ap_tensor_release(ts[i]);
    free(names);
    free(ts);
    ap_weights_close(w);
    CHECK_OK(c);
}

static void expect_error(ap_ctx *c, ap_status got, ap_status want, const char *what, const char *m1,
                         const char *m2) {
    const char *e = ap_last_error(c);
    printf("  %s: %s\n", what, e);
    CHECK_MSG(got == want, "%s: status %d, expected %d", what, (int)got, (int)want);
    CHECK_MSG(strstr(e, m1) != NULL, "%s: message lacks '%s'", what, m1);
    CHECK_MSG(!m2 || strstr(e, m2) != NULL, "%s: message lacks '%s'", what, m2);
    ap_clear_error(c);
}

static void test_errors(ap_ctx *c) {
    char path[] = "/tmp/ap_clip_err_XXXXXX.safetensors";
    int fd = mkstemps(path, 12);
    if (fd < 0) {
        CHECK_MSG(0, "mkstemps");
        return;
    }
    close(fd);
    ap_clip_file *f = NULL;
    ap_clip_vision *v = NULL;
    ap_clip_text *t = NULL;

    /* a missing tensor, transformers layout */
    write_variant(c, files[0], path, "vision_model.encoder.layers.1.mlp.fc2.bias", NULL);
    if (ap_clip_open(c, path, &f) == AP_OK) {
        expect_error(c, ap_clip_load_vision(c, f, &ap_clip_vision_config_tiny, AP_F32, &v), AP_ERR_NOT_FOUND,
                     "missing tensor", path, "'vision_model.encoder.layers.1.mlp.fc2.bias'");
        CHECK(v == NULL);
        CHECK(ap_clip_load_text(c, f, &text_tiny, AP_F32, &t) == AP_OK); /* the text tower is whole */
        ap_clip_text_free(t);
        t = NULL;
    }
    ap_clip_close(f);
    f = NULL;

    /* a fused in_proj one row short, OpenCLIP layout (names kept with their 'module.' prefix) */
    write_variant(c, files[1], path, NULL, "module.transformer.resblocks.1.attn.in_proj_weight");
    if (ap_clip_open(c, path, &f) == AP_OK) {
        CHECK(ap_clip_layout_of(f) == AP_CLIP_OPENCLIP);
        expect_error(c, ap_clip_load_text(c, f, &text_tiny, AP_F32, &t), AP_ERR_SHAPE, "short in_proj",
                     "'module.transformer.resblocks.1.attn.in_proj_weight' has shape [71,24]",
                     "expects [72,24]");
        CHECK(t == NULL);
        CHECK(ap_clip_load_vision(c, f, &ap_clip_vision_config_tiny, AP_F32, &v) == AP_OK);
        ap_clip_vision_free(v);
        v = NULL;
    }
    ap_clip_close(f);
    f = NULL;

    /* a projection of the wrong shape: the transposed shape is what the model expects */
    write_variant(c, files[1], path, NULL, "module.visual.proj");
    if (ap_clip_open(c, path, &f) == AP_OK)
        expect_error(c, ap_clip_load_vision(c, f, &ap_clip_vision_config_tiny, AP_F32, &v), AP_ERR_SHAPE,
                     "short visual.proj", "'module.visual.proj' has shape [31,16]", "expects [32,16]");
    ap_clip_close(f);
    f = NULL;

    /* a wrong config for the file: the message names the tensor */
    ap_clip_vision_config big = ap_clip_vision_config_tiny;
    big.mlp = 80;
    if (ap_clip_open(c, test_path(files[0]), &f) == AP_OK)
        expect_error(c, ap_clip_load_vision(c, f, &big, AP_F32, &v), AP_ERR_SHAPE, "config mismatch",
                     "'vision_model.encoder.layers.0.mlp.fc1.weight' has shape [72,32]", "expects [80,32]");
    ap_clip_close(f);
    f = NULL;

    /* not a CLIP file; a folder without weights; a tower the file lacks */
    expect_error(c, ap_clip_open(c, test_path(DIR_REF "tiny_ref.safetensors"), &f), AP_ERR_FORMAT, "not CLIP",
                 "tiny_ref.safetensors", "not a CLIP checkpoint");
    CHECK(f == NULL);
    char empty[] = "/tmp/ap_clip_empty_XXXXXX";
    if (mkdtemp(empty)) {
        expect_error(c, ap_clip_open(c, empty, &f), AP_ERR_NOT_FOUND, "empty folder", empty, "no CLIP weights");
        rmdir(empty);
    }
    write_variant(c, files[0], path, "text_model.embeddings.token_embedding.weight", NULL);
    if (ap_clip_open(c, path, &f) == AP_OK) {
        CHECK(!ap_clip_has_text(f) && ap_clip_has_vision(f));
        expect_error(c, ap_clip_load_text(c, f, NULL, AP_F32, &t), AP_ERR_NOT_FOUND, "no text tower", path,
                     "no text tower");
    }
    ap_clip_close(f);
    f = NULL;

    /* a vision-only file (CLIPVisionModelWithProjection's names: vision_model.*, visual_projection) */
    write_variant(c, files[0], path, "vis*", NULL); /* vision_model.*, visual_projection.* */
    if (ap_clip_open(c, path, &f) == AP_OK) {
        CHECK(ap_clip_layout_of(f) == AP_CLIP_HF && ap_clip_has_vision(f) && !ap_clip_has_text(f));
        CHECK(ap_clip_load_vision(c, f, &ap_clip_vision_config_tiny, AP_F32, &v) == AP_OK);
        ap_clip_vision_free(v);
        v = NULL;
        expect_error(c, ap_clip_logit_scale(c, f, &(float){0}), AP_ERR_NOT_FOUND, "no logit_scale", path,
                     "'logit_scale'");
    }
    ap_clip_close(f);
    f = NULL;

    /* pixels of the wrong size */
    if (ap_clip_open(c, test_path(files[0]), &f) == AP_OK &&
        ap_clip_load_vision(c, f, &ap_clip_vision_config_tiny, AP_F32, &v) == AP_OK) {
        ap_tensor *x = ap_tensor_zeros(c, AP_F32, 4, (int64_t[]){1, 24, 24, 3});
        CHECK(ap_clip_vision_forward(c, v, x) == NULL);
        expect_error(c, ap_last_status(c), AP_ERR_SHAPE, "pixels 24x24", "clip vision", "[B,30,30,3]");
        ap_tensor_release(x);
    }
    ap_clip_vision_free(v);
    ap_clip_close(f);
    unlink(path);
}

/* ------------------------------------------------------------ OpenCLIP tokenisation */
/* Derived by hand from SD_FACTS 3.3's vectors: the same BPE ids; the sequence
 * is start, ids, end, then zeros (OpenCLIP pads with 0, SD1.x with the end
 * token); longer prompts keep start + the first 75 ids + end. */
static void test_openclip_tokens(ap_ctx *c) {
    ap_tokenizer *tk = NULL;
    if (ap_tokenizer_load_bundled(c, &tk) != AP_OK) {
        CHECK_MSG(0, "%s", ap_last_error(c));
        return;
    }
    int32_t ids[AP_TOK_CONTEXT], sd[AP_TOK_CONTEXT];
    static const int32_t cat[] = {49406, 320, 1125, 539, 320, 2368, 49407};
    static const int32_t astro[] = {49406, 550, 18376, 6765, 320, 4558, 525, 518, 3293, 269, 49407};
    struct {
        const char *text;
        const int32_t *want;
        int n;
    } cases[] = {{"a photo of a cat", cat, 7}, {"An astronaut riding a horse on the moon.", astro, 11},
                 {"", (const int32_t[]){49406, 49407}, 2}};
    for (int k = 0; k < 3; k++) {
        int64_t nt = -1;
        ap_tokenize_seq(c, tk, cases[k].text, &ap_tok_opts_openclip, ids, &nt);
        ap_tokenize_seq(c, tk, cases[k].text, &ap_tok_opts_sd1, sd, NULL);
        CHECK_OK(c);
        CHECK(nt == cases[k].n - 2);
        int ok = 1, ok_sd = 1;
        for (int i = 0; i < AP_TOK_CONTEXT; i++) {
            ok &= ids[i] == (i < cases[k].n ? cases[k].want[i] : 0);
            ok_sd &= sd[i] == (i < cases[k].n ? cases[k].want[i] : 49407);
        }
        CHECK_MSG(ok, "openclip ids of '%s'", cases[k].text);
        CHECK_MSG(ok_sd, "sd1 ids of '%s'", cases[k].text);
    }
    /* 80 x "a": start, 75 x 320, end (the end token kept), no padding */
    char longp[161];
    for (int i = 0; i < 80; i++) longp[2 * i] = 'a', longp[2 * i + 1] = ' ';
    longp[159] = 0;
    int64_t nt = 0;
    ap_tokenize_seq(c, tk, longp, &ap_tok_opts_openclip, ids, &nt);
    CHECK(nt == 80);
    int ok = ids[0] == 49406 && ids[76] == 49407;
    for (int i = 1; i < 76; i++) ok &= ids[i] == 320;
    CHECK_MSG(ok, "openclip truncation");
    /* the pooled position of a zero-padded sequence is the end token (the largest id) */
    int am = 0;
    ap_tokenize_seq(c, tk, "a photo of a cat", &ap_tok_opts_openclip, ids, NULL);
    for (int i = 1; i < AP_TOK_CONTEXT; i++)
        if (ids[i] > ids[am]) am = i;
    CHECK(am == 6);
    ap_tokenizer_free(tk);
}

int main(void) {
    ap_ctx *c = test_ctx();
    if (ap_st_open(c, test_path(DIR_REF "tiny_ref.safetensors"), &ref) != AP_OK) {
        fprintf(stderr, "cannot open the fixture: %s\n", ap_last_error(c));
        return 1;
    }
    for (int which = 0; which < 2; which++) {
        test_towers(c, which, AP_F32, TOL_F32);
        test_towers(c, which, AP_BF16, TOL_BF16);
    }
    test_pixel_grad(c);
    test_configs(c);
    test_errors(c);
    test_openclip_tokens(c);
    ap_st_close(ref);
    ap_ctx_free(c);
    return test_summary("clip_models");
}
