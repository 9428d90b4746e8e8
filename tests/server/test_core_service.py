"""The core service in-process, in the style of MLServer's data-plane tests: core types in, core types
out, real onnxruntime underneath; no protobuf, no subprocess, no socket."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from server.core.types import (
    ClassifyRequest,
    InferInput,
    InferRequest,
    RawInferRequest,
    RequestedOutput,
)
from server.errors import DeadlineExceeded, InvalidInput, ModelNotFound, ModelNotReady, Unavailable, Unimplemented
from tests.server.core_fixtures import core_service, run
from tests.server.onnx_models import mean_model, publish, scale_model


@pytest.fixture
def repo(tmp_path):
    publish(tmp_path, "scale", scale_model("FP32", width=4, factor=3.0), max_batch_size=8)
    publish(tmp_path, "mean", mean_model(width=4))
    return tmp_path


def _x(rows: int, width: int = 4) -> np.ndarray:
    return np.arange(rows * width, dtype=np.float32).reshape(rows, width)


def test_infer_returns_every_output_and_records_statistics(repo):
    async def main():
        async with core_service(repo) as s:
            x = _x(3)
            r = await s.infer(InferRequest("scale", inputs=[InferInput("input", "FP32", x.shape, x)], id="a"))
            stats = s.statistics("scale")
            return r, stats

    r, stats = run(main())
    assert (r.model_name, r.model_version, r.id) == ("scale", "1", "a")
    assert [o.name for o in r.outputs] == ["output"] and r.outputs[0].datatype == "FP32"
    np.testing.assert_array_equal(r.outputs[0].data, _x(3) * 3)
    (v,) = stats
    assert (v.name, v.version, v.success.count, v.fail.count, v.inference_count, v.execution_count) == (
        "scale",
        "1",
        1,
        0,
        3,
        1,
    )
    assert [b.batch_size for b in v.batches] == [3]


def test_infer_raw_serves_the_common_request_and_falls_back_to_decode(repo):
    decoded = []

    def decode(req):
        def f():
            decoded.append(req)
            return req

        return f

    async def main():
        async with core_service(repo) as s:
            x = _x(2)
            fast = await s.infer_raw(
                RawInferRequest("scale", "", "r1", "input", "FP32", x.shape, x.tobytes(), None), decode(None)
            )
            # a shape that does not fit: the full request is decoded and infer() words the refusal
            bad = InferRequest("scale", inputs=[InferInput("input", "FP32", (2, 5), np.zeros((2, 5), np.float32))])
            with pytest.raises(InvalidInput, match=r"inputs\[0\].shape: \[2, 5\] does not match model 'scale'"):
                await s.infer_raw(
                    RawInferRequest("scale", "", "r2", "input", "FP32", (2, 5), b"\0" * 40, None), decode(bad)
                )
            # a free-dim model never takes the raw path (its dims are unchecked there)
            m = np.ones((1, 4, 3), np.float32)
            free = await s.infer_raw(
                RawInferRequest("mean", "", "r3", "input", "FP32", m.shape, m.tobytes(), None),
                decode(InferRequest("mean", id="r3", inputs=[InferInput("input", "FP32", m.shape, m)])),
            )
            return fast, free, s.statistics("scale")[0]

    fast, free, stats = run(main())
    np.testing.assert_array_equal(fast.outputs[0].data, _x(2) * 3)
    assert fast.id == "r1" and len(decoded) == 2
    np.testing.assert_allclose(free.outputs[0].data, np.ones((1, 4), np.float32))
    assert stats.success.count == 1  # the refused request never reached the batcher


def test_classification_output_and_output_checks(repo):
    async def main():
        async with core_service(repo) as s:
            x = np.array([[0, 5, 1, 2]], np.float32)
            req = InferRequest(
                "scale",
                inputs=[InferInput("input", "FP32", x.shape, x)],
                outputs=[RequestedOutput("output", classification=2)],
            )
            top = await s.infer(req)
            with pytest.raises(InvalidInput, match=r"outputs\[0\].name: model 'scale' has no output 'nope'"):
                await s.infer(InferRequest("scale", inputs=req.inputs, outputs=[RequestedOutput("nope")]))
            with pytest.raises(InvalidInput, match=r"'outputs' asks for 2 tensors; model 'scale' has 1 \(output\)"):
                await s.infer(
                    InferRequest(
                        "scale", inputs=req.inputs, outputs=[RequestedOutput("output"), RequestedOutput("output")]
                    )
                )
            return top

    top = run(main())
    assert top.outputs[0].datatype == "BYTES" and top.outputs[0].shape == (1, 2)
    assert top.outputs[0].data == [b"15.000000:1:c1", b"6.000000:3:c3"]


def test_lookups_name_what_is_wrong(repo):
    async def main():
        async with core_service(repo) as s:
            with pytest.raises(ModelNotFound, match=r"unknown model 'nope' \(models: mean, scale\)"):
                s.model_metadata("nope")
            with pytest.raises(ModelNotFound, match=r"model 'scale' has no version 7 \(ready: 1\)"):
                s.model_config("scale", "7")
            with pytest.raises(ModelNotFound, match=r"'model_version' must be a version number"):
                s.model_config("scale", "²")
            assert s.model_ready("scale", "1") and not s.model_ready("scale", "2") and not s.model_ready("nope", "")
            md = s.model_metadata("scale")
            cfg = s.model_config("scale")
            return md, cfg, s.server_metadata(), s.list_models()

    md, cfg, info, models = run(main())
    assert (md.name, md.versions, md.platform) == ("scale", ["1"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, t.shape) for t in md.inputs] == [("input", "FP32", (4,))]
    assert (
        cfg.config.max_batch_size == 8
        and cfg.provider == "CPUExecutionProvider"
        and cfg.labels == ["c0", "c1", "c2", "c3"]
    )
    assert info.name == "cnn-stack" and "model_repository(unload_dependents)" not in info.extensions
    assert [m.name for m in models] == ["mean", "scale"]


def test_drain_refuses_new_work_with_unavailable(repo):
    async def main():
        async with core_service(repo) as s:
            assert s.ready()
            s.drain()
            x = _x(1)
            with pytest.raises(Unavailable, match="shutting down"):
                await s.infer(InferRequest("scale", inputs=[InferInput("input", "FP32", x.shape, x)]))
            with pytest.raises(Unavailable, match="shutting down"):
                await s.classify(ClassifyRequest("scale"))
            return s.ready(), s.model_ready("scale", ""), s.model_health()

    assert run(main()) == (False, False, {"mean": False, "scale": False})


def _image_model():
    """(B, 1, 2, 2) grey images -> (B, 4) logits: the pixels themselves, flattened."""
    import onnx
    from onnx import TensorProto, helper

    from server.repository import METADATA_KEY, ModelMetadata, Preprocessing

    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["logits"], axis=1)],
        "flat",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 2, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    md = ModelMetadata(
        labels=["a", "b", "c", "d"],
        input_shape=[1, 2, 2],
        preprocessing=Preprocessing(color_mode="L", height=2, width=2),
    )
    model.metadata_props.add(key=METADATA_KEY, value=md.to_json())
    onnx.checker.check_model(model)
    return model


def test_classify_records_statistics_like_infer(tmp_path):
    """Classify goes through the same accounting as ModelInfer: success and fail counts, rows."""
    import io

    from PIL import Image

    from server.core.types import ImageInput

    publish(tmp_path, "img", _image_model(), max_batch_size=1)  # two images: two batches, one request
    buf = io.BytesIO()
    Image.frombytes("L", (2, 2), bytes([0, 255, 10, 20])).save(buf, format="PNG")

    async def main():
        async with core_service(tmp_path) as s:
            ok = await s.classify(ClassifyRequest("", images=[ImageInput(encoded=buf.getvalue())] * 2, top_k=2))
            with pytest.raises(InvalidInput, match=r"images\[0\]"):  # refused before the batcher: not counted
                await s.classify(ClassifyRequest("img", images=[ImageInput(encoded=b"not an image")]))
            late = asyncio.get_running_loop().time() - 1
            with pytest.raises(DeadlineExceeded):
                await s.classify(ClassifyRequest("img", images=[ImageInput(encoded=buf.getvalue())], deadline=late))
            return ok, s.statistics("img", "1")[0]

    ok, st = run(main())
    assert (ok.model_name, ok.model_version) == ("img", "1") and len(ok.results) == 2
    assert [(p.label, p.index) for p in ok.results[0]] == [("b", 1), ("d", 3)]
    assert (st.success.count, st.fail.count, st.inference_count, st.execution_count) == (1, 1, 2, 2)


def test_model_control_is_off_unless_allowed_and_index_reports_states(repo):
    (repo / "broken").mkdir()
    (repo / "broken" / "config.yaml").write_text("name: broken\nmax_batch_size: 0\n")
    publish(repo, "scale", b"\0garbage", version=2)

    async def main():
        async with core_service(repo) as s:
            with pytest.raises(Unimplemented, match="allow_model_control"):
                await s.load_model("scale")
            return s.index(), s.index(ready_only=True)

    index, ready = run(main())
    rows = {(e.name, e.version): (e.state, e.reason) for e in index}
    assert rows[("scale", "1")] == ("READY", "")
    assert rows[("scale", "2")][0] == "UNAVAILABLE" and "scale/2/model.onnx" in rows[("scale", "2")][1]
    assert rows[("broken", "")][0] == "UNAVAILABLE" and "max_batch_size" in rows[("broken", "")][1]
    assert {(e.name, e.version) for e in ready} == {("scale", "1"), ("mean", "1")}


def test_unload_and_load_on_request(repo):
    async def main():
        async with core_service(repo, allow_model_control=True) as s:
            await s.unload_model("scale")
            with pytest.raises(ModelNotFound, match="unknown model 'scale'"):
                s.model_metadata("scale")
            unloaded = {(e.name, e.version): e.state for e in s.index()}
            with pytest.raises(ModelNotFound, match="is not loaded"):
                await s.unload_model("scale")
            await s.load_model("scale")
            return unloaded, s.model_ready("scale", "1")

    unloaded, ready = run(main())
    assert unloaded[("scale", "")] == "UNAVAILABLE" and ready


def test_a_known_model_without_a_ready_version_is_not_ready(tmp_path):
    publish(tmp_path, "bad", b"\0garbage")

    async def main():
        async with core_service(tmp_path) as s:
            with pytest.raises(ModelNotReady, match="model 'bad' has no ready version"):
                s.model_metadata("bad")
            return s.is_known("bad"), s.is_known("other"), s.ready()

    assert run(main()) == (True, False, False)
