/* The AlignProp training loop. */
#include "trainer.h"

#include "core/internal.h"
#include "io/json.h"
#include "pipeline/txt2img.h"
#include "rewards/reward.h"
#include "train/optim.h"
#include "train/prompts.h"
#include "train/sample_grad.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>

void ap_train_defaults(ap_train_opts *o) {
    memset(o, 0, sizeof *o);
    o->prompts = "builtin:simple_animals";
    o->negative = "";
    o->reward = "brightness";
    o->loss = "maximize";
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
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static ap_status write_config(ap_ctx *c, const ap_train_opts *o, const char *path) {
    ap_json *j = ap_json_new_object();
    char buf[64];
    ap_json_add_str(j, "alignprop_version", ap_version_string());
    ap_json_add_str(j, "model", o->model);
    ap_json_add_str(j, "prompts", o->prompts);
    ap_json_add_str(j, "negative", o->negative ? o->negative : "");
    ap_json_add_str(j, "reward", o->reward);
    ap_json_add_str(j, "loss", o->loss);
    ap_json_add_int(j, "steps", o->steps);
    ap_json_add_int(j, "batch", o->batch);
    ap_json_add_int(j, "accum", o->accum);
    ap_json_add_int(j, "sample_steps", o->sample_steps);
    ap_json_add_num(j, "cfg", o->cfg);
    ap_json_add_num(j, "eta", o->eta);
    switch (o->trunc.kind) {
    case AP_TRUNC_FIXED: snprintf(buf, sizeof buf, "fixed:%d", o->trunc.k); break;
    case AP_TRUNC_RAND_STEP: snprintf(buf, sizeof buf, "rand-step:%d:%d", o->trunc.lo, o->trunc.hi); break;
    case AP_TRUNC_RAND: snprintf(buf, sizeof buf, "rand:%d:%d", o->trunc.lo, o->trunc.hi); break;
    case AP_TRUNC_GAUSSIAN: snprintf(buf, sizeof buf, "gaussian:%g:%g", o->trunc.mean, o->trunc.std); break;
    default: snprintf(buf, sizeof buf, "full"); break;
    }
    ap_json_add_str(j, "truncation", buf);
    ap_json_add_int(j, "width", o->width);
    ap_json_add_int(j, "height", o->height);
    ap_json_add_int(j, "lora_rank", o->rank);
    ap_json_add_num(j, "lora_alpha", o->alpha > 0 ? o->alpha : o->rank);
    ap_json_add_num(j, "lr", o->lr);
    ap_json_add_num(j, "weight_decay", o->weight_decay);
    ap_json_add_num(j, "clip", o->clip);
    ap_json_add_num(j, "loss_coeff", o->loss_coeff);
    ap_json_add_int(j, "seed", (int64_t)o->seed);
    ap_json_add_str(j, "weights_dtype", ap_dtype_name(o->weights_dtype));
    ap_json_add_str(j, "precision", ap_get_precision(c) == AP_PREC_BF16 ? "bf16" : "f32");
    ap_json_add_int(j, "threads", ap_get_num_threads(c));
    ap_json_add_str(j, "lora_format", ap_lora_format_name(o->export_format));
    char *s = ap_json_print(j, true);
    ap_json_free(j);
    if (!s) return ap_seterr(c, AP_ERR_NOMEM, "out of memory");
    FILE *f = fopen(path, "w");
    ap_status st = AP_OK;
    if (!f || fputs(s, f) < 0 || fclose(f) != 0) st = ap_seterr(c, AP_ERR_IO, "%s: cannot write", path);
    ap_json_free_str(s);
    return st;
}

ap_status ap_train(ap_ctx *c, const ap_train_opts *o) {
    if (ap_failed(c)) return c->status;
    if (o->steps < 1 || o->batch < 1 || o->accum < 1 || o->sample_steps < 1 || o->rank < 1)
        return ap_seterr(c, AP_ERR_INVALID_ARG, "train: steps, batch, accumulation, sampling steps and rank must be >= 1");
    if (mkdir(o->out_dir, 0755) != 0 && errno != EEXIST)
        return ap_seterr(c, AP_ERR_IO, "%s: cannot create the run directory: %s", o->out_dir, strerror(errno));
    char path[4096];
    ap_sd_model *m = NULL;
    ap_prompts prompts = {0};
    ap_reward_mix *mix = NULL;
    ap_reward_loss loss;
    ap_lora_set *lora = NULL;
    ap_adamw *opt = NULL;
    ap_tensor **params = NULL;
    FILE *log = NULL;
    float *rvals = malloc(sizeof(float) * (size_t)(o->batch * o->accum));
    const char **pb = malloc(sizeof(char *) * (size_t)(2 * o->batch));
    if (!rvals || !pb) {
        free(rvals);
        free(pb);
        return ap_seterr(c, AP_ERR_NOMEM, "out of memory");
    }
    ap_status st = ap_sd_load(c, o->model, o->weights_dtype, &m);
    if (st == AP_OK) st = ap_prompts_load(c, o->prompts, &prompts);
    if (st == AP_OK) st = ap_reward_mix_parse(c, o->reward, NULL, &mix);
    if (st == AP_OK) st = ap_reward_loss_parse(c, o->loss, &loss);
    if (st == AP_OK) st = ap_lora_create(c, &m->cfg.unet, o->rank, o->alpha, o->seed, &lora);
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
    if (st == AP_OK) {
        snprintf(path, sizeof path, "%s/config.json", o->out_dir);
        st = write_config(c, o, path);
    }
    if (st == AP_OK) {
        snprintf(path, sizeof path, "%s/log.jsonl", o->out_dir);
        log = fopen(path, "w");
        if (!log) st = ap_seterr(c, AP_ERR_IO, "%s: cannot write", path);
    }
    /* streams: initial noise, truncation plans, DDIM noise; prompts cycle in order */
    ap_rng g_lat, g_trunc, g_noise;
    ap_rng_init(&g_lat, o->seed);
    ap_rng_init(&g_trunc, o->seed + 1);
    ap_rng_init(&g_noise, o->seed + 2);
    ap_grad_sample_opts so;
    ap_grad_sample_defaults(&so);
    so.steps = o->sample_steps;
    so.cfg = o->cfg;
    so.eta = o->eta;
    so.trunc = o->trunc;
    int f = m ? 1 << (m->cfg.vae.levels - 1) : 1;
    int64_t pos = 0;
    bool guided = o->cfg > 1.0f;
    for (int step = 1; step <= o->steps && st == AP_OK; step++) {
        double t0 = now_s();
        ap_mem_reset_peak(c);
        ap_adamw_zero_grad(opt);
        double loss_sum = 0;
        for (int a = 0; a < o->accum && st == AP_OK; a++) {
            int k = 0;
            if (guided)
                for (int i = 0; i < o->batch; i++) pb[k++] = o->negative ? o->negative : "";
            for (int i = 0; i < o->batch; i++) pb[k++] = prompts.text[(pos + i) % prompts.n];
            ap_tensor *ctx = ap_encode_prompts(c, m, k, pb);
            ap_tensor *xT = ap_rng_randn_latents(c, &g_lat, o->batch, o->height / f, o->width / f,
                                                 m->cfg.unet.in_channels);
            ap_tensor *lat = NULL, *img = NULL, *r = NULL, *l = NULL, *ls = NULL;
            if (ctx && xT)
                ap_sample_with_grad(c, m, &so, ctx, xT, &g_trunc, o->eta > 0 ? &g_noise : NULL, &lat, &img, NULL);
            if (img) r = ap_reward_mix_forward(c, mix, img, pb + (guided ? o->batch : 0), NULL);
            if (r) l = ap_reward_loss_apply(c, &loss, r);
            if (l) ls = ap_scale(c, l, (float)(o->loss_coeff / o->accum));
            if (ls) ap_backward(c, ls, NULL);
            if (r)
                for (int i = 0; i < o->batch; i++) rvals[a * o->batch + i] = ((const float *)ap_tensor_cdata(r))[i];
            if (l) loss_sum += ((const float *)ap_tensor_cdata(l))[0] * o->loss_coeff / o->accum;
            ap_tensor *ts[] = {ctx, xT, lat, img, r, l, ls};
            for (int i = 0; i < 7; i++) ap_tensor_release(ts[i]);
            ap_tape_clear(c);
            pos += o->batch;
            st = c->status;
        }
        double gnorm = 0;
        if (st == AP_OK) st = ap_adamw_step(opt, &gnorm);
        if (st != AP_OK) break;
        int n = o->batch * o->accum;
        double mean = 0, var = 0;
        for (int i = 0; i < n; i++) mean += rvals[i];
        mean /= n;
        for (int i = 0; i < n; i++) var += (rvals[i] - mean) * (rvals[i] - mean);
        double sd = n > 1 ? sqrt(var / (n - 1)) : 0.0;
        double dt = now_s() - t0;
        fprintf(log,
                "{\"step\": %d, \"reward_mean\": %.6g, \"reward_std\": %.6g, \"loss\": %.6g, \"grad_norm\": %.6g, "
                "\"lr\": %.6g, \"seconds\": %.4f, \"images_per_second\": %.4f, \"peak_memory_mib\": %.1f}\n",
                step, mean, sd, loss_sum, gnorm, o->lr, dt, n / dt, ap_mem_peak(c) / 1048576.0);
        fflush(log);
        if (o->progress) o->progress(o->progress_user, step, o->steps, mean);
    }
    if (st == AP_OK) {
        snprintf(path, sizeof path, "%s/lora.safetensors", o->out_dir);
        st = ap_lora_save(c, lora, path, o->export_format);
    }
    if (st == AP_OK) {
        snprintf(path, sizeof path, "%s/optimizer.safetensors", o->out_dir);
        st = ap_adamw_save(opt, path);
    }
    if (log) fclose(log);
    ap_adamw_free(opt);
    free(params);
    ap_lora_free(lora);
    ap_reward_mix_free(mix);
    ap_prompts_free(&prompts);
    ap_sd_free(m);
    free(rvals);
    free(pb);
    return st == AP_OK ? c->status : st;
}
