#!/usr/bin/env python3
"""`make bench`: runs every workload with ablate and with PyTorch, alternating, and prints
img/s, their ratio and peak RSS per side (median over rounds).

    python3 bench/run.py [--rounds N] [--steps N] [--isa avx2] [workload ...]

ablate: target/release/examples/bench (built by `make bench`); PyTorch: /usr/bin/python3
bench/torch_ref.py (Debian's python3-torch, python3-torchvision, libopenblas0-pthread).

`--isa avx2` (`make bench-avx2`) measures both sides as on a CPU without AVX-512: ablate's
AVX2 build (target/avx2/release/examples/bench, `--no-default-features`) against PyTorch with
`ATEN_CPU_CAPABILITY=avx2`, oneDNN capped by `ONEDNN_MAX_CPU_ISA=AVX2` and OpenBLAS on its
Haswell (AVX2) kernels (`OPENBLAS_CORETYPE=Haswell`).

The table's header describes the machine (CPU model, cores, frequency, the ISA each side
used) and the `gemm` crate's f32 peak; ResNet18's line says what share of that peak its
convolutions reach.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKLOADS = ["lenet", "resnet18", "mobilenet_v2"] + [f"resnext_g{g}" for g in (1, 2, 4, 8, 32, 64)] + ["data", "data_aug"]


def run(cmd, extra_env=None):
    env = dict(os.environ)
    # Debian's OpenBLAS is current: the workaround variables set on some machines only slow it.
    env.pop("OPENBLAS_CORETYPE", None)
    env.pop("OPENBLAS_L2_SIZE", None)
    env.update(extra_env or {})
    out = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def cpuinfo():
    """`/proc/cpuinfo`'s first processor as a dict, and its flags as a set."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                k, _, v = line.partition(":")
                info[k.strip()] = v.strip()
    except OSError:
        pass
    return info, set(info.get("flags", "").split())


def l2_size():
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index2/size") as f:
            return f.read().strip() + " per core"
    except OSError:
        return "?"


def max_mhz():
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") as f:
            return f"{int(f.read()) / 1000:.0f} MHz max"
    except OSError:
        return None


def onednn_isa(env):
    """The ISA oneDNN (PyTorch's convolutions) dispatches to, from its verbose mode."""
    code = "import torch; torch.nn.functional.conv2d(torch.randn(2, 16, 16, 16), torch.randn(16, 16, 3, 3))"
    out = subprocess.run(["/usr/bin/python3", "-c", code], env={**os.environ, **env, "ONEDNN_VERBOSE": "1"},
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        if ",isa:" in line:
            return line.split(",isa:", 1)[1]
    return "unknown"


def machine(a, torch_env, ours_isa, torch_isa):
    info, flags = cpuinfo()
    simd = [f for f in ("avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "avx2", "fma") if f in flags]
    freq = ", ".join(x for x in (f"{float(info['cpu MHz']):.0f} MHz reported" if "cpu MHz" in info else None, max_mhz()) if x)
    return (f"{datetime.date.today()} on {platform.node()}: {info.get('model name', platform.processor() or platform.machine())} "
            f"(family {info.get('cpu family', '?')}, model {info.get('model', '?')}), {os.cpu_count()} cores, {freq or 'frequency unknown'}, "
            f"L2 {l2_size()}; CPU flags: {' '.join(simd)}\n"
            f"ablate: own kernels {ours_isa['isa']}, gemm crate {ours_isa['gemm_isa']}; PyTorch: ATen {torch_isa}, "
            f"oneDNN {onednn_isa(torch_env)}\n{a.rounds} rounds, median of {a.steps} steps each; convolution plan: "
            f"ABLATE_TUNE={os.environ.get('ABLATE_TUNE', 'on')}\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--isa", choices=["native", "avx2"], default="native")
    ap.add_argument("workloads", nargs="*", default=WORKLOADS)
    a = ap.parse_args()
    if a.isa == "avx2":
        ours = os.path.join(ROOT, "target/avx2/release/examples/bench")
        # OpenBLAS (PyTorch's matmul: the linear layers) picks its kernels by CPU model, not by
        # ATen's setting: Haswell's are its AVX2 ones.
        torch_env = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "OPENBLAS_CORETYPE": "Haswell"}
    else:
        ours = os.path.join(ROOT, "target/release/examples/bench")
        torch_env = {}
    peak = {"ablate": run([ours, "peak", "5"]), "pytorch": run(["/usr/bin/python3", "bench/torch_ref.py", "peak", "5"], torch_env)}
    results = {w: {"ablate": [], "pytorch": []} for w in a.workloads}
    for r in range(a.rounds):
        for w in a.workloads:
            sides = [("ablate", [ours, w, str(a.steps)], {}),
                     ("pytorch", ["/usr/bin/python3", "bench/torch_ref.py", w, str(a.steps)], torch_env)]
            if r % 2:
                sides.reverse()
            for name, cmd, env in sides:
                results[w][name].append(run(cmd, env))
    print(machine(a, torch_env, peak["ablate"], peak["pytorch"]["isa"]))
    print(f"f32 matrix product 2048^3 on all cores: gemm crate {peak['ablate']['gflops']:.0f} GFLOP/s (ablate's peak), "
          f"PyTorch torch.mm {peak['pytorch']['gflops']:.0f} GFLOP/s\n")
    # The ratio of the medians, and the lowest and highest of the rounds' own ratios (each
    # round runs both sides back to back): on a shared VM whose speed drifts from minute to
    # minute the spread says how far one table can be read.
    print("| workload | ablate img/s | PyTorch img/s | ratio | per round | ablate ms/step | PyTorch ms/step | ablate peak RSS MB | PyTorch peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for w in a.workloads:
        med = {s: {k: statistics.median(x[k] for x in results[w][s]) for k in ("img_per_s", "ms_per_step", "peak_rss_mb")} for s in ("ablate", "pytorch")}
        o, t = med["ablate"], med["pytorch"]
        rounds = [x["img_per_s"] / y["img_per_s"] for x, y in zip(results[w]["ablate"], results[w]["pytorch"])]
        print(f"| {w} | {o['img_per_s']:.1f} | {t['img_per_s']:.1f} | {o['img_per_s'] / t['img_per_s']:.2f}x | "
              f"{min(rounds):.2f}-{max(rounds):.2f} | "
              f"{o['ms_per_step']:.0f} | {t['ms_per_step']:.0f} | {o['peak_rss_mb']:.0f} | {t['peak_rss_mb']:.0f} |")
    if "resnet18" in a.workloads:
        gflop = results["resnet18"]["ablate"][0]["conv_gflop_per_img"]
        for side in ("ablate", "pytorch"):
            rate = statistics.median(x["img_per_s"] for x in results["resnet18"][side]) * gflop
            print(f"\nResNet18 {side}: {rate:.0f} GFLOP/s in its convolutions alone ({gflop:.1f} GFLOP per training image), "
                  f"{100 * rate / peak['ablate']['gflops']:.0f} % of the gemm crate's peak", end="")
        print()


if __name__ == "__main__":
    main()
