"""The model describes itself: ModelMetadata JSON under METADATA_KEY round-trips, read three ways."""

from __future__ import annotations

import datetime as dt
import json

import onnx
import onnxruntime as ort

from export.listing import read_metadata_props, read_model_metadata
from export.onnx import DEFAULT_OPSET
from server.repository import METADATA_KEY, ModelMetadata
from training.checkpoint import load_checkpoint


def test_metadata_round_trip(lenet5_published, trained_lenet5):
    ckpt = load_checkpoint(trained_lenet5)
    path = lenet5_published.path

    md = read_model_metadata(path)  # the cheap, onnx-free parse
    via_ort = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    via_onnx = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert via_ort[METADATA_KEY] == via_onnx[METADATA_KEY] == read_metadata_props(path)[METADATA_KEY]
    assert ModelMetadata.from_json(via_ort[METADATA_KEY]) == md

    assert md.labels == [str(i) for i in range(10)] == ckpt["labels"]
    assert md.input_name == "input" and md.layout == "NCHW" and md.input_shape == [1, 28, 28]
    pre = md.preprocessing
    assert (pre.color_mode, pre.height, pre.width, pre.resize) == ("L", 28, 28, "bilinear")
    assert pre.mean == ckpt["preprocessing"]["mean"] and pre.std == ckpt["preprocessing"]["std"]
    assert abs(pre.scale - 1 / 255) < 1e-12
    assert md.model_name == "lenet5" and md.model_kwargs == ckpt["model_kwargs"]
    assert md.dataset == "digits"
    assert md.recipe_sha256 == ckpt["recipe_sha256"]
    assert md.project_version == "0.1.0"
    created = dt.datetime.fromisoformat(md.created)
    assert created.tzinfo is not None and abs((dt.datetime.now(dt.UTC) - created).total_seconds()) < 3600

    # accuracy: measured by the exporter on the real test split, and the checkpoint's own number
    m = md.metrics
    assert m["test_images"] == 359  # the whole digits test split
    assert m["test_accuracy"] == m["fp32_test_accuracy"] > 0.8
    assert abs(m["checkpoint_test_accuracy"] - ckpt["metrics"]["test_accuracy"]) < 1e-12
    assert abs(m["fp32_test_accuracy"] - m["checkpoint_test_accuracy"]) < 0.01  # same preprocessing as training

    ex = md.extra
    assert ex["precision"] == "fp32" and ex["exporter"] == "dynamo" and ex["opset"] == DEFAULT_OPSET
    assert ex["parity"]["ok"] and ex["parity"]["images"] == 256 and ex["parity"]["batch_sizes"] == [1, 7, 64]
    json.dumps(ex)  # plain JSON all the way down


def test_graph_contract(lenet5_published):
    model = onnx.load(lenet5_published.path)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [DEFAULT_OPSET]
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "input" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [1, 28, 28]
    assert [o.name for o in model.graph.output] == ["logits", "probabilities"]
    for o in model.graph.output:
        d = o.type.tensor_type.shape.dim
        assert d[0].dim_param == "batch" and d[1].dim_value == 10
    assert any(n.op_type == "Softmax" for n in model.graph.node)
    assert model.producer_name == "cnn-stack"


def test_weights_embedded_by_default(lenet5_published):
    """Small models come out as one self-contained file: no model.onnx.data next to it."""
    import os

    folder = os.path.dirname(lenet5_published.path)
    assert os.listdir(folder) == ["model.onnx"]
    assert not lenet5_published.external_data
    model = onnx.load(lenet5_published.path, load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in model.graph.initializer)
