/* Caching allocator for tensor storage.
 *
 * Sizes are rounded to classes (multiples of 64 bytes up to 4 KiB, then four
 * classes per power of two, so at most 25% is lost to rounding). A released
 * block goes on its class's free list and the next request of that class
 * reuses it: a training step allocates the same shapes over and over, and
 * reusing warm pages avoids the page faults of fresh mmap'd memory.
 * in_use counts the bytes of blocks handed out (rounded), peak its maximum.
 *
 * The cache is bounded at phase changes: when a request finds no block of its
 * class (a miss) while the cached bytes exceed the keep limit, the blocks
 * released longest ago are returned to the system first, until the cache is
 * within the limit. A loop that allocates the same sizes again misses
 * nothing and never trims; a phase that needs other sizes (the VAE after the
 * UNet, the recomputation of a checkpoint after the decoder's backward) gets
 * the previous phase's blocks back. Large blocks are mapped directly, so that
 * returning one lowers the process's resident memory at once (glibc keeps
 * freed heap chunks below its mmap threshold, which grows to 32 MiB). */
#include "internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>

#define NCLASS 512
#define MAP_MIN ((size_t)256 << 10) /* blocks from this size up are mmap'd */
#define KEEP_DEFAULT ((size_t)256 << 20)

/* A cached block's header, written into the free block itself (every class
 * is at least 64 bytes). */
typedef struct block {
    struct block *next, *prev;   /* this class's free list, most recent first */
    struct block *newer, *older; /* every cached block, in release order */
    int cls;
} block;

struct ap_arena {
    block *free_list[NCLASS];
    block *newest, *oldest;
    size_t in_use, peak, reserved, keep, trimmed;
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

static size_t class_size(int k) {
    if (k < 64) return (size_t)(k + 1) * 64;
    int e = 12 + (k - 64) / 4, q = (k - 64) % 4 + 1;
    return ((size_t)1 << e) + (size_t)q * ((size_t)1 << (e - 2));
}

static void *sys_alloc(size_t r) {
    if (r < MAP_MIN) return aligned_alloc(64, r);
    void *p = mmap(NULL, r, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static void sys_free(void *p, size_t r) {
    if (r < MAP_MIN) free(p);
    else munmap(p, r);
}

ap_arena *ap_arena_create(void) {
    ap_arena *a = calloc(1, sizeof(ap_arena));
    if (a) a->keep = KEEP_DEFAULT;
    return a;
}

/* Takes b (cached, of class k) off both lists. */
static void unlink_block(ap_arena *a, block *b) {
    if (b->prev) b->prev->next = b->next;
    else a->free_list[b->cls] = b->next;
    if (b->next) b->next->prev = b->prev;
    if (b->newer) b->newer->older = b->older;
    else a->newest = b->older;
    if (b->older) b->older->newer = b->newer;
    else a->oldest = b->newer;
}

static void free_oldest(ap_arena *a) {
    block *b = a->oldest;
    size_t r = class_size(b->cls);
    unlink_block(a, b);
    sys_free(b, r);
    a->reserved -= r;
    a->trimmed += r;
}

void ap_arena_trim(ap_arena *a) {
    if (!a) return;
    while (a->oldest) free_oldest(a);
}

void ap_arena_set_keep(ap_arena *a, size_t bytes) { a->keep = bytes; }
size_t ap_arena_trimmed(const ap_arena *a) { return a->trimmed; }

void ap_arena_free(ap_arena *a) {
    if (!a) return;
    ap_arena_trim(a);
    free(a);
}

/* AP_DEBUG_POISON=1: every block handed out is filled with NaNs, so that a
 * kernel reading memory it has not written (the beta = 0 rule of
 * core/internal.h) turns its result into NaN instead of into a value that
 * depends on what the block held before. For tests and debugging; slow. */
static bool poison_on(void) {
    static int on = -1;
    if (on < 0) {
        const char *e = getenv("AP_DEBUG_POISON");
        on = e && *e && strcmp(e, "0") != 0;
    }
    return on;
}

void *ap_arena_alloc(ap_arena *a, size_t nbytes) {
    size_t r;
    int k = size_class(nbytes, &r);
    if (k >= NCLASS) return NULL;
    block *b = a->free_list[k];
    void *p;
    if (b) {
        unlink_block(a, b);
        p = b;
    } else {
        while (a->oldest && a->reserved - a->in_use > a->keep) free_oldest(a);
        p = sys_alloc(r);
        if (!p) {
            ap_arena_trim(a); /* give cached blocks back and try once more */
            p = sys_alloc(r);
            if (!p) return NULL;
        }
        a->reserved += r;
    }
    a->in_use += r;
    if (a->in_use > a->peak) a->peak = a->in_use;
    if (poison_on()) memset(p, 0xff, nbytes); /* all-ones floats are NaN: a read before a write shows */
    return p;
}

void ap_arena_release(ap_arena *a, void *p, size_t nbytes) {
    if (!p) return;
    size_t r;
    int k = size_class(nbytes, &r);
    block *b = p;
    b->cls = k;
    b->prev = NULL;
    b->next = a->free_list[k];
    if (b->next) b->next->prev = b;
    a->free_list[k] = b;
    b->newer = NULL;
    b->older = a->newest;
    if (a->newest) a->newest->newer = b;
    else a->oldest = b;
    a->newest = b;
    a->in_use -= r;
}

size_t ap_arena_in_use(const ap_arena *a) { return a->in_use; }
size_t ap_arena_peak(const ap_arena *a) { return a->peak; }
size_t ap_arena_reserved(const ap_arena *a) { return a->reserved; }
void ap_arena_reset_peak(ap_arena *a) { a->peak = a->in_use; }
