"""Finding 5: limits on streams, connections and unread stream answers.

On 0e6d6fb one HTTP/2 connection could open any number of streams (20,000 idle streams: 719 MiB), an
idle connection was never closed, and the answers of a stream whose client never reads them queued
without bound. Now: `max_concurrent_streams` per connection, `max_connection_idle_s`, and
`stream_window` requests per stream in flight or answered-but-unread (the stream then stops reading;
HTTP/2 flow control holds the client back). The number of connections is capped in front of the
server (README "Operating it safely"): grpcio 1.81 did not enforce `grpc.max_allowed_incoming_connections`.
"""

from __future__ import annotations

import asyncio
import socket
import time

import grpc
import numpy as np

from tests.hardening.conftest import scale_request, serve
from tests.reliability.helpers import Stubs, pb, rss_bytes

STREAM_METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS


def _stream_call(channel: grpc.aio.Channel):
    return channel.stream_stream(
        STREAM_METHOD,
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelStreamInferResponse.FromString,
    )()


def test_idle_streams_on_one_connection_are_capped(server):
    """5,000 idle streams on one connection: only max_concurrent_streams of them reach the server."""
    n = 5000

    async def run() -> int:
        async with grpc.aio.insecure_channel(server.address) as ch:
            first = _stream_call(ch)
            await first.write(scale_request())
            assert (await first.read()).error_message == ""
            rss0 = rss_bytes(server.pid)
            calls = [_stream_call(ch) for _ in range(n)]
            await asyncio.sleep(3.0)  # every stream the server admits has started its handler by now
            grown = rss_bytes(server.pid) - rss0
            # an honest client on its own connection is still served
            with Stubs(server.address) as s:
                assert s.infer.ModelInfer(scale_request(), timeout=10).outputs
            for c in calls:
                c.cancel()
            await first.done_writing()
            return grown

    grown = asyncio.run(run())
    assert grown < 40 * 2**20, f"{n} idle streams took {grown / 2**20:.0f} MiB of server memory"


def test_idle_connection_is_closed(repo):
    s = serve(repo, env={"CNN_SERVER_MAX_CONNECTION_IDLE_S": "1"})
    try:
        host, port = s.address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(PREFACE)
            t0 = time.monotonic()
            sock.settimeout(10)
            closed = False
            while time.monotonic() - t0 < 10:
                try:
                    if not sock.recv(65536):  # SETTINGS, its ACK, then GOAWAY: read until the server closes
                        closed = True
                        break
                except ConnectionResetError:
                    closed = True
                    break
                except TimeoutError:
                    break
            took = time.monotonic() - t0
        assert closed and took < 8, f"idle connection still open after {took:.1f} s"
    finally:
        assert s.stop() == 0


def test_unread_stream_answers_are_bounded(server):
    """A client writes 2,000 requests whose answers are 256 KiB each and never reads one: the server stops
    reading that stream instead of queueing 500 MiB of answers."""
    req = pb.ModelInferRequest(model_name="wide")
    req.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(np.ones((1, 4), dtype="<f4").tobytes())

    async def run() -> tuple[int, int]:
        async with grpc.aio.insecure_channel(server.address) as ch:
            warm = _stream_call(ch)
            await warm.write(req)
            assert (await warm.read()).error_message == ""
            await warm.done_writing()
            rss0 = rss_bytes(server.pid)
            call = _stream_call(ch)
            written = 0
            for _ in range(2000):
                try:
                    await asyncio.wait_for(call.write(req), 2.0)
                except TimeoutError:
                    break  # back-pressure: the server stopped reading this stream
                written += 1
            await asyncio.sleep(2.0)
            grown = rss_bytes(server.pid) - rss0
            call.cancel()
            return written, grown

    written, grown = asyncio.run(run())
    assert grown < 150 * 2**20, f"{written} unread answers took {grown / 2**20:.0f} MiB"
