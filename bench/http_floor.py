"""The floor of a binary-extension infer on aiohttp: the least work any server can do for the request.

issue 19 asks the server's binary infer (one LeNet-5 image per request, c=64) to reach 0.80 of a bare aiohttp
server answering fixed bytes (bench/http_bare.py). This file asks what that target leaves room for: a server
that does only what the request cannot do without, on the same library, loop and load generator:

    read the body, json.loads the header, np.frombuffer the tensor, run onnxruntime, answer the two outputs' bytes

with no validation, no routing beyond aiohttp's, no metrics, no statistics, no limits, no timeouts, no drain.
Two modes: `inline` runs each request alone (batch 1) on the loop thread; `batched` gathers the requests that
arrive in one turn of the event loop into one onnxruntime run (the cheapest dynamic batcher there is: one list
and one call_soon). onnxruntime gets the server's session options (one intra-op thread, no spinning). Whatever
ratio these reach against the bare server is the most any real server on aiohttp + onnxruntime could reach.

    python -m bench.http_floor serve --model REPO/lenet5-digits/1/model.onnx --mode batched --port 0
    python -m bench.http_infer --repo REPO --floor          # the floor arms beside the server and the bare one
    taskset -c 0 python -m bench.http_floor model-cost --model M [--bare-us 64]   # the model alone, per row

`model-cost` times onnxruntime alone at batch 1..64 (process CPU time, best of 5) and, given the bare server's CPU
per request, the ratio a server could reach if the model were all it added: bare / (bare + cheapest row).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time

import numpy as np

from bench.http_bare import BINARY_HEADER, _grpc_beside
from server.eventloop import run_loop

MODES = ("inline", "batched")


class Floor:
    """One onnxruntime session and the answer header for a one-row request, built once."""

    def __init__(self, model_path: str, model_name: str = "lenet5-digits") -> None:
        import onnxruntime as ort

        from server.runtime.threads import session_options

        self.session = ort.InferenceSession(model_path, session_options(1, 1), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.input_shape = [1, *self.session.get_inputs()[0].shape[1:]]  # [1, 1, 28, 28]
        outs = self.session.get_outputs()
        probe = self.session.run(None, {self.input_name: np.zeros(self.input_shape, np.float32)})
        header = json.dumps(
            {
                "model_name": model_name,
                "model_version": "1",
                "outputs": [
                    {
                        "name": o.name,
                        "datatype": "FP32",
                        "shape": list(p.shape),
                        "parameters": {"binary_data_size": p.nbytes},
                    }
                    for o, p in zip(outs, probe, strict=True)
                ],
            }
        ).encode()
        self.header = header
        self.headers = {BINARY_HEADER: str(len(header)), "Content-Type": "application/octet-stream"}
        self.pending: list[tuple[np.ndarray, asyncio.Future]] = []

    def tensor(self, body: bytes, header_length: int) -> np.ndarray:
        json.loads(body[:header_length])  # the request header: parsed, as any server must, and not checked
        return np.frombuffer(body, np.float32, offset=header_length).reshape(self.input_shape)

    def answer(self, outputs: list[np.ndarray]) -> bytes:
        return b"".join([self.header, *(o.tobytes() for o in outputs)])

    def run_inline(self, x: np.ndarray) -> bytes:
        return self.answer(self.session.run(None, {self.input_name: x}))

    def submit(self, x: np.ndarray) -> asyncio.Future:
        """Queue one row; the first row of a loop turn schedules the flush that runs them all together."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if not self.pending:
            loop.call_soon(self.flush)
        self.pending.append((x, fut))
        return fut

    def flush(self) -> None:
        batch, self.pending = self.pending, []
        xs = np.concatenate([x for x, _ in batch])  # [n, 1, 28, 28]
        outs = self.session.run(None, {self.input_name: xs})  # each [n, ...]
        for i, (_, fut) in enumerate(batch):
            fut.set_result(self.answer([o[i : i + 1] for o in outs]))


async def _serve(model_path: str, mode: str, host: str, port: int) -> None:
    from aiohttp import web

    floor = Floor(model_path)

    async def inline(request: web.Request) -> web.Response:
        body = await request.read()
        x = floor.tensor(body, int(request.headers[BINARY_HEADER]))
        return web.Response(body=floor.run_inline(x), headers=floor.headers)

    async def batched(request: web.Request) -> web.Response:
        body = await request.read()
        x = floor.tensor(body, int(request.headers[BINARY_HEADER]))
        return web.Response(body=await floor.submit(x), headers=floor.headers)

    grpc_server = await _grpc_beside()
    app = web.Application()
    app.router.add_post("/v2/models/{model}/infer", inline if mode == "inline" else batched)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    print(f"floor {mode} serving on {host}:{site._server.sockets[0].getsockname()[1]}", flush=True)  # type: ignore[union-attr]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await grpc_server.stop(0)  # type: ignore[attr-defined]


def model_cost(model_path: str, batches: tuple[int, ...] = (1, 4, 16, 32, 64), rounds: int = 5) -> dict[int, float]:
    """CPU microseconds per row of one onnxruntime run at each batch size (best of `rounds`), server session options."""
    floor = Floor(model_path)
    out = {}
    for b in batches:
        x = np.random.default_rng(0).random((b, *floor.input_shape[1:]), dtype=np.float32)
        for _ in range(20):
            floor.session.run(None, {floor.input_name: x})
        n, best = max(100, 2000 // b), float("inf")
        for _ in range(rounds):
            t = time.process_time()
            for _ in range(n):
                floor.session.run(None, {floor.input_name: x})
            best = min(best, (time.process_time() - t) / n / b * 1e6)
        out[b] = best
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.http_floor", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--model", required=True, help="a LeNet-5 model.onnx (input [N, 1, 28, 28] FP32)")
    s.add_argument("--mode", choices=MODES, default="batched")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0)
    c = sub.add_parser("model-cost")
    c.add_argument("--model", required=True)
    c.add_argument("--bare-us", type=float, help="the bare server's CPU µs per request (bench.http_infer's table)")
    args = ap.parse_args(argv)
    if args.cmd == "model-cost":
        cost = model_cost(args.model)
        for b, us in cost.items():
            print(f"batch {b:3d}: {us:6.1f} µs of CPU per row")
        if args.bare_us:
            best = min(cost.values())
            print(
                f"bound: bare {args.bare_us:g} / (bare + {best:.1f}) = {args.bare_us / (args.bare_us + best):.2f} "
                "(the ratio to the bare server if running the model were the only work added)"
            )
        return 0
    return run_loop(_serve(args.model, args.mode, args.host, args.port), "uvloop") or 0


if __name__ == "__main__":
    sys.exit(main())
