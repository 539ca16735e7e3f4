#!/usr/bin/env python3
"""Checks that an ablate ResNet18 checkpoint loads into torchvision's resnet18() with
load_state_dict(strict=True), and that both compute the same logits.

    /usr/bin/python3 scripts/torchvision_load_check.py runs/<run>/checkpoints/last.safetensors [classes]

Needs Debian's python3-torch and python3-torchvision; reads safetensors by hand (8-byte
header length, JSON header, raw little-endian data) so no extra package is needed.
"""
import json
import struct
import sys

import torch
import torchvision

DTYPES = {"F32": torch.float32, "I64": torch.int64}


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        t = torch.frombuffer(bytearray(data[start:end]), dtype=DTYPES[info["dtype"]])
        out[name] = t.reshape(info["shape"])
    return out


state = read_safetensors(sys.argv[1])
classes = int(sys.argv[2]) if len(sys.argv) > 2 else 2
model = torchvision.models.resnet18(num_classes=classes)
model.load_state_dict(state, strict=True)
model.eval()
x = torch.linspace(-1, 1, 2 * 3 * 64 * 64).reshape(2, 3, 64, 64)
with torch.no_grad():
    print("strict load ok; logits:", [round(v, 5) for v in model(x).flatten().tolist()])
