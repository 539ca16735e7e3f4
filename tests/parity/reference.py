"""Reference tensors for ablate's differential tests against PyTorch (tests/suite/parity.rs).

    /usr/bin/python3 tests/parity/reference.py ops OUT_DIR
    /usr/bin/python3 tests/parity/reference.py nets OUT_DIR [--full]
    /usr/bin/python3 tests/parity/reference.py check CASE.safetensors ABLATE.safetensors

`nets` writes whole-network cases (weights, a batch, the optimizers to step) for the test
to run through ablate; `check` then judges ablate's gradients and one step of each
optimizer against PyTorch (see nets.py).

writes OUT_DIR/ops.json (the cases) and OUT_DIR/ops.safetensors: for every case its f32
inputs and, for each output (forward and gradients), PyTorch's result in float64 (the truth,
computed from the same f32 inputs) and in float32 (the yardstick: ablate may be at most a
small factor further from float64 than PyTorch float32 is).

Inputs avoid the places where an op is discontinuous, so that a float32 rounding cannot
legitimately flip a decision there: pre-activations of a ReLU stay at least MARGIN from zero
and max-pool windows have no near-ties (the whole-network tests treat such flips
explicitly).
"""
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402

MARGIN = 1e-4

# (n, c, h, w, o, k, stride, padding, dilation, groups): a table that crosses every threshold
# of the kernel plan (src/ops/conv/plan.rs): the implicit GEMM's 100-pixel floor (99, 100,
# 110 pixels) and its 16-channel multiples, the direct kernels' 64-column block and channel
# limits, the batched GEMM's 1024-pixel ceiling, batch 1 (never batched), pointwise 1x1,
# grouped and depthwise, dilation, odd and tiny maps.
CONV_CASES = [
    # implicit, stride 1: 3x3 at 10x10 (100 px), 10x11 (110), 9x11 (99: just below)
    (2, 16, 10, 10, 16, 3, 1, 1, 1, 1),
    (2, 16, 10, 11, 32, 3, 1, 1, 1, 1),
    (2, 16, 9, 11, 16, 3, 1, 1, 1, 1),
    # implicit: 5x5 / padding 2, 48 and 80 outputs (weight-gradient tile tails), batch 1
    (3, 16, 12, 13, 48, 5, 1, 2, 1, 1),
    (1, 32, 12, 12, 80, 3, 1, 1, 1, 1),
    (1, 16, 16, 16, 64, 3, 1, 0, 1, 1),
    # Winograd F(2x2, 3x3) on the ladder (3x3 stride 1, 32+ channels, 100+ pixels): an odd map
    # (half tiles at the right and bottom), padding 0 and 2, and ResNet18's layer3 (256
    # channels: the longest reductions of its 3x3s on the ladder)
    (2, 32, 11, 13, 48, 3, 1, 1, 1, 1),
    (1, 32, 12, 12, 32, 3, 1, 0, 1, 1),
    (1, 32, 10, 11, 32, 3, 1, 2, 1, 1),
    (2, 256, 14, 14, 256, 3, 1, 1, 1, 1),
    # implicit, small planes folded into one run per channel (7x7 as ResNet18's last stage,
    # 5x5 in 2 groups)
    (4, 32, 7, 7, 32, 3, 1, 1, 1, 1),
    (3, 64, 5, 5, 64, 3, 1, 1, 1, 2),
    # folded with rows of whole vectors (16 images side by side): the tiles of the first and
    # last rows leave out the kernel rows that read only padding (one of 3, two of 5)
    (16, 16, 7, 7, 16, 3, 1, 1, 1, 1),
    (16, 16, 6, 6, 16, 5, 1, 2, 1, 1),
    # implicit, grouped (2 and 4 groups of 16+) and stride 2 (odd, even sizes; 7x7 stem-like)
    (2, 64, 12, 12, 64, 3, 1, 1, 1, 2),
    (2, 64, 12, 12, 128, 3, 1, 1, 1, 4),
    (1, 16, 21, 23, 16, 3, 2, 1, 1, 1),
    (2, 32, 22, 22, 32, 3, 2, 1, 1, 2),
    (1, 16, 25, 25, 32, 7, 2, 3, 1, 1),
    # stride 2 on even planes, over the input's four phases: 7x7 / padding 3 (a stem's window),
    # small outputs folded (7x7 from 4 images: rows across; from 16: rows of whole vectors,
    # the first row's tiles leaving out the taps above the image)
    (1, 16, 24, 24, 32, 7, 2, 3, 1, 1),
    (4, 32, 14, 14, 32, 3, 2, 1, 1, 1),
    (16, 16, 14, 14, 16, 3, 2, 1, 1, 1),
    # channels not multiples of 16 (im2col), RGB stems, 7x7 stride 2 padding 3
    (2, 3, 32, 32, 16, 7, 2, 3, 1, 1),
    (2, 3, 31, 31, 8, 3, 1, 1, 1, 1),
    (2, 20, 12, 12, 24, 3, 1, 1, 1, 1),
    # direct (LeNet): stride 1, no padding, few channels, 64-column blocks and tails
    (2, 3, 12, 70, 6, 5, 1, 0, 1, 1),
    (2, 6, 9, 68, 16, 5, 1, 0, 1, 1),
    (1, 3, 8, 64, 4, 3, 1, 0, 1, 1),
    (2, 4, 7, 90, 32, 3, 1, 0, 1, 1),
    # batched GEMM (maps under 1024 px, batch > 1) and per sample (32x32 = 1024 px, batch 1)
    (4, 64, 4, 4, 64, 3, 1, 1, 1, 1),
    (4, 64, 2, 2, 128, 3, 2, 1, 1, 1),
    (8, 32, 1, 1, 32, 1, 1, 0, 1, 1),
    (2, 8, 32, 32, 8, 3, 1, 1, 1, 1),
    (1, 8, 31, 31, 8, 3, 1, 1, 1, 1),
    # pointwise 1x1 (per sample and batched), strided 1x1 downsample
    (2, 32, 33, 32, 16, 1, 1, 0, 1, 1),
    (4, 32, 8, 8, 64, 1, 2, 0, 1, 1),
    (2, 64, 16, 16, 32, 1, 1, 0, 1, 4),
    # depthwise and 32 groups, dilation 2, padding 0..3, stride 3
    (2, 32, 11, 11, 32, 3, 1, 1, 1, 32),
    (2, 64, 10, 10, 64, 3, 2, 1, 1, 32),
    (2, 8, 12, 12, 8, 3, 1, 2, 2, 1),
    (1, 4, 13, 13, 6, 5, 3, 3, 1, 2),
    (2, 16, 10, 10, 16, 3, 1, 3, 1, 1),
    # the depthwise kernels: stride 1 and 2 on odd and even sizes, depth multiplier 2, 5x5 with
    # padding 2 at stride 2, dilation 2, stride 3 without padding, a 1x1 map
    (2, 24, 14, 14, 24, 3, 1, 1, 1, 24),
    (2, 16, 13, 15, 16, 3, 2, 1, 1, 16),
    (2, 8, 12, 11, 16, 3, 1, 1, 1, 8),
    (1, 8, 11, 11, 8, 5, 2, 2, 1, 8),
    (2, 6, 12, 12, 6, 3, 1, 2, 2, 6),
    (2, 4, 9, 10, 4, 3, 3, 0, 1, 4),
    (4, 16, 1, 1, 16, 3, 1, 1, 1, 16),
]

# (n, c, h, w, kind, kernel, stride, padding)
POOL_CASES = [
    (2, 3, 8, 8, "max", 2, 2, 0),
    (2, 4, 9, 11, "max", 3, 2, 1),
    (1, 2, 7, 7, "max", 3, 1, 1),
    (2, 3, 8, 10, "avg", 2, 2, 0),
    (2, 3, 9, 9, "avg", 3, 2, 1),
]

# (n, c, h, w, relu): BatchNorm in training mode, alone and with the fused ReLU; (n, c) for
# BatchNorm after a linear layer.
BN_CASES = [(4, 8, 5, 6, False), (4, 8, 5, 6, True), (16, 64, 2, 2, True), (2, 16, 17, 17, True), (6, 5, 0, 0, True),
            (4, 8, 5, 6, "relu6"), (2, 16, 17, 17, "relu6")]

ADD_RELU_CASES = [(2, 8, 6, 6), (3, 64, 4, 4)]


def uniform(gen, shape, lo=-1.0, hi=1.0):
    return torch.rand(shape, generator=gen, dtype=torch.float32) * (hi - lo) + lo


def both(fn, inputs):
    """fn on the f32 inputs in float64 and float32: {name: (r64, r32)}."""
    out = {}
    for dt, slot in [(torch.float64, 0), (torch.float32, 1)]:
        xs = {k: v.to(dt).requires_grad_(v.is_floating_point() and k not in ("dy",)) for k, v in inputs.items()}
        res = fn(xs)
        for k, v in res.items():
            out.setdefault(k, [None, None])[slot] = v.detach().to(torch.float64)
    return out


def conv_case(gen, case):
    n, c, h, w, o, k, s, p, d, g = case
    inputs = {"x": uniform(gen, (n, c, h, w)), "w": uniform(gen, (o, c // g, k, k)) / (c // g * k * k) ** 0.5}
    oh, ow = (h + 2 * p - d * (k - 1) - 1) // s + 1, (w + 2 * p - d * (k - 1) - 1) // s + 1
    inputs["dy"] = uniform(gen, (n, o, oh, ow))

    def fn(t):
        y = F.conv2d(t["x"], t["w"], stride=s, padding=p, dilation=d, groups=g)
        dx, dw = torch.autograd.grad((y * t["dy"]).sum(), [t["x"], t["w"]])
        return {"y": y, "dx": dx, "dw": dw}

    meta = dict(zip(["n", "c", "h", "w", "o", "k", "stride", "padding", "dilation", "groups"], case))
    return {"kind": "conv", **meta}, inputs, both(fn, inputs)


def distinct(gen, shape):
    """Values in [-1, 1) with no two within 1e-3 of each other per plane: no near-ties."""
    n = 1
    for s in shape:
        n *= s
    plane = shape[-1] * shape[-2]
    vals = torch.cat([torch.randperm(plane, generator=gen) for _ in range(n // plane)]).to(torch.float32)
    return (vals / plane * 2 - 1 + uniform(gen, (n,), 0, 1e-4)).reshape(shape)


def pool_case(gen, case):
    n, c, h, w, kind, k, s, p = case
    inputs = {"x": distinct(gen, (n, c, h, w))}
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    inputs["dy"] = uniform(gen, (n, c, oh, ow))

    def fn(t):
        pool = F.max_pool2d if kind == "max" else F.avg_pool2d
        y = pool(t["x"], k, s, p)
        (dx,) = torch.autograd.grad((y * t["dy"]).sum(), [t["x"]])
        return {"y": y, "dx": dx}

    return dict(kind="pool", n=n, c=c, h=h, w=w, pool=kind, k=k, stride=s, padding=p), inputs, both(fn, inputs)


def bn_case(gen, case):
    """relu: False, True (BatchNorm + ReLU) or "relu6" (BatchNorm + ReLU6, its weights large
    enough that some outputs pass 6)."""
    n, c, h, w, relu = case
    shape = (n, c, h, w) if h else (n, c)
    inputs = {
        "x": uniform(gen, shape, -2, 3),
        "weight": uniform(gen, (c,), 3.0, 4.5) if relu == "relu6" else uniform(gen, (c,), 0.5, 1.5),
        "bias": uniform(gen, (c,), -0.5, 0.5),
        "running_mean": uniform(gen, (c,), -0.2, 0.2),
        "running_var": uniform(gen, (c,), 0.5, 1.5),
        "dy": uniform(gen, shape),
    }
    kinks = {False: (), True: (0.0,), "relu6": (0.0, 6.0)}[relu]
    # Push the few pre-activations near a kink away from it (moving the batch statistics by
    # far less than the margin), until none is left.
    view = (1, c) + (1,) * (len(shape) - 2)
    for k in kinks:
        for _ in range(20):
            x = inputs["x"].double()
            pre = F.batch_norm(x, None, None, inputs["weight"].double(), inputs["bias"].double(), True)
            near = (pre - k).abs() < MARGIN
            if not near.any():
                break
            dims = [0] + list(range(2, len(shape)))
            slope = inputs["weight"].double().view(view) / (x.var(dims, unbiased=False, keepdim=True) + 1e-5).sqrt()
            push = torch.where(pre >= k, 1.0, -1.0) * 3 * MARGIN / slope
            inputs["x"] = torch.where(near, x + push, x).float()
        else:
            raise RuntimeError(f"could not keep every pre-activation {MARGIN} from {k} for {case}")
    if relu == "relu6":
        pre = F.batch_norm(inputs["x"].double(), None, None, inputs["weight"].double(), inputs["bias"].double(), True)
        assert (pre > 6).any() and (pre < 0).any(), "the ReLU6 case must clip at both ends"

    def fn(t):
        rm, rv = t["running_mean"].detach().clone(), t["running_var"].detach().clone()
        y = F.batch_norm(t["x"], rm, rv, t["weight"], t["bias"], training=True, momentum=0.1, eps=1e-5)
        if relu == "relu6":
            y = F.relu6(y)
        elif relu:
            y = F.relu(y)
        dx, dwt, db = torch.autograd.grad((y * t["dy"]).sum(), [t["x"], t["weight"], t["bias"]])
        return {"y": y, "dx": dx, "dweight": dwt, "dbias": db, "new_running_mean": rm, "new_running_var": rv}

    return dict(kind="batch_norm", n=n, c=c, h=h, w=w, relu=relu), inputs, both(fn, inputs)


def add_relu_case(gen, case):
    shape = case
    inputs = {"a": uniform(gen, shape), "b": uniform(gen, shape)}
    total = inputs["a"].double() + inputs["b"].double()
    push = torch.where(total >= 0, 1.0, -1.0) * 3 * MARGIN
    inputs["a"] = torch.where(total.abs() < MARGIN, inputs["a"].double() + push, inputs["a"].double()).float()
    inputs["dy"] = uniform(gen, shape)

    def fn(t):
        y = F.relu(t["a"] + t["b"])
        da, db = torch.autograd.grad((y * t["dy"]).sum(), [t["a"], t["b"]])
        return {"y": y, "da": da, "db": db}

    n, c, h, w = shape
    return dict(kind="add_relu", n=n, c=c, h=h, w=w), inputs, both(fn, inputs)


ACT_CASES = [(a, (2, 6, 5, 7)) for a in ("sigmoid", "silu", "gelu", "hardswish", "hardsigmoid", "relu6")]
# Where each activation's gradient jumps: inputs are kept MARGIN away.
KINKS = {"hardswish": (-3.0, 3.0), "hardsigmoid": (-3.0, 3.0), "relu6": (0.0, 6.0)}


def act_case(gen, case):
    name, shape = case
    x = uniform(gen, shape, -8.0, 8.0).double()
    for k in KINKS.get(name, ()):
        push = torch.where(x >= k, 1.0, -1.0) * 3 * MARGIN
        x = torch.where((x - k).abs() < MARGIN, x + push, x)
    inputs = {"x": x.float(), "dy": uniform(gen, shape)}
    fn_of = {"sigmoid": torch.sigmoid, "silu": F.silu, "gelu": F.gelu, "hardswish": F.hardswish,
             "hardsigmoid": F.hardsigmoid, "relu6": F.relu6}

    def fn(t):
        y = fn_of[name](t["x"])
        (dx,) = torch.autograd.grad((y * t["dy"]).sum(), [t["x"]])
        return {"y": y, "dx": dx}

    n, c, h, w = shape
    return dict(kind="activation", act=name, n=n, c=c, h=h, w=w), inputs, both(fn, inputs)


ADAPTIVE_CASES = [((2, 3, 5, 5), (3, 3)), ((2, 3, 8, 6), (2, 3)), ((2, 4, 7, 7), (1, 1)), ((1, 2, 7, 9), (4, 5))]


def adaptive_case(gen, case):
    shape, out = case
    inputs = {"x": uniform(gen, shape)}
    n, c, h, w = shape
    inputs["dy"] = uniform(gen, (n, c, *out))

    def fn(t):
        y = F.adaptive_avg_pool2d(t["x"], out)
        (dx,) = torch.autograd.grad((y * t["dy"]).sum(), [t["x"]])
        return {"y": y, "dx": dx}

    return dict(kind="adaptive_avg_pool", n=n, c=c, h=h, w=w, oh=out[0], ow=out[1]), inputs, both(fn, inputs)


MERGE_CASES = [(2, 4, 5, 6)]


def merge_case(gen, case):
    """The graph a squeeze-excite and a dense block make: g = mean_hw(x), m = x * g,
    s = sigmoid(x), y = cat([m, s], channels) + cat([s, m], channels)."""
    inputs = {"x": uniform(gen, case)}
    n, c, h, w = case
    inputs["dy"] = uniform(gen, (n, 2 * c, h, w))

    def fn(t):
        x = t["x"]
        m = x * x.mean((2, 3))[:, :, None, None]
        s = torch.sigmoid(x)
        y = torch.cat([m, s], 1) + torch.cat([s, m], 1)
        (dx,) = torch.autograd.grad((y * t["dy"]).sum(), [x])
        return {"y": y, "dx": dx}

    return dict(kind="merges", n=n, c=c, h=h, w=w), inputs, both(fn, inputs)


def ops(out_dir):
    gen = torch.Generator().manual_seed(20261202)
    cases, tensors = [], {}
    builders = (
        [(conv_case, c) for c in CONV_CASES]
        + [(pool_case, c) for c in POOL_CASES]
        + [(bn_case, c) for c in BN_CASES]
        + [(add_relu_case, c) for c in ADD_RELU_CASES]
        + [(act_case, c) for c in ACT_CASES]
        + [(adaptive_case, c) for c in ADAPTIVE_CASES]
        + [(merge_case, c) for c in MERGE_CASES]
    )
    for i, (build, case) in enumerate(builders):
        meta, inputs, outputs = build(gen, case)
        meta["id"] = i
        meta["outputs"] = sorted(outputs)
        cases.append(meta)
        for k, v in inputs.items():
            tensors[f"{i}.in.{k}"] = v
        for k, (r64, r32) in outputs.items():
            tensors[f"{i}.f64.{k}"] = r64
            tensors[f"{i}.f32.{k}"] = r32
    os.makedirs(out_dir, exist_ok=True)
    st.save(os.path.join(out_dir, "ops.safetensors"), tensors)
    with open(os.path.join(out_dir, "ops.json"), "w") as f:
        json.dump(cases, f, indent=1)


if __name__ == "__main__":
    torch.set_num_threads(2)
    what = sys.argv[1]
    if what == "ops":
        ops(sys.argv[2])
    else:
        import nets

        if what == "nets":
            nets.write_cases(sys.argv[2], full="--full" in sys.argv[3:])
        elif what == "check":
            sys.exit(0 if nets.check(sys.argv[2], sys.argv[3]) else 1)
        else:
            sys.exit(f"unknown command {what}: expected ops, nets or check")
