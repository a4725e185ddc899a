/* Prompt sets, files or bundled (embedded with .incbin, like the CLIP merges). */
#include "prompts.h"

#include "core/internal.h"
#include "io/atomic.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>

#ifdef AP_PROMPTS_DIR
#define AP_EMBED(sym, file)                                                                        \
    __asm__(".pushsection .rodata.ap_prompts,\"a\",@progbits\n"                                    \
            ".globl " #sym "\n.hidden " #sym "\n" #sym ":\n"                                       \
            ".incbin \"" AP_PROMPTS_DIR "/" file "\"\n"                                            \
            ".globl " #sym "_end\n.hidden " #sym "_end\n" #sym "_end:\n"                           \
            ".popsection\n");                                                                      \
    extern const char sym[] __attribute__((visibility("hidden")));                                 \
    extern const char sym##_end[] __attribute__((visibility("hidden")));
AP_EMBED(ap_ps_simple_animals, "simple_animals.txt")
AP_EMBED(ap_ps_eval_simple_animals, "eval_simple_animals.txt")
AP_EMBED(ap_ps_hps_v2_all, "hps_v2_all.txt")
AP_EMBED(ap_ps_hps_v2_all_eval, "hps_v2_all_eval.txt")
#endif

const char *const ap_prompt_sets[] = {"simple_animals", "eval_simple_animals", "hps_v2_all", "hps_v2_all_eval", NULL};

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
        const char *const beg[] = {ap_ps_simple_animals, ap_ps_eval_simple_animals, ap_ps_hps_v2_all,
                                   ap_ps_hps_v2_all_eval};
        const char *const end[] = {ap_ps_simple_animals_end, ap_ps_eval_simple_animals_end, ap_ps_hps_v2_all_end,
                                   ap_ps_hps_v2_all_eval_end};
        for (int i = 0; ap_prompt_sets[i]; i++)
            if (!strcmp(name, ap_prompt_sets[i])) return parse(c, source, beg[i], (size_t)(end[i] - beg[i]), out);
#endif
        return ap_seterr(c, AP_ERR_NOT_FOUND,
                         "%s: no such bundled prompt set (simple_animals, eval_simple_animals, hps_v2_all, "
                         "hps_v2_all_eval)", source);
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
