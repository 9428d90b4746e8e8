"""Repository format, server config and provider selection: the parts that need no running server."""

from __future__ import annotations

import os

import pytest

from server import repository as repo
from server.config import ConfigError, load_config
from server.errors import RepositoryError
from server.runtime.base import select_providers
from server.runtime.threads import ThreadRuntime as ModelRuntime
from tests.server.onnx_models import publish, scale_model

# --- provider selection (the CUDA-absent path runs here; the CUDA path: scripts/gpu_check.sh)


def test_cpu_only():
    assert select_providers(["cpu"], True, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_cuda_then_cpu_when_cuda_is_present():
    have = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers(["cuda", "cpu"], False, have) == have


def test_cuda_absent_falls_back_with_a_warning(caplog):
    assert select_providers(["cuda", "cpu"], True, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert "CUDA was asked for" in caplog.text and "falling back" in caplog.text


def test_cuda_absent_refused_when_fallback_is_off():
    with pytest.raises(RepositoryError, match="cuda_fallback is false"):
        select_providers(["cuda"], False, ["CPUExecutionProvider"], where="m/1/model.onnx")


def test_runtime_reports_the_provider_it_got(tmp_path):
    path = publish(tmp_path, "m", scale_model("FP32"), providers=["cuda", "cpu"])
    rt = ModelRuntime(path, repo.load_model_config(tmp_path / "m"), 1)
    assert rt.provider == "CPUExecutionProvider" and rt.warmup_s >= 0


# --- model config


def test_config_round_trip_and_defaults(tmp_path):
    cfg = repo.ModelConfig(name="m", max_batch_size=32, dynamic_batching=repo.DynamicBatching(max_queue_delay_us=100))
    repo.write_model_config(tmp_path / "m", cfg)
    back = repo.load_model_config(tmp_path / "m")
    assert back == cfg


@pytest.mark.parametrize(
    "text,key",
    [
        ("max_batch_size: 0", "max_batch_size"),
        ("providers: [tpu]", "providers"),
        ("dynamic_batching: {max_queue_delay_us: -5}", "dynamic_batching.max_queue_delay_us"),
        ("dynamic_batching: {preferred_batch_sizes: [999]}", "dynamic_batching.preferred_batch_sizes"),
        ("version_policy: {kind: newest}", "version_policy.kind"),
        ("warmup_batch_sizes: [0]", "warmup_batch_sizes"),
        ("batch_size: 4", "batch_size"),
        ("name: other", "name"),
    ],
)
def test_bad_model_config_names_file_and_key(tmp_path, text, key):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.yaml").write_text(text + "\n")
    with pytest.raises(RepositoryError) as e:
        repo.load_model_config(tmp_path / "m")
    assert str(tmp_path / "m" / "config.yaml") in str(e.value) and key in str(e.value)


def test_missing_config_names_the_file(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(RepositoryError, match=r"m/config.yaml: missing model config"):
        repo.load_model_config(tmp_path / "m")


def test_versions_and_policies(tmp_path):
    for v in (1, 2, 5):
        publish(tmp_path, "m", scale_model("FP32"), version=v)
    (tmp_path / "m" / ".tmp-6").mkdir()  # a half-written publish is not a version
    (tmp_path / "m" / "7").mkdir()  # no model file yet
    assert repo.list_versions(tmp_path / "m") == [1, 2, 5]
    assert repo.next_version(tmp_path / "m") == 8
    assert repo.select_versions(repo.VersionPolicy(), [1, 2, 5]) == [5]
    assert repo.select_versions(repo.VersionPolicy(num_versions=2), [1, 2, 5]) == [2, 5]
    assert repo.select_versions(repo.VersionPolicy(kind="all"), [1, 2, 5]) == [1, 2, 5]
    assert repo.select_versions(repo.VersionPolicy(kind="specific", versions=[1, 4]), [1, 2, 5]) == [1]


# --- refusing bad model files


def _runtime(tmp_path, data: bytes):
    path = publish(tmp_path, "m", data)
    return ModelRuntime(path, repo.load_model_config(tmp_path / "m"), 1)


def test_not_onnx_is_refused_naming_the_file(tmp_path):
    with pytest.raises(RepositoryError, match=r"m/1/model.onnx"):
        _runtime(tmp_path, b"\x00garbage" * 10)


def test_truncated_onnx_is_refused(tmp_path):
    data = scale_model("FP32").SerializeToString()
    with pytest.raises(RepositoryError, match=r"model.onnx"):
        _runtime(tmp_path, data[: len(data) // 2])


def test_model_without_metadata_is_refused(tmp_path):
    m = scale_model("FP32")
    del m.metadata_props[:]
    with pytest.raises(RepositoryError, match="cnn.metadata"):
        _runtime(tmp_path, m.SerializeToString())


@pytest.mark.parametrize("location", ["../../secret.bin", "/etc/passwd", "link.bin"])
def test_external_data_outside_the_folder_is_refused(tmp_path, location):
    from onnx import TensorProto

    m = scale_model("FP32")
    k = m.graph.initializer[0]
    k.ClearField("float_data")
    k.ClearField("raw_data")
    k.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "4")):
        k.external_data.add(key=key, value=value)
    path = publish(tmp_path, "m", m)
    (tmp_path / "secret.bin").write_bytes(b"\x00" * 4)
    if location == "link.bin":
        os.symlink(tmp_path / "secret.bin", path.parent / "link.bin")
    with pytest.raises(RepositoryError) as e:
        ModelRuntime(path, repo.load_model_config(tmp_path / "m"), 1)
    assert str(path) in str(e.value) and ("escapes" in str(e.value) or "absolute" in str(e.value))


# --- server config


def test_server_config_precedence(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("poll_interval_s: 5\ndrain_grace_s: 7\ngrpc_address: 127.0.0.1:1000\n")
    cfg = load_config(
        f,
        env={"CNN_SERVER_DRAIN_GRACE_S": "9", "CNN_SERVER_GRPC_ADDRESS": "127.0.0.1:2000"},
        overrides={"grpc_address": "127.0.0.1:3000", "repository": None},
    )
    assert (cfg.poll_interval_s, cfg.drain_grace_s, cfg.grpc_address) == (5.0, 9.0, "127.0.0.1:3000")
    assert cfg.repository == "model_repository" and cfg.grpc_address.startswith("127.0.0.1")
    assert cfg.gil_switch_interval_s == 0.0005
    assert load_config(None, env={"CNN_SERVER_GIL_SWITCH_INTERVAL_S": "0"}).gil_switch_interval_s == 0.0
    assert cfg.event_loop == "uvloop"
    assert cfg.gc_gen0_threshold == 0
    assert cfg.gc_freeze is True
    assert load_config(None, env={"CNN_SERVER_GC_FREEZE": "false"}).gc_freeze is False
    assert load_config(None, env={"CNN_SERVER_GC_GEN0_THRESHOLD": "50000"}).gc_gen0_threshold == 50_000
    assert load_config(None, env={"CNN_SERVER_EVENT_LOOP": "asyncio"}).event_loop == "asyncio"


@pytest.mark.parametrize(
    "env,key",
    [
        ({"CNN_SERVER_POLL_INTERVAL_S": "soon"}, "poll_interval_s"),
        ({"CNN_SERVER_GRPC_ADDRESS": "nohostport"}, "grpc_address"),
        ({"CNN_SERVER_ALLOW_MODEL_CONTROL": "maybe"}, "allow_model_control"),
        ({"CNN_SERVER_NOPE": "1"}, "CNN_SERVER_NOPE"),
        ({"CNN_SERVER_GIL_SWITCH_INTERVAL_S": "1"}, "gil_switch_interval_s"),
        ({"CNN_SERVER_EVENT_LOOP": "trio"}, "event_loop"),
        ({"CNN_SERVER_GC_GEN0_THRESHOLD": "5"}, "gc_gen0_threshold"),
    ],
)
def test_server_config_errors_name_the_key(env, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, env=env)


def test_server_config_file_unknown_key(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("grpc_port: 1\n")
    with pytest.raises(ConfigError, match="unknown key 'grpc_port'"):
        load_config(f, env={})


# --- CUDA listed by onnxruntime but absent from the created session (onnxruntime-gpu without usable CUDA)


@pytest.fixture
def cuda_listed(monkeypatch):
    """onnxruntime lists CUDA (as onnxruntime-gpu does even when libcudart/cuDNN cannot load); this CPU build
    then really creates a session asked for [CUDA, CPU] on the CPU alone."""
    import onnxruntime

    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_cuda_missing_from_the_created_session_is_refused_without_fallback(tmp_path, cuda_listed, isolation):
    from server.runtime import open_runtime

    path = publish(
        tmp_path, "m", scale_model("FP32"), providers=["cuda", "cpu"], cuda_fallback=False, instance_isolation=isolation
    )
    with pytest.raises(
        RepositoryError,
        match=r"m/1/model.onnx: CUDA was asked for, but the created session has only "
        r"CPUExecutionProvider .*cuda_fallback is false, so the load is refused",
    ):
        open_runtime(path, repo.load_model_config(tmp_path / "m"), 1)


def test_cuda_missing_from_the_created_session_falls_back_with_a_warning(tmp_path, cuda_listed, caplog):
    path = publish(tmp_path, "m", scale_model("FP32"), providers=["cuda", "cpu"], cuda_fallback=True)
    rt = ModelRuntime(path, repo.load_model_config(tmp_path / "m"), 1)
    try:
        assert rt.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]  # what was asked for
        assert rt.provider == "CPUExecutionProvider" and rt.providers_fell_back  # what the session has
        assert "serving on the CPU (cuda_fallback is true)" in caplog.text
    finally:
        rt.close()


def test_a_cuda_fallback_shows_in_the_loaded_metric(tmp_path, cuda_listed):
    """The registry labels model_loaded_info with the provider the session has, not the one asked for."""
    from tests.server.core_fixtures import core_service, run

    publish(tmp_path, "m", scale_model("FP32"), providers=["cuda", "cpu"], cuda_fallback=True)

    async def main():
        async with core_service(tmp_path) as s:
            m = s.metrics.model_loaded
            return m.labels("m", "1", "CPUExecutionProvider")._value.get(), s.model_config("m").provider

    assert run(main()) == (1.0, "CPUExecutionProvider")
