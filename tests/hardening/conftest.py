"""Attack tests for issue 18: a hostile client or model repository against a real `cnn serve` subprocess.

Every test here talks to the server over real gRPC (or raw sockets) only, so it does not depend on
how server/ is laid out inside. Models are small hand-built ONNX graphs (no training needed):

- `scale`: FP32 [-1, 4] -> [-1, 4] (tests/server/onnx_models.scale_model), max_batch_size 8;
- `pixels`: FP32 [-1, 1, 8, 8] grayscale 8x8 -> 10 logits, for Classify;
- `wide`: FP32 [-1, 4] -> [-1, 65536] (256 KiB per answer row), for unread stream answers.

Where a finding is a stall, the test measures a well-behaved client's ModelInfer latency without and
then with the attack, in the same test, and bounds the ratio generously (see `paced_latencies`).
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.repository import METADATA_KEY, ModelMetadata, Preprocessing
from tests.conftest import start_server
from tests.reliability.helpers import Stubs, pb
from tests.server.onnx_models import publish, scale_model


def pixels_model() -> onnx.ModelProto:
    """(B, 1, 8, 8) grayscale -> (B, 10) logits: Flatten + MatMul with fixed weights."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 10)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "pixels",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    md = ModelMetadata(
        labels=[str(i) for i in range(10)],
        input_shape=[1, 8, 8],
        preprocessing=Preprocessing(color_mode="L", height=8, width=8),
    )
    model.metadata_props.add(key=METADATA_KEY, value=md.to_json())
    onnx.checker.check_model(model)
    return model


def wide_model(width: int = 65536) -> onnx.ModelProto:
    """(B, 4) -> logits (B, 4) and output (B, width): every answer row is width * 4 bytes (Tile of the input)."""
    reps = numpy_helper.from_array(np.array([1, width // 4], dtype=np.int64), "reps")
    nodes = [
        helper.make_node("Identity", ["input"], ["logits"]),
        helper.make_node("Tile", ["input", "reps"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "wide",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", width]),
        ],
        [reps],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    md = ModelMetadata(
        labels=[f"c{i}" for i in range(4)],
        input_shape=[4],
        layout="NC",
        preprocessing=Preprocessing(color_mode="L", height=1, width=4),
    )
    model.metadata_props.add(key=METADATA_KEY, value=md.to_json())
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def repo(tmp_path) -> Path:
    r = tmp_path / "repo"
    publish(r, "scale", scale_model("FP32"), max_batch_size=8)
    publish(r, "pixels", pixels_model(), max_batch_size=64)
    publish(r, "wide", wide_model(), max_batch_size=8)
    return r


def serve(repo: Path, *args: str, env: dict | None = None):
    return start_server(repo, "--poll-interval-s", "0", *args, env=env, log_dir=repo.parent)


@pytest.fixture
def server(repo):
    s = serve(repo)
    yield s
    s.stop()


def scale_request(rows: int = 1) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="scale")
    req.inputs.add(name="input", datatype="FP32", shape=[rows, 4])
    req.raw_input_contents.append(np.ones((rows, 4), dtype="<f4").tobytes())
    return req


def paced_latencies(address: str, seconds: float, interval_s: float = 0.01, timeout_s: float = 60) -> list[float]:
    """A well-behaved client: one small ModelInfer every `interval_s` (not waiting for the previous answer,
    so a stalled server shows in most samples, not just one), for `seconds`. Returns every latency (s);
    a failed call raises."""
    latencies: list[float] = []
    futures = []
    with Stubs(address) as s:
        s.infer.ModelInfer(scale_request(), timeout=timeout_s)  # connected and warm
        t_end = time.monotonic() + seconds
        nxt = time.monotonic()
        while time.monotonic() < t_end:
            t0 = time.perf_counter()
            f = s.infer.ModelInfer.future(scale_request(), timeout=timeout_s)
            f.add_done_callback(lambda fut, t0=t0: latencies.append(time.perf_counter() - t0))
            futures.append(f)
            nxt += interval_s
            time.sleep(max(0.0, nxt - time.monotonic()))
        for f in futures:
            f.result()
    return latencies


def p50(xs: list[float]) -> float:
    return statistics.median(xs)


class Background:
    """Run `fn(stop_event)` in a thread until stopped; exceptions are re-raised by `stop()`."""

    def __init__(self, fn) -> None:
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.count = 0

        def body():
            try:
                fn(self)
            except BaseException as e:  # noqa: BLE001 - handed to the test
                self.error = e

        self.thread = threading.Thread(target=body, daemon=True)

    def __enter__(self) -> Background:  # noqa: PYI034
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        self.thread.join(120)

    def stop(self) -> None:
        self.__exit__()
        if self.error is not None:
            raise self.error
