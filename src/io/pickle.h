/* A restricted unpickler for PyTorch's data.pkl.
 *
 * It interprets the pickle opcodes that torch.save writes (protocol 2, plus the
 * protocol 4 framing opcodes) as a stack machine over plain data values, and
 * rebuilds only: dicts (incl. collections.OrderedDict), lists, tuples, strings,
 * bytes, ints, floats, bools, None, storages (persistent ids) and tensors
 * (torch._utils._rebuild_tensor{,_v2,_v3}, _rebuild_parameter{,_with_state},
 * torch._tensor._rebuild_from_type_v2). A short allowlist of data-only globals
 * seen in real checkpoints (Lightning's ModelCheckpoint, numpy scalars and
 * dtypes, _codecs.encode, set, torch.device, torch.Size, ...) becomes an opaque
 * placeholder; any other global is refused. Nothing is ever called or imported:
 * "calling" a global means building a value of our own.
 *
 * The result is the flattened state dict: the tensors reachable from the top
 * level (or from its 'state_dict' entry when there is one), named by their
 * dict keys / list indices joined with '.'. Storages are described by key; the
 * caller resolves them (torchfile.c: zip entry <prefix>data/<key>).
 */
#ifndef AP_IO_PICKLE_H
#define AP_IO_PICKLE_H

#include "alignprop.h"

#include <stddef.h>
#include <stdint.h>

/* Element types of torch storages (torch.FloatStorage, ...). */
typedef enum {
    AP_PK_F32 = 0,
    AP_PK_F16,
    AP_PK_BF16,
    AP_PK_F64,
    AP_PK_I64,
    AP_PK_I32,
    AP_PK_I16,
    AP_PK_I8,
    AP_PK_U8,
    AP_PK_BOOL,
    AP_PK_DTYPE_COUNT_
} ap_pk_dtype;

/* safetensors-style name ("F32", "BF16", "BOOL", ...) and element size. */
const char *ap_pk_dtype_name(ap_pk_dtype dt);
size_t ap_pk_dtype_size(ap_pk_dtype dt);

/* Limits on hostile input (all well above what real checkpoints need). */
#define AP_PK_MAX_DEPTH 64          /* nesting of containers when flattening */
#define AP_PK_MAX_NAME 4096         /* bytes in a flattened tensor name */
#define AP_PK_MAX_BYTES (256u << 20) /* data.pkl size */
#define AP_PK_MAX_MEMORY (512u << 20) /* memory the unpickler may use */

typedef struct {
    char *name;              /* flattened key, NUL-terminated */
    ap_pk_dtype dtype;
    int ndim;                /* 0..AP_MAX_DIMS */
    int64_t shape[AP_MAX_DIMS];
    int64_t stride[AP_MAX_DIMS]; /* in elements */
    int64_t offset;          /* storage offset in elements */
    char *storage_key;       /* the persistent id's key: zip entry <prefix>data/<key> */
    uint64_t storage_bytes;  /* bytes the persistent id says the storage holds */
    uint64_t byte_end;       /* one past the last byte the tensor touches (offset included) */
} ap_pk_tensor;

typedef struct {
    ap_pk_tensor *tensors;
    int count;
    int from_state_dict;     /* the top level had a 'state_dict' dict and it was used */
} ap_pk_state;

/* Unpickles data (len bytes of data.pkl) and flattens the result into *out.
 * Errors (AP_ERR_FORMAT for malformed input, AP_ERR_UNSUPPORTED for forbidden
 * globals or unsupported features, AP_ERR_NOMEM) set c's error with a message
 * starting with "<file>: data.pkl: ". On error *out is empty. */
ap_status ap_pk_load_state(ap_ctx *c, const char *file, const uint8_t *data, size_t len,
                           ap_pk_state *out);
void ap_pk_state_free(ap_pk_state *s);

#endif
