"""PyTorch model -> ONNX file with named tensors, a dynamic batch axis, softmax in the graph and metadata.

Graph contract (what the server and clients rely on):
    input          "input"          float32 (batch, C, H, W), already normalised (see metadata)
    outputs        "logits"         float32 (batch, K)
                   "probabilities"  float32 (batch, K)   softmax(logits) computed inside the graph
    metadata_props METADATA_KEY     ModelMetadata JSON (labels, shape, preprocessing, provenance)

Exporter: the TorchDynamo-based `torch.onnx.export(..., dynamo=True)` at opset DEFAULT_OPSET by
default; the TorchScript-based one stays selectable (`exporter="torchscript"`). docs/export.md has the
comparison behind that choice.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
import torch.nn as nn

from export.errors import ExportError
from server.repository import METADATA_KEY, ModelMetadata
from training.checkpoint import Checkpoint, CheckpointError, as_checkpoint

DEFAULT_OPSET = 18
EXPORTERS = ("dynamo", "torchscript")
DEFAULT_EXPORTER = "dynamo"
INPUT_NAME = "input"
OUTPUT_NAMES = ("logits", "probabilities")
# Protobuf refuses messages of 2 GiB and more. Below this many bytes of weights the exporter embeds
# them in model.onnx (one self-contained file, atomic to publish, nothing to keep in sync); above it
# they go to model.onnx.data next to it, which must stay inside the version folder.
EMBED_LIMIT_BYTES = 1_900_000_000
EXTERNAL_DATA_SUFFIX = ".data"


class WithProbabilities(nn.Module):
    """model -> (logits, softmax(logits)), so the graph hands clients probabilities directly."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        return logits, torch.softmax(logits, dim=1)


@dataclass
class ExportInfo:
    path: Path
    exporter: str
    opset: int
    weights_bytes: int
    external_data: bool
    seconds: float


def weights_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, torch.Tensor))


@contextlib.contextmanager
def _quiet():
    """The exporters log progress and deprecation chatter; keep stdout/stderr for our own lines."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    out, err = io.StringIO(), io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def export_onnx(
    model: nn.Module,
    input_shape: list[int] | tuple[int, ...],
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    exporter: str = DEFAULT_EXPORTER,
    metadata: ModelMetadata | None = None,
) -> ExportInfo:
    """Export `model` (eval mode is forced) to `path`; weights embedded when under EMBED_LIMIT_BYTES."""
    import time

    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}; valid: {', '.join(EXPORTERS)}")
    path = Path(path)
    model = model.eval()
    wrapped = WithProbabilities(model).eval()
    nbytes = weights_bytes(model)
    external = nbytes >= EMBED_LIMIT_BYTES
    # Batch 2, not 1: torch.export specialises dimensions of size 1, which would pin the batch axis.
    example = torch.zeros(2, *input_shape, dtype=torch.float32)
    t0 = time.perf_counter()
    try:
        with torch.no_grad(), _quiet():
            if exporter == "dynamo":
                torch.onnx.export(
                    wrapped,
                    (example,),
                    str(path),
                    dynamo=True,
                    opset_version=opset,
                    input_names=[INPUT_NAME],
                    output_names=list(OUTPUT_NAMES),
                    dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=1 << 20)}},
                    external_data=external,
                    optimize=True,
                    verbose=False,
                )
            else:
                torch.onnx.export(
                    wrapped,
                    (example,),
                    str(path),
                    dynamo=False,
                    opset_version=opset,
                    input_names=[INPUT_NAME],
                    output_names=list(OUTPUT_NAMES),
                    dynamic_axes={n: {0: "batch"} for n in (INPUT_NAME, *OUTPUT_NAMES)},
                    do_constant_folding=True,
                    verbose=False,
                )
    except Exception as e:  # the exporters raise a zoo of types; the message is what the user needs
        raise ExportError(
            f"{exporter} export of {type(model).__name__} failed: {type(e).__name__}: "
            f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        ) from e
    seconds = time.perf_counter() - t0
    # Loaded without its external data, tensors keep their external_data entries (locations relative
    # to the model file), so saving the proto next to them leaves a .data file valid as it is.
    proto = onnx.load(str(path), load_external_data=False)
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    _normalise(proto, metadata)
    onnx.save_model(proto, str(path))
    stray = path.with_name(path.name + EXTERNAL_DATA_SUFFIX)
    if not external and stray.exists():
        stray.unlink()
    return ExportInfo(
        path=path, exporter=exporter, opset=opset, weights_bytes=nbytes, external_data=external, seconds=seconds
    )


def _normalise(proto: onnx.ModelProto, metadata: ModelMetadata | None) -> None:
    """Pin the batch dimension's name on every graph input and output, set producer and metadata."""
    for vi in list(proto.graph.input) + list(proto.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "batch"
    proto.producer_name = "cnn-stack"
    proto.producer_version = project_version()
    if metadata is not None:
        set_metadata(proto, metadata)


def set_metadata(proto: onnx.ModelProto, metadata: ModelMetadata) -> None:
    for i in reversed(range(len(proto.metadata_props))):
        if proto.metadata_props[i].key == METADATA_KEY:
            del proto.metadata_props[i]
    entry = proto.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = metadata.to_json()
    proto.doc_string = f"{metadata.model_name} trained on {metadata.dataset}; labels: {', '.join(metadata.labels[:20])}"


def rewrite_metadata(path: str | os.PathLike, metadata: ModelMetadata) -> None:
    """Replace METADATA_KEY in an ONNX file in place (external data stays where it is)."""
    proto = onnx.load(str(path), load_external_data=False)
    set_metadata(proto, metadata)
    onnx.save_model(proto, str(path))


def project_version() -> str:
    try:
        from importlib.metadata import version

        return version("cnn-stack")
    except Exception:
        return "0+unknown"


def metadata_from_checkpoint(
    ckpt: dict[str, Any] | Checkpoint, *, extra: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None
) -> ModelMetadata:
    """ModelMetadata from a training checkpoint (format_version 1). The preprocessing recorded is the one
    the model is served with (Checkpoint.serving_preprocessing: mode "digit" for digit data)."""
    try:
        ck = as_checkpoint(ckpt)
        pre = ck.serving_preprocessing()
    except (CheckpointError, ValueError) as e:
        raise ExportError(str(e)) from None
    ckpt_metrics = {k: v for k, v in ck.metrics.items() if isinstance(v, (int, float, str))}
    if metrics:
        ckpt_metrics.update(metrics)
    ex: dict[str, Any] = {
        "checkpoint_format_version": ck.format_version,
        "checkpoint_created": ck.created,
        "precision": "fp32",
    }
    ex.update(extra or {})
    return ModelMetadata(
        labels=list(ck.labels),
        input_name=INPUT_NAME,
        input_shape=list(ck.input_shape),
        layout="NCHW",
        preprocessing=pre,
        model_name=ck.model_name,
        model_kwargs=dict(ck.model_kwargs),
        dataset=ck.dataset,
        metrics=ckpt_metrics,
        recipe_sha256=ck.recipe_sha256,
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        project_version=project_version(),
        extra=ex,
    )
