"""Datasets as in-memory uint8 tensors (N, C, H, W) with int64 labels, split into train/val/test.

Specs accepted by ``load_dataset``:
    mnist           the MNIST files shipped in data/mnist/ (CC BY-SA 3.0, see data/mnist/README.md), their MD5
                    checked on first read. Standard split: the first 55,000 training digits train, the last
                    5,000 validate (fixed, whatever the seed), the 10,000 test digits score the final model.
                    ``$CNN_MNIST_DIR`` points elsewhere (an install without the repository's data/ folder).
    digits          scikit-learn's bundled 8x8 handwritten digits (1797 images, no download), brought to
                    MNIST style: 0..16 -> 0..255, bilinear (antialiased) resize to 20x20, centred in a
                    28x28 black canvas, white digit on black. Fixed seeded stratified 70/10/20 split.
    idx:DIR         MNIST-format IDX files in DIR (train-images-idx3-ubyte, train-labels-idx1-ubyte,
                    t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; gzipped or not). Labels "0".."9"
                    unless DIR/labels.txt names the classes, one per line.
    fashion-mnist   the IDX files of Debian's package dataset-fashion-mnist, with the published class names.
    folder:DIR      one sub-folder per class of PNG/JPEG images (any size, grayscale or colour), resized to
                    ``image_size``; if DIR has train/ and test/ sub-folders they are the splits, otherwise
                    a seeded stratified 80/20 train/test split is made.
For idx, fashion-mnist and folder, validation is a seeded stratified ``val_fraction`` of the training
split. The test split is only ever used for the final report, never for model selection.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training.errors import DataError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # where `apt-get install dataset-fashion-mnist` puts it
FASHION_MNIST_LABELS = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
MNIST_DIR = Path(__file__).resolve().parents[1] / "data" / "mnist"  # shipped with the repository
MNIST_MD5 = {  # of the .gz files as distributed (data/mnist/README.md); checked on first read
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_VAL_SIZE = 5000  # the last 5,000 of the 60,000 training digits validate
DIGITS_SPLIT_SEED = 20240601  # fixed: the digits test split never changes with the training seed
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


@dataclass
class Dataset:
    """Three splits of uint8 images (N, C, H, W) and int64 labels (N,), plus class names."""

    name: str  # the spec it was loaded from, e.g. "digits", "idx:/data/mnist"
    labels: list[str]  # class names in index order
    train_x: torch.Tensor  # (N_train, C, H, W) uint8
    train_y: torch.Tensor  # (N_train,) int64
    val_x: torch.Tensor  # (N_val, C, H, W) uint8
    val_y: torch.Tensor  # (N_val,) int64
    test_x: torch.Tensor  # (N_test, C, H, W) uint8
    test_y: torch.Tensor  # (N_test,) int64

    @property
    def input_shape(self) -> list[int]:
        """[C, H, W]"""
        return list(self.train_x.shape[1:])

    @property
    def color_mode(self) -> str:
        """ "L" for 1 channel, "RGB" for 3."""
        return "L" if self.train_x.shape[1] == 1 else "RGB"

    def mean_std(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training images scaled to [0, 1]."""
        x = self.train_x.double().div_(255.0)  # (N, C, H, W)
        mean = x.mean(dim=(0, 2, 3))
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
        return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]


def data_kind(spec: str) -> str:
    """Which recipe family a data spec falls in, without loading it: "digits", "gray28" or "color"."""
    if spec == "digits":
        return "digits"
    if spec in ("mnist", "fashion-mnist") or spec.startswith("idx:"):
        return "gray28"
    if spec.startswith("folder:"):
        return "color"
    raise DataError(f"unknown data {spec!r}; expected mnist, digits, fashion-mnist, idx:DIR or folder:DIR")


def dataset_key(spec: str) -> str:
    """Short name used in recipe file names: mnist, digits, fashion_mnist, idx, folder."""
    data_kind(spec)  # validates
    return spec.split(":", 1)[0].replace("-", "_")


def load_dataset(
    spec: str, *, seed: int = 0, val_fraction: float = 0.1, image_size: int = 32, color_mode: str = "auto"
) -> Dataset:
    """Load a dataset by spec (see the module docstring). Raises DataError with an actionable message."""
    kind = data_kind(spec)
    if spec == "digits":
        return load_digits()
    if spec == "mnist":
        return load_mnist()
    if spec == "fashion-mnist":
        if not Path(FASHION_MNIST_DIR).is_dir():
            raise DataError(
                f"fashion-mnist not found at {FASHION_MNIST_DIR}: install Debian's package "
                f"dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist), or pass idx:DIR"
            )
        return load_idx_dir(
            FASHION_MNIST_DIR, name=spec, labels=FASHION_MNIST_LABELS, seed=seed, val_fraction=val_fraction
        )
    path = spec.split(":", 1)[1]
    if not path:
        raise DataError(f"data {spec!r} names no directory")
    if kind == "gray28":
        return load_idx_dir(path, name=spec, seed=seed, val_fraction=val_fraction)
    return load_folder(
        path, name=spec, image_size=image_size, color_mode=color_mode, seed=seed, val_fraction=val_fraction
    )


# ----------------------------------------------------------------------------- splitting


def stratified_split(y: np.ndarray, fractions: list[float], seed: int) -> list[np.ndarray]:
    """Split indices per class by ``fractions`` (summing to 1), shuffled with ``seed``. Sorted indices."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        bounds = np.round(np.cumsum(fractions) * len(idx)).astype(int)
        start = 0
        for i, end in enumerate(bounds):
            parts[i].append(idx[start:end])
            start = end
    return [np.sort(np.concatenate(p)) for p in parts]


def _hold_out_val(x: torch.Tensor, y: torch.Tensor, val_fraction: float, seed: int):
    train_idx, val_idx = stratified_split(y.numpy(), [1 - val_fraction, val_fraction], seed)
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx]


# ----------------------------------------------------------------------------- digits


def digits_images() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 scikit-learn digits as MNIST-style 28x28 uint8 (N, 1, 28, 28) and labels (N,)."""
    from sklearn.datasets import load_digits as sk_load_digits  # bundled with scikit-learn, no download

    d = sk_load_digits()
    x = torch.from_numpy(d.images).float().mul_(255.0 / 16.0).unsqueeze(1)  # (N, 1, 8, 8) in 0..255
    x = F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False, antialias=True)
    x = F.pad(x, (4, 4, 4, 4))  # (N, 1, 28, 28)
    x = x.round_().clamp_(0, 255).to(torch.uint8)
    return x, torch.from_numpy(d.target).long()


def digits_split_indices() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fixed stratified 70/10/20 train/val/test split of the digits (indices into digits_images)."""
    _, y = digits_images()
    tr, va, te = stratified_split(y.numpy(), [0.7, 0.1, 0.2], DIGITS_SPLIT_SEED)
    return tr, va, te


def load_digits() -> Dataset:
    x, y = digits_images()
    tr, va, te = stratified_split(y.numpy(), [0.7, 0.1, 0.2], DIGITS_SPLIT_SEED)
    return Dataset("digits", [str(i) for i in range(10)], x[tr], y[tr], x[va], y[va], x[te], y[te])


# ----------------------------------------------------------------------------- MNIST (shipped)

_verified: dict[tuple[str, int, int], bool] = {}  # (path, size, mtime_ns) whose MD5 matched, this process


def mnist_dir() -> Path:
    """Where the shipped MNIST files are: ``$CNN_MNIST_DIR`` if set, else data/mnist/ of the repository."""
    env = os.environ.get("CNN_MNIST_DIR")
    return Path(env) if env else MNIST_DIR


def verify_mnist(directory: str | os.PathLike | None = None) -> Path:
    """Check that the four MNIST files exist and have the published MD5 sums (each file once per process,
    about 20 ms for the 11.6 MB). Returns the directory; raises DataError naming every bad file."""
    d = Path(directory) if directory is not None else mnist_dir()
    problems = []
    for name, want in MNIST_MD5.items():
        p = d / name
        try:
            st = p.stat()
        except OSError:
            problems.append(f"{name} is missing")
            continue
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
        if key in _verified:
            continue
        try:
            got = hashlib.md5(p.read_bytes()).hexdigest()
        except OSError as e:
            problems.append(f"{name} cannot be read ({e})")
            continue
        if got != want:
            problems.append(f"{name} is corrupt (MD5 {got}, expected {want}, {st.st_size:,} bytes)")
        else:
            _verified[key] = True
    if problems:
        raise DataError(
            f"MNIST in {d}: {'; '.join(problems)}. The repository ships these files in data/mnist/ "
            f"(restore them with `git checkout -- data/mnist`), or point CNN_MNIST_DIR at a "
            f"folder holding the original files"
        )
    return d


def load_mnist(directory: str | os.PathLike | None = None) -> Dataset:
    """The shipped MNIST with the standard split: train = the first 55,000 training digits, val = the last
    5,000, test = the 10,000 test digits. The split does not depend on the seed."""
    d = verify_mnist(directory)
    x, y = load_idx_split(d, "train")
    test_x, test_y = load_idx_split(d, "test")
    n = len(y) - MNIST_VAL_SIZE
    return Dataset("mnist", [str(i) for i in range(10)], x[:n], y[:n], x[n:], y[n:], test_x, test_y)


# ----------------------------------------------------------------------------- IDX

_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (optionally gzipped) from its header: 0, 0, dtype code, ndim, then ndim
    big-endian uint32 dims, then the data."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic {raw[:4].hex()})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    count = int(np.prod(dims))
    if len(raw) - header != count * dtype.itemsize:
        raise DataError(
            f"{path}: header says {dims} x {dtype.itemsize} bytes but the file holds {len(raw) - header} bytes of data"
        )
    return np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(directory: Path, split: str, what: str) -> Path:
    # train-images-idx3-ubyte, train-images.idx3-ubyte, t10k-labels-idx1-ubyte.gz, kmnist-train-imgs..., etc.
    splits = ("train",) if split == "train" else ("t10k", "test")
    kinds = ("images", "imgs") if what == "images" else ("labels",)
    pattern = re.compile(rf"(^|[-_.])({'|'.join(splits)})[-_.]({'|'.join(kinds)})[-_.]idx\d[-_.]ubyte(\.gz)?$")
    hits = sorted(p for p in directory.iterdir() if p.is_file() and pattern.search(p.name.lower()))
    if not hits:
        raise DataError(
            f"no {split} {what} IDX file (e.g. {splits[0]}-{what}-idx"
            f"{3 if what == 'images' else 1}-ubyte[.gz]) in {directory}"
        )
    return hits[0]


def load_idx_split(directory: str | os.PathLike, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 1, H, W) uint8, labels (N,) int64) of the "train" or "test" split of an IDX dir."""
    directory = Path(directory)
    ip, lp = _find_idx(directory, split, "images"), _find_idx(directory, split, "labels")
    images, labels = read_idx(ip), read_idx(lp)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DataError(
            f"{ip}: expected uint8 images of shape (N, H, W) or (N, H, W, C), got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{lp}: expected a 1-D integer label array, got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{ip} has {len(images)} images but {lp} has {len(labels)} labels")
    x = torch.from_numpy(images.copy())
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)
    return x, torch.from_numpy(labels.astype(np.int64))


def load_idx_dir(
    directory: str | os.PathLike,
    *,
    name: str,
    labels: list[str] | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
) -> Dataset:
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"data directory {directory} does not exist")
    train_x, train_y = load_idx_split(directory, "train")
    test_x, test_y = load_idx_split(directory, "test")
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    if labels is None:
        names_file = directory / "labels.txt"
        if names_file.is_file():
            labels = [s.strip() for s in names_file.read_text().splitlines() if s.strip()]
        else:
            labels = [str(i) for i in range(n_classes)]
    if len(labels) < n_classes or min(train_y.min(), test_y.min()) < 0:
        raise DataError(f"{directory}: labels run 0..{n_classes - 1} but there are {len(labels)} class names")
    tx, ty, vx, vy = _hold_out_val(train_x, train_y, val_fraction, seed)
    return Dataset(name, labels, tx, ty, vx, vy, test_x, test_y)


# ----------------------------------------------------------------------------- folder


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read_folder(root: Path, classes: list[str], image_size: int, color_mode: str):
    from PIL import Image, UnidentifiedImageError

    images, targets = [], []
    for ci, cname in enumerate(classes):
        files = sorted(p for p in (root / cname).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DataError(f"class folder {root / cname} has no PNG/JPEG images")
        for p in files:  # load time only: the training hot path never touches PIL
            try:
                with Image.open(p) as im:
                    small = im.convert(color_mode).resize((image_size, image_size), Image.Resampling.BILINEAR)
                    a = np.asarray(small, dtype=np.uint8)
            except (OSError, UnidentifiedImageError) as e:
                raise DataError(f"cannot read image {p}: {e}") from e
            images.append(a[:, :, None] if a.ndim == 2 else a)  # (H, W, C)
            targets.append(ci)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)
    return x, torch.tensor(targets, dtype=torch.int64)


def _is_gray(root: Path) -> bool:
    from PIL import Image

    for p in root.rglob("*"):
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            with Image.open(p) as im:
                if im.mode not in ("L", "1", "LA", "I", "I;16"):
                    return False
    return True


def load_folder(
    directory: str | os.PathLike,
    *,
    name: str,
    image_size: int = 32,
    color_mode: str = "auto",
    seed: int = 0,
    val_fraction: float = 0.1,
) -> Dataset:
    root = Path(directory)
    if not root.is_dir():
        raise DataError(f"data directory {root} does not exist")
    if color_mode == "auto":
        color_mode = "L" if _is_gray(root) else "RGB"
    if color_mode not in ("L", "RGB"):
        raise DataError(f"color_mode must be auto, L or RGB, got {color_mode!r}")
    presplit = (root / "train").is_dir() and (root / "test").is_dir()
    top = root / "train" if presplit else root
    classes = [p.name for p in _class_dirs(top)]
    if not classes:
        raise DataError(f"{top} has no class sub-folders (expected DIR/<class>/<image>.png)")
    if presplit:
        train_x, train_y = _read_folder(root / "train", classes, image_size, color_mode)
        missing = [c for c in (p.name for p in _class_dirs(root / "test")) if c not in classes]
        if missing:
            raise DataError(f"{root / 'test'} has classes not in {root / 'train'}: {missing}")
        test_classes = [c for c in classes if (root / "test" / c).is_dir()]
        tx, ty = _read_folder(root / "test", test_classes, image_size, color_mode)
        remap = torch.tensor([classes.index(c) for c in test_classes])
        test_x, test_y = tx, remap[ty]
    else:
        x, y = _read_folder(root, classes, image_size, color_mode)
        tr, te = stratified_split(y.numpy(), [0.8, 0.2], seed)
        train_x, train_y, test_x, test_y = x[tr], y[tr], x[te], y[te]
    tx, ty, vx, vy = _hold_out_val(train_x, train_y, val_fraction, seed)
    return Dataset(name, classes, tx, ty, vx, vy, test_x, test_y)
