"""ModelInfer, ModelStreamInfer and Classify are accounted the same way (see tests/server/accounting_child.py).

The check imports the server's `inference` stubs, so it runs in a child process: the pytest process holds
tritonclient's copies of the same protobuf names and cannot hold both.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_stream_messages_are_recorded_like_unary_calls():
    proc = subprocess.run(
        [sys.executable, "-m", "tests.server.accounting_child"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and "accounting ok" in proc.stdout, proc.stdout + proc.stderr
