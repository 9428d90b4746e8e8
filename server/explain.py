"""Explanations of a classification, in numpy and PIL only (no torch at serving time): which part of the
input carries the evidence for a class.

Two methods; the model's metadata (`extra["explain"]["method"]`, written by `cnn export`) says which:

    "cam"        class activation mapping (Zhou et al. 2016, "Learning Deep Features for Discriminative
                 Localization") for networks that end in global average pooling + one linear layer
                 (ResNet, MobileNet, GoogLeNet). Export writes EXPLAIN_FILE beside model.onnx: the same
                 network with the last convolutional feature maps f_k as an extra output, and the
                 classifier's weights w^c_k in its metadata. The map of class c is
                     M_c(x, y) = sum_k w^c_k f_k(x, y)       (logit_c = mean over (x, y) of M_c + b_c)
                 bilinearly upsampled from the feature grid to the input's H x W.
    "occlusion"  occlusion sensitivity (Zeiler & Fergus 2014) for every other model (LeNet-5, AlexNet,
                 VGG) and for models exported before this existed: the input and grid x grid copies of it,
                 each with one square patch set to the training mean (0 after normalisation), run as ONE
                 batch through the served model. The map at a pixel is the class probability of the
                 original minus that of an occluded copy, averaged over the patches covering the pixel.

Heatmap values are raw (logit units for CAM, probability drops for occlusion); the PNG overlay shows
the normalised map (see `normalise`) over the preprocessed input.
"""

from __future__ import annotations

import base64
import functools
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from server.core.types import Heatmap
from server.errors import InvalidInput, RepositoryError

METHOD_CAM = "cam"
METHOD_OCCLUSION = "occlusion"
METHODS = (METHOD_CAM, METHOD_OCCLUSION)
EXPLAIN_FILE = "explain.onnx"  # the CAM graph, in the version folder beside model.onnx
FEATURES_OUTPUT = "features"  # the CAM graph's feature-map output (batch, C, h, w)
MAX_OVERLAY_SIZE = 2048


@dataclass(frozen=True)
class ExplainSettings:
    occlusion_grid: int = 7  # patch positions per axis: 1 + 7 * 7 = 50 rows, one batch under max_batch_size 64
    # patch side as a fraction of the input side: 0.25 of 28 -> 7 pixels; the positions are spread evenly
    # from edge to edge, so with grid 7 every pixel is covered by 1-2 patches per axis
    occlusion_patch: float = 0.25
    overlay_alpha: float = 0.6  # opacity of the colour where the normalised map is 1 (0 where it is 0)
    # zlib level: 1 encodes a 224x224 overlay ~2x faster than 6 (4.6 vs ~9 ms CPU on this busy VM), ~20 % larger
    png_compress_level: int = 1


# --------------------------------------------------------------------------------------------------
# the method and the CAM weights from the model's metadata


def explain_method(extra: dict[str, Any]) -> str:
    """The method a model's metadata names; models exported before explanations existed get occlusion."""
    entry = extra.get("explain") if isinstance(extra, dict) else None
    method = entry.get("method") if isinstance(entry, dict) else None
    return method if method in METHODS else METHOD_OCCLUSION


def encode_array(a: np.ndarray) -> dict[str, Any]:
    """float32 array -> JSON-able {"dtype", "shape", "base64"} (little-endian, exact)."""
    a = np.ascontiguousarray(a, dtype="<f4")
    return {"dtype": "float32", "shape": list(a.shape), "base64": base64.b64encode(a.tobytes()).decode("ascii")}


def decode_array(entry: Any, where: str) -> np.ndarray:
    """The inverse of encode_array; RepositoryError naming `where` if the entry is malformed."""
    try:
        if entry.get("dtype") != "float32":
            raise ValueError(f"dtype must be float32, got {entry.get('dtype')!r}")
        shape = [int(d) for d in entry["shape"]]
        a = np.frombuffer(base64.b64decode(entry["base64"], validate=True), dtype="<f4")
        return a.reshape(shape).astype(np.float32)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise RepositoryError(f"{where}: {e}") from None


@dataclass(frozen=True)
class CamHead:
    """The classifier of a CAM model: logits = weights @ mean_xy(features) + bias."""

    weights: np.ndarray  # (K, C) float32
    bias: np.ndarray  # (K,) float32
    features_output: str = FEATURES_OUTPUT

    @classmethod
    def from_extra(cls, extra: dict[str, Any], where: str) -> CamHead:
        """From the CAM graph's metadata (`extra["explain"]`, see export/explain.py)."""
        entry = extra.get("explain") if isinstance(extra, dict) else None
        if not isinstance(entry, dict) or entry.get("method") != METHOD_CAM:
            raise RepositoryError(f"{where}: metadata extra.explain.method is not '{METHOD_CAM}'")
        w = decode_array(entry.get("class_weights"), f"{where}: metadata extra.explain.class_weights")
        b = decode_array(entry.get("class_bias"), f"{where}: metadata extra.explain.class_bias")
        if w.ndim != 2 or b.shape != (w.shape[0],):
            raise RepositoryError(
                f"{where}: metadata extra.explain: class_weights {list(w.shape)} and "
                f"class_bias {list(b.shape)} do not form a (K, C) classifier"
            )
        return cls(w, b, str(entry.get("features_output") or FEATURES_OUTPUT))


# --------------------------------------------------------------------------------------------------
# maps


def cam(features: np.ndarray, weights: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Class activation maps: features (N, C, h, w), weights (K, C), classes (N, m) -> (N, m, h, w)."""
    w = weights[classes]  # (N, m, C)
    # optimize=False: numpy's own loops. The BLAS path it would pick spins up OpenBLAS threads, which on a
    # server whose cores are busy with onnxruntime and gRPC cost far more than this small product.
    return np.einsum("nmc,nchw->nmhw", w, features.astype(np.float32, copy=False), optimize=False)


def upsample(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of the last two axes: (..., h, w) -> (..., height, width), float32. For enlargement this
    is interpolation with half-pixel centres and edge clamping, as torch's interpolate(align_corners=False).
    PIL's C resampler on 32-bit float images: no BLAS threads (see `cam`), ~0.1 ms for 28 -> 224."""
    maps = np.asarray(maps, dtype=np.float32)
    h, w = maps.shape[-2:]
    if (h, w) == (height, width):
        return maps
    flat = maps.reshape(-1, h, w)
    out = np.empty((len(flat), height, width), np.float32)
    for i, m in enumerate(flat):
        img = Image.fromarray(np.ascontiguousarray(m), "F")
        out[i] = np.asarray(img.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
    return out.reshape(*maps.shape[:-2], height, width)


def normalise(m: np.ndarray) -> np.ndarray:
    """To [0, 1] for display: from max(min, 0) to the max. A map with negative values (evidence against the
    class, e.g. occluding there raised the probability) shows only its positive part; an all-positive one
    (a typical CAM) is min-max normalised as in Zhou et al. A constant map, and non-finite values, give 0."""
    m = np.where(np.isfinite(m), m, np.nan).astype(np.float32)
    if np.isnan(m).all():
        return np.zeros(m.shape, np.float32)
    lo, hi = max(float(np.nanmin(m)), 0.0), float(np.nanmax(m))
    out = np.zeros(m.shape, np.float32) if hi <= lo else np.clip((m - lo) / (hi - lo), 0.0, 1.0)
    return np.nan_to_num(out, nan=0.0)


# --------------------------------------------------------------------------------------------------
# occlusion


@dataclass(frozen=True)
class OcclusionPlan:
    height: int
    width: int
    patch: tuple[int, int]  # (ph, pw)
    corners: tuple[tuple[int, int], ...]  # top-left (y, x) of each patch, row-major
    inverse_coverage: np.ndarray = field(repr=False)  # (H, W): 1 / the number of patches covering each pixel

    @property
    def rows(self) -> int:
        """Rows in the batch: the original + one per patch."""
        return 1 + len(self.corners)


def _positions(size: int, patch: int, n: int) -> list[int]:
    return sorted({round(i * (size - patch) / (n - 1)) for i in range(n)}) if n > 1 else [(size - patch) // 2]


@functools.lru_cache(maxsize=32)
def occlusion_plan(height: int, width: int, grid: int = 7, patch: float = 0.25) -> OcclusionPlan:
    """Patch positions spread evenly over an H x W input so that every pixel is covered."""
    if grid < 1:
        raise ValueError(f"occlusion grid must be >= 1, got {grid}")
    if not 0.0 < patch <= 1.0:
        raise ValueError(f"occlusion patch must be in (0, 1], got {patch}")
    ph, pw = (max(1, math.ceil(patch * height)), max(1, math.ceil(patch * width)))
    # the positions must leave no gap: with n positions, a patch must span (size - patch) / (n - 1)
    ph = max(ph, math.ceil(height / grid))
    pw = max(pw, math.ceil(width / grid))
    ys, xs = _positions(height, ph, grid), _positions(width, pw, grid)
    corners = tuple((y, x) for y in ys for x in xs)
    masks = np.zeros((len(corners), height, width), np.float32)
    for i, (y, x) in enumerate(corners):
        masks[i, y : y + ph, x : x + pw] = 1.0
    coverage = masks.sum(axis=0)
    inverse = (1.0 / np.where(coverage > 0, coverage, np.inf)).astype(np.float32)
    inverse.setflags(write=False)
    return OcclusionPlan(height, width, (ph, pw), corners, inverse)


def occlusion_batch(x: np.ndarray, plan: OcclusionPlan, fill: float | np.ndarray = 0.0) -> np.ndarray:
    """x (C, H, W) normalised -> (1 + P, C, H, W): row 0 is x, row 1 + p has patch p set to `fill`
    (per channel; 0 is the training mean after normalisation)."""
    out = np.repeat(x[None], plan.rows, axis=0)
    ph, pw = plan.patch
    fill = np.asarray(fill, dtype=x.dtype).reshape(-1, 1, 1)
    for i, (y, xx) in enumerate(plan.corners, start=1):
        out[i, :, y : y + ph, xx : xx + pw] = fill
    return out


def occlusion_maps(probs: np.ndarray, plan: OcclusionPlan, classes: Sequence[int]) -> np.ndarray:
    """probs (1 + P, K) of one occlusion batch -> (m, H, W): for each class, the probability drop averaged
    over the patches covering each pixel."""
    probs = probs.astype(np.float32, copy=False)
    cls = np.asarray(classes, dtype=np.int64)
    drop = probs[0, cls][None, :] - probs[1:, cls]  # (P, m)
    acc = np.zeros((len(cls), plan.height, plan.width), np.float32)
    ph, pw = plan.patch
    for d, (y, x) in zip(drop, plan.corners):  # P small slice additions: no BLAS (see `cam`)
        acc[:, y : y + ph, x : x + pw] += d[:, None, None]
    return acc * plan.inverse_coverage


# --------------------------------------------------------------------------------------------------
# classes and the overlay


def choose_classes(probs: np.ndarray, class_indices: Sequence[int], num_classes: int) -> np.ndarray:
    """(N, K) probabilities -> (N, m) class indices to explain: the requested ones, else each top-1."""
    for i, c in enumerate(class_indices):
        if not 0 <= int(c) < num_classes:
            raise InvalidInput(f"class_indices[{i}]: {int(c)} is not a class of this model (0..{num_classes - 1})")
    if len(class_indices):
        return np.tile(np.asarray(class_indices, dtype=np.int64), (len(probs), 1))
    return np.argmax(probs, axis=1)[:, None]


def overlay_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(H', W') of the overlay: longer side `size`, or the input's own size when `size` is 0."""
    if size < 0 or size > MAX_OVERLAY_SIZE:
        raise InvalidInput(f"overlay_size: must be in 0..{MAX_OVERLAY_SIZE}, got {size}")
    if size == 0:
        return height, width
    ratio = size / max(height, width)
    return max(1, round(height * ratio)), max(1, round(width * ratio))


def input_image(x: np.ndarray, scale: float, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """The preprocessed input (C, H, W), normalisation undone -> (H, W, 3) uint8 RGB."""
    m = np.asarray(mean, np.float32).reshape(-1, 1, 1)
    s = np.asarray(std, np.float32).reshape(-1, 1, 1)
    pix = (x.astype(np.float32) * s + m) / np.float32(scale if scale else 1.0)
    pix = np.clip(np.nan_to_num(pix), 0, 255).round().astype(np.uint8).transpose(1, 2, 0)  # (H, W, C)
    return np.repeat(pix, 3, axis=2) if pix.shape[2] == 1 else pix[:, :, :3]


def render_overlay(
    base: np.ndarray, heat: np.ndarray, size: int = 0, settings: ExplainSettings = ExplainSettings()
) -> bytes:
    """PNG of `base` (H, W, 3) uint8 with the normalised `heat` (H, W) over it: colour from red
    (low) to yellow (high), opacity proportional to the map (cold regions show the input unchanged). The
    input is enlarged with nearest neighbours (its pixels stay visible), the map bilinearly. PIL all the way."""
    h, w = heat.shape
    oh, ow = overlay_shape(h, w, size)
    under = Image.fromarray(np.ascontiguousarray(base), "RGB")
    level = Image.fromarray((normalise(heat) * 255).round().astype(np.uint8), "L")
    if (oh, ow) != (h, w):
        under = under.resize((ow, oh), Image.Resampling.NEAREST)
        level = level.resize((ow, oh), Image.Resampling.BILINEAR)
    zero = Image.new("L", (ow, oh), 0)
    colour = Image.merge("RGB", (Image.new("L", (ow, oh), 255), level, zero))  # red -> yellow
    alpha = settings.overlay_alpha
    out = Image.composite(colour, under, level.point(lambda v: round(v * alpha)))
    buf = io.BytesIO()
    out.save(buf, format="PNG", compress_level=settings.png_compress_level)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# one request's explanations, from the model runs the caller made (the core batches and runs them)


def plan_for(
    height: int, width: int, max_batch_size: int, settings: ExplainSettings = ExplainSettings()
) -> OcclusionPlan:
    """The occlusion plan, its grid narrowed so that one image's rows fit one batch of the model."""
    grid = settings.occlusion_grid
    if max_batch_size >= 5:
        grid = min(grid, math.isqrt(max_batch_size - 1))
    return occlusion_plan(height, width, grid, settings.occlusion_patch)


def occlusion_inputs(x: np.ndarray, plan: OcclusionPlan) -> list[np.ndarray]:
    """(N, C, H, W) model input -> one (plan.rows, C, H, W) batch per image (row 0: the image itself)."""
    return [occlusion_batch(row, plan, 0.0) for row in x]


def occlusion_explain(
    probs_per_image: Sequence[np.ndarray], plan: OcclusionPlan, class_indices: Sequence[int], num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image (plan.rows, K) probabilities -> (probabilities of the unoccluded images (N, K),
    classes (N, m), maps (N, m, H, W))."""
    probs = np.stack([p[0] for p in probs_per_image]).astype(np.float32)
    classes = choose_classes(probs, class_indices, num_classes)
    maps = np.stack([occlusion_maps(p, plan, c) for p, c in zip(probs_per_image, classes)])
    return probs, classes, maps


def cam_explain(
    probs: np.ndarray, features: np.ndarray, head: CamHead, class_indices: Sequence[int], height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """The CAM graph's (N, K) probabilities and (N, C, h, w) features -> (classes (N, m), maps (N, m, H, W))."""
    k = head.weights.shape[0]
    if probs.shape[1] != k or features.shape[1] != head.weights.shape[1]:
        raise RepositoryError(
            f"CAM graph outputs ({probs.shape[1]} classes, {features.shape[1]} feature maps) do not "
            f"match its classifier weights {list(head.weights.shape)}"
        )
    classes = choose_classes(probs, class_indices, k)
    return classes, upsample(cam(features, head.weights, classes), height, width)


def class_maps(
    x: np.ndarray,
    classes: np.ndarray,
    maps: np.ndarray,
    labels: Sequence[str],
    *,
    scale: float,
    mean: Sequence[float],
    std: Sequence[float],
    overlay: bool,
    overlay_size: int = 0,
    settings: ExplainSettings = ExplainSettings(),
) -> list[list[Heatmap]]:
    """Per image, one Heatmap per explained class; the overlays drawn over the preprocessed input x (N, C, H, W)."""
    if overlay:
        overlay_shape(x.shape[2], x.shape[3], overlay_size)  # refuse a bad size before any drawing
    out = []
    for xi, ci, mi in zip(x, classes, maps):
        base = input_image(xi, scale, mean, std) if overlay else None
        row = []
        for c, m in zip(ci, mi):
            m = np.ascontiguousarray(m, dtype=np.float32)
            png = render_overlay(base, m, overlay_size, settings) if base is not None else b""
            row.append(Heatmap(int(c), labels[c] if c < len(labels) else str(int(c)), m, png))
        out.append(row)
    return out
