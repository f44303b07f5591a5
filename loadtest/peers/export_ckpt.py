#!/usr/bin/python3
"""export_ckpt.py - exports a kdrank checkpoint (loader/FORMAT.md) to a NumPy .npz that the peer
servers load: the same float32 weights, tensor for tensor, plus the architecture as JSON.

The file is first checked with `kdrank-ckpt verify` (every CRC, bound and shape) and the
architecture is taken from `kdrank-ckpt inspect --json`; the tensor bytes are then read straight
from the file through its header and tensor table (little-endian, 64-byte aligned float32).
Usage: export_ckpt.py --ckpt-tool build/loader/kdrank-ckpt CKPT OUT.npz"""
import argparse, json, struct, subprocess, sys

import numpy as np

H_MAGIC, H_HEADER_SIZE, H_N_TENSORS, H_TAB_OFF, H_ENTRY_SIZE, H_DATA_OFF = 0, 12, 44, 48, 64, 72
E_NAME, E_DTYPE, E_NDIM, E_SHAPE, E_OFFSET, E_SIZE = 0, 96, 100, 104, 136, 144


def read_tensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    if blob[H_MAGIC:4] != b"KDRK":
        sys.exit("%s: not a kdrank checkpoint (magic %r)" % (path, blob[:4]))
    n = struct.unpack_from("<I", blob, H_N_TENSORS)[0]
    tab = struct.unpack_from("<Q", blob, H_TAB_OFF)[0]
    esz = struct.unpack_from("<I", blob, H_ENTRY_SIZE)[0]
    doff = struct.unpack_from("<Q", blob, H_DATA_OFF)[0]
    out = {}
    for i in range(n):
        e = tab + i * esz
        name = blob[e + E_NAME:e + E_NAME + 96].split(b"\0", 1)[0].decode()
        dtype, ndim = struct.unpack_from("<II", blob, e + E_DTYPE)
        shape = struct.unpack_from("<4Q", blob, e + E_SHAPE)[:ndim]
        off, size = struct.unpack_from("<QQ", blob, e + E_OFFSET)
        if dtype != 0:
            sys.exit("%s: tensor %s: dtype %d, expected 0 (f32)" % (path, name, dtype))
        a = np.frombuffer(blob, dtype="<f4", count=size // 4, offset=doff + off).reshape(shape)
        out[name] = a.astype(np.float32)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt-tool", required=True)
    ap.add_argument("ckpt")
    ap.add_argument("out")
    a = ap.parse_args()
    v = subprocess.run([a.ckpt_tool, "verify", a.ckpt], capture_output=True, text=True)
    if v.returncode != 0:
        sys.exit("%s: kdrank-ckpt verify failed: %s" % (a.ckpt, (v.stdout + v.stderr).strip()))
    arch = json.loads(subprocess.run([a.ckpt_tool, "inspect", a.ckpt, "--json"], capture_output=True, text=True,
                                     check=True).stdout)
    t = read_tensors(a.ckpt)
    names = [x["name"] for x in arch["tensors"]]
    if sorted(names) != sorted(t):
        sys.exit("%s: tensor table differs from inspect: %s vs %s" % (a.ckpt, names, sorted(t)))
    for x in arch["tensors"]:
        if list(t[x["name"]].shape) != list(x["shape"]):
            sys.exit("%s: %s shape %s, inspect says %s" % (a.ckpt, x["name"], t[x["name"]].shape, x["shape"]))
    np.savez(a.out, __arch__=np.frombuffer(json.dumps(arch).encode(), dtype=np.uint8), **t)
    print("exported %s: %d tensors, %d parameters -> %s" % (a.ckpt, len(t), sum(x.size for x in t.values()), a.out))


if __name__ == "__main__":
    main()
