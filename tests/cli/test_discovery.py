"""Finding what there is (issue 20, finding 10): --version, shell completion, the model zoo, the recipes,
one default repository for every command, a pipe closed early, through the real command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from importlib.metadata import version

import pytest

from tests.cli.conftest import FAST_EXPORT, cnn
from tests.conftest import MODEL_NAME, PY, ROOT


def test_version():
    r = cnn("--version")
    assert r.rc == 0, r
    assert r.out.startswith(f"cnn (cnn-stack) {version('cnn-stack')}"), r


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_scripts_know_the_subcommands_and_flags(shell):
    r = cnn("completion", shell)
    assert r.rc == 0, r
    for word in ("classify", "serve", "export", "recipes", "--tls-ca", "--overwrite", "--quantize"):
        assert word in r.out, word


def test_bash_completion_completes_a_subcommand():
    if not shutil.which("bash"):
        pytest.fail("bash is needed for this test")
    script = cnn("completion", "bash").out
    probe = (
        script + '\nCOMP_WORDS=(cnn cla); COMP_CWORD=1; COMP_LINE="cnn cla"; COMP_POINT=${#COMP_LINE}\n'
        '_shtab_cnn cnn cla cnn; printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    p = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "classify" in p.stdout.split(), p.stdout


def test_models_zoo_lists_every_registered_model_with_its_arguments():
    r = cnn("models", "zoo", "--json")
    assert r.rc == 0, r
    zoo = {e["name"]: e["arguments"] for e in json.loads(r.out)}
    from training.models import list_models, model_arguments

    assert sorted(zoo) == list_models()
    for name, args in zoo.items():
        assert list(args) == model_arguments(name)
    assert zoo["lenet5"]["in_channels"] == 1 and zoo["resnet20"]["num_classes"] == 10, zoo
    text = cnn("models", "zoo").out
    assert "lenet5: " in text and "arguments: num_classes=" in text


def test_recipes_lists_each_recipe_with_what_it_reached():
    r = cnn("recipes", "--json")
    assert r.rc == 0, r
    entries = {e["name"]: e for e in json.loads(r.out)}
    from training.config import list_recipes

    assert sorted(entries) == list_recipes()
    table = json.loads((ROOT / "bench" / "results" / "train_table.json").read_text())["rows"]
    measured = {row["recipe"]: row for row in table.values() if not row.get("smoke")}
    assert measured, "the training table has rows"
    for name, row in measured.items():
        got = entries[name]["measured"]
        assert any(m["test_accuracy"] == row["test_accuracy"] for m in got), (name, got)
    assert "lenet5_digits: epochs" in cnn("recipes").out


def test_export_models_list_and_serve_share_the_default_repository(trained_run, tmp_path):
    """No --repository anywhere: export writes where `models list` and `serve` look (model_repository in the
    working directory, or $CNN_SERVER_REPOSITORY)."""
    from tests.cli.conftest import free_port

    r = cnn("export", str(trained_run / "best.pt"), "-q", *FAST_EXPORT, cwd=tmp_path)
    assert r.rc == 0, r
    assert (tmp_path / "model_repository" / MODEL_NAME / "1" / "model.onnx").is_file()
    r = cnn("models", "list", cwd=tmp_path)
    assert r.rc == 0 and MODEL_NAME in r.out, r
    other = tmp_path / "elsewhere"
    r = cnn(
        "export",
        str(trained_run / "best.pt"),
        "-q",
        *FAST_EXPORT,
        cwd=tmp_path,
        env={"CNN_SERVER_REPOSITORY": str(other)},
    )
    assert r.rc == 0 and (other / MODEL_NAME / "1").is_dir(), r
    # serve (same default) finds the model exported without --repository
    port = free_port()
    p = subprocess.Popen(
        [
            PY,
            "-m",
            "client.cli",
            "serve",
            "--grpc-address",
            f"127.0.0.1:{port}",
            "--metrics-address",
            "",
            "--http-address",
            "",
            "--poll-interval-s",
            "0",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        line = p.stdout.readline()
        assert f"serving gRPC on 127.0.0.1:{port}" in line and MODEL_NAME in line, (
            line,
            p.stderr.read() if p.poll() else "",
        )
    finally:
        p.terminate()
        p.wait(30)


@pytest.mark.parametrize("reader", ["true", "head -c 0"])
def test_a_closed_pipe_ends_quietly(model_repository, reader):
    """`cnn models list --json | head`: the reader is gone before the command writes (it exits at once,
    while the command takes a second to start): no BrokenPipe traceback, the exit status of a tool that
    SIGPIPE stopped."""
    p = subprocess.run(
        f"set -o pipefail; {PY} -m client.cli models list --repository {model_repository} --json | {reader}",
        shell=True,
        executable="bash",
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr
    assert p.returncode == 141, (p.returncode, p.stderr)


def test_no_subcommand_prints_help_and_exits_2():
    r = cnn()
    assert r.rc == 2 and "COMMAND" in r.out, r
