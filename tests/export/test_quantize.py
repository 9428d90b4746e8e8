"""INT8 (static, calibrated on real training images) and FP16 variants, each its own model version."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export.data import load_images
from export.errors import VerificationError
from export.listing import describe_repository, read_model_metadata
from export.pipeline import export_checkpoint
from training.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def int8_repo(trained_lenet5, tmp_path_factory):
    repo = tmp_path_factory.mktemp("q")
    fp32 = export_checkpoint(trained_lenet5, repo, parity_images=32)
    int8 = export_checkpoint(trained_lenet5, repo, quantize="int8", parity_images=32)
    return repo, fp32, int8


def test_int8_is_its_own_version_with_both_accuracies(int8_repo, trained_lenet5):
    repo, fp32, int8 = int8_repo
    assert (fp32.version, int8.version) == (1, 2) and int8.precision == "int8"
    md = read_model_metadata(int8.path)
    m = md.metrics
    assert m["test_images"] == 359  # the whole real digits test split
    assert m["fp32_test_accuracy"] == fp32.accuracy["fp32_test_accuracy"] > 0.8
    assert m["int8_test_accuracy"] >= m["fp32_test_accuracy"] - 0.01  # the documented gate
    assert m["test_accuracy"] == m["int8_test_accuracy"]
    assert m["int8_argmax_agreement"] > 0.95
    q = md.extra["quantization"]
    assert md.extra["precision"] == "int8" and q["format"] == "qoperator" and q["calibration_split"] == "train"
    assert q["calibration_images"] == 512 and q["per_channel"]
    # recompute the int8 accuracy independently on the test split
    ckpt = load_checkpoint(trained_lenet5)
    test = load_images(ckpt, "test")
    sess = ort.InferenceSession(int8.path, providers=["CPUExecutionProvider"])
    logits, probs = sess.run(["logits", "probabilities"], {"input": test.x})
    assert abs(float((logits.argmax(1) == test.y).mean()) - m["int8_test_accuracy"]) < 1e-12
    assert probs.dtype == np.float32 and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_int8_graph_is_quantised_qoperator(int8_repo):
    _, fp32, int8 = int8_repo
    ops = [n.op_type for n in onnx.load(int8.path).graph.node]
    assert "QLinearConv" in ops and "Conv" not in ops
    assert "Softmax" in ops  # probabilities stay float
    graph = onnx.load(int8.path).graph
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["logits", "probabilities"]
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert os.path.getsize(int8.path) < os.path.getsize(fp32.path) / 2.5


def test_models_list_shows_precisions(int8_repo):
    repo, _, _ = int8_repo
    (m,) = describe_repository(repo)
    assert [(v.version, v.precision) for v in m.versions] == [(1, "fp32"), (2, "int8")]


def test_int8_qdq_format(trained_lenet5, tmp_path):
    res = export_checkpoint(
        trained_lenet5, tmp_path, quantize="int8", int8_format="qdq", parity_images=16, calibration_images=128
    )
    ops = {n.op_type for n in onnx.load(res.path).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops and "QLinearConv" not in ops
    assert res.quantization["format"] == "qdq"
    assert res.accuracy["int8_test_accuracy"] >= res.accuracy["fp32_test_accuracy"] - 0.01


def test_int8_accuracy_gate_refuses(trained_lenet5, tmp_path):
    with pytest.raises(VerificationError, match=r"int8 test accuracy .* below fp32"):
        export_checkpoint(
            trained_lenet5, tmp_path, quantize="int8", max_accuracy_drop=-1.0, parity_images=16, calibration_images=64
        )
    assert os.listdir(tmp_path) == []


def test_fp16_variant(trained_lenet5, tmp_path):
    res = export_checkpoint(trained_lenet5, tmp_path, quantize="fp16", parity_images=16)
    model = onnx.load(res.path)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # keep_io_types
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in model.graph.output)
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    inits = {t.name: t.data_type for t in model.graph.initializer}
    assert conv_weights and all(inits[w] == onnx.TensorProto.FLOAT16 for w in conv_weights)
    md = read_model_metadata(res.path)
    assert md.extra["precision"] == "fp16"
    assert md.metrics["fp16_test_accuracy"] >= md.metrics["fp32_test_accuracy"] - 0.01
