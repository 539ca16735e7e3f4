#!/usr/bin/env python3
"""PyTorch reference for `make bench`: the same workloads as examples/bench.rs, one per run.

    /usr/bin/python3 bench/torch_ref.py <lenet|resnet18|mobilenet_v2|resnext_g<G>|data> [steps]

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


def aten_isa():
    """ATen's CPU capability (its own vectorised kernels; `ATEN_CPU_CAPABILITY` lowers it)."""
    for line in torch.__config__.show().splitlines():
        if "CPU capability usage:" in line:
            return line.split(":", 1)[1].strip().lower()
    return "unknown"


def timed(f):
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


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


RESNET18_CONVS = [
    ("stem 7x7/2", 3, 64, 7, 2, 3, 224, 1, False),
    ("l1 3x3", 64, 64, 3, 1, 1, 56, 4, True),
    ("l2 3x3/2", 64, 128, 3, 2, 1, 56, 1, True),
    ("l2 3x3", 128, 128, 3, 1, 1, 28, 3, True),
    ("l2 1x1/2", 64, 128, 1, 2, 0, 56, 1, True),
    ("l3 3x3/2", 128, 256, 3, 2, 1, 28, 1, True),
    ("l3 3x3", 256, 256, 3, 1, 1, 14, 3, True),
    ("l3 1x1/2", 128, 256, 1, 2, 0, 28, 1, True),
    ("l4 3x3/2", 256, 512, 3, 2, 1, 14, 1, True),
    ("l4 3x3", 512, 512, 3, 1, 1, 7, 3, True),
    ("l4 1x1/2", 256, 512, 1, 2, 0, 14, 1, True),
]


def convs(n, steps):
    """Per-layer timing of ResNet18's convolutions, as examples/bench.rs `convs`."""
    total_f = total_b = 0.0
    for name, c, o, k, s, p, hw, count, dgrad in RESNET18_CONVS:
        conv = nn.Conv2d(c, o, k, s, p, bias=False)
        x = torch.rand(n, c, hw, hw) * 2 - 1
        x.requires_grad_(dgrad)
        f, b = [], []
        for i in range(steps + 1):
            t0 = time.perf_counter()
            y = conv(x)
            t1 = time.perf_counter()
            y.sum().backward()
            t2 = time.perf_counter()
            conv.weight.grad = None
            x.grad = None
            if i > 0:
                f.append(t1 - t0)
                b.append(t2 - t1)
        f, b = statistics.median(f) * 1e3, statistics.median(b) * 1e3
        oh = (hw + 2 * p - k) // s + 1
        gflop = 2 * n * o * oh * oh * c * k * k / 1e9
        passes = 2 if dgrad else 1
        print(f"{name:>10} x{count}: forward {f:6.1f} ms ({gflop / f * 1e3:3.0f} GFLOP/s), "
              f"backward {b:6.1f} ms ({passes * gflop / b * 1e3:3.0f} GFLOP/s)")
        total_f += f * count
        total_b += b * count
    print(f"total: forward {total_f:.0f} ms, backward {total_b:.0f} ms")


def data_pipeline(augment=False):
    from torchvision import transforms as T
    norm = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    tf = T.Compose([T.Resize((256, 256)), T.ToTensor(), norm])
    if augment:
        # The same steps as examples/bench.rs's data_aug, on PIL images as torchvision's
        # reference scripts apply them.
        tf = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.TrivialAugmentWide(), T.RandomRotation(15),
                        T.ColorJitter(0.4, 0.4, 0.4, 0.1), T.RandomGrayscale(0.1), T.GaussianBlur(5, (0.1, 2.0)),
                        T.ToTensor(), norm, T.RandomErasing(0.25, value="random")])
    ds = torchvision.datasets.ImageFolder(os.path.join(ROOT, "target/bench-data/jpegs/train"), transform=tf)
    dl = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=2)
    t0 = time.perf_counter()
    n = sum(len(y) for _, y in dl)
    return time.perf_counter() - t0, n


def main():
    workload = sys.argv[1]
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    if workload == "convs":
        return convs(16, steps)
    if workload == "peak":
        # torch.mm of the size examples/bench.rs's `peak` multiplies (OpenBLAS here).
        a, b = torch.rand(2048, 2048), torch.rand(2048, 2048)
        best = min(timed(lambda: torch.mm(a, b)) for _ in range(steps + 1))
        print(json.dumps({"framework": "pytorch", "workload": "peak", "gflops": round(2 * 2048 ** 3 / best / 1e9, 1), "isa": aten_isa()}))
        return
    if workload == "lenet":
        s = train_steps(lenet(), (64, 3, 256, 256), 2, steps)
        img, ms = 64 / s, s * 1e3
    elif workload in ("resnet18", "mobilenet_v2"):
        s = train_steps(getattr(torchvision.models, workload)(num_classes=2), (16, 3, 224, 224), 2, steps)
        img, ms = 16 / s, s * 1e3
    elif workload.startswith("resnext_g"):
        s = train_steps(resnext_stage(int(workload[len("resnext_g"):])), (32, 256, 32, 32), 10, steps)
        img, ms = 32 / s, s * 1e3
    elif workload in ("data", "data_aug"):
        secs, n = data_pipeline(workload == "data_aug")
        img, ms = n / secs, secs * 1e3
    else:
        sys.exit(f"unknown workload {workload}")
    print(json.dumps({"framework": "pytorch", "workload": workload, "img_per_s": round(img, 2),
                      "ms_per_step": round(ms, 1), "peak_rss_mb": round(peak_rss_mb()), "isa": aten_isa()}))


if __name__ == "__main__":
    main()
