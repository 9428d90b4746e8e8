"""`cnn export` and `cnn models list` as a user runs them (subprocesses of `python -m export.cli`),
including on a serving install without torch and onnx."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

BLOCKER = """
import sys, importlib.abc
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "onnx", "onnxscript", "sklearn", "matplotlib"):
            with open({marker!r}, "a") as f:
                f.write(name + "\\n")
            raise ImportError(name + " is blocked: not on the serving install")
        return None
sys.meta_path.insert(0, _Block())
"""


def run(*args, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "export.cli", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def no_torch(tmp_path):
    """env for a subprocess in which importing torch, onnx, onnxscript, sklearn or matplotlib fails."""
    site = tmp_path / "site"
    site.mkdir()
    marker = tmp_path / "blocked-imports.txt"
    (site / "sitecustomize.py").write_text(BLOCKER.format(marker=str(marker)))
    return {"PYTHONPATH": str(site)}, marker


def test_export_prints_path_and_numbers(trained_lenet5, tmp_path):
    p = run(
        "export",
        trained_lenet5,
        "--repository",
        tmp_path / "repo",
        "--parity-images",
        "32",
        "--quiet",
        "--max-batch-size",
        "16",
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == str(tmp_path / "repo" / "lenet5-digits" / "1" / "model.onnx")
    assert Path(lines[0]).is_file() and (tmp_path / "repo" / "lenet5-digits" / "config.yaml").is_file()
    out = p.stdout
    assert "max |logits diff|" in out and "argmax mismatches 0" in out and "fp32 0.9" in out
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("case", ["missing checkpoint", "not a checkpoint", "bad name", "repository is a file"])
def test_export_user_errors_are_one_line_exit_2(case, trained_lenet5, tmp_path):
    ckpt, repo, extra = trained_lenet5, tmp_path / "repo", []
    if case == "missing checkpoint":
        ckpt = tmp_path / "nope.pt"
    elif case == "not a checkpoint":
        ckpt = tmp_path / "garbage.pt"
        ckpt.write_bytes(b"\x00" * 100)
    elif case == "bad name":
        extra = ["--name", "bad/name"]
    else:
        repo.write_text("")
    p = run("export", ckpt, "--repository", repo, *extra)
    assert p.returncode == 2, (p.stdout, p.stderr)
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cnn export: error: ") and "Traceback" not in p.stderr
    named = {
        "missing checkpoint": "nope.pt",
        "not a checkpoint": "garbage.pt",
        "bad name": "bad/name",
        "repository is a file": str(repo),
    }[case]
    assert named in err[0]
    assert p.stdout == ""


def test_gate_failure_exit_1_nothing_published(trained_lenet5, tmp_path):
    """--max-accuracy-drop -1 demands int8 beat fp32 by 100 points: the accuracy gate must refuse."""
    repo = tmp_path / "repo"
    p = run(
        "export",
        trained_lenet5,
        "--repository",
        repo,
        "--quantize",
        "int8",
        "--max-accuracy-drop",
        "-1",
        "--parity-images",
        "16",
        "--calibration-images",
        "64",
        "--eval-images",
        "64",
        "--max-batch-size",
        "8",
    )
    assert p.returncode == 1, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("cnn export: verification failed, nothing published: ") and "int8 test accuracy" in last
    assert "Traceback" not in p.stderr
    assert not repo.exists() or os.listdir(repo) == []


def _repo_with_versions(lenet5_published, root: Path) -> Path:
    src = Path(lenet5_published.path).parents[1]  # <repo>/lenet5-digits
    repo = root / "repo"
    shutil.copytree(src, repo / "lenet5-digits")
    shutil.copytree(src / "1", repo / "lenet5-digits" / "2")
    return repo


def test_models_list_table_and_json_without_torch(lenet5_published, tmp_path, no_torch):
    env, marker = no_torch
    repo = _repo_with_versions(lenet5_published, tmp_path)
    p = run("models", "list", "--repository", repo, env=env)
    assert p.returncode == 0, p.stderr
    rows = p.stdout.splitlines()
    assert rows[0].split()[:3] == ["MODEL", "VERSION", "PRECISION"]
    assert [r.split()[:5] for r in rows[1:]] == [
        ["lenet5-digits", "1", "fp32", f"{lenet5_published.accuracy['fp32_test_accuracy']:.4f}", "1x28x28"],
        ["lenet5-digits", "2", "fp32", f"{lenet5_published.accuracy['fp32_test_accuracy']:.4f}", "1x28x28"],
    ]
    assert all(r.rstrip().endswith("ok") and "KiB" in r for r in rows[1:])

    p = run("models", "list", "--repository", repo, "--json", env=env)
    assert p.returncode == 0, p.stderr
    (m,) = json.loads(p.stdout)["models"]
    assert m["name"] == "lenet5-digits" and m["max_batch_size"] == 64 and m["config_error"] == ""
    assert [v["version"] for v in m["versions"]] == [1, 2]
    v = m["versions"][0]
    assert v["input_shape"] == [1, 28, 28] and v["labels"] == 10 and v["precision"] == "fp32"
    assert v["size_bytes"] == os.path.getsize(repo / "lenet5-digits" / "1" / "model.onnx")
    assert abs(v["test_accuracy"] - lenet5_published.accuracy["fp32_test_accuracy"]) < 1e-12
    # the command never even tried to import a training package
    assert not marker.exists(), marker.read_text()


def test_cli_module_imports_no_training_packages(no_torch):
    env, marker = no_torch
    p = run("export", "--help", env=env)
    assert p.returncode == 0 and "--quantize" in p.stdout, p.stderr
    assert not marker.exists(), marker.read_text()


def test_models_list_reports_broken_entries_by_file(lenet5_published, tmp_path, no_torch):
    env, _ = no_torch
    repo = _repo_with_versions(lenet5_published, tmp_path)
    broken = repo / "lenet5-digits" / "2" / "model.onnx"
    broken.write_bytes(broken.read_bytes()[:1000])  # truncated
    shutil.copytree(repo / "lenet5-digits", repo / "no-config")
    os.remove(repo / "no-config" / "config.yaml")
    p = run("models", "list", "--repository", repo, env=env)
    assert p.returncode == 1
    rows = {tuple(r.split()[:2]): r for r in p.stdout.splitlines()[1:]}
    assert rows[("lenet5-digits", "1")].rstrip().endswith("ok")
    assert (
        f"{broken}: not a valid ONNX model" in rows[("lenet5-digits", "2")]
        and "truncated" in rows[("lenet5-digits", "2")]
    )
    assert f"{repo / 'no-config' / 'config.yaml'}: missing model config" in rows[("no-config", "1")]
    assert f"{broken}: not a valid ONNX model" in p.stderr
    assert f"{repo / 'no-config' / 'config.yaml'}: missing model config" in p.stderr
    assert "Traceback" not in p.stderr


def test_models_list_missing_repository(tmp_path, no_torch):
    env, _ = no_torch
    p = run("models", "list", "--repository", tmp_path / "nope", env=env)
    assert (
        p.returncode == 2
        and p.stderr.strip() == f"cnn models list: error: {tmp_path / 'nope'}: model repository folder does not exist"
    )
