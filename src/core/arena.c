/* Caching allocator for tensor storage.
 *
 * Sizes are rounded to classes (multiples of 64 bytes up to 4 KiB, then four
 * classes per power of two, so at most 25% is lost to rounding). A released
 * block goes on its class's free list and the next request of that class
 * reuses it: a training step allocates the same shapes over and over, and
 * reusing warm pages avoids the page faults of fresh mmap'd memory.
 * in_use counts the bytes of blocks handed out (rounded), peak its maximum. */
#include "internal.h"

#include <stdlib.h>

#define NCLASS 512

typedef struct block {
    struct block *next;
} block;

struct ap_arena {
    block *free_list[NCLASS];
    size_t in_use, peak, reserved;
};

static int size_class(size_t n, size_t *rounded) {
    if (n <= 4096) {
        size_t r = (n + 63) & ~(size_t)63;
        if (r == 0) r = 64;
        *rounded = r;
        return (int)(r / 64) - 1; /* 0..63 */
    }
    int k = 63 - __builtin_clzll((unsigned long long)(n - 1)); /* 2^k < n <= 2^(k+1) */
    size_t base = (size_t)1 << k, step = base / 4;
    size_t q = (n - base + step - 1) / step; /* 1..4 */
    *rounded = base + q * step;
    return 64 + (k - 12) * 4 + (int)(q - 1);
}

ap_arena *ap_arena_create(void) { return calloc(1, sizeof(ap_arena)); }

void ap_arena_trim(ap_arena *a) {
    if (!a) return;
    for (int i = 0; i < NCLASS; i++) {
        block *b = a->free_list[i];
        while (b) {
            block *nx = b->next;
            free(b);
            b = nx;
        }
        a->free_list[i] = NULL;
    }
    a->reserved = a->in_use;
}

void ap_arena_free(ap_arena *a) {
    if (!a) return;
    ap_arena_trim(a);
    free(a);
}

void *ap_arena_alloc(ap_arena *a, size_t nbytes) {
    size_t r;
    int k = size_class(nbytes, &r);
    if (k >= NCLASS) return NULL;
    void *p = a->free_list[k];
    if (p) {
        a->free_list[k] = ((block *)p)->next;
    } else {
        p = aligned_alloc(64, r);
        if (!p) {
            ap_arena_trim(a); /* give cached blocks back and try once more */
            p = aligned_alloc(64, r);
            if (!p) return NULL;
        }
        a->reserved += r;
    }
    a->in_use += r;
    if (a->in_use > a->peak) a->peak = a->in_use;
    return p;
}

void ap_arena_release(ap_arena *a, void *p, size_t nbytes) {
    if (!p) return;
    size_t r;
    int k = size_class(nbytes, &r);
    ((block *)p)->next = a->free_list[k];
    a->free_list[k] = p;
    a->in_use -= r;
}

size_t ap_arena_in_use(const ap_arena *a) { return a->in_use; }
size_t ap_arena_peak(const ap_arena *a) { return a->peak; }
size_t ap_arena_reserved(const ap_arena *a) { return a->reserved; }
void ap_arena_reset_peak(ap_arena *a) { a->peak = a->in_use; }
