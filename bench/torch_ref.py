#!/usr/bin/env python3
"""PyTorch reference for `make bench`: the same workloads as examples/bench.rs, one per run.

    /usr/bin/python3 bench/torch_ref.py <lenet|resnet18|resnext_g<G>|data> [steps]

Prints one JSON line like the ablate side. Uses Debian's python3-torch / python3-torchvision
(CPU build, OpenBLAS with libopenblas0-pthread) on 2 threads.
"""
import json
import os
import statistics
import sys
import time

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import Bottleneck

torch.set_num_threads(2)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def peak_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def lenet():
    return nn.Sequential(
        nn.Conv2d(3, 6, 5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(6, 16, 5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 61 * 61, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 2),
    )


def resnext_stage(groups):
    # torchvision's Bottleneck: width = int(planes * base_width / 64) * groups = 128 here.
    blocks = [Bottleneck(256, 64, groups=groups, base_width=128 // groups) for _ in range(3)]
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 10))


def train_steps(model, shape, classes, steps):
    torch.manual_seed(0)
    x = torch.rand(shape) * 2 - 1
    y = torch.randint(0, classes, (shape[0],))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        loss.item()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def data_pipeline():
    from torchvision import transforms as T
    tf = T.Compose([T.Resize((256, 256)), T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    ds = torchvision.datasets.ImageFolder(os.path.join(ROOT, "target/bench-data/jpegs/train"), transform=tf)
    dl = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=2)
    t0 = time.perf_counter()
    n = sum(len(y) for _, y in dl)
    return time.perf_counter() - t0, n


def main():
    workload = sys.argv[1]
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    if workload == "lenet":
        s = train_steps(lenet(), (64, 3, 256, 256), 2, steps)
        img, ms = 64 / s, s * 1e3
    elif workload == "resnet18":
        s = train_steps(torchvision.models.resnet18(num_classes=2), (16, 3, 224, 224), 2, steps)
        img, ms = 16 / s, s * 1e3
    elif workload.startswith("resnext_g"):
        s = train_steps(resnext_stage(int(workload[len("resnext_g"):])), (32, 256, 32, 32), 10, steps)
        img, ms = 32 / s, s * 1e3
    elif workload == "data":
        secs, n = data_pipeline()
        img, ms = n / secs, secs * 1e3
    else:
        sys.exit(f"unknown workload {workload}")
    print(json.dumps({"framework": "pytorch", "workload": workload, "img_per_s": round(img, 2),
                      "ms_per_step": round(ms, 1), "peak_rss_mb": round(peak_rss_mb())}))


if __name__ == "__main__":
    main()
