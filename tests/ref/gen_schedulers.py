#!/usr/bin/python3
"""Writes tests/ref/schedulers.bin: the SD 1.5 noise schedule and short sampling runs of
DDIM, Euler ancestral and DPM-Solver++ 2M, for tests/test_schedulers.c.

diffusers is not installable here, so the schedulers below are written in PyTorch from
a reading of diffusers' code (DDIMScheduler, EulerAncestralDiscreteScheduler,
DPMSolverMultistepScheduler as of diffusers 0.26/0.27: sigma formulation,
final_sigmas_type "zero"), keeping its f32 tensor operations in its order. The "model"
is a fixed function of the (scaled) input and the timestep:
    eps = 0.5 * x_in + (t / 1000) * W        (W a fixed random tensor)
Run from the repository root with Debian's python3-torch:
    /usr/bin/python3 tests/ref/gen_schedulers.py

Format (little-endian): b"APSCH001", u32 record count, then records:
  u16 name length, name (ascii), u8 dtype (0 f32, 1 f64, 2 i64), u64 count, data.
Latent tensors are stored NHWC (the C library's layout), flattened; per-step arrays
are concatenated over the steps.
"""
import os
import struct

import numpy as np
import torch

T = 1000
records = []


def put(name, arr):
    a = np.ascontiguousarray(arr)
    code = {np.dtype(np.float32): 0, np.dtype(np.float64): 1, np.dtype(np.int64): 2}[a.dtype]
    nb = name.encode()
    records.append(struct.pack("<H", len(nb)) + nb + struct.pack("<BQ", code, a.size)
                   + a.astype(a.dtype.newbyteorder("<")).tobytes())


def nhwc(x):
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def sd15_schedule():
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, T, dtype=torch.float32) ** 2
    alphas = 1.0 - betas
    return betas, torch.cumprod(alphas, dim=0)


BETAS, ACP = sd15_schedule()


def np_trailing(n):
    return np.arange(T, 0, -T / n).round()


class DDIM:
    """DDIMScheduler with the SD config: epsilon, no clipping, set_alpha_to_one False."""

    def __init__(self, n, eta=0.0, spacing="leading", offset=1):
        self.n, self.eta = n, eta
        if spacing == "leading":
            ratio = T // n
            ts = (np.arange(0, n) * ratio).round()[::-1].copy().astype(np.int64) + offset
        elif spacing == "linspace":
            ts = np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
        else:
            ts = np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
        self.timesteps = torch.from_numpy(ts)
        self.final_alpha_cumprod = ACP[0]
        self.init_noise_sigma = 1.0
        self.sigmas = None

    def scale_model_input(self, x, i):
        return x

    def step(self, eps, i, x, gen):
        t = int(self.timesteps[i])
        prev = t - T // self.n
        a_t = ACP[t]
        a_prev = ACP[prev] if prev >= 0 else self.final_alpha_cumprod
        b_t = 1 - a_t
        x0 = (x - b_t ** 0.5 * eps) / a_t ** 0.5
        variance = ((1 - a_prev) / b_t) * (1 - a_t / a_prev)
        std = self.eta * variance ** 0.5
        direction = (1 - a_prev - std ** 2) ** 0.5 * eps
        x_prev = a_prev ** 0.5 * x0 + direction
        if self.eta > 0:
            noise = torch.randn(eps.shape, generator=gen, dtype=eps.dtype)
            x_prev = x_prev + std * noise
        return x_prev


def interp_sigmas(ts):
    table = np.array(((1 - ACP) / ACP) ** 0.5)
    s = np.interp(ts, np.arange(0, len(table)), table)
    return np.concatenate([s, [0.0]]).astype(np.float32)


class EulerA:
    """EulerAncestralDiscreteScheduler, epsilon prediction."""

    def __init__(self, n, spacing="linspace", offset=1):
        if spacing == "linspace":
            ts = np.linspace(0, T - 1, n, dtype=np.float32)[::-1].copy()
        elif spacing == "leading":
            ratio = T // n
            ts = (np.arange(0, n) * ratio).round()[::-1].copy().astype(np.float32)
            ts += offset
        else:
            ts = np_trailing(n).copy().astype(np.float32)
            ts -= 1
        self.sigmas = torch.from_numpy(interp_sigmas(ts))
        self.timesteps = torch.from_numpy(ts)
        if spacing in ("linspace", "trailing"):
            self.init_noise_sigma = self.sigmas.max()
        else:
            self.init_noise_sigma = (self.sigmas.max() ** 2 + 1) ** 0.5

    def scale_model_input(self, x, i):
        sigma = self.sigmas[i]
        return x / ((sigma ** 2 + 1) ** 0.5)

    def step(self, eps, i, x, gen):
        sigma = self.sigmas[i]
        x0 = x - sigma * eps
        s_from, s_to = self.sigmas[i], self.sigmas[i + 1]
        s_up = (s_to ** 2 * (s_from ** 2 - s_to ** 2) / s_from ** 2) ** 0.5
        s_down = (s_to ** 2 - s_up ** 2) ** 0.5
        derivative = (x - x0) / sigma
        dt = s_down - sigma
        x_prev = x + derivative * dt
        noise = torch.randn(eps.shape, generator=gen, dtype=eps.dtype)
        return x_prev + noise * s_up


class DPMpp2M:
    """DPMSolverMultistepScheduler: dpmsolver++, order 2, midpoint, lower_order_final,
    final_sigmas_type "zero", epsilon prediction."""

    def __init__(self, n, spacing="linspace", offset=1):
        if spacing == "linspace":
            ts = np.linspace(0, T - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
        elif spacing == "leading":
            ratio = T // (n + 1)
            ts = (np.arange(0, n + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64) + offset
        else:
            ts = np_trailing(n).copy().astype(np.int64) - 1
        self.sigmas = torch.from_numpy(interp_sigmas(ts))
        self.timesteps = torch.from_numpy(ts)
        self.init_noise_sigma = 1.0
        self.outputs = [None, None]
        self.lower_order_nums = 0

    @staticmethod
    def alpha_sigma(sigma):
        alpha = 1 / ((sigma ** 2 + 1) ** 0.5)
        return alpha, sigma * alpha

    def scale_model_input(self, x, i):
        return x

    def step(self, eps, i, x, gen):
        n = len(self.timesteps)
        lower_order_final = i == n - 1  # final sigma is zero
        alpha, sig = self.alpha_sigma(self.sigmas[i])
        m0 = (x - sig * eps) / alpha
        self.outputs = [self.outputs[1], m0]
        a_t, s_t = self.alpha_sigma(self.sigmas[i + 1])
        a_0, s_0 = self.alpha_sigma(self.sigmas[i])
        l_t = torch.log(a_t) - torch.log(s_t)
        l_0 = torch.log(a_0) - torch.log(s_0)
        h = l_t - l_0
        if self.lower_order_nums < 1 or lower_order_final:
            x_prev = (s_t / s_0) * x - (a_t * (torch.exp(-h) - 1.0)) * m0
        else:
            a_1, s_1 = self.alpha_sigma(self.sigmas[i - 1])
            l_1 = torch.log(a_1) - torch.log(s_1)
            m1 = self.outputs[0]
            r0 = (l_0 - l_1) / h
            d1 = (1.0 / r0) * (m0 - m1)
            x_prev = (s_t / s_0) * x - (a_t * (torch.exp(-h) - 1.0)) * m0 \
                - 0.5 * (a_t * (torch.exp(-h) - 1.0)) * d1
        if self.lower_order_nums < 2:
            self.lower_order_nums += 1
        return x_prev


def run(name, sched, shape, seed, w_seed):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=torch.Generator().manual_seed(w_seed))
    x = torch.randn(shape, generator=gen, dtype=torch.float32) * sched.init_noise_sigma
    put(name + ".shape", np.array([shape[0], shape[2], shape[3], shape[1]], np.int64))  # n h w c
    put(name + ".seed", np.array([seed], np.int64))
    put(name + ".W", nhwc(w))
    put(name + ".timesteps", sched.timesteps.numpy().astype(np.float32))
    if sched.sigmas is not None:
        put(name + ".sigmas", sched.sigmas.numpy())
    put(name + ".init_noise_sigma", np.array([float(sched.init_noise_sigma)], np.float32))
    xs, ins, epss = [nhwc(x)], [], []
    for i, t in enumerate(sched.timesteps):
        x_in = sched.scale_model_input(x, i)
        eps = 0.5 * x_in + (float(t) / 1000.0) * w
        x = sched.step(eps, i, x, gen)
        ins.append(nhwc(x_in))
        epss.append(nhwc(eps))
        xs.append(nhwc(x))
    put(name + ".x", np.concatenate([a.ravel() for a in xs]))
    put(name + ".x_in", np.concatenate([a.ravel() for a in ins]))
    put(name + ".eps", np.concatenate([a.ravel() for a in epss]))


def main():
    put("schedule.betas", BETAS.numpy())
    put("schedule.alphas_cumprod", ACP.numpy())
    run("ddim_eta0", DDIM(10), (2, 4, 5, 3), 1234, 1)
    run("ddim_eta1", DDIM(7, eta=1.0), (1, 4, 6, 5), 42, 2)
    run("ddim_eta03_n50", DDIM(50, eta=0.3), (1, 4, 3, 3), 7, 3)
    run("euler_a", EulerA(12), (2, 4, 5, 3), 31337, 4)
    run("euler_a_leading", EulerA(9, spacing="leading"), (1, 4, 4, 4), 5, 5)
    run("dpmpp_2m_n8", DPMpp2M(8), (2, 4, 5, 3), 99, 6)
    run("dpmpp_2m_n20", DPMpp2M(20), (1, 4, 6, 5), 100, 7)
    run("dpmpp_2m_leading", DPMpp2M(10, spacing="leading"), (1, 4, 3, 3), 101, 8)
    # timesteps (and sigmas) only, for the other spacings
    for n in (10, 25):
        s = DDIM(n, spacing="trailing")
        put(f"ts.ddim.trailing.{n}", s.timesteps.numpy().astype(np.float32))
        s = DDIM(n, spacing="linspace")
        put(f"ts.ddim.linspace.{n}", s.timesteps.numpy().astype(np.float32))
        s = EulerA(n, spacing="trailing")
        put(f"ts.euler_a.trailing.{n}", s.timesteps.numpy())
        put(f"sig.euler_a.trailing.{n}", s.sigmas.numpy())
        s = DPMpp2M(n, spacing="trailing")
        put(f"ts.dpmpp_2m.trailing.{n}", s.timesteps.numpy().astype(np.float32))
        put(f"sig.dpmpp_2m.trailing.{n}", s.sigmas.numpy())
    s = DDIM(50)
    put("ts.ddim.leading.50", s.timesteps.numpy().astype(np.float32))
    # numpy's float arange makes one timestep too many for these step counts
    put("trailing_bad_counts", np.array([n for n in range(1, 200) if len(np_trailing(n)) != n], np.int64))
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "schedulers.bin")
    blob = b"APSCH001" + struct.pack("<I", len(records)) + b"".join(records)
    with open(path, "wb") as f:
        f.write(blob)
    print(f"wrote {path}: {len(blob)} bytes, {len(records)} records, torch {torch.__version__}")


if __name__ == "__main__":
    main()
