"""Reference for tests/suite/zoo.rs: a model of torchvision's (or timm's) zoo with random
weights, as the experiment file of the same name rebuilds it.

    python3 zoo.py <name> <out_dir> <input_side>

writes <out_dir>/<name>.pth (the state dict, 10 classes, running statistics moved away from
their initial values by three training-mode passes), <name>.safetensors (the input `x`, the
eval-mode logits in float64 `f64` and float32 `f32`) and <name>.json: parameters and
multiply-adds at 224x224 for 1000 and for 10 classes, counted as ablate counts them (a conv:
output elements x input channels / groups x kernel area; a linear layer: in x out).
"""
import json
import os
import sys

import torch
from torch import nn

import st


def make(name, classes):
    if name == "seresnext26d_32x4d":
        import timm

        return timm.create_model(name, pretrained=False, num_classes=classes)
    import torchvision

    return getattr(torchvision.models, name)(weights=None, num_classes=classes)


def counts(model, side):
    macs = []

    def conv(m, i, o):
        macs.append(o[0].numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1])

    def linear(m, i, o):
        macs.append(m.in_features * m.out_features)

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(conv)
        elif isinstance(m, nn.Linear):
            m.register_forward_hook(linear)
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, side, side))
    return {"params": sum(p.numel() for p in model.parameters()), "macs": sum(macs)}


def main(name, out_dir, side):
    torch.manual_seed(20261202)
    os.makedirs(out_dir, exist_ok=True)
    info = {"1000": counts(make(name, 1000), 224)}
    model = make(name, 10)
    info["10"] = counts(make(name, 10), 224)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, side, side) * 1.5 + 0.3)
    model.eval()
    torch.save(model.state_dict(), os.path.join(out_dir, f"{name}.pth"))
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        f32 = model(x)
        f64 = model.double()(x.double())
    st.save(os.path.join(out_dir, f"{name}.safetensors"), {"x": x, "f32": f32.double(), "f64": f64})
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(info, f)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
