#!/usr/bin/env python3
"""Writes tests/fixtures/tiny_resnet.pth: a torchvision-named ResNet state dict small enough to
commit, and prints the logits the test compares ablate's output with.

The network (torchvision's own BasicBlock, torchvision's names):
  conv1 3->8 k3 p1 (no bias), bn1, relu, layer1.0 = BasicBlock(8, 8),
  layer2.0 = BasicBlock(8, 16, stride 2, downsample 1x1 conv + bn), avgpool, fc 16->10.
In ablate's TOML: see tests/suite/weights.rs.

Run with Debian's PyTorch: /usr/bin/python3 scripts/make_weight_fixture.py
"""
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

torch.manual_seed(0)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(BasicBlock(8, 8))
        down = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, stride=2, downsample=down))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(x.mean((2, 3)))


m = Tiny()
m.train()
for _ in range(3):  # move the running statistics away from their initial values
    m(torch.randn(4, 3, 8, 8) * 2 + 0.5)
m.eval()
torch.save(m.state_dict(), "tests/fixtures/tiny_resnet.pth")
x = torch.linspace(-1, 1, 2 * 3 * 8 * 8).reshape(2, 3, 8, 8)
with torch.no_grad():
    print([round(v, 6) for v in m(x).flatten().tolist()])
