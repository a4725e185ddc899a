/* The command-line tool's shared pieces: a progress bar on a terminal (nothing
 * when stderr is not a terminal), flag numbers, and the clean stop of long jobs. */
#ifndef AP_CLI_PROGRESS_H
#define AP_CLI_PROGRESS_H

typedef struct {
    const char *label;
    double start;
    int tty;
} ap_progress;

void ap_progress_begin(ap_progress *p, const char *label);
/* done of total; extra is printed after the bar (may be NULL). */
void ap_progress_update(ap_progress *p, int done, int total, const char *extra);
void ap_progress_end(ap_progress *p);
double ap_now(void);

/* Numbers given to flags: the whole of s must be a finite number (an integer
 * for ap_cli_int) within [lo, hi]; otherwise prints "alignprop CMD: FLAG S:
 * expected ..." and returns -1. */
int ap_cli_num(const char *cmd, const char *flag, const char *s, double lo, double hi, double *out);
int ap_cli_int(const char *cmd, const char *flag, const char *s, long lo, long hi, long *out);

/* The clean stop of a long job (train, pretrain, demo): between begin and end,
 * SIGINT, SIGTERM and SIGUSR1 (which Open MPI's mpirun forwards to every rank,
 * where it turns SIGINT and SIGTERM into killing the job) store their number in
 * ap_cli_stop_signal instead of killing the process; the job polls it after
 * each step, and the command exits 128 + the signal. */
#include <signal.h>
extern volatile sig_atomic_t ap_cli_stop_signal;
typedef struct {
    struct sigaction old[3];
} ap_cli_stop;
void ap_cli_stop_begin(ap_cli_stop *s);
void ap_cli_stop_end(ap_cli_stop *s);
const char *ap_cli_signal_name(int sig); /* "SIGINT", "SIGTERM", "SIGUSR1" */

#endif
