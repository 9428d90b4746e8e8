"""Batched augmentation: shapes, seeded repeatability, and that each transform does what it says."""

from __future__ import annotations

import torch

from training.augment import (Augment, AugmentConfig, Normalize, random_affine, random_crop, random_erase,
                              random_hflip)


def _batch(b=16, c=1, s=12):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (b, c, s, s), generator=g, dtype=torch.uint8)


def test_normalize_matches_the_checkpoint_formula():
    x = _batch(c=3)
    n = Normalize([0.1, 0.2, 0.3], [0.5, 0.25, 2.0])
    want = (x.float() * (1 / 255) - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / \
        torch.tensor([0.5, 0.25, 2.0]).view(1, 3, 1, 1)
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
        hits = [(dy, dx) for dy in range(5) for dx in range(5)
                if torch.equal(out[i], padded[i, :, dy:dy + 6, dx:dx + 6])]
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
        assert (img[rows.min():rows.max() + 1, cols.min():cols.max() + 1] == 0).all()
        assert (img == 0).sum() == len(rows) * len(cols)
    assert torch.equal(random_erase(x, 0.0, 0.3, torch.Generator().manual_seed(0)), x)
