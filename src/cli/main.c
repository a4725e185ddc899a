/* alignprop: the command-line tool. */
#include "alignprop.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <string.h>

static int usage(FILE *f) {
    fprintf(f,
            "usage: alignprop <command> [options]\n"
            "\n"
            "commands:\n"
            "  version     print the version\n"
            "  demo        AlignProp on the shipped shapes model: the count reward, before and after (docs/demo.md)\n"
            "  tokenize    print the CLIP token ids of a prompt\n"
            "  sample      generate images from a prompt\n"
            "  train       AlignProp: train LoRA adapters by reward backpropagation\n"
            "  pretrain    train a tiny latent diffusion model from scratch (VAE, text encoder, UNet)\n"
            "  eval        the reward of a model (and adapters) on a prompt set\n"
            "  lora        operations on LoRA files (lora mix A B --alpha X -o C)\n"
            "  init        write a model with random weights (tiny, small, shapes64 or sd15)\n"
            "  inspect     show what a model folder or weights file holds\n"
            "  shapes      write a grid of the procedural shapes dataset and its captions\n"
            "  train-counter  train the counting model of the count reward on the shapes dataset\n"
            "\n"
            "environment: AP_NUM_THREADS (threads), AP_PRECISION (f32|bf16)\n");
    return f == stderr ? 2 : 0;
}

int ap_cli_demo(int argc, char **argv);
int ap_cli_tokenize(int argc, char **argv);
int ap_cli_init(int argc, char **argv);
int ap_cli_sample(int argc, char **argv);
int ap_cli_train(int argc, char **argv);
int ap_cli_pretrain(int argc, char **argv);
int ap_cli_eval(int argc, char **argv);
int ap_cli_lora(int argc, char **argv);
int ap_cli_inspect(int argc, char **argv);
int ap_cli_shapes(int argc, char **argv);
int ap_cli_train_counter(int argc, char **argv);

/* OpenMP's default wait policy spins at every barrier. On a shared machine
 * whose other cores are busy, a spinning thread waits for one that is not
 * scheduled, and small models ran 2-50x slower (docs/core.md). GNU OpenMP reads
 * the policy when the process starts, so the tool sets it and starts itself
 * again, once, unless the user chose a policy. */
static void prefer_passive_wait(char **argv) {
    if (getenv("OMP_WAIT_POLICY") || getenv("AP_KEEP_WAIT_POLICY")) return;
    setenv("OMP_WAIT_POLICY", "passive", 1);
    setenv("AP_KEEP_WAIT_POLICY", "1", 1);
    execv("/proc/self/exe", argv); /* returns only on failure: then run as we are */
}

int main(int argc, char **argv) {
    prefer_passive_wait(argv);
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
    if (!strcmp(cmd, "pretrain")) return ap_cli_pretrain(argc - 1, argv + 1);
    if (!strcmp(cmd, "eval")) return ap_cli_eval(argc - 1, argv + 1);
    if (!strcmp(cmd, "lora")) return ap_cli_lora(argc - 1, argv + 1);
    if (!strcmp(cmd, "init")) return ap_cli_init(argc - 1, argv + 1);
    if (!strcmp(cmd, "inspect")) return ap_cli_inspect(argc - 1, argv + 1);
    if (!strcmp(cmd, "shapes")) return ap_cli_shapes(argc - 1, argv + 1);
    if (!strcmp(cmd, "train-counter")) return ap_cli_train_counter(argc - 1, argv + 1);
    fprintf(stderr, "alignprop: unknown command '%s'\n", cmd);
    return usage(stderr);
}
