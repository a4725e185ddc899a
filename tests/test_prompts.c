/* Prompt sets: bundled ones match the shipped files, files parse, errors. */
#include "test.h"
#include "train/prompts.h"
#include "train/shapes.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(void) {
    ap_ctx *c = test_ctx();
    ap_prompts p;
    CHECK(ap_prompts_load(c, "builtin:simple_animals", &p) == AP_OK);
    CHECK_MSG(p.n == 45, "45 animals, got %d", p.n);
    /* the bundled copy equals the file in assets/ */
    ap_prompts f;
    CHECK(ap_prompts_load(c, test_path("assets/prompts/simple_animals.txt"), &f) == AP_OK);
    int same = f.n == p.n;
    for (int i = 0; same && i < p.n; i++) same = !strcmp(p.text[i], f.text[i]);
    CHECK(same);
    ap_prompts_free(&f);
    ap_prompts_free(&p);
    const int sizes[] = {45, 6, 750, 50, 40, 8}; /* hps_v2_all has 752 lines, two of them blank */
    for (int i = 0; ap_prompt_sets[i]; i++) {
        char src[64];
        snprintf(src, sizeof src, "builtin:%s", ap_prompt_sets[i]);
        CHECK(ap_prompts_load(c, src, &p) == AP_OK && p.n == sizes[i]);
        for (int k = 0; k < p.n; k++) CHECK(p.text[k][0] && p.text[k][strlen(p.text[k]) - 1] != ' ');
        ap_prompts_free(&p);
    }
    /* the shapes sets: distinct count-free captions the dataset's grammar reads,
     * the training ones never held out */
    ap_prompts e;
    CHECK(ap_prompts_load(c, "builtin:shapes", &p) == AP_OK && ap_prompts_load(c, "builtin:shapes_eval", &e) == AP_OK);
    for (int k = 0; k < p.n; k++) {
        ap_shapes_query q;
        CHECK_MSG(ap_shapes_caption_parse(p.text[k], &q) == 0 && ap_shapes_query_total(&q) == -1 && q.n == 3, "%s",
                  p.text[k]);
        for (int j = 0; j < k; j++) CHECK(strcmp(p.text[j], p.text[k]) != 0);
        for (int j = 0; j < e.n; j++) CHECK(strcmp(e.text[j], p.text[k]) != 0);
    }
    for (int k = 0; k < e.n; k++) {
        ap_shapes_query q;
        CHECK_MSG(ap_shapes_caption_parse(e.text[k], &q) == 0 && ap_shapes_query_total(&q) == -1 && q.n == 3, "%s",
                  e.text[k]);
        for (int j = 0; j < k; j++) CHECK(strcmp(e.text[j], e.text[k]) != 0);
    }
    ap_prompts_free(&e);
    ap_prompts_free(&p);
    char path[64];
    snprintf(path, sizeof path, "/tmp/ap_prompts_%d.txt", (int)getpid());
    FILE *w = fopen(path, "w");
    fputs("  a cat \n\n\tdog\r\n", w);
    fclose(w);
    CHECK(ap_prompts_load(c, path, &p) == AP_OK && p.n == 2 && !strcmp(p.text[0], "a cat") && !strcmp(p.text[1], "dog"));
    ap_prompts_free(&p);
    w = fopen(path, "w");
    fputs("\n  \n", w);
    fclose(w);
    CHECK(ap_prompts_load(c, path, &p) == AP_ERR_INVALID_ARG && strstr(ap_last_error(c), path));
    ap_clear_error(c);
    unlink(path);
    CHECK(ap_prompts_load(c, "builtin:nope", &p) == AP_ERR_NOT_FOUND && strstr(ap_last_error(c), "builtin:nope"));
    ap_clear_error(c);
    CHECK(ap_prompts_load(c, "/nonexistent/prompts.txt", &p) == AP_ERR_IO);
    ap_clear_error(c);
    ap_ctx_free(c);
    return test_summary("prompts");
}
