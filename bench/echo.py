"""The reference for scenario 1: a bare grpc.aio server of the same RPC and message types, no model.

It registers `inference.GRPCInferenceService` through the same generated code and with the same server
options as server/app.py, so gRPC parses the same `ModelInferRequest` and serialises a
`ModelInferResponse`. What it answers (`--reply`):

  model  (default) the reply the real server sends for LeNet-5: outputs `logits` and `probabilities`,
         FP32 [rows, 10] each, raw contents -- the same bytes on the wire both ways as the server
  echo   the request's inputs back as outputs (the literal echo)

It does no validation, no numpy, no batching, no metrics: the difference to the server is the cost of
everything the server does beyond moving the same protobuf messages through grpc.aio.

`--await-mode` (diagnostics: what does the *shape* of the server's handler cost inside grpc.aio?):

  none   (default) the handler returns without suspending
  yield  the handler suspends once (`await asyncio.sleep(0)`)
  thread the handler awaits a no-op run in a one-thread pool, as the server awaits onnxruntime

    python -m bench.echo --port 0        # prints "echo serving on 127.0.0.1:PORT"
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc

from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as pb_grpc
from server.eventloop import EVENT_LOOPS, run_loop


class EchoServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, reply: str = "model", classes: int = 10, await_mode: str = "none") -> None:
        self.reply = reply
        self.await_mode = await_mode
        self._pool = None
        if await_mode == "thread":
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="echo-hop")
        self.classes = classes
        self._zeros: dict[int, bytes] = {}

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)

    async def ModelInfer(self, request, context):
        if self.await_mode == "yield":
            await asyncio.sleep(0)
        elif self.await_mode == "thread":
            await asyncio.get_running_loop().run_in_executor(self._pool, int)
        resp = pb.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
        if self.reply == "echo":
            for t in request.inputs:
                resp.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
            resp.raw_output_contents.extend(request.raw_input_contents)
            return resp
        rows = request.inputs[0].shape[0] if request.inputs and request.inputs[0].shape else 1
        data = self._zeros.get(rows)
        if data is None:
            data = self._zeros[rows] = bytes(4 * rows * self.classes)
        for name in ("logits", "probabilities"):
            resp.outputs.add(name=name, datatype="FP32", shape=[rows, self.classes])
            resp.raw_output_contents.append(data)
        return resp


async def serve(
    host: str, port: int, reply: str, max_message_bytes: int = 16 * 1024 * 1024, await_mode: str = "none"
) -> None:
    opts = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]  # the same options as server/app.py
    server = grpc.aio.server(options=opts)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(EchoServicer(reply, await_mode=await_mode), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"echo serving on {host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.echo", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--reply", choices=("model", "echo"), default="model")
    p.add_argument("--await-mode", choices=("none", "yield", "thread"), default="none")
    p.add_argument(
        "--event-loop",
        choices=EVENT_LOOPS,
        default="asyncio",
        help="event loop implementation (the server's `event_loop` setting)",
    )
    a = p.parse_args(argv)
    run_loop(serve(a.host, a.port, a.reply, await_mode=a.await_mode), a.event_loop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
