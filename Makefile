# ablate: `make exp NAME=lenet` trains an experiment, `make test` runs the whole test suite.
CARGO ?= cargo
PYTHON ?= python3
NAME ?= lenet
# Space-separated key=value overrides: make exp NAME=lenet SET="optimizer.lr=3e-4 train.epochs=5"
SET ?=
# CUDA=1 builds with candle's CUDA backend.
FEATURES := $(if $(CUDA),--features cuda,)
BIN := target/release/ablate
VENV := .venv
SETS := $(foreach s,$(SET),--set $(s))

.PHONY: build exp sweep check test parity torch lint bench bench-avx2 tensorboard demo-data clean-venv check-cuda build-cuda gpu-check slurm-test

build:
	$(CARGO) build --release $(FEATURES)

exp: build
	$(BIN) run experiments/$(NAME).toml $(SETS)

# Every experiment in experiments/ (but _*.toml) in one run folder with one summary: the
# course's comparison table. resnet18 needs its ImageNet weights (see its file).
EXPERIMENTS ?= experiments
sweep: build
	$(BIN) run $(EXPERIMENTS) $(SETS)

check: build
	$(BIN) check experiments/$(NAME).toml $(SETS)

# TensorBoard (for `make tensorboard` and for the test that reads our event files with it),
# in a virtual environment of its own.
$(VENV)/.tensorboard-installed:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check tensorboard
	touch $@

# timm (the mixup, cutmix and EMA tests compare against its own classes) for Debian's PyTorch:
# a virtual environment that sees /usr/bin/python3's packages, timm installed without its
# dependencies (torch, torchvision: Debian's).
TIMM_VENV := .venv-timm
$(TIMM_VENV)/.timm-installed: | torch
	/usr/bin/python3 -m venv --system-site-packages $(TIMM_VENV)
	$(TIMM_VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps timm==0.9.16
	touch $@

# Tests run with optimised code (candle unoptimised is far too slow to train even a tiny net);
# --include-ignored adds the test that needs TensorBoard's Python reader. The parity tests
# (tests/suite/parity.rs) compare against Debian's PyTorch: see `torch` below.
test: $(VENV)/.tensorboard-installed torch $(TIMM_VENV)/.timm-installed
	TB_PYTHON=$(CURDIR)/$(VENV)/bin/python TIMM_PYTHON=$(CURDIR)/$(TIMM_VENV)/bin/python \
	  $(CARGO) test --release -- --include-ignored

# The parity tests' larger networks (ResNet18 up to 224x224, LeNet at 256, ResNeXt50 at 96):
# about 10 minutes on 2 cores.
# `ablate slurm`'s script on a real one-node Slurm (needs root: installs and starts slurm-wlm and
# munge on localhost); a requeued and a cancelled task end complete. About 4 minutes.
slurm-test: torch
	bash tests/slurm/run.sh

parity: torch
	ABLATE_PARITY_NETS=full $(CARGO) test --release --test suite parity:: -- --nocapture

# Debian's python3-torch and python3-torchvision (the parity tests) and python3-scipy (the
# statistics tests) for /usr/bin/python3, and graphviz (`ablate check --png` draws with its
# `dot`): installed with apt when missing and running as root (CI), else a message saying
# what to install.
torch:
	@{ /usr/bin/python3 -c 'import torch, torchvision, scipy' 2>/dev/null && command -v dot >/dev/null; } || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-torch python3-torchvision python3-scipy graphviz >/dev/null; \
	  else \
	    echo "the tests need PyTorch and SciPy for /usr/bin/python3 and Graphviz: sudo apt-get install python3-torch python3-torchvision python3-scipy graphviz" >&2; exit 1; \
	  fi; }

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

# Speed against PyTorch on the same work (not a test): needs Debian's python3-torch,
# python3-torchvision and libopenblas0-pthread (sudo apt-get install them). ~10 minutes.
bench:
	$(CARGO) build --release --example bench
	/usr/bin/python3 bench/run.py $(BENCH_ARGS)

# The same on the AVX2 build against PyTorch capped at AVX2: what a CPU without AVX-512 gets.
bench-avx2:
	CARGO_TARGET_DIR=target/avx2 $(CARGO) build --release --example bench --no-default-features
	/usr/bin/python3 bench/run.py --isa avx2 $(BENCH_ARGS)

# CUDA without a GPU: type-check with --features cuda (CUDA 13.4 from NVIDIA's PyPI wheels into
# .cuda-venv; about 10 minutes the first time), or build binaries for a GPU machine
# (target/cuda/dist), linked against stubs of the CUDA libraries. See the README.
check-cuda:
	scripts/cuda-build.sh check

build-cuda:
	scripts/cuda-build.sh build

# On a GPU machine, with target/cuda/dist from build-cuda: bench/gpu-check.sh's four checks.
gpu-check:
	bench/gpu-check.sh target/cuda/dist

tensorboard: $(VENV)/.tensorboard-installed
	$(VENV)/bin/tensorboard --logdir runs

# Rebuilds data/demo from Debian's dataset-fashion-mnist package.
demo-data:
	$(PYTHON) scripts/make_demo_data.py /usr/share/datasets/fashion-mnist data/demo

clean-venv:
	rm -rf $(VENV) $(TIMM_VENV)
