"""Small models for attack tests, each built to show one behaviour."""
import torch
from torch import nn


def linear(n_in: int = 16, n_cls: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, n_cls)).eval()


class Softmaxed(nn.Module):
    """Outputs probabilities instead of logits."""

    def __init__(self, n_in=16, n_cls=3):
        super().__init__()
        self.net = linear(n_in, n_cls)

    def forward(self, x):
        return torch.softmax(self.net(x), 1)


class Noisy(nn.Module):
    """Random outputs even in eval mode."""

    def __init__(self, n_in=16, n_cls=3):
        super().__init__()
        self.net = linear(n_in, n_cls)

    def forward(self, x):
        return self.net(x) + 0.1 * torch.randn(x.shape[0], 3)


class Quantised(nn.Module):
    """Rounds its input first: the input gradient is zero everywhere (gradient masking)."""

    def __init__(self, n_in=16, n_cls=3):
        super().__init__()
        self.net = linear(n_in, n_cls)

    def forward(self, x):
        return self.net(torch.round(x * 4) / 4)


class NaNOut(nn.Module):
    def forward(self, x):
        z = x.reshape(x.shape[0], -1)[:, :3]
        return torch.log(z - 2.0)  # inputs in [0, 1]: NaN


class Bump(nn.Module):
    """Two classes; the margin of class 1 over class 0 along u = sum(x - 0.5) climbs to a
    local maximum (still < 0) at u = 1, dips, and is > 0 only for u > 4.  Gradient steps from
    x = 0.5 stop at the bump; one eps-step in sign(gradient) (u = n * eps) jumps over it."""

    def forward(self, x):
        u = (x.reshape(x.shape[0], -1) - 0.5).sum(1)
        relu = torch.relu
        m = -1.0 + 0.5 * u - 1.0 * relu(u - 1.0) + 1.5 * relu(u - 3.0)
        return torch.stack([torch.zeros_like(m), m], 1)


def random_cnn(seed: int = 0) -> nn.Module:
    """An untrained CNN on (B, 1, 8, 8) images with 10 classes."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10)).eval()
