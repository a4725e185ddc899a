/* Prompt sets, files or bundled (embedded with .incbin, like the CLIP merges). */
#include "prompts.h"

#include "core/internal.h"
#include "core/embed.h"
#include "io/atomic.h"
#include "train/shapes.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>

#ifdef AP_PROMPTS_DIR
AP_EMBED_FILE(ap_ps_simple_animals, AP_PROMPTS_DIR "/simple_animals.txt");
AP_EMBED_FILE(ap_ps_eval_simple_animals, AP_PROMPTS_DIR "/eval_simple_animals.txt");
AP_EMBED_FILE(ap_ps_hps_v2_all, AP_PROMPTS_DIR "/hps_v2_all.txt");
AP_EMBED_FILE(ap_ps_hps_v2_all_eval, AP_PROMPTS_DIR "/hps_v2_all_eval.txt");
#endif

const char *const ap_prompt_sets[] = {"simple_animals", "eval_simple_animals", "hps_v2_all", "hps_v2_all_eval",
                                      "shapes", "shapes_eval", NULL};

/* The shapes sets (docs/data.md): the distinct count-free captions of the
 * dataset's stream 0 (what a model trained on it has seen, minus the counts)
 * that name three groups (three colours, or the three kinds), so that the
 * demo's target, three shapes, is one shape per group: the fewest a caption
 * allows, where the data (and the pretrained model) mostly draw four or five.
 * In the order the stream first writes them: every
 * AP_SHAPES_EVAL_EVERY-th is held out for "shapes_eval", the others are
 * "shapes". One caption per line, into a new buffer. */
#define AP_SHAPES_CAPTIONS 48
#define AP_SHAPES_EVAL_EVERY 6
static char *shapes_text(bool eval, size_t *len) {
    size_t cap = (AP_SHAPES_CAPTIONS + 1) * (AP_SHAPES_CAPTION_MAX + 2), n = 0;
    char *all = calloc(AP_SHAPES_CAPTIONS, AP_SHAPES_CAPTION_MAX + 2), *t = malloc(cap);
    if (!all || !t) {
        free(all);
        free(t);
        return NULL;
    }
    int have = 0;
    for (uint64_t i = 0; have < AP_SHAPES_CAPTIONS && i < 100000; i++) {
        ap_shapes_item it;
        char *c = all + (size_t)have * (AP_SHAPES_CAPTION_MAX + 2);
        ap_shapes_item_make(0, i, &it);
        ap_shapes_caption(&it, AP_CAPTION_NOCOUNT, c, AP_SHAPES_CAPTION_MAX);
        ap_shapes_query q;
        if (ap_shapes_caption_parse(c, &q) != 0 || q.n != 3) continue; /* three groups */
        bool dup = false;
        for (int k = 0; k < have && !dup; k++) dup = !strcmp(all + (size_t)k * (AP_SHAPES_CAPTION_MAX + 2), c);
        if (!dup) have++;
    }
    t[0] = 0;
    for (int k = 0; k < have; k++)
        if ((k % AP_SHAPES_EVAL_EVERY == AP_SHAPES_EVAL_EVERY - 1) == eval)
            n += (size_t)sprintf(t + n, "%s\n", all + (size_t)k * (AP_SHAPES_CAPTION_MAX + 2));
    free(all);
    *len = n;
    return t;
}

static ap_status parse(ap_ctx *c, const char *src, const char *text, size_t len, ap_prompts *out) {
    memset(out, 0, sizeof *out);
    int cap = 0;
    size_t i = 0;
    while (i < len) {
        size_t j = i;
        while (j < len && text[j] != '\n') j++;
        size_t a = i, b = j;
        while (a < b && isspace((unsigned char)text[a])) a++;
        while (b > a && isspace((unsigned char)text[b - 1])) b--;
        if (b > a) {
            if (out->n == cap) {
                cap = cap ? 2 * cap : 64;
                char **t = realloc(out->text, sizeof *t * (size_t)cap);
                if (!t) goto oom;
                out->text = t;
            }
            char *s = malloc(b - a + 1);
            if (!s) goto oom;
            memcpy(s, text + a, b - a);
            s[b - a] = 0;
            out->text[out->n++] = s;
        }
        i = j + 1;
    }
    if (out->n == 0) return ap_seterr(c, AP_ERR_INVALID_ARG, "%s: no prompts (one per line expected)", src);
    return AP_OK;
oom:
    ap_prompts_free(out);
    return ap_seterr(c, AP_ERR_NOMEM, "%s: out of memory", src);
}

ap_status ap_prompts_load(ap_ctx *c, const char *source, ap_prompts *out) {
    memset(out, 0, sizeof *out);
    if (!strncmp(source, "builtin:", 8)) {
#ifdef AP_PROMPTS_DIR
        const char *name = source + 8;
        const unsigned char *const beg[] = {ap_ps_simple_animals, ap_ps_eval_simple_animals, ap_ps_hps_v2_all,
                                            ap_ps_hps_v2_all_eval};
        const unsigned char *const end[] = {ap_ps_simple_animals_end, ap_ps_eval_simple_animals_end,
                                            ap_ps_hps_v2_all_end, ap_ps_hps_v2_all_eval_end};
        for (int i = 0; i < 4; i++)
            if (!strcmp(name, ap_prompt_sets[i])) return parse(c, source, (const char *)beg[i], (size_t)(end[i] - beg[i]), out);
#endif
        if (!strcmp(source + 8, "shapes") || !strcmp(source + 8, "shapes_eval")) {
            size_t n = 0;
            char *t = shapes_text(!strcmp(source + 8, "shapes_eval"), &n);
            if (!t) return ap_seterr(c, AP_ERR_NOMEM, "%s: out of memory", source);
            ap_status st = parse(c, source, t, n, out);
            free(t);
            return st;
        }
        char known[256] = "";
        for (int i = 0; ap_prompt_sets[i]; i++)
            snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", i ? ", " : "", ap_prompt_sets[i]);
        return ap_seterr(c, AP_ERR_NOT_FOUND, "%s: no such bundled prompt set (%s)", source, known);
    }
    size_t n = 0;
    char *buf = ap_read_file(c, source, (size_t)256 << 20, &n);
    if (!buf) return c->status;
    ap_status st = parse(c, source, buf, n, out);
    free(buf);
    return st;
}

void ap_prompts_free(ap_prompts *p) {
    for (int i = 0; i < p->n; i++) free(p->text[i]);
    free(p->text);
    memset(p, 0, sizeof *p);
}
