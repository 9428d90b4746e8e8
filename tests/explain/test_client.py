"""client/explain.py without a server: file names, and the arguments refused before any call."""

from __future__ import annotations

import argparse
import re
import socket
from pathlib import Path

import pytest

from client.explain import add_explain_parser, output_name, run_explain


def _args(*argv: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    add_explain_parser(ap.add_subparsers())
    return ap.parse_args(["explain", *argv])


def test_output_names_are_safe_and_unique():
    taken: set[str] = set()
    assert output_name(Path("a/7_0.png"), 7, "7", taken) == "7_0.7-7"
    assert output_name(Path("b/7_0.png"), 7, "7", taken) == "7_0.7-7.2"  # same stem, another folder
    assert output_name(Path("x y.jpg"), 3, "T-shirt/top", taken) == "x_y.3-T-shirt_top"
    assert output_name(Path("..png"), 0, "../..", taken) == "class.0-class"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--top-k", "0"], "--top-k must be at least 1"),
        (["--class", "-1"], "--class must be a class index >= 0"),
        (["--overlay-size", "4096"], "--overlay-size must be in 0..2048"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, argv, message):
    img = tmp_path / "a.png"
    img.write_bytes(b"not read")
    assert run_explain(_args(str(img), "--out", str(tmp_path / "o"), *argv)) == 2
    assert capsys.readouterr().err.strip() == f"cnn explain: {message}"


def test_unreadable_image_and_unreachable_server(tmp_path, capsys):
    assert run_explain(_args(str(tmp_path / "missing.png"), "--out", str(tmp_path / "o"))) == 2
    assert "cannot read" in capsys.readouterr().err and not (tmp_path / "o").exists()
    img = tmp_path / "a.png"
    img.write_bytes(b"\x89PNG")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc = run_explain(_args(str(img), "--out", str(tmp_path / "o"), "--server", f"127.0.0.1:{port}", "--timeout-s", "2"))
    assert rc == 1  # refused connections are retried within the deadline, so either code may end it
    assert re.match(rf"cnn explain: 127\.0\.0\.1:{port}: (UNAVAILABLE|DEADLINE_EXCEEDED): ", capsys.readouterr().err)
