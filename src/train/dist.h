/* Data parallelism across processes: the one place that talks to MPI.
 *
 * The process group is MPI_COMM_WORLD (duplicated, so a host program's own
 * traffic cannot mix with ours). MPI is used only when it was compiled in
 * (AP_HAVE_MPI, set by CMake when it finds MPI) and the process was started by
 * an MPI launcher (mpirun / mpiexec / srun: detected from their environment)
 * or the host program initialised MPI itself. Otherwise every function is the
 * single-process identity: rank 0 of 1, reductions and gathers copy, barriers
 * return at once. So a plain `alignprop train` never starts MPI.
 *
 * Collectives must be called by every rank in the same order, and they run
 * whatever error c already holds (one that returned early would leave the
 * others waiting). Failures of MPI
 * itself are fatal to the whole job (MPI's default error handler: the launcher
 * kills every rank), so a dead peer never leaves the others waiting forever;
 * failures of our own code are agreed with ap_dist_agree() so that every rank
 * leaves together with the first failing rank's message. */
#ifndef AP_TRAIN_DIST_H
#define AP_TRAIN_DIST_H

#include "alignprop.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* True when MPI support was compiled in. */
bool ap_dist_compiled(void);
/* Joins the job when launched by an MPI launcher (or MPI is already
 * initialised by the host program); idempotent. An error only when MPI was
 * compiled in, a launcher started us and MPI cannot start. */
ap_status ap_dist_init(ap_ctx *c);
/* Leaves the job (MPI_Finalize when ap_dist_init initialised MPI). */
void ap_dist_finalize(void);
int ap_dist_rank(void); /* 0 when single-process */
int ap_dist_size(void); /* 1 when single-process */
/* The MPI library's own version line ("" without MPI). */
const char *ap_dist_library(void);

/* buf[i] = sum over ranks of buf[i], the same bits on every rank. */
ap_status ap_dist_allreduce_sum_f32(ap_ctx *c, float *buf, int64_t n); /* buf: [n] */
/* root's bytes to every rank. */
ap_status ap_dist_bcast(ap_ctx *c, void *buf, size_t bytes, int root);
/* Every rank's `bytes` bytes, in rank order, into recv on every rank. */
ap_status ap_dist_allgather(ap_ctx *c, const void *send, size_t bytes, void *recv /* [size*bytes] */);
/* Rank r's counts[r] bytes, in rank order, into recv at root (counts is read
 * on every rank; recv only at root). */
ap_status ap_dist_gatherv(ap_ctx *c, const void *send, const size_t *counts /* [size] */, void *recv, int root);
void ap_dist_barrier(void);
/* Ends every rank of the job now (MPI_Abort); returns only single-process. */
void ap_dist_abort(int code);

/* Agreement at a point every rank reaches: `local` is this rank's status
 * (c's error when not AP_OK). When any rank failed, every rank returns that
 * status with the message of the lowest failing rank ("rank K of N: ...")
 * set on its context; *failed_rank (may be NULL) receives K, or -1.
 * *flag (may be NULL) goes in as this rank's value and comes out as the
 * maximum over ranks (the trainer agrees on stop requests with it). */
ap_status ap_dist_agree(ap_ctx *c, ap_status local, int *flag, int *failed_rank);

#endif
