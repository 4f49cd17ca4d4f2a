"""Convolutional networks for the CROWN speed benchmark (issue 14): pooling, batch norm and
residual blocks at MNIST and CIFAR size, built seeded (random weights; batch-norm statistics
set to random positive values so the folded affine maps are not the identity).

``build(name) -> (module in eval mode, input (1, C, H, W) in [0, 1], Linf eps)``; the radii
leave a part of the ReLUs unstable, as on real verification inputs.
"""
from __future__ import annotations

import torch
from torch import nn


class ResBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus a shortcut (1x1 conv-BN when the shape changes), then ReLU:
    the Add joins two perturbed branches."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = (nn.Identity() if stride == 1 and cin == cout else
                      nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.body(x) + self.short(x))


def cnn_maxpool():
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10))


def cnn_avgpool():
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10))


def cnn_maxpool_cifar():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 8 * 8, 128), nn.ReLU(), nn.Linear(128, 10))


def vgg_cifar():
    """VGG-style: two conv-BN-ReLU per stage, max pooling between stages, three stages."""
    layers, cin = [], 3
    for cout in (16, 32, 64):
        for _ in range(2):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
            cin = cout
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 10))


def resnet_cifar():
    """ResNet-style: a stem, residual blocks at 16, 32 (stride 2) and 32 channels, average pooling."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         ResBlock(16, 16), ResBlock(16, 32, 2), ResBlock(32, 32),
                         nn.AvgPool2d(4), nn.Flatten(), nn.Linear(32 * 4 * 4, 10))


def resnet_cifar_2blocks():
    """The issue's probe: a CIFAR ResNet with two residual blocks."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         ResBlock(16, 16), ResBlock(16, 32, 2),
                         nn.Flatten(), nn.Linear(32 * 16 * 16, 100), nn.ReLU(), nn.Linear(100, 10))


MODELS = {
    "cnn_maxpool": (cnn_maxpool, (1, 1, 28, 28), 0.01),
    "cnn_avgpool": (cnn_avgpool, (1, 1, 28, 28), 0.01),
    "cnn_maxpool_cifar": (cnn_maxpool_cifar, (1, 3, 32, 32), 1 / 255),
    "vgg_cifar": (vgg_cifar, (1, 3, 32, 32), 0.5 / 255),
    "resnet_cifar_2blocks": (resnet_cifar_2blocks, (1, 3, 32, 32), 1 / 255),
    "resnet_cifar": (resnet_cifar, (1, 3, 32, 32), 0.5 / 255),
}


def _randomise_batchnorm(model: nn.Module, gen: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=gen))


def build(name: str) -> tuple[nn.Module, torch.Tensor, float]:
    make, shape, eps = MODELS[name]
    torch.manual_seed(0)
    model = make()
    _randomise_batchnorm(model, torch.Generator().manual_seed(1))
    model.eval()
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    return model, x, eps
