"""Prediction telemetry (issue 21): top-1 class and confidence per model from the answers the core computes,
the test-split reference beside them, bounded class labels; in-process on real onnxruntime and on the
exposition text Prometheus reads."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from server.core.types import ClassifyRequest, ImageInput, InferInput, InferRequest, RawInferRequest
from server.metrics import Metrics
from server.predictions import FLUSH_EVERY, OTHER, ModelPredictions, low_share
from server.repository import METADATA_KEY, ModelMetadata, Preprocessing
from tests.server.core_fixtures import core_service, run
from tests.server.onnx_models import publish, scale_model

LABELS = ["a", "b", "c", "d"]
REFERENCE = {
    "split": "test",
    "images": 100,
    "class_share": {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4},
    "confidence_quantiles": {"0.01": 0.3, "0.05": 0.5, "0.1": 0.7, "0.25": 0.9, "0.5": 0.99},
    "confidence_histogram": [0.0] * 40 + [0.1] + [0.0] * 49 + [0.9] + [0.0] * 9,
}


def samples(m: Metrics) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(generate_latest(m.registry).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_single_rows_and_batches_count_the_same():
    """Answers are queued and counted in bulk (every FLUSH_EVERY answers, and before a scrape): same counts."""
    one, many = (
        ModelPredictions(LABELS, "probabilities", None, 0.5, 32),
        ModelPredictions(LABELS, "probabilities", None, 0.5, 32),
    )
    probs = np.array(
        [[0.75, 0.125, 0.0, 0.125], [0.125, 0.375, 0.25, 0.25], [0.0, 0.0, 0.0, 1.0], [0.125, 0.625, 0.125, 0.125]],
        dtype=np.float32,
    )  # exact in float32
    for row in probs:
        one.record(row[None, :])
    many.record(probs)
    assert one.counts == [0, 0, 0, 0]  # queued, not counted yet
    for m in (one, many):
        m.flush()
        assert m.counts == [1, 2, 0, 1]
        assert m.low == 1  # 0.375 < 0.5
        # buckets (not cumulative): 0.375 -> le 0.4, 0.625 -> le 0.7, 0.75 -> le 0.8, 1.0 -> le 1.0
        assert m.buckets == [0, 0, 0, 1, 0, 0, 1, 1, 0, 0, 0, 1, 0]
        assert m.conf_sum == pytest.approx(0.75 + 0.375 + 1.0 + 0.625)


def test_logits_give_the_softmax_confidence_and_nan_rows_are_skipped():
    m = ModelPredictions(LABELS, "logits", None, 0.5, 32)
    logits = np.array([[0.0, 0.0, 0.0, 0.0], [1.0, 3.0, 0.0, 0.0], [np.nan] * 4], dtype=np.float32)
    m.record_outputs({"logits": logits, "other": np.zeros((3, 2))})
    m.flush()
    e = np.exp([1.0, 3.0, 0.0, 0.0])
    assert m.counts == [1, 1, 0, 0]
    assert m.conf_sum == pytest.approx(0.25 + e[1] / e.sum())
    assert m.low == 1
    m.record(np.full((1, 4), np.nan, dtype=np.float32))
    m.record(np.ones((2, 3), dtype=np.float32))  # another model's shape (an older version): not counted
    m.flush()
    assert sum(m.counts) == 2


def test_the_event_loop_counts_every_flush_every_answers():
    m = ModelPredictions(LABELS, "probabilities", None, 0.5, 32)
    row = np.array([[0.0, 1.0, 0.0, 0.0]], dtype=np.float32)
    for _ in range(FLUSH_EVERY - 1):
        m.record(row)
    assert m.counts == [0, 0, 0, 0]
    m.record(row)
    assert m.counts == [0, FLUSH_EVERY, 0, 0] and not m._pending


def test_many_classes_keep_the_reference_top_n_and_count_the_rest_as_other():
    labels = [f"k{i}" for i in range(6)]
    ref = {"class_share": {"k0": 0.05, "k1": 0.4, "k2": 0.05, "k3": 0.3, "k4": 0.1, "k5": 0.1}}
    m = ModelPredictions(labels, "probabilities", ref, 0.5, max_classes=3)
    assert m.slots == ["k1", "k3", "k4", OTHER]  # the three most frequent on the test split, in label order
    m.record(np.eye(6, dtype=np.float32))
    m.flush()
    assert m.counts == [1, 1, 1, 3]
    assert m.reference["share"].tolist() == pytest.approx([0.4, 0.3, 0.1, 0.2])


def test_low_share_interpolates_the_reference_histogram():
    hist = [0.0] * 100
    hist[40], hist[90] = 0.2, 0.8
    assert low_share(hist, 0.5) == pytest.approx(0.2)
    assert low_share(hist, 0.405) == pytest.approx(0.1)
    assert low_share(hist, 0.95) == pytest.approx(1.0)
    assert low_share([], 0.5) == 0.0


def test_exposition_has_every_class_at_zero_then_counts_and_the_reference():
    m = Metrics(low_confidence_threshold=0.5)
    m.init_predictions("clf", LABELS, ["logits", "probabilities"], REFERENCE, "1")
    s = samples(m)
    for label in LABELS:
        assert s[("cnn_predictions_total", (("class", label), ("model", "clf")))] == 0
        assert s[("cnn_reference_class_share", (("class", label), ("model", "clf")))] == REFERENCE["class_share"][label]
    assert s[("cnn_reference_confidence", (("model", "clf"), ("quantile", "0.5")))] == 0.99
    assert s[("cnn_reference_low_confidence_share", (("model", "clf"),))] == pytest.approx(0.1)
    m.predictions.get("clf").record(np.array([[0.1, 0.2, 0.3, 0.4], [0.9, 0.05, 0.03, 0.02]], np.float32))
    s = samples(m)
    assert s[("cnn_predictions_total", (("class", "d"), ("model", "clf")))] == 1
    assert s[("cnn_predictions_total", (("class", "a"), ("model", "clf")))] == 1
    assert s[("cnn_prediction_confidence_count", (("model", "clf"),))] == 2
    assert s[("cnn_prediction_confidence_bucket", (("le", "0.5"), ("model", "clf")))] == 1
    assert s[("cnn_low_confidence_predictions_total", (("model", "clf"),))] == 1
    # a model exported before the reference existed: live series, no reference series
    m.init_predictions("old", LABELS, ["probabilities"], {}, "1")
    names = {k for k in samples(m) if ("model", "old") in k[1]}
    assert names and not any(n.startswith("cnn_reference") for n, _ in names)


# ------------------------------------------------------------------------------------------ in the core


def classifier_model() -> onnx.ModelProto:
    """(B, 1, 2, 2) grey images -> logits = the 4 pixels, probabilities = their softmax (export's two outputs)."""
    nodes = [
        helper.make_node("Flatten", ["input"], ["logits"], axis=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "clf",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 2, 2])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 4]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    md = ModelMetadata(
        labels=LABELS,
        input_shape=[1, 2, 2],
        reference=REFERENCE,
        preprocessing=Preprocessing(color_mode="L", height=2, width=2, mean=[0.0], std=[1.0]),
    )
    model.metadata_props.add(key=METADATA_KEY, value=md.to_json())
    onnx.checker.check_model(model)
    return model


def test_every_inference_path_counts_answers_in_the_core(tmp_path):
    from PIL import Image

    publish(tmp_path, "clf", classifier_model(), max_batch_size=8)
    publish(tmp_path, "scale", scale_model("FP32", width=4))  # output "output": not a classifier's, not counted
    onehot = np.zeros((3, 1, 2, 2), np.float32)
    onehot.reshape(3, 4)[[0, 1, 2], [3, 3, 1]] = 20.0  # top-1 d, d, b; confidence ~1
    buf = io.BytesIO()
    Image.frombytes("L", (2, 2), bytes([0, 0, 255, 0])).save(buf, format="PNG")  # pixel c brightest

    async def main():
        async with core_service(tmp_path) as s:
            await s.infer(InferRequest("clf", inputs=[InferInput("input", "FP32", (3, 1, 2, 2), onehot)]))
            x1 = np.zeros((1, 1, 2, 2), np.float32)  # all equal: top-1 a (first), confidence 0.25 (low)
            await s.infer_raw(
                RawInferRequest("clf", "", "", "input", "FP32", (1, 1, 2, 2), x1.tobytes(), None),
                lambda: pytest.fail("the raw request fits: no decode"),
            )
            await s.classify(ClassifyRequest("clf", images=[ImageInput(encoded=buf.getvalue())]))
            await s.infer(
                InferRequest("scale", inputs=[InferInput("input", "FP32", (2, 4), np.ones((2, 4), np.float32))])
            )
            return s.metrics

    m = run(main())
    s = samples(m)
    counts = {lab: s[("cnn_predictions_total", (("class", lab), ("model", "clf")))] for lab in LABELS}
    assert counts == {"a": 1, "b": 1, "c": 1, "d": 2}
    assert s[("cnn_prediction_confidence_count", (("model", "clf"),))] == 5
    # low: the all-equal raw row (0.25) and the image (pixels 0, 0, 1, 0 after /255: softmax 0.475)
    assert s[("cnn_low_confidence_predictions_total", (("model", "clf"),))] == 2
    scale = [v for k, v in s.items() if ("model", "scale") in k[1] and k[0] == "cnn_predictions_total"]
    assert len(scale) == 4 and sum(scale) == 0  # its series exist at 0 (Classify would count), ModelInfer does not
    assert s[("cnn_prediction_confidence_count", (("model", "scale"),))] == 0


def test_telemetry_off_exports_no_prediction_series_and_counts_nothing(tmp_path):
    """`prediction_telemetry: false`: answers as before, and not one series of server/predictions.py."""
    publish(tmp_path, "clf", classifier_model(), max_batch_size=8)
    x = np.zeros((2, 1, 2, 2), np.float32)
    x.reshape(2, 4)[:, 2] = 20.0  # top-1 c

    async def main(metrics):
        async with core_service(tmp_path, metrics=metrics) as s:
            r = await s.infer(InferRequest("clf", inputs=[InferInput("input", "FP32", (2, 1, 2, 2), x)]))
            return metrics, r

    off, r = run(main(Metrics(max_batch_size=64, prediction_telemetry=False)))
    assert [int(np.argmax(row)) for row in r.outputs[0].data] == [2, 2]  # still answered
    names = {name for name, _ in samples(off)}
    for family in (
        "cnn_predictions_total",
        "cnn_prediction_confidence_count",
        "cnn_low_confidence_predictions_total",
        "cnn_reference_class_share",
        "cnn_reference_confidence",
        "cnn_reference_low_confidence_share",
    ):
        assert family not in names, family
    on, _ = run(main(Metrics(max_batch_size=64)))  # the same with it on: the series are there and count
    assert samples(on)[("cnn_predictions_total", (("class", "c"), ("model", "clf")))] == 2
