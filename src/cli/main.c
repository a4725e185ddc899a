/* alignprop: the command-line tool. */
#include "alignprop.h"

#include <stdio.h>
#include <string.h>

static int usage(FILE *f) {
    fprintf(f,
            "usage: alignprop <command> [options]\n"
            "\n"
            "commands:\n"
            "  version     print the version\n"
            "  demo        a tiny model made on the spot, through the whole pipeline (no demo model is shipped yet)\n"
            "  tokenize    print the CLIP token ids of a prompt\n"
            "  sample      generate images from a prompt\n"
            "  train       AlignProp: train LoRA adapters by reward backpropagation\n"
            "  init        write a model with random weights (tiny, small or sd15)\n"
            "  inspect     show what a model folder or weights file holds\n"
            "\n"
            "environment: AP_NUM_THREADS (threads), AP_PRECISION (f32|bf16)\n");
    return f == stderr ? 2 : 0;
}

int ap_cli_demo(int argc, char **argv);
int ap_cli_tokenize(int argc, char **argv);
int ap_cli_init(int argc, char **argv);
int ap_cli_sample(int argc, char **argv);
int ap_cli_train(int argc, char **argv);
int ap_cli_inspect(int argc, char **argv);

int main(int argc, char **argv) {
    if (argc < 2) return usage(stderr);
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) return usage(stdout);
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("alignprop %s\n", ap_version_string());
        return 0;
    }
    if (!strcmp(cmd, "demo")) return ap_cli_demo(argc - 1, argv + 1);
    if (!strcmp(cmd, "tokenize")) return ap_cli_tokenize(argc - 1, argv + 1);
    if (!strcmp(cmd, "sample")) return ap_cli_sample(argc - 1, argv + 1);
    if (!strcmp(cmd, "train")) return ap_cli_train(argc - 1, argv + 1);
    if (!strcmp(cmd, "init")) return ap_cli_init(argc - 1, argv + 1);
    if (!strcmp(cmd, "inspect")) return ap_cli_inspect(argc - 1, argv + 1);
    fprintf(stderr, "alignprop: unknown command '%s'\n", cmd);
    return usage(stderr);
}
