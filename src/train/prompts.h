/* Prompt sets: a file with one prompt per line, or one of the sets bundled in
 * the library ("builtin:simple_animals", "builtin:eval_simple_animals",
 * "builtin:hps_v2_all", "builtin:hps_v2_all_eval": AlignProp's own files;
 * "builtin:shapes", "builtin:shapes_eval": count-free captions of the shapes
 * dataset and its held-out ones, made from src/train/shapes.c). */
#ifndef AP_TRAIN_PROMPTS_H
#define AP_TRAIN_PROMPTS_H

#include "alignprop.h"

typedef struct {
    int n;
    char **text;
} ap_prompts;

/* Blank lines are skipped; lines are stripped of surrounding whitespace. An
 * empty set is an error naming the source. */
ap_status ap_prompts_load(ap_ctx *c, const char *source, ap_prompts *out);
void ap_prompts_free(ap_prompts *p);
/* Names of the bundled sets, NULL-terminated. */
extern const char *const ap_prompt_sets[];

#endif
