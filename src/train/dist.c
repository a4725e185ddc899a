/* Data parallelism across processes (see dist.h). Everything MPI is in this
 * file; without AP_HAVE_MPI it is the single-process identity. */
#include "train/dist.h"

#include "core/internal.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef AP_HAVE_MPI
#include <mpi.h>

static struct {
    bool active;   /* we talk to other ranks */
    bool owns_mpi; /* we called MPI_Init, so we call MPI_Finalize */
    MPI_Comm comm;
    int rank, size;
    char library[256];
} g_dist = {.size = 1};

/* Started by a launcher: Open MPI's mpirun, MPICH's Hydra, or any PMI / PMIx
 * process manager (srun --mpi=...). Without one, MPI_Init would start a
 * singleton (Open MPI forks a daemon for it): not worth it for one process. */
static bool launched_by_mpi(void) {
    static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++)
        if (getenv(vars[i])) return true;
    return false;
}

bool ap_dist_compiled(void) { return true; }

ap_status ap_dist_init(ap_ctx *c) {
    if (g_dist.active) return AP_OK;
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (finalized || (!inited && !launched_by_mpi())) return AP_OK;
    if (!inited) {
        /* only the main thread calls MPI; OpenMP threads never do */
        int provided = 0;
        if (MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
            return ap_seterr(c, AP_ERR_STATE, "mpi: MPI_Init_thread failed");
        g_dist.owns_mpi = true;
    }
    if (MPI_Comm_dup(MPI_COMM_WORLD, &g_dist.comm) != MPI_SUCCESS)
        return ap_seterr(c, AP_ERR_STATE, "mpi: MPI_Comm_dup failed");
    MPI_Comm_rank(g_dist.comm, &g_dist.rank);
    MPI_Comm_size(g_dist.comm, &g_dist.size);
    int len = 0;
    char lib[MPI_MAX_LIBRARY_VERSION_STRING];
    MPI_Get_library_version(lib, &len);
    lib[strcspn(lib, ",\n")] = 0; /* the first clause: "Open MPI v4.1.4" */
    snprintf(g_dist.library, sizeof g_dist.library, "%s", lib);
    g_dist.active = true;
    return AP_OK;
}

void ap_dist_finalize(void) {
    if (!g_dist.active) return;
    MPI_Comm_free(&g_dist.comm);
    if (g_dist.owns_mpi) MPI_Finalize();
    g_dist.active = g_dist.owns_mpi = false;
    g_dist.rank = 0;
    g_dist.size = 1;
}

int ap_dist_rank(void) { return g_dist.rank; }
int ap_dist_size(void) { return g_dist.size; }
const char *ap_dist_library(void) { return g_dist.active ? g_dist.library : ""; }

/* MPI counts are ints: large buffers go in pieces */
#define CHUNK_ELEMS ((int64_t)1 << 28)

ap_status ap_dist_allreduce_sum_f32(ap_ctx *c, float *buf, int64_t n) {
    if (!g_dist.active) return AP_OK;
    for (int64_t o = 0; o < n; o += CHUNK_ELEMS) {
        int k = (int)(n - o < CHUNK_ELEMS ? n - o : CHUNK_ELEMS);
        MPI_Allreduce(MPI_IN_PLACE, buf + o, k, MPI_FLOAT, MPI_SUM, g_dist.comm);
    }
    return AP_OK;
}

ap_status ap_dist_bcast(ap_ctx *c, void *buf, size_t bytes, int root) {
    if (!g_dist.active) return AP_OK;
    for (size_t o = 0; o < bytes; o += (size_t)CHUNK_ELEMS) {
        int k = (int)(bytes - o < (size_t)CHUNK_ELEMS ? bytes - o : (size_t)CHUNK_ELEMS);
        MPI_Bcast((char *)buf + o, k, MPI_BYTE, root, g_dist.comm);
    }
    return AP_OK;
}

ap_status ap_dist_allgather(ap_ctx *c, const void *send, size_t bytes, void *recv) {
    if (!g_dist.active) {
        memmove(recv, send, bytes);
        return AP_OK;
    }
    if (bytes > INT_MAX) return ap_seterr(c, AP_ERR_INVALID_ARG, "mpi: allgather of %zu bytes per rank", bytes);
    MPI_Allgather(send, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE, g_dist.comm);
    return AP_OK;
}

ap_status ap_dist_gatherv(ap_ctx *c, const void *send, const size_t *counts, void *recv, int root) {
    if (!g_dist.active) {
        if (counts[0]) memmove(recv, send, counts[0]);
        return AP_OK;
    }
    int *cnt = malloc(sizeof(int) * 2 * (size_t)g_dist.size);
    if (!cnt) MPI_Abort(g_dist.comm, 1); /* a rank that cannot take part would hang the others */
    int *displ = cnt + g_dist.size;
    size_t total = 0;
    for (int r = 0; r < g_dist.size; r++) {
        cnt[r] = (int)counts[r];
        displ[r] = (int)total;
        total += counts[r];
    }
    /* every rank sees the same counts, so every rank refuses together */
    if (total > INT_MAX) {
        free(cnt);
        return ap_seterr(c, AP_ERR_INVALID_ARG, "mpi: gather of %zu bytes (at most %d)", total, INT_MAX);
    }
    MPI_Gatherv(send, cnt[g_dist.rank], MPI_BYTE, recv, cnt, displ, MPI_BYTE, root, g_dist.comm);
    free(cnt);
    return AP_OK;
}

void ap_dist_barrier(void) {
    if (g_dist.active) MPI_Barrier(g_dist.comm);
}

void ap_dist_abort(int code) {
    if (g_dist.active) MPI_Abort(g_dist.comm, code);
}

#else /* no MPI: one process */

bool ap_dist_compiled(void) { return false; }
ap_status ap_dist_init(ap_ctx *c) { return AP_OK; }
void ap_dist_finalize(void) {}
int ap_dist_rank(void) { return 0; }
int ap_dist_size(void) { return 1; }
const char *ap_dist_library(void) { return ""; }
ap_status ap_dist_allreduce_sum_f32(ap_ctx *c, float *buf, int64_t n) { return AP_OK; }
ap_status ap_dist_bcast(ap_ctx *c, void *buf, size_t bytes, int root) { return AP_OK; }
ap_status ap_dist_allgather(ap_ctx *c, const void *send, size_t bytes, void *recv) {
    memmove(recv, send, bytes);
    return AP_OK;
}
ap_status ap_dist_gatherv(ap_ctx *c, const void *send, const size_t *counts, void *recv, int root) {
    if (counts[0]) memmove(recv, send, counts[0]);
    return AP_OK;
}
void ap_dist_barrier(void) {}
void ap_dist_abort(int code) {}

#endif

ap_status ap_dist_agree(ap_ctx *c, ap_status local, int *flag, int *failed_rank) {
    int n = ap_dist_size(), me = ap_dist_rank();
    if (failed_rank) *failed_rank = -1;
    if (n == 1) return local;
    int32_t mine[2] = {(int32_t)local, flag ? *flag : 0};
    int32_t *all = malloc(sizeof(int32_t) * 2 * (size_t)n); /* [n][2] */
    if (!all) ap_dist_abort(1);
    ap_dist_allgather(c, mine, sizeof mine, all);
    int k = -1, fmax = 0;
    for (int r = 0; r < n; r++) {
        if (k < 0 && all[2 * r] != AP_OK) k = r;
        if (all[2 * r + 1] > fmax) fmax = all[2 * r + 1];
    }
    ap_status st = k >= 0 ? (ap_status)all[2 * k] : AP_OK;
    free(all);
    if (flag) *flag = fmax;
    if (k < 0) return AP_OK;
    if (failed_rank) *failed_rank = k;
    char msg[sizeof c->msg];
    snprintf(msg, sizeof msg, "%s", me == k ? ap_last_error(c) : "");
    ap_dist_bcast(c, msg, sizeof msg, k);
    if (local == AP_OK) { /* a rank that failed itself keeps its own message */
        ap_clear_error(c);
        ap_seterr(c, st, "rank %d of %d: %s", k, n, msg);
    }
    return st;
}
