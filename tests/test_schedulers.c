/* The SD 1.5 schedule and the three samplers against PyTorch references written from
 * diffusers' code (tests/ref/schedulers.bin from tests/ref/gen_schedulers.py), against
 * the float64 values of shared/spec/SD_FACTS.md section 6, and their error cases. */
#include "diffusion/sampler.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ fixture */
typedef struct {
    char name[64];
    int dtype; /* 0 f32, 1 f64, 2 i64 */
    uint64_t count;
    const uint8_t *data;
} record;

static record recs[256];
static int nrecs;
static uint8_t *blob;

static int load_fixture(void) {
    size_t len = 0;
    blob = test_read_file("tests/ref/schedulers.bin", &len);
    if (!blob || len < 12 || memcmp(blob, "APSCH001", 8)) return 0;
    uint32_t n;
    memcpy(&n, blob + 8, 4);
    size_t off = 12;
    for (uint32_t i = 0; i < n && nrecs < 256; i++) {
        if (off + 2 > len) return 0;
        uint16_t nl;
        memcpy(&nl, blob + off, 2);
        off += 2;
        if (nl >= 64 || off + nl + 9 > len) return 0;
        record *r = &recs[nrecs++];
        memcpy(r->name, blob + off, nl);
        r->name[nl] = 0;
        off += nl;
        r->dtype = blob[off++];
        memcpy(&r->count, blob + off, 8);
        off += 8;
        size_t es = r->dtype == 0 ? 4 : 8;
        if (r->count > (len - off) / es) return 0;
        r->data = blob + off;
        off += r->count * es;
    }
    return off == len;
}

static const record *find(const char *name) {
    for (int i = 0; i < nrecs; i++)
        if (!strcmp(recs[i].name, name)) return &recs[i];
    CHECK_MSG(0, "fixture record %s missing", name);
    return NULL;
}

/* a record's values as floats (copied: the blob is not aligned) */
static float *floats(const char *name, int64_t *count) {
    const record *r = find(name);
    if (!r) return NULL;
    float *v = malloc(r->count * sizeof(float) + 4);
    for (uint64_t i = 0; i < r->count; i++) {
        if (r->dtype == 0)
            memcpy(v + i, r->data + 4 * i, 4);
        else if (r->dtype == 1) {
            double d;
            memcpy(&d, r->data + 8 * i, 8);
            v[i] = (float)d;
        } else {
            int64_t k;
            memcpy(&k, r->data + 8 * i, 8);
            v[i] = (float)k;
        }
    }
    if (count) *count = (int64_t)r->count;
    return v;
}

static int64_t int_at(const char *name, int i) {
    const record *r = find(name);
    int64_t k = 0;
    if (r && r->dtype == 2 && (uint64_t)i < r->count) memcpy(&k, r->data + 8 * i, 8);
    return k;
}

static int64_t bits_diff(const float *a, const float *b, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (memcmp(a + i, b + i, 4)) return i;
    return -1;
}

#define CHECK_BITS(label, got, want, n)                                                            \
    do {                                                                                           \
        int64_t at_ = bits_diff(got, want, n);                                                     \
        CHECK_MSG(at_ < 0, "%s: element %lld is %.9g, reference %.9g", label, (long long)at_,     \
                  at_ >= 0 ? (got)[at_] : 0.0, at_ >= 0 ? (want)[at_] : 0.0);                      \
    } while (0)

/* ------------------------------------------------------------ schedule */
static void test_schedule(ap_ctx *c) {
    ap_schedule s;
    ap_schedule_config cfg = ap_schedule_config_sd15();
    CHECK(ap_schedule_init(c, &s, &cfg) == AP_OK);
    float *betas = floats("schedule.betas", NULL), *acp = floats("schedule.alphas_cumprod", NULL);
    if (betas && acp && s.n == 1000) {
        CHECK_BITS("betas", s.betas, betas, 1000);
        CHECK_BITS("alphas_cumprod", s.alphas_cumprod, acp, 1000);
    }
    free(betas);
    free(acp);
    /* the float64 reference values of SD_FACTS.md 6.2 */
    static const struct {
        int t;
        double beta, acp;
    } facts[] = {{0, 0.00085, 0.99915},          {1, 0.00085470, 0.99829603}, {21, 0.00095139, 0.98038075},
                 {481, 0.0046051, 0.30229566},   {501, 0.0048261, 0.27499907}, {961, 0.0113394, 0.0072817271},
                 {981, 0.0116848, 0.0057755001}, {999, 0.012, 0.0046600985}};
    for (size_t k = 0; k < sizeof facts / sizeof facts[0]; k++) {
        CHECK_MSG(fabs(s.betas[facts[k].t] - facts[k].beta) < 2e-4 * facts[k].beta, "beta[%d]", facts[k].t);
        CHECK_MSG(fabs(s.alphas_cumprod[facts[k].t] - facts[k].acp) < 2e-6 * facts[k].acp + 1e-9, "acp[%d] %.9g",
                  facts[k].t, s.alphas_cumprod[facts[k].t]);
    }
    /* a naive double schedule agrees to f32 accuracy everywhere */
    double ref_b[1000], ref_a[1000], prod = 1, lo = sqrt(0.00085), hi = sqrt(0.012);
    for (int i = 0; i < 1000; i++) {
        double r = lo + (hi - lo) * i / 999.0;
        ref_b[i] = r * r;
        prod *= 1 - ref_b[i];
        ref_a[i] = prod;
    }
    test_close("betas vs double", s.betas, ref_b, 1000, 1e-6, 0);
    test_close("alphas_cumprod vs double", s.alphas_cumprod, ref_a, 1000, 2e-6, 0);
    ap_schedule_free(&s);
    ap_schedule_free(&s); /* twice is fine */

    /* linspace on odd sizes against a double reference; ends exact */
    int sizes[] = {2, 3, 7, 16, 17, 33, 100, 1001};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        int n = sizes[k];
        float *v = malloc(n * sizeof(float));
        double *ref = malloc(n * sizeof(double));
        ap_linspace_f32(v, -1.25f, 3.5f, n);
        for (int i = 0; i < n; i++) ref[i] = -1.25 + (3.5 + 1.25) * i / (n - 1);
        test_close("linspace", v, ref, n, 0, 4e-7);
        CHECK(v[0] == -1.25f && v[n - 1] == 3.5f);
        free(v);
        free(ref);
    }
    /* np.interp on an index grid */
    const float fp[4] = {1, 3, 4, 10};
    CHECK(ap_interp_index(0, fp, 4) == 1 && ap_interp_index(-2, fp, 4) == 1 && ap_interp_index(3, fp, 4) == 10);
    CHECK(ap_interp_index(9, fp, 4) == 10 && ap_interp_index(1, fp, 4) == 3 && ap_interp_index(2.5, fp, 4) == 7);
    CHECK(fabs(ap_interp_index(0.25, fp, 4) - 1.5) < 1e-15);

    /* errors */
    cfg.num_train_timesteps = 1;
    CHECK(ap_schedule_init(c, &s, &cfg) == AP_ERR_INVALID_ARG);
    CHECK(strstr(ap_last_error(c), "num_train_timesteps") != NULL);
    ap_clear_error(c);
    cfg = ap_schedule_config_sd15();
    cfg.beta_end = 1.5;
    CHECK(ap_schedule_init(c, &s, &cfg) == AP_ERR_INVALID_ARG);
    ap_clear_error(c);
    cfg.beta_end = 0.012;
    cfg.beta_schedule = (ap_beta_schedule)5;
    CHECK(ap_schedule_init(c, &s, &cfg) == AP_ERR_INVALID_ARG);
    ap_clear_error(c);
    cfg.beta_schedule = AP_BETA_LINEAR; /* linear works too */
    CHECK(ap_schedule_init(c, &s, &cfg) == AP_OK && fabs(s.betas[500] - (0.00085 + (0.012 - 0.00085) * 500 / 999.0)) < 1e-8);
    ap_schedule_free(&s);
    CHECK(ap_schedule_init(c, NULL, &cfg) == AP_ERR_INVALID_ARG);
    ap_clear_error(c);
}

/* ------------------------------------------------------------ sampling runs */
typedef struct {
    const char *name;
    ap_sampler_kind kind;
    float eta;
    ap_timestep_spacing spacing;
    int steps;
    bool exact; /* bit-exact with the reference (no f32 log/exp involved) */
} run_case;

/* the fixture's "model": eps = 0.5 * x_in + (t / 1000) * W, each op rounded */
static void fake_model(const float *x_in, const float *w, float t, float *eps, int64_t n) {
    float k = (float)((double)t / 1000.0);
    for (int64_t i = 0; i < n; i++) eps[i] = ap_mulf_rn(0.5f, x_in[i]) + ap_mulf_rn(k, w[i]);
}

static double max_rel(const float *got, const float *ref, int64_t n) {
    double scale = 0, worst = 0;
    for (int64_t i = 0; i < n; i++) scale = fmax(scale, fabs(ref[i]));
    for (int64_t i = 0; i < n; i++) worst = fmax(worst, fabs(got[i] - ref[i]) / (scale > 0 ? scale : 1));
    return worst;
}

static void test_run(ap_ctx *c, const run_case *rc) {
    char key[96];
    snprintf(key, sizeof key, "%s.shape", rc->name);
    ap_latent_shape sh = {int_at(key, 0), int_at(key, 1), int_at(key, 2), int_at(key, 3)};
    int64_t n = sh.n * sh.h * sh.w * sh.c;
    snprintf(key, sizeof key, "%s.seed", rc->name);
    uint64_t seed = (uint64_t)int_at(key, 0);
    ap_sampler_config cfg = ap_sampler_config_sd15(rc->kind);
    cfg.eta = rc->eta;
    cfg.spacing = rc->spacing;
    ap_sampler *s = ap_sampler_create(c, &cfg, rc->steps);
    CHECK_MSG(s != NULL, "%s: %s", rc->name, ap_last_error(c));
    if (!s || n <= 0) return;
    int N = ap_sampler_num_steps(s);
    int64_t cnt;
    snprintf(key, sizeof key, "%s.timesteps", rc->name);
    float *ts = floats(key, &cnt);
    CHECK(cnt == N);
    float mine_ts[1000];
    for (int i = 0; i < N; i++) mine_ts[i] = ap_sampler_timestep(s, i);
    CHECK_BITS(key, mine_ts, ts, N);
    if (rc->kind != AP_SAMPLER_DDIM) {
        snprintf(key, sizeof key, "%s.sigmas", rc->name);
        float *sig = floats(key, &cnt);
        CHECK(cnt == N + 1 && ap_sampler_sigmas(s) != NULL);
        if (ap_sampler_sigmas(s)) CHECK_BITS(key, ap_sampler_sigmas(s), sig, N + 1);
        free(sig);
    } else {
        CHECK(ap_sampler_sigmas(s) == NULL);
    }
    snprintf(key, sizeof key, "%s.init_noise_sigma", rc->name);
    float *ins = floats(key, NULL);
    CHECK_MSG(ins && ap_sampler_init_noise_sigma(s) == ins[0], "%s: init_noise_sigma %.9g vs %.9g", rc->name,
              ap_sampler_init_noise_sigma(s), ins ? ins[0] : 0);
    free(ins);

    snprintf(key, sizeof key, "%s.W", rc->name);
    float *w = floats(key, NULL);
    snprintf(key, sizeof key, "%s.x", rc->name);
    float *xs = floats(key, &cnt);
    CHECK(cnt == (N + 1) * n);
    snprintf(key, sizeof key, "%s.x_in", rc->name);
    float *xins = floats(key, NULL);
    snprintf(key, sizeof key, "%s.eps", rc->name);
    float *epss = floats(key, NULL);
    if (!w || !xs || !xins || !epss || cnt != (N + 1) * n) goto done;

    /* 1. the whole chain in f32, as a pipeline runs it: exact for DDIM and Euler a */
    {
        ap_rng g;
        ap_rng_init(&g, seed);
        float *x = malloc(n * 4), *xin = malloc(n * 4), *eps = malloc(n * 4);
        CHECK(ap_sampler_init_latents_f32(c, s, &g, x, sh) == AP_OK);
        CHECK_BITS("initial latents", x, xs, n);
        double worst = 0;
        for (int i = 0; i < N; i++) {
            CHECK(ap_sampler_scale_input_f32(c, s, i, x, xin, n) == AP_OK);
            fake_model(xin, w, ap_sampler_timestep(s, i), eps, n);
            CHECK(ap_sampler_step_f32(c, s, i, x, eps, x, sh, &g) == AP_OK); /* in place */
            if (rc->exact) {
                char label[128];
                snprintf(label, sizeof label, "%s chain step %d", rc->name, i);
                CHECK_BITS(label, xin, xins + i * n, n);
                CHECK_BITS(label, eps, epss + i * n, n);
                CHECK_BITS(label, x, xs + (i + 1) * n, n);
            } else {
                worst = fmax(worst, max_rel(x, xs + (i + 1) * n, n));
            }
        }
        CHECK_OK(c);
        if (!rc->exact) {
            CHECK_MSG(worst < 1e-5, "%s: chain drifts %.3g from the reference", rc->name, worst);
            printf("%s: f32 chain within %.2g (relative to max |x|) of the reference\n", rc->name, worst);
        }
        free(x);
        free(xin);
        free(eps);
    }

    /* 2. each step from the reference's own inputs (no drift): DPM++ to a few ulps */
    if (!rc->exact) {
        float *out = malloc(n * 4);
        double worst = 0;
        for (int i = 0; i < N; i++) {
            CHECK(ap_sampler_step_f32(c, s, i, xs + i * n, epss + i * n, out, sh, NULL) == AP_OK);
            worst = fmax(worst, max_rel(out, xs + (i + 1) * n, n));
        }
        CHECK_MSG(worst < 2e-6, "%s: per-step error %.3g", rc->name, worst);
        printf("%s: f32 step within %.2g of the reference\n", rc->name, worst);
        free(out);
    }

    /* 3. the step as a linear combination (double coefficients) */
    {
        ap_rng g;
        ap_rng_init(&g, seed);
        float *z = malloc(n * 4), *xin = malloc(n * 4), *m_prev = malloc(n * 4), *m_cur = malloc(n * 4),
              *out = malloc(n * 4);
        ap_rng_randn_nhwc(&g, z, sh.n, sh.h, sh.w, sh.c); /* the initial latents' draw */
        double worst = 0, worst_in = 0;
        int orders[1000];
        for (int i = 0; i < N; i++) {
            ap_step_coefs k;
            CHECK(ap_sampler_coefs(c, s, i, &k) == AP_OK);
            orders[i] = k.order;
            CHECK(k.timestep == ap_sampler_timestep(s, i));
            if (k.draws_noise) ap_rng_randn_nhwc(&g, z, sh.n, sh.h, sh.w, sh.c);
            const float *x = xs + i * n, *e = epss + i * n;
            for (int64_t j = 0; j < n; j++) {
                xin[j] = (float)(k.in_scale * x[j]);
                m_cur[j] = (float)(k.x0_x * x[j] + k.x0_eps * e[j]);
                out[j] = (float)(k.a * x[j] + k.b * e[j] + (k.c != 0 ? k.c * m_prev[j] : 0) +
                                 (k.draws_noise ? k.s * z[j] : 0));
            }
            CHECK(k.c == 0 || i > 0);
            worst = fmax(worst, max_rel(out, xs + (i + 1) * n, n));
            worst_in = fmax(worst_in, max_rel(xin, xins + i * n, n));
            float *t = m_prev;
            m_prev = m_cur;
            m_cur = t;
        }
        CHECK_MSG(worst < 1e-5 && worst_in < 1e-6, "%s: coefficient step error %.3g, input scale error %.3g",
                  rc->name, worst, worst_in);
        if (rc->kind == AP_SAMPLER_DPMPP_2M) {
            CHECK(orders[0] == 1 && orders[N - 1] == 1);
            for (int i = 1; i < N - 1; i++) CHECK(orders[i] == 2);
        }
        printf("%s: coefficient form within %.2g of the reference\n", rc->name, worst);
        free(z);
        free(xin);
        free(m_prev);
        free(m_cur);
        free(out);
    }
done:
    free(ts);
    free(w);
    free(xs);
    free(xins);
    free(epss);
    ap_sampler_free(s);
}

/* ------------------------------------------------------------ timesteps of other spacings */
static void test_spacings(ap_ctx *c) {
    static const struct {
        ap_sampler_kind kind;
        const char *tag;
    } kinds[] = {{AP_SAMPLER_DDIM, "ddim"}, {AP_SAMPLER_EULER_A, "euler_a"}, {AP_SAMPLER_DPMPP_2M, "dpmpp_2m"}};
    int ns[] = {10, 25};
    for (int k = 0; k < 3; k++)
        for (int j = 0; j < 2; j++)
            for (int sp = AP_SPACING_LINSPACE; sp <= AP_SPACING_TRAILING; sp++) {
                char key[96];
                snprintf(key, sizeof key, "ts.%s.%s.%d", kinds[k].tag, ap_spacing_name((ap_timestep_spacing)sp), ns[j]);
                bool have = false;
                for (int r = 0; r < nrecs; r++) have |= !strcmp(recs[r].name, key);
                if (!have) continue;
                ap_sampler_config cfg = ap_sampler_config_sd15(kinds[k].kind);
                cfg.spacing = (ap_timestep_spacing)sp;
                ap_sampler *s = ap_sampler_create(c, &cfg, ns[j]);
                CHECK_MSG(s != NULL, "%s: %s", key, ap_last_error(c));
                if (!s) {
                    ap_clear_error(c);
                    continue;
                }
                int64_t cnt;
                float *ts = floats(key, &cnt), mine[64];
                CHECK(cnt == ns[j]);
                for (int i = 0; i < ns[j]; i++) mine[i] = ap_sampler_timestep(s, i);
                CHECK_BITS(key, mine, ts, ns[j]);
                free(ts);
                snprintf(key, sizeof key, "sig.%s.%s.%d", kinds[k].tag, ap_spacing_name((ap_timestep_spacing)sp), ns[j]);
                for (int r = 0; r < nrecs; r++)
                    if (!strcmp(recs[r].name, key)) {
                        float *sig = floats(key, &cnt);
                        CHECK(cnt == ns[j] + 1);
                        CHECK_BITS(key, ap_sampler_sigmas(s), sig, ns[j] + 1);
                        free(sig);
                    }
                ap_sampler_free(s);
            }
    /* DDIM leading, 50 steps: 981, 961, ..., 21, 1 (SD_FACTS 6.3) */
    ap_sampler_config cfg = ap_sampler_config_sd15(AP_SAMPLER_DDIM);
    ap_sampler *s = ap_sampler_create(c, &cfg, 50);
    CHECK(s != NULL);
    if (s) {
        int ok = 1;
        for (int i = 0; i < 50; i++) ok &= ap_sampler_timestep(s, i) == (float)(981 - 20 * i);
        CHECK(ok);
        CHECK(isnan(ap_sampler_timestep(s, 50)));
        ap_sampler_free(s);
    }
    /* numpy's float arange gives some step counts one timestep too many: refused */
    const record *bad = find("trailing_bad_counts");
    int refused = 0;
    for (uint64_t i = 0; bad && i < bad->count; i++) {
        int n = (int)int_at("trailing_bad_counts", (int)i);
        cfg = ap_sampler_config_sd15(AP_SAMPLER_EULER_A);
        cfg.spacing = AP_SPACING_TRAILING;
        s = ap_sampler_create(c, &cfg, n);
        refused += s == NULL && ap_last_status(c) == AP_ERR_UNSUPPORTED;
        ap_sampler_free(s);
        ap_clear_error(c);
    }
    CHECK(bad && bad->count > 0 && refused == (int)bad->count);
}

/* SD_FACTS 6.3: DDIM, eta 1, 50 steps: sigma, sqrt(a_prev) and the direction coefficient.
 * The spec's values come from a float64 schedule; near t = 0 the f32 rounding of the
 * alphas (~1e-8) is amplified in 1 - a_prev - sigma^2, hence the looser 5e-5. */
static void test_ddim_facts(ap_ctx *c) {
    ap_sampler_config cfg = ap_sampler_config_sd15(AP_SAMPLER_DDIM);
    cfg.eta = 1;
    ap_sampler *s = ap_sampler_create(c, &cfg, 50);
    CHECK(s != NULL);
    if (!s) return;
    static const struct {
        int step;
        double sigma, sqrt_aprev, dir;
    } f[] = {{0, 0.454463, 0.0853330, 0.886669}, {48, 0.0394795, 0.999148, 0.0120556}, {49, 0.0206483, 0.999575, 0.0205827}};
    for (int k = 0; k < 3; k++) {
        ap_step_coefs co;
        CHECK(ap_sampler_coefs(c, s, f[k].step, &co) == AP_OK);
        double sap = co.a / co.x0_x, dir = co.b - sap * co.x0_eps;
        CHECK_MSG(fabs(co.s - f[k].sigma) < 5e-5 * f[k].sigma && fabs(sap - f[k].sqrt_aprev) < 2e-6 &&
                      fabs(dir - f[k].dir) < 5e-5 * f[k].dir,
                  "step %d: sigma %.7g sqrt(a_prev) %.7g dir %.7g", f[k].step, co.s, sap, dir);
        CHECK(co.draws_noise && co.c == 0 && co.in_scale == 1);
    }
    ap_sampler_free(s);
}

/* ------------------------------------------------------------ errors and names */
static void test_errors(ap_ctx *c) {
    CHECK(!strcmp(ap_sampler_name(AP_SAMPLER_EULER_A), "euler_a"));
    CHECK(!strcmp(ap_sampler_name((ap_sampler_kind)9), "unknown"));
    CHECK(ap_sampler_parse("dpm++2m") == AP_SAMPLER_DPMPP_2M && ap_sampler_parse("ddim") == AP_SAMPLER_DDIM);
    CHECK(ap_sampler_parse("euler_ancestral") == AP_SAMPLER_EULER_A);
    CHECK(ap_sampler_parse("pndm") == -1 && ap_sampler_parse(NULL) == -1);
    CHECK(!strcmp(ap_spacing_name(AP_SPACING_TRAILING), "trailing"));

    ap_sampler_config cfg = ap_sampler_config_sd15(AP_SAMPLER_DDIM);
    CHECK(ap_sampler_create(c, &cfg, 0) == NULL);
    CHECK(ap_last_status(c) == AP_ERR_INVALID_ARG && strstr(ap_last_error(c), "ddim: 0 steps"));
    ap_clear_error(c);
    CHECK(ap_sampler_create(c, &cfg, 1001) == NULL);
    ap_clear_error(c);
    CHECK(ap_sampler_create(c, &cfg, 1000) == NULL); /* leading + offset 1 reaches t = 1000 */
    CHECK(strstr(ap_last_error(c), "timestep 1000 out of range") != NULL);
    ap_clear_error(c);
    cfg.steps_offset = 0;
    ap_sampler *s = ap_sampler_create(c, &cfg, 1000);
    CHECK(s && ap_sampler_timestep(s, 0) == 999 && ap_sampler_timestep(s, 999) == 0);
    ap_sampler_free(s);
    cfg = ap_sampler_config_sd15(AP_SAMPLER_DDIM);
    cfg.eta = NAN;
    CHECK(ap_sampler_create(c, &cfg, 10) == NULL && strstr(ap_last_error(c), "eta"));
    ap_clear_error(c);
    cfg.eta = -0.5f;
    CHECK(ap_sampler_create(c, &cfg, 10) == NULL);
    ap_clear_error(c);
    cfg = ap_sampler_config_sd15((ap_sampler_kind)7);
    CHECK(ap_sampler_create(c, &cfg, 10) == NULL && strstr(ap_last_error(c), "unknown kind"));
    ap_clear_error(c);
    cfg = ap_sampler_config_sd15(AP_SAMPLER_DDIM);
    cfg.spacing = (ap_timestep_spacing)9;
    CHECK(ap_sampler_create(c, &cfg, 10) == NULL);
    ap_clear_error(c);
    cfg = ap_sampler_config_sd15(AP_SAMPLER_DDIM);
    cfg.steps_offset = -1;
    CHECK(ap_sampler_create(c, &cfg, 10) == NULL);
    ap_clear_error(c);
    cfg.steps_offset = 1;
    cfg.schedule.num_train_timesteps = 0;
    CHECK(ap_sampler_create(c, &cfg, 1) == NULL);
    ap_clear_error(c);
    CHECK(ap_sampler_create(c, NULL, 10) == NULL);
    ap_clear_error(c);
    ap_sampler_free(NULL);

    ap_latent_shape sh = {1, 2, 3, 4};
    float x[24] = {0}, e[24] = {0}, o[24];
    cfg = ap_sampler_config_sd15(AP_SAMPLER_EULER_A);
    s = ap_sampler_create(c, &cfg, 5);
    CHECK(s != NULL);
    ap_step_coefs k;
    CHECK(ap_sampler_coefs(c, s, 5, &k) == AP_ERR_INVALID_ARG && strstr(ap_last_error(c), "step 5 out of range"));
    ap_clear_error(c);
    CHECK(ap_sampler_coefs(c, s, 0, NULL) == AP_ERR_INVALID_ARG);
    ap_clear_error(c);
    CHECK(ap_sampler_step_f32(c, s, 0, x, e, o, sh, NULL) == AP_ERR_INVALID_ARG); /* Euler a draws noise */
    CHECK(strstr(ap_last_error(c), "generator") != NULL);
    ap_clear_error(c);
    CHECK(ap_sampler_step_f32(c, s, 0, NULL, e, o, sh, NULL) == AP_ERR_INVALID_ARG);
    ap_clear_error(c);
    CHECK(ap_sampler_step_f32(c, s, 0, x, e, o, (ap_latent_shape){1, 0, 3, 4}, NULL) == AP_ERR_SHAPE);
    ap_clear_error(c);
    CHECK(ap_sampler_scale_input_f32(c, s, -1, x, o, 24) == AP_ERR_INVALID_ARG);
    ap_clear_error(c);
    CHECK(ap_sampler_init_latents_f32(c, s, NULL, o, sh) == AP_ERR_INVALID_ARG);
    ap_clear_error(c);
    /* sticky: nothing runs while an error is pending */
    ap_sampler_coefs(c, s, 99, &k);
    CHECK(ap_sampler_coefs(c, s, 0, &k) != AP_OK);
    CHECK(ap_sampler_create(c, &cfg, 5) == NULL);
    ap_clear_error(c);
    ap_sampler_free(s);

    /* DPM++: the second-order step needs the previous one on the same shape */
    cfg = ap_sampler_config_sd15(AP_SAMPLER_DPMPP_2M);
    s = ap_sampler_create(c, &cfg, 6);
    CHECK(ap_sampler_step_f32(c, s, 2, x, e, o, sh, NULL) == AP_ERR_STATE);
    ap_clear_error(c);
    CHECK(ap_sampler_step_f32(c, s, 0, x, e, o, sh, NULL) == AP_OK);
    CHECK(ap_sampler_step_f32(c, s, 1, x, e, o, (ap_latent_shape){1, 2, 3, 2}, NULL) == AP_ERR_STATE);
    ap_clear_error(c);
    CHECK(ap_sampler_step_f32(c, s, 1, x, e, o, sh, NULL) == AP_OK);
    /* the last step lands on sigma 0 and returns the data prediction */
    ap_step_coefs last;
    CHECK(ap_sampler_coefs(c, s, 5, &last) == AP_OK);
    CHECK(last.order == 1 && fabs(last.a - last.x0_x) < 1e-12 && fabs(last.b - last.x0_eps) < 1e-12);
    ap_sampler_free(s);
}

/* DDIM with eta 0 is deterministic and draws nothing: the generator is untouched */
static void test_ddim_no_draw(ap_ctx *c) {
    ap_sampler_config cfg = ap_sampler_config_sd15(AP_SAMPLER_DDIM);
    ap_sampler *s = ap_sampler_create(c, &cfg, 4);
    ap_rng g, g0;
    ap_rng_init(&g, 9);
    g0 = g;
    ap_latent_shape sh = {1, 3, 3, 4};
    float x[36], e[36];
    for (int i = 0; i < 36; i++) x[i] = (float)i / 7 - 2, e[i] = (float)(i % 5) / 3 - 0.6f;
    for (int i = 0; i < 4; i++) CHECK(ap_sampler_step_f32(c, s, i, x, e, x, sh, &g) == AP_OK);
    CHECK(!memcmp(&g, &g0, sizeof g));
    ap_sampler_free(s);
}

int main(void) {
    ap_ctx *c = test_ctx();
    int ok = load_fixture();
    CHECK_MSG(ok, "tests/ref/schedulers.bin missing or malformed (run tests/ref/gen_schedulers.py)");
    if (ok) {
        test_schedule(c);
        const run_case runs[] = {
            {"ddim_eta0", AP_SAMPLER_DDIM, 0.0f, AP_SPACING_DEFAULT, 10, true},
            {"ddim_eta1", AP_SAMPLER_DDIM, 1.0f, AP_SPACING_DEFAULT, 7, true},
            {"ddim_eta03_n50", AP_SAMPLER_DDIM, 0.3f, AP_SPACING_DEFAULT, 50, true},
            {"euler_a", AP_SAMPLER_EULER_A, 0.0f, AP_SPACING_DEFAULT, 12, true},
            {"euler_a_leading", AP_SAMPLER_EULER_A, 0.0f, AP_SPACING_LEADING, 9, true},
            {"dpmpp_2m_n8", AP_SAMPLER_DPMPP_2M, 0.0f, AP_SPACING_DEFAULT, 8, false},
            {"dpmpp_2m_n20", AP_SAMPLER_DPMPP_2M, 0.0f, AP_SPACING_DEFAULT, 20, false},
            {"dpmpp_2m_leading", AP_SAMPLER_DPMPP_2M, 0.0f, AP_SPACING_LEADING, 10, false},
        };
        for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) test_run(c, &runs[i]);
        test_spacings(c);
        test_ddim_facts(c);
    }
    test_errors(c);
    test_ddim_no_draw(c);
    ap_ctx_free(c);
    free(blob);
    return test_summary("test_schedulers");
}
