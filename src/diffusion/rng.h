/* A seeded Gaussian stream that reproduces PyTorch's CPU generator bit for bit.
 *
 * torch.manual_seed(s); torch.randn(shape) (or torch.randn(shape, generator=g) with a
 * torch.Generator("cpu").manual_seed(s), which is what diffusers draws its latents and
 * its per-step noise from) gives the same f32 values as ap_rng_seed(&g, s);
 * ap_rng_randn(&g, out, numel). Consecutive draws continue the same stream, as they do
 * on one torch generator. Followed: PyTorch 1.13 (Debian 12's python3-torch), whose
 * CPU generator is mt19937 and whose randn has three paths:
 *   - fewer than 16 elements: double Box-Muller from 53-bit uniforms, caching the
 *     second value of each pair in the generator (the next draw of this kind uses it);
 *   - 16 or more: all elements first become 24-bit float uniforms, then blocks of 16
 *     are transformed in place (pairs j, j+8); when the count is not a multiple of 16
 *     the last 16 elements are refilled with fresh uniforms and transformed again;
 *     the transform is either torch's AVX2 kernel (float32 Cephes log and sincos,
 *     AP_RANDN_TORCH_AVX2: what torch 1.13 runs on every x86-64 CPU with AVX2, AVX-512
 *     ones included) or its scalar kernel (libm logf/cosf/sinf, AP_RANDN_TORCH_SCALAR:
 *     torch on CPUs without AVX2, or with ATEN_CPU_CAPABILITY=default). The two agree
 *     to about 2e-6 but not bit for bit.
 * See docs/samplers.md. */
#ifndef AP_DIFFUSION_RNG_H
#define AP_DIFFUSION_RNG_H

#include "alignprop.h"

#include <stdbool.h>
#include <stdint.h>

#define AP_MT_N 624

/* Bytes of a generator state in torch.get_rng_state()'s layout (x86-64). */
#define AP_RNG_STATE_BYTES 5056

typedef enum {
    AP_RANDN_TORCH_AVX2 = 0, /* the default */
    AP_RANDN_TORCH_SCALAR = 1,
    AP_RANDN_KERNEL_COUNT_
} ap_randn_kernel;

typedef struct ap_rng {
    uint32_t mt[AP_MT_N]; /* mt19937 state words */
    int32_t left;         /* draws until the next twist, plus one (torch's left_) */
    uint32_t next;        /* index of the next state word to temper */
    uint64_t seed;        /* the seed it was made from (torch.initial_seed()) */
    double next_double;   /* cached second normal of the scalar path */
    bool has_next_double;
    float next_float; /* torch keeps a float cache too; randn never uses it, state files carry it */
    bool has_next_float;
    ap_randn_kernel kernel;
} ap_rng;

/* A generator seeded as torch.manual_seed(seed), with the AVX2 transform. */
void ap_rng_init(ap_rng *g, uint64_t seed);
/* Reseeds (clears cached normals; keeps the kernel choice). */
void ap_rng_seed(ap_rng *g, uint64_t seed);
void ap_rng_set_kernel(ap_rng *g, ap_randn_kernel k);
const char *ap_randn_kernel_name(ap_randn_kernel k); /* "avx2", "scalar" */

uint32_t ap_rng_random(ap_rng *g);   /* one mt19937 output */
uint64_t ap_rng_random64(ap_rng *g); /* two outputs, the first in the high half */

/* torch.rand(n): uniforms in [0,1) with 24 random bits. */
void ap_rng_rand(ap_rng *g, float *out, int64_t n); /* out: [n] */
/* torch.randn(shape) for a shape of n elements, in torch's (row-major) order. */
void ap_rng_randn(ap_rng *g, float *out, int64_t n); /* out: [n] */
/* torch.randn([n, c, h, w]) stored as NHWC: out[((i*h + y)*w + x)*c + ch] is torch's
 * element [i, ch, y, x]. This is how latents and per-step noise are drawn. Returns
 * false (drawing nothing) when out of memory for the staging copy. */
bool ap_rng_randn_nhwc(ap_rng *g, float *out, int64_t n, int64_t h, int64_t w,
                       int64_t c); /* out: [n,h,w,c] */

/* The same as f32 tensors: a flat draw of any shape, and an NHWC latent [n,h,w,c]
 * holding torch.randn([n,c,h,w]). NULL and an error in ctx on bad arguments. */
ap_tensor *ap_rng_randn_tensor(ap_ctx *c, ap_rng *g, int ndim, const int64_t *shape);
ap_tensor *ap_rng_randn_latents(ap_ctx *c, ap_rng *g, int64_t n, int64_t h, int64_t w,
                                int64_t ch);

/* The state in torch.get_rng_state()'s byte layout, so a state saved by either side
 * resumes on the other (torch.set_rng_state(torch.tensor(bytes, dtype=torch.uint8))). */
void ap_rng_get_state(const ap_rng *g, uint8_t out[AP_RNG_STATE_BYTES]);
/* Restores a state (the kernel choice is kept). A malformed state is an error and
 * leaves g unchanged. */
ap_status ap_rng_set_state(ap_ctx *c, ap_rng *g, const void *state, size_t nbytes);

/* Exposed for tests: the transform of one block of 16 uniforms, in place; portable
 * selects the scalar C emulation of the AVX2 kernel instead of the intrinsics. */
void ap_randn_transform16(float d[16], ap_randn_kernel k, bool portable);

#endif
