"""Overload, deadlines and bad model versions, all under client load, against real servers.

- Overload at several times capacity (a deliberately slow model, one row per execution, a small
  queue): excess requests are refused with UNAVAILABLE quickly, admitted requests keep a bounded p99,
  every refusal is counted, and the server recovers once the load falls.
- Deadlines: a request whose deadline passes while it waits is answered DEADLINE_EXCEEDED and never
  computed (ModelStatistics' execution and inference counts, `cnn_queue_rejections_total{reason}`).
- Bad versions published under load (corrupt, truncated, not ONNX, external data escaping the folder,
  undeclared node inputs, two inputs): each is refused at load with a clear reason in
  RepositoryIndex, the previous version keeps serving, other models are unaffected, and no client
  request fails.

(Hot reload and SIGTERM under load are in tests/server/test_lifecycle.py.)
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from onnx import TensorProto, helper

from server.repository import DynamicBatching
from tests.conftest import MODEL_NAME, start_server
from tests.reliability.helpers import Stubs, classify_request, lenet_request, metric_sum, pb, wait_for_metric
from tests.server.onnx_models import publish, scale_model, slow_model
from tests.threads import CallerThreads

WIDTH = 1024
QUEUE_ROWS = 4  # "slow": rows that may wait; beyond that UNAVAILABLE at once


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


def _slow_request(model: str, i: float = 0.0, timeout_us: int | None = None) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name="input", datatype="FP32", shape=[1, WIDTH])
    req.raw_input_contents.append(np.full((1, WIDTH), i, "<f4").tobytes())
    if timeout_us is not None:
        req.parameters["timeout"].int64_param = timeout_us
    return req


def _compute(stubs: Stubs, model: str) -> tuple[int, int]:
    s = stubs.infer.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=10).model_stats[0]
    return s.inference_stats.compute_infer.count, s.inference_stats.compute_infer.ns


def _compute_s(stubs: Stubs, model: str, since: tuple[int, int] = (0, 0)) -> float:
    """Mean onnxruntime time per execution (max_batch_size 1: per request), from ModelStatistics."""
    count, ns = _compute(stubs, model)
    return (ns - since[1]) / max(count - since[0], 1) / 1e9


def _stats(stubs: Stubs, model: str):
    """(execution_count, inference_count, fail count), once settled: the batcher records a batch just
    after its callers have their answers."""

    def read():
        s = stubs.infer.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=10).model_stats[0]
        return s.execution_count, s.inference_count, s.inference_stats.fail.count

    last = read()
    while True:
        time.sleep(0.1)
        now = read()
        if now == last:
            return now
        last = now


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("load") / "repo"
    model = slow_model(WIDTH, 100)  # ~50 ms per row on one uncontended core
    publish(repo, "slow", model, max_batch_size=1, dynamic_batching=DynamicBatching(max_queue_size=QUEUE_ROWS))
    publish(repo, "slow-deadline", model, max_batch_size=1, dynamic_batching=DynamicBatching(max_queue_size=64))
    s = start_server(repo, "--poll-interval-s", "0", log_dir=repo.parent)
    with Stubs(s.address) as stubs:
        for i in range(5):
            stubs.infer.ModelInfer(_slow_request("slow", i), timeout=30)
        service_s = _compute_s(stubs, "slow")  # one execution, as measured now on this machine
    yield s, service_s
    s.stop()


def test_overload_refuses_excess_fast_bounds_admitted_latency_and_recovers(slow_server):
    s, service_s = slow_server
    rate = 4.0 / service_s  # four times what one instance computes
    duration_s = max(3.0, 40 * service_s)
    n = int(rate * duration_s)
    outcomes: list[tuple[str, float] | None] = [None] * n
    done = threading.Semaphore(0)
    rejections_before = metric_sum(s.metrics_text(), "cnn_queue_rejections_total", model="slow", reason="queue_full")
    with Stubs(s.address) as stubs:
        exec_before = _stats(stubs, "slow")[0]
        compute_before = _compute(stubs, "slow")

        def finish(i: int, t_sent: float):
            def cb(f):
                try:
                    f.result()
                    code = "OK"
                except grpc.RpcError as e:
                    code = e.code().name
                outcomes[i] = (code, time.perf_counter() - t_sent)
                done.release()

            return cb

        t0 = time.perf_counter()
        for i in range(n):  # open loop: arrivals on a fixed schedule, whatever the answers do
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            t_sent = time.perf_counter()
            stubs.infer.ModelInfer.future(_slow_request("slow", i), timeout=60).add_done_callback(finish(i, t_sent))
        for _ in range(n):
            assert done.acquire(timeout=120), "a request got no answer"
        offered_s = time.perf_counter() - t0

        run_s = _compute_s(stubs, "slow", since=compute_before)  # the machine may be busier now than at start
        codes = [o[0] for o in outcomes]
        ok = [lat for code, lat in outcomes if code == "OK"]
        refused = [lat for code, lat in outcomes if code == "UNAVAILABLE"]
        print(
            f"\noverload: {n} requests at {rate:.0f}/s for {offered_s:.1f} s (compute {service_s * 1e3:.0f} ms per execution at start, {run_s * 1e3:.0f} ms during): "
            f"{len(ok)} OK p50 {_percentile(ok, 50) * 1e3:.0f} ms p99 {_percentile(ok, 99) * 1e3:.0f} ms; "
            f"{len(refused)} UNAVAILABLE p50 {_percentile(refused, 50) * 1e3:.1f} ms p99 {_percentile(refused, 99) * 1e3:.1f} ms"
        )
        assert set(codes) <= {"OK", "UNAVAILABLE"}, {c: codes.count(c) for c in set(codes)}
        assert len(refused) >= n // 4, "at 4x capacity a large share of the requests should have been refused"
        assert len(ok) >= 5
        # refusals are immediate: far below one execution, whatever the queue holds
        assert _percentile(refused, 99) < max(0.25, service_s), f"refusal p99 {_percentile(refused, 99):.3f} s"
        # admitted requests wait for at most the queue ahead of them plus their own execution
        bound = (QUEUE_ROWS + 2) * max(service_s, run_s) * 2 + 0.5
        assert _percentile(ok, 99) < bound, f"admitted p99 {_percentile(ok, 99):.2f} s > {bound:.2f} s"
        # every refusal is counted as queue_full; every admitted request was computed exactly once
        assert wait_for_metric(
            s, "cnn_queue_rejections_total", rejections_before + len(refused), model="slow", reason="queue_full"
        ) == rejections_before + len(refused)
        assert _stats(stubs, "slow")[0] - exec_before == len(ok)

        # load falls: every request is served again, at the unloaded latency
        for i in range(8):
            t = time.perf_counter()
            stubs.infer.ModelInfer(_slow_request("slow", i), timeout=30)
            assert time.perf_counter() - t < 3 * service_s + 0.5
        assert stubs.infer.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
    assert s.proc.poll() is None


class Background(CallerThreads):
    """Closed-loop callers keeping a model's queue occupied; records every outcome."""

    def __init__(self, address: str, model: str, threads: int) -> None:
        self.address, self.model = address, model
        self.codes: list[str] = []
        super().__init__(threads)

    def _run(self) -> None:
        with Stubs(self.address) as stubs:
            while not self.stop.is_set():
                try:
                    stubs.infer.ModelInfer(_slow_request(self.model), timeout=60)
                    code = "OK"
                except grpc.RpcError as e:
                    code = e.code().name
                with self.lock:
                    self.codes.append(code)


@pytest.mark.parametrize("how", ["timeout-parameter", "grpc-deadline"])
def test_requests_whose_deadline_passes_in_the_queue_are_never_computed(slow_server, how):
    s, service_s = slow_server
    model = "slow-deadline"
    k = 12
    deadline_s = service_s / 2  # shorter than the wait behind the queued background requests

    def rejected(reason: str) -> float:
        return metric_sum(s.metrics_text(), "cnn_queue_rejections_total", model=model, reason=reason)

    with Stubs(s.address) as stubs:
        before = _stats(stubs, model)
        deadline_before, cancelled_before = rejected("deadline"), rejected("cancelled")
        with Background(s.address, model, threads=4) as bg:
            t_end = time.monotonic() + 20
            while metric_sum(s.metrics_text(), "cnn_queue_depth_rows", model=model) < 2 and time.monotonic() < t_end:
                time.sleep(0.01)
            codes = []
            for _ in range(k):
                while metric_sum(s.metrics_text(), "cnn_queue_depth_rows", model=model) < 2:
                    time.sleep(0.005)  # keep at least two rows ahead of the deadline request
                try:
                    if how == "timeout-parameter":
                        stubs.infer.ModelInfer(_slow_request(model, timeout_us=int(deadline_s * 1e6)), timeout=30)
                    else:
                        stubs.infer.ModelInfer(_slow_request(model), timeout=deadline_s)
                    codes.append("OK")
                except grpc.RpcError as e:
                    codes.append(e.code().name)
        after = _stats(stubs, model)
    background_ok = bg.codes.count("OK")
    assert codes == ["DEADLINE_EXCEEDED"] * k, codes
    assert set(bg.codes) == {"OK"} and background_ok > 0
    # not computed: every execution and every inferred row belongs to a background request
    assert after[0] - before[0] == background_ok, (before, after, background_ok)
    assert after[1] - before[1] == background_ok
    dropped = (
        wait_for_metric(s, "cnn_queue_rejections_total", deadline_before + k, model=model, reason="deadline")
        - deadline_before
    )
    if how == "timeout-parameter":
        # the server's own deadline: counted as such, and as failures in the statistics
        assert dropped == k
        assert after[2] - before[2] == k
    else:
        # the client's gRPC deadline: the server drops the request either on its own copy of the deadline
        # or when gRPC cancels the call, whichever comes first; a call whose deadline passes before its
        # handler runs never reaches the batcher at all (and is not computed either: the counts above)
        assert 1 <= dropped + rejected("cancelled") - cancelled_before <= k
    assert s.proc.poll() is None


# ---------------------------------------------------------------------------------------------------
# bad versions published under load


def _external_data_escaping() -> bytes:
    m = scale_model("FP32")
    k = m.graph.initializer[0]
    k.ClearField("float_data")
    k.ClearField("raw_data")
    k.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../../secret.bin"), ("offset", "0"), ("length", "4")):
        k.external_data.add(key=key, value=value)
    return m.SerializeToString()


def _undeclared_input() -> bytes:
    m = scale_model("FP32")
    m.graph.node[1].input[1] = "ghost"  # consumed, but no graph input, initializer or node produces it
    return m.SerializeToString()


def _two_inputs() -> bytes:
    m = scale_model("FP32")
    m.graph.input.append(helper.make_tensor_value_info("input2", TensorProto.FLOAT, ["batch", 4]))
    m.graph.node[1].input[1] = "input2"
    return m.SerializeToString()


def _bad_versions(good: bytes) -> list[tuple[str, bytes, tuple[str, ...]]]:
    """(label, model.onnx bytes, words the RepositoryIndex reason must contain)."""
    rng = np.random.default_rng(7)
    return [
        ("corrupt", rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes(), ("model.onnx", "not a valid ONNX")),
        ("truncated", good[: len(good) // 2], ("model.onnx", "truncated")),
        ("not-onnx", b"<html>this is not a model</html>\n", ("model.onnx", "not a valid ONNX")),
        ("empty", b"", ("model.onnx",)),
        ("external-data-escaping", _external_data_escaping(), ("model.onnx", "secret.bin", "escapes")),
        ("undeclared-input", _undeclared_input(), ("model.onnx", "ghost")),
        ("two-inputs", _two_inputs(), ("model.onnx", "exactly one input")),
    ]


class Mixed(CallerThreads):
    """Classify LeNet-5 from two threads and ModelInfer another model from a third; record everything."""

    def __init__(self, address: str) -> None:
        super().__init__(0)  # its own three threads, two targets
        self.address = address
        self.errors: list[str] = []
        self.lenet_versions: list[str] = []
        self.other_ok = 0
        self.threads = [threading.Thread(target=self._classify, daemon=True) for _ in range(2)]
        self.threads.append(threading.Thread(target=self._other, daemon=True))

    def _classify(self) -> None:
        request = classify_request(model_name=MODEL_NAME)
        with Stubs(self.address) as stubs:
            while not self.stop.is_set():
                try:
                    v = stubs.classify.Classify(request, timeout=30).model_version
                    with self.lock:
                        self.lenet_versions.append(v)
                except grpc.RpcError as e:
                    with self.lock:
                        self.errors.append(f"Classify: {e.code().name}: {e.details()}")

    def _other(self) -> None:
        req = pb.ModelInferRequest(model_name="scale-fp32")
        req.inputs.add(name="input", datatype="FP32", shape=[1, 4])
        req.raw_input_contents.append(np.arange(4, dtype="<f4").tobytes())
        with Stubs(self.address) as stubs:
            while not self.stop.is_set():
                try:
                    out = stubs.infer.ModelInfer(req, timeout=30)
                    assert np.frombuffer(out.raw_output_contents[0], "<f4").tolist() == [0, 2, 4, 6]
                    with self.lock:
                        self.other_ok += 1
                except grpc.RpcError as e:
                    with self.lock:
                        self.errors.append(f"scale-fp32: {e.code().name}: {e.details()}")
                time.sleep(0.01)


def _publish_atomically(repo: Path, version: int, data: bytes) -> None:
    """As `cnn export` does: write a dot-folder, then rename it into place."""
    tmp = repo / MODEL_NAME / f".tmp-{version}"
    tmp.mkdir()
    (tmp / "model.onnx").write_bytes(data)
    os.rename(tmp, repo / MODEL_NAME / str(version))


def test_bad_versions_published_under_load_are_refused_and_the_previous_version_keeps_serving(repository_copy):
    repo = repository_copy
    publish(repo, "scale-fp32", scale_model("FP32"), max_batch_size=8)
    (repo / "secret.bin").write_bytes(b"\0" * 4)  # what the escaping external-data reference points at
    good = (repo / MODEL_NAME / "1" / "model.onnx").read_bytes()
    s = start_server(repo, "--poll-interval-s", "0.3", log_dir=repo.parent)
    cases = _bad_versions(good)
    try:
        with Stubs(s.address) as stubs, Mixed(s.address) as load:
            for version, (label, data, words) in enumerate(cases, start=2):
                seen = len(load.lenet_versions)
                _publish_atomically(repo, version, data)
                t_end = time.monotonic() + 30
                state = reason = ""
                while time.monotonic() < t_end:
                    index = {
                        (m.name, m.version): (m.state, m.reason)
                        for m in stubs.infer.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10).models
                    }
                    state, reason = index.get((MODEL_NAME, str(version)), ("", ""))
                    if state == "UNAVAILABLE":
                        break
                    time.sleep(0.1)
                assert state == "UNAVAILABLE", f"{label}: version {version} is {state!r}"
                assert all(w in reason for w in words), f"{label}: reason {reason!r} lacks {words}"
                assert index.get((MODEL_NAME, "1"), ("",))[0] == "READY", (
                    f"after {label}: version 1 is {index.get((MODEL_NAME, '1'))}"
                )
                time.sleep(0.5)  # a few more polls: the refusal must stick without disturbing anyone
                with load.lock:
                    recent = load.lenet_versions[seen:]
                assert recent and set(recent) == {"1"}, f"after {label}: answers from versions {set(recent)}"
                assert load.errors == [], f"after {label}: {load.errors[:3]}"
                assert stubs.infer.ModelReady(pb.ModelReadyRequest(name=MODEL_NAME), timeout=10).ready
                assert stubs.infer.ModelReady(pb.ModelReadyRequest(name="scale-fp32"), timeout=10).ready
        assert load.errors == [], load.errors[:5]
        assert load.other_ok > 0 and len(load.lenet_versions) > 0
        failures = metric_sum(s.metrics_text(), "cnn_model_load_failures_total", model=MODEL_NAME)
        assert failures == len(cases)
        # inference still matches the good version exactly
        with Stubs(s.address) as stubs:
            out = stubs.infer.ModelInfer(lenet_request(rows=2), timeout=30)
            assert out.model_version == "1"
    finally:
        assert s.stop() == 0, s.log()[-3000:]
    assert "failed to load" in s.log()
