"""The bad-input matrix: one row per malformed or mismatched request, through a real server.

Every row asserts the exact gRPC status code, that the message names the offending field, that the
error is counted (`cnn_requests_total{rpc, code}` moves by exactly one), and that the next good
request of the same kind still succeeds. Requests are built as raw protocol messages (tritonclient's
`service_pb2` for the Open Inference Protocol, the project's stubs for `cnn.v1.Classification`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np
import pytest

from tests.conftest import MODEL_NAME, start_server
from tests.reliability.helpers import (
    LENET_SHAPE,
    Stubs,
    big_png,
    classify_request,
    cpb,
    digit_jpeg,
    digit_png,
    jpeg_with_components,
    lenet_request,
    metric_sum,
    pb,
    png_header,
    requests_total,
    wait_for_metric,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
OK = grpc.StatusCode.OK
N = int(np.prod(LENET_SHAPE))  # values per LeNet row


@dataclass
class Case:
    id: str
    rpc: str  # "ModelInfer" or "Classify"
    build: Callable[[], object]
    code: grpc.StatusCode
    names: tuple[str, ...]  # every one of these must appear in the error message


# ---------------------------------------------------------------------------------------------------
# ModelInfer request builders


def _req(model: str = MODEL_NAME, version: str = "", **kw) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name=model, model_version=version, **kw)


def _raw(req: pb.ModelInferRequest, name: str, datatype: str, shape, data: bytes) -> pb.ModelInferRequest:
    req.inputs.add(name=name, datatype=datatype, shape=list(shape))
    req.raw_input_contents.append(data)
    return req


def _zeros(rows: int = 1, dtype: str = "<f4") -> bytes:
    return np.zeros((rows, *LENET_SHAPE), dtype).tobytes()


def extra_input():
    req = lenet_request()
    return _raw(req, "extra", "FP32", [1, *LENET_SHAPE], _zeros())


def raw_and_typed():
    req = lenet_request()
    req.inputs[0].contents.fp32_contents.extend([0.0] * N)
    return req


def typed_count_mismatch():
    req = _req()
    t = req.inputs.add(name="input", datatype="FP32", shape=[1, *LENET_SHAPE])
    t.contents.fp32_contents.extend([0.0] * (N - 1))
    return req


def raw_entries_mismatch():
    req = lenet_request()
    req.raw_input_contents.append(b"")
    return req


def with_outputs(*names: str, classification: int | None = None):
    def build():
        req = lenet_request()
        for n in names:
            o = req.outputs.add(name=n)
            if classification is not None:
                o.parameters["classification"].int64_param = classification
        return req

    return build


def nonfinite_raw():
    x = np.zeros((1, *LENET_SHAPE), "<f4")
    x[0, 0, 0, 0], x[0, 0, 0, 1], x[0, 0, 0, 2] = np.nan, np.inf, -np.inf
    return _raw(_req(), "input", "FP32", x.shape, x.tobytes())


def nonfinite_typed():
    req = _req()
    t = req.inputs.add(name="input", datatype="FP32", shape=[1, *LENET_SHAPE])
    t.contents.fp32_contents.extend([float("nan")] + [0.0] * (N - 1))
    return req


def bad_timeout():
    req = lenet_request()
    req.parameters["timeout"].int64_param = -5
    return req


def overflowing_shape():
    """Dimensions whose product overflows int64 (2**32 * 2**32 == 2**64): the element count must not wrap to 0."""
    return _raw(_req(), "input", "FP32", [2**32, 2**32, 1, 1], b"")


def int8_typed_out_of_range():
    """int_contents carries int32 values; 1000 does not fit INT8."""
    req = _req("scale-fp32")
    t = req.inputs.add(name="input", datatype="INT8", shape=[1, 4])
    t.contents.int_contents.extend([1000, 0, 0, 0])
    return req


def uint8_typed_out_of_range():
    req = _req("scale-uint8")
    t = req.inputs.add(name="input", datatype="UINT8", shape=[1, 4])
    t.contents.uint_contents.extend([256, 1, 2, 3])
    return req


# ---------------------------------------------------------------------------------------------------
# Classify request builders


def raw_image(pixels: bytes, height: int, width: int, channels: int, **kw) -> cpb.ClassifyRequest:
    return cpb.ClassifyRequest(
        images=[cpb.Image(raw=cpb.RawImage(pixels=pixels, height=height, width=width, channels=channels))], **kw
    )


def two_images_second_bad():
    return classify_request([digit_png(), b"\x89PNG\r\n\x1a\n garbage"])


INFER_CASES = [
    Case(
        "unknown-model",
        "ModelInfer",
        lambda: lenet_request(model="no-such-model"),
        NOT_FOUND,
        ("model_name", "no-such-model"),
    ),
    Case("unknown-version", "ModelInfer", lambda: lenet_request(version="7"), NOT_FOUND, ("model_version", "7")),
    Case("non-numeric-version", "ModelInfer", lambda: lenet_request(version="latest"), NOT_FOUND, ("model_version",)),
    # str.isdigit() accepts '²' but int() does not: must still be NOT_FOUND, not INTERNAL
    Case(
        "superscript-digit-version",
        "ModelInfer",
        lambda: lenet_request(version="\u00b2"),
        NOT_FOUND,
        ("model_version",),
    ),
    Case(
        "unready-version",
        "ModelInfer",
        lambda: _raw(_req("halfbroken", "2"), "input", "FP32", [1, 4], bytes(16)),
        UNAVAILABLE,
        ("model_version", "halfbroken"),
    ),
    Case("empty-request", "ModelInfer", lambda: pb.ModelInferRequest(), NOT_FOUND, ("model_name",)),
    Case("missing-input", "ModelInfer", lambda: _req(), INVALID, ("inputs",)),
    Case("extra-input", "ModelInfer", extra_input, INVALID, ("inputs", "extra")),
    Case(
        "misnamed-input",
        "ModelInfer",
        lambda: _raw(_req(), "image", "FP32", [1, *LENET_SHAPE], _zeros()),
        INVALID,
        ("inputs[0].name", "image"),
    ),
    Case(
        "wrong-datatype",
        "ModelInfer",
        lambda: _raw(_req(), "input", "FP64", [1, *LENET_SHAPE], _zeros(1, "<f8")),
        INVALID,
        ("inputs[0].datatype", "FP64"),
    ),
    Case(
        "unknown-datatype",
        "ModelInfer",
        lambda: _raw(_req(), "input", "FLOAT", [1, *LENET_SHAPE], _zeros()),
        INVALID,
        ("inputs[0].datatype",),
    ),
    Case(
        "bytes-datatype",
        "ModelInfer",
        lambda: _raw(_req(), "input", "BYTES", [1], b"\x01\x00\x00\x00x"),
        INVALID,
        ("inputs[0].datatype",),
    ),
    Case(
        "shape-wrong-dims",
        "ModelInfer",
        lambda: _raw(_req(), "input", "FP32", [1, 28, 28], _zeros()),
        INVALID,
        ("inputs[0].shape",),
    ),
    Case(
        "shape-wrong-size",
        "ModelInfer",
        lambda: _raw(_req(), "input", "FP32", [1, 1, 27, 28], bytes(4 * 27 * 28)),
        INVALID,
        ("inputs[0].shape",),
    ),
    Case(
        "shape-negative",
        "ModelInfer",
        lambda: _raw(_req(), "input", "FP32", [-1, 1, 28, 28], b""),
        INVALID,
        ("inputs[0].shape",),
    ),
    Case(
        "shape-zero-batch",
        "ModelInfer",
        lambda: _raw(_req(), "input", "FP32", [0, 1, 28, 28], b""),
        INVALID,
        ("inputs[0].shape",),
    ),
    Case(
        "shape-too-many-dims",
        "ModelInfer",
        lambda: _raw(_req(), "input", "FP32", [1] * 9, b"\0" * 4),
        INVALID,
        ("inputs[0].shape",),
    ),
    Case(
        "batch-above-max",
        "ModelInfer",
        lambda: _raw(_req(), "input", "FP32", [65, *LENET_SHAPE], _zeros(65)),
        INVALID,
        ("inputs[0].shape", "max_batch_size"),
    ),
    Case("shape-overflows-int64", "ModelInfer", overflowing_shape, INVALID, ("inputs[0].shape",)),
    Case(
        "raw-too-short",
        "ModelInfer",
        lambda: _raw(_req(), "input", "FP32", [1, *LENET_SHAPE], _zeros()[:-1]),
        INVALID,
        ("raw_input_contents[0]",),
    ),
    Case(
        "raw-too-long",
        "ModelInfer",
        lambda: _raw(_req(), "input", "FP32", [1, *LENET_SHAPE], _zeros(2)),
        INVALID,
        ("raw_input_contents[0]",),
    ),
    Case("raw-entries-mismatch", "ModelInfer", raw_entries_mismatch, INVALID, ("raw_input_contents",)),
    Case("raw-and-typed", "ModelInfer", raw_and_typed, INVALID, ("raw_input_contents", "contents")),
    Case("typed-count-mismatch", "ModelInfer", typed_count_mismatch, INVALID, ("inputs[0].contents.fp32_contents",)),
    Case(
        "typed-int8-out-of-range", "ModelInfer", int8_typed_out_of_range, INVALID, ("inputs[0].contents.int_contents",)
    ),
    Case(
        "typed-uint8-out-of-range",
        "ModelInfer",
        uint8_typed_out_of_range,
        INVALID,
        ("inputs[0].contents.uint_contents",),
    ),
    Case("output-unknown", "ModelInfer", with_outputs("scores"), INVALID, ("outputs[0].name", "scores")),
    Case("output-twice", "ModelInfer", with_outputs("logits", "logits"), INVALID, ("outputs[1].name",)),
    Case("too-many-outputs", "ModelInfer", with_outputs("logits", "probabilities", "logits"), INVALID, ("outputs",)),
    Case(
        "output-classification-zero",
        "ModelInfer",
        with_outputs("logits", classification=0),
        INVALID,
        ("outputs[0].parameters.classification",),
    ),
    Case("timeout-negative", "ModelInfer", bad_timeout, INVALID, ("parameters.timeout",)),
    # served (a model's business), but counted
    Case("nan-inf-raw", "ModelInfer", nonfinite_raw, OK, ()),
    Case("nan-typed", "ModelInfer", nonfinite_typed, OK, ()),
]

CLASSIFY_CASES = [
    Case(
        "classify-unknown-model",
        "Classify",
        lambda: classify_request(model_name="no-such-model"),
        NOT_FOUND,
        ("model_name", "no-such-model"),
    ),
    Case(
        "classify-unknown-version",
        "Classify",
        lambda: classify_request(model_version="9"),
        NOT_FOUND,
        ("model_version",),
    ),
    Case("classify-empty-request", "Classify", lambda: cpb.ClassifyRequest(), INVALID, ("images",)),
    Case(
        "classify-image-without-source",
        "Classify",
        lambda: cpb.ClassifyRequest(images=[cpb.Image()]),
        INVALID,
        ("images[0]",),
    ),
    Case(
        "classify-not-an-image",
        "Classify",
        lambda: classify_request([b"hello, this is not an image"]),
        INVALID,
        ("images[0].encoded",),
    ),
    Case("classify-empty-bytes", "Classify", lambda: classify_request([b""]), INVALID, ("images[0].encoded",)),
    Case(
        "classify-gif",
        "Classify",
        lambda: classify_request([b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"]),
        INVALID,
        ("images[0].encoded",),
    ),
    Case("classify-second-image-bad", "Classify", two_images_second_bad, INVALID, ("images[1].encoded",)),
    Case(
        "classify-truncated-png-header",
        "Classify",
        lambda: classify_request([digit_png()[:20]]),
        INVALID,
        ("images[0].encoded",),
    ),
    Case(
        "classify-truncated-png-pixels",
        "Classify",
        lambda: classify_request([big_png()[: len(big_png()) // 2]]),
        INVALID,
        ("images[0].encoded", "truncated"),
    ),
    Case(
        "classify-truncated-jpeg",
        "Classify",
        lambda: classify_request([digit_jpeg()[: len(digit_jpeg()) // 2]]),
        INVALID,
        ("images[0].encoded", "truncated"),
    ),
    Case(
        "classify-bomb-50000x50000",
        "Classify",
        lambda: classify_request([png_header(50000, 50000)]),
        EXHAUSTED,
        ("images[0].encoded",),
    ),
    Case(
        "classify-bomb-one-side",
        "Classify",
        lambda: classify_request([png_header(20000, 1)]),
        EXHAUSTED,
        ("images[0].encoded", "20000x1"),
    ),
    Case(
        "classify-bomb-rgba-5000x5000",
        "Classify",
        lambda: classify_request([png_header(5000, 5000, color_type=6)]),
        EXHAUSTED,
        ("images[0].encoded", "5000x5000"),
    ),
    Case("classify-png-0x0", "Classify", lambda: classify_request([png_header(0, 0)]), INVALID, ("images[0].encoded",)),
    Case("classify-raw-0x0", "Classify", lambda: raw_image(b"", 0, 0, 1), INVALID, ("images[0].raw",)),
    Case(
        "classify-jpeg-2-components",
        "Classify",
        lambda: classify_request([jpeg_with_components(2)]),
        INVALID,
        ("images[0].encoded",),
    ),
    Case(
        "classify-raw-2-channels",
        "Classify",
        lambda: raw_image(bytes(28 * 28 * 2), 28, 28, 2),
        INVALID,
        ("images[0].raw.channels",),
    ),
    Case(
        "classify-raw-wrong-length",
        "Classify",
        lambda: raw_image(bytes(28 * 28 - 1), 28, 28, 1),
        INVALID,
        ("images[0].raw.pixels",),
    ),
    Case("classify-raw-bomb", "Classify", lambda: raw_image(b"", 50000, 50000, 3), EXHAUSTED, ("images[0].raw",)),
    Case("classify-too-many-images", "Classify", lambda: classify_request([b"x"] * 257), INVALID, ("images",)),
]


def _call(stubs: Stubs, rpc: str, request, timeout: float = 30):
    fn = stubs.infer.ModelInfer if rpc == "ModelInfer" else stubs.classify.Classify
    try:
        return OK, "", fn(request, timeout=timeout)
    except grpc.RpcError as e:
        return e.code(), e.details() or "", None


def _good(rpc: str):
    return lenet_request(rows=2) if rpc == "ModelInfer" else classify_request()


@pytest.fixture(scope="module")
def stubs(rel_server):
    with Stubs(rel_server.address) as s:
        yield s


@pytest.mark.parametrize("case", INFER_CASES + CLASSIFY_CASES, ids=lambda c: c.id)
def test_bad_input(rel_server, stubs, case):
    request = case.build()
    before = requests_total(rel_server, case.rpc, case.code.name)
    nonfinite_before = metric_sum(rel_server.metrics_text(), "cnn_nonfinite_inputs_total", model=MODEL_NAME)

    code, details, response = _call(stubs, case.rpc, request)

    assert code == case.code, f"{case.id}: expected {case.code.name}, got {code.name}: {details}"
    for name in case.names:
        assert name in details, f"{case.id}: message does not name {name!r}: {details!r}"
    after = wait_for_metric(rel_server, "cnn_requests_total", before + 1, rpc=case.rpc, code=case.code.name)
    assert after == before + 1, (
        f"{case.id}: cnn_requests_total{{rpc={case.rpc}, code={case.code.name}}} moved by {after - before}, not 1"
    )
    if case.id.startswith("nan"):
        out = {o.name: i for i, o in enumerate(response.outputs)}
        assert set(out) == {"logits", "probabilities"} and response.model_version == "1"
        assert (
            wait_for_metric(rel_server, "cnn_nonfinite_inputs_total", nonfinite_before + 1, model=MODEL_NAME)
            == nonfinite_before + 1
        )
    # the server is unharmed: the next good request of the same kind succeeds
    code, details, response = _call(stubs, case.rpc, _good(case.rpc))
    assert code == OK, f"after {case.id}: good request failed: {code.name}: {details}"
    assert rel_server.proc.poll() is None


def test_finite_input_is_not_counted_as_nonfinite(rel_server, stubs):
    before = metric_sum(rel_server.metrics_text(), "cnn_nonfinite_inputs_total", model=MODEL_NAME)
    assert _call(stubs, "ModelInfer", lenet_request(rows=3, fill=1e30))[0] == OK  # large, but finite
    assert metric_sum(rel_server.metrics_text(), "cnn_nonfinite_inputs_total", model=MODEL_NAME) == before


def test_bad_requests_leave_no_trace_in_the_model_statistics(rel_server, stubs):
    """Requests refused at validation never reach the batcher: no execution, no failure recorded."""

    def stats():
        r = stubs.infer.ModelStatistics(pb.ModelStatisticsRequest(name=MODEL_NAME, version="1"), timeout=10)
        s = r.model_stats[0]
        return s.execution_count, s.inference_count, s.inference_stats.fail.count

    before = stats()
    for case in INFER_CASES:
        if case.code == INVALID:
            _call(stubs, "ModelInfer", case.build())  # codes are the matrix's business; here only the statistics
    assert stats() == before


def test_streamed_bad_requests_answer_in_band_and_the_stream_lives(rel_server, stubs):
    """The same rows over ModelStreamInfer: each bad request gets its error in-band, naming the field,
    every good request between them is answered, and the stream ends cleanly."""
    bad = [c for c in INFER_CASES if c.code != OK]
    requests = []
    for i, case in enumerate(bad):
        r = case.build()
        r.id = f"bad-{i}"
        requests.append(r)
        g = lenet_request()
        g.id = f"good-{i}"
        requests.append(g)
    answers = list(stubs.infer.ModelStreamInfer(iter(requests), timeout=60))
    assert len(answers) == len(requests)
    unattributed = [a.error_message for a in answers if not a.infer_response.id]
    assert not unattributed, f"in-band answers without their request id: {unattributed[:3]}"
    by_id = {a.infer_response.id: a for a in answers}
    for i, case in enumerate(bad):
        assert by_id[f"good-{i}"].error_message == "", by_id[f"good-{i}"].error_message
        msg = by_id[f"bad-{i}"].error_message
        assert msg and all(n in msg for n in case.names), f"{case.id}: {msg!r}"
        assert "internal error" not in msg


def test_message_above_max_message_bytes_is_resource_exhausted(reliability_repo, tmp_path):
    cfg = tmp_path / "server.yaml"
    cfg.write_text("max_message_bytes: 65536\n")
    s = start_server(
        reliability_repo,
        "--poll-interval-s",
        "0",
        "--default-model",
        MODEL_NAME,
        "--config",
        str(cfg),
        log_dir=tmp_path,
    )
    try:
        with Stubs(s.address) as st:
            rows = 65536 // (4 * N) + 1  # 21 rows of 3136 bytes: just above 64 KiB
            cases = [
                ("ModelInfer", lenet_request(rows=rows)),
                ("Classify", classify_request([big_png(300)])),
                ("Classify", raw_image(bytes(300 * 300), 300, 300, 1)),
            ]
            for rpc, request in cases:
                assert request.ByteSize() > 65536
                t0 = time.perf_counter()
                code, details, _ = _call(st, rpc, request)
                assert code == EXHAUSTED, f"{rpc}: {code.name}: {details}"
                assert "larger than max" in details and "65536" in details
                assert time.perf_counter() - t0 < 5
                # just under the limit is served
                small = lenet_request(rows=rows - 1) if rpc == "ModelInfer" else classify_request()
                assert small.ByteSize() <= 65536
                assert _call(st, rpc, small)[0] == OK
        assert s.proc.poll() is None
    finally:
        assert s.stop() == 0, s.log()
