#!/usr/bin/python3
"""Writes tests/ref/resize.bin: reference outputs of torch.nn.functional.interpolate
(align_corners=False) for tests/test_resize.c. Run with Debian's python3-torch
(/usr/bin/python3 tests/ref/gen_resize.py, or `make fixtures`). CI never runs this;
the .bin is committed.

Layout (little-endian; NHWC f32 arrays, which is how ap_resize sees images):
  char[8]  magic "APRSZ001"
  u32      number of groups
  per group:
    i32 N, H, W, C, OH, OW, has_grad
    f32 x[N*H*W*C]                       input, uniform [-1, 1) from a seeded generator
    f32 R[N*OH*OW*C]                     only when has_grad: the fixed cotangent
    then for mode in (bilinear, bicubic), for antialias in (False, True):
      f32 y[N*OH*OW*C]                   interpolate(x, size=(OH, OW), mode, antialias)
      f32 gx[N*H*W*C]                    only when has_grad: d sum(y * R) / dx (autograd)

`--out PATH --random K --seed S` writes K extra random groups instead (a stress
set for development; the C test reads it when AP_RESIZE_FIXTURE names it).
"""
import argparse
import random
import struct
import sys

import torch
import torch.nn.functional as F

MAGIC = b"APRSZ001"

# (N, H, W, C, OH, OW, has_grad): the reward models shrink 512x512 to 224x224
# (ratio 2.29); the first group has that ratio at a small size.
GROUPS = [
    (1, 37, 29, 3, 16, 11, 1),   # downscale ~2.3 / ~2.6
    (2, 5, 7, 2, 12, 9, 1),      # upscale
    (1, 6, 5, 2, 6, 5, 1),       # identity
    (1, 13, 6, 3, 5, 10, 1),     # shrink H, grow W
    (1, 40, 31, 1, 5, 4, 0),     # large ratios (8, 7.75): wide AA windows
    (1, 4, 4, 1, 1, 1, 1),       # to a single pixel
    (1, 1, 1, 2, 3, 2, 1),       # from a single pixel
    (1, 9, 7, 1, 8, 6, 1),       # shrink by a ratio just above 1
]


def run_group(gen, n, h, w, c, oh, ow, has_grad):
    x = torch.rand((n, h, w, c), generator=gen, dtype=torch.float32) * 2 - 1
    r = torch.rand((n, oh, ow, c), generator=gen, dtype=torch.float32) * 2 - 1
    blobs = [struct.pack("<7i", n, h, w, c, oh, ow, has_grad), x.numpy().tobytes()]
    if has_grad:
        blobs.append(r.numpy().tobytes())
    for mode in ("bilinear", "bicubic"):
        for aa in (False, True):
            xin = x.permute(0, 3, 1, 2).contiguous().requires_grad_(bool(has_grad))
            y = F.interpolate(xin, size=(oh, ow), mode=mode, align_corners=False, antialias=aa)
            y_nhwc = y.permute(0, 2, 3, 1).contiguous()
            blobs.append(y_nhwc.detach().numpy().tobytes())
            if has_grad:
                (y_nhwc * r).sum().backward()
                blobs.append(xin.grad.permute(0, 2, 3, 1).contiguous().numpy().tobytes())
    return b"".join(blobs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--random", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(20240601)
    groups = GROUPS
    if a.random:
        rng = random.Random(a.seed)
        groups = []
        for _ in range(a.random):
            dims = [rng.choice([rng.randint(1, 12), rng.randint(1, 80)]) for _ in range(4)]
            groups.append((rng.randint(1, 2), dims[0], dims[1], rng.randint(1, 4), dims[2], dims[3], 1))
        groups.append((1, 512, 512, 3, 224, 224, 1))
    out = a.out or sys.path[0] + "/resize.bin"
    body = b"".join(run_group(gen, *g) for g in groups)
    with open(out, "wb") as f:
        f.write(MAGIC + struct.pack("<I", len(groups)) + body)
    print(f"wrote {out}: {len(groups)} groups, {12 + len(body)} bytes")


if __name__ == "__main__":
    main()
