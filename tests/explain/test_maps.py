"""server/explain.py: the numpy and PIL parts of explanations (maps, occlusion, overlay), checked against
torch's own operators where one exists and against hand-made inputs whose answer is known."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from server.errors import InvalidInput, RepositoryError
from server.explain import (
    METHOD_CAM,
    METHOD_OCCLUSION,
    CamHead,
    ExplainSettings,
    cam,
    cam_explain,
    choose_classes,
    class_maps,
    decode_array,
    encode_array,
    explain_method,
    input_image,
    normalise,
    occlusion_batch,
    occlusion_explain,
    occlusion_inputs,
    occlusion_maps,
    occlusion_plan,
    overlay_shape,
    plan_for,
    render_overlay,
    upsample,
)


@pytest.mark.parametrize(
    "src,dst",
    [
        ((7, 7), (28, 28)),
        ((4, 4), (28, 28)),
        ((3, 5), (10, 21)),
        ((1, 1), (6, 6)),
        ((7, 7), (224, 224)),
        ((28, 28), (28, 28)),
    ],
)
def test_upsample_is_torch_bilinear_without_corner_alignment(src, dst):
    rng = np.random.default_rng(0)
    m = rng.normal(size=(2, 3, *src)).astype(np.float32)
    want = F.interpolate(torch.from_numpy(m), size=dst, mode="bilinear", align_corners=False).numpy()
    got = upsample(m, *dst)
    assert got.shape == (2, 3, *dst) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_cam_is_the_class_weighted_sum_of_feature_maps():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(3, 5, 4, 4)).astype(np.float32)
    w = rng.normal(size=(10, 5)).astype(np.float32)
    classes = np.array([[0, 9], [3, 3], [7, 1]])
    got = cam(f, w, classes)
    assert got.shape == (3, 2, 4, 4)
    for n in range(3):
        for j, c in enumerate(classes[n]):
            want = sum(w[c, k] * f[n, k] for k in range(5))
            np.testing.assert_allclose(got[n, j], want, rtol=1e-5, atol=1e-5)
    # the CAM identity: the logit (without bias) is the mean of the map
    np.testing.assert_allclose(
        got.mean(axis=(2, 3)), np.einsum("nmc,nc->nm", w[classes], f.mean(axis=(2, 3))), atol=1e-5
    )


@pytest.mark.parametrize(
    "h,w,grid", [(28, 28, 7), (32, 32, 7), (224, 224, 7), (10, 17, 3), (8, 8, 7), (28, 28, 1), (5, 5, 9)]
)
def test_occlusion_plan_covers_every_pixel(h, w, grid):
    plan = occlusion_plan(h, w, grid)
    assert plan.rows == 1 + len(plan.corners) <= 1 + grid * grid
    ph, pw = plan.patch
    assert all(0 <= y <= h - ph and 0 <= x <= w - pw for y, x in plan.corners)
    coverage = np.zeros((h, w))
    for y, x in plan.corners:
        coverage[y : y + ph, x : x + pw] += 1
    assert coverage.min() >= 1  # no pixel is left unexplained
    np.testing.assert_allclose(plan.inverse_coverage, 1 / coverage, rtol=1e-6)


def test_default_plan_for_28x28_is_one_batch_of_50_rows_with_7_pixel_patches():
    plan = occlusion_plan(28, 28, ExplainSettings().occlusion_grid, ExplainSettings().occlusion_patch)
    assert plan.rows == 50 and plan.patch == (7, 7)


def test_occlusion_batch_blanks_exactly_one_patch_per_row():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 12, 12)).astype(np.float32)
    plan = occlusion_plan(12, 12, 3)
    fill = np.array([-1.0, 0.5, 2.0], np.float32)
    b = occlusion_batch(x, plan, fill)
    assert b.shape == (plan.rows, 3, 12, 12) and b.dtype == np.float32
    np.testing.assert_array_equal(b[0], x)
    ph, pw = plan.patch
    for i, (y, xx) in enumerate(plan.corners, start=1):
        inside = np.zeros((12, 12), bool)
        inside[y : y + ph, xx : xx + pw] = True
        for c in range(3):
            assert (b[i, c][inside] == fill[c]).all()
            np.testing.assert_array_equal(b[i, c][~inside], x[c][~inside])


def test_occlusion_map_peaks_where_the_evidence_is():
    """A 'model' whose class-1 probability is the mean of a 6x6 region at (14, 4): the map is positive
    exactly where patches touch that region and zero far from it; class 0 (1 - p1) is its mirror."""
    x = np.ones((1, 28, 28), np.float32)
    plan = occlusion_plan(28, 28, 7)
    b = occlusion_batch(x, plan, 0.0)
    p1 = b[:, 0, 14:20, 4:10].mean(axis=(1, 2))
    probs = np.stack([1 - p1, p1], axis=1)
    maps = occlusion_maps(probs, plan, [1, 0])
    assert maps.shape == (2, 28, 28)
    assert maps[0, 14:20, 4:10].min() > 0.05
    assert np.abs(maps[0, :5, 20:]).max() == 0.0  # no patch covering this corner touches the region
    np.testing.assert_allclose(maps[1], -maps[0], atol=1e-6)
    assert np.unravel_index(np.argmax(maps[0]), (28, 28))[0] in range(12, 22)


def test_normalise():
    m = np.array([[1.0, 3.0], [2.0, np.nan]], np.float32)
    n = normalise(m)
    np.testing.assert_allclose(n, [[0.0, 1.0], [0.5, 0.0]])
    assert (normalise(np.full((3, 3), 7.0)) == 0).all()
    assert (normalise(np.full((2, 2), np.inf)) == 0).all()
    np.testing.assert_allclose(normalise(np.array([-1.0, 0.0, 1.0, 2.0])), [0.0, 0.0, 0.5, 1.0])  # negatives: floor 0


def test_choose_classes_defaults_to_top1_and_names_a_bad_index():
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], np.float32)
    np.testing.assert_array_equal(choose_classes(probs, [], 3), [[1], [0]])
    np.testing.assert_array_equal(choose_classes(probs, [2, 0], 3), [[2, 0], [2, 0]])
    with pytest.raises(InvalidInput, match=r"class_indices\[1\]: 3 is not a class of this model \(0\.\.2\)"):
        choose_classes(probs, [0, 3], 3)


def test_input_image_undoes_the_normalisation():
    pix = np.arange(0, 256, 4, dtype=np.uint8).reshape(8, 8)
    x = ((pix / 255.0 - 0.1307) / 0.3081).astype(np.float32)[None]
    img = input_image(x, 1 / 255, [0.1307], [0.3081])
    assert img.shape == (8, 8, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[:, :, 0], pix)
    np.testing.assert_array_equal(img[:, :, 2], pix)


def test_overlay_is_a_png_of_the_expected_size_with_the_input_under_cold_regions():
    base = np.zeros((28, 28, 3), np.uint8)
    base[10:18, 10:18] = 200
    heat = np.zeros((28, 28), np.float32)
    heat[:, 20:] = 5.0  # evidence on the right
    assert Image.open(io.BytesIO(render_overlay(base, heat))).size == (28, 28)  # default: the input's size
    png = render_overlay(base, heat, size=224)
    img = np.asarray(Image.open(io.BytesIO(png)))
    assert img.shape == (224, 224, 3)
    np.testing.assert_array_equal(img[80:144, 80:144], 200)  # cold: the input unchanged (enlarged 8x)
    assert (img[:, 200:] == [153, 153, 0]).all()  # the strongest evidence: yellow at 0.6 over black
    assert img[:, 150:170, 0].mean() > 3 * img[:, 150:170, 2].mean() + 20  # the rising edge: reddish
    assert Image.open(io.BytesIO(render_overlay(base, heat, size=100))).size == (100, 100)
    assert overlay_shape(28, 56, 224) == (112, 224)
    with pytest.raises(InvalidInput, match="overlay_size"):
        overlay_shape(28, 28, 5000)


def test_array_codec_round_trips_exactly_and_names_bad_entries():
    a = np.random.default_rng(3).normal(size=(10, 64)).astype(np.float32)
    np.testing.assert_array_equal(decode_array(encode_array(a), "w"), a)
    with pytest.raises(RepositoryError, match="here: dtype must be float32"):
        decode_array({"dtype": "float64", "shape": [1], "base64": ""}, "here")
    with pytest.raises(RepositoryError, match="here:"):
        decode_array({"dtype": "float32", "shape": [3], "base64": "AAAA"}, "here")


def test_method_from_metadata_and_cam_head():
    assert explain_method({}) == METHOD_OCCLUSION  # exported before explanations existed
    assert explain_method({"explain": {"method": "cam"}}) == METHOD_CAM
    assert explain_method({"explain": {"method": "magic"}}) == METHOD_OCCLUSION
    w, b = np.ones((3, 4), np.float32), np.zeros(3, np.float32)
    head = CamHead.from_extra(
        {"explain": {"method": "cam", "class_weights": encode_array(w), "class_bias": encode_array(b)}}, "m"
    )
    np.testing.assert_array_equal(head.weights, w)
    with pytest.raises(RepositoryError, match="do not form a"):
        CamHead.from_extra(
            {"explain": {"method": "cam", "class_weights": encode_array(w), "class_bias": encode_array(w)}}, "m"
        )
    with pytest.raises(RepositoryError, match="method is not 'cam'"):
        CamHead.from_extra({"explain": {"method": "occlusion"}}, "m")


def test_plan_for_fits_one_image_in_one_batch():
    assert plan_for(28, 28, 64).rows == 50
    assert plan_for(28, 28, 20).rows == 17  # grid 4
    assert plan_for(28, 28, 2).rows == 50  # too small to fit any useful grid: the default, split over batches


def test_occlusion_explain_and_class_maps_end_to_end_on_a_known_model():
    """Two images through a 'model' that looks at the top-left quadrant (class 1) versus the rest (class 0)."""
    x = np.ones((2, 1, 28, 28), np.float32)
    x[1] *= 0.5
    plan = plan_for(28, 28, 64)
    batches = occlusion_inputs(x, plan)
    assert [b.shape for b in batches] == [(50, 1, 28, 28)] * 2

    def model(b):
        q = b[:, 0, :14, :14].mean(axis=(1, 2))
        r = (b[:, 0].sum(axis=(1, 2)) - b[:, 0, :14, :14].sum(axis=(1, 2))) / (28 * 28 - 196)
        e = np.exp(np.stack([r, 2 * q], axis=1))
        return e / e.sum(axis=1, keepdims=True)

    probs, classes, maps = occlusion_explain([model(b) for b in batches], plan, [], 2)
    np.testing.assert_allclose(probs, model(x))
    np.testing.assert_array_equal(classes, [[1], [1]])
    assert maps.shape == (2, 1, 28, 28)
    for m in maps[:, 0]:
        assert m[:14, :14].mean() > 0 > m[14:, 14:].mean()  # evidence for class 1 is in its quadrant
    out = class_maps(
        x, classes, maps, ["zero", "one"], scale=1 / 255, mean=[0.0], std=[1 / 255], overlay=True, overlay_size=56
    )
    assert [[(c.index, c.label, c.values.shape) for c in row] for row in out] == [[(1, "one", (28, 28))]] * 2
    assert all(Image.open(io.BytesIO(row[0].overlay_png)).size == (56, 56) for row in out)
    bare = class_maps(
        x, classes, maps, ["zero", "one"], scale=1.0, mean=[0.0], std=[1.0], overlay=False, overlay_size=9999
    )
    assert bare[0][0].overlay_png == b""
    with pytest.raises(InvalidInput, match="overlay_size"):
        class_maps(x, classes, maps, ["zero", "one"], scale=1.0, mean=[0.0], std=[1.0], overlay=True, overlay_size=9999)


def test_cam_explain_is_cam_upsampled_and_checks_the_shapes():
    rng = np.random.default_rng(4)
    w, b = rng.normal(size=(10, 8)).astype(np.float32), np.zeros(10, np.float32)
    head = CamHead(w, b)
    f = rng.normal(size=(3, 8, 4, 4)).astype(np.float32)
    probs = rng.random(size=(3, 10)).astype(np.float32)
    classes, maps = cam_explain(probs, f, head, [2, 5], 28, 28)
    np.testing.assert_array_equal(classes, [[2, 5]] * 3)
    np.testing.assert_allclose(maps, upsample(cam(f, w, classes), 28, 28), atol=1e-6)
    classes, _ = cam_explain(probs, f, head, [], 28, 28)
    np.testing.assert_array_equal(classes[:, 0], probs.argmax(axis=1))
    with pytest.raises(RepositoryError, match="do not match its classifier weights"):
        cam_explain(probs, f[:, :7], head, [], 28, 28)
