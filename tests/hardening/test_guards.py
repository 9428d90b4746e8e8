"""The hardening building blocks on their own (no server): YAML loader, ONNX containment, model names,
decode policy, rate-limited logging, transport options, certificate dates."""

from __future__ import annotations

import io
import logging
import os
import time
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from PIL import Image

from server import yaml_safe
from server.decode_policy import DecodePolicy, check_image, peek_encoded, plan, plan_images, raw_header
from server.errors import InvalidInput, RepositoryError, ResourceExhausted
from server.lograte import RateLimitedLog
from server.names import INVALID_NAME_MESSAGE, check_model_name, is_model_name
from server.onnx_guard import check_model_containment
from server.transport import certificate_warnings, grpc_options

# --- YAML


@pytest.mark.parametrize(
    "text", ["a: &x 1\nb: *x\n", "a: &x [1]\n", "base: &b {k: 1}\nother:\n  <<: *b\n", "a: [&x 1, *x]\n"]
)
def test_anchors_and_aliases_are_refused_before_anything_is_built(text):
    with pytest.raises(yaml_safe.YamlRefused, match="anchors and aliases"):
        yaml_safe.load_bytes(text.encode(), "m/config.yaml")


@pytest.mark.parametrize("libyaml", [True, False])
def test_both_loaders_refuse_the_same_bomb_quickly(monkeypatch, libyaml):
    if not libyaml:
        monkeypatch.setattr(yaml_safe, "_CLoader", None)
    bomb = (
        "a: &a ["
        + ",".join(['"x"'] * 9)
        + "]\n"
        + "".join(f"{n}: &{n} [" + ",".join([f"*{p}"] * 9) + "]\n" for p, n in zip("abcdefgh", "bcdefghi"))
    )
    t0 = time.perf_counter()
    with pytest.raises(yaml_safe.YamlRefused) as e:
        yaml_safe.load_bytes(bomb.encode(), "m/config.yaml")
    assert time.perf_counter() - t0 < 1.0
    assert len(str(e.value)) <= yaml_safe.MAX_MESSAGE_CHARS and "line 1" in str(e.value)


def test_size_nodes_and_depth_are_bounded(tmp_path):
    with pytest.raises(yaml_safe.YamlRefused, match="bytes"):
        yaml_safe.load_bytes(b"#" * 2000, "x", max_bytes=1000)
    with pytest.raises(yaml_safe.YamlRefused, match="nodes"):
        yaml_safe.load_bytes(("[" + "1," * 100 + "]").encode(), "x", max_nodes=50)
    with pytest.raises(yaml_safe.YamlRefused, match="deeper"):
        yaml_safe.load_bytes(b"[" * 40 + b"]" * 40, "x")
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# " + b"c" * (yaml_safe.MAX_CONFIG_BYTES + 10))
    with pytest.raises(yaml_safe.YamlRefused, match="limit"):
        yaml_safe.load_file(big)


def test_legitimate_yaml_loads_as_safe_load_does():
    text = "name: m\nmax_batch_size: 8\nproviders: [cpu]\ndynamic_batching: {max_queue_delay_us: 100}\nx: null\n"
    assert yaml_safe.load_bytes(text.encode(), "x") == yaml.safe_load(text)
    assert yaml_safe.load_bytes(b"", "x") is None


def test_syntax_errors_name_the_line_and_never_quote_it():
    line = "providers: [" + "cpu, " * 50000
    with pytest.raises(yaml_safe.YamlRefused) as e:
        yaml_safe.load_bytes((line + "\n  : ]\n").encode(), "m/config.yaml")
    assert "m/config.yaml" in str(e.value) and "line" in str(e.value) and len(str(e.value)) < 300


def test_brief_never_walks_or_prints_a_large_value():
    shared = ["x" * 10] * 9
    for _ in range(8):
        shared = [shared] * 9  # 43 million leaves if printed
    assert len(yaml_safe.brief(shared)) < 80
    assert yaml_safe.brief(["tpu"]) == "['tpu']"
    assert len(yaml_safe.brief("y" * 10**6)) < 100


# --- model names


@pytest.mark.parametrize(
    "name", ["/etc", "../x", "a/b", "a\\b", "..", ".", "", "a" * 129, "x..y", "-x", "\u00e9", "a\x00"]
)
def test_invalid_model_names_get_one_message(name):
    assert not is_model_name(name)
    with pytest.raises(InvalidInput) as e:
        check_model_name(name)
    assert str(e.value) == INVALID_NAME_MESSAGE


@pytest.mark.parametrize("name", ["lenet5-digits", "m", "A.b_c-1", "a" * 128])
def test_valid_model_names(name):
    assert check_model_name(name) == name


# --- ONNX containment (the tensors are built with the onnx package, read back without it)


def _model_with_external(location: str) -> bytes:
    from onnx import TensorProto

    from tests.server.onnx_models import scale_model

    m = scale_model("FP32")
    k = m.graph.initializer[0]
    k.ClearField("float_data")
    k.ClearField("raw_data")
    k.data_location = TensorProto.EXTERNAL
    if location:
        k.external_data.add(key="location", value=location)
    return m.SerializeToString()


def test_containment_accepts_data_inside_and_refuses_everything_else(tmp_path):
    repo = tmp_path / "repo"
    folder = repo / "m" / "1"
    folder.mkdir(parents=True)
    (folder / "w.bin").write_bytes(b"\0" * 4)
    (tmp_path / "outside.bin").write_bytes(b"\0" * 4)
    model = folder / "model.onnx"
    model.write_bytes(_model_with_external("w.bin"))
    check_model_containment(repo, model)  # inside: fine
    os.symlink(tmp_path / "outside.bin", folder / "link.bin")
    for location, word in (
        ("../../../outside.bin", "escapes"),
        (str(tmp_path / "outside.bin"), "absolute"),
        ("link.bin", "escapes"),
        ("", "names no location"),
        ("missing.bin", "missing"),
        ("sub/../../w.bin", "escapes"),
    ):
        model.write_bytes(_model_with_external(location))
        with pytest.raises(RepositoryError, match=word):
            check_model_containment(repo, model)


# --- decode policy


def _png(w: int, h: int, mode: str = "L") -> bytes:
    a = np.zeros((h, w), np.uint16 if mode == "I;16" else np.uint8)
    buf = io.BytesIO()
    (Image.fromarray(a) if mode == "I;16" else Image.fromarray(a, "L")).save(buf, "PNG")
    return buf.getvalue()


def test_headers_give_pixels_and_stored_depth():
    h8, h16 = peek_encoded(_png(300, 200)), peek_encoded(_png(300, 200, "I;16"))
    assert (h8.width, h8.height, h8.bytes_per_pixel) == (300, 200, 1)
    assert h16.bytes_per_pixel == 2 and h16.decoded_bytes == 300 * 200 * 2
    assert peek_encoded(b"not an image") is None


def test_plan_by_decoded_bytes_not_encoded_bytes():
    policy = DecodePolicy()
    digits = [peek_encoded(_png(28, 28))] * 64
    assert plan(digits, policy) == "inline"
    small_file_many_pixels = peek_encoded(_png(1024, 1024, "I;16"))
    assert len(_png(1024, 1024, "I;16")) < 10_000 and plan([small_file_many_pixels], policy) == "worker"


def test_per_call_and_per_image_budgets_refuse_before_decoding():
    policy = DecodePolicy(max_pixels=100 * 100, max_side=200, max_request_pixels=3 * 100 * 100)
    with pytest.raises(ResourceExhausted, match="per call"):
        plan([raw_header(100, 100, 1)] * 4, policy)
    assert plan([raw_header(100, 100, 1)] * 3, policy) in ("inline", "worker")
    with pytest.raises(ResourceExhausted, match=r"images\[0\].encoded"):
        plan_images([SimpleNamespace(encoded=_png(101, 100), raw=None)], policy)
    with pytest.raises(ResourceExhausted):
        check_image(raw_header(1, 201, 1), policy, "images[0].raw")


# --- logging, transport, certificates


def test_rate_limited_log_keeps_a_few_lines_per_key_and_counts_the_rest(caplog):
    rl = RateLimitedLog(logging.getLogger("t"), per_interval=3, interval_s=0.2)
    with caplog.at_level(logging.WARNING, "t"):
        logged = [rl.warning(("ModelInfer", "DEADLINE_EXCEEDED"), "x %d", i) for i in range(100)]
        assert sum(logged) == 3
        assert rl.warning(("ModelInfer", "INVALID_ARGUMENT"), "other key")
        time.sleep(0.25)
        assert rl.warning(("ModelInfer", "DEADLINE_EXCEEDED"), "again")
    assert "97 more like it" in caplog.records[-1].getMessage()


def test_grpc_options_from_the_settings():
    cfg = SimpleNamespace(
        max_concurrent_streams=256,
        max_connection_idle_s=300.0,
        max_connection_age_s=0.0,
        keepalive_time_s=60.0,
        keepalive_timeout_s=20.0,
        drain_grace_s=20.0,
    )
    opts = dict(grpc_options(cfg))
    assert opts == {
        "grpc.max_concurrent_streams": 256,
        "grpc.max_connection_idle_ms": 300_000,
        "grpc.keepalive_time_ms": 60_000,
        "grpc.keepalive_timeout_ms": 20_000,
    }
    cfg.max_connection_age_s = 600
    assert dict(grpc_options(cfg))["grpc.max_connection_age_grace_ms"] == 20_000


def test_certificate_dates(tmp_path):
    import datetime

    from tests.hardening.test_refusals_and_auth import _self_signed

    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)
    good, _ = _self_signed(tmp_path, "good", now - day, now + day)
    old, _ = _self_signed(tmp_path, "old", now - 3 * day, now - day)
    new, _ = _self_signed(tmp_path, "new", now + day, now + 3 * day)
    assert certificate_warnings(str(good)) == []
    assert "expired" in certificate_warnings(str(old))[0]
    assert "not yet valid" in certificate_warnings(str(new))[0]
    assert certificate_warnings(str(tmp_path / "missing.pem")) == []
