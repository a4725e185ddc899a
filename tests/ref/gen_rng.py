#!/usr/bin/python3
"""Writes tests/ref/rng.bin: torch.randn / torch.rand draws from seeded CPU generators,
and the generator state after each case, for tests/test_rng.c to compare bit for bit.

Needs Debian's python3-torch (1.13); run with /usr/bin/python3 from the repository root:
    /usr/bin/python3 tests/ref/gen_rng.py
The AVX2 cases run in this process (torch 1.13 picks its AVX2 kernels on any AVX2 CPU);
the scalar-kernel cases run in a child with ATEN_CPU_CAPABILITY=default.

Format (little-endian): b"APRNG001", u32 case count, then per case:
  u64 seed, u8 kernel (0 avx2, 1 scalar), u8 uses_manual_seed (1: torch.manual_seed and
  the default generator, 0: a torch.Generator), u32 draw count, then per draw:
  u8 kind (0 randn, 1 rand), u64 numel, f32[numel];
  then u32 state length and torch.get_rng_state()/generator.get_state() bytes.
"""
import os
import struct
import subprocess
import sys

import torch

# (seed, draws); a draw is ("randn"|"rand", shape)
CASES = [
    (0, [("randn", (1,))]),
    (42, [("randn", (7,))]),
    (42, [("randn", (15,))]),
    (42, [("randn", (16,))]),
    (42, [("randn", (17,))]),
    (7, [("randn", (33,))]),
    (123456789, [("randn", (1000,))]),
    (2024, [("randn", (4, 64, 64))]),
    # the cached second normal of the scalar path, across calls and across a big draw
    (5, [("randn", (1,)), ("randn", (1,)), ("randn", (1,))]),
    (6, [("randn", (3,)), ("randn", (16,)), ("randn", (5,)), ("randn", (2,))]),
    # latents then per-step noise from one generator (Euler ancestral, DDIM eta > 0)
    (31337, [("randn", (2, 4, 8, 8))] + [("randn", (2, 4, 8, 8))] * 4),
    # more than one mt19937 twist (624 words) inside a single draw, odd tail
    (99, [("randn", (1, 4, 13, 11)), ("randn", (5, 3, 7, 9))]),
    # seeds beyond 32 bits: only the low word seeds mt19937, the state keeps all 64
    (2**32 + 5, [("randn", (20,))]),
    (2**64 - 1, [("randn", (8,)), ("rand", (9,))]),
    (17, [("rand", (40,)), ("randn", (40,))]),
]
SCALAR_CASES = [
    (42, [("randn", (16,))]),
    (2024, [("randn", (4, 64, 64))]),
    (6, [("randn", (3,)), ("randn", (37,)), ("randn", (5,))]),
]


def run_case(seed, draws, kernel, use_manual_seed):
    if use_manual_seed:
        torch.manual_seed(seed)
        gen = None
    else:
        gen = torch.Generator().manual_seed(seed)
    out = struct.pack("<QBBI", seed, kernel, use_manual_seed, len(draws))
    for kind, shape in draws:
        fn = torch.randn if kind == "randn" else torch.rand
        t = fn(*shape, generator=gen) if gen is not None else fn(*shape)
        assert t.dtype == torch.float32 and t.is_contiguous()
        out += struct.pack("<BQ", 0 if kind == "randn" else 1, t.numel())
        out += t.numpy().astype("<f4").tobytes()
    state = (torch.get_rng_state() if gen is None else gen.get_state()).numpy().tobytes()
    out += struct.pack("<I", len(state)) + state
    return out


def cases_bytes(cases, kernel):
    parts = []
    for i, (seed, draws) in enumerate(cases):
        parts.append(run_case(seed, draws, kernel, i % 2))
    return parts


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--scalar-child":
        sys.stdout.buffer.write(b"".join(cases_bytes(SCALAR_CASES, 1)))
        return
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    scalar = subprocess.run([sys.executable, os.path.abspath(__file__), "--scalar-child"],
                            env=env, check=True, capture_output=True).stdout
    parts = cases_bytes(CASES, 0)
    blob = b"APRNG001" + struct.pack("<I", len(CASES) + len(SCALAR_CASES)) + b"".join(parts) + scalar
    path = os.path.join(here, "rng.bin")
    with open(path, "wb") as f:
        f.write(blob)
    print(f"wrote {path}: {len(blob)} bytes, torch {torch.__version__}")


if __name__ == "__main__":
    main()
