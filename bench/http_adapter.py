"""The HTTP adapter's own CPU cost per binary infer request, without sockets, aiohttp's request parsing or the core:
the wrapped ModelInfer handler (server/http/v2.py, with its error and metrics wrapper) called on a stand-in request
carrying the binary-extension LeNet-5 body, over a stub core that answers a canned two-output response at once.

    python -m bench.http_adapter [--calls 20000] [--repeats 3]

Run it from two checkouts (`cd /tmp/base && python -m bench.http_adapter`) to compare the adapter alone.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import numpy as np
from multidict import CIMultiDict, CIMultiDictProxy

from bench.http_bare import lenet_request
from server.core.types import InferOutput, InferResponse
from server.http import v2
from server.http.server import HttpServer
from server.metrics import Metrics

MODEL = "lenet5-digits"


class StubCore:
    def is_known(self, name: str) -> bool:
        return True

    def infer_raw(self, raw, decode):
        fut = asyncio.get_running_loop().create_future()
        outs = [InferOutput(n, "FP32", (1, 10), np.zeros((1, 10), np.float32)) for n in ("logits", "probabilities")]
        fut.set_result(InferResponse(MODEL, "1", raw.id, outs))
        return fut


class Received:
    """`request.content` once the whole body has arrived with the headers (the common case)."""

    @staticmethod
    def is_eof() -> bool:
        return True


class StandInRequest(dict):
    """What the infer handler reads from an aiohttp request: app, match_info, headers, content_type,
    content_length, content (server/http/body.py), read()."""

    __slots__ = ("app", "match_info", "headers", "_body", "content_length")
    content_type = "application/octet-stream"
    content = Received()

    async def read(self) -> bytes:
        return self._body


async def run(calls: int, repeats: int) -> list[float]:
    body, headers = lenet_request()
    http = HttpServer(StubCore(), Metrics())
    app = {v2.HTTP: http}
    hdrs = CIMultiDictProxy(CIMultiDict(headers))

    async def one():
        req = StandInRequest()
        req.app, req.match_info, req.headers, req._body = app, {"model": MODEL}, hdrs, body
        req.content_length = len(body)
        return await v2.infer(req)

    r = await one()
    if r.status != 200:
        raise SystemExit(f"bench.http_adapter: the handler answered {r.status}: {r.text}")
    out = []
    for _ in range(repeats):
        t = time.process_time()
        for _ in range(calls):
            await one()
        out.append((time.process_time() - t) / calls * 1e6)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.http_adapter", description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    for us in asyncio.run(run(args.calls, args.repeats)):
        print(f"adapter: {us:.1f} us of CPU per binary infer request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
