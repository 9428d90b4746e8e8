"""InferenceService.explain in process, on real onnxruntime through the real registry and batchers: an
occlusion model (LeNet-5) and a CAM model (ResNet-20 with its explain.onnx), as `cnn export` lays them out."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from export.explain import export_cam_graph, torch_cam
from export.onnx import export_onnx
from server.core.types import ClassifyRequest, ExplainRequest, ImageInput
from server.errors import InvalidInput
from server.explain import EXPLAIN_FILE, upsample
from server.repository import ModelConfig, ModelMetadata, write_model_config
from tests.server.core_fixtures import core_service, run
from training.models import create_model

LABELS = [str(i) for i in range(10)]


def _seeded(name: str, seed: int, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_model(name, num_classes=10, in_channels=1, input_size=28, **kw).eval()
    for m in model.modules():  # BN statistics away from identity, so the maps are not trivial
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def _publish(repo, name: str, model: torch.nn.Module, cam: bool) -> None:
    md = ModelMetadata(labels=LABELS, input_shape=[1, 28, 28], model_name=name)
    folder = repo / name / "1"
    folder.mkdir(parents=True)
    if cam:
        md.extra["explain"] = export_cam_graph(
            model, [1, 28, 28], folder / EXPLAIN_FILE, metadata=md, opset=18, exporter="torchscript"
        )
    export_onnx(model, [1, 28, 28], folder / "model.onnx", metadata=md, exporter="torchscript")
    write_model_config(repo / name, ModelConfig(name=name))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    _publish(repo, "lenet", _seeded("lenet5", 0), cam=False)
    _publish(repo, "resnet", _seeded("resnet20", 1), cam=True)
    return repo


def _digit(seed: int) -> np.ndarray:
    """A bright stroke on black, 28x28 uint8."""
    img = np.zeros((28, 28), np.uint8)
    rng = np.random.default_rng(seed)
    r, c = rng.integers(6, 16, size=2)
    img[r : r + 10, c : c + 3] = 255
    return img


def _raw(img: np.ndarray) -> ImageInput:
    return ImageInput(raw=(img.tobytes(), 28, 28, 1))


def test_occlusion_model_explains_in_one_batch_per_image_and_agrees_with_classify(repo):
    async def go():
        async with core_service(repo) as s:
            images = [_raw(_digit(0)), _raw(_digit(1))]
            before = s.statistics("lenet")[0]
            ans = await s.explain(ExplainRequest("lenet", images=images, top_k=3))
            after = s.statistics("lenet")[0]
            cls = await s.classify(ClassifyRequest("lenet", images=images, top_k=3))
            return ans, cls, before, after

    ans, cls, before, after = run(go())
    assert (ans.model_name, ans.model_version, ans.method) == ("lenet", "1", "occlusion")
    assert len(ans.results) == 2
    for r, c in zip(ans.results, cls.results):
        assert [p.index for p in r.top_k] == [p.index for p in c]
        np.testing.assert_allclose([p.probability for p in r.top_k], [p.probability for p in c], atol=1e-6)
        (h,) = r.heatmaps
        assert h.index == r.top_k[0].index and h.label == LABELS[h.index]
        assert h.values.shape == (28, 28) and h.values.dtype == np.float32 and np.isfinite(h.values).all()
        assert Image.open(io.BytesIO(h.overlay_png)).size == (28, 28)  # default: the model input's size
    assert after.success.count == before.success.count + 1
    assert after.inference_count == before.inference_count + 2 * 50  # the rows computed: 2 images x 50
    assert after.execution_count == before.execution_count + 2  # 64 rows per batch: one image per batch


def test_cam_model_maps_are_the_pytorch_cam_upsampled(repo):
    img = _digit(2)

    async def go():
        async with core_service(repo) as s:
            return await s.explain(
                ExplainRequest("resnet", images=[_raw(img)], top_k=2, class_indices=[3, 7], overlay=False)
            )

    ans = run(go())
    assert ans.method == "cam"
    (r,) = ans.results
    assert [h.index for h in r.heatmaps] == [3, 7] and all(h.overlay_png == b"" for h in r.heatmaps)
    x = torch.from_numpy((img.astype(np.float32) / 255.0)[None, None])
    logits, t_cam = torch_cam(_seeded("resnet20", 1), x)
    want = upsample(t_cam.numpy()[0, [3, 7]], 28, 28)
    np.testing.assert_allclose(np.stack([h.values for h in r.heatmaps]), want, atol=1e-4)
    probs = torch.softmax(logits, 1)[0].numpy()
    assert [p.index for p in r.top_k] == list(np.argsort(-probs)[:2])


def test_bad_requests_name_the_field(repo):
    async def go(req):
        async with core_service(repo) as s:
            return await s.explain(req)

    img = [_raw(_digit(3))]
    with pytest.raises(InvalidInput, match=r"class_indices\[1\]: 10 is not a class of this model \(0\.\.9\)"):
        run(go(ExplainRequest("lenet", images=img, class_indices=[0, 10])))
    with pytest.raises(InvalidInput, match="overlay_size: must be in 0..2048"):
        run(go(ExplainRequest("resnet", images=img, overlay_size=4096)))
    with pytest.raises(InvalidInput, match="'images' is empty"):
        run(go(ExplainRequest("lenet")))


def test_a_cam_model_without_its_graph_does_not_load(repo, tmp_path):
    import shutil

    shutil.copytree(repo / "resnet", tmp_path / "r" / "resnet")
    (tmp_path / "r" / "resnet" / "1" / EXPLAIN_FILE).unlink()

    async def go():
        async with core_service(tmp_path / "r") as s:
            return s.index()

    (entry,) = run(go())
    assert entry.state == "UNAVAILABLE" and "CAM graph is missing" in entry.reason
