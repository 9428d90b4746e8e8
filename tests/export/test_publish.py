"""Versions are numbered 1, 2, 3...; publishing is one rename; failures publish nothing."""

from __future__ import annotations

import os

import pytest

from export.errors import ExportError, VerificationError
from export.pipeline import default_name, export_checkpoint
from export.publish import ensure_config, publish, sanitize_name, staging
from server.repository import list_versions, load_model_config
from tests.export.conftest import FAST


def _stage(model_dir, content=b"x"):
    """A staged folder as the pipeline leaves it just before publishing."""
    cm = staging(model_dir)
    tmp = cm.__enter__()
    (tmp / "model.onnx").write_bytes(content)
    return cm, tmp


def test_versions_count_up_and_skip_half_written_dot_folders(tmp_path):
    model_dir = tmp_path / "m"
    for expected in (1, 2, 3):
        cm, tmp = _stage(model_dir)
        assert tmp.name.startswith(".") and tmp.parent == model_dir
        version, target = publish(tmp, model_dir)
        cm.__exit__(None, None, None)
        assert version == expected and target == model_dir / str(expected)
        assert (target / "model.onnx").read_bytes() == b"x" and not tmp.exists()
    # a half-written export (dot folder with a model file in it) is neither a version nor a number taken
    half = model_dir / ".staging-crashed"
    half.mkdir()
    (half / "model.onnx").write_bytes(b"partial")
    assert list_versions(model_dir) == [1, 2, 3]
    cm, tmp = _stage(model_dir)
    assert publish(tmp, model_dir)[0] == 4
    cm.__exit__(None, None, None)
    assert list_versions(model_dir) == [1, 2, 3, 4]
    assert sorted(p.name for p in model_dir.iterdir()) == [".staging-crashed", "1", "2", "3", "4"]


def test_publish_skips_a_number_taken_meanwhile(tmp_path, monkeypatch):
    """A concurrent export that claims N between next_version() and rename() makes us take N+1."""
    import export.publish as pub

    model_dir = tmp_path / "m"
    cm, tmp = _stage(model_dir)
    real = pub.next_version
    calls = []

    def racing(d):
        n = real(d)
        if not calls:
            (model_dir / str(n)).mkdir()  # someone else's version appears
            (model_dir / str(n) / "model.onnx").write_bytes(b"theirs")
        calls.append(n)
        return n

    monkeypatch.setattr(pub, "next_version", racing)
    version, target = publish(tmp, model_dir)
    cm.__exit__(None, None, None)
    assert version == 2 and (model_dir / "1" / "model.onnx").read_bytes() == b"theirs"


def test_staging_is_removed_on_failure(tmp_path):
    model_dir = tmp_path / "m"
    with pytest.raises(RuntimeError):
        with staging(model_dir) as tmp:
            (tmp / "model.onnx").write_bytes(b"x")
            raise RuntimeError("boom")
    assert list(model_dir.iterdir()) == []


def test_pipeline_versions_and_config(trained_lenet5, tmp_path):
    repo = tmp_path / "repo"
    r1 = export_checkpoint(trained_lenet5, repo, **FAST)
    assert r1.name == "lenet5-digits" and r1.version == 1 and r1.config_created
    cfg = load_model_config(repo / "lenet5-digits")
    assert cfg.name == "lenet5-digits" and cfg.max_batch_size == FAST["max_batch_size"]
    # an operator's edit to config.yaml survives the next export
    cfg_file = repo / "lenet5-digits" / "config.yaml"
    text = cfg_file.read_text().replace("instances: 1", "instances: 2")
    cfg_file.write_text(text)
    r2 = export_checkpoint(trained_lenet5, repo, max_batch_size=32, parity_images=16, eval_images=64)
    assert r2.version == 2 and not r2.config_created
    assert cfg_file.read_text() == text
    assert any("max_batch_size=8" in w for w in r2.warnings)  # told that the kept config differs
    assert list_versions(repo / "lenet5-digits") == [1, 2]
    assert sorted(os.listdir(repo / "lenet5-digits")) == ["1", "2", "config.yaml"]  # no temp files left


def test_failed_gate_publishes_nothing(trained_lenet5, tmp_path, monkeypatch):
    """An exporter that gets the weights wrong is caught by the parity gate; no version, no temp folder."""
    import torch

    import export.pipeline as pipeline

    real = pipeline.export_onnx

    def broken_export(model, *a, **kw):
        import copy

        bad = copy.deepcopy(model)
        with torch.no_grad():
            bad.classifier[-1].bias.add_(1e-3)  # a subtle mistake: shifts every logit by 0.001
        return real(bad, *a, **kw)

    repo = tmp_path / "repo"
    export_checkpoint(trained_lenet5, repo, name="kept", **FAST)  # an existing model with version 1
    monkeypatch.setattr(pipeline, "export_onnx", broken_export)
    with pytest.raises(VerificationError, match=r"model\.onnx: onnxruntime disagrees with PyTorch"):
        export_checkpoint(trained_lenet5, repo, **FAST)
    # a failed first export leaves no model folder behind (a server would report it as broken) ...
    assert os.listdir(repo) == ["kept"]
    # ... and a failed later export leaves the model as it was
    with pytest.raises(VerificationError):
        export_checkpoint(trained_lenet5, repo, name="kept", **FAST)
    assert sorted(os.listdir(repo / "kept")) == ["1", "config.yaml"]


def test_names(trained_lenet5):
    from training.checkpoint import load_checkpoint

    assert default_name(load_checkpoint(trained_lenet5)) == "lenet5-digits"
    assert default_name({"model_name": "resnet20", "dataset": "folder:/data/My Pets/"}) == "resnet20-My-Pets"
    assert default_name({"model_name": "lenet5", "dataset": "idx:/srv/mnist"}) == "lenet5-mnist"
    assert default_name({"model_name": "lenet5", "dataset": "fashion-mnist"}) == "lenet5-fashion-mnist"
    assert sanitize_name("a/b c..d") == "a-b-c..d"


def test_bad_name_is_a_user_error(trained_lenet5, tmp_path):
    with pytest.raises(ExportError, match="'name' must match"):
        export_checkpoint(trained_lenet5, tmp_path, name="../escape", **FAST)
    assert list(tmp_path.iterdir()) == []


def test_ensure_config_warns_about_a_broken_kept_config(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.yaml").write_text("max_batch_size: nope\n")
    path, created, warning = ensure_config(tmp_path / "m", "m", 64)
    assert not created and "config.yaml" in warning and "max_batch_size" in warning
