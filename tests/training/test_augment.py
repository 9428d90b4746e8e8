"""Batched augmentation: shapes, seeded repeatability, and that each transform does what it says."""

from __future__ import annotations

import torch

from training.augment import Augment, AugmentConfig, Normalize, random_affine, random_crop, random_erase, random_hflip


def _batch(b=16, c=1, s=12):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (b, c, s, s), generator=g, dtype=torch.uint8)


def test_normalize_matches_the_checkpoint_formula():
    x = _batch(c=3)
    n = Normalize([0.1, 0.2, 0.3], [0.5, 0.25, 2.0])
    want = (x.float() * (1 / 255) - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / torch.tensor(
        [0.5, 0.25, 2.0]
    ).view(1, 3, 1, 1)
    assert torch.allclose(n(x), want, atol=1e-6)


def test_full_pipeline_is_seeded_and_shapes_hold():
    cfg = AugmentConfig(crop_padding=2, hflip=True, rotate=15, translate=0.1, scale=0.1, erase_prob=0.5)
    aug = Augment(cfg, Normalize([0.5], [0.25]))
    x = _batch()
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    c = aug(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert cfg.enabled and not AugmentConfig().enabled


def test_random_crop_is_a_shift_of_the_padded_image():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6) + 1
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        hits = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(out[i], padded[i, :, dy : dy + 6, dx : dx + 6])
        ]
        assert hits, "each output must be some 6x6 window of the padded input"


def test_hflip_flips_about_half():
    x = torch.rand(200, 1, 4, 4)
    out = random_hflip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, i.flip(2)) for o, i in zip(out, x)]
    kept = [torch.equal(o, i) for o, i in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 70 < sum(flipped) < 130


def test_affine_identity_and_rotation():
    x = torch.rand(4, 1, 9, 9)
    same = random_affine(x, 0.0, 0.0, 0.0, torch.Generator().manual_seed(0))
    assert torch.allclose(same, x, atol=1e-5)
    moved = random_affine(x, 30.0, 0.1, 0.1, torch.Generator().manual_seed(0))
    assert moved.shape == x.shape and not torch.allclose(moved, x, atol=1e-3)


def test_random_erase_zeroes_rectangles():
    x = torch.ones(64, 1, 10, 10)
    out = random_erase(x, 1.0, 0.3, torch.Generator().manual_seed(0))
    for img in out[:, 0]:
        rows = (img == 0).any(1).nonzero().flatten()
        cols = (img == 0).any(0).nonzero().flatten()
        assert len(rows) and len(cols)
        # the zeros form one full rectangle
        assert (img[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] == 0).all()
        assert (img == 0).sum() == len(rows) * len(cols)
    assert torch.equal(random_erase(x, 0.0, 0.3, torch.Generator().manual_seed(0)), x)


# ----------------------------------------------------------------------------- elastic + shear (MNIST)


def test_elastic_field_is_smooth_bounded_and_seeded():
    from training.augment import elastic_field, gaussian_kernel1d

    g = torch.Generator().manual_seed(3)
    d = elastic_field(64, 28, 28, 34.0, 4.0, g)
    assert d.shape == (64, 2, 28, 28)
    assert d.abs().max() <= 34.0  # a normalised smoothing of noise in [-1, 1], times alpha
    rms = float(d.pow(2).mean().sqrt())
    assert 0.5 < rms < 3.0, rms  # about 1.3 pixels: a gentle warp, not noise
    # smooth: neighbouring displacements differ far less than the displacements themselves
    assert float((d[..., 1:] - d[..., :-1]).abs().mean()) < 0.2 * float(d.abs().mean())
    assert torch.equal(d, elastic_field(64, 28, 28, 34.0, 4.0, torch.Generator().manual_seed(3)))
    # the separable matrix product is the zero-padded Gaussian convolution
    noise_g = torch.Generator().manual_seed(5)
    n = torch.rand(2, 2, 28, 28, generator=noise_g) * 2 - 1
    k = gaussian_kernel1d(4.0)
    r = (len(k) - 1) // 2
    ref = torch.nn.functional.conv2d(n.view(4, 1, 28, 28), k.view(1, 1, -1, 1), padding=(r, 0))
    ref = torch.nn.functional.conv2d(ref, k.view(1, 1, 1, -1), padding=(0, r)).view(2, 2, 28, 28) * 34.0
    assert torch.allclose(elastic_field(2, 28, 28, 34.0, 4.0, torch.Generator().manual_seed(5)), ref, atol=1e-5)


def test_warp_moves_ink_by_a_bounded_amount_and_keeps_its_mass():
    from training.augment import random_warp

    x = torch.zeros(32, 1, 28, 28)
    x[:, :, 10:18, 12:16] = 1.0  # a bar of ink in the middle
    g = torch.Generator().manual_seed(0)
    y = random_warp(x, g, degrees=8, translate=0.06, scale=0.08, shear=8, elastic_alpha=34, elastic_sigma=4)
    assert y.shape == x.shape and not torch.allclose(y, x, atol=1e-3)
    ink_in, ink_out = x.sum((1, 2, 3)), y.sum((1, 2, 3))
    change = (ink_out / ink_in - 1).abs()  # the warp stretches and squeezes strokes locally; ink stays ink
    assert (change < 0.9).all() and change.mean() < 0.3
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")

    def centre(t):
        m = t[:, 0].sum((1, 2))
        return torch.stack([(t[:, 0] * ys).sum((1, 2)) / m, (t[:, 0] * xs).sum((1, 2)) / m], 1)

    shift = (centre(y) - centre(x)).norm(dim=1)
    assert (shift < 6.0).all() and shift.mean() > 0.3  # moved, by a few pixels at most
    # no elastic, no affine: the identity
    assert torch.allclose(random_warp(x, g), x, atol=1e-5)


def test_elastic_pipeline_is_seeded_and_leaves_labels_alone():
    from training.loop import train_one_epoch

    cfg = AugmentConfig(rotate=8, shear=8, scale=0.08, translate=0.06, elastic_alpha=34, elastic_sigma=4)
    assert cfg.enabled and cfg.geometric and AugmentConfig(elastic_alpha=34).enabled
    aug = Augment(cfg, Normalize([0.13], [0.31]))
    x = _batch(b=8, s=28)
    a, b = aug(x, torch.Generator().manual_seed(1)), aug(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, aug(x, torch.Generator().manual_seed(2)))
    assert a.shape == x.shape and a.dtype == torch.float32
    # the transform only ever sees images: the loop pairs each augmented image with its own label
    seen = []

    def spy(xb, g):
        seen.append(xb.clone())
        return aug(xb, g)

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _s: 1.0)
    y = torch.arange(8) % 10
    xs = x.clone()
    xs[:, 0, 0, 0] = torch.arange(8, dtype=torch.uint8)  # tag each image with its index
    ys = y.clone()
    train_one_epoch(model, opt, sched, xs, ys, spy, torch.Generator().manual_seed(0), 4)
    tags = torch.cat([s[:, 0, 0, 0] for s in seen]).long()
    assert sorted(tags.tolist()) == list(range(8)) and torch.equal(ys, y)


def test_shear_slants_a_vertical_bar():
    from training.augment import random_warp

    x = torch.zeros(16, 1, 28, 28)
    x[:, :, 4:24, 13:15] = 1.0
    y = random_warp(x, torch.Generator().manual_seed(0), shear=20.0)
    top = (y[:, 0, 5:9] * torch.arange(28.0)).sum((1, 2)) / y[:, 0, 5:9].sum((1, 2))
    bottom = (y[:, 0, 19:23] * torch.arange(28.0)).sum((1, 2)) / y[:, 0, 19:23].sum((1, 2))
    assert (top - bottom).abs().max() > 1.0  # the top and bottom of the bar no longer line up


def test_recipe_keys_for_the_distortions_are_checked():
    import pytest

    from training.config import config_from_dict
    from training.errors import ConfigError

    for key, bad in (("shear", 95.0), ("elastic_alpha", -1.0), ("elastic_sigma", 0.0)):
        with pytest.raises(ConfigError, match=f"augment.{key}"):
            config_from_dict({"augment": {key: bad}})
