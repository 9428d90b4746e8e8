"""The repository lives: publish, fail, remove, and drain on SIGTERM, all under client load."""

from __future__ import annotations

import os
import shutil
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as tc
from prometheus_client.parser import text_string_to_metric_families

from client import ClassificationClient
from tests.conftest import MODEL_NAME, digit_examples, start_server
from tests.procs import child_pids
from tests.server.onnx_models import publish, slow_model
from tests.threads import CallerThreads


class Looper(CallerThreads):
    """Classify in a loop from a few threads; record every outcome and the versions that answered."""

    join_timeout_s = 30.0

    def __init__(self, address: str, threads: int = 3) -> None:
        self.address = address
        self.ok = 0
        self.errors: list[Exception] = []
        self.versions: list[str] = []
        self.image = digit_examples()[0].read_bytes()
        super().__init__(threads)

    def _run(self) -> None:
        with ClassificationClient(self.address) as c:
            while not self.stop.is_set():
                try:
                    c.classify([self.image])
                    with self.lock:
                        self.ok += 1
                        self.versions.append(c.last_model[1])
                except Exception as e:  # noqa: BLE001 - asserted to be empty
                    with self.lock:
                        self.errors.append(e)

    def wait_for_version(self, version: str, timeout_s: float = 30) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if self.versions[-20:] and all(v == version for v in self.versions[-20:]):
                    return True
            time.sleep(0.1)
        return False


def _publish_copy(repo, src_version: int, dst_version: int) -> None:
    """Publish the way `cnn export` does: write a dot-folder, then rename it into place."""
    tmp = repo / MODEL_NAME / f".tmp-{dst_version}"
    shutil.copytree(repo / MODEL_NAME / str(src_version), tmp)
    os.rename(tmp, repo / MODEL_NAME / str(dst_version))


def _index(address):
    c = tc.InferenceServerClient(address)
    try:
        return {(m.name, m.version): (m.state, m.reason) for m in c.get_model_repository_index().models}
    finally:
        c.close()


def test_hot_reload_and_failed_reload_under_load(repository_copy):
    s = start_server(repository_copy, "--poll-interval-s", "0.3")
    try:
        with Looper(s.address) as loop:
            assert loop.wait_for_version("1")
            _publish_copy(repository_copy, 1, 2)
            assert loop.wait_for_version("2"), "answers never moved to version 2"
            # a broken version 3: refused, reported, and version 2 keeps serving
            bad = repository_copy / MODEL_NAME / ".tmp-3"
            bad.mkdir()
            (bad / "model.onnx").write_bytes(b"this is not an onnx file")
            os.rename(bad, repository_copy / MODEL_NAME / "3")
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and _index(s.address).get((MODEL_NAME, "3"), ("",))[0] != "UNAVAILABLE":
                time.sleep(0.2)
            state, reason = _index(s.address)[(MODEL_NAME, "3")]
            assert state == "UNAVAILABLE" and "model.onnx" in reason
            n = loop.ok
            time.sleep(1.0)
            assert loop.ok > n and set(loop.versions[-10:]) == {"2"}, (loop.ok, n, loop.errors[:3], s.log()[-2000:])
        assert loop.errors == [], loop.errors[:3]
        assert (MODEL_NAME, "1") not in _index(s.address), "version 1 should have been unloaded"
        failures = [
            smp.value
            for fam in text_string_to_metric_families(s.metrics_text())
            for smp in fam.samples
            if smp.name == "cnn_model_load_failures_total" and smp.labels["model"] == MODEL_NAME
        ]
        assert failures == [1.0]
    finally:
        assert s.stop() == 0, s.log()
    assert "failed to load" in s.log()


def test_removed_model_stops_being_served(repository_copy):
    s = start_server(repository_copy, "--poll-interval-s", "0.3")
    try:
        c = tc.InferenceServerClient(s.address)
        assert c.is_model_ready(MODEL_NAME)
        shutil.rmtree(repository_copy / MODEL_NAME)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and c.is_model_ready(MODEL_NAME):
            time.sleep(0.2)
        assert not c.is_model_ready(MODEL_NAME)
        with pytest.raises(Exception, match="unknown model"):
            c.get_model_metadata(MODEL_NAME)
    finally:
        assert s.stop() == 0


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])  # the default, and the standard library's
def test_sigterm_finishes_every_accepted_request_then_refuses(tmp_path, event_loop):
    repo = tmp_path / "repo"
    # 3,000 MatMuls: a batch must outlast the start of all n client threads, or the first answers come back
    # before the last requests arrive and "all n in flight" is never seen (600 layers: ~50 % of runs on a quiet
    # 2-core machine)
    publish(repo, "slow", slow_model(layers=3000), max_batch_size=2)
    setting, gc0 = ("0", 700) if event_loop == "uvloop" else ("50000", 50_000)  # 0 keeps Python's 700
    s = start_server(
        repo,
        "--poll-interval-s",
        "0",
        "--drain-grace-s",
        "60",
        env={"CNN_SERVER_EVENT_LOOP": event_loop, "CNN_SERVER_GC_GEN0_THRESHOLD": setting},
    )
    n = 12
    results: list = [None] * n

    def call(i):
        c = tc.InferenceServerClient(s.address)
        x = tc.InferInput("input", [1, 1024], "FP32")
        x.set_data_from_numpy(np.full((1, 1024), i, np.float32))
        try:
            results[i] = c.infer("slow", [x], client_timeout=120).as_numpy("output")
        except Exception as e:  # noqa: BLE001 - asserted below
            results[i] = e
        finally:
            c.close()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    # wait until all n requests reached the server (answered or in flight) with some still in flight, then ask
    # it to stop (answers are counted before the metrics are read, so no request is counted twice)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        answered = sum(r is not None for r in results)
        fams = {f.name: f for f in text_string_to_metric_families(s.metrics_text())}
        inflight = sum(x.value for x in fams["cnn_requests_in_flight"].samples if x.labels["rpc"] == "ModelInfer")
        if answered + inflight >= n and inflight >= 2:
            break
        time.sleep(0.02)
    assert answered + inflight >= n and inflight >= 2, (
        f"{inflight} in flight, {answered} answered of {n}; answers so far: {results[:3]}; log: {s.log()[-800:]}"
    )
    s.proc.send_signal(15)
    time.sleep(0.3)
    late = tc.InferenceServerClient(s.address)
    x = tc.InferInput("input", [1, 1024], "FP32")
    x.set_data_from_numpy(np.zeros((1, 1024), np.float32))
    with pytest.raises(Exception) as refused:
        late.infer("slow", [x], client_timeout=10)
    assert "UNAVAILABLE" in str(refused.value) or "unavailable" in str(refused.value).lower()
    for t in threads:
        t.join(120)
    failed = [r for r in results if not isinstance(r, np.ndarray)]
    assert failed == [], failed[:2]
    assert s.proc.wait(60) == 0, s.log()
    assert "draining" in s.log()
    assert f"event loop: {event_loop}." in s.log()
    assert f"gc thresholds ({gc0}, 10, 10)" in s.log()


def test_missing_repository_is_a_clear_start_error(tmp_path):
    from tests.conftest import cnn

    proc = cnn(
        "serve",
        "--repository",
        str(tmp_path / "nowhere"),
        "--grpc-address",
        "127.0.0.1:0",
        "--metrics-address",
        "",
        check=False,
        timeout=60,
    )
    assert proc.returncode == 2 and "nowhere" in proc.stderr and "does not exist" in proc.stderr


def test_bad_config_value_names_the_key(model_repository, tmp_path):
    from tests.conftest import cnn

    cfg = tmp_path / "server.yaml"
    cfg.write_text("poll_interval_s: -1\n")
    proc = cnn("serve", "--repository", str(model_repository), "--config", str(cfg), check=False, timeout=60)
    assert proc.returncode == 2 and "poll_interval_s" in proc.stderr and str(cfg) in proc.stderr
    proc = cnn(
        "serve", "--repository", str(model_repository), check=False, timeout=60, env={"CNN_SERVER_GRPC_ADRESS": "x"}
    )
    assert proc.returncode == 2 and "CNN_SERVER_GRPC_ADRESS" in proc.stderr


def _established_by_pid(pid: int, port: int) -> int:
    """Established TCP connections to local `port` whose socket `pid` holds."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if int(parts[1].rsplit(":", 1)[1], 16) == port and parts[3] == "01":
                    inodes.add(parts[9])
    held = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            held += 1
    return held


def test_workers_share_one_port_and_drain_on_sigterm(model_repository, tmp_path):
    """workers: 2 -> two whole servers on one port (SO_REUSEPORT): connections reach both; SIGTERM stops both, exit 0."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    s = start_server(model_repository, "--poll-interval-s", "0", "--workers", "2", log_dir=tmp_path)
    channels = []
    try:
        with open(f"/proc/{s.proc.pid}/task/{s.proc.pid}/children") as f:
            workers = [int(p) for p in f.read().split()]
        assert len(workers) == 2
        for _ in range(16):  # separate connections (local subchannel pools); the kernel hashes each to a worker
            ch = grpc.insecure_channel(s.address, options=[("grpc.use_local_subchannel_pool", 1)])
            channels.append(ch)
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=MODEL_NAME), timeout=10)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
        port = int(s.address.rpartition(":")[2])
        held = [_established_by_pid(w, port) for w in workers]
        assert sum(held) == 16 and min(held) > 0, held
    finally:
        for ch in channels:
            ch.close()
        assert s.stop() == 0
    assert not any(os.path.exists(f"/proc/{w}") for w in workers)


def _rewrite_config(repo, **changes) -> None:
    """Change config.yaml keys the way an operator's tool should: write a temp file, rename it over."""
    import yaml

    path = repo / MODEL_NAME / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        target, *rest = key.split("__")
        if rest:
            cfg[target][rest[0]] = value
        else:
            cfg[key] = value
    tmp = path.with_name(".config.yaml.tmp")
    tmp.write_text(yaml.safe_dump(cfg))
    os.rename(tmp, path)


def test_config_change_reloads_the_served_version_under_load(repository_copy):
    s = start_server(repository_copy, "--poll-interval-s", "0.3")
    c = tc.InferenceServerClient(s.address)
    try:
        with Looper(s.address) as loop:
            assert loop.wait_for_version("1")
            before = c.get_model_config(MODEL_NAME).config
            assert before.dynamic_batching.max_queue_delay_microseconds != 1234
            _rewrite_config(repository_copy, dynamic_batching__max_queue_delay_us=1234, instances=2)
            deadline = time.monotonic() + 20
            cfg = before
            while time.monotonic() < deadline and cfg.dynamic_batching.max_queue_delay_microseconds != 1234:
                time.sleep(0.2)
                cfg = c.get_model_config(MODEL_NAME).config
            assert cfg.dynamic_batching.max_queue_delay_microseconds == 1234 and cfg.instance_group[0].count == 2
            n = loop.ok
            time.sleep(0.5)
            assert loop.ok > n
            # a config that cannot load (CUDA required, none here): the previous config keeps serving
            _rewrite_config(repository_copy, providers=["cuda"], cuda_fallback=False)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and "reload failed" not in _index(s.address)[(MODEL_NAME, "1")][1]:
                time.sleep(0.2)
            state, reason = _index(s.address)[(MODEL_NAME, "1")]
            assert state == "READY" and "reload failed" in reason and "cuda" in reason.lower(), reason
            n = loop.ok
            time.sleep(0.5)
            assert loop.ok > n
            assert c.get_model_config(MODEL_NAME).config.instance_group[0].count == 2
        assert loop.errors == [], loop.errors[:3]
        assert set(loop.versions) == {"1"}
    finally:
        c.close()
        assert s.stop() == 0, s.log()
    log = s.log()
    assert "config.yaml changed, reloading" in log and "READY with the new config" in log


def test_process_isolation_serves_the_same_answers_and_survives_a_killed_instance(repository_copy, server):
    import signal

    _rewrite_config(repository_copy, instance_isolation="process")
    s = start_server(repository_copy, "--poll-interval-s", "0")
    c = tc.InferenceServerClient(s.address)
    try:
        assert c.get_model_config(MODEL_NAME).config.parameters["instance_isolation"].string_value == "process"
        images = [p.read_bytes() for p in digit_examples()]
        with ClassificationClient(s.address) as isolated, ClassificationClient(server.address) as threaded:
            assert isolated.classify(images, top_k=3) == threaded.classify(images, top_k=3)
        children = child_pids(s.proc.pid)
        assert len(children) == 1, children  # instances: 1
        with Looper(s.address) as loop:
            deadline = time.monotonic() + 10
            while loop.ok < 20 and time.monotonic() < deadline:
                time.sleep(0.05)
            os.kill(children[0], signal.SIGKILL)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and (child_pids(s.proc.pid) in ([], children)):
                time.sleep(0.1)
            n = loop.ok
            time.sleep(1.0)
            assert loop.ok > n, "the restarted instance serves"
        # at most the batch that was in flight when the child died fails, with INTERNAL and the reason
        assert len(loop.errors) <= 3, loop.errors
        for e in loop.errors:
            assert "instance process 0 exited (exit code -9)" in str(e), e
        replacement = child_pids(s.proc.pid)
        assert len(replacement) == 1 and replacement != children
    finally:
        c.close()
        assert s.stop() == 0, s.log()
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{replacement[0]}") and time.monotonic() < deadline:  # reaped once orphaned
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{replacement[0]}"), "the instance process exits with the server"
    assert "instance process 0 restarted" in s.log()
