"""Whole-network parity: one training step of real networks, ablate against PyTorch.

`write_cases` writes, per case, random weights (BatchNorm's affine parameters and running
statistics randomised too), a batch and the optimizers to step; the Rust test runs ablate on
it and writes ablate's gradients, BatchNorm buffers and, for each optimizer, the update and
the optimizer state after one step. `check` compares those with PyTorch in float64.

ReLU and max-pool make a network's gradient discontinuous: where a pre-activation lies within
float32 rounding of zero (or two max-pool candidates within rounding of each other), a
float32 computation may legitimately take the other side, and the gradients below then
differ from float64's by far more than rounding (measured: 4e-2 relative on ResNet18 at
64x64, from one ReLU input of -3e-6; 1e-1 from one ReLU output of layer4 on 2x2 maps). Any
float32 implementation does this somewhere, PyTorch included; which elements flip depends on
its summation order. So the comparison is made exact about it:

- each float32 result (PyTorch's, ablate's) is measured against a float64 run that takes
  the same side as that result at every ReLU and max-pool: PyTorch's sides are recorded
  here, ablate's by ablate itself (src/ops/trace.rs). What remains is arithmetic error, and
  ablate's may be at most FACTOR x PyTorch's on every tensor;
- and every side ablate took differently from float64 must be a near-tie: a kink whose
  float64 margin is under NEAR_FACTOR x PyTorch float32's largest forward error at that
  point. A wrong mask or argmax cannot hide behind the first rule: it fails this one.
"""
import copy
import json
import math
import os
import sys
import tomllib

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402

FACTOR, FLOOR = 10.0, 1e-5
# A kink counts as a near-tie when its input is within NEAR_FACTOR times PyTorch float32's
# largest forward error at that point.
NEAR_FACTOR = 10.0

OPTIMIZERS = {
    "sgd_momentum": 'kind = "sgd"\nlr = 0.1\nmomentum = 0.9\nweight_decay = 1e-4',
    "sgd_nesterov": 'kind = "sgd"\nlr = 0.1\nmomentum = 0.9\nnesterov = true',
    "adam": 'kind = "adam"\nlr = 1e-3\nweight_decay = 1e-4',
    "adamw": 'kind = "adamw"\nlr = 1e-3\nweight_decay = 0.05',
}

# (model, input side, batch): run by the test suite (CI) or by `make parity` (--full).
CI_CASES = [
    ("lenet", 64, 8),
    ("resnet18", 32, 8),
    ("resnet18", 64, 8),
    ("resnext50_32x4d", 64, 4),
    ("resnext_toml", 32, 8),
]
FULL_CASES = [
    ("lenet", 256, 16),
    ("resnet18", 96, 16),
    ("resnet18", 128, 8),
    ("resnet18", 224, 8),
    ("resnext50_32x4d", 32, 8),
    ("resnext50_32x4d", 96, 8),
    ("resnext_toml", 64, 16),
]
TOML = {
    "lenet": "experiments/lenet.toml",
    "resnet18": "experiments/resnet18.toml",
    "resnext50_32x4d": "tests/parity/resnext50_32x4d.toml",
    "resnext_toml": "experiments/resnext.toml",
}


class LeNet(nn.Module):
    """experiments/lenet.toml, with its parameter names."""

    def __init__(self, hw, classes=2):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 5), nn.Conv2d(6, 16, 5)
        side = ((hw - 4) // 2 - 4) // 2
        self.fc1, self.fc2, self.fc3 = nn.Linear(16 * side * side, 120), nn.Linear(120, 84), nn.Linear(84, classes)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        x = F.relu(self.pool(self.conv1(x)))
        x = F.relu(self.pool(self.conv2(x)))
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc3(F.relu(self.fc2(x)))


class ResNeXtToml(nn.Module):
    """experiments/resnext.toml (groups = 8, mid = 64) from torchvision's Bottleneck, whose
    3x3 width is int(planes * base_width / 64) * groups: base widths 16 and 8 give 64."""

    def __init__(self, classes=2):
        super().__init__()
        from torchvision.models.resnet import Bottleneck

        def stage(inplanes, out, stride, base_width):
            down = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))
            return nn.Sequential(Bottleneck(inplanes, out // 4, stride, down, groups=8, base_width=base_width))

        self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.layer1, self.layer2 = stage(64, 128, 1, 16), stage(128, 256, 2, 8)
        self.fc = nn.Linear(256, classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(x.mean((2, 3)))


def build(model, hw):
    if model == "lenet":
        return LeNet(hw)
    if model == "resnext_toml":
        return ResNeXtToml()
    return getattr(torchvision.models, model)(num_classes=2)


def write_cases(out_dir, full=False):
    os.makedirs(out_dir, exist_ok=True)
    cases = []
    for i, (model, hw, n) in enumerate(FULL_CASES if full else CI_CASES):
        torch.manual_seed(1000 + i)
        m = build(model, hw)
        with torch.no_grad():
            for mod in m.modules():
                if isinstance(mod, nn.BatchNorm2d):
                    mod.weight.uniform_(0.5, 1.5)
                    mod.bias.normal_(0, 0.2)
                    mod.running_mean.normal_(0, 0.2)
                    mod.running_var.uniform_(0.5, 1.5)
        name = f"{model}_{hw}_b{n}"
        tensors = {f"w.{k}": v for k, v in m.state_dict().items()}
        tensors["x"] = torch.randn(n, 3, hw, hw)
        tensors["y"] = torch.randint(0, 2, (n,))
        st.save(os.path.join(out_dir, f"{name}.safetensors"), tensors)
        cases.append({"name": name, "model": model, "toml": TOML[model], "hw": hw, "batch": n, "optimizers": OPTIMIZERS})
    with open(os.path.join(out_dir, "nets.json"), "w") as f:
        json.dump(cases, f, indent=1)


class Kinks:
    """Replaces ReLU and max-pool while a network runs: records every call's input (and, for
    max-pool, each window's runner-up), and can force each call's decisions to another
    run's (`force`) or flip single decisions (`flips`: {call: [flat output index]})."""

    def __init__(self, force=None, flips=None):
        self.calls, self.force, self.flips = [], force, flips or {}

    def relu(self, t, inplace=False):
        i = len(self.calls)
        mask = self.force[i] if self.force is not None else t.detach() > 0
        if i in self.flips:
            mask = mask.clone().view(-1)
            for j in self.flips[i]:
                mask[j] = ~mask[j]
            mask = mask.view(t.shape)
        self.calls.append(("relu", t.detach(), mask))
        return t * mask.to(t.dtype)

    def max_pool(self, x, k, s, p):
        i = len(self.calls)
        n, c, h, w = x.shape
        _, idx = F.max_pool2d(x.detach(), k, s, p, return_indices=True)
        # Each window's best and runner-up, from a -inf padded copy and its pixel indices.
        xp = F.pad(x.detach(), (p, p, p, p), value=float("-inf"))
        pos = torch.arange(h * w, dtype=torch.float64).view(1, 1, h, w).expand(n, c, h, w)
        ip = F.pad(pos, (p, p, p, p), value=-1.0)
        xu = xp.unfold(2, k, s).unfold(3, k, s).reshape(*idx.shape, k * k)
        iu = ip.unfold(2, k, s).unfold(3, k, s).reshape(*idx.shape, k * k)
        top = xu.topk(2, dim=-1)
        margin = (top.values[..., 0] - top.values[..., 1]).to(torch.float64)
        runner_up = iu.gather(-1, top.indices[..., 1:2]).squeeze(-1).long()
        if self.force is not None:
            idx = self.force[i]
        if i in self.flips:
            idx = idx.clone().view(-1)
            for j in self.flips[i]:
                idx[j] = runner_up.view(-1)[j]
            idx = idx.view(runner_up.shape)
        self.calls.append(("max_pool", margin, idx, x.detach()))
        return x.flatten(2).gather(2, idx.flatten(2)).view(idx.shape)

    def __enter__(self):
        self.saved = (F.relu, nn.ReLU.forward, nn.MaxPool2d.forward)
        kinks = self

        def pool_forward(mod, x):
            as_int = lambda v: v if isinstance(v, int) else v[0]  # noqa: E731
            return kinks.max_pool(x, as_int(mod.kernel_size), as_int(mod.stride), as_int(mod.padding))

        F.relu = self.relu
        nn.ReLU.forward = lambda mod, t: kinks.relu(t)
        nn.MaxPool2d.forward = pool_forward
        return self

    def __exit__(self, *exc):
        F.relu, nn.ReLU.forward, nn.MaxPool2d.forward = self.saved

    def decisions(self):
        return [c[2] for c in self.calls]


def torch_optimizer(params, spec):
    kind = spec["kind"]
    wd = spec.get("weight_decay", 0.0)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=spec["lr"], momentum=spec.get("momentum", 0.0), nesterov=spec.get("nesterov", False), weight_decay=wd)
    betas, eps = tuple(spec.get("betas", (0.9, 0.999))), spec.get("eps", 1e-8)
    cls = torch.optim.Adam if kind == "adam" else torch.optim.AdamW
    return cls(params, lr=spec["lr"], betas=betas, eps=eps, weight_decay=wd)


STATE_NAMES = {"momentum_buffer": "momentum", "exp_avg": "m", "exp_avg_sq": "v"}


def step(case, inputs, dtype, kinks, optimizers=True):
    """One forward/backward of the case's network in `dtype` under `kinks`, then one step of
    each optimizer from the same gradients: {key: float64 tensor}."""
    m = build(case["model"], case["hw"]).to(dtype)
    state = {k[2:]: v for k, v in inputs.items() if k.startswith("w.")}
    m.load_state_dict(state)
    m.train()
    with kinks:
        logits = m(inputs["x"].to(dtype))
    F.cross_entropy(logits, inputs["y"]).backward()
    out = {"logits": logits.detach().double()}
    named = dict(m.named_parameters())
    for k, p in named.items():
        out[f"grad.{k}"] = p.grad.double()
    for k, b in m.state_dict().items():
        if "running" in k:
            out[f"buf.{k}"] = b.double()
    for opt_name, text in case["optimizers"].items() if optimizers else []:
        spec = tomllib.loads(text)
        params = {k: p.detach().clone().requires_grad_(True) for k, p in named.items()}
        for k, p in params.items():
            p.grad = named[k].grad.clone()
        opt = torch_optimizer(list(params.values()), spec)
        opt.step()
        for k, p in params.items():
            out[f"{opt_name}.update.{k}"] = (p.detach() - state[k].to(dtype)).double()
            for sk, v in opt.state[p].items():
                if sk in STATE_NAMES:
                    out[f"{opt_name}.state.{k}.{STATE_NAMES[sk]}"] = v.double()
    return out


def adam_updates(case, inputs, result):
    """Adam's and AdamW's updates recomputed in float64 from the moments in `result` itself.

    A first Adam step moves each weight by about lr * g / (|g| + eps): where |g| is near eps
    the update is a steep function of g, and float32's rounding of the gradient alone (any
    implementation's) moves it by up to its whole size. Compared with float64's update, that
    measures the gradient's rounding, amplified, not the step. So the step is checked given
    the state it starts from (the moments, themselves compared with float64 like every
    gradient): each implementation's update against float64 arithmetic on its own moments.
    """
    out = {}
    for opt_name, text in case["optimizers"].items():
        spec = tomllib.loads(text)
        if spec["kind"] not in ("adam", "adamw"):
            continue
        b1, b2 = spec.get("betas", (0.9, 0.999))
        eps, lr, wd = spec.get("eps", 1e-8), spec["lr"], spec.get("weight_decay", 0.0)
        for key in result:
            prefix = f"{opt_name}.update."
            if not key.startswith(prefix):
                continue
            p = key[len(prefix) :]
            m, v = result[f"{opt_name}.state.{p}.m"], result[f"{opt_name}.state.{p}.v"]
            update = -lr * (m / (1 - b1)) / ((v / (1 - b2)).sqrt() + eps)
            if spec["kind"] == "adamw":
                update = update - lr * wd * inputs[f"w.{p}"].double()
            out[key] = update
    return out


def error(a, truth):
    return ((a - truth).abs().max() / truth.abs().max().clamp_min(1e-30)).item()


def errors(result, truth):
    return {k: error(result[k], truth[k]) for k in truth}


def over(ours, yard):
    return [k for k in ours if ours[k] > max(FACTOR * yard[k], FLOOR)]


def ablate_kinks(ours, like):
    """ablate's recorded decisions (src/ops/trace.rs), in call order, as Kinks(force=) takes
    them; `like` is a float64 run's Kinks, to check the sequence matches call by call."""
    keys = sorted(k for k in ours if k.startswith("kink."))
    kinds = [k.split(".")[2] for k in keys]
    expected = [c[0] for c in like.calls]
    if kinds != expected:
        raise SystemExit(f"ablate's kinks {kinds[:6]}... ({len(kinds)}) do not follow PyTorch's {expected[:6]}... ({len(expected)})")
    out = []
    for k, call in zip(keys, like.calls):
        v = ours[k]
        out.append(v.bool().view(call[2].shape) if call[0] == "relu" else v.long().view(call[2].shape))
    return out


def off_side(forced, k64, k32):
    """The kinks where `forced` takes another side than float64, each with its margin over
    NEAR_FACTOR x PyTorch float32's largest forward error at that call (a near-tie is < 1)."""
    found = []
    for i, (decision, c64, c32) in enumerate(zip(forced, k64.calls, k32.calls)):
        differ = (decision != c64[2]).view(-1).nonzero().view(-1)
        if len(differ) == 0:
            continue
        if c64[0] == "relu":
            margin = c64[1].abs().view(-1)
            tol = NEAR_FACTOR * (c32[1].double() - c64[1]).abs().max().item()
        else:
            # The value ablate took against the best one: how far from a tie it was.
            x = c64[3].flatten(2)
            taken = x.gather(2, decision.flatten(2)).view(-1)
            best = x.gather(2, c64[2].flatten(2)).view(-1)
            margin = (best - taken).abs()
            tol = NEAR_FACTOR * (c32[3].double() - c64[3]).abs().max().item()
        found += [(margin[j].item() / max(tol, 1e-300), i, j.item(), c64[0]) for j in differ]
    return sorted(found)


def check(case_file, ablate_file):
    """Prints ablate's error next to PyTorch float32's for every tensor of the case; True
    when every one is within FACTOR x (floor FLOOR) and every side ablate took differently
    from float64 was a near-tie."""
    case_dir = os.path.dirname(case_file)
    name = os.path.basename(case_file)[: -len(".safetensors")]
    with open(os.path.join(case_dir, "nets.json")) as f:
        case = next(c for c in json.load(f) if c["name"] == name)
    inputs = st.load(case_file)
    ours = {k: v.double() for k, v in st.load(ablate_file).items()}

    # PyTorch float32 against float64 taking float32's side at every kink.
    k32 = Kinks()
    r32 = step(case, inputs, torch.float32, k32)
    same_sides = step(case, inputs, torch.float64, Kinks(force=k32.decisions()))
    yard = errors(r32, same_sides)
    yard.update(errors(r32, adam_updates(case, inputs, r32)))

    # ablate against float64 taking ablate's side at every kink.
    k64 = Kinks()
    plain = step(case, inputs, torch.float64, k64, optimizers=False)
    forced = ablate_kinks(ours, k64)
    truth = step(case, inputs, torch.float64, Kinks(force=forced))
    missing = sorted(set(truth) - set(ours))
    if missing:
        print(f"{name}: ablate's results lack {missing[:5]} ({len(missing)} in all)")
        return False
    errs = errors(ours, truth)
    errs.update(errors(ours, adam_updates(case, inputs, ours)))
    sides = off_side(forced, k64, k32)
    far = [f for f in sides if f[0] >= 1]

    bad = over(errs, yard)
    print(f"{name}: ablate's error against float64 next to PyTorch float32's (worst 12 of {len(errs)} by ratio)")
    ratio = lambda k: errs[k] / max(yard[k], FLOOR / FACTOR)  # noqa: E731
    for k in sorted(errs, key=ratio)[-12:]:
        flag = "   <-- over the bound" if k in bad else ""
        print(f"  {k:60} ablate {errs[k]:9.2e}  torch {yard[k]:9.2e}{flag}")
    print(f"  worst: ablate {max(errs.values()):.2e}, torch {max(yard.values()):.2e}; over the bound: {len(bad)}")
    print(f"  logits: ablate {errs['logits']:.2e}, torch {yard['logits']:.2e}")
    print(f"  worst ratio: {max(ratio(k) for k in errs):.1f}x (the bound: {FACTOR:g}x, or both under {FLOOR:g})")
    grads = [k for k in plain if k.startswith("grad.")]
    worst_plain = lambda r: max(grads, key=lambda k: error(r[k], plain[k]))  # noqa: E731
    ka, kt = worst_plain(ours), worst_plain(r32)
    print(
        f"  gradients against plain float64 (its own side at every kink): ablate {error(ours[ka], plain[ka]):.2e} ({ka}), "
        f"torch {error(r32[kt], plain[kt]):.2e} ({kt})"
    )
    print(f"  kinks where ablate took another side than float64: {len(sides)}, all near-ties: {not far}")
    for margin, i, j, kind in sides[:5] + far[:10]:
        print(f"    {kind} call {i}, element {j}: margin {margin:.3f} of {NEAR_FACTOR:g}x float32's error there")
    return not bad and not far
