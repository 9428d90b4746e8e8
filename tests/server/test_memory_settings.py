"""The model config's onnxruntime memory keys (issue 21): validated with messages naming the key, and
carried into the session that is created (read back from the session itself, on real onnxruntime)."""

from __future__ import annotations

import numpy as np
import pytest

from server.errors import RepositoryError
from server.repository import ModelConfig, load_model_config
from server.runtime.threads import MemorySettings, ThreadRuntime, session_options
from tests.server.onnx_models import publish, scale_model


def test_defaults_are_the_measured_choice():
    cfg = ModelConfig(name="m")
    assert (cfg.cpu_arena, cfg.arena_extend_strategy, cfg.memory_pattern) == (True, "next_power_of_two", False)


@pytest.mark.parametrize(
    "key, value",
    [
        ("cpu_arena", '"yes"'),
        ("memory_pattern", "1"),
        ("arena_extend_strategy", "kSameAsRequested"),
        ("arena_extend_strategy", "null"),
    ],
)
def test_bad_values_are_refused_naming_the_key(tmp_path, key, value):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.yaml").write_text(f"{key}: {value}\n")
    with pytest.raises(RepositoryError, match=f"'{key}' must be"):
        load_model_config(tmp_path / "m")


@pytest.mark.parametrize(
    "arena, strategy, pattern",
    [(True, "next_power_of_two", False), (False, "next_power_of_two", True), (True, "same_as_requested", True)],
)
def test_settings_reach_the_created_session(tmp_path, arena, strategy, pattern):
    path = publish(
        tmp_path, "scale", scale_model("FP32"), cpu_arena=arena, arena_extend_strategy=strategy, memory_pattern=pattern
    )
    cfg = load_model_config(tmp_path / "scale")
    rt = ThreadRuntime(path, cfg, 1)
    try:
        opts = rt.sessions[0].get_session_options()
        assert opts.enable_cpu_mem_arena is arena
        assert opts.enable_mem_pattern is pattern
        if strategy == "same_as_requested":  # the process's environment arena, registered with strategy 1
            assert opts.get_session_config_entry("session.use_env_allocators") == "1"
        out = rt.run({"input": np.ones((3, 4), "float32")})
        assert out["output"].tolist() == [[2.0] * 4] * 3
    finally:
        rt.close()


def test_default_options_use_no_environment_arena():
    opts = session_options(1, 1, MemorySettings())
    assert opts.enable_cpu_mem_arena and not opts.enable_mem_pattern
    with pytest.raises(RuntimeError):  # the entry is absent: onnxruntime raises for a missing key
        opts.get_session_config_entry("session.use_env_allocators")
