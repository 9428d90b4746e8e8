"""Scenario 5's stand-in while the server has no `workers` setting: N `cnn serve` processes on one port.

    python -m bench.reuseport --workers 2 serve --repository R --grpc-address 127.0.0.1:PORT ...

The supervisor starts N children, each the unmodified server with one change made from outside:
`grpc.aio.server` is wrapped so that `grpc.so_reuseport` is 1 (server/app.py sets 0), which lets every
child bind the same port; the kernel then spreads *connections* across them (clients need several
connections to see more than one worker). Each child keeps its own metrics port (port 0 = any free
one) and its own ModelStatistics. The supervisor prints one ready line once every child is ready and
forwards SIGTERM/SIGINT. The port must be fixed (not 0).

This measures exactly what the proposed `workers: N` setting (docs/benchmarks.md) would do.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

READY = re.compile(r"serving gRPC on (\S+):(\d+)")


def _patch_reuseport() -> None:
    import grpc.aio

    original = grpc.aio.server

    def server(*args, options=None, **kwargs):
        opts = [(k, 1 if k == "grpc.so_reuseport" else v) for k, v in (options or [])]
        if not any(k == "grpc.so_reuseport" for k, _ in opts):
            opts.append(("grpc.so_reuseport", 1))
        return original(*args, options=opts, **kwargs)

    grpc.aio.server = server


def child(argv: list[str]) -> int:
    _patch_reuseport()
    from client.cli import main

    return main(argv)


def supervise(workers: int, argv: list[str]) -> int:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.reuseport", "--child", *argv],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for _ in range(workers)
    ]

    def forward(sig, _frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    lines = []
    for p in procs:
        for line in p.stdout:
            if READY.search(line):
                lines.append(line.strip())
                break
        else:
            forward(signal.SIGTERM, None)
            return 1
    m = READY.search(lines[0])
    rest = lines[0][m.end() :]
    print(
        f"serving gRPC on {m.group(1)}:{m.group(2)}{rest} (workers: {workers}, pids "
        f"{' '.join(str(p.pid) for p in procs)})",
        flush=True,
    )
    for p in procs:  # keep draining their stdout so they never block on a full pipe
        threading.Thread(target=lambda s=p.stdout: [None for _ in s], daemon=True).start()
    codes = [p.wait() for p in procs]
    return max(codes)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--child":
        return child(argv[1:])
    workers = 2
    if argv[:1] == ["--workers"]:
        workers, argv = int(argv[1]), argv[2:]
    return supervise(workers, argv)


if __name__ == "__main__":
    raise SystemExit(main())
