"""What `cnn export` adds so that the server can explain a model's answers (see server/explain.py).

Networks that end in global average pooling and one linear layer (ResNet, MobileNet v1/v2, GoogLeNet)
get class activation maps (Zhou et al. 2016): export writes a second graph, EXPLAIN_FILE, into the
version folder beside model.onnx. It is model.onnx itself with one more output, the tensor its global
average pool reads (found in the graph: logits = Gemm(ReduceMean over H, W (x))); a graph of another
shape falls back to tracing the model's own submodules (CamGraph) with the exporter:

    input    "input"          float32 (batch, C, H, W), as model.onnx
    outputs  "logits"         (batch, K)
             "probabilities"  (batch, K)
             "features"       (batch, C', h, w)  the last convolutional feature maps, before the pooling
    metadata METADATA_KEY     the model's metadata; extra["explain"] also holds the classifier's weights
                              (K, C') and bias (K,) as base64 float32, so the server computes
                              M_c = sum_k w^c_k f_k with numpy

and records {"method": "cam", "file": EXPLAIN_FILE, ...} in model.onnx's metadata. Every other model
(LeNet-5, AlexNet, VGG: flatten + MLP heads) records {"method": "occlusion"} and needs nothing more.

The CAM graph is gated like model.onnx: its logits must match the PyTorch model's, and the CAM from its
outputs must match the CAM computed in PyTorch from the model's own feature maps (a forward hook on
the last feature stage) and fc weights, on real test images.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from export.errors import ExportError, VerificationError
from server.explain import (
    EXPLAIN_FILE,
    FEATURES_OUTPUT,
    METHOD_CAM,
    METHOD_OCCLUSION,
    encode_array,
)
from server.repository import ModelMetadata

OUTPUT_NAMES = ("logits", "probabilities", FEATURES_OUTPUT)
DEFAULT_ATOL = 1e-4  # on logits and on CAM values, scaled by max(1, largest |value|) for deep nets
_GOOGLENET_PATH = (
    "stem",
    "inception3a",
    "inception3b",
    "pool3",
    "inception4a",
    "inception4b",
    "inception4c",
    "inception4d",
    "inception4e",
    "pool4",
    "inception5a",
    "inception5b",
)


def feature_path(model: nn.Module) -> tuple[str, ...] | None:
    """The submodules (by name, applied in order) from the input to the feature maps that the model
    averages globally before its `fc`; None for models without such a head (occlusion instead)."""
    from training.models.googlenet import GoogLeNet
    from training.models.mobilenet import MobileNetV1, MobileNetV2
    from training.models.resnet import ResNet

    if isinstance(model, ResNet):
        return ("stem", "layers")
    if isinstance(model, MobileNetV1):
        return ("stem", "blocks")
    if isinstance(model, MobileNetV2):
        return ("stem", "blocks", "last")
    if isinstance(model, GoogLeNet):
        return _GOOGLENET_PATH
    return None


def _fc(model: nn.Module) -> nn.Linear:
    """The classifier a model with a `feature_path` ends in (its `fc`, an nn.Linear in every such zoo model)."""
    fc = model.get_submodule("fc")
    if not isinstance(fc, nn.Linear):
        raise ValueError(f"{type(model).__name__}.fc is a {type(fc).__name__}, not an nn.Linear")
    return fc


class CamGraph(nn.Module):
    """model -> (logits, probabilities, features): the model's own submodules, its head unrolled."""

    def __init__(self, model: nn.Module, path: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.path = path

    def features(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C', h, w)
        for name in self.path:
            x = self.model.get_submodule(name)(x)
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = self.features(x)
        logits = self.model.get_submodule("fc")(self.model.get_submodule("dropout")(f.mean(dim=(2, 3))))
        return logits, torch.softmax(logits, dim=1), f


def torch_cam(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, CAM of every class (B, K, h, w)) in PyTorch, from the feature maps the model's own forward
    produces (a hook on the last stage of `feature_path`) and its fc weights. Independent of CamGraph."""
    path = feature_path(model)
    if path is None:
        raise ValueError(f"{type(model).__name__} does not end in global average pooling + fc")
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(path[-1]).register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        handle.remove()
    return logits, torch.einsum("kc,bchw->bkhw", _fc(model).weight.detach(), seen[-1])


@dataclass
class ExplainExport:
    method: str
    entry: dict[str, Any]  # what model.onnx's metadata records under extra["explain"]
    path: Path | None = None
    max_abs_diff_logits: float = 0.0
    max_abs_diff_cam: float = 0.0
    seconds: float = 0.0


def explain_entry(model: nn.Module) -> dict[str, Any]:
    """The method alone (what the metadata says when no CAM graph is written)."""
    return {"method": METHOD_CAM if feature_path(model) is not None else METHOD_OCCLUSION}


def export_cam_graph(
    model: nn.Module,
    input_shape: list[int] | tuple[int, ...],
    path: str | os.PathLike,
    *,
    metadata: ModelMetadata,
    opset: int,
    exporter: str = "dynamo",
) -> dict[str, Any]:
    """Write the CAM graph of `model` to `path`; returns model.onnx's extra["explain"] entry."""
    from export.onnx import INPUT_NAME, _quiet, project_version, set_metadata

    path = Path(path)
    model = model.eval()
    fpath = feature_path(model)
    if fpath is None:
        raise ExportError(f"{type(model).__name__} has no global-average-pooling head; it is explained by occlusion")
    graph = CamGraph(model, fpath).eval()
    example = torch.zeros(2, *input_shape, dtype=torch.float32)  # batch 2: torch.export pins size-1 dims
    with torch.no_grad():
        c, h, w = graph.features(example).shape[1:]
    try:
        with torch.no_grad(), _quiet():
            if exporter == "dynamo":
                torch.onnx.export(
                    graph,
                    (example,),
                    str(path),
                    dynamo=True,
                    opset_version=opset,
                    input_names=[INPUT_NAME],
                    output_names=list(OUTPUT_NAMES),
                    dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=1 << 20)}},
                    optimize=True,
                    verbose=False,
                )
            else:
                torch.onnx.export(
                    graph,
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
    except Exception as e:
        raise ExportError(
            f"{exporter} export of the CAM graph of {type(model).__name__} failed: "
            f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        ) from e
    entry = {
        "method": METHOD_CAM,
        "file": EXPLAIN_FILE,
        "features_output": FEATURES_OUTPUT,
        "feature_shape": [int(c), int(h), int(w)],
    }
    md = copy.deepcopy(metadata)
    md.extra["explain"] = dict(
        entry,
        class_weights=encode_array(_fc(model).weight.detach().cpu().numpy()),
        class_bias=encode_array(_fc(model).bias.detach().cpu().numpy()),
    )
    proto = onnx.load(str(path))  # embedded weights: the zoo's CAM models are far below protobuf's 2 GiB
    for vi in list(proto.graph.input) + list(proto.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "batch"
    proto.producer_name = "cnn-stack"
    proto.producer_version = project_version()
    set_metadata(proto, md)
    onnx.save_model(proto, str(path))
    stray = path.with_name(path.name + ".data")
    if stray.exists():
        stray.unlink()
    return entry


_PASS_THROUGH = ("Flatten", "Reshape", "Identity", "Dropout", "Squeeze")


def _pooled_features(proto: onnx.ModelProto) -> str | None:
    """The tensor that `logits = Gemm(global average pool(features))` pools, or None if the graph has
    another shape (then the CAM graph is traced from PyTorch instead)."""
    from onnx import numpy_helper

    g = proto.graph
    producer = {o: n for n in g.node for o in n.output}
    fc = producer.get("logits")
    if fc is None or fc.op_type != "Gemm":
        return None
    t = fc.input[0]
    while t in producer and producer[t].op_type in _PASS_THROUGH:
        t = producer[t].input[0]
    pool = producer.get(t)
    if pool is None:
        return None
    if pool.op_type == "GlobalAveragePool":
        return pool.input[0]
    if pool.op_type != "ReduceMean":
        return None
    axes = next((list(onnx.helper.get_attribute_value(a)) for a in pool.attribute if a.name == "axes"), None)
    if axes is None and len(pool.input) > 1:
        init = {i.name: i for i in g.initializer}
        const = producer.get(pool.input[1])
        if pool.input[1] in init:
            axes = numpy_helper.to_array(init[pool.input[1]]).tolist()
        elif const is not None and const.op_type == "Constant" and const.attribute:
            axes = numpy_helper.to_array(const.attribute[0].t).tolist()
    return pool.input[0] if axes is not None and sorted(int(a) % 4 for a in axes) == [2, 3] else None


def cam_graph_from_onnx(
    model: nn.Module, source: str | os.PathLike, path: str | os.PathLike, *, metadata: ModelMetadata
) -> dict[str, Any] | None:
    """The CAM graph as the exported model.onnx (`source`) plus one output: the feature maps its global
    average pool reads. No second export; None when the graph does not end in pool -> Gemm."""
    from export.onnx import set_metadata

    proto = onnx.load(str(source), load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        return None  # far beyond the zoo's sizes; the traced export handles it
    features = _pooled_features(proto)
    fpath = feature_path(model)
    if features is None or fpath is None:
        return None
    example = torch.zeros(1, *[int(d) for d in metadata.input_shape], dtype=torch.float32)
    with torch.no_grad():
        c, h, w = CamGraph(model.eval(), fpath).features(example).shape[1:]
    proto.graph.node.append(onnx.helper.make_node("Identity", [features], [FEATURES_OUTPUT], name="cam_features"))
    proto.graph.output.append(
        onnx.helper.make_tensor_value_info(FEATURES_OUTPUT, onnx.TensorProto.FLOAT, ["batch", int(c), int(h), int(w)])
    )
    entry = {
        "method": METHOD_CAM,
        "file": EXPLAIN_FILE,
        "features_output": FEATURES_OUTPUT,
        "feature_shape": [int(c), int(h), int(w)],
    }
    md = copy.deepcopy(metadata)
    md.extra["explain"] = dict(
        entry,
        class_weights=encode_array(_fc(model).weight.detach().cpu().numpy()),
        class_bias=encode_array(_fc(model).bias.detach().cpu().numpy()),
    )
    set_metadata(proto, md)
    onnx.save_model(proto, str(path))
    return entry


def verify_cam_graph(
    model: nn.Module, path: str | os.PathLike, images: np.ndarray, *, atol: float = DEFAULT_ATOL
) -> tuple[float, float]:
    """Run the CAM graph on `images` (N, C, H, W, normalised) in onnxruntime and compare with PyTorch:
    logits, and the CAM of every class (onnxruntime features x the metadata's weights, via
    server.explain.cam, against torch_cam). Returns (max |logits diff|, max |CAM diff|);
    VerificationError if either exceeds atol * max(1, largest |value|)."""
    import onnxruntime as ort

    from server.explain import CamHead, cam
    from server.repository import METADATA_KEY

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    md = ModelMetadata.from_json(sess.get_modelmeta().custom_metadata_map[METADATA_KEY], str(path))
    head = CamHead.from_extra(md.extra, str(path))
    x = np.ascontiguousarray(images, dtype=np.float32)
    logits_ort, features = sess.run(["logits", head.features_output], {"input": x})
    t_logits, t_cam = torch_cam(model.eval(), torch.from_numpy(x))
    k = head.weights.shape[0]
    classes = np.tile(np.arange(k), (len(x), 1))
    cam_ort = cam(features, head.weights, classes)
    dl = float(np.abs(logits_ort - t_logits.numpy()).max())
    dc = float(np.abs(cam_ort - t_cam.numpy()).max())
    for what, diff, ref in (("logits", dl, t_logits), ("CAM", dc, t_cam)):
        bound = atol * max(1.0, float(ref.abs().max()))
        if not diff <= bound:
            raise VerificationError(f"{path}: CAM graph {what} differ from PyTorch by {diff:.3g} (bound {bound:.3g})")
    return dl, dc


def add_explanation(
    model: nn.Module,
    input_shape: list[int] | tuple[int, ...],
    folder: str | os.PathLike,
    metadata: ModelMetadata,
    images: np.ndarray,
    *,
    opset: int,
    exporter: str = "dynamo",
    source: str | os.PathLike | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> ExplainExport:
    """The export step: for a CAM model write and verify `folder`/EXPLAIN_FILE; record the method in
    metadata.extra["explain"] either way (call before the final metadata rewrite of model.onnx).
    `source`: the verified FP32 model.onnx; the CAM graph is derived from it (one output added) when its
    head is pool -> Gemm, else traced from PyTorch."""
    t0 = time.perf_counter()
    entry = explain_entry(model)
    if entry["method"] != METHOD_CAM:
        metadata.extra["explain"] = entry
        return ExplainExport(METHOD_OCCLUSION, entry)
    path = Path(folder) / EXPLAIN_FILE
    derived = cam_graph_from_onnx(model, source, path, metadata=metadata) if source is not None else None
    if derived is not None:
        entry, how = derived, "derived from model.onnx"
    else:
        entry = export_cam_graph(model, input_shape, path, metadata=metadata, opset=opset, exporter=exporter)
        how = f"traced ({exporter})"
    dl, dc = verify_cam_graph(model, path, images)
    metadata.extra["explain"] = entry
    out = ExplainExport(METHOD_CAM, entry, path, dl, dc, time.perf_counter() - t0)
    log(
        f"CAM graph {EXPLAIN_FILE} {how}, verified on {len(images)} images in {out.seconds:.1f}s "
        f"(max |logits diff| {dl:.1e}, max |CAM diff| {dc:.1e})"
    )
    return out
