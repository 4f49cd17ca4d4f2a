"""Small random networks for whole-network tests, built in PyTorch and imported through ONNX."""
from __future__ import annotations

import io
import warnings

import onnx
import torch
import torch.nn as nn

import perturbkit as pk
from perturbkit.graph.from_onnx import graph_from_onnx
from perturbkit.graph.network import Network


def to_network(module: nn.Module, x: torch.Tensor) -> Network:
    """Export ``module`` to ONNX in memory and import it (the ONNX front end under test)."""
    module = module.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=13)
    return Network(graph_from_onnx(onnx.load_from_string(buf.getvalue())))


class Residual(nn.Module):
    def __init__(self, act=nn.ReLU):
        super().__init__()
        self.bn = nn.BatchNorm2d(2)
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.act = act()
        self.short = nn.Conv2d(2, 4, 1)
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.bn(x)
        y = self.act(self.conv1(x)) + self.short(x)
        y = self.act(self.conv2(y))
        return self.fc(torch.flatten(self.pool(y), 1))


def _randomize_bn(m: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for mod in m.modules():
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = mod.num_features
            mod.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
            mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            mod.weight.data.copy_(torch.randn(n, generator=g))
            mod.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return m


def build(kind: str, act=nn.ReLU) -> tuple[nn.Module, torch.Size]:
    torch.manual_seed(0)
    if kind == "mlp":
        m = nn.Sequential(nn.Flatten(), nn.Linear(6, 10), act(), nn.Linear(10, 8), act(), nn.Linear(8, 4))
        return m, torch.Size([1, 6])
    if kind == "cnn":
        m = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), act(), nn.MaxPool2d(2),
                          nn.Conv2d(3, 4, 3, padding=1), act(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16, 5))
        return _randomize_bn(m), torch.Size([1, 1, 8, 8])
    if kind == "residual":
        return _randomize_bn(Residual(act)), torch.Size([1, 2, 6, 6])
    if kind == "linear":
        m = nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.Linear(6, 5), nn.Linear(5, 3))
        return m, torch.Size([1, 8])
    if kind == "linear_conv":
        m = nn.Sequential(nn.BatchNorm2d(2), nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Conv2d(3, 2, 2),
                          nn.Flatten(), nn.Linear(8, 3))
        return _randomize_bn(m), torch.Size([1, 2, 6, 6])
    if kind == "one_affine":
        m = nn.Sequential(nn.BatchNorm2d(2), nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Flatten())
        return _randomize_bn(m), torch.Size([1, 2, 5, 5])
    raise ValueError(kind)


def network(kind: str, act=nn.ReLU) -> tuple[Network, nn.Module, torch.Size]:
    m, shape = build(kind, act)
    return to_network(m, torch.zeros(shape)), m.double(), shape


__all__ = ["build", "network", "to_network", "pk"]
