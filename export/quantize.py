"""INT8 and FP16 variants of a verified FP32 ONNX model.

INT8: static quantisation with onnxruntime.quantization, calibrated on real training images (MinMax,
per-channel int8 weights, uint8 activations). The QOperator format (QLinearConv, QLinearMatMul, ...)
is the default because it is the one that runs faster than FP32 on our CPUs; QDQ stays selectable.
See docs/export.md and bench/int8.py for the numbers. The final Softmax stays in float so
"probabilities" are not quantised to steps of 1/256.

The INT8 gate is accuracy-based, not 1e-4: int8 test accuracy must be >= fp32 test accuracy minus
`max_drop` (default 0.01 = one percentage point), both measured with onnxruntime on the same real
test images.

FP16: onnxruntime.transformers.float16 with keep_io_types=True, so "input", "logits" and
"probabilities" stay float32 and clients do not change. Meant for GPU providers (the CPU provider
has few fp16 kernels and inserts casts).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.errors import ExportError, VerificationError
from training.progress import Progress

INT8_FORMATS = ("qoperator", "qdq")
DEFAULT_INT8_FORMAT = "qoperator"
DEFAULT_MAX_ACCURACY_DROP = 0.01


class _Reader:
    """CalibrationDataReader over normalised images: a float32 array, or export.data.Images (normalised
    batch by batch, so a large calibration set never sits in memory as float32 at once)."""

    def __init__(self, images, batch_size: int):
        self.images, self.batch_size, self.i = images, batch_size, 0
        self.bar: Progress | None = None  # INT8 calibration progress, in images; opened on the first batch

    def get_next(self):
        if self.i >= len(self.images):
            self.close()
            return None
        if self.bar is None:
            self.bar = Progress(len(self.images), "int8: calibration", "img")
        j = self.i + self.batch_size
        batch = self.images[self.i : j] if isinstance(self.images, np.ndarray) else self.images.normalised(self.i, j)
        self.bar.update(len(batch))
        self.i = j
        return {"input": np.ascontiguousarray(batch, dtype=np.float32)}

    def rewind(self):
        self.close()
        self.i = 0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@dataclass
class Int8Info:
    format: str
    per_channel: bool
    calibration_images: int
    seconds: float


def quantize_int8(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calibration,
    *,
    fmt: str = DEFAULT_INT8_FORMAT,
    per_channel: bool = True,
    batch_size: int = 32,
) -> Int8Info:
    """Write a statically quantised copy of fp32_path (embedded weights) to out_path. `calibration`:
    normalised float32 images (N, C, H, W), or export.data.Images."""
    import time

    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if fmt not in INT8_FORMATS:
        raise ExportError(f"unknown int8 format {fmt!r}; valid: {', '.join(INT8_FORMATS)}")
    if len(calibration) == 0:
        raise ExportError("int8 calibration needs at least one training image")
    t0 = time.perf_counter()
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        # Shape inference + onnxruntime's basic graph optimisations (folds BatchNormalization into
        # Conv, so the quantiser sees Conv -> Relu chains it can fuse).
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        proto = onnx.load(str(pre))
        softmax = [n.name for n in proto.graph.node if n.op_type == "Softmax"]
        reader = _Reader(calibration, batch_size)
        quantize_static(
            str(pre),
            str(out_path),
            reader,
            quant_format=QuantFormat.QOperator if fmt == "qoperator" else QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=softmax,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
        reader.close()
    return Int8Info(
        format=fmt, per_channel=per_channel, calibration_images=len(calibration), seconds=time.perf_counter() - t0
    )


def require_accuracy(fp32_acc: float, int8_acc: float, max_drop: float, path: str | os.PathLike) -> None:
    if int8_acc < fp32_acc - max_drop:
        raise VerificationError(
            f"{path}: int8 test accuracy {int8_acc:.4f} is more than {max_drop:g} below fp32 {fp32_acc:.4f}; "
            f"not published (try more --calibration-images, --int8-format qdq, or --max-accuracy-drop)"
        )


def convert_fp16(fp32_path: str | os.PathLike, out_path: str | os.PathLike) -> None:
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    proto = onnx.load(str(fp32_path))
    # Softmax in fp16 loses resolution on probabilities near 0/1; keep it (and its inputs) in fp32.
    fp16 = convert_float_to_float16(proto, keep_io_types=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST, "Softmax"])
    _topological_sort(fp16.graph)  # the converter appends its Cast nodes at the end; the checker wants order
    onnx.save_model(fp16, str(out_path))


def _topological_sort(graph) -> None:
    """Reorder graph.node so every node comes after the producers of its inputs (Kahn, stable)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    available |= {t.name for t in graph.sparse_initializer}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ExportError(f"fp16 graph has a cycle or a dangling input at node {rest[0].name!r}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
