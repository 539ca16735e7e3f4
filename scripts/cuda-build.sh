#!/usr/bin/env bash
# ablate with `--features cuda` on a machine without a GPU or a CUDA install:
#   scripts/cuda-build.sh check   type-checks everything (lib, bin, tests, examples)
#   scripts/cuda-build.sh build   builds and links target/cuda/dist/{ablate,bench} for a GPU machine
#                                 (and target/cuda/dist.tar.xz, the same compressed)
# The CUDA 13.4 toolkit (nvcc, cicc, headers) comes from NVIDIA's PyPI wheels into .cuda-venv.
# Linking needs libcuda, libnvrtc, libcurand, libcublas and libcublasLt, which only a GPU
# machine has: `build` links against stub libraries generated from cudarc's own declarations
# (every function, no body) under the real sonames, so the binary loads the real libraries on
# the GPU machine (driver >= CUDA 13.4's, toolkit 13.x libraries on LD_LIBRARY_PATH; the
# runtime, libcudart.so.13, is copied next to the binaries).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-check}
venv=.cuda-venv
if [ ! -f "$venv/.installed" ]; then
  ${PYTHON:-python3} -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "nvidia-cuda-nvcc==13.4.*" "nvidia-cuda-crt==13.4.*" "nvidia-cuda-runtime==13.4.*" \
    "nvidia-nvvm==13.4.*" "nvidia-cuda-cccl==13.3.5.0.6"
  touch "$venv/.installed"
fi
cuda=$(echo "$PWD/$venv"/lib/python3*/site-packages/nvidia/cu13)
export PATH="$cuda/bin:$PATH" CUDA_HOME="$cuda" CUDA_PATH="$cuda" CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda}

stubs() {
  local cudarc out="$cuda/lib/stubs"
  cudarc=$(cargo metadata --format-version 1 --features cuda |
    python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc").rsplit("/", 1)[0])')
  mkdir -p "$out"
  # module of cudarc, library, soname (CUDA 13)
  while read -r module lib soname; do
    grep -oE '^\s+fn [A-Za-z0-9_]+\(' "$cudarc/src/$module/sys/mod.rs" | sed -E 's/^\s+fn ([A-Za-z0-9_]+)\(/void \1(void) {}/' | sort -u > "$out/$lib.c"
    gcc -shared -fPIC -o "$out/lib$lib.so" -Wl,-soname,"$soname" "$out/$lib.c"
  done <<'LIBS'
driver cuda libcuda.so.1
nvrtc nvrtc libnvrtc.so.13
curand curand libcurand.so.10
cublas cublas libcublas.so.13
cublaslt cublasLt libcublasLt.so.13
LIBS
  # candle-kernels' static kernels also need the CUDA runtime: the wheel's real library.
  ln -sf ../libcudart.so.13 "$out/libcudart.so"
}

case "$mode" in
  check)
    cargo check --release --features cuda --all-targets
    ;;
  build)
    stubs
    # No debug info: the binaries travel to the GPU machine (64 MiB in all).
    CARGO_PROFILE_RELEASE_DEBUG=0 cargo build --release --features cuda --bin ablate --example bench
    dist="$CARGO_TARGET_DIR/dist"
    mkdir -p "$dist"
    for f in "$CARGO_TARGET_DIR/release/ablate" "$CARGO_TARGET_DIR/release/examples/bench"; do
      strip -o "$dist/$(basename "$f")" "$f"
    done
    # The runtime library it was linked with travels along (bench/gpu-check.sh falls back to it).
    cp -L "$cuda/lib/libcudart.so.13" "$dist/"
    # ~120 MB (candle's kernels ride in each binary) compress to ~16 MB for the trip.
    tar -C "$dist" -cJf "$CARGO_TARGET_DIR/dist.tar.xz" ablate bench libcudart.so.13
    ls -l "$dist" "$CARGO_TARGET_DIR/dist.tar.xz"
    echo "needs on the GPU machine:"; readelf -d "$dist/ablate" | grep NEEDED
    ;;
  *)
    echo "usage: $0 check|build" >&2
    exit 2
    ;;
esac
