"""Small hand-built ONNX models for protocol tests (datatypes, failures), made with onnx.helper."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from server.repository import METADATA_KEY, ModelConfig, ModelMetadata, Preprocessing, write_model_config

ONNX_TYPES = {
    "FP32": TensorProto.FLOAT,
    "FP16": TensorProto.FLOAT16,
    "UINT8": TensorProto.UINT8,
    "INT64": TensorProto.INT64,
}


def scale_model(datatype: str, width: int = 4, factor: float = 2.0) -> onnx.ModelProto:
    """output = input * factor (computed in float, cast back): shape (B, width) -> (B, width)."""
    t = ONNX_TYPES[datatype]
    nodes = [
        helper.make_node("Cast", ["input"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["xf", "k"], ["yf"]),
        helper.make_node("Cast", ["yf"], ["output"], to=t),
    ]
    graph = helper.make_graph(
        nodes,
        f"scale_{datatype.lower()}",
        [helper.make_tensor_value_info("input", t, ["batch", width])],
        [helper.make_tensor_value_info("output", t, ["batch", width])],
        [helper.make_tensor("k", TensorProto.FLOAT, [], [factor])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    md = ModelMetadata(
        labels=[f"c{i}" for i in range(width)],
        input_shape=[width],
        layout="NC",
        preprocessing=Preprocessing(color_mode="L", height=1, width=width),
    )
    model.metadata_props.add(key=METADATA_KEY, value=md.to_json())
    onnx.checker.check_model(model)
    return model


def mean_model(width: int = 4) -> onnx.ModelProto:
    """output = input.mean(axis=2): (B, width, free) -> (B, width); a model with a free input dim."""
    nodes = [helper.make_node("ReduceMean", ["input"], ["output"], axes=[2], keepdims=0)]
    graph = helper.make_graph(
        nodes,
        "mean",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width, "n"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", width])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    md = ModelMetadata(labels=[f"c{i}" for i in range(width)], input_shape=[width, 1], layout="NC")
    model.metadata_props.add(key=METADATA_KEY, value=md.to_json())
    onnx.checker.check_model(model)
    return model


def publish(repo: Path, name: str, model: onnx.ModelProto | bytes, version: int = 1, **config) -> Path:
    folder = repo / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    path.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
    if not (repo / name / "config.yaml").exists():
        write_model_config(repo / name, ModelConfig(name=name, **config))
    return path


def slow_model(width: int = 1024, layers: int = 600) -> onnx.ModelProto:
    """A deliberately slow model (a chain of width x width MatMuls), for drain and deadline tests."""
    import numpy as np
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), "w")
    nodes, prev = [], "input"
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [prev, "w"], [f"h{i}"]))
        prev = f"h{i}"
    nodes.append(helper.make_node("Identity", [prev], ["output"]))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", width])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    md = ModelMetadata(labels=[f"c{i}" for i in range(width)], input_shape=[width], layout="NC")
    model.metadata_props.add(key=METADATA_KEY, value=md.to_json())
    return model
