#!/usr/bin/env python3
"""oneDNN's own time for each pass of ResNet18's convolutions (forward, input gradient, weight
gradient), read from oneDNN's verbose log: what `examples/bench convs`' `plan:` lines give for
ablate's kernels, without the layout reorders and autograd around them that
`bench/torch_ref.py convs` includes.

    /usr/bin/python3 bench/onednn_passes.py [steps]

Prints one line per layer and pass: the median over `steps` (default 6) of oneDNN's
`exec_time`, in ms. Runs itself again with ONEDNN_VERBOSE=1 (oneDNN reads it at start-up).
"""
import os
import statistics
import subprocess
import sys

from torch_ref import RESNET18_CONVS


def run(steps):
    import torch
    from torch import nn
    torch.set_num_threads(2)
    for name, c, o, k, s, p, hw, _count, dgrad in RESNET18_CONVS:
        conv = nn.Conv2d(c, o, k, s, p, bias=False)
        x = torch.rand(16, c, hw, hw, requires_grad=dgrad)
        print(f"LAYER {name}", flush=True)
        for _ in range(steps):
            conv(x).sum().backward()


def main():
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 6
    if os.environ.get("ONEDNN_VERBOSE") == "1":
        return run(steps)
    env = dict(os.environ, ONEDNN_VERBOSE="1")
    out = subprocess.run([sys.executable, __file__, str(steps)], env=env, capture_output=True, text=True, check=True).stdout
    times, layer = {}, None
    for line in out.splitlines():
        if line.startswith("LAYER "):
            layer = line[len("LAYER "):]
        elif line.startswith("onednn_verbose,exec,cpu,convolution"):
            f = line.split(",")
            times.setdefault((layer, f[5]), []).append(float(f[-1]))
    for (layer, kind), t in times.items():
        print(f"{layer:>10} {kind:>17}: {statistics.median(t):6.1f} ms")


if __name__ == "__main__":
    main()
