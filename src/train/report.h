/* report.html: one self-contained page (no network, no scripts) with the
 * training reward curve, the evaluation reward curve and the evaluation grids
 * over training, made from a run directory's log.jsonl and eval.jsonl. */
#ifndef AP_TRAIN_REPORT_H
#define AP_TRAIN_REPORT_H

#include "alignprop.h"

/* Writes RUNDIR/report.html atomically. */
ap_status ap_report_write(ap_ctx *c, const char *run_dir);

#endif
