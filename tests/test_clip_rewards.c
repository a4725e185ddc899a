/* The CLIP rewards (aesthetic, hps, pickscore) against the PyTorch reference of
 * tests/ref/gen_clip_rewards.py (fixtures in tests/ref/clip_rewards/, which is
 * laid out as a models directory: clip-vit-large-patch14/ in transformers
 * layout, HPS_v2.1_compressed.pt in OpenCLIP layout with a state_dict wrapper,
 * PickScore_v1/ in transformers layout with its logit scale):
 *   - the preprocessing (clamp, torchvision Resize + CenterCrop, Normalize) and
 *     its gradient, for bilinear / bicubic with and without antialias;
 *   - the real LAION head (bundled, and from shared/data) on fixed embeddings;
 *   - each reward's values and image gradients (f32: max|got - ref| / max|ref|
 *     at most 1e-4 for values, 1e-3 for gradients), and finite differences;
 *   - bf16 against f32, the registry, default losses, the mixture gradient, the
 *     missing-weights messages and bad inputs. */
#include "core/internal.h"
#include "gradcheck.h"
#include "rewards/clip_rewards.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DIR_REF "tests/ref/clip_rewards"
#define TOL_F32 1e-4
#define TOL_GRAD 1e-3
/* bf16 (weights stored bf16, AP_PREC_BF16): every matmul operand keeps 8
 * mantissa bits; through the tiny towers the rewards moved by at most ~1% of
 * their range when measured; 5e-2 leaves margin for other bf16 kernels. */
#define TOL_BF16 5e-2

static ap_safetensors *ref;
static char models[4096]; /* DIR_REF as an absolute path (test_path's buffer is reused) */
static const char *prompts[2];
static char prompt_buf[2][128];

static ap_tensor *fx(ap_ctx *c, const char *name) {
    ap_tensor *t = NULL;
    if (ap_st_load(c, ref, name, AP_F32, &t) != AP_OK) CHECK_MSG(0, "fixture %s: %s", name, ap_last_error(c));
    return t;
}

/* max|got - ref| / max|ref|, one check. */
static void close_rel(const char *label, const ap_tensor *got, const ap_tensor *want, double tol) {
    if (!got || !want || ap_tensor_numel(got) != ap_tensor_numel(want)) {
        CHECK_MSG(0, "%s: missing output or wrong size", label);
        return;
    }
    const float *g = ap_tensor_cdata(got), *w = ap_tensor_cdata(want);
    double md = 0, mr = 0;
    int64_t at = 0;
    for (int64_t i = 0; i < ap_tensor_numel(got); i++) {
        double d = fabs((double)g[i] - w[i]);
        if (d > md || isnan(d)) md = d, at = i;
        if (fabs(w[i]) > mr) mr = fabs(w[i]);
    }
    double rel = md / (mr > 0 ? mr : 1);
    CHECK_MSG(rel <= tol, "%s: rel err %.3g > %.3g (at %lld: %.8g vs %.8g)", label, rel, tol, (long long)at,
              (double)g[at], (double)w[at]);
    if (getenv("AP_TEST_VERBOSE")) printf("%s: rel err %.3g\n", label, rel);
}

static void set_prompts(void) {
    /* refs.safetensors' metadata holds the prompts as a JSON list of two plain strings */
    const char *m = ap_st_metadata(ref, "prompts");
    CHECK(m != NULL);
    for (int i = 0; i < 2; i++) {
        prompt_buf[i][0] = 0;
        const char *a = m ? strchr(m, '"') : NULL;
        for (int k = 0; k < i && a; k++) a = strchr(strchr(a + 1, '"') + 1, '"');
        const char *b = a ? strchr(a + 1, '"') : NULL;
        if (a && b && b - a - 1 < (long)sizeof prompt_buf[i]) {
            memcpy(prompt_buf[i], a + 1, (size_t)(b - a - 1));
            prompt_buf[i][b - a - 1] = 0;
        }
        prompts[i] = prompt_buf[i];
    }
    CHECK(!strcmp(prompts[0], "a photo of a cat"));
}

/* ------------------------------------------------------------ preprocessing */
typedef struct {
    int size;
    ap_clip_resize r;
} pre_u;

static ap_tensor *pre_f(ap_ctx *c, void *user, int n, ap_tensor **in) {
    (void)n;
    pre_u *u = user;
    return ap_clip_preprocess(c, in[0], u->size, &u->r);
}

static void test_preprocess(ap_ctx *c) {
    int k;
    for (k = 0;; k++) {
        char name[64];
        snprintf(name, sizeof name, "pre.%d.x", k);
        if (ap_st_find(ref, name) < 0) break;
        ap_tensor *x = fx(c, name);
        snprintf(name, sizeof name, "pre.%d.y", k);
        ap_tensor *y_ref = fx(c, name);
        snprintf(name, sizeof name, "pre.%d.gx", k);
        ap_tensor *gx_ref = fx(c, name);
        snprintf(name, sizeof name, "pre.%d.R", k);
        ap_tensor *R = fx(c, name);
        snprintf(name, sizeof name, "pre.%d.cfg", k);
        ap_tensor *cfg = NULL;
        ap_st_load(c, ref, name, AP_I64, &cfg);
        CHECK_OK(c);
        if (!x || !cfg) break;
        const int64_t *q = ap_tensor_cdata(cfg);
        ap_clip_resize rs = {q[1] ? AP_RESIZE_BICUBIC : AP_RESIZE_BILINEAR, (int)q[2]};
        ap_tensor_set_requires_grad(x, 1);
        ap_tensor *y = ap_clip_preprocess(c, x, (int)q[0], &rs);
        CHECK_OK(c);
        char label[96];
        snprintf(label, sizeof label, "preprocess %d (%s, %lldx%lld -> %lld)", k, ap_clip_resize_str(&rs),
                 (long long)ap_tensor_dim(x, 1), (long long)ap_tensor_dim(x, 2), (long long)q[0]);
        CHECK_MSG(y && ap_tensor_dim(y, 1) == q[0] && ap_tensor_dim(y, 2) == q[0], "%s: shape", label);
        close_rel(label, y, y_ref, 1e-5);
        if (y && ap_backward(c, y, R) == AP_OK) close_rel(label, ap_tensor_grad(x), gx_ref, 1e-5);
        CHECK_OK(c);
        ap_tensor *t[] = {x, y_ref, gx_ref, R, cfg, y};
        for (int i = 0; i < 6; i++) ap_tensor_release(t[i]);
    }
    CHECK_MSG(k >= 8, "only %d preprocessing cases", k);
    /* finite differences, away from the clamp's kinks at +-1 */
    test_rng r = {31};
    ap_tensor *x = test_rand_leaf(c, &r, 4, (int64_t[]){2, 13, 17, 3}, -0.9f, 0.9f);
    static const char *const modes[] = {"bilinear", "bilinear-noaa", "bicubic", "bicubic-noaa"};
    for (int m = 0; m < 4; m++) {
        pre_u u = {7, {0, 0}};
        CHECK(ap_clip_resize_parse(c, modes[m], &u.r) == AP_OK && !strcmp(ap_clip_resize_str(&u.r), modes[m]));
        char label[64];
        snprintf(label, sizeof label, "preprocess %s", modes[m]);
        gradcheck(c, label, pre_f, &u, 1, &x, NULL);
    }
    ap_tensor_release(x);
    /* the spec parser */
    ap_clip_resize rs;
    CHECK(ap_clip_resize_parse(c, NULL, &rs) == AP_OK && rs.mode == AP_RESIZE_BILINEAR && rs.antialias);
    CHECK(ap_clip_resize_parse(c, "", &rs) == AP_OK && rs.mode == AP_RESIZE_BILINEAR && rs.antialias);
    CHECK(ap_clip_resize_parse(c, "bicubic-noaa", &rs) == AP_OK && rs.mode == AP_RESIZE_BICUBIC && !rs.antialias);
    CHECK(ap_clip_resize_parse(c, "nearest", &rs) == AP_ERR_INVALID_ARG && strstr(ap_last_error(c), "'nearest'") &&
          strstr(ap_last_error(c), "bicubic-noaa"));
    ap_clear_error(c);
}

/* ------------------------------------------------------------ the aesthetic head */
static void test_head(ap_ctx *c) {
    ap_aesthetic_head h, h2;
    CHECK(ap_aesthetic_head_builtin(c, &h) == AP_OK);
    CHECK_OK(c);
    /* SD_FACTS 4.4's values of the collapsed head */
    CHECK_MSG(fabs(h.b - 5.2366458) < 1e-6, "b = %.9g", h.b);
    double nrm = 0, sum = 0;
    for (int i = 0; i < AP_AESTHETIC_DIM; i++) nrm += h.w[i] * h.w[i], sum += h.w[i];
    CHECK_MSG(fabs(sqrt(nrm) - 17.9956) < 1e-3 && fabs(sum + 9.7926) < 1e-3, "|w| %.6g, sum %.6g", sqrt(nrm), sum);
    CHECK(fabs(h.w[0] + 0.69159) < 1e-4 && fabs(h.w[1] + 0.55699) < 1e-4 && fabs(h.w[2] + 0.32117) < 1e-4 &&
          fabs(h.w[3] + 0.63148) < 1e-4);
    /* PyTorch's MLP on fixed embeddings */
    ap_tensor *emb = fx(c, "head.emb"), *want = fx(c, "head.score");
    ap_tensor *s = ap_aesthetic_head_forward(c, &h, emb);
    CHECK_OK(c);
    close_rel("aesthetic head vs PyTorch", s, want, 1e-6);
    ap_tensor_release(s);
    /* the same file from shared/data gives the same head */
    const char *dirs[] = {getenv("AP_SHARED_DIR"), "../shared", "../../shared"};
    char path[4096];
    int found = 0;
    for (int i = 0; i < 3 && !found; i++) {
        if (!dirs[i]) continue;
        snprintf(path, sizeof path, "%s/data/sac+logos+ava1-l14-linearMSE.pth", dirs[i]);
        found = access(path, R_OK) == 0;
    }
    if (found) {
        CHECK(ap_aesthetic_head_load(c, path, &h2) == AP_OK);
        CHECK(memcmp(&h, &h2, sizeof h) == 0);
    } else {
        printf("SKIP: shared/data/sac+logos+ava1-l14-linearMSE.pth not found (set AP_SHARED_DIR)\n");
    }
    CHECK_OK(c);
    /* a file without the head's tensors, and embeddings of the wrong width */
    CHECK(ap_aesthetic_head_load(c, test_path(DIR_REF "/HPS_v2.1_compressed.pt"), &h2) == AP_ERR_NOT_FOUND);
    CHECK_MSG(strstr(ap_last_error(c), "layers.0.weight") != NULL, "%s", ap_last_error(c));
    ap_clear_error(c);
    ap_tensor *e5 = ap_tensor_zeros(c, AP_F32, 2, (int64_t[]){2, 512});
    CHECK(ap_aesthetic_head_forward(c, &h, e5) == NULL && strstr(ap_last_error(c), "[2,512]"));
    ap_clear_error(c);
    ap_tensor_release(e5);
    ap_tensor_release(emb);
    ap_tensor_release(want);
}

/* ------------------------------------------------------------ the rewards */
static const char *const NAMES[3] = {"aesthetic", "hps", "pickscore"};

static ap_status open_reward(ap_ctx *c, int k, const ap_reward_opts *o, ap_reward **out) {
    ap_reward_opts oo = *o;
    oo.models_dir = models;
    return ap_reward_create(c, NAMES[k], &oo, out);
}

typedef struct {
    ap_reward *r;
} rew_u;

static ap_tensor *rew_f(ap_ctx *c, void *user, int n, ap_tensor **in) {
    (void)n;
    ap_reward *r = ((rew_u *)user)->r;
    return r->forward(c, r, in[0], prompts);
}

static void test_rewards(ap_ctx *c) {
    ap_tensor *images = fx(c, "images"), *R = fx(c, "R");
    test_rng rng = {32};
    /* small images for the finite differences: each pixel then moves the reward
     * enough to stand above the f32 rounding of the reward's value */
    ap_tensor *xs = test_rand_leaf(c, &rng, 4, (int64_t[]){2, 9, 11, 3}, -0.9f, 0.9f);
    for (int k = 0; k < 3; k++) {
        ap_reward *r = NULL;
        ap_reward_opts o = {0};
        CHECK(open_reward(c, k, &o, &r) == AP_OK);
        CHECK_OK(c);
        if (!r) continue;
        CHECK(!strcmp(r->name, NAMES[k]));
        char name[64], label[96];
        snprintf(name, sizeof name, "%s.r", NAMES[k]);
        ap_tensor *want = fx(c, name);
        snprintf(name, sizeof name, "%s.gx", NAMES[k]);
        ap_tensor *gwant = fx(c, name);
        ap_tensor *x = ap_copy(c, images);
        ap_tensor_set_requires_grad(x, 1);
        ap_tensor *v = r->forward(c, r, x, prompts);
        CHECK_OK(c);
        snprintf(label, sizeof label, "%s vs PyTorch", NAMES[k]);
        close_rel(label, v, want, TOL_F32);
        snprintf(label, sizeof label, "%s image gradient vs PyTorch", NAMES[k]);
        if (v && ap_backward(c, v, R) == AP_OK) close_rel(label, ap_tensor_grad(x), gwant, TOL_GRAD);
        /* a second forward reuses the cached text embeddings: same values */
        ap_tensor *v2 = r->forward(c, r, images, prompts);
        CHECK(v && v2 && memcmp(ap_tensor_cdata(v), ap_tensor_cdata(v2), 2 * sizeof(float)) == 0);
        /* finite differences of the reward w.r.t. the image */
        snprintf(label, sizeof label, "%s d/dimage", NAMES[k]);
        gradcheck(c, label, rew_f, &(rew_u){r}, 1, &xs, &(gc_opts){.eps = 1e-2, .max_elems = 48});
        /* bf16 weights and precision against f32 */
        ap_reward *rb = NULL;
        ap_set_precision(c, AP_PREC_BF16);
        CHECK(open_reward(c, k, &(ap_reward_opts){.weights_dtype = AP_BF16}, &rb) == AP_OK);
        ap_tensor *vb = rb ? rb->forward(c, rb, images, prompts) : NULL;
        snprintf(label, sizeof label, "%s bf16 vs f32", NAMES[k]);
        close_rel(label, vb, v2, TOL_BF16);
        ap_set_precision(c, AP_PREC_F32);
        CHECK_OK(c);
        ap_tensor *t[] = {want, gwant, x, v, v2, vb};
        for (int i = 0; i < 6; i++) ap_tensor_release(t[i]);
        ap_reward_free(rb);
        ap_reward_free(r);
    }
    ap_tensor_release(xs);
    ap_tensor_release(images);
    ap_tensor_release(R);
}

/* The gradient of the mixture aesthetic=1,hps=0.5 is the weighted sum of the
 * parts' gradients (and the value the weighted sum of the values). */
static void test_mixture(ap_ctx *c) {
    ap_reward_opts o = {.models_dir = models};
    ap_reward_mix *mix = NULL;
    CHECK(ap_reward_mix_parse(c, "aesthetic=1, hps=0.5", &o, &mix) == AP_OK);
    CHECK_OK(c);
    if (!mix) return;
    ap_tensor *images = fx(c, "images");
    ap_tensor *x = ap_copy(c, images);
    ap_tensor_set_requires_grad(x, 1);
    ap_tensor *parts[2] = {0};
    ap_tensor *tot = ap_reward_mix_forward(c, mix, x, prompts, parts);
    ap_tensor *s = ap_sum(c, tot);
    CHECK(s && ap_backward(c, s, NULL) == AP_OK);
    int64_t n = ap_tensor_numel(x);
    size_t nb = sizeof(float) * (size_t)n;
    float *g = malloc(nb), *gp[2] = {malloc(nb), malloc(nb)};
    memcpy(g, ap_tensor_cdata(ap_tensor_grad(x)), sizeof(float) * (size_t)n);
    for (int i = 0; i < 2; i++) {
        ap_tensor_zero_grad(x);
        ap_tensor *ri = mix->parts[i]->forward(c, mix->parts[i], x, prompts), *si = ap_sum(c, ri);
        CHECK(si && ap_backward(c, si, NULL) == AP_OK);
        memcpy(gp[i], ap_tensor_cdata(ap_tensor_grad(x)), sizeof(float) * (size_t)n);
        ap_tensor_release(ri);
        ap_tensor_release(si);
    }
    double *want = malloc(sizeof(double) * (size_t)n);
    for (int64_t i = 0; i < n; i++) want[i] = gp[0][i] + 0.5 * gp[1][i];
    double gmax = 0;
    for (int64_t i = 0; i < n; i++) gmax = fmax(gmax, fabs(want[i]));
    test_close("mixture gradient = aesthetic + 0.5 hps", g, want, n, 1e-5, 1e-6 * gmax);
    if (tot && parts[0] && parts[1]) {
        const float *t = ap_tensor_cdata(tot), *a = ap_tensor_cdata(parts[0]), *b = ap_tensor_cdata(parts[1]);
        CHECK(fabsf(t[0] - (a[0] + 0.5f * b[0])) < 1e-5f && fabsf(t[1] - (a[1] + 0.5f * b[1])) < 1e-5f);
    }
    CHECK_OK(c);
    free(g);
    free(gp[0]);
    free(gp[1]);
    free(want);
    ap_tensor_release(tot);
    ap_tensor_release(parts[0]);
    ap_tensor_release(parts[1]);
    ap_tensor_release(s);
    ap_tensor_release(x);
    ap_tensor_release(images);
    ap_reward_mix_free(mix);
}

static void test_default_loss(ap_ctx *c) {
    ap_reward_opts o = {.models_dir = models};
    static const char *const cases[][2] = {{"aesthetic", "target:10"}, {"aesthetic=1", "target:10"},
                                           {"aesthetic=2", "maximize"}, {"hps", "maximize"},
                                           {"pickscore", "maximize"},    {"aesthetic,hps", "maximize"},
                                           {"brightness", "maximize"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ap_reward_mix *m = NULL;
        CHECK(ap_reward_mix_parse(c, cases[i][0], &o, &m) == AP_OK);
        const char *l = ap_reward_mix_default_loss(m);
        CHECK_MSG(!strcmp(l, cases[i][1]), "%s: default loss %s, expected %s", cases[i][0], l, cases[i][1]);
        ap_reward_loss loss;
        CHECK(ap_reward_loss_parse(c, l, &loss) == AP_OK);
        ap_reward_mix_free(m);
    }
    CHECK_OK(c);
}

static void expect_msg(ap_ctx *c, ap_status got, ap_status want, const char *const *needles) {
    const char *m = ap_last_error(c);
    CHECK_MSG(got == want, "status %d, expected %d (%s)", got, want, m);
    for (; *needles; needles++) CHECK_MSG(strstr(m, *needles) != NULL, "message '%s' lacks '%s'", m, *needles);
    ap_clear_error(c);
}

static void test_missing_weights(ap_ctx *c) {
    char dir[] = "/tmp/ap_clip_rewards_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    ap_reward_opts o = {.models_dir = dir};
    ap_reward *r = NULL;
    expect_msg(c, ap_reward_create(c, "aesthetic", &o, &r), AP_ERR_NOT_FOUND,
               (const char *[]){"aesthetic", dir, "clip-vit-large-patch14", "openai/clip-vit-large-patch14",
                                "model.safetensors", "--models-dir", "AP_MODELS_DIR", NULL});
    expect_msg(c, ap_reward_create(c, "hps", &o, &r), AP_ERR_NOT_FOUND,
               (const char *[]){"hps", dir, "HPS_v2.1_compressed.pt", "HPS_v2_compressed.pt", "xswu/HPSv2",
                                "never downloads", NULL});
    expect_msg(c, ap_reward_create(c, "pickscore", &o, &r), AP_ERR_NOT_FOUND,
               (const char *[]){"pickscore", "PickScore_v1", "yuvalkirstain/PickScore_v1", NULL});
    CHECK(r == NULL);
    /* an empty folder of the right name is not enough either */
    char sub[128];
    snprintf(sub, sizeof sub, "%s/clip-vit-large-patch14", dir);
    CHECK(mkdir(sub, 0755) == 0);
    expect_msg(c, ap_reward_create(c, "aesthetic", &o, &r), AP_ERR_NOT_FOUND,
               (const char *[]){"clip-vit-large-patch14", NULL});
    rmdir(sub);
    /* where the directory comes from: opts, then AP_MODELS_DIR, then XDG_DATA_HOME, then HOME */
    char buf[512];
    const char *old_env = getenv("AP_MODELS_DIR"), *old_xdg = getenv("XDG_DATA_HOME");
    char *se = old_env ? strdup(old_env) : NULL, *sx = old_xdg ? strdup(old_xdg) : NULL;
    setenv("AP_MODELS_DIR", "/env/models", 1);
    setenv("XDG_DATA_HOME", "/xdg", 1);
    CHECK(!strcmp(ap_reward_models_dir(&o, buf, sizeof buf), dir));
    CHECK(!strcmp(ap_reward_models_dir(NULL, buf, sizeof buf), "/env/models"));
    unsetenv("AP_MODELS_DIR");
    CHECK(!strcmp(ap_reward_models_dir(NULL, buf, sizeof buf), "/xdg/alignprop/models"));
    unsetenv("XDG_DATA_HOME");
    const char *home = getenv("HOME");
    char want[512];
    snprintf(want, sizeof want, "%s/.local/share/alignprop/models", home && *home ? home : ".");
    CHECK(!strcmp(ap_reward_models_dir(NULL, buf, sizeof buf), want));
    CHECK(ap_reward_models_dir(&o, buf, 4) == NULL);
    /* the environment variable reaches the rewards */
    setenv("AP_MODELS_DIR", dir, 1);
    expect_msg(c, ap_reward_create(c, "hps", NULL, &r), AP_ERR_NOT_FOUND, (const char *[]){dir, NULL});
    setenv("AP_MODELS_DIR", models, 1);
    CHECK(ap_reward_create(c, "hps", NULL, &r) == AP_OK && r);
    ap_reward_free(r);
    if (se) setenv("AP_MODELS_DIR", se, 1);
    else unsetenv("AP_MODELS_DIR");
    if (sx) setenv("XDG_DATA_HOME", sx, 1);
    free(se);
    free(sx);
    rmdir(dir);
    CHECK_OK(c);
}

static void test_errors(ap_ctx *c) {
    ap_reward_opts o = {.models_dir = models};
    ap_reward *r = NULL;
    /* a tower that does not project to 768 cannot feed the aesthetic head */
    expect_msg(c, ap_reward_aesthetic_open(c, test_path(DIR_REF "/PickScore_v1"), &o, &r), AP_ERR_SHAPE,
               (const char *[]){"aesthetic", "projects to 24", "768", NULL});
    /* a vision-only checkpoint cannot score prompts */
    expect_msg(c, ap_reward_hps_open(c, test_path(DIR_REF "/clip-vit-large-patch14"), &o, &r), AP_ERR_FORMAT,
               (const char *[]){"hps", "text", NULL});
    /* a bad resize spec */
    expect_msg(c, ap_reward_create(c, "pickscore", &(ap_reward_opts){.models_dir = o.models_dir, .resize = "area"}, &r),
               AP_ERR_INVALID_ARG, (const char *[]){"'area'", NULL});
    CHECK(r == NULL);
    CHECK(ap_reward_create(c, "hps", &o, &r) == AP_OK);
    if (!r) return;
    test_rng rng = {33};
    ap_tensor *x = test_rand(c, &rng, 4, (int64_t[]){2, 8, 8, 3}, -1, 1);
    ap_tensor *x4 = test_rand(c, &rng, 4, (int64_t[]){2, 8, 8, 4}, -1, 1);
    expect_msg(c, r->forward(c, r, x, NULL) == NULL ? ap_last_status(c) : AP_OK, AP_ERR_INVALID_ARG,
               (const char *[]){"hps", "prompts", NULL});
    expect_msg(c, r->forward(c, r, x, (const char *[]){"a", NULL}) == NULL ? ap_last_status(c) : AP_OK,
               AP_ERR_INVALID_ARG, (const char *[]){"prompt 1", NULL});
    expect_msg(c, r->forward(c, r, x4, prompts) == NULL ? ap_last_status(c) : AP_OK, AP_ERR_SHAPE,
               (const char *[]){"hps", "[2,8,8,4]", NULL});
    /* tiny images are upscaled; a 1-pixel-high strip is fine too */
    ap_tensor *strip = test_rand(c, &rng, 4, (int64_t[]){2, 1, 5, 3}, -1, 1);
    ap_tensor *v = r->forward(c, r, strip, prompts);
    CHECK_OK(c);
    CHECK(v && ap_tensor_numel(v) == 2 && isfinite(((float *)ap_tensor_data(v))[0]));
    ap_tensor_release(v);
    ap_tensor_release(strip);
    ap_tensor_release(x);
    ap_tensor_release(x4);
    ap_reward_free(r);
}

int main(void) {
    ap_ctx *c = test_ctx();
    if (ap_st_open(c, test_path(DIR_REF "/refs.safetensors"), &ref) != AP_OK) {
        fprintf(stderr, "cannot open the fixtures: %s\n", ap_last_error(c));
        return 1;
    }
    snprintf(models, sizeof models, "%s", test_path(DIR_REF));
    set_prompts();
    test_preprocess(c);
    test_head(c);
    test_rewards(c);
    test_mixture(c);
    test_default_loss(c);
    test_missing_weights(c);
    test_errors(c);
    ap_st_close(ref);
    ap_ctx_free(c);
    return test_summary("clip_rewards");
}
