/* alignprop tokenize: the CLIP token ids of a prompt. */
#include "models/tokenizer.h"

#include <stdio.h>
#include <string.h>

static int usage(void) {
    fprintf(stderr,
            "usage: alignprop tokenize --prompt TEXT [--tokenizer DIR] [--openclip] [--all]\n"
            "  --tokenizer DIR  a diffusers tokenizer folder (vocab.json, merges.txt); default: the bundled merges\n"
            "  --openclip       OpenCLIP rules (HTML unescape, padding with 0) instead of SD1.x's\n"
            "  --all            print all 77 ids (with padding), not just up to the end token\n");
    return 2;
}

int ap_cli_tokenize(int argc, char **argv) {
    const char *prompt = NULL, *dir = NULL;
    int openclip = 0, all = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--prompt") && i + 1 < argc)
            prompt = argv[++i];
        else if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc)
            dir = argv[++i];
        else if (!strcmp(argv[i], "--openclip"))
            openclip = 1;
        else if (!strcmp(argv[i], "--all"))
            all = 1;
        else {
            fprintf(stderr, "alignprop tokenize: unknown or incomplete option '%s'\n", argv[i]);
            return usage();
        }
    }
    if (!prompt) {
        fprintf(stderr, "alignprop tokenize: --prompt is required\n");
        return usage();
    }
    ap_ctx *c = ap_ctx_create();
    if (!c) return 1;
    ap_tokenizer *t = NULL;
    ap_status st = dir ? ap_tokenizer_load_dir(c, dir, &t) : ap_tokenizer_load_bundled(c, &t);
    int32_t ids[AP_TOK_CONTEXT];
    int64_t n_text = 0;
    if (st == AP_OK)
        st = ap_tokenize_seq(c, t, prompt, openclip ? &ap_tok_opts_openclip : &ap_tok_opts_sd1, ids, &n_text);
    if (st != AP_OK) {
        fprintf(stderr, "alignprop tokenize: %s\n", ap_last_error(c));
        ap_tokenizer_free(t);
        ap_ctx_free(c);
        return 1;
    }
    int n = all ? AP_TOK_CONTEXT : (int)(n_text + 2 < AP_TOK_CONTEXT ? n_text + 2 : AP_TOK_CONTEXT);
    for (int i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
    printf("\n");
    if (n_text > AP_TOK_CONTEXT - 2)
        fprintf(stderr, "alignprop tokenize: the prompt has %lld tokens; only the first %d are used\n",
                (long long)n_text, AP_TOK_CONTEXT - 2);
    ap_tokenizer_free(t);
    ap_ctx_free(c);
    return 0;
}
