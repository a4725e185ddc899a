/* alignprop: the command-line tool. */
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include "alignprop.h"

#include <sched.h>
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

/* Tasks running besides this one: the fewest /proc/stat's procs_running
 * showed in five looks 10 ms apart (a process that holds a core shows in
 * all; a short one, such as the shell that started us, does not), less this
 * process; -1 when unknown. */
static int others_running(void) {
    int fewest = -1;
    for (int k = 0; k < 5; k++) {
        if (k) usleep(10000);
        FILE *f = fopen("/proc/stat", "r");
        if (!f) return -1;
        char line[256];
        int n;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "procs_running %d", &n) == 1) {
                if (fewest < 0 || n - 1 < fewest) fewest = n - 1 < 0 ? 0 : n - 1;
                break;
            }
        fclose(f);
    }
    return fewest;
}

/* How OpenMP's threads wait at barriers (docs/core.md, "Threads on a shared
 * machine"). Spinning forever (OpenMP's default) makes a thread wait for one
 * that is not scheduled when another process holds a core: small models ran
 * 2-50x slower. Sleeping at once (passive) costs a futex wake-up per
 * parallel region, a third of a small model's time on an idle machine. So:
 * when the machine has a core free for each thread, spin briefly
 * (GOMP_SPINCOUNT=3000), else sleep at once. GNU OpenMP reads both when the
 * process starts, so the tool sets them and starts itself again, once, unless
 * the user chose (OMP_WAIT_POLICY, GOMP_SPINCOUNT or AP_KEEP_WAIT_POLICY). */
static void choose_wait_policy(char **argv) {
    if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT") || getenv("AP_KEEP_WAIT_POLICY")) return;
    cpu_set_t set;
    int cpus = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
    const char *t = getenv("AP_NUM_THREADS");
    int threads = t && atoi(t) > 0 ? atoi(t) : cpus, others = others_running();
    if (others >= 0 && others + threads <= cpus) setenv("GOMP_SPINCOUNT", "3000", 1);
    else setenv("OMP_WAIT_POLICY", "passive", 1);
    setenv("AP_KEEP_WAIT_POLICY", "1", 1);
    execv("/proc/self/exe", argv); /* returns only on failure: then run as we are */
}

int main(int argc, char **argv) {
    choose_wait_policy(argv);
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
