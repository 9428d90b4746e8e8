"""Explain through a real server and the real `cnn explain` command, on the LeNet-5 the test run trained:
the overlays are PNGs, the heatmaps cover the model input and concentrate on the ink."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from client.explain import ExplainClient
from tests.conftest import MODEL_NAME, cnn, digit_examples


def _near(mask: np.ndarray, r: int) -> np.ndarray:
    """Pixels within r (Chebyshev distance) of the mask."""
    out = mask.copy()
    padded = np.pad(mask, r)
    h, w = mask.shape
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out |= padded[dy : dy + h, dx : dx + w]
    return out


def test_cnn_explain_writes_overlays_whose_heatmaps_sit_on_the_ink(server, tmp_path):
    files = digit_examples()[::2]
    out = tmp_path / "overlays"
    proc = cnn(
        "explain",
        *map(str, files),
        "--server",
        server.address,
        "--out",
        str(out),
        "--top-k",
        "2",
        "--save-maps",
        "--json",
    )
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["image"] for r in records] == [str(f) for f in files]
    ratios = []
    for f, r in zip(files, records):
        assert r["model"] == MODEL_NAME and r["method"] == "occlusion"  # LeNet-5 has no pooling head
        assert len(r["top_k"]) == 2
        (h,) = r["heatmaps"]
        assert h["index"] == r["top_k"][0]["index"] and (h["height"], h["width"]) == (28, 28)
        overlay = Path(h["overlay"])
        assert overlay.parent == out and overlay.name.startswith(f.stem + ".")
        with Image.open(overlay) as png:
            png.load()
            assert png.format == "PNG" and png.mode == "RGB" and png.size == (224, 224)
        values = np.load(overlay.with_suffix(".npy"))
        assert values.shape == (28, 28) and values.dtype == np.float32 and np.isfinite(values).all()
        ink = np.asarray(Image.open(f).convert("L"), dtype=np.float32) > 127  # white ink on black, 28x28
        background = ~_near(ink, 3)  # clear of the ink, whatever small shift preprocessing makes
        assert ink.any() and background.any()
        assert values[ink].mean() > values[background].mean(), f"{f.name}: the evidence is not on the ink"
        ratios.append(float(values[ink].mean() - values[background].mean()))
    assert np.median(ratios) > 0.01  # a clear difference in probability, not rounding noise


def test_the_python_client_gets_the_same_numbers_and_a_chosen_class(server, tmp_path):
    f = digit_examples()[0]
    with ExplainClient(server.address) as c:
        (r,) = c.explain([f.read_bytes()], top_k=1, classes=[3, 5], overlay=False)
        assert c.last_method == "occlusion" and c.last_model[0] == MODEL_NAME
    assert [h.index for h in r.heatmaps] == [3, 5] and [h.label for h in r.heatmaps] == ["3", "5"]
    assert all(h.overlay_png == b"" and h.values.shape == (28, 28) for h in r.heatmaps)
    assert not np.array_equal(r.heatmaps[0].values, r.heatmaps[1].values)


def test_a_refused_request_names_the_field_over_the_wire(server, tmp_path):
    from server.security import group_of

    assert group_of("/cnn.v1.Classification/Explain") == "inference"  # the same tokens as Classify
    r = cnn(
        "explain",
        str(digit_examples()[0]),
        "--server",
        server.address,
        "--out",
        str(tmp_path),
        "--class",
        "99",
        check=False,
    )
    assert r.returncode == 1
    assert r.stderr.strip() == (
        f"cnn explain: {server.address}: INVALID_ARGUMENT: class_indices[0]: 99 is not a class of this model (0..9)"
    )
    assert list(tmp_path.iterdir()) == []
