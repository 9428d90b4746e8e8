"""Real images for the gate and for INT8 calibration: the checkpoint's own dataset, preprocessed the
way the metadata says (preprocessing.image.prepare_batch: resized to H x W with the recorded
interpolation exactly as the server resizes, x * scale, (x - mean) / std), as float32 NCHW numpy.
Dataset images are already in the model's training form, so mode "digit" is not re-run on them.

Test images for parity and accuracy; training images (never test) for calibration.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from export.errors import ExportError
from preprocessing.image import prepare_batch
from preprocessing.spec import Preprocessing


@dataclass
class Images:
    """uint8 images kept as they are; normalised float32 made on demand (a whole 224x224 RGB test split
    in float32 would take gigabytes)."""

    raw: Any  # torch uint8 (N, C, H, W), the dataset's size
    y: np.ndarray  # int64 (N,)
    pre: Preprocessing  # the checkpoint's preprocessing
    spec: str
    split: str
    _x: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.y)

    def normalised(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        return preprocess(self.raw[start:stop], self.pre)

    @property
    def x(self) -> np.ndarray:
        """All images, normalised float32 (N, C, H, W); for small sets (parity, calibration, tests)."""
        if self._x is None:
            self._x = self.normalised()
        return self._x

    def batches(self, batch_size: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i in range(0, len(self), batch_size):
            yield (
                self._x[i : i + batch_size] if self._x is not None else self.normalised(i, i + batch_size),
                self.y[i : i + batch_size],
            )


def dataset_for(ckpt: dict[str, Any], spec: str | None):
    from training.data import load_dataset
    from training.errors import TrainingError

    spec = spec or ckpt.get("dataset") or ""
    if not spec:
        raise ExportError("the checkpoint names no dataset; pass --data SPEC (e.g. digits, idx:DIR)")
    recipe = ckpt.get("recipe") or {}
    pre = ckpt.get("preprocessing") or {}
    # The same arguments training used (TrainConfig keys), so the test split is the same one.
    kwargs: dict[str, Any] = {k: recipe[k] for k in ("seed", "val_fraction", "image_size", "color_mode") if k in recipe}
    if spec.startswith("folder:"):
        kwargs.setdefault("image_size", int(pre.get("height", 32)))
        kwargs.setdefault("color_mode", pre.get("color_mode", "auto"))
    try:
        return load_dataset(spec, **kwargs)
    except TrainingError as e:
        raise ExportError(
            f"cannot load the checkpoint's dataset {spec!r} for verification: {e} "
            f"(pass --data SPEC to use another copy)"
        ) from None


def preprocess(x_uint8, pre: Preprocessing | dict[str, Any]) -> np.ndarray:
    """uint8 (N, C, H, W) (torch or numpy) -> float32 normalised numpy, per the checkpoint's preprocessing."""
    pre = pre if isinstance(pre, Preprocessing) else Preprocessing.from_dict(pre)
    x = x_uint8.numpy() if hasattr(x_uint8, "numpy") else np.asarray(x_uint8)
    return prepare_batch(x, pre)


def load_images(
    ckpt: dict[str, Any], split: str, limit: int | None = None, *, spec: str | None = None, seed: int = 0, dataset=None
) -> Images:
    """`limit` images of `split` ("test" or "train"), a seeded stratified-ish random subset when limited."""
    ds = dataset if dataset is not None else dataset_for(ckpt, spec)
    x, y = (ds.test_x, ds.test_y) if split == "test" else (ds.train_x, ds.train_y)
    if len(ds.labels) != len(ckpt["labels"]):
        raise ExportError(
            f"dataset {ds.name!r} has {len(ds.labels)} classes but the checkpoint has {len(ckpt['labels'])}"
        )
    if list(x.shape[1:2]) != list(ckpt["input_shape"][:1]):
        raise ExportError(
            f"dataset {ds.name!r} images have {x.shape[1]} channels but the model expects {ckpt['input_shape'][0]}"
        )
    if limit is not None and limit < len(x):
        idx = np.sort(np.random.default_rng(seed).permutation(len(x))[:limit])
        x, y = x[idx], y[idx]
    return Images(x, y.numpy().astype(np.int64), Preprocessing.from_dict(ckpt["preprocessing"]), ds.name, split)
