#!/usr/bin/python3
"""Minimal safetensors reader/writer (no `safetensors` package needed).

Format: u64 little-endian header length N, N bytes of JSON header (padded with
spaces to a multiple of 8), then the raw little-endian tensor data. Header
entries: {"name": {"dtype": "F32"|"F16"|"BF16", "shape": [...],
"data_offsets": [begin, end]}}, offsets relative to the data section, plus an
optional "__metadata__": {str: str}.
"""

import json
import struct

import numpy as np
import torch

_TORCH_TO_ST = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
}
_ST_TO_TORCH = {v: k for k, v in _TORCH_TO_ST.items()}
_ELEMENT_SIZE = {"F32": 4, "F16": 2, "BF16": 2}


def tensor_bytes(t):
    """Raw little-endian bytes of a contiguous CPU tensor."""
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        # numpy has no bfloat16: reinterpret the bits as int16.
        return t.view(torch.int16).numpy().astype("<i2").tobytes()
    if t.dtype == torch.float16:
        return t.numpy().astype("<f2").tobytes()
    if t.dtype == torch.float32:
        return t.numpy().astype("<f4").tobytes()
    raise ValueError("unsupported dtype %s" % t.dtype)


def save(tensors, path, metadata=None):
    """Writes an ordered {name: tensor} dict; returns the data size in bytes."""
    header = {}
    blobs = []
    offset = 0
    for name, t in tensors.items():
        data = tensor_bytes(t)
        header[name] = {
            "dtype": _TORCH_TO_ST[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    if metadata is not None:
        header["__metadata__"] = dict(metadata)
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for b in blobs:
            f.write(b)
    return offset


def load(path):
    """Reads every tensor of a safetensors file into {name: torch tensor}."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        chunk = raw[base + begin:base + end]
        dtype = info["dtype"]
        if len(chunk) != _ELEMENT_SIZE[dtype] * int(np.prod(info["shape"])):
            raise ValueError("%s: bad size for %s" % (path, name))
        if dtype == "BF16":
            arr = np.frombuffer(chunk, dtype="<i2").copy()
            t = torch.from_numpy(arr).view(torch.bfloat16)
        elif dtype == "F16":
            t = torch.from_numpy(np.frombuffer(chunk, dtype="<f2").copy())
        else:
            t = torch.from_numpy(np.frombuffer(chunk, dtype="<f4").copy())
        out[name] = t.reshape(info["shape"])
    return out
