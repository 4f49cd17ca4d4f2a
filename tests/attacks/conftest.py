"""Shared fixtures of the attack tests: the bundled digits models and test images."""
import pytest
import torch

import perturbkit as pk
from perturbkit.models import bundled_path, load_digits_test


def digits_test(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n bundled digits test images and labels."""
    x, y = load_digits_test()
    return torch.from_numpy(x[:n]), torch.from_numpy(y[:n])


@pytest.fixture(scope="session")
def cnn():
    return pk.load(str(bundled_path("digits-cnn")))


@pytest.fixture(scope="session")
def mlp():
    return pk.load(str(bundled_path("digits-mlp")))
