/* A progress bar on a terminal (nothing when stderr is not a terminal). */
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

#endif
