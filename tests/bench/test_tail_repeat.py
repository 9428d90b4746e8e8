"""`python -m bench.tail repeat` (scenario 7, one configuration again and again) with the bare grpc.aio echo as
a reference beside the server: both measured in a run, in alternating order from run to run, each file saying
what it measured. Smoke mode, one run (each target costs ~15 s of server start and generator processes): the
numbers mean nothing, the bookkeeping is what is checked.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from bench.tail import LEVELS, run_order
from tests.conftest import ROOT


def _repeat(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench.tail", "repeat", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.fixture(scope="module")
def repeat_dir(model_repository, tmp_path_factory):
    out = tmp_path_factory.mktemp("tail-repeat")
    proc = _repeat(
        "--repo", str(model_repository), "--runs", "1", "--mode", "smoke", "--targets", "server,echo", "--out", str(out)
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return out


@pytest.mark.parametrize("target", ["server", "echo"])
def test_the_run_measures_every_target(repeat_dir, target):
    r = json.loads((repeat_dir / f"run1-{target}.json").read_text())
    assert r["target"] == target and r["max_rps"] > 0
    assert [p["fraction"] for p in r["levels"]] == list(LEVELS)
    for p in r["levels"]:  # each level was driven and answered
        assert p["scheduled"] > 0 and p["ok"] == p["scheduled"] and p["p50_ms"] > 0, p


def test_the_table_names_the_target_and_its_median(repeat_dir):
    md = (repeat_dir / "runs.md").read_text()
    rows = re.findall(r"^\| (\d) \| (server|echo) \|", md, flags=re.M)
    assert rows == [("1", "server"), ("1", "echo")], md
    assert "| host steal during the 80 % run, CPU-s (" in md, "each row says what the host took meanwhile"
    for target in ("server", "echo"):
        assert re.search(rf"Median ratio over the 1 run, {target}: \*\*[0-9.]+x\*\*", md), md


def test_the_order_alternates_from_run_to_run():
    t = ("server", "echo", "echo-thread")
    assert [run_order(k, t) for k in (1, 2, 3)] == [t, t[::-1], t]


def test_a_target_that_cannot_run_is_refused_before_any_run(tmp_path):
    proc = _repeat("--repo", str(tmp_path), "--runs", "1", "--targets", "server,triton", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "--targets: unknown target 'triton'" in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()
    proc = _repeat(
        "--repo", str(tmp_path), "--protocol", "http", "--targets", "server,echo", "--out", str(tmp_path / "o")
    )
    assert proc.returncode == 2 and "--targets: echo is a gRPC server" in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()
