"""Exporter details: the TorchScript fallback still passes the gate; weights over the embed limit go
to model.onnx.data next to model.onnx and the pair is published and verified together."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort

import export.onnx as export_onnx_mod
from export.pipeline import export_checkpoint
from export.verify import check_file
from tests.export.conftest import FAST


def test_torchscript_exporter_passes_the_gate(trained_lenet5, tmp_path):
    res = export_checkpoint(trained_lenet5, tmp_path, exporter="torchscript", **FAST)
    assert res.parity["ok"] and res.parity["max_abs_diff_logits"] <= 1e-4
    sess = ort.InferenceSession(res.path, providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["logits", "probabilities"]
    assert sess.get_inputs()[0].shape[0] == "batch"


def test_large_models_use_external_data_inside_the_version(trained_lenet5, tmp_path, monkeypatch):
    monkeypatch.setattr(export_onnx_mod, "EMBED_LIMIT_BYTES", 0)  # pretend LeNet-5 is > 2 GB
    res = export_checkpoint(trained_lenet5, tmp_path, **FAST)
    folder = os.path.dirname(res.path)
    assert sorted(os.listdir(folder)) == ["model.onnx", "model.onnx.data"] and res.external_data
    assert check_file(res.path) == ["model.onnx.data"]
    model = onnx.load(res.path, load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert any(p.key == "cnn.metadata" for p in model.metadata_props)
    sess = ort.InferenceSession(res.path, providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": np.zeros((3, 1, 28, 28), np.float32)})[1].shape == (3, 10)
    assert res.size_bytes == sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
