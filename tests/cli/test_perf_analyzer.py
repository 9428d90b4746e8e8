"""perf_analyzer as installed, through the one documented wrapper (issue 20, finding 8): scripts/perf_analyzer."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from tests.conftest import MODEL_NAME, ROOT

WRAPPER = ROOT / "scripts" / "perf_analyzer"


def test_the_wrapper_runs_perf_analyzer_against_a_real_server(server):
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}  # as a user's shell has it
    p = subprocess.run(
        [
            str(WRAPPER),
            "-m",
            MODEL_NAME,
            "-u",
            server.address,
            "-i",
            "grpc",
            "--concurrency-range",
            "1:2",
            "--measurement-mode",
            "count_windows",
            "--measurement-request-count",
            "100",
            "-s",
            "80",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "libcudart" not in p.stderr
    assert len(re.findall(r"Throughput: [\d.]+ infer/sec", p.stdout)) == 2, p.stdout


def test_without_the_tools_venv_it_says_how_to_install_it(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(WRAPPER, tmp_path / "scripts" / "perf_analyzer")
    p = subprocess.run(
        [str(tmp_path / "scripts" / "perf_analyzer"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 2, p
    assert f"{tmp_path}/.venv-tools/bin/perf_analyzer is not installed; run scripts/setup.sh --system" in p.stderr
