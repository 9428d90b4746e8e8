"""Bare HTTP servers answering fixed bytes, one per candidate library, and the measurement that chose one.

Each bare server runs the way the real server would run it: on uvloop, on one event loop, in the same
process as a grpc.aio server (started, no services), and answers `POST /v2/models/{m}/infer` with the
bytes the real server sends for a LeNet-5 binary-extension answer (JSON header + two FP32 [1, 10] outputs)
and `GET /v2/health/ready` with 200. No parsing of the body, no numpy, no model: the ceiling of the library
on this machine, with the same load generator (bench/http_wrk.py) as the real server.

    python -m bench.http_bare serve --library aiohttp --port 0     # "bare aiohttp serving on 127.0.0.1:PORT"
    python -m bench.http_bare compare --duration 5 --repeats 3     # both libraries, wrk at c=64, JSON out
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time

from bench.http_wrk import run_wrk
from server.eventloop import run_loop

LIBRARIES = ("aiohttp", "starlette")
BINARY_HEADER = "Inference-Header-Content-Length"


def lenet_request(rows: int = 1) -> tuple[bytes, dict[str, str]]:
    """A binary-extension infer request for LeNet-5 (input FP32 [rows, 1, 28, 28]) as tritonclient.http sends it."""
    raw = bytes(4 * rows * 28 * 28)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [rows, 1, 28, 28],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return header + raw, {BINARY_HEADER: str(len(header)), "Content-Type": "application/octet-stream"}


def lenet_json_request(rows: int = 1) -> tuple[bytes, dict[str, str]]:
    """The same request with the tensor as JSON `data` (and JSON answers)."""
    body = json.dumps(
        {
            "inputs": [
                {"name": "input", "shape": [rows, 1, 28, 28], "datatype": "FP32", "data": [0.0] * (rows * 28 * 28)}
            ]
        }
    ).encode()
    return body, {"Content-Type": "application/json"}


def lenet_answer(rows: int = 1) -> tuple[bytes, dict[str, str]]:
    """What the server answers to lenet_request: JSON header, then logits and probabilities as raw FP32."""
    size = 4 * rows * 10
    header = json.dumps(
        {
            "model_name": "lenet5",
            "model_version": "1",
            "outputs": [
                {"name": n, "datatype": "FP32", "shape": [rows, 10], "parameters": {"binary_data_size": size}}
                for n in ("logits", "probabilities")
            ],
        }
    ).encode()
    return header + bytes(2 * size), {BINARY_HEADER: str(len(header)), "Content-Type": "application/octet-stream"}


async def _grpc_beside() -> object:
    """A started grpc.aio server on the same loop, as in the real process (it owns threads and a poller)."""
    import grpc

    server = grpc.aio.server()
    server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server


async def _serve_aiohttp(host: str, port: int) -> int:
    from aiohttp import web

    body, headers = lenet_answer()

    async def infer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, headers=headers)

    async def ready(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_post("/v2/models/{model}/infer", infer)
    app.router.add_get("/v2/health/ready", ready)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def _serve_starlette(host: str, port: int) -> int:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    body, headers = lenet_answer()

    async def infer(request: Request) -> Response:
        await request.body()
        return Response(body, headers=headers)

    async def ready(request: Request) -> Response:
        return Response(b"")

    app = Starlette(
        routes=[Route("/v2/models/{model}/infer", infer, methods=["POST"]), Route("/v2/health/ready", ready)]
    )

    class Embedded(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):  # the process owns its signals (SIGTERM drains the whole server)
            yield

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="none",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        backlog=1024,
    )
    server = Embedded(config)
    asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    return server.servers[0].sockets[0].getsockname()[1]


async def _serve(library: str, host: str, port: int) -> None:
    grpc_server = await _grpc_beside()
    bound = await (_serve_aiohttp if library == "aiohttp" else _serve_starlette)(host, port)
    print(f"bare {library} serving on {host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await grpc_server.stop(0)  # type: ignore[attr-defined]


def start_bare(library: str) -> tuple[subprocess.Popen, int]:
    """Start a bare server in a child process; returns (process, port)."""
    return start_serving(["-m", "bench.http_bare", "serve", "--library", library, "--port", "0"])


def start_serving(args: list[str]) -> tuple[subprocess.Popen, int]:
    """Start `python ARGS` (a server that prints "... serving on HOST:PORT" when up); returns (process, port)."""
    p = subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    line = p.stdout.readline()  # type: ignore[union-attr]
    if "serving on" not in line:
        p.kill()
        raise RuntimeError(f"{' '.join(args)} did not start: {line!r}")
    return p, int(line.rsplit(":", 1)[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc): steadier than requests/s on a shared machine."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(pid: int, url: str, body: bytes, headers: dict[str, str], concurrency: int, duration_s: float) -> dict:
    """One wrk run against a server process: wrk's figures plus the server's CPU microseconds per request."""
    c0 = cpu_seconds(pid)
    r = run_wrk(url, body, headers, concurrency=concurrency, duration_s=duration_s).as_dict()
    r["server_cpu_us_per_request"] = (cpu_seconds(pid) - c0) / max(1, r["requests"]) * 1e6
    return r


def compare(duration_s: float, repeats: int, concurrency: int) -> dict:
    body, headers = lenet_request()
    runs: dict[str, list[dict]] = {lib: [] for lib in LIBRARIES}
    procs = {lib: start_bare(lib) for lib in LIBRARIES}
    try:
        for _lib, (_, port) in procs.items():  # warm-up
            run_wrk(
                f"http://127.0.0.1:{port}/v2/models/lenet5/infer", body, headers, concurrency=concurrency, duration_s=1
            )
        for _ in range(repeats):  # interleaved, so drifting machine load hits both alike
            for lib, (_, port) in procs.items():
                runs[lib].append(
                    measure(
                        procs[lib][0].pid,
                        f"http://127.0.0.1:{port}/v2/models/lenet5/infer",
                        body,
                        headers,
                        concurrency,
                        duration_s,
                    )
                )
    finally:
        for p, _ in procs.values():
            p.send_signal(signal.SIGTERM)
            p.wait(10)
    summary = {
        lib: {
            "median_rps": statistics.median(r["rps"] for r in rs),
            "median_p50_ms": statistics.median(r["p50_ms"] for r in rs),
            "median_p99_ms": statistics.median(r["p99_ms"] for r in rs),
            "median_server_cpu_us_per_request": statistics.median(r["server_cpu_us_per_request"] for r in rs),
        }
        for lib, rs in runs.items()
    }
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "concurrency": concurrency,
        "duration_s": duration_s,
        "repeats": repeats,
        "summary": summary,
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.http_bare", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--library", choices=LIBRARIES, required=True)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0)
    c = sub.add_parser("compare")
    c.add_argument("--duration", type=float, default=5.0)
    c.add_argument("--repeats", type=int, default=3)
    c.add_argument("--concurrency", type=int, default=64)
    c.add_argument("--out", help="write the JSON here too")
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        return run_loop(_serve(args.library, args.host, args.port), "uvloop") or 0
    result = compare(args.duration, args.repeats, args.concurrency)
    text = json.dumps(result, indent=2)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(json.dumps(result["summary"], indent=2), "load average", result["load_average"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
