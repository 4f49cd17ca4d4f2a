"""Patch attack with expectation over transformation: pasting, domain, a known answer, seeds."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from perturbkit.attacks.patch import PatchAttack, Placement, paste, sample_placements
from perturbkit.errors import InputError

MILD = dict(rotation=(-10.0, 10.0), scale=(0.9, 1.1), brightness=(-0.05, 0.05), contrast=(0.9, 1.1))


class BrightWindow(nn.Module):
    """Class 1 iff some 3x3 window has a mean brightness above 0.6 (else class 0)."""

    def forward(self, x):
        m = F.avg_pool2d(x.mean(1, keepdim=True), 3, stride=1).flatten(1).amax(1)
        return torch.stack([torch.zeros_like(m), 20 * (m - 0.6)], 1)


def dark_images(n=16, seed=0):
    return 0.1 * torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)), torch.zeros(n, dtype=torch.long)


# ----------------------------------------------------------------------------- pasting

def test_identity_placement_copies_the_patch_onto_its_pixels():
    x = torch.rand(2, 3, 8, 9, generator=torch.Generator().manual_seed(0))
    patch = torch.rand(3, 3, 3, generator=torch.Generator().manual_seed(1))
    out = paste(x, patch, Placement.at(2, 5, 3, n=2))
    inside = torch.zeros(8, 9, dtype=torch.bool)
    inside[2:5, 5:8] = True
    assert torch.allclose(out[..., 2:5, 5:8], patch.expand(2, 3, 3, 3), atol=1e-6)
    assert torch.allclose(out[..., ~inside], x[..., ~inside], atol=1e-6)


def test_rotation_by_90_degrees_is_rot90_counter_clockwise():
    x = torch.zeros(1, 1, 8, 8)
    patch = torch.arange(9.0).reshape(1, 3, 3) / 10
    out = paste(x, patch, Placement.at(2, 4, 3, angle=90.0))
    assert torch.allclose(out[0, :, 2:5, 4:7], torch.rot90(patch, 1, (-2, -1)), atol=1e-6)


def test_scale_and_lighting():
    x = torch.zeros(1, 1, 8, 8)
    white = torch.ones(1, 2, 2)
    out = paste(x, white, Placement.at(3, 3, 2, scale=2.0))          # 4x4 around the same centre
    assert torch.allclose(out[0, 0, 2:6, 2:6], torch.ones(4, 4), atol=1e-6)
    assert float(out[0, 0].sum()) == pytest.approx(16.0, abs=1e-4)
    lit = paste(x, white, Placement.at(3, 3, 2, contrast=0.5, brightness=-0.1))  # 0.5 + 0.5 * 0.5 - 0.1
    assert torch.allclose(lit[0, 0, 3:5, 3:5], torch.full((2, 2), 0.65), atol=1e-6)


def test_random_pastes_stay_in_the_domain_and_fit_the_image():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(200, 1, 8, 8, generator=g)
    place = sample_placements(200, 3, 8, 8, rotation=(-45, 45), scale=(0.5, 2.0), brightness=(-0.5, 0.5),
                              contrast=(0.0, 3.0), generator=g)
    half = 1.5 * place.scale
    assert bool(((place.cx - half >= -1e-9) & (place.cx + half <= 8 + 1e-9)).all())
    assert bool(((place.cy - half >= -1e-9) & (place.cy + half <= 8 + 1e-9)).all())
    out = paste(x, torch.rand(1, 3, 3, generator=g), place)
    assert float(out.min()) >= -1e-6 and float(out.max()) <= 1 + 1e-6


def test_paste_is_differentiable_in_the_patch():
    patch = torch.full((1, 3, 3), 0.5, requires_grad=True)
    out = paste(torch.zeros(1, 1, 8, 8), patch, Placement.at(1, 1, 3, angle=20.0, scale=1.1))
    (g,) = torch.autograd.grad(out.sum(), patch)
    assert bool((g > 0).all())


# ----------------------------------------------------------------------------- the attack

@pytest.mark.parametrize("target", [1, None])
def test_reaches_the_known_answer(target):
    """On BrightWindow the answer is a bright patch; a random patch (mean 0.5) rarely works."""
    x, y = dark_images()
    atk = PatchAttack(3, steps=30, eot_samples=8, target=target, **MILD)
    patch = atk.fit(BrightWindow(), x, y)
    assert patch.shape == (1, 3, 3)
    assert float(patch.min()) >= 0.0 and float(patch.max()) <= 1.0
    assert float(patch.mean()) > 0.95
    res = atk.evaluate(BrightWindow(), x, y, patch, n=50)
    assert res.success_rate >= 0.95
    assert res.success.shape == (16,) and bool(res.valid.all()) and not res.clean_success.any()
    control = atk.evaluate(BrightWindow(), x, y, torch.full((1, 3, 3), 0.5), n=50)
    assert control.success_rate == 0.0


def test_success_is_re_evaluated_on_pasted_images():
    """With no randomness, evaluate's count equals the model's verdict on the pasted images."""
    x, y = dark_images(8)
    atk = PatchAttack(3, rotation=(0, 0), scale=(1, 1), brightness=(0, 0), contrast=(1, 1), target=1)
    patch = torch.rand(1, 3, 3, generator=torch.Generator().manual_seed(2))
    res = atk.evaluate(BrightWindow(), x, y, patch, n=5, seed=11)
    place = atk.placements(8 * 5, x, torch.Generator().manual_seed(11))
    with torch.no_grad():
        pred = BrightWindow()(paste(x.repeat_interleave(5, 0), patch, place)).argmax(1)
    assert torch.allclose(res.success, (pred == 1).double().reshape(8, 5).mean(1))


def test_per_image_patches_and_targets_equal_to_labels():
    x, _ = dark_images(6)
    y = torch.tensor([0, 1, 0, 1, 0, 0])
    atk = PatchAttack(3, steps=10, eot_samples=4, universal=False, target=1, batch_size=3, **MILD)
    patch = atk.fit(BrightWindow(), x, y)
    assert patch.shape == (6, 1, 3, 3)
    assert float(patch.min()) >= 0.0 and float(patch.max()) <= 1.0
    res = atk.evaluate(BrightWindow(), x, y, patch, n=10)
    assert torch.equal(res.valid, y != 1)
    assert res.success_rate == pytest.approx(float(res.success[y != 1].mean()))
    with pytest.raises(InputError, match="nothing to attack"):
        atk.fit(BrightWindow(), x, torch.ones(6, dtype=torch.long))


def test_seed_reproducible():
    x, y = dark_images(8)
    fit = lambda seed: PatchAttack(3, steps=5, eot_samples=4, target=1, seed=seed).fit(BrightWindow(), x, y)  # noqa
    a, b, c = fit(0), fit(0), fit(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    atk = PatchAttack(3, target=1)
    r1, r2 = atk.evaluate(BrightWindow(), x, y, a, n=20), atk.evaluate(BrightWindow(), x, y, a, n=20)
    assert torch.equal(r1.success, r2.success)


def test_eval_mode_during_the_attack_and_clip_on_evaluate():
    seen = []

    class Spy(BrightWindow):
        def __init__(self):
            super().__init__()
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            seen.append(self.training)
            return self.drop(super().forward(x))

    m = Spy().train()
    x, y = dark_images(4)
    atk = PatchAttack(3, steps=3, eot_samples=2, target=1)
    patch = atk.fit(m, x, y)
    res = atk.evaluate(m, x, y, patch * 0 + 5.0, n=4)  # out-of-domain values are clipped to 1
    assert seen and not any(seen) and m.training
    assert res.flags["randomized"] == 0


@pytest.mark.parametrize("kwargs,msg", [
    (dict(size=0), "size"),
    (dict(scale=(1.2, 0.8)), "scale"),
    (dict(contrast=(-1, 1)), "contrast"),
    (dict(optimizer="sgd"), "optimizer"),
    (dict(target=-1), "target"),
])
def test_bad_options(kwargs, msg):
    with pytest.raises(InputError, match=msg):
        PatchAttack(**kwargs)


def test_bad_inputs_say_what_is_wrong():
    x, y = dark_images(2)
    with pytest.raises(InputError, match="does not fit"):
        PatchAttack(8, scale=(1.0, 1.5)).fit(BrightWindow(), x, y)
    with pytest.raises(InputError, match=r"\(B, C, H, W\)"):
        PatchAttack(3).fit(BrightWindow(), x.reshape(2, 64), y)
    with pytest.raises(InputError, match="domain"):
        PatchAttack(3).fit(BrightWindow(), x + 2, y)
    with pytest.raises(InputError, match="out of range"):
        PatchAttack(3, target=5).fit(BrightWindow(), x, y)
    with pytest.raises(InputError, match="shape"):
        PatchAttack(3).evaluate(BrightWindow(), x, y, torch.zeros(1, 4, 4))
