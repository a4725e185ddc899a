/* The reward registry, mixture specs and losses (interface in reward.h). */
#include "rewards/reward.h"

#include "core/internal.h"
#include "rewards/clip_rewards.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ registry */
#define REGISTRY_MAX 64
#define NAME_MAX_LEN 63

typedef struct {
    char name[NAME_MAX_LEN + 1];
    ap_reward_create_fn create;
} registry_entry;

/* Built-ins first; the reward models (aesthetic, hps, pickscore, jpeg) add
 * their line here when they land. */
static const registry_entry builtins[] = {
    {"brightness", ap_reward_create_brightness},
    {"saturation", ap_reward_create_saturation},
    {"aesthetic", ap_reward_create_aesthetic},
    {"hps", ap_reward_create_hps},
    {"pickscore", ap_reward_create_pickscore},
    {"jpeg", ap_reward_create_jpeg},
    {"jpeg-incompressibility", ap_reward_create_jpeg_incompressibility},
    {"count", ap_reward_create_count},
};
#define N_BUILTINS (int)(sizeof builtins / sizeof builtins[0])

static registry_entry extra[REGISTRY_MAX];
static int n_extra;

static const registry_entry *entry(int i) {
    return i < N_BUILTINS ? &builtins[i] : i < N_BUILTINS + n_extra ? &extra[i - N_BUILTINS] : NULL;
}

int ap_reward_count(void) { return N_BUILTINS + n_extra; }
const char *ap_reward_name(int i) {
    const registry_entry *e = i >= 0 ? entry(i) : NULL;
    return e ? e->name : NULL;
}

static const registry_entry *find(const char *name, size_t len) {
    for (int i = 0; i < ap_reward_count(); i++) {
        const registry_entry *e = entry(i);
        if (strlen(e->name) == len && memcmp(e->name, name, len) == 0) return e;
    }
    return NULL;
}

static bool valid_name(const char *s) {
    if (!*s) return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '_' && *s != '-' && *s != '.') return false;
    return true;
}

ap_status ap_reward_register(ap_ctx *c, const char *name, ap_reward_create_fn create) {
    if (!c) return AP_ERR_INVALID_ARG;
    if (ap_failed(c)) return c->status;
    if (!name || !create)
        return ap_seterr(c, AP_ERR_INVALID_ARG, "reward register: %s is NULL", name ? "create" : "name");
    if (strlen(name) > NAME_MAX_LEN || !valid_name(name))
        return ap_seterr(c, AP_ERR_INVALID_ARG,
                         "reward register: bad name '%s' (letters, digits, '_', '-', '.'; at most %d)", name,
                         NAME_MAX_LEN);
    if (find(name, strlen(name)))
        return ap_seterr(c, AP_ERR_INVALID_ARG, "reward register: '%s' is already registered", name);
    if (n_extra == REGISTRY_MAX)
        return ap_seterr(c, AP_ERR_INVALID_ARG, "reward register: registry full (%d names)", REGISTRY_MAX);
    strcpy(extra[n_extra].name, name);
    extra[n_extra].create = create;
    n_extra++;
    return AP_OK;
}

/* "brightness, saturation, ..." into buf. */
static const char *known_names(char *buf, size_t n) {
    size_t o = 0;
    buf[0] = 0;
    for (int i = 0; i < ap_reward_count() && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%s%s", i ? ", " : "", entry(i)->name);
    return buf;
}

static ap_status create_n(ap_ctx *c, const char *name, size_t len, const ap_reward_opts *opts, ap_reward **out) {
    const registry_entry *e = find(name, len);
    if (!e) {
        char known[512];
        return ap_seterr(c, AP_ERR_NOT_FOUND, "reward: unknown reward '%.*s' (known: %s)", (int)len, name,
                         known_names(known, sizeof known));
    }
    ap_reward_opts none = {0};
    ap_status st = e->create(c, opts ? opts : &none, out);
    if (st == AP_OK && (!*out || !(*out)->forward)) {
        ap_reward_free(*out);
        *out = NULL;
        return ap_seterr(c, AP_ERR_STATE, "reward: constructor of '%s' returned no forward", e->name);
    }
    return st;
}

ap_status ap_reward_create(ap_ctx *c, const char *name, const ap_reward_opts *opts, ap_reward **out) {
    if (!c || !out) return AP_ERR_INVALID_ARG;
    *out = NULL;
    if (ap_failed(c)) return c->status;
    if (!name) return ap_seterr(c, AP_ERR_INVALID_ARG, "reward: name is NULL");
    return create_n(c, name, strlen(name), opts, out);
}

void ap_reward_free(ap_reward *r) {
    if (r && r->free) r->free(r);
}

int ap_reward_check_images(ap_ctx *c, const char *op, const ap_tensor *images) {
    if (!ap_check_input(c, op, "images", images, AP_F32)) return 0;
    if (images->ndim != 4 || images->shape[3] != 3 || images->shape[0] < 1 || images->shape[1] < 1 ||
        images->shape[2] < 1) {
        char s[96];
        ap_seterr(c, AP_ERR_SHAPE, "%s: images %s, expected [N,H,W,3]", op, ap_shape_str(images, s, sizeof s));
        return 0;
    }
    return 1;
}

/* ------------------------------------------------------------ mixtures */
static const char *skip_space(const char *s, const char *end) {
    while (s < end && isspace((unsigned char)*s)) s++;
    return s;
}
static const char *trim_end(const char *s, const char *end) {
    while (end > s && isspace((unsigned char)end[-1])) end--;
    return end;
}

/* Parses the weight in [s, end) as a finite decimal. */
static bool parse_weight(const char *s, const char *end, float *w) {
    char buf[64];
    size_t len = (size_t)(end - s);
    if (len == 0 || len >= sizeof buf) return false;
    memcpy(buf, s, len);
    buf[len] = 0;
    char *e;
    errno = 0;
    double v = strtod(buf, &e);
    if (*e || errno || !isfinite(v) || fabs(v) > 3.0e38) return false;
    for (size_t i = 0; i < len; i++) /* no hex floats, "inf" or "nan" spellings */
        if (!strchr("0123456789.+-eE", buf[i])) return false;
    *w = (float)v;
    return true;
}

ap_status ap_reward_mix_parse(ap_ctx *c, const char *spec, const ap_reward_opts *opts, ap_reward_mix **out) {
    if (!c || !out) return AP_ERR_INVALID_ARG;
    *out = NULL;
    if (ap_failed(c)) return c->status;
    if (!spec) return ap_seterr(c, AP_ERR_INVALID_ARG, "reward spec: spec is NULL");
    ap_reward_mix *m = calloc(1, sizeof *m);
    if (!m) return ap_seterr(c, AP_ERR_NOMEM, "reward spec: out of memory");
    const char *p = spec, *spec_end = spec + strlen(spec);
    ap_status st = AP_OK;
    if (skip_space(p, spec_end) == spec_end) {
        st = ap_seterr(c, AP_ERR_INVALID_ARG, "reward spec: empty (expected NAME or NAME=W, comma-separated)");
        goto fail;
    }
    while (p <= spec_end) {
        const char *comma = memchr(p, ',', (size_t)(spec_end - p));
        const char *item_end = comma ? comma : spec_end;
        const char *a = skip_space(p, item_end), *b = trim_end(a, item_end);
        const char *eq = memchr(a, '=', (size_t)(b - a));
        const char *name_end = trim_end(a, eq ? eq : b);
        if (name_end == a) {
            st = ap_seterr(c, AP_ERR_INVALID_ARG, "reward spec '%s': item %d has no reward name", spec, m->n + 1);
            goto fail;
        }
        float w = 1.0f;
        if (eq && !parse_weight(skip_space(eq + 1, b), b, &w)) {
            st = ap_seterr(c, AP_ERR_INVALID_ARG, "reward spec '%s': bad weight '%.*s' for '%.*s' (a finite number)",
                           spec, (int)(b - eq - 1), eq + 1, (int)(name_end - a), a);
            goto fail;
        }
        for (int i = 0; i < m->n; i++)
            if (strlen(m->parts[i]->name) == (size_t)(name_end - a) &&
                !memcmp(m->parts[i]->name, a, (size_t)(name_end - a))) {
                st = ap_seterr(c, AP_ERR_INVALID_ARG, "reward spec '%s': '%.*s' appears twice", spec,
                               (int)(name_end - a), a);
                goto fail;
            }
        if (m->n == AP_REWARD_MIX_MAX) {
            st = ap_seterr(c, AP_ERR_INVALID_ARG, "reward spec '%s': more than %d rewards", spec, AP_REWARD_MIX_MAX);
            goto fail;
        }
        st = create_n(c, a, (size_t)(name_end - a), opts, &m->parts[m->n]);
        if (st != AP_OK) goto fail;
        m->weights[m->n++] = w;
        if (!comma) break;
        p = comma + 1;
    }
    *out = m;
    return AP_OK;
fail:
    ap_reward_mix_free(m);
    return st;
}

void ap_reward_mix_free(ap_reward_mix *m) {
    if (!m) return;
    for (int i = 0; i < m->n; i++) ap_reward_free(m->parts[i]);
    free(m);
}

const char *ap_reward_mix_default_loss(const ap_reward_mix *m) {
    if (m && m->n == 1 && m->weights[0] == 1.0f && m->parts[0]->default_loss) return m->parts[0]->default_loss;
    return "maximize";
}

const char *ap_reward_models_dir(const ap_reward_opts *opts, char *buf, size_t n) {
    const char *env = getenv("AP_MODELS_DIR"), *xdg = getenv("XDG_DATA_HOME"), *home = getenv("HOME");
    int k;
    if (opts && opts->models_dir && *opts->models_dir) k = snprintf(buf, n, "%s", opts->models_dir);
    else if (env && *env) k = snprintf(buf, n, "%s", env);
    else if (xdg && *xdg) k = snprintf(buf, n, "%s/alignprop/models", xdg);
    else k = snprintf(buf, n, "%s/.local/share/alignprop/models", home && *home ? home : ".");
    return k >= 0 && (size_t)k < n ? buf : NULL;
}

const char *ap_reward_mix_str(const ap_reward_mix *m, char *buf, size_t n) {
    size_t o = 0;
    if (n) buf[0] = 0;
    for (int i = 0; m && i < m->n && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%s%s=%g", i ? "," : "", m->parts[i]->name, (double)m->weights[i]);
    return buf;
}

ap_tensor *ap_reward_mix_forward(ap_ctx *c, ap_reward_mix *m, ap_tensor *images, const char *const *prompts,
                                 ap_tensor **parts) {
    if (!c || ap_failed(c)) return NULL;
    if (!m || m->n < 1) {
        ap_seterr(c, AP_ERR_INVALID_ARG, "reward: mixture is %s", m ? "empty" : "NULL");
        return NULL;
    }
    if (parts)
        for (int i = 0; i < m->n; i++) parts[i] = NULL;
    if (!ap_reward_check_images(c, "reward", images)) return NULL;
    int64_t N = images->shape[0];
    ap_tensor *total = NULL;
    for (int i = 0; i < m->n; i++) {
        ap_tensor *r = m->parts[i]->forward(c, m->parts[i], images, prompts);
        if (!r) {
            if (!ap_failed(c)) ap_seterr(c, AP_ERR_STATE, "reward %s: forward returned NULL", m->parts[i]->name);
            break;
        }
        if (r->ndim != 1 || r->shape[0] != N || r->dtype != AP_F32) {
            char s[96];
            ap_seterr(c, AP_ERR_SHAPE, "reward %s: returned %s, expected [%lld] f32", m->parts[i]->name,
                      ap_shape_str(r, s, sizeof s), (long long)N);
            ap_tensor_release(r);
            break;
        }
        ap_tensor *next;
        if (!total)
            next = m->weights[i] == 1.0f ? ap_tensor_retain(r) : ap_scale(c, r, m->weights[i]);
        else
            next = ap_axpby(c, 1.0f, total, m->weights[i], r);
        ap_tensor_release(total);
        total = next;
        if (parts)
            parts[i] = r;
        else
            ap_tensor_release(r);
        if (!total) break;
    }
    if (ap_failed(c)) {
        ap_tensor_release(total);
        if (parts)
            for (int i = 0; i < m->n; i++) {
                ap_tensor_release(parts[i]);
                parts[i] = NULL;
            }
        return NULL;
    }
    return total;
}

int ap_reward_mix_metrics(ap_ctx *c, ap_reward_mix *m, ap_tensor *images, const char **names, double *values) {
    if (!c || ap_failed(c)) return -1;
    if (!m || !ap_reward_check_images(c, "reward metrics", images)) {
        if (!m) ap_seterr(c, AP_ERR_INVALID_ARG, "reward metrics: mixture is NULL");
        return -1;
    }
    int64_t N = images->shape[0];
    double *part = malloc((size_t)(AP_REWARD_METRICS_MAX * N) * sizeof *part);
    if (!part) {
        ap_seterr(c, AP_ERR_NOMEM, "reward metrics: out of memory");
        return -1;
    }
    int n = 0;
    for (int i = 0; i < m->n && n >= 0; i++) {
        if (!m->parts[i]->metrics) continue;
        const char *pn[AP_REWARD_METRICS_MAX];
        int k = m->parts[i]->metrics(c, m->parts[i], images, pn, part);
        if (k < 0 || k > AP_REWARD_METRICS_MAX) {
            if (!ap_failed(c))
                ap_seterr(c, AP_ERR_STATE, "reward %s: metrics returned %d", m->parts[i]->name, k);
            n = -1;
            break;
        }
        for (int j = 0; j < k && n < AP_REWARD_METRICS_MAX; j++) {
            bool seen = false;
            for (int q = 0; q < n; q++) seen = seen || !strcmp(names[q], pn[j]);
            if (seen) continue;
            names[n] = pn[j];
            memcpy(values + n * N, part + j * N, (size_t)N * sizeof *values);
            n++;
        }
    }
    free(part);
    return n;
}

/* ------------------------------------------------------------ losses */
ap_status ap_reward_loss_parse(ap_ctx *c, const char *spec, ap_reward_loss *out) {
    if (!c || !out) return AP_ERR_INVALID_ARG;
    if (ap_failed(c)) return c->status;
    if (!spec) return ap_seterr(c, AP_ERR_INVALID_ARG, "loss: spec is NULL");
    if (!strcmp(spec, "maximize")) {
        *out = (ap_reward_loss){AP_LOSS_MAXIMIZE, 0.0f};
        return AP_OK;
    }
    if (!strcmp(spec, "minimize")) {
        *out = (ap_reward_loss){AP_LOSS_MINIMIZE, 0.0f};
        return AP_OK;
    }
    if (!strncmp(spec, "target:", 7)) {
        float t;
        if (!parse_weight(spec + 7, spec + strlen(spec), &t))
            return ap_seterr(c, AP_ERR_INVALID_ARG, "loss '%s': bad target '%s' (a finite number)", spec, spec + 7);
        *out = (ap_reward_loss){AP_LOSS_TARGET, t};
        return AP_OK;
    }
    return ap_seterr(c, AP_ERR_INVALID_ARG, "loss: unknown loss '%s' (maximize, minimize or target:T)", spec);
}

const char *ap_reward_loss_str(const ap_reward_loss *l, char *buf, size_t n) {
    if (l->kind == AP_LOSS_TARGET)
        snprintf(buf, n, "target:%g", (double)l->target);
    else
        snprintf(buf, n, "%s", l->kind == AP_LOSS_MAXIMIZE ? "maximize" : "minimize");
    return buf;
}

ap_tensor *ap_reward_loss_apply(ap_ctx *c, const ap_reward_loss *l, ap_tensor *rewards) {
    if (!c || !ap_check_input(c, "loss", "rewards", rewards, AP_F32)) return NULL;
    if (!l) {
        ap_seterr(c, AP_ERR_INVALID_ARG, "loss: loss is NULL");
        return NULL;
    }
    if (rewards->ndim != 1 || rewards->shape[0] < 1) {
        char s[96];
        ap_seterr(c, AP_ERR_SHAPE, "loss: rewards %s, expected [N]", ap_shape_str(rewards, s, sizeof s));
        return NULL;
    }
    switch (l->kind) {
    case AP_LOSS_MAXIMIZE: {
        ap_tensor *m = ap_mean(c, rewards), *y = ap_scale(c, m, -1.0f);
        ap_tensor_release(m);
        return y;
    }
    case AP_LOSS_MINIMIZE: return ap_mean(c, rewards);
    case AP_LOSS_TARGET: {
        ap_tensor *d = ap_add_scalar(c, rewards, -l->target), *a = ap_abs(c, d), *y = ap_mean(c, a);
        ap_tensor_release(d);
        ap_tensor_release(a);
        return y;
    }
    }
    ap_seterr(c, AP_ERR_INVALID_ARG, "loss: unknown kind %d", (int)l->kind);
    return NULL;
}
