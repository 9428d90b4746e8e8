"""`cnn train` and `cnn export` as a user runs them (issue 20, findings 4, 7, 9): nothing lost or changed
without a word, a wrong file named in one line, the learning rate a resumed run really uses."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from tests.cli.conftest import FAST_EXPORT, cnn
from tests.conftest import MODEL_NAME


@pytest.fixture
def run_copy(trained_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(trained_run, dst)
    return dst


def test_train_refuses_to_overwrite_a_run_without_the_flag(run_copy):
    before = (run_copy / "best.pt").read_bytes()
    r = cnn("train", "--model", "lenet5", "--data", "digits", "--out", str(run_copy), "--epochs", "1")
    assert r.rc == 2, r
    assert f"{run_copy} already holds a run" in r.err and "--overwrite" in r.err and "--resume" in r.err, r
    assert (run_copy / "best.pt").read_bytes() == before  # nothing touched
    assert "Traceback" not in r.err


def test_train_overwrites_with_the_flag(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("{}\n")
    r = cnn("train", "--model", "lenet5", "--data", "digits", "--out", str(out), "--epochs", "1", "--overwrite")
    assert r.rc == 0, r
    assert json.loads((out / "summary.json").read_text())["epochs_run"] == 1


def test_resuming_a_finished_run_says_so_and_stops(run_copy):
    mtime = (run_copy / "last.pt").stat().st_mtime_ns
    r = cnn("train", "--resume", str(run_copy / "last.pt"))
    assert r.rc == 0, r
    assert f"{run_copy / 'last.pt'} already finished all" in r.err and "nothing to do" in r.err, r
    assert "--epochs N" in r.err, r
    assert "epoch" not in r.out, r  # no training, no re-scoring
    assert (run_copy / "last.pt").stat().st_mtime_ns == mtime


def test_resume_with_more_epochs_logs_the_learning_rate_it_trains_with(run_copy):
    from training.checkpoint import load_checkpoint
    from training.config import config_from_dict
    from training.optim import lr_factor

    ck = load_checkpoint(run_copy / "last.pt")
    done, step = int(ck["epoch"]), int(ck["scheduler"]["last_epoch"])
    saved_lr = ck["optimizer"]["param_groups"][0]["lr"]  # the end of the old schedule (what was logged before)
    cfg = config_from_dict({**ck["recipe"], "epochs": done + 2})
    expected = cfg.lr * lr_factor(step, cfg, step // done)  # the stretched schedule at the saved step
    assert expected > 10 * saved_lr  # so the log can tell one from the other

    r = cnn("train", "--resume", str(run_copy / "last.pt"), "--epochs", str(done + 2))
    assert r.rc == 0, r
    assert f"the run was planned for {done} epochs, now {done + 2}" in r.out, r
    assert f"from {saved_lr:.2e} to {expected:.2e}" in r.out, r
    logged = [float(m) for m in re.findall(r"\|\s+lr ([0-9.e+-]+)", r.out)]
    assert len(logged) == 2, r
    assert logged[0] == pytest.approx(expected, rel=0.01), (logged, expected)
    rows = [json.loads(line) for line in (run_copy / "metrics.jsonl").read_text().splitlines()]
    assert rows[done]["epoch"] == done + 1 and rows[done]["lr"] == pytest.approx(expected, rel=1e-6), rows[done]


@pytest.mark.parametrize(
    "command", ["train --resume {f}", "inspect {f} {img} --out {tmp}/m.png", "export {f} -r {tmp}/repo"]
)
def test_a_wrong_file_as_a_checkpoint_is_one_line_naming_it(tmp_path, command):
    bad = tmp_path / "not-a-checkpoint.pt"
    bad.write_bytes(b"PK\x03\x04 this is no checkpoint" * 10)
    from tests.conftest import digit_examples

    args = command.format(f=bad, img=digit_examples()[0], tmp=tmp_path).split()
    r = cnn(*args)
    assert r.rc == 2, r
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0], r
    assert "Traceback" not in r.err and "Please file an issue" not in r.err and "weights_only" not in r.err, r


def test_quantised_export_gets_its_own_name_and_says_what_is_served(trained_run, tmp_path):
    repo = tmp_path / "repo"
    assert (
        cnn("export", str(trained_run / "best.pt"), "-r", str(repo), "--name", MODEL_NAME, "-q", *FAST_EXPORT).rc == 0
    )
    r = cnn("export", str(trained_run / "best.pt"), "-r", str(repo), "--quantize", "fp16", "-q", *FAST_EXPORT, "--json")
    assert r.rc == 0, r
    res = json.loads(r.out)
    assert res["name"] == f"{MODEL_NAME}-fp16" and res["version"] == 1, res  # the fp32 model keeps serving
    assert (repo / MODEL_NAME / "1" / "model.onnx").is_file() and not (repo / MODEL_NAME / "2").exists()
    speed = res["quantization"]["speed"]
    assert speed["provider"] == "CPUExecutionProvider" and speed["fp32_ms"] > 0 and speed["variant_ms"] > 0, speed
    slower = [w for w in res["warnings"] if "measured slower than fp32" in w]
    # the warning is there exactly when the measurement says slower, and -q does not hide it
    assert bool(slower) == (speed["variant_ms"] > speed["fp32_ms"]), (speed, res["warnings"])
    for w in slower:
        assert f"cnn export: warning: {w}" in r.err, r

    # Under the fp32 model's own name it becomes the served version, and the output says so plainly.
    r = cnn(
        "export",
        str(trained_run / "best.pt"),
        "-r",
        str(repo),
        "--name",
        MODEL_NAME,
        "--quantize",
        "fp16",
        "-q",
        *FAST_EXPORT,
    )
    assert r.rc == 0, r
    assert (
        f"note: {MODEL_NAME} version 2 (fp16) is now served by a server on {repo}" in r.err
        and "replaces version 1 (fp32)" in r.err
    ), r


def test_export_quiet_still_prints_warnings(trained_run, tmp_path):
    repo = tmp_path / "repo"
    (repo / MODEL_NAME).mkdir(parents=True)
    (repo / MODEL_NAME / "config.yaml").write_text(f"name: {MODEL_NAME}\nmax_batch_size: 8\n")
    r = cnn("export", str(trained_run / "best.pt"), "-r", str(repo), "--name", MODEL_NAME, "-q", *FAST_EXPORT)
    assert r.rc == 0, r
    assert "cnn export: warning: kept the existing" in r.err and "max_batch_size=8" in r.err, r
    assert "parity on" not in r.err  # the progress lines are what -q hides
