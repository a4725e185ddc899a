#include "progress.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

double ap_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

void ap_progress_begin(ap_progress *p, const char *label) {
    p->label = label;
    p->start = ap_now();
    p->tty = isatty(2);
}

void ap_progress_update(ap_progress *p, int done, int total, const char *extra) {
    if (!p->tty || total <= 0) return;
    int width = 30, fill = (int)((long long)done * width / total);
    double el = ap_now() - p->start, eta = done > 0 ? el / done * (total - done) : 0;
    char bar[64];
    for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
    bar[width] = 0;
    fprintf(stderr, "\r%s [%s] %d/%d %.1fs elapsed, %.1fs left %s", p->label, bar, done, total, el, eta,
            extra ? extra : "");
    fflush(stderr);
}

void ap_progress_end(ap_progress *p) {
    if (p->tty) fprintf(stderr, "\n");
}

volatile sig_atomic_t ap_cli_stop_signal;
static const int STOP_SIGNALS[3] = {SIGINT, SIGTERM, SIGUSR1};

static void on_stop_signal(int sig) { ap_cli_stop_signal = sig; }

void ap_cli_stop_begin(ap_cli_stop *s) {
    ap_cli_stop_signal = 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    for (int i = 0; i < 3; i++) sigaction(STOP_SIGNALS[i], &sa, &s->old[i]);
}

void ap_cli_stop_end(ap_cli_stop *s) {
    for (int i = 0; i < 3; i++) sigaction(STOP_SIGNALS[i], &s->old[i], NULL);
}

const char *ap_cli_signal_name(int sig) {
    return sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : sig == SIGUSR1 ? "SIGUSR1" : "a signal";
}

int ap_cli_num(const char *cmd, const char *flag, const char *s, double lo, double hi, double *out) {
    char *end;
    double v = strtod(s, &end);
    if (!*s || *end || !isfinite(v) || v < lo || v > hi) {
        fprintf(stderr, "alignprop %s: %s %s: expected a number in [%g, %g]\n", cmd, flag, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

int ap_cli_int(const char *cmd, const char *flag, const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi) {
        fprintf(stderr, "alignprop %s: %s %s: expected an integer in [%ld, %ld]\n", cmd, flag, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}
