/* The sampler interface: construction, names, dispatch, and shared helpers. The math of
 * each sampler lives in its own file (ddim.c, euler_a.c, dpmpp_2m.c). */
#include "diffusion/sampler_impl.h"

#include "core/internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const sampler_names[] = {"ddim", "euler_a", "dpmpp_2m"};
_Static_assert(sizeof sampler_names / sizeof sampler_names[0] == AP_SAMPLER_COUNT_, "sampler names");
static const char *const spacing_names[] = {"default", "leading", "linspace", "trailing"};
_Static_assert(sizeof spacing_names / sizeof spacing_names[0] == AP_SPACING_COUNT_, "spacing names");

const char *ap_sampler_name(ap_sampler_kind k) {
    return (unsigned)k < AP_SAMPLER_COUNT_ ? sampler_names[k] : "unknown";
}

const char *ap_spacing_name(ap_timestep_spacing s) {
    return (unsigned)s < AP_SPACING_COUNT_ ? spacing_names[s] : "unknown";
}

int ap_sampler_parse(const char *name) {
    static const struct {
        const char *name;
        ap_sampler_kind kind;
    } aliases[] = {{"ddim", AP_SAMPLER_DDIM},         {"euler_a", AP_SAMPLER_EULER_A},
                   {"euler_ancestral", AP_SAMPLER_EULER_A}, {"dpmpp_2m", AP_SAMPLER_DPMPP_2M},
                   {"dpmpp2m", AP_SAMPLER_DPMPP_2M},  {"dpm++2m", AP_SAMPLER_DPMPP_2M},
                   {"dpm++_2m", AP_SAMPLER_DPMPP_2M}};
    if (!name) return -1;
    for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
        if (!strcmp(name, aliases[i].name)) return (int)aliases[i].kind;
    return -1;
}

ap_sampler_config ap_sampler_config_sd15(ap_sampler_kind kind) {
    return (ap_sampler_config){.kind = kind,
                               .schedule = ap_schedule_config_sd15(),
                               .spacing = AP_SPACING_DEFAULT,
                               .steps_offset = 1,
                               .eta = 0.0f,
                               .set_alpha_to_one = false};
}

/* ------------------------------------------------------------ numpy helpers */
void ap_np_linspace(double *out, double start, double stop, int num) {
    if (num <= 0) return;
    if (num == 1) {
        out[0] = start; /* div = 0: y = [0] * delta + start */
        return;
    }
    double step = (stop - start) / (double)(num - 1);
    for (int i = 0; i < num; i++) out[i] = ap_mul_rn((double)i, step) + start;
    out[num - 1] = stop;
}

int ap_np_arange_down(double *out, double start, double step) {
    double delta = -step;
    double len = ceil((0.0 - start) / delta);
    if (!(len > 0)) return 0;
    if (len > 1e7) return -1;
    int n = (int)len;
    if (out) {
        out[0] = start;
        if (n > 1) {
            double second = start + delta, d = second - start;
            out[1] = second;
            for (int i = 2; i < n; i++) out[i] = start + ap_mul_rn((double)i, d);
        }
    }
    return n;
}

float *ap_sigma_table_f32(const ap_schedule *sch) {
    float *t = malloc((size_t)sch->n * sizeof(float));
    if (!t) return NULL;
    for (int i = 0; i < sch->n; i++) {
        float a = sch->alphas_cumprod[i];
        t[i] = sqrtf((1.0f - a) / a);
    }
    return t;
}

float *ap_step_noise(ap_ctx *c, const char *who, ap_rng *g, ap_latent_shape shape) {
    if (!g) {
        ap_seterr(c, AP_ERR_INVALID_ARG, "%s: this step draws noise but the generator is NULL", who);
        return NULL;
    }
    int64_t n = shape.n * shape.h * shape.w * shape.c;
    float *z = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    if (!z || !ap_rng_randn_nhwc(g, z, shape.n, shape.h, shape.w, shape.c)) {
        free(z);
        ap_seterr(c, AP_ERR_NOMEM, "%s: out of memory for the step noise", who);
        return NULL;
    }
    return z;
}

/* ------------------------------------------------------------ lifetime */
static const ap_sampler_ops *ops_of(ap_sampler_kind k) {
    switch (k) {
    case AP_SAMPLER_DDIM: return &ap_ddim_ops;
    case AP_SAMPLER_EULER_A: return &ap_euler_a_ops;
    case AP_SAMPLER_DPMPP_2M: return &ap_dpmpp_2m_ops;
    default: return NULL;
    }
}

ap_sampler *ap_sampler_create(ap_ctx *c, const ap_sampler_config *cfg, int num_steps) {
    if (!c || ap_failed(c)) return NULL;
    if (!cfg) {
        ap_seterr(c, AP_ERR_INVALID_ARG, "sampler: config is NULL");
        return NULL;
    }
    const ap_sampler_ops *ops = ops_of(cfg->kind);
    if (!ops) {
        ap_seterr(c, AP_ERR_INVALID_ARG, "sampler: unknown kind %d", (int)cfg->kind);
        return NULL;
    }
    if ((unsigned)cfg->spacing >= AP_SPACING_COUNT_) {
        ap_seterr(c, AP_ERR_INVALID_ARG, "%s: unknown timestep spacing %d", ops->name, (int)cfg->spacing);
        return NULL;
    }
    if (!(cfg->eta >= 0 && cfg->eta <= 1e6f)) { /* also rejects NaN */
        ap_seterr(c, AP_ERR_INVALID_ARG, "%s: eta %g (must be >= 0)", ops->name, (double)cfg->eta);
        return NULL;
    }
    if (cfg->steps_offset < 0) {
        ap_seterr(c, AP_ERR_INVALID_ARG, "%s: steps_offset %d (must be >= 0)", ops->name, cfg->steps_offset);
        return NULL;
    }
    int n_train = cfg->schedule.num_train_timesteps;
    if (num_steps < 1 || num_steps > n_train) {
        ap_seterr(c, AP_ERR_INVALID_ARG, "%s: %d steps (must be 1..%d, the training timesteps)", ops->name,
                  num_steps, n_train);
        return NULL;
    }
    ap_sampler *s = calloc(1, sizeof *s);
    if (!s) {
        ap_seterr(c, AP_ERR_NOMEM, "%s: out of memory", ops->name);
        return NULL;
    }
    s->cfg = *cfg;
    if (s->cfg.spacing == AP_SPACING_DEFAULT)
        s->cfg.spacing = cfg->kind == AP_SAMPLER_DDIM ? AP_SPACING_LEADING : AP_SPACING_LINSPACE;
    s->ops = ops;
    s->num_steps = num_steps;
    s->m_step = -1;
    s->timesteps = malloc((size_t)num_steps * sizeof(float));
    if (!s->timesteps) {
        ap_seterr(c, AP_ERR_NOMEM, "%s: out of memory", ops->name);
        ap_sampler_free(s);
        return NULL;
    }
    if (ap_schedule_init(c, &s->sched, &cfg->schedule) != AP_OK || ops->setup(c, s) != AP_OK) {
        ap_sampler_free(s);
        return NULL;
    }
    return s;
}

void ap_sampler_free(ap_sampler *s) {
    if (!s) return;
    ap_schedule_free(&s->sched);
    free(s->timesteps);
    free(s->sigmas);
    free(s->m_prev);
    free(s->m_cur);
    free(s);
}

/* ------------------------------------------------------------ accessors and dispatch */
ap_sampler_kind ap_sampler_kind_of(const ap_sampler *s) { return s->cfg.kind; }
int ap_sampler_num_steps(const ap_sampler *s) { return s->num_steps; }
const ap_schedule *ap_sampler_schedule(const ap_sampler *s) { return &s->sched; }
float ap_sampler_timestep(const ap_sampler *s, int i) {
    return i >= 0 && i < s->num_steps ? s->timesteps[i] : NAN;
}
const float *ap_sampler_sigmas(const ap_sampler *s) { return s->sigmas; }
float ap_sampler_init_noise_sigma(const ap_sampler *s) { return s->init_noise_sigma; }

static bool check_step(ap_ctx *c, const ap_sampler *s, int i) {
    if (!c || ap_failed(c)) return false;
    if (!s) {
        ap_seterr(c, AP_ERR_INVALID_ARG, "sampler: sampler is NULL");
        return false;
    }
    if (i < 0 || i >= s->num_steps) {
        ap_seterr(c, AP_ERR_INVALID_ARG, "%s: step %d out of range (0..%d)", s->ops->name, i, s->num_steps - 1);
        return false;
    }
    return true;
}

ap_status ap_sampler_coefs(ap_ctx *c, const ap_sampler *s, int i, ap_step_coefs *out) {
    if (!check_step(c, s, i)) return c ? (c->status ? c->status : AP_ERR_INVALID_ARG) : AP_ERR_INVALID_ARG;
    if (!out) return ap_seterr(c, AP_ERR_INVALID_ARG, "%s: coefs output is NULL", s->ops->name);
    memset(out, 0, sizeof *out);
    out->timestep = s->timesteps[i];
    out->order = 1;
    s->ops->coefs(s, i, out);
    return AP_OK;
}

ap_status ap_sampler_scale_input_f32(ap_ctx *c, const ap_sampler *s, int i, const float *x,
                                     float *out, int64_t n) {
    if (!check_step(c, s, i)) return c ? (c->status ? c->status : AP_ERR_INVALID_ARG) : AP_ERR_INVALID_ARG;
    if ((!x || !out) && n > 0) return ap_seterr(c, AP_ERR_INVALID_ARG, "%s: scale_model_input array is NULL", s->ops->name);
    float d = s->ops->input_divisor ? s->ops->input_divisor(s, i) : 0.0f;
    for (int64_t k = 0; k < n; k++) out[k] = d != 0.0f ? x[k] / d : x[k];
    return AP_OK;
}

static bool check_shape(ap_ctx *c, const char *who, ap_latent_shape sh) {
    if (sh.n < 1 || sh.h < 1 || sh.w < 1 || sh.c < 1 || sh.n > (1 << 20) || sh.h > (1 << 20) ||
        sh.w > (1 << 20) || sh.c > (1 << 20) || sh.n * sh.h * sh.w * sh.c > ((int64_t)1 << 40)) {
        ap_seterr(c, AP_ERR_SHAPE, "%s: bad latent shape [%lld,%lld,%lld,%lld]", who, (long long)sh.n,
                  (long long)sh.h, (long long)sh.w, (long long)sh.c);
        return false;
    }
    return true;
}

ap_status ap_sampler_step_f32(ap_ctx *c, ap_sampler *s, int i, const float *x, const float *eps,
                              float *x_prev, ap_latent_shape shape, ap_rng *g) {
    if (!check_step(c, s, i)) return c ? (c->status ? c->status : AP_ERR_INVALID_ARG) : AP_ERR_INVALID_ARG;
    if (!x || !eps || !x_prev)
        return ap_seterr(c, AP_ERR_INVALID_ARG, "%s: step %d: %s is NULL", s->ops->name, i,
                         !x ? "x" : !eps ? "eps" : "x_prev");
    if (!check_shape(c, s->ops->name, shape)) return c->status;
    return s->ops->step_f32(c, s, i, x, eps, x_prev, shape, g);
}

ap_status ap_sampler_init_latents_f32(ap_ctx *c, const ap_sampler *s, ap_rng *g, float *out,
                                      ap_latent_shape shape) {
    if (!c) return AP_ERR_INVALID_ARG;
    if (ap_failed(c)) return c->status;
    if (!s || !g || !out)
        return ap_seterr(c, AP_ERR_INVALID_ARG, "init_latents: %s is NULL", !s ? "sampler" : !g ? "generator" : "out");
    if (!check_shape(c, "init_latents", shape)) return c->status;
    if (!ap_rng_randn_nhwc(g, out, shape.n, shape.h, shape.w, shape.c))
        return ap_seterr(c, AP_ERR_NOMEM, "init_latents: out of memory");
    int64_t n = shape.n * shape.h * shape.w * shape.c;
    for (int64_t k = 0; k < n; k++) out[k] = out[k] * s->init_noise_sigma;
    return AP_OK;
}
