#!/usr/bin/env bash
# The GPU check (issue 6), for a machine with an NVIDIA GPU, its driver and CUDA 13 libraries,
# but no Rust and no network. Build the binaries on any Linux machine first:
#   scripts/cuda-build.sh build        # -> target/cuda/dist/{ablate,bench}
# then, in the project folder on the GPU machine:
#   bench/gpu-check.sh [target/cuda/dist] [output folder]
# (target/cuda/dist.tar.xz is unpacked into target/cuda/dist when only it was carried.)
# It (1) trains the demo LeNet for one epoch on cuda:0 and checks the loss fell below chance,
# (2) checks CPU and GPU forward passes of ResNet18 agree to 1e-3 (same weights and batch),
# (3) times ResNet18 training steps at 224x224, batch 64, in f32 and bf16, and the ResNeXt
# stage of the groups sweep at g = 1, 4, 32, 64, and (4) prints the GPU memory used.
# Under 5 minutes on an H200. Exit status: the number of failed checks.
set -uo pipefail
cd "$(dirname "$0")/.."
dist=${1:-target/cuda/dist}
out=${2:-${OUT:-/tmp/ablate-gpu-check}}
mkdir -p "$out"
failed=0
if [ ! -x "$dist/ablate" ] && [ -f "$dist.tar.xz" ]; then
  mkdir -p "$dist" && tar -C "$dist" -xJf "$dist.tar.xz"
fi
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }

# CUDA's libraries: the usual install folders, then whatever ldconfig knows.
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d"
done
# Last: the CUDA runtime the binaries were linked with, if the machine's is missing.
export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$(realpath "$dist")"
echo "== machine"
date -u
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
nvcc --version 2>/dev/null | tail -2
echo "== libraries the binaries need"
if ldd "$dist/ablate" | grep -E "cuda|nvrtc|cublas|curand" ; then :; fi
if ldd "$dist/ablate" | grep -q "not found"; then
  ldd "$dist/ablate" | grep "not found"
  echo "missing libraries: put CUDA 13's lib64 on LD_LIBRARY_PATH"
  exit 99
fi

# GPU memory in use, sampled every 200 ms while the checks run.
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$out/memory.log" 2>/dev/null &
smi=$!
trap 'kill $smi 2>/dev/null || true' EXIT

echo "== (1) LeNet on the demo data, one epoch on cuda:0"
t0=$(date +%s)
if "$dist/ablate" run experiments/lenet.toml --device cuda:0 --set train.epochs=1 --runs-dir "$out/runs" > "$out/lenet.out" 2>&1; then
  run=$(tail -1 "$out/lenet.out")
  cat "$run/metrics.csv"
  # Two classes: chance is a loss of ln 2 = 0.693 and an accuracy of 0.5.
  # (On the CPU, same seed, `make exp NAME=lenet` epoch 1: train loss 0.660, val loss 0.513,
  # val acc 0.780.)
  awk -F, 'NR == 2 { ok = ($2 < 0.69 && $4 < 0.65 && $5 > 0.65); print "train loss " $2 ", val loss " $4 " (chance 0.693), val acc " $5; exit ok ? 0 : 1 }' "$run/metrics.csv" ||
    fail "LeNet's loss did not fall below chance"
  echo "took $(( $(date +%s) - t0 )) s"
  # The GPU-trained checkpoint predicts on the CPU (checkpoints are device-independent).
  if "$dist/ablate" predict "$run" --device cpu --out "$out/submission-cpu.csv" > /dev/null; then
    same=$(paste -d, "$run/submission.csv" "$out/submission-cpu.csv" | awk -F, 'NR > 1 { n++; s += ($2 == $4) } END { printf "%.4f", s / n }')
    echo "CPU predictions from the GPU checkpoint agree with the GPU's on a fraction $same of the test images"
    awk -v s="$same" 'BEGIN { exit (s >= 0.99) ? 0 : 1 }' || fail "CPU and GPU predictions differ on more than 1 %"
  else
    fail "predicting on the CPU from the GPU checkpoint"
  fi
else
  tail -20 "$out/lenet.out"; fail "LeNet training on cuda:0"
fi

echo "== (2) ResNet18 forward, CPU against cuda:0"
"$dist/bench" agree --device cuda:0 --batch 8 || fail "CPU and GPU forward passes differ by more than 1e-3"

echo "== (3) training throughput on cuda:0"
"$dist/bench" resnet18 10 --device cuda:0 --batch 64 || fail "resnet18 f32"
"$dist/bench" resnet18 10 --device cuda:0 --batch 64 --bf16 || fail "resnet18 bf16"
for g in 1 4 32 64; do
  "$dist/bench" "resnext_g$g" 10 --device cuda:0 || fail "resnext stage g=$g"
done

echo "== (4) GPU memory"
kill $smi 2>/dev/null || true
sort -n "$out/memory.log" | tail -1 | awk '{print "peak memory used during the checks: " $1 " MiB"}'
nvidia-smi --query-gpu=memory.used,memory.total --format=csv
echo "== $failed failed check(s)"
exit "$failed"
