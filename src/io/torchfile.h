/* PyTorch checkpoints (.ckpt, .pt, .pth, .bin): the torch >= 1.6 zip format.
 *
 * The container is read with libzip; data.pkl goes through the restricted
 * unpickler of pickle.h (loading never runs code). The result is a state dict
 * of named tensors (nested dicts flattened with '.', the 'state_dict' entry
 * used when the top level has one), each with its stored dtype, shape, strides
 * and storage offset. The API mirrors ap_st_* (safetensors).
 *
 * Storage bytes: the file is memory-mapped once. Stored (uncompressed) entries,
 * which is what torch.save writes, are read in place: the data offset comes
 * from our own bounds-checked walk of the central directory and local header
 * (libzip does not expose it), cross-checked against libzip's view of every
 * entry. Compressed entries, or any entry where the two views disagree, are
 * read through libzip (zip_fread) into a temporary buffer. See docs/torchfile.md
 * for the measurements behind this choice.
 *
 * A handle may be used by several threads at once (libzip reads are
 * serialised internally).
 */
#ifndef AP_IO_TORCHFILE_H
#define AP_IO_TORCHFILE_H

#include "alignprop.h"

#include <stddef.h>
#include <stdint.h>

typedef struct ap_torchfile ap_torchfile;

/* Opens and validates a checkpoint: the zip directory, data.pkl, and for every
 * tensor that its storage entry exists and holds its shape, strides and
 * offset. Every malformation is an error naming the file (and the tensor or
 * entry, where there is one). A legacy (pre-1.6, non-zip) file is
 * AP_ERR_UNSUPPORTED. */
ap_status ap_pt_open(ap_ctx *c, const char *path, ap_torchfile **out);
/* The same over bytes in memory (len bytes at data, which must outlive the
 * handle); name is used in messages. For tests and fuzzing. */
ap_status ap_pt_open_memory(ap_ctx *c, const char *name, const void *data, size_t len,
                            ap_torchfile **out);
void ap_pt_close(ap_torchfile *pt); /* accepts NULL */

int ap_pt_count(const ap_torchfile *pt);
const char *ap_pt_name(const ap_torchfile *pt, int i);
int ap_pt_find(const ap_torchfile *pt, const char *name); /* index or -1 */
/* Stored dtype as a safetensors string: "F32", "F16", "BF16", "F64", "I64",
 * "I32", "I16", "I8", "U8", "BOOL". */
const char *ap_pt_dtype(const ap_torchfile *pt, int i);
int ap_pt_shape(const ap_torchfile *pt, int i, int64_t *shape /* [AP_MAX_DIMS] */); /* returns ndim */
int ap_pt_strides(const ap_torchfile *pt, int i, int64_t *strides /* [AP_MAX_DIMS], elements */);
int64_t ap_pt_storage_offset(const ap_torchfile *pt, int i); /* elements */
/* The stored bytes of tensor i inside the mapping when they are contiguous
 * and in a stored entry (torch.save's layout), else NULL. */
const void *ap_pt_raw(const ap_torchfile *pt, int i, size_t *nbytes);
/* 1 when the tensors came from the top level's 'state_dict' entry. */
int ap_pt_from_state_dict(const ap_torchfile *pt);

/* Loads tensor `name` as a new contiguous tensor of dtype dt. Floating types
 * (F32, F16, BF16, F64) convert to AP_F32 / AP_BF16 / AP_F16 (round to nearest
 * even); integer and bool types to AP_I32 / AP_I64 (a value outside i32 is an
 * error) or to the float types; floats to integers is refused (AP_ERR_DTYPE). */
ap_status ap_pt_load(ap_ctx *c, const ap_torchfile *pt, const char *name, ap_dtype dt,
                     ap_tensor **out);

/* Benchmarks and tests: 0 reads every storage through libzip instead of the
 * mapping (the default, 1). */
void ap_pt_set_direct(ap_torchfile *pt, int on);

#endif
