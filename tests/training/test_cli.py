"""The `cnn train` / `cnn inspect` contract: signatures, torch-free import, one-line errors, real runs."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from training.cli import add_inspect_parser, add_train_parser, run_inspect, run_train

REPO = Path(__file__).resolve().parents[2]


def _parse(argv):
    parser = argparse.ArgumentParser(prog="cnn")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    add_inspect_parser(sub)
    return parser.parse_args(argv)


def _run(argv, capsys):
    args = _parse(argv)
    rc = args.func(args)
    out, err = capsys.readouterr()
    return rc, out, err


def test_importing_the_cli_does_not_import_torch():
    code = (
        "import sys, argparse; import training.cli as c; p = argparse.ArgumentParser(); "
        "s = p.add_subparsers(); c.add_train_parser(s); c.add_inspect_parser(s); "
        "print('torch' in sys.modules, 'numpy' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert r.stdout.split() == ["False", "False"]


def test_parsers_dispatch_to_the_run_functions():
    a = _parse(
        [
            "train",
            "--model",
            "lenet5",
            "--data",
            "digits",
            "--out",
            "x",
            "--set",
            "lr=0.1",
            "--set",
            "epochs=2",
            "--epochs",
            "3",
            "--seed",
            "4",
            "--recipe",
            "lenet5_digits",
        ]
    )
    assert a.func is run_train and a.set == ["lr=0.1", "epochs=2"] and a.epochs == 3 and a.seed == 4
    b = _parse(["inspect", "best.pt", "img.png", "--out", "maps.png"])
    assert b.func is run_inspect and b.checkpoint == "best.pt" and b.image == "img.png"


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--model", "nope", "--out", "{tmp}"], "unknown model 'nope'; valid models: alexnet"),
        (["--out", "{tmp}", "--set", "lrr=3"], "unknown recipe key 'lrr'"),
        (["--out", "{tmp}", "--set", "epochs=-1"], "'epochs': must be >= 1"),
        (["--out", "{tmp}", "--recipe", "nope"], "unknown recipe 'nope'"),
        (["--out", "{tmp}", "--data", "idx:{tmp}/no_such_dir"], "no_such_dir does not exist"),
        (["--out", "{tmp}", "--data", "folder:{tmp}/missing"], "missing does not exist"),
        (["--out", "{tmp}", "--data", "cifar"], "unknown data 'cifar'"),
        (["--model", "resnet20"], "--out RUN_DIR is required"),
        (["--out", "{tmp}", "--set", "model.colour=1", "--epochs", "1"], "does not accept 'colour'"),
        (["--resume", "{tmp}/nothing.pt"], "nothing.pt does not exist"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(argv, needle, tmp_path, capsys):
    rc, out, err = _run(["train"] + [a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert rc == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_train_inspect_and_resume_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    rc, out, err = _run(
        ["train", "--model", "lenet5", "--data", "digits", "--out", str(run), "--epochs", "2", "--set", "threads=1"],
        capsys,
    )
    assert rc == 0, err
    assert "epoch   1/2" in out and "img/s" in out and "test acc" in out
    for name in ("best.pt", "last.pt", "metrics.jsonl", "curves.png", "confusion.png", "summary.json"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["recipe"] == "lenet5_digits" and summary["epochs_run"] == 2

    # resuming a finished run with more epochs continues from epoch 3
    rc, out, err = _run(["train", "--resume", str(run / "last.pt"), "--epochs", "3"], capsys)
    assert rc == 0, err
    assert "resuming" in out and "epoch   3/3" in out and "epoch   1/" not in out
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3

    image = REPO / "examples" / "digits"
    png = sorted(image.glob("*.png"))[0] if image.is_dir() and list(image.glob("*.png")) else None
    if png is None:  # examples not generated yet: write one held-out test image
        from PIL import Image

        from training.data import load_dataset

        png = tmp_path / "3_0000.png"
        d = load_dataset("digits")
        Image.fromarray(d.test_x[0, 0].numpy(), "L").save(png)
    maps = tmp_path / "maps.png"
    rc, out, err = _run(["inspect", str(run / "best.pt"), str(png), "--out", str(maps)], capsys)
    assert rc == 0, err
    assert maps.read_bytes()[:4] == b"\x89PNG" and "2 stages" in out

    rc, out, err = _run(["inspect", str(run / "best.pt"), str(tmp_path / "none.png"), "--out", str(maps)], capsys)
    assert rc == 2 and "none.png does not exist" in err


def test_inspect_catches_every_stage(tmp_path):
    import torch

    from training.inspect import feature_maps, feature_stages
    from training.models import create_model, list_models

    for name in list_models():
        m = create_model(name, num_classes=3, in_channels=1, input_size=28).eval()
        maps, logits = feature_maps(m, torch.randn(1, 1, 28, 28))
        assert [n for n, _ in maps] == [n for n, _ in feature_stages(m)] and len(maps) >= 2, name
        assert all(t.ndim == 3 for _, t in maps) and logits.shape == (1, 3)
