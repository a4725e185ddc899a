/* The AlignProp training loop. */
#include "trainer.h"

#include "core/internal.h"
#include "diffusion/rng.h"
#include "io/atomic.h"
#include "io/image.h"
#include "io/json.h"
#include "pipeline/txt2img.h"
#include "rewards/reward.h"
#include "train/checkpoint.h"
#include "train/dist.h"
#include "train/optim.h"
#include "train/prompts.h"
#include "train/report.h"
#include "train/sample_grad.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void ap_train_defaults(ap_train_opts *o) {
    memset(o, 0, sizeof *o);
    o->prompts = "builtin:simple_animals";
    o->negative = "";
    o->reward = "brightness";
    o->loss = NULL; /* the reward's default */
    o->out_dir = "runs/train";
    o->steps = 100;
    o->batch = 1;
    o->accum = 1;
    o->sample_steps = 50;
    o->cfg = 7.5f;
    o->trunc.kind = AP_TRUNC_FIXED;
    o->trunc.k = 1;
    o->width = o->height = 512;
    o->rank = 4;
    o->lr = 1e-3;
    o->weight_decay = 1e-4;
    o->clip = 1.0;
    o->loss_coeff = 0.01;
    o->weights_dtype = AP_BF16;
    o->export_format = AP_LORA_KOHYA;
    o->save_every = 50;
    o->eval_per_prompt = 1;
    o->keep_checkpoints = 3;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static ap_json *config_json(ap_ctx *c, const ap_train_opts *o) {
    ap_json *j = ap_json_new_object();
    char buf[64];
    ap_json_add_str(j, "alignprop_version", ap_version_string());
    ap_json_add_str(j, "model", o->model);
    ap_json_add_str(j, "prompts", o->prompts);
    ap_json_add_str(j, "negative", o->negative ? o->negative : "");
    ap_json_add_str(j, "reward", o->reward);
    ap_json_add_str(j, "loss", o->loss);
    ap_json_add_str(j, "reward_resize", o->reward_resize ? o->reward_resize : "bilinear");
    if (strstr(o->reward, "count"))
        ap_json_add_num(j, "count_temperature", o->count_temperature ? o->count_temperature : AP_COUNT_GRAD_TEMPERATURE);
    ap_json_add_int(j, "steps", o->steps);
    ap_json_add_int(j, "batch", o->batch);
    ap_json_add_int(j, "accum", o->accum);
    ap_json_add_int(j, "ranks", ap_dist_size());
    ap_json_add_int(j, "sample_steps", o->sample_steps);
    ap_json_add_num(j, "cfg", o->cfg);
    ap_json_add_num(j, "eta", o->eta);
    ap_json_add_str(j, "truncation", ap_trunc_str(&o->trunc, buf, sizeof buf));
    ap_json_add_int(j, "width", o->width);
    ap_json_add_int(j, "height", o->height);
    ap_json_add_int(j, "lora_rank", o->rank);
    ap_json_add_num(j, "lora_alpha", o->alpha > 0 ? o->alpha : o->rank);
    ap_json_add_num(j, "lr", o->lr);
    ap_json_add_str(j, "lr_schedule", ap_lr_kind_name(o->lr_schedule.kind));
    ap_json_add_int(j, "lr_warmup", o->lr_schedule.warmup);
    ap_json_add_str(j, "init_lora", o->init_lora ? o->init_lora : "");
    ap_json_add_num(j, "weight_decay", o->weight_decay);
    ap_json_add_num(j, "clip", o->clip);
    ap_json_add_num(j, "loss_coeff", o->loss_coeff);
    ap_json_add_int(j, "seed", (int64_t)o->seed);
    ap_json_add_str(j, "weights_dtype", ap_dtype_name(o->weights_dtype));
    ap_json_add_str(j, "precision", ap_get_precision(c) == AP_PREC_BF16 ? "bf16" : "f32");
    ap_json_add_int(j, "threads", ap_get_num_threads(c));
    ap_json_add_str(j, "lora_format", ap_lora_format_name(o->export_format));
    return j;
}

static ap_status write_config(ap_ctx *c, const ap_train_opts *o, const char *path) {
    ap_json *j = config_json(c, o);
    ap_status st = ap_json_save(c, path, j, true);
    ap_json_free(j);
    return st;
}

/* ---- checkpoints ---------------------------------------------------------- */

/* Settings a resumed run must share with the checkpoint for the continuation
 * to be the same training; steps, lr, weight decay, clip and the loss
 * coefficient may change (the new values apply from the next step). The
 * ranks and the accumulation may change when their product, the chains per
 * step, does not (checked apart). */
static const char *const COMPAT_KEYS[] = {"model",  "prompts",      "negative", "reward", "loss", "reward_resize",
                                          "batch",  "sample_steps", "cfg", "eta",
                                          "truncation", "width",    "height",   "lora_rank", "lora_alpha",
                                          "seed",   "weights_dtype", "init_lora"};

static const char *const RNG_KEYS[3] = {"rng_latents", "rng_truncation", "rng_noise"};

/* Writes RUNDIR/checkpoints/step_NNNNNN/ through a .tmp directory, then keeps
 * the newest o->keep_checkpoints complete ones. */
static ap_status save_checkpoint(ap_ctx *c, const ap_train_opts *o, int step, int64_t pos, ap_rng *const g[3],
                                 const ap_lora_set *lora, ap_adamw *opt) {
    char tmp[4200], p[4400];
    ap_status st = ap_ckpt_begin(c, o->out_dir, step, tmp, sizeof tmp);
    if (st != AP_OK) return st;
    snprintf(p, sizeof p, "%s/lora.safetensors", tmp);
    st = ap_lora_save(c, lora, p, AP_LORA_KOHYA);
    if (st == AP_OK) {
        snprintf(p, sizeof p, "%s/optimizer.safetensors", tmp);
        st = ap_adamw_save(opt, p);
    }
    if (st == AP_OK) {
        ap_json *j = ap_json_new_object();
        ap_json *cj = config_json(c, o);
        char hex[2 * AP_RNG_STATE_BYTES + 1];
        uint8_t raw[AP_RNG_STATE_BYTES];
        /* every rank draws every chain's numbers (using its own share), so
         * the three streams are the same on every rank (checked each step by
         * check_replicas): these are every rank's states */
        bool ok = j && cj && ap_json_add_int(j, "step", step) && ap_json_add_int(j, "prompt_position", pos) &&
                  ap_json_add_int(j, "ranks", ap_dist_size());
        for (int i = 0; i < 3 && ok; i++) {
            ap_rng_get_state(g[i], raw);
            ap_hex_encode(raw, sizeof raw, hex);
            ok = ap_json_add_str(j, RNG_KEYS[i], hex);
        }
        ok = ok && ap_json_add(j, "config", cj);
        if (!ok) {
            ap_json_free(cj);
            ap_seterr(c, AP_ERR_NOMEM, "out of memory");
        }
        st = ap_ckpt_commit(c, o->out_dir, step, tmp, o->keep_checkpoints, j);
        ap_json_free(j);
        return st;
    }
    ap_rm_tree(tmp);
    return st;
}

/* Loads the newest complete checkpoint of o->out_dir: adapters, optimizer,
 * the three streams and the prompt position; *step receives its step. */
static ap_status load_checkpoint(ap_ctx *c, const ap_train_opts *o, int *step, int64_t *pos, ap_rng *const g[3],
                                 ap_lora_set *lora, ap_adamw *opt) {
    char ck[4200], p[4400];
    int64_t s;
    if (ap_ckpt_latest(c, o->out_dir, "train", ck, sizeof ck, &s) != AP_OK) return c->status;
    snprintf(p, sizeof p, "%s/state.json", ck);
    ap_json *j = ap_json_load(c, p);
    if (!j) return c->status;
    ap_status st = AP_OK;
    int64_t js = 0, jp = 0;
    const ap_json *saved = ap_json_get(j, "config");
    if (!ap_json_int(ap_json_get(j, "step"), 0, INT32_MAX, &js) ||
        !ap_json_int(ap_json_get(j, "prompt_position"), 0, INT64_MAX, &jp) || !saved)
        st = ap_seterr(c, AP_ERR_FORMAT, "%s: step, prompt_position or config missing", p);
    ap_json *cur = st == AP_OK ? config_json(c, o) : NULL;
    if (st == AP_OK)
        st = ap_ckpt_check_config(c, "train", p, saved, cur, COMPAT_KEYS, (int)(sizeof COMPAT_KEYS / sizeof *COMPAT_KEYS));
    ap_json_free(cur);
    int64_t s_acc = 0, s_ranks = 1; /* checkpoints from before MPI have no "ranks": one */
    const ap_json *jr = ap_json_get(saved, "ranks");
    if (st == AP_OK && (!ap_json_int(ap_json_get(saved, "accum"), 1, INT32_MAX, &s_acc) ||
                        (jr && !ap_json_int(jr, 1, INT32_MAX, &s_ranks))))
        st = ap_seterr(c, AP_ERR_FORMAT, "%s: config.accum or config.ranks is not a positive integer", p);
    else if (st == AP_OK && s_acc * s_ranks != (int64_t)o->accum * ap_dist_size())
        st = ap_seterr(c, AP_ERR_INVALID_ARG,
                       "train --resume: the checkpoint %s was made with %lld rank(s) x accumulation %lld = %lld "
                       "chains per step, this run has %d x %d = %d; resume with ranks x --grad-accum = %lld",
                       p, (long long)s_ranks, (long long)s_acc, (long long)(s_ranks * s_acc), ap_dist_size(),
                       o->accum, ap_dist_size() * o->accum, (long long)(s_ranks * s_acc));
    for (int i = 0; i < 3 && st == AP_OK; i++) {
        uint8_t raw[AP_RNG_STATE_BYTES];
        if (!ap_hex_decode(ap_json_str(ap_json_get(j, RNG_KEYS[i])), raw, sizeof raw))
            st = ap_seterr(c, AP_ERR_FORMAT, "%s: %s is not a %d-byte hex state", p, RNG_KEYS[i], AP_RNG_STATE_BYTES);
        else st = ap_rng_set_state(c, g[i], raw, sizeof raw);
    }
    ap_json_free(j);
    if (st == AP_OK) {
        snprintf(p, sizeof p, "%s/lora.safetensors", ck);
        st = ap_lora_load(c, lora, p, NULL);
    }
    if (st == AP_OK) {
        snprintf(p, sizeof p, "%s/optimizer.safetensors", ck);
        st = ap_adamw_load(opt, p);
        if (st == AP_OK) {
            opt->cfg.lr = o->lr;
            opt->cfg.weight_decay = o->weight_decay;
            opt->cfg.max_grad_norm = o->clip;
        }
    }
    if (st == AP_OK) {
        *step = (int)js;
        *pos = jp;
    }
    return st == AP_OK ? c->status : st;
}

/* Evaluation: every prompt of the evaluation set with seeds 0..N-1, sampled
 * without gradient by the current adapters (the same images at every
 * evaluation, so the rewards compare); one line in eval.jsonl and a grid
 * eval/step_NNNNNN.png (a row per prompt). Uses no training stream, so resume
 * stays bit-exact. A collective: the images are split into one contiguous
 * share per rank and gathered, in order, at rank 0, which writes (elog is
 * NULL on the other ranks); the numbers are those of one process. */
static ap_status evaluate(ap_ctx *c, const ap_train_opts *o, ap_sd_model *m, ap_reward_mix *mix, const ap_prompts *ep,
                          int step, FILE *elog) {
    int R = ap_dist_size(), me = ap_dist_rank();
    int64_t total = (int64_t)ep->n * o->eval_per_prompt, per = (int64_t)o->height * o->width * 3;
    int64_t lo = total * me / R, hi = total * (me + 1) / R;
    /* this rank's share: [hi-lo][per] images, [hi-lo] rewards, then the rewards'
     * extra metrics (jpeg_kb, ...) [hi-lo][MM], whose means are logged too */
    enum { MM = AP_REWARD_METRICS_MAX };
    float *mine = malloc(sizeof(float) * (size_t)((hi - lo) * (per + 1 + MM) + 1));
    float *mmet = mine ? mine + (hi - lo) * (per + 1) : NULL;
    const char *mnames[MM];
    double mval[MM];
    int nm = 0;
    ap_status st = mine ? AP_OK : ap_seterr(c, AP_ERR_NOMEM, "evaluation: out of memory");
    int prev = ap_set_grad_enabled(c, 0);
    ap_txt2img_opts to;
    ap_txt2img_defaults(&to);
    to.negative = o->negative;
    to.steps = o->sample_steps;
    to.cfg = o->cfg;
    to.width = o->width;
    to.height = o->height;
    for (int64_t i = lo; i < hi && st == AP_OK; i++) {
        int p = (int)(i / o->eval_per_prompt);
        to.prompt = ep->text[p];
        to.seed = (uint64_t)(i % o->eval_per_prompt);
        ap_tensor *img = NULL;
        if (ap_txt2img(c, m, &to, &img) != AP_OK) break;
        const char *pp[1] = {ep->text[p]};
        ap_tensor *r = ap_reward_mix_forward(c, mix, img, pp, NULL);
        if (r && ap_tensor_numel(img) != per)
            ap_seterr(c, AP_ERR_SHAPE, "evaluation: an image of %lld values, expected %lld",
                      (long long)ap_tensor_numel(img), (long long)per);
        if (r && !ap_failed(c)) {
            memcpy(mine + (i - lo) * per, ap_tensor_cdata(img), sizeof(float) * (size_t)per);
            mine[(hi - lo) * per + (i - lo)] = ((const float *)ap_tensor_cdata(r))[0];
            nm = ap_reward_mix_metrics(c, mix, img, mnames, mval);
            for (int j = 0; j < MM; j++) mmet[(i - lo) * MM + j] = j < nm ? (float)mval[j] : 0.0f;
        }
        ap_tensor_release(img);
        ap_tensor_release(r);
        st = c->status;
    }
    ap_set_grad_enabled(c, prev);
    st = ap_dist_agree(c, st, NULL, NULL);
    float *imgs = NULL, *rew = NULL, *met = NULL; /* at rank 0: [total][per], [total], [total][MM] */
    size_t *cnt = st == AP_OK ? malloc(sizeof(size_t) * (size_t)R) : NULL;
    if (st == AP_OK && me == 0) {
        imgs = malloc(sizeof(float) * (size_t)(total * per + 1));
        rew = malloc(sizeof(float) * (size_t)(total + 1));
        met = malloc(sizeof(float) * (size_t)(total * MM + 1));
    }
    if (st == AP_OK && (!cnt || (me == 0 && (!imgs || !rew || !met))))
        ap_dist_abort(1); /* the others are already in the gather */
    if (st == AP_OK) {
        for (int r = 0; r < R; r++) cnt[r] = sizeof(float) * (size_t)((total * (r + 1) / R - total * r / R) * per);
        ap_dist_gatherv(c, mine, cnt, imgs, 0);
        for (int r = 0; r < R; r++) cnt[r] = sizeof(float) * (size_t)(total * (r + 1) / R - total * r / R);
        ap_dist_gatherv(c, mine + (hi - lo) * per, cnt, rew, 0);
        for (int r = 0; r < R; r++) cnt[r] *= MM;
        ap_dist_gatherv(c, mmet, cnt, met, 0);
    }
    free(cnt);
    free(mine);
    if (st == AP_OK && me == 0 && total > 0) {
        double sum = 0, sum2 = 0;
        for (int64_t i = 0; i < total; i++) sum += rew[i], sum2 += (double)rew[i] * rew[i];
        double mean = sum / total, sd = total > 1 ? sqrt(fmax(0, (sum2 - total * mean * mean) / (total - 1))) : 0;
        char dir[4096], grid[4200];
        snprintf(dir, sizeof dir, "%s/eval", o->out_dir);
        snprintf(grid, sizeof grid, "%s/step_%06d.png", dir, step);
        ap_tensor *all = NULL;
        if (mkdir(dir, 0755) != 0 && errno != EEXIST)
            st = ap_seterr(c, AP_ERR_IO, "%s: cannot create: %s", dir, strerror(errno));
        else
            all = ap_tensor_from_data(c, AP_F32, 4, (int64_t[]){total, o->height, o->width, 3}, imgs);
        if (all) {
            char stepbuf[32];
            snprintf(stepbuf, sizeof stepbuf, "%d", step);
            const char *keys[] = {"step", "reward"}, *vals[] = {stepbuf, o->reward};
            ap_png_write_grid(c, grid, all, o->eval_per_prompt, 2, keys, vals);
        }
        ap_tensor_release(all);
        st = c->status;
        if (st == AP_OK) {
            fprintf(elog,
                    "{\"step\": %d, \"reward_mean\": %.6g, \"reward_std\": %.6g, \"images\": %d, \"grid\": "
                    "\"eval/step_%06d.png\"",
                    step, mean, sd, (int)total, step);
            /* metric names come from rank 0's own images (all ranks use the same rewards) */
            for (int j = 0; j < nm; j++) {
                double s = 0;
                for (int64_t i = 0; i < total; i++) s += met[i * MM + j];
                fprintf(elog, ", \"%s_mean\": %.6g", mnames[j], s / total);
            }
            fprintf(elog, "}\n");
            fflush(elog);
        }
        if (st == AP_OK && o->on_eval) {
            prev = ap_set_grad_enabled(c, 0);
            st = o->on_eval(o->on_eval_user, c, step, imgs, (int)total);
            ap_set_grad_enabled(c, prev);
            if (st != AP_OK && !ap_failed(c)) st = ap_seterr(c, st, "evaluation hook failed at step %d", step);
        }
    }
    free(imgs);
    free(rew);
    free(met);
    return st;
}

/* ---- data parallelism ----------------------------------------------------- */

/* Sums the adapters' gradients over the ranks. Each chain's loss is already
 * divided by the global chain count, so the sum is the mean over all chains,
 * and for two ranks it is the very sum one process accumulating both chains
 * makes. A parameter without a gradient on a rank counts as zero there; one
 * without a gradient on every rank stays without (AdamW skips it, as it does
 * in one process). buf: [total + n]. */
static ap_status allreduce_grads(ap_ctx *c, int n, ap_tensor *const *ps, float *buf, int64_t total) {
    int64_t off = 0;
    for (int i = 0; i < n; i++) {
        ap_tensor *g = ap_tensor_grad(ps[i]);
        int64_t k = ap_tensor_numel(ps[i]);
        if (g) memcpy(buf + off, ap_f32(g), sizeof(float) * (size_t)k);
        else memset(buf + off, 0, sizeof(float) * (size_t)k);
        buf[total + i] = g ? 1.0f : 0.0f;
        off += k;
    }
    if (ap_dist_allreduce_sum_f32(c, buf, total + n) != AP_OK) return c->status;
    off = 0;
    for (int i = 0; i < n; i++) {
        ap_tensor *p = ps[i];
        int64_t k = ap_tensor_numel(p);
        if (buf[total + i] > 0) {
            if (!p->grad && !(p->grad = ap_tensor_new_shape(c, AP_F32, p->ndim, p->shape))) return c->status;
            p->grad_fresh = false;
            memcpy(ap_f32(p->grad), buf + off, sizeof(float) * (size_t)k);
        }
        off += k;
    }
    return AP_OK;
}

static uint64_t fnv1a(uint64_t h, const void *data, size_t n) {
    const uint8_t *b = data;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

/* Every rank must hold the same adapters, moments and streams after a step;
 * a hash of them (a few MB: cheap beside a step) is compared across ranks. */
static ap_status check_replicas(ap_ctx *c, int n, ap_tensor *const *ps, const ap_adamw *opt, ap_rng *const g[3],
                                int64_t pos, int step) {
    int R = ap_dist_size();
    if (R == 1) return AP_OK;
    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < n; i++) h = fnv1a(h, ap_tensor_cdata(ps[i]), sizeof(float) * (size_t)ap_tensor_numel(ps[i]));
    h = fnv1a(h, opt->m, sizeof(float) * (size_t)opt->off[opt->n]);
    h = fnv1a(h, opt->v, sizeof(float) * (size_t)opt->off[opt->n]);
    uint8_t raw[AP_RNG_STATE_BYTES];
    for (int i = 0; i < 3; i++) {
        ap_rng_get_state(g[i], raw);
        h = fnv1a(h, raw, sizeof raw);
    }
    h = fnv1a(h, &pos, sizeof pos);
    uint64_t *all = malloc(sizeof(uint64_t) * (size_t)R);
    if (!all) ap_dist_abort(1);
    ap_dist_allgather(c, &h, sizeof h, all);
    int bad = -1;
    for (int r = 1; r < R && bad < 0; r++)
        if (all[r] != all[0]) bad = r;
    free(all);
    if (bad >= 0) /* every rank sees the same hashes, so every rank stops here */
        return ap_seterr(c, AP_ERR_STATE,
                         "train: after step %d rank %d holds other adapters, optimizer state or streams than rank 0 "
                         "(the ranks must run the same build, model and settings)",
                         step, bad);
    return AP_OK;
}

/* Rank 0 loaded a checkpoint: every rank takes its step, prompt position,
 * streams, adapters and optimizer state. */
static ap_status bcast_state(ap_ctx *c, int *done, int64_t *pos, ap_rng *const g[3], int n, ap_tensor *const *ps,
                             ap_adamw *opt) {
    if (ap_dist_size() == 1) return AP_OK;
    int64_t head[3] = {*done, *pos, opt->step};
    ap_dist_bcast(c, head, sizeof head, 0);
    *done = (int)head[0];
    *pos = head[1];
    opt->step = head[2];
    uint8_t raw[AP_RNG_STATE_BYTES];
    for (int i = 0; i < 3; i++) {
        ap_rng_get_state(g[i], raw);
        ap_dist_bcast(c, raw, sizeof raw, 0);
        if (ap_rng_set_state(c, g[i], raw, sizeof raw) != AP_OK) return c->status;
    }
    for (int i = 0; i < n; i++) {
        ap_dist_bcast(c, ap_f32(ps[i]), sizeof(float) * (size_t)ap_tensor_numel(ps[i]), 0);
        ap_tensor_touch(ps[i]);
    }
    ap_dist_bcast(c, opt->m, sizeof(float) * (size_t)opt->off[opt->n], 0);
    ap_dist_bcast(c, opt->v, sizeof(float) * (size_t)opt->off[opt->n], 0);
    return c->status;
}

/* Data parallelism (docs/distributed.md): R ranks each run `accum` chains of a
 * step; chain j of the step (j = rank * accum + a) takes the prompts and the
 * draws that chain j of one process running R * accum chains would, every
 * rank stepping over the other ranks' draws, so the samples depend only on
 * batch and R * accum. The gradients are summed over the ranks before
 * clipping and AdamW, so every rank makes the same update. Rank 0 alone writes
 * the run directory. Every rank goes through the same collectives in the same
 * order; failures are agreed (ap_dist_agree) at fixed points, so all ranks
 * leave together. */
ap_status ap_train(ap_ctx *c, const ap_train_opts *o) {
    if (ap_failed(c)) return c->status;
    if (o->steps < 1 || o->batch < 1 || o->accum < 1 || o->sample_steps < 1 || o->rank < 1)
        return ap_seterr(c, AP_ERR_INVALID_ARG, "train: steps, batch, accumulation, sampling steps and rank must be >= 1");
    const int R = ap_dist_size(), me = ap_dist_rank();
    const bool lead = me == 0;
    const int chains = R * o->accum; /* per optimizer step, over all ranks */
    const int rec = 1 + o->batch;    /* per chain: loss, then the batch's rewards */
    char path[4096];
    ap_sd_model *m = NULL;
    ap_prompts prompts = {0};
    ap_reward_mix *mix = NULL;
    ap_reward_loss loss;
    ap_lora_set *lora = NULL;
    ap_adamw *opt = NULL;
    ap_tensor **params = NULL;
    float *gbuf = NULL;
    FILE *log = NULL, *elog = NULL;
    ap_prompts eprompts = {0};
    double *recs = malloc(sizeof(double) * (size_t)(o->accum * rec)); // [accum][rec]: this rank's chains
    double *allrecs = malloc(sizeof(double) * (size_t)(chains * rec)); // [chains][rec]: every rank's, in chain order
    const char **pb = malloc(sizeof(char *) * (size_t)(2 * o->batch));
    ap_status st = recs && allrecs && pb ? AP_OK : ap_seterr(c, AP_ERR_NOMEM, "out of memory");
    if (st == AP_OK && lead && mkdir(o->out_dir, 0755) != 0 && errno != EEXIST)
        st = ap_seterr(c, AP_ERR_IO, "%s: cannot create the run directory: %s", o->out_dir, strerror(errno));
    if (st == AP_OK) st = ap_sd_load(c, o->model, o->weights_dtype, &m);
    if (st == AP_OK) st = ap_prompts_load(c, o->prompts, &prompts);
    ap_reward_opts ropts = {.models_dir = o->models_dir, .resize = o->reward_resize,
                            .weights_dtype = o->weights_dtype, .count_temperature = o->count_temperature};
    if (st == AP_OK) st = ap_reward_mix_parse(c, o->reward, &ropts, &mix);
    /* from here on o has the loss resolved (the reward's default when none was
     * given), so config.json and the checkpoints record the loss used */
    ap_train_opts resolved = *o;
    if (st == AP_OK && !resolved.loss) resolved.loss = ap_reward_mix_default_loss(mix);
    o = &resolved;
    if (st == AP_OK) st = ap_reward_loss_parse(c, o->loss, &loss);
    if (st == AP_OK) st = ap_lora_create(c, &m->cfg.unet, o->rank, o->alpha, o->seed, &lora);
    if (st == AP_OK && o->init_lora && !o->resume) st = ap_lora_load(c, lora, o->init_lora, NULL);
    if (st == AP_OK) st = ap_lora_attach(c, lora, m->unet);
    int np = 0;
    if (st == AP_OK) {
        params = malloc(sizeof *params * (size_t)(2 * lora->n));
        np = params ? ap_lora_tensors(lora, params) : 0;
        ap_adamw_config ac;
        ap_adamw_defaults(&ac);
        ac.lr = o->lr;
        ac.weight_decay = o->weight_decay;
        ac.max_grad_norm = o->clip;
        st = params ? ap_adamw_create(c, &ac, np, params, &opt) : ap_seterr(c, AP_ERR_NOMEM, "out of memory");
    }
    if (st == AP_OK && R > 1 && !(gbuf = malloc(sizeof(float) * (size_t)(opt->off[np] + np))))
        st = ap_seterr(c, AP_ERR_NOMEM, "out of memory for the gradient buffer");
    if (st == AP_OK && o->eval_prompts) st = ap_prompts_load(c, o->eval_prompts, &eprompts);
    st = ap_dist_agree(c, st, NULL, NULL);
    /* streams: initial noise, truncation plans, DDIM noise; prompts cycle in order */
    ap_rng g_lat, g_trunc, g_noise;
    ap_rng_init(&g_lat, o->seed);
    ap_rng_init(&g_trunc, o->seed + 1);
    ap_rng_init(&g_noise, o->seed + 2);
    ap_rng *const gs[3] = {&g_lat, &g_trunc, &g_noise};
    int64_t pos = 0;
    int done = 0; /* steps already taken (from a checkpoint) */
    if (st == AP_OK && o->resume) {
        if (lead) st = load_checkpoint(c, o, &done, &pos, gs, lora, opt);
        st = ap_dist_agree(c, st, NULL, NULL);
        if (st == AP_OK) st = bcast_state(c, &done, &pos, gs, np, params, opt);
        if (st == AP_OK) { /* the settings that may change on resume, as load_checkpoint sets them */
            opt->cfg.lr = o->lr;
            opt->cfg.weight_decay = o->weight_decay;
            opt->cfg.max_grad_norm = o->clip;
        }
    }
    if (st == AP_OK && lead) {
        snprintf(path, sizeof path, "%s/config.json", o->out_dir);
        st = write_config(c, o, path);
        snprintf(path, sizeof path, "%s/log.jsonl", o->out_dir);
        if (st == AP_OK && o->resume) st = ap_log_trim(c, path, done);
        log = st == AP_OK ? fopen(path, o->resume ? "a" : "w") : NULL;
        if (st == AP_OK && !log) st = ap_seterr(c, AP_ERR_IO, "%s: cannot write", path);
        if (st == AP_OK && o->eval_prompts) {
            snprintf(path, sizeof path, "%s/eval.jsonl", o->out_dir);
            if (o->resume) st = ap_log_trim(c, path, done);
            elog = st == AP_OK ? fopen(path, o->resume ? "a" : "w") : NULL;
            if (st == AP_OK && !elog) st = ap_seterr(c, AP_ERR_IO, "%s: cannot write", path);
        }
    }
    st = ap_dist_agree(c, st, NULL, NULL);
    if (st == AP_OK && o->eval_prompts && done == 0)
        st = ap_dist_agree(c, evaluate(c, o, m, mix, &eprompts, 0, elog), NULL, NULL);
    if (st == AP_OK) st = check_replicas(c, np, params, opt, gs, pos, done);
    ap_grad_sample_opts so;
    ap_grad_sample_defaults(&so);
    so.steps = o->sample_steps;
    so.cfg = o->cfg;
    so.eta = o->eta;
    so.trunc = o->trunc;
    int f = m ? 1 << (m->cfg.vae.levels - 1) : 1;
    int64_t lh = o->height / f, lw = o->width / f, lc = m ? m->cfg.unet.in_channels : 4;
    bool guided = o->cfg > 1.0f;
    bool stopped = false;
    for (int step = done + 1; step <= o->steps && st == AP_OK && !stopped; step++) {
        double t0 = now_s();
        ap_mem_reset_peak(c);
        ap_adamw_zero_grad(opt);
        /* the chains of the ranks before this one, then ours, then the rest */
        for (int j = 0; j < me * o->accum && st == AP_OK; j++)
            st = ap_sample_skip_draws(c, &so, o->batch, lh, lw, lc, &g_lat, &g_trunc, &g_noise);
        for (int a = 0; a < o->accum && st == AP_OK; a++) {
            int64_t first = pos + (int64_t)(me * o->accum + a) * o->batch; /* this chain's first prompt */
            int k = 0;
            if (guided)
                for (int i = 0; i < o->batch; i++) pb[k++] = o->negative ? o->negative : "";
            for (int i = 0; i < o->batch; i++) pb[k++] = prompts.text[(first + i) % prompts.n];
            ap_tensor *ctx = ap_encode_prompts(c, m, k, pb);
            ap_tensor *xT = ap_rng_randn_latents(c, &g_lat, o->batch, lh, lw, lc);
            ap_tensor *lat = NULL, *img = NULL, *r = NULL, *l = NULL, *ls = NULL;
            if (ctx && xT)
                ap_sample_with_grad(c, m, &so, ctx, xT, &g_trunc, o->eta > 0 ? &g_noise : NULL, &lat, &img, NULL);
            if (img) r = ap_reward_mix_forward(c, mix, img, pb + (guided ? o->batch : 0), NULL);
            if (r) l = ap_reward_loss_apply(c, &loss, r);
            if (l) ls = ap_scale(c, l, (float)(o->loss_coeff / chains));
            /* a random plan (rand-step) can detach every step of a chain: then the
             * chain contributes no gradient (AlignProp's original would stop with an
             * error; a run should not) */
            if (ls && ap_tensor_requires_grad(ls)) ap_backward(c, ls, NULL);
            double *cr = recs + (size_t)a * rec;
            if (l) cr[0] = ((const float *)ap_tensor_cdata(l))[0] * o->loss_coeff / chains;
            if (r)
                for (int i = 0; i < o->batch; i++) cr[1 + i] = ((const float *)ap_tensor_cdata(r))[i];
            ap_tensor *ts[] = {ctx, xT, lat, img, r, l, ls};
            for (int i = 0; i < 7; i++) ap_tensor_release(ts[i]);
            ap_tape_clear(c);
            st = c->status;
        }
        for (int j = (me + 1) * o->accum; j < chains && st == AP_OK; j++)
            st = ap_sample_skip_draws(c, &so, o->batch, lh, lw, lc, &g_lat, &g_trunc, &g_noise);
        pos += (int64_t)chains * o->batch;
        /* from here to the end of the step every branch on st is taken alike
         * on every rank: st is agreed, or the outcome of the same computation */
        st = ap_dist_agree(c, st, NULL, NULL);
        if (st != AP_OK) break;
        double tc = now_s();
        if (R > 1) st = allreduce_grads(c, np, params, gbuf, opt->off[np]);
        ap_dist_allgather(c, recs, sizeof(double) * (size_t)(o->accum * rec), allrecs); /* chain order */
        double comm = now_s() - tc;
        double gnorm = 0;
        opt->cfg.lr = ap_lr_at(&o->lr_schedule, o->lr, step - 1, o->steps);
        if (st == AP_OK) st = ap_adamw_step(opt, &gnorm);
        st = ap_dist_agree(c, st, NULL, NULL);
        if (st == AP_OK) st = check_replicas(c, np, params, opt, gs, pos, step);
        if (st != AP_OK) break;
        const double *recs_all = allrecs;
        int n = chains * o->batch;
        double mean = 0, var = 0, loss_sum = 0;
        for (int j = 0; j < chains; j++) {
            loss_sum += recs_all[j * rec];
            for (int i = 0; i < o->batch; i++) mean += recs_all[j * rec + 1 + i];
        }
        mean /= n;
        for (int j = 0; j < chains; j++)
            for (int i = 0; i < o->batch; i++)
                var += (recs_all[j * rec + 1 + i] - mean) * (recs_all[j * rec + 1 + i] - mean);
        double sd = n > 1 ? sqrt(var / (n - 1)) : 0.0;
        double dt = now_s() - t0;
        if (lead) {
            fprintf(log,
                    "{\"step\": %d, \"reward_mean\": %.6g, \"reward_std\": %.6g, \"loss\": %.6g, \"grad_norm\": %.6g, "
                    "\"lr\": %.6g, \"seconds\": %.4f, \"images_per_second\": %.4f, \"peak_memory_mib\": %.1f, "
                    "\"ranks\": %d, \"comm_seconds\": %.6f}\n",
                    step, mean, sd, loss_sum, gnorm, opt->cfg.lr, dt, n / dt, ap_mem_peak(c) / 1048576.0, R, comm);
            fflush(log);
        }
        if (o->progress) o->progress(o->progress_user, step, o->steps, mean);
        int stop = o->stop ? *o->stop : 0;
        st = ap_dist_agree(c, st, &stop, NULL);
        if (stop && o->stop) *o->stop = stop; /* a signal to any rank stops every rank, after this step */
        stopped = stop != 0;
        if (st == AP_OK && o->eval_prompts && !stopped &&
            (step == o->steps || (o->eval_every > 0 && step % o->eval_every == 0)))
            st = evaluate(c, o, m, mix, &eprompts, step, elog);
        if (st == AP_OK && lead && o->eval_prompts && o->eval_every > 0 && step % o->eval_every == 0)
            st = ap_report_write(c, o->out_dir); /* watchable while training runs */
        if (st == AP_OK && lead && (stopped || step == o->steps || (o->save_every > 0 && step % o->save_every == 0)))
            st = save_checkpoint(c, o, step, pos, gs, lora, opt);
        st = ap_dist_agree(c, st, NULL, NULL);
    }
    if (st == AP_OK && lead) {
        snprintf(path, sizeof path, "%s/lora.safetensors", o->out_dir);
        st = ap_lora_save(c, lora, path, o->export_format);
    }
    if (log) fflush(log);
    if (elog) fflush(elog);
    if (st == AP_OK && lead) st = ap_report_write(c, o->out_dir);
    if (st == AP_OK && lead) {
        snprintf(path, sizeof path, "%s/optimizer.safetensors", o->out_dir);
        st = ap_adamw_save(opt, path);
    }
    /* every rank leaves the loop with the same status: only rank 0's final
     * writes are left to agree on */
    st = ap_dist_agree(c, st, NULL, NULL);
    if (log) fclose(log);
    if (elog) fclose(elog);
    ap_prompts_free(&eprompts);
    ap_adamw_free(opt);
    free(params);
    free(gbuf);
    ap_lora_free(lora);
    ap_reward_mix_free(mix);
    ap_prompts_free(&prompts);
    ap_sd_free(m);
    free(recs);
    free(allrecs);
    free(pb);
    return st == AP_OK ? c->status : st;
}
