"""The Open Inference Protocol as stock clients see it: tritonclient, grpc health, reflection, perf_analyzer."""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import threading

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from client import ClassificationClient
from tests.conftest import MODEL_NAME, ROOT, digit_examples, start_server
from tests.server.onnx_models import mean_model, publish, scale_model

DTYPES = {"FP32": np.float32, "FP16": np.float16, "UINT8": np.uint8, "INT64": np.int64}


@pytest.fixture(scope="module")
def proto_server(model_repository, tmp_path_factory):
    repo = tmp_path_factory.mktemp("proto") / "repo"
    shutil.copytree(model_repository, repo)
    for dt in DTYPES:
        publish(repo, f"scale-{dt.lower()}", scale_model(dt), max_batch_size=8)
    publish(repo, "mean-free", mean_model(), max_batch_size=8)
    s = start_server(
        repo, "--poll-interval-s", "0", "--allow-model-control", "--default-model", MODEL_NAME, log_dir=repo.parent
    )
    yield s, repo
    s.stop()


@pytest.fixture
def client(proto_server):
    c = tc.InferenceServerClient(proto_server[0].address)
    yield c
    c.close()


def test_server_metadata_lists_exactly_the_implemented_extensions(client):
    md = client.get_server_metadata()
    assert md.name == "cnn-stack" and md.version
    assert set(md.extensions) == {
        "classification",
        "model_configuration",
        "statistics",
        "model_repository",
        "model_repository(unload_dependents)",
    }


# FP16 has no typed-contents field in the protocol (raw only): its typed case is the error test below.
@pytest.mark.parametrize(
    "datatype,raw",
    [(d, True) for d in DTYPES] + [(d, False) for d in DTYPES if d != "FP16"],
    ids=lambda v: v if isinstance(v, str) else ("raw" if v else "typed"),
)
def test_datatypes_raw_and_typed(client, datatype, raw):
    name = f"scale-{datatype.lower()}"
    x = np.array([[0, 1, 2, 3], [10, 20, 30, 40]], dtype=DTYPES[datatype])
    inp = tc.InferInput("input", list(x.shape), datatype)
    if raw:
        inp.set_data_from_numpy(x)
        result = client.infer(name, [inp])
    else:
        from tritonclient.grpc import service_pb2

        req = service_pb2.ModelInferRequest(model_name=name)
        t = req.inputs.add(name="input", datatype=datatype, shape=list(x.shape))
        field = {"FP32": "fp32_contents", "UINT8": "uint_contents", "INT64": "int64_contents"}[datatype]
        getattr(t.contents, field).extend(x.ravel().tolist())
        resp = client._client_stub.ModelInfer(req)
        assert [o.datatype for o in resp.outputs] == [datatype]
        got = np.frombuffer(resp.raw_output_contents[0], dtype=np.dtype(DTYPES[datatype]).newbyteorder("<")).reshape(
            x.shape
        )
        np.testing.assert_array_equal(got, (x.astype(np.float32) * 2).astype(DTYPES[datatype]))
        return
    out = result.as_numpy("output")
    assert out.dtype == DTYPES[datatype]
    np.testing.assert_array_equal(out, (x.astype(np.float32) * 2).astype(DTYPES[datatype]))


def test_the_common_request_and_the_general_path_answer_alike(client, proto_server):
    """ModelInfer answers the common request (one raw tensor, nothing else) on a shorter path: the same bytes,
    metrics and statistics as the general path (outputs named, or a parameter set) for the same input."""
    from tritonclient.grpc import service_pb2

    x = np.random.default_rng(3).random((3, 1, 28, 28), dtype=np.float32)
    common = service_pb2.ModelInferRequest(model_name=MODEL_NAME, id="c")
    common.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    common.raw_input_contents.append(x.tobytes())
    named = service_pb2.ModelInferRequest()
    named.CopyFrom(common)
    for o in ("logits", "probabilities"):
        named.outputs.add(name=o)
    timed = service_pb2.ModelInferRequest()
    timed.CopyFrom(common)
    timed.parameters["timeout"].int64_param = 10_000_000
    before = client.get_inference_statistics(MODEL_NAME).model_stats[0]
    answers = [client._client_stub.ModelInfer(r) for r in (common, named, timed)]
    assert answers[0] == answers[1] == answers[2]
    a = answers[0]
    assert (a.model_name, a.model_version, a.id) == (MODEL_NAME, "1", "c")
    assert [(o.name, o.datatype, list(o.shape)) for o in a.outputs] == [
        ("logits", "FP32", [3, 10]),
        ("probabilities", "FP32", [3, 10]),
    ]
    after = client.get_inference_statistics(MODEL_NAME).model_stats[0]
    assert after.inference_stats.success.count == before.inference_stats.success.count + 3
    assert after.inference_count == before.inference_count + 9
    metrics = proto_server[0].metrics_text()
    assert re.search(rf'cnn_inference_rows_total\{{model="{MODEL_NAME}",version="1"\}} [1-9]', metrics)
    # a common-looking request the model cannot take falls through to the general checks and their words
    bad = service_pb2.ModelInferRequest()
    bad.CopyFrom(common)
    bad.inputs[0].shape[:] = [3, 1, 28, 27]
    with pytest.raises(grpc.RpcError) as e:
        client._client_stub.ModelInfer(bad)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_input_contents[0]" in e.value.details()
    bad.raw_input_contents[0] = x[:, :, :, :27].tobytes()
    with pytest.raises(grpc.RpcError) as e:
        client._client_stub.ModelInfer(bad)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs[0].shape" in e.value.details() and "(dim 3)" in e.value.details()


def test_a_model_with_a_free_dim_takes_any_size_and_refuses_negative_dims(client):
    """A free input dim leaves the common-request path (raw dims are unchecked there) for the general checks."""
    from tritonclient.grpc import service_pb2

    x = np.arange(24, dtype=np.float32).reshape(2, 4, 3)
    inp = tc.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    np.testing.assert_allclose(client.infer("mean-free", [inp]).as_numpy("output"), x.mean(axis=2), rtol=1e-6)
    req = service_pb2.ModelInferRequest(model_name="mean-free")
    req.inputs.add(name="input", datatype="FP32", shape=[1, 4, -1])
    req.raw_input_contents.append(b"")
    with pytest.raises(grpc.RpcError) as e:
        client._client_stub.ModelInfer(req)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs[0].shape: [1, 4, -1] is not a valid shape" in e.value.details()


def test_fp16_typed_contents_is_refused_with_a_precise_message(client):
    from tritonclient.grpc import service_pb2

    req = service_pb2.ModelInferRequest(model_name="scale-fp16")
    req.inputs.add(name="input", datatype="FP16", shape=[1, 4])
    with pytest.raises(grpc.RpcError) as e:
        client._client_stub.ModelInfer(req)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "raw_input_contents" in e.value.details()


def test_classification_extension_top_k_strings(client, proto_server):
    x = np.random.default_rng(0).normal(size=(3, 1, 28, 28)).astype(np.float32)
    inp = tc.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(
        MODEL_NAME,
        [inp],
        outputs=[tc.InferRequestedOutput("probabilities", class_count=3), tc.InferRequestedOutput("logits")],
    )
    top = result.as_numpy("probabilities")
    logits = result.as_numpy("logits")
    assert top.shape == (3, 3)
    for row, lg in zip(top, logits):
        parsed = [s.decode().split(":") for s in row]
        values = [float(v) for v, _, _ in parsed]
        idx = [int(i) for _, i, _ in parsed]
        assert values == sorted(values, reverse=True)
        assert idx == list(np.argsort(-lg)[:3])
        assert [lab for _, _, lab in parsed] == [str(i) for i in idx]


def test_streaming_infer_answers_every_request_and_reports_errors_in_band(client):
    x = np.zeros((1, 1, 28, 28), np.float32)
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i in range(6):
            inp = tc.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            client.async_stream_infer(MODEL_NAME, [inp], request_id=str(i))
        bad = tc.InferInput("input", [1, 1, 27, 28], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 1, 27, 28), np.float32))
        client.async_stream_infer(MODEL_NAME, [bad], request_id="bad")
        got = [answers.get(timeout=30) for _ in range(7)]
    finally:
        client.stop_stream()
    ok = sorted(r.get_response().id for r, e in got if e is None)
    errors = [e for r, e in got if e is not None]
    assert ok == [str(i) for i in range(6)]
    assert len(errors) == 1 and "inputs[0].shape" in str(errors[0])


def test_statistics_count_requests_and_batches(client):
    before = client.get_inference_statistics(MODEL_NAME).model_stats[0]
    x = np.zeros((2, 1, 28, 28), np.float32)
    inp = tc.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    for _ in range(3):
        client.infer(MODEL_NAME, [inp])
    s = client.get_inference_statistics(MODEL_NAME, "1").model_stats[0]
    assert (s.name, s.version) == (MODEL_NAME, "1")
    assert s.inference_stats.success.count == before.inference_stats.success.count + 3
    assert s.inference_count == before.inference_count + 6
    assert s.execution_count >= before.execution_count + 1
    assert s.inference_stats.compute_infer.ns > before.inference_stats.compute_infer.ns
    assert s.last_inference > 0 and any(b.batch_size == 2 for b in s.batch_stats)
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_inference_statistics("nope")


def test_repository_index_and_model_control(client, proto_server):
    index = {(m.name, m.version): m.state for m in client.get_model_repository_index().models}
    assert index[(MODEL_NAME, "1")] == "READY" and index[("scale-uint8", "1")] == "READY"
    client.unload_model("scale-uint8")
    assert not client.is_model_ready("scale-uint8")
    states = {m.name: (m.state, m.reason) for m in client.get_model_repository_index().models}
    assert states["scale-uint8"][0] == "UNAVAILABLE"
    client.load_model("scale-uint8")
    assert client.is_model_ready("scale-uint8")
    with pytest.raises(InferenceServerException, match="no model 'ghost'"):
        client.load_model("ghost")


def test_health_check_and_watch_per_model(proto_server):
    s, _ = proto_server
    with grpc.insecure_channel(s.address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for service in ("", MODEL_NAME, "inference.GRPCInferenceService", "cnn.v1.Classification"):
            assert (
                stub.Check(health_pb2.HealthCheckRequest(service=service)).status
                == health_pb2.HealthCheckResponse.SERVING
            )
        with pytest.raises(grpc.RpcError) as e:
            stub.Check(health_pb2.HealthCheckRequest(service="no-such-model"))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=MODEL_NAME), timeout=5)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()


def test_server_reflection_lists_the_services(proto_server):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    s, _ = proto_server
    with grpc.insecure_channel(s.address) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        resp = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {svc.name for svc in resp.list_services_response.service}
    assert {"inference.GRPCInferenceService", "cnn.v1.Classification", "grpc.health.v1.Health"} <= names


def test_batches_form_under_concurrent_load(client, proto_server):
    """Many concurrent single-image requests: mean rows per model execution > 1."""
    s, _ = proto_server
    before = client.get_inference_statistics(MODEL_NAME).model_stats[0]
    images = [f.read_bytes() for f in digit_examples()[:1]]
    errors = []

    def worker():
        with ClassificationClient(s.address) as c:
            for _ in range(40):
                try:
                    c.classify(images)
                except Exception as e:  # noqa: BLE001 - collected and asserted below
                    errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = client.get_inference_statistics(MODEL_NAME).model_stats[0]
    rows = after.inference_count - before.inference_count
    execs = after.execution_count - before.execution_count
    assert not errors and rows == 640
    assert rows / execs > 1.0, f"no batching: {rows} rows in {execs} executions"


def test_perf_analyzer_drives_the_server(proto_server, tmp_path):
    s, _ = proto_server
    pa = ROOT / ".venv-tools" / "bin" / "perf_analyzer"
    assert pa.exists(), "perf_analyzer is installed by scripts/setup.sh --system"
    cudart = next((ROOT / ".venv-tools").glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib"))
    env = {**os.environ, "LD_LIBRARY_PATH": f"{cudart}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    csv = tmp_path / "pa.csv"
    proc = subprocess.run(
        [
            str(pa),
            "-m",
            MODEL_NAME,
            "-u",
            s.address,
            "-i",
            "grpc",
            "--concurrency-range",
            "1:8:7",
            "--measurement-mode",
            "count_windows",
            "--measurement-request-count",
            "200",
            "-s",
            "80",
            "-f",
            str(csv),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    throughputs = [float(t) for t in re.findall(r"Throughput: ([\d.]+) infer/sec", proc.stdout)]
    assert len(throughputs) == 2 and all(t > 0 for t in throughputs), proc.stdout
    assert "Server:" in proc.stdout  # it read ModelStatistics (the statistics extension is listed)
    assert csv.read_text().splitlines()[0].startswith("Concurrency")
