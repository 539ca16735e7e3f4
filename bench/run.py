#!/usr/bin/env python3
"""`make bench`: runs every workload with ablate and with PyTorch, alternating, and prints
img/s, their ratio and peak RSS per side (median over rounds).

    python3 bench/run.py [--rounds N] [--steps N] [workload ...]

ablate: target/release/examples/bench (built by `make bench`); PyTorch: /usr/bin/python3
bench/torch_ref.py (Debian's python3-torch, python3-torchvision, libopenblas0-pthread).
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKLOADS = ["lenet", "resnet18"] + [f"resnext_g{g}" for g in (1, 2, 4, 8, 32, 64)] + ["data", "data_aug"]


def run(cmd):
    env = dict(os.environ)
    # Debian's OpenBLAS is current: the workaround variables set on some machines only slow it.
    env.pop("OPENBLAS_CORETYPE", None)
    env.pop("OPENBLAS_L2_SIZE", None)
    out = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("workloads", nargs="*", default=WORKLOADS)
    a = ap.parse_args()
    ours = os.path.join(ROOT, "target/release/examples/bench")
    results = {w: {"ablate": [], "pytorch": []} for w in a.workloads}
    for r in range(a.rounds):
        for w in a.workloads:
            sides = [("ablate", [ours, w, str(a.steps)]), ("pytorch", ["/usr/bin/python3", "bench/torch_ref.py", w, str(a.steps)])]
            if r % 2:
                sides.reverse()
            for name, cmd in sides:
                results[w][name].append(run(cmd))
    print(f"{datetime.date.today()} on {platform.node()}: {os.cpu_count()} cores, {platform.processor() or platform.machine()}; "
          f"{a.rounds} rounds, median of {a.steps} steps each\n")
    print("| workload | ablate img/s | PyTorch img/s | ratio | ablate ms/step | PyTorch ms/step | ablate peak RSS MB | PyTorch peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for w in a.workloads:
        med = {s: {k: statistics.median(x[k] for x in results[w][s]) for k in ("img_per_s", "ms_per_step", "peak_rss_mb")} for s in ("ablate", "pytorch")}
        o, t = med["ablate"], med["pytorch"]
        print(f"| {w} | {o['img_per_s']:.1f} | {t['img_per_s']:.1f} | {o['img_per_s'] / t['img_per_s']:.2f}x | "
              f"{o['ms_per_step']:.0f} | {t['ms_per_step']:.0f} | {o['peak_rss_mb']:.0f} | {t['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
