"""The export gate. A model is published only if all of these pass on the file that will be published:

1. it parses, and every external-data reference resolves to a regular file inside its own folder
   (no absolute paths, no `..`, no symlink out: server.repository.check_external_data);
2. `onnx.checker.check_model(path, full_check=True)` (structure + strict shape inference);
3. onnxruntime loads it and, on real test images, matches PyTorch at several batch sizes (dynamic
   axis): identical argmax on every image, and max |logits diff| <= atol (1e-4). Quantised variants are
   judged on accuracy instead (see export/quantize.py).

   Deep nets: with logits around 15, MobileNet, GoogLeNet and VGG-16 lose 1e-4..3e-4 to float32
   rounding in PyTorch itself (measured against the same model in float64), so a bare 1e-4 would
   reject exports exactly as accurate as PyTorch. When (and only when) the bare bound fails, the gate
   runs PyTorch in float64 on the same images and accepts max |ort - torch32| <= atol + 2 * max
   |torch32 - torch64|: onnxruntime may be as inexact as PyTorch's float32, not more (triangle
   inequality: two computations each that close to the truth differ by up to twice that). An export
   bug (a wrong pad, eps, activation) is orders of magnitude above that. `strict=True` (cnn export
   --strict-parity) keeps the bare bound.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from export.errors import VerificationError
from server.errors import RepositoryError
from server.repository import check_external_data
from training.progress import Progress

DEFAULT_ATOL = 1e-4
FP32_NOISE_FACTOR = 2.0


def _all_tensors(graph):
    """Every TensorProto in a graph: initialisers, sparse initialisers, attributes, subgraphs."""
    yield from graph.initializer
    for st in graph.sparse_initializer:
        yield st.values
        yield st.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for g in attr.graphs:
                yield from _all_tensors(g)


def external_data_locations(proto) -> list[str]:
    import onnx

    out = []
    for t in _all_tensors(proto.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if loc is None:
                raise VerificationError(f"tensor {t.name!r} is stored externally but names no location")
            out.append(loc)
    for fn in proto.functions:
        for node in fn.node:
            for attr in node.attribute:
                if attr.HasField("t") and attr.t.data_location == onnx.TensorProto.EXTERNAL:
                    out.append(next((e.value for e in attr.t.external_data if e.key == "location"), ""))
    return sorted(set(out))


def load_proto(path: str | os.PathLike):
    """Parse without touching external data; a corrupted or truncated file names itself."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise VerificationError(f"{path}: model file is missing")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # DecodeError, ValueError ... depending on the damage
        raise VerificationError(
            f"{path}: not a valid ONNX model (corrupted or truncated?): {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    if not proto.graph.node or not proto.opset_import:
        raise VerificationError(f"{path}: not a valid ONNX model: no graph nodes or no opset (truncated?)")
    return proto


def check_file(path: str | os.PathLike) -> list[str]:
    """Steps 1 and 2 of the gate. Returns the external-data locations (empty when weights are embedded)."""
    import onnx

    path = Path(path)
    proto = load_proto(path)
    locations = external_data_locations(proto)
    try:
        check_external_data(path, locations)
    except RepositoryError as e:
        raise VerificationError(str(e)) from None
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:
        raise VerificationError(f"{path}: onnx.checker rejected the model: {str(e).strip().splitlines()[0]}") from None
    return locations


def ort_session(path: str | os.PathLike, threads: int = 1, optimization: str = "all"):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise VerificationError(
            f"{path}: onnxruntime cannot load the model: {str(e).strip().splitlines()[0]}"
        ) from None


def run_batched(
    session, images: np.ndarray, batch_size: int, progress: Progress | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(logits, probabilities) for all images, fed in chunks of batch_size; ``progress`` counts images."""
    logits, probs = [], []
    for i in range(0, len(images), batch_size):
        lo, pr = session.run(["logits", "probabilities"], {"input": np.ascontiguousarray(images[i : i + batch_size])})
        logits.append(lo)
        probs.append(pr)
        if progress is not None:
            progress.update(len(lo))
    return np.concatenate(logits), np.concatenate(probs)


@dataclass
class ParityReport:
    images: int
    batch_sizes: list[int]
    max_abs_diff_logits: float  # onnxruntime vs PyTorch float32, over every image and batch size
    max_abs_diff_probabilities: float
    argmax_mismatches: int
    atol: float
    max_abs_logit: float
    torch_fp32_error: float | None = None  # max |torch32 - torch64|; measured only if atol alone fails
    bound: float = 0.0  # the limit applied to max_abs_diff_logits

    @property
    def ok(self) -> bool:
        return self.max_abs_diff_logits <= self.bound and self.argmax_mismatches == 0

    def to_dict(self) -> dict:
        return asdict(self) | {"ok": self.ok}


def torch_outputs(model, images: np.ndarray, batch_size: int = 64, dtype=None) -> np.ndarray:
    import copy

    import torch

    model.eval()
    if dtype is not None:
        model = copy.deepcopy(model).to(dtype)
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size]))
            out.append(model(x.to(dtype) if dtype is not None else x).double().numpy())
    return np.concatenate(out)


def parity(
    model,
    path: str | os.PathLike,
    images: np.ndarray,
    *,
    atol: float = DEFAULT_ATOL,
    strict: bool = False,
    batch_sizes: tuple[int, ...] = (1, 7, 64),
) -> ParityReport:
    """Step 3: onnxruntime vs PyTorch on the same normalised images, at every batch size given."""
    import torch

    if len(images) == 0:
        raise VerificationError("parity check needs at least one image")
    ref = torch_outputs(model, images).astype(np.float32)
    sess = ort_session(path)
    worst_l = worst_p = 0.0
    mismatches = 0
    # batch 1 on every image is slow for big models; a few images show the axis works
    subsets = {bs: images[: min(len(images), 32)] if bs == 1 else images for bs in batch_sizes}
    bar = Progress(sum(len(v) for v in subsets.values()), "verify: onnxruntime vs PyTorch", "img")
    for bs in batch_sizes:
        subset = subsets[bs]
        logits, probs = run_batched(sess, subset, bs, bar)
        r = ref[: len(subset)]
        if logits.shape != r.shape:
            raise VerificationError(f"{path}: logits shape {logits.shape} != PyTorch {r.shape} at batch size {bs}")
        worst_l = max(worst_l, float(np.abs(logits - r).max()))
        e = np.exp(r - r.max(axis=1, keepdims=True))
        worst_p = max(worst_p, float(np.abs(probs - e / e.sum(axis=1, keepdims=True)).max()))
        mismatches = max(mismatches, int((logits.argmax(1) != r.argmax(1)).sum()))
    bar.close()
    report = ParityReport(
        images=len(images),
        batch_sizes=list(batch_sizes),
        max_abs_diff_logits=worst_l,
        max_abs_diff_probabilities=worst_p,
        argmax_mismatches=mismatches,
        atol=atol,
        max_abs_logit=float(np.abs(ref).max()),
        bound=atol,
    )
    if worst_l > atol and not strict:
        ref64 = torch_outputs(model, images, dtype=torch.float64)
        report.torch_fp32_error = float(np.abs(ref.astype(np.float64) - ref64).max())
        report.bound = atol + FP32_NOISE_FACTOR * report.torch_fp32_error
    return report


def require_parity(report: ParityReport, path: str | os.PathLike) -> None:
    if not report.ok:
        noise = (
            f"; PyTorch float32 itself is {report.torch_fp32_error:.3g} from float64"
            if report.torch_fp32_error is not None
            else ""
        )
        raise VerificationError(
            f"{path}: onnxruntime disagrees with PyTorch on {report.images} test images: max |logits diff| "
            f"{report.max_abs_diff_logits:.3g} (limit {report.bound:.3g}{noise}), "
            f"{report.argmax_mismatches} argmax mismatches"
        )


def predictions(
    path: str | os.PathLike,
    batches,
    batch_size: int = 64,
    threads: int = 1,
    *,
    total: int | None = None,
    desc: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(argmax, labels) over an iterable of (images, labels) batches, e.g. export.data.Images.batches(), or
    over an export.data.Images itself (then the progress display knows the total). ``total``: the number of
    images, if known; ``desc`` labels the progress (default "verify: test accuracy of <file name>")."""
    if total is None and hasattr(batches, "batches"):
        total, batches = len(batches), batches.batches()
    sess = ort_session(path, threads=threads)
    preds, labels = [], []
    with Progress(total, desc or f"verify: test accuracy of {Path(path).name}", "img") as bar:
        for x, y in batches:
            logits, _ = run_batched(sess, x, batch_size, bar)
            preds.append(logits.argmax(1))
            labels.append(np.asarray(y))
    return np.concatenate(preds), np.concatenate(labels)


def accuracy(path: str | os.PathLike, batches, batch_size: int = 64, threads: int = 1) -> float:
    preds, labels = predictions(path, batches, batch_size, threads)
    return float((preds == labels).mean())
