"""Start `cnn serve` as a subprocess on free ports and wait until it is ready.

One place that knows how to launch the server and read its ready line (printed by server/app.py):

    serving gRPC on HOST:PORT metrics http://HOST:PORT/metrics|off models: ...

Used by this repository's tests (tests/conftest.py), by the benchmarks (bench/procs.py, bench/soak.py),
and meant for anyone embedding the server in their own integration tests:

    from client.testing import start_server

    server = start_server(repo, "--poll-interval-s", "0", log_path=tmp_path / "server.log")
    try:
        ...  # talk to server.address (gRPC) and server.metrics_url
    finally:
        assert server.stop() == 0, server.log()

Standard library only: it ships with the serving install (no torch, no pytest) and never imports the
server's `inference` stubs, so a test process that also loads tritonclient can use it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

READY_LINE = re.compile(r"serving gRPC on (\S+):(\d+) metrics (?:http://(\S+):(\d+)/metrics|off)")
LOG_TAIL_CHARS = 3000


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    address: str  # host:port of gRPC
    metrics_url: str | None  # None when metrics are off
    log_path: Path  # the server's stderr
    t_spawn: float  # time.monotonic() just before Popen
    t_ready: float  # time.monotonic() when the ready line was read
    ready_line: str = ""  # the whole ready line (it also says what is on: TLS, tokens, models, providers)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def metrics_text(self) -> str:
        if not self.metrics_url:
            raise RuntimeError("metrics are off for this server")
        with urllib.request.urlopen(self.metrics_url, timeout=10) as r:
            return r.read().decode()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM (the server drains), SIGKILL after `timeout` seconds; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def _log_tail(log_path: Path) -> str:
    try:
        return log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
    except OSError as e:
        return f"(log unreadable: {e})"


def wait_for_line(proc: subprocess.Popen, pattern: re.Pattern, log_path: Path, what: str, timeout_s: float) -> re.Match:
    """Read `proc`'s stdout until a line matches `pattern`. On exit, timeout or no match: kill `proc` and
    raise RuntimeError with the last line and the tail of `log_path` (its stderr)."""
    expired = threading.Event()

    def expire() -> None:  # unblocks readline() if the process prints nothing at all
        expired.set()
        proc.kill()

    timer = threading.Timer(timeout_s, expire)
    timer.daemon = True
    timer.start()
    line, m = "", None
    try:
        for line in proc.stdout:
            m = pattern.search(line)
            if m:
                break
    finally:
        timer.cancel()
        timer.join()  # it has fired or never will
    if m and not expired.is_set():
        return m
    try:
        rc = proc.wait(5)  # it closed stdout: exiting, normally
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    why = f"no ready line within {timeout_s:g} s" if expired.is_set() else f"exited with code {rc}"
    raise RuntimeError(
        f"{what} did not start: {why} (last line {line.strip()!r}); log {log_path}:\n{_log_tail(log_path)}"
    )


def start_server(
    repository: str | os.PathLike,
    *args: str,
    python: str = sys.executable,
    cwd: str | os.PathLike | None = None,
    env: dict | None = None,
    log_path: Path,
    timeout_s: float = 60,
    preexec_fn: Callable[[], None] | None = None,
    grpc_address: str = "127.0.0.1:0",
    launcher: Sequence[str] = ("-m", "client.cli"),
) -> ServerProcess:
    """`python -m client.cli serve --repository REPO --grpc-address 127.0.0.1:0 --metrics-address 127.0.0.1:0 *args`.

    Returns once the ready line was printed, with the ports it bound. `env` is added to this process's
    environment; the server's stderr goes to `log_path`. `launcher` replaces `-m client.cli` (a wrapper that
    takes the same `serve ...` arguments); `grpc_address` fixes the port. Raises RuntimeError, with the log's
    tail, if the server exits or prints no ready line within `timeout_s` seconds (the process is killed)."""
    log_path = Path(log_path)
    cmd = [
        python,
        *launcher,
        "serve",
        "--repository",
        str(repository),
        "--grpc-address",
        grpc_address,
        "--metrics-address",
        "127.0.0.1:0",
        *args,
    ]
    with open(log_path, "w") as log:
        t_spawn = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            preexec_fn=preexec_fn,
            env={"CNN_SERVER_HTTP_ADDRESS": "127.0.0.1:0", **os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    m = wait_for_line(proc, READY_LINE, log_path, f"server ({' '.join(cmd)})", timeout_s)
    metrics_url = f"http://{m.group(3)}:{m.group(4)}/metrics" if m.group(3) else None
    return ServerProcess(
        proc, f"{m.group(1)}:{m.group(2)}", metrics_url, log_path, t_spawn, time.monotonic(), m.string.strip()
    )
