"""export/explain.py: the CAM graph of a global-average-pooling network, exported to ONNX, gives the same
class activation maps as PyTorch computes from the model's own feature maps and fc weights."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.errors import ExportError, VerificationError
from export.explain import (
    add_explanation,
    explain_entry,
    export_cam_graph,
    torch_cam,
    verify_cam_graph,
)
from export.onnx import DEFAULT_OPSET, set_metadata
from server.explain import (
    EXPLAIN_FILE,
    METHOD_CAM,
    METHOD_OCCLUSION,
    CamHead,
    cam,
    encode_array,
)
from server.repository import METADATA_KEY, ModelMetadata
from training.models import create_model


def _trained_like(model: torch.nn.Module, seed: int, shape: list[int] | None = None) -> torch.nn.Module:
    """Fresh BN statistics make every layer near-identity; perturb them so the test sees real numbers, and
    scale the classifier so that the largest CAM value on random input is 10 (a trained model's order)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        if isinstance(m, torch.nn.Linear):
            m.weight.data.normal_(0, 0.02, generator=g)
            m.bias.data.normal_(0, 0.1, generator=g)
    model.eval()
    if shape is not None:
        _, t_cam = torch_cam(model, torch.randn(4, *shape, generator=g))
        model.fc.weight.data *= 10.0 / float(t_cam.abs().max())
    return model


def _metadata(k: int, shape: list[int]) -> ModelMetadata:
    return ModelMetadata(labels=[str(i) for i in range(k)], input_shape=shape, model_name="test")


MODELS = [  # the default exporter on one, the TorchScript one on the other (each export costs ~30-60 s here)
    ("resnet20", {"num_classes": 10, "in_channels": 1, "input_size": 28}, [1, 28, 28], (64, 7, 7), "dynamo"),
    (
        "mobilenet_v2",
        {"num_classes": 5, "in_channels": 3, "input_size": 32, "width_mult": 0.5},
        [3, 32, 32],
        (1280, 4, 4),
        "torchscript",
    ),
]


@pytest.mark.parametrize("name,kwargs,shape,feature_shape,exporter", MODELS, ids=[m[0] for m in MODELS])
def test_cam_from_onnx_outputs_equals_pytorch_cam(tmp_path, name, kwargs, shape, feature_shape, exporter):
    model = _trained_like(create_model(name, **kwargs), seed=0, shape=shape)
    k = kwargs["num_classes"]
    path = tmp_path / EXPLAIN_FILE
    entry = export_cam_graph(model, shape, path, metadata=_metadata(k, shape), opset=DEFAULT_OPSET, exporter=exporter)
    assert entry["method"] == METHOD_CAM and entry["feature_shape"] == list(feature_shape)
    onnx.checker.check_model(str(path), full_check=True)

    x = np.random.default_rng(1).normal(size=(5, *shape)).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["logits", "probabilities", "features"]
    assert [o.shape[0] for o in sess.get_outputs()] == ["batch"] * 3
    md = ModelMetadata.from_json(sess.get_modelmeta().custom_metadata_map[METADATA_KEY])
    head = CamHead.from_extra(md.extra, str(path))
    np.testing.assert_array_equal(head.weights, model.fc.weight.detach().numpy())
    logits, probs, feats = sess.run(None, {"input": x})
    assert feats.shape == (5, *feature_shape)

    t_logits, t_cam = torch_cam(model, torch.from_numpy(x))  # the model's own feature maps (hook) x fc.weight
    every = np.tile(np.arange(k), (5, 1))
    got = cam(feats, head.weights, every)
    assert 0.5 < np.abs(t_cam.numpy()).max() < 50  # real values (not zeros), of the order a trained model gives
    np.testing.assert_allclose(got, t_cam.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(logits, t_logits.numpy(), atol=1e-4, rtol=0)
    # Zhou et al.'s identity: the logit is the map's spatial mean plus the bias
    np.testing.assert_allclose(got.mean(axis=(2, 3)) + head.bias, logits, atol=1e-4, rtol=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)

    dl, dc = verify_cam_graph(model, path, x)
    assert dl <= 1e-4 and dc <= 1e-4


def test_the_gate_refuses_a_cam_graph_whose_weights_are_off(tmp_path):
    name, kwargs, shape, _, _ = MODELS[0]
    model = _trained_like(create_model(name, **kwargs), seed=2, shape=shape)
    path = tmp_path / EXPLAIN_FILE
    export_cam_graph(model, shape, path, metadata=_metadata(10, shape), opset=DEFAULT_OPSET, exporter="torchscript")
    x = np.random.default_rng(3).normal(size=(3, *shape)).astype(np.float32)
    verify_cam_graph(model, path, x)  # as exported: passes
    proto = onnx.load(str(path))
    md = ModelMetadata.from_json(next(p.value for p in proto.metadata_props if p.key == METADATA_KEY))
    w = model.fc.weight.detach().numpy().copy()
    w[3] *= 1.01  # one class's weights 1 % off
    md.extra["explain"]["class_weights"] = encode_array(w)
    set_metadata(proto, md)
    onnx.save_model(proto, str(path))
    with pytest.raises(VerificationError, match="CAM differ from PyTorch"):
        verify_cam_graph(model, path, x)


def test_models_without_a_pooling_head_are_explained_by_occlusion(tmp_path):
    lenet = create_model("lenet5")
    assert explain_entry(lenet) == {"method": METHOD_OCCLUSION}
    assert (
        explain_entry(create_model("vgg11", num_classes=10, in_channels=1, input_size=32))["method"] == METHOD_OCCLUSION
    )
    assert (
        explain_entry(create_model("googlenet", num_classes=10, in_channels=1, input_size=32))["method"] == METHOD_CAM
    )
    assert (
        explain_entry(create_model("mobilenet_v1", num_classes=10, in_channels=1, input_size=28))["method"]
        == METHOD_CAM
    )
    md = _metadata(10, [1, 28, 28])
    res = add_explanation(lenet, [1, 28, 28], tmp_path, md, np.zeros((1, 1, 28, 28), np.float32), opset=DEFAULT_OPSET)
    assert res.method == METHOD_OCCLUSION and md.extra["explain"] == {"method": METHOD_OCCLUSION}
    assert not (tmp_path / EXPLAIN_FILE).exists()
    with pytest.raises(ExportError, match="explained by occlusion"):
        export_cam_graph(lenet, [1, 28, 28], tmp_path / EXPLAIN_FILE, metadata=md, opset=DEFAULT_OPSET)


def test_add_explanation_writes_and_records_the_cam_graph(tmp_path):
    name, kwargs, shape, feature_shape, _ = MODELS[0]
    model = _trained_like(create_model(name, **kwargs), seed=4, shape=shape)
    md = _metadata(10, shape)
    x = np.random.default_rng(5).normal(size=(4, *shape)).astype(np.float32)
    res = add_explanation(model, shape, tmp_path, md, x, opset=DEFAULT_OPSET, exporter="torchscript")
    assert res.method == METHOD_CAM and res.path == tmp_path / EXPLAIN_FILE and res.path.is_file()
    assert md.extra["explain"] == {
        "method": METHOD_CAM,
        "file": EXPLAIN_FILE,
        "features_output": "features",
        "feature_shape": list(feature_shape),
    }
    assert "class_weights" not in md.to_json()  # the weights live in explain.onnx only


@pytest.mark.parametrize("name,kwargs,shape,feature_shape,exporter", MODELS, ids=[m[0] for m in MODELS])
def test_the_cam_graph_is_model_onnx_plus_the_pooled_features(tmp_path, name, kwargs, shape, feature_shape, exporter):
    """What `cnn export` does: no second export; model.onnx gets one more output, and the gate holds."""
    from export.onnx import export_onnx

    model = _trained_like(create_model(name, **kwargs), seed=6, shape=shape)
    md = _metadata(kwargs["num_classes"], shape)
    export_onnx(model, shape, tmp_path / "model.onnx", metadata=md, exporter=exporter)
    x = np.random.default_rng(7).normal(size=(4, *shape)).astype(np.float32)
    res = add_explanation(model, shape, tmp_path, md, x, opset=DEFAULT_OPSET, source=tmp_path / "model.onnx")
    assert res.method == METHOD_CAM and md.extra["explain"]["feature_shape"] == list(feature_shape)
    base = onnx.load(str(tmp_path / "model.onnx"))
    cam_graph = onnx.load(str(tmp_path / EXPLAIN_FILE))
    assert len(cam_graph.graph.node) == len(base.graph.node) + 1  # one Identity: the same network
    assert [o.name for o in cam_graph.graph.output] == ["logits", "probabilities", "features"]
    onnx.checker.check_model(cam_graph, full_check=True)
    assert res.max_abs_diff_cam <= 1e-4 and res.max_abs_diff_logits <= 1e-4
