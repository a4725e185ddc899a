/* The pieces of a training run directory that every trainer shares (AlignProp's
 * LoRA trainer and pretraining): checkpoint directories step_NNNNNN/ written
 * through a .tmp directory and a DONE marker, the list of complete ones,
 * pruning, generator states as hex, and trimming log.jsonl back to a step on
 * resume. */
#ifndef AP_TRAIN_CHECKPOINT_H
#define AP_TRAIN_CHECKPOINT_H

#include "alignprop.h"
#include "io/json.h"

#include <stddef.h>
#include <stdint.h>

/* Removes a file or a directory tree (checkpoint directories are flat). 0 on success. */
int ap_rm_tree(const char *path);

/* Complete checkpoints (a directory named step_<digits> with a DONE marker
 * inside) of dir, ascending; returns the count (or -1 when out of memory),
 * *steps malloc'd (NULL when none). */
int ap_ckpt_list(const char *dir, int64_t **steps);

/* Makes RUNDIR/checkpoints/step_NNNNNN.tmp/ (removing a stale one) and writes
 * its path into tmp. */
ap_status ap_ckpt_begin(ap_ctx *c, const char *run_dir, int64_t step, char *tmp, size_t n);
/* Writes state (when not NULL) as tmp/state.json and DONE into tmp, syncs,
 * renames it to its final name, then keeps the newest `keep` complete
 * checkpoints (0 keeps all). When c already holds an error, or on failure, tmp
 * is removed and nothing is committed. */
ap_status ap_ckpt_commit(ap_ctx *c, const char *run_dir, int64_t step, const char *tmp, int keep,
                         const ap_json *state);
/* The newest complete checkpoint of run_dir: its directory into out and its
 * step into *step; AP_ERR_NOT_FOUND (message naming `who`) when there is none. */
ap_status ap_ckpt_latest(ap_ctx *c, const char *run_dir, const char *who, char *out, size_t n, int64_t *step);

/* Lowercase hex of n bytes into out [2n+1], and back (false on a malformed string). */
void ap_hex_encode(const uint8_t *b, size_t n, char *out);
int ap_hex_decode(const char *s, uint8_t *out, size_t n);

/* Checks that a resumed run keeps the settings its checkpoint (at path) was made
 * with: the values of keys[0..n-1] must print the same in saved and cur.
 * AP_ERR_INVALID_ARG naming the key, both values and `who` otherwise. */
ap_status ap_ckpt_check_config(ap_ctx *c, const char *who, const char *path, const ap_json *saved, const ap_json *cur,
                               const char *const *keys, int n);

/* Keeps the lines of a JSON-lines log whose "step" is at most upto (the lines
 * of an interrupted run past its checkpoint go), rewritten atomically. A
 * missing file is fine. */
ap_status ap_log_trim(ap_ctx *c, const char *path, int64_t upto);

#endif
