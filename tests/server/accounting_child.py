"""ModelInfer, ModelStreamInfer and Classify are accounted the same way: requests by code and duration per
call (per message for the stream) at the adapter, success/fail and rows in the core. The gRPC servicers are
called in-process with a stand-in context (no socket).

Run as a child process by tests/server/test_core_accounting.py: it imports the server's `inference` stubs,
which the pytest process must not (tritonclient registers the same protobuf names there).
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from protos.inference import grpc_service_pb2 as pb
from server.grpc.inference import InferenceServicer
from tests.server.core_fixtures import core_service, run
from tests.server.onnx_models import publish, scale_model


class Context:
    """What the servicers use of grpc.aio's context; abort raises AbortError as grpc.aio's does."""

    def __init__(self) -> None:
        self.aborted: list[tuple[str, str]] = []

    def time_remaining(self):
        return None

    async def abort(self, code, details):
        self.aborted.append((code.name, details))
        raise grpc.aio.AbortError()


def _request(rows: int, width: int = 4, rid: str = "") -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="m", id=rid)
    req.inputs.add(name="input", datatype="FP32", shape=[rows, width])
    req.raw_input_contents.append(np.ones((rows, width), "<f4").tobytes())
    return req


def _sample(metrics, name: str, labels: dict) -> float:
    for fam in metrics.registry.collect():
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def check_stream_messages_are_recorded_like_unary_calls(repo) -> None:
    async def main():
        async with core_service(repo) as s:
            servicer = InferenceServicer(s, s.metrics)
            ctx = Context()
            await servicer.ModelInfer(_request(2), ctx)
            with pytest.raises(grpc.aio.AbortError):
                await servicer.ModelInfer(_request(9), ctx)  # over max_batch_size
            assert ctx.aborted == [
                ("INVALID_ARGUMENT", "inputs[0].shape: batch of 9 rows exceeds max_batch_size 8 of model 'm'")
            ]

            async def messages():
                for r in (_request(1, rid="a"), _request(3, rid="b"), _request(9, rid="c")):
                    yield r

            answers = [a async for a in servicer.ModelStreamInfer(messages(), ctx)]
            return answers, s.metrics, s.statistics("m")[0]

    answers, m, st = run(main())
    assert sorted(a.infer_response.id for a in answers) == ["a", "b", "c"]
    assert [a.error_message for a in answers if a.infer_response.id == "c"][0].startswith("inputs[0].shape: batch of 9")
    for rpc, ok, bad in (("ModelInfer", 1, 1), ("ModelStreamInfer", 2, 1)):
        version = "1" if rpc == "ModelInfer" else ""  # stream answers carry no version label (metrics.init_version)
        assert _sample(m, "cnn_requests_total", {"rpc": rpc, "model": "m", "version": version, "code": "OK"}) == ok
        assert _sample(m, "cnn_requests_total", {"rpc": rpc, "model": "m", "code": "INVALID_ARGUMENT"}) == bad
        # every call or message has its duration, the stream's too
        assert _sample(m, "cnn_request_duration_seconds_count", {"rpc": rpc, "model": "m"}) == ok + bad, rpc
    # the core counted the three that reached the model: 2 + 1 + 3 rows
    assert (st.success.count, st.fail.count, st.inference_count) == (3, 0, 6)
    assert _sample(m, "cnn_inference_rows_total", {"model": "m", "version": "1"}) == 6


if __name__ == "__main__":
    import sys
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        publish(Path(d), "m", scale_model("FP32", width=4), max_batch_size=8)
        check_stream_messages_are_recorded_like_unary_calls(Path(d))
    print("accounting ok")
    sys.exit(0)
