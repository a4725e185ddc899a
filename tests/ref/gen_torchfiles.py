#!/usr/bin/python3
"""Writes the PyTorch checkpoint fixtures of tests/test_torchfile.c into tests/ref/torch/.

Run with Debian's python3-torch (torch 1.13):  /usr/bin/python3 tests/ref/gen_torchfiles.py
The outputs are committed (a few KB each), so CI needs no PyTorch.

Good files are written by torch.save itself (plus re-zipped variants: another archive prefix,
deflate-compressed entries, ZIP64 records). Hostile and malformed files are crafted here by hand:
their pickles are assembled opcode by opcode and zipped by the small writer below, which lays
entries out as torch does (stored, 64-byte aligned data through an "FB" extra field, sizes in a
trailing data descriptor).

manifest.tsv lists, for every tensor of every good file, what PyTorch says about it: dtype, shape,
strides, storage offset, the sum of its elements and a position-weighted sum (element i of the
flattened tensor weighted by i % 7 + 1, so a transposed or shifted read changes it). Values are
multiples of 1/64 below 4 in magnitude, exact in f16, bf16 and f32, so these sums are exact in
double precision.
"""
import collections
import io
import os
import pickle
import struct
import sys
import types
import zipfile
import zlib

import numpy as np
import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch")
SAFETENSORS_DTYPE = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}
gen = torch.Generator().manual_seed(1234)
manifest = []


def vals(*shape, dtype=torch.float32):
    """Random multiples of 1/64 in [-4, 4): exact in every float dtype."""
    k = torch.randint(-255, 256, shape, generator=gen, dtype=torch.int64)
    return (k.double() / 64).to(dtype)


def ints(*shape, lo, hi, dtype):
    return torch.randint(lo, hi, shape, generator=gen, dtype=torch.int64).to(dtype)


def record(fname, flat):
    for name, t in flat.items():
        d = t.detach().double().flatten() if t.dtype != torch.bool else t.flatten().double()
        w = (torch.arange(d.numel(), dtype=torch.float64) % 7) + 1
        manifest.append("\t".join([
            fname, name, SAFETENSORS_DTYPE[t.dtype], ",".join(str(s) for s in t.shape),
            ",".join(str(s) for s in t.stride()), str(t.storage_offset()),
            repr(float(d.sum())), repr(float((d * w).sum()))]))


def flatten(obj, prefix=""):
    out = {}
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(k, (str, int)) and not isinstance(k, bool):
                out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}.{i}" if prefix else str(i)))
    return out


def save(fname, obj, expect=None, **kw):
    path = os.path.join(OUT, fname)
    torch.save(obj, path, **kw)
    if expect is None:
        expect = obj["state_dict"] if isinstance(obj, dict) and "state_dict" in obj else obj
        expect = flatten(expect)
    record(fname, expect)
    return path


# ------------------------------------------------------------------ a zip writer, torch's layout
def zip_bytes(entries, zip64=False, descriptor=True, align=64):
    """entries: list of (name, bytes). Stored entries, data aligned to `align` with an FB extra."""
    out = bytearray()
    central = []
    for name, data in entries:
        nb = name.encode()
        crc = zlib.crc32(data)
        off = len(out)
        flags = 0x0800 | (0x0008 if descriptor else 0)
        ver = 45 if zip64 else 20
        z64local = struct.pack("<HHQQ", 1, 16, 0 if descriptor else len(data), 0 if descriptor else len(data)) if zip64 else b""
        base = off + 30 + len(nb) + len(z64local) + 4
        pad = (-base) % align
        extra = z64local + struct.pack("<HH", 0x4246, pad) + b"Z" * pad
        if zip64:
            lsize = 0xFFFFFFFF
        else:
            lsize = 0 if descriptor else len(data)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, ver, flags, 0, 0, 0x21,
                           0 if descriptor else crc, lsize, lsize, len(nb), len(extra))
        out += nb + extra
        assert len(out) % align == 0
        out += data
        if descriptor:
            if zip64:
                out += struct.pack("<IIQQ", 0x08074B50, crc, len(data), len(data))
            else:
                out += struct.pack("<IIII", 0x08074B50, crc, len(data), len(data))
        central.append((nb, crc, len(data), off, flags, ver))
    cd_off = len(out)
    for nb, crc, size, off, flags, ver in central:
        if zip64:
            extra = struct.pack("<HHQQQ", 1, 24, size, size, off)
            s32, o32 = 0xFFFFFFFF, 0xFFFFFFFF
        else:
            extra, s32, o32 = b"", size, off
        out += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, ver, ver, flags, 0, 0, 0x21, crc,
                           s32, s32, len(nb), len(extra), 0, 0, 0, 0, o32)
        out += nb + extra
    cd_size = len(out) - cd_off
    n = len(central)
    if zip64:
        eocd64 = len(out)
        out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, cd_size, cd_off)
        out += struct.pack("<IIQI", 0x07064B50, 0, eocd64, 1)
        out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    else:
        out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, cd_size, cd_off, 0)
    return bytes(out)


def read_entries(path):
    with zipfile.ZipFile(path) as z:
        return [(i.filename, z.read(i.filename)) for i in z.infolist()]


def write(fname, data):
    with open(os.path.join(OUT, fname), "wb") as f:
        f.write(data)


# ------------------------------------------------------------------ hand-assembled pickles
def binunicode(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def binint(v):
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if 0 <= v < 65536:
        return b"M" + struct.pack("<H", v)
    return b"J" + struct.pack("<i", v)


def tup(items):
    return b"(" + b"".join(items) + b"t"


def global_(mod, name):
    return b"c" + mod.encode() + b"\n" + name.encode() + b"\n"


def storage_pid(storage_cls, key, numel, mod="torch"):
    return tup([binunicode("storage"), global_(mod, storage_cls), binunicode(key), binunicode("cpu"),
                binint(numel)]) + b"Q"


def rebuild_v2(pid, offset, shape, stride):
    args = tup([pid, binint(offset), tup([binint(s) for s in shape]), tup([binint(s) for s in stride]),
                b"\x89", global_("collections", "OrderedDict") + b")R"])
    return global_("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def state_dict_pickle(items):
    """items: list of (name, tensor-expression bytes)."""
    body = b"".join(binunicode(k) + v for k, v in items)
    return b"\x80\x02" + global_("collections", "OrderedDict") + b")R(" + body + b"u."


def torch_zip(pkl, storages=(), prefix="archive/"):
    entries = [(prefix + "data.pkl", pkl)]
    entries += [(prefix + "data/" + k, v) for k, v in storages]
    entries.append((prefix + "version", b"3\n"))
    return zip_bytes(entries)


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        if f.endswith((".pt", ".pth", ".ckpt", ".zip", ".pkl", ".tsv", ".bin")):
            os.remove(os.path.join(OUT, f))

    # every dtype, odd shapes, a scalar and an empty tensor
    dtypes = collections.OrderedDict()
    dtypes["f32"] = vals(3, 5)
    dtypes["f16"] = vals(4, 3, dtype=torch.float16)
    dtypes["bf16"] = vals(2, 7, dtype=torch.bfloat16)
    dtypes["f64"] = vals(5, dtype=torch.float64) + 1e-9  # not exact in f32: loads round
    dtypes["i64"] = torch.tensor([[3, -4, 1 << 40], [0, 7, -(1 << 35)]], dtype=torch.int64)
    dtypes["i64_small"] = ints(2, 3, lo=-1000, hi=1000, dtype=torch.int64)
    dtypes["i32"] = ints(3, 2, lo=-(1 << 30), hi=1 << 30, dtype=torch.int32)
    dtypes["i16"] = ints(5, lo=-30000, hi=30000, dtype=torch.int16)
    dtypes["i8"] = ints(7, lo=-128, hi=128, dtype=torch.int8)
    dtypes["u8"] = ints(2, 2, 2, lo=0, hi=256, dtype=torch.uint8)
    dtypes["bool"] = ints(9, lo=0, hi=2, dtype=torch.bool)
    dtypes["scalar"] = torch.tensor(2.5)
    dtypes["empty"] = torch.zeros(0, 4)
    dtypes["conv.weight"] = vals(4, 3, 3, 3)
    dtypes["six_dims"] = vals(2, 1, 3, 1, 2, 2)
    path = save("dtypes.pt", dtypes)
    with zipfile.ZipFile(path) as z:
        write("dtypes.pkl", z.read("dtypes/data.pkl" if "dtypes/data.pkl" in z.namelist() else "archive/data.pkl"))

    # views sharing one storage, with offsets, transposes, steps and a zero stride
    base = vals(4, 6)
    cube = vals(2, 3, 4)
    views = collections.OrderedDict()
    views["base"] = base
    views["t"] = base.t()
    views["slice"] = base[1:3, ::2]
    views["col"] = base[:, 5]
    views["row"] = base[3]
    views["expand"] = vals(3, 1).expand(3, 4)
    views["cube"] = cube
    views["permuted"] = cube.permute(2, 0, 1)
    views["narrow"] = cube[:, 1:, 1:3]
    views["half_t"] = vals(3, 5, dtype=torch.float16).t()
    save("views.pt", views)

    # nested containers, a module state dict (with _metadata), parameters, int keys, lists
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    with torch.no_grad():
        for p in mlp.parameters():
            p.copy_(vals(*p.shape))
    nested = {
        "model": mlp.state_dict(),
        "params": {"w": torch.nn.Parameter(vals(2, 3)), "frozen": torch.nn.Parameter(vals(2), requires_grad=False)},
        "layers": [vals(2), {"deep": vals(1, 2)}],
        "by_id": {7: vals(3)},
        "step": 12,
        "name": "nested",
    }
    save("nested.pt", nested)

    # a Lightning-like checkpoint: the loader takes 'state_dict' and ignores the rest, including
    # harmless globals (callback class as a dict key, numpy scalars, bytes, sets, devices)
    for parent in ("pytorch_lightning", "pytorch_lightning.callbacks"):
        sys.modules.setdefault(parent, types.ModuleType(parent))
    mod = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")

    class ModelCheckpoint:
        def __init__(self):
            self.monitor = "val/loss"

    ModelCheckpoint.__module__ = mod.__name__
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    mod.ModelCheckpoint = ModelCheckpoint
    sys.modules[mod.__name__] = mod
    sd = collections.OrderedDict()
    sd["model.diffusion_model.input_blocks.0.0.weight"] = vals(4, 4, 3, 3)
    sd["model.diffusion_model.input_blocks.0.0.bias"] = vals(4)
    sd["first_stage_model.decoder.conv_out.weight"] = vals(3, 4, 3, 3, dtype=torch.float16)
    sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(7).unsqueeze(0)
    ckpt = {
        "epoch": 3,
        "global_step": 4200,
        "pytorch-lightning_version": "1.4.2",
        "state_dict": sd,
        "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.25), "dirpath": "/ckpt"}},
        "optimizer_states": [{"state": {0: {"exp_avg": vals(4)}}, "param_groups": [{"lr": 1e-4, "params": [0]}]}],
        "lr_schedulers": [{"base_lrs": [1e-4], "last_epoch": 3, "lr_lambdas": [None]}],
        "hparams": {"scale": np.float64(0.18215), "n": np.int64(3), "tags": {"a", "b"}, "raw": b"\x00\x01",
                    "device": torch.device("cpu"), "size": torch.Size([2, 3]), "obj": ModelCheckpoint()},
    }
    save("lightning.ckpt", ckpt)

    # protocol 4 pickles: FRAME, MEMOIZE, SHORT_BINUNICODE, STACK_GLOBAL
    p4 = collections.OrderedDict([("a", vals(2, 3)), ("b", vals(3, dtype=torch.bfloat16)),
                                  ("c", vals(4, 2).t())])
    save("proto4.pt", p4, pickle_protocol=4)

    # a bare tensor: one tensor named ""
    save("tensor.pt", vals(3, 2))

    # older torch named the archive after the file stem; any prefix ending in /data.pkl works
    entries = read_entries(os.path.join(OUT, "views.pt"))
    write("stem_prefix.pt", zip_bytes([("my_model/" + n.split("/", 1)[1], d) for n, d in entries]))
    record("stem_prefix.pt", flatten(views))

    # compressed entries (torch never writes them, zip tools can)
    with zipfile.ZipFile(os.path.join(OUT, "deflate.pt"), "w", zipfile.ZIP_DEFLATED) as z:
        for n, d in read_entries(os.path.join(OUT, "views.pt")):
            z.writestr(zipfile.ZipInfo(n, date_time=(1980, 1, 1, 0, 0, 0)), d, compress_type=zipfile.ZIP_DEFLATED)
    record("deflate.pt", flatten(views))

    # ZIP64 records everywhere (as torch writes for files over 4 GiB)
    write("zip64.pt", zip_bytes(read_entries(os.path.join(OUT, "nested.pt")), zip64=True))
    record("zip64.pt", flatten(nested))

    # newer torch style: an untyped storage (numel in bytes) with the dtype in _rebuild_tensor_v3
    h = vals(2, 3, dtype=torch.float16)
    raw = h.numpy().tobytes()
    pid = storage_pid("UntypedStorage", "0", len(raw), mod="torch.storage")
    args = tup([pid, binint(0), tup([binint(2), binint(3)]), tup([binint(3), binint(1)]), b"\x89",
                global_("collections", "OrderedDict") + b")R", global_("torch", "float16")])
    v3 = global_("torch._utils", "_rebuild_tensor_v3") + args + b"R"
    write("untyped_v3.pt", torch_zip(state_dict_pickle([("h", v3)]), [("0", raw)]))
    record("untyped_v3.pt", {"h": h})

    with open(os.path.join(OUT, "manifest.tsv"), "w") as f:
        f.write("# file\tname\tdtype\tshape\tstrides\toffset\tsum\tweighted_sum (written by gen_torchfiles.py)\n")
        f.write("\n".join(manifest) + "\n")

    # ---------------------------------------------------------------- malformed and hostile files
    f32 = struct.pack("<4f", 1, 2, 3, 4)
    good_tensor = rebuild_v2(storage_pid("FloatStorage", "0", 4), 0, (2, 2), (2, 1))
    # the classic attack: os.system through REDUCE
    evil = b"\x80\x02" + global_("os", "system") + binunicode("touch /tmp/pwned") + b"\x85R."
    write("evil_global.pt", torch_zip(evil))
    # the same through protocol 4's STACK_GLOBAL, hidden inside an otherwise good state dict
    sg = b"\x8c\x08builtins\x8c\x04eval\x93" + binunicode("1+1") + b"\x85R"
    write("evil_stack_global.pt", torch_zip(state_dict_pickle([("w", good_tensor), ("x", sg)]), [("0", f32)]))
    # an opcode the reader does not know (PERSID, text protocol 0) and an invalid byte
    write("bad_opcode.pt", torch_zip(b"\x80\x02}P0\n."))
    write("invalid_opcode.pt", torch_zip(b"\x80\x02}\xff."))
    # stack underflow, memo out of range, no STOP, a non-dict top level
    write("underflow.pt", torch_zip(b"\x80\x02s."))
    write("memo.pt", torch_zip(b"\x80\x02}h\x09."))
    write("nostop.pt", torch_zip(state_dict_pickle([("w", good_tensor)])[:-1], [("0", f32)]))
    write("notdict.pt", torch_zip(b"\x80\x02K\x05."))
    # nesting deeper than the reader follows
    deep = b"\x80\x02" + b"}" + b"".join(binunicode("k") + b"}" for _ in range(200)) + binunicode("w") + \
        good_tensor + b"s" * 201 + b"."
    write("deep.pt", torch_zip(deep, [("0", f32)]))
    # a storage that does not hold the tensor's shape and strides
    write("small_storage.pt", torch_zip(state_dict_pickle(
        [("w", rebuild_v2(storage_pid("FloatStorage", "0", 4), 0, (10, 10), (10, 1)))]), [("0", f32)]))
    write("bad_offset.pt", torch_zip(state_dict_pickle(
        [("w", rebuild_v2(storage_pid("FloatStorage", "0", 4), 3, (2,), (1,)))]), [("0", f32)]))
    # a storage entry shorter than its element count says
    write("short_entry.pt", torch_zip(state_dict_pickle(
        [("w", rebuild_v2(storage_pid("FloatStorage", "0", 100), 0, (10, 10), (10, 1)))]), [("0", f32)]))
    # a storage entry that is missing from the archive
    write("missing_data.pt", torch_zip(state_dict_pickle([("w", good_tensor)]), []))
    # a zip without data.pkl, and a truncated file
    write("no_pkl.pt", zip_bytes([("archive/version", b"3\n"), ("archive/data/0", f32)]))
    full = open(os.path.join(OUT, "dtypes.pt"), "rb").read()
    write("truncated.pt", full[: len(full) * 3 // 5])
    # big-endian storages
    write("bigendian.pt", zip_bytes([("archive/data.pkl", state_dict_pickle([("w", good_tensor)])),
                                     ("archive/data/0", f32), ("archive/byteorder", b"big")]))
    # the legacy (pre-1.6) format (its storage keys are addresses: this file differs at each run)
    torch.save({"w": vals(2)}, os.path.join(OUT, "legacy.pt"), _use_new_zipfile_serialization=False)
    # not a zip at all
    write("garbage.pt", b"this is not a checkpoint\n")


if __name__ == "__main__":
    main()
