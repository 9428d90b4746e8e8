"""The binary infer fast path's caches (server/http/v2.py CommonHeaders, server/http/codec.py BinaryAnswers): they
answer exactly what the uncached code answers, stay bounded, never cache a refusal, and never let a cached header
skip the check of the body that follows it (through a real server)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from server.core.types import InferOutput, InferResponse
from server.errors import InvalidInput
from server.http import codec, v2
from tests.conftest import MODEL_NAME
from tests.http.conftest import call

HEADER = json.dumps(
    {
        "inputs": [
            {"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "parameters": {"binary_data_size": 3136}}
        ],
        "parameters": {"binary_data_output": True},
    }
).encode()


def response(rid: str = "", rows: int = 1, dtype=np.float32) -> InferResponse:
    rng = np.random.default_rng(rows)
    outs = [
        InferOutput(n, "FP32" if dtype == np.float32 else "INT64", (rows, 10), rng.random((rows, 10)).astype(dtype))
        for n in ("logits", "probabilities")
    ]
    return InferResponse(MODEL_NAME, "1", rid, outs)


@pytest.mark.parametrize(
    "rid,rows,dtype", [("", 1, np.float32), ("a", 1, np.float32), ("", 3, np.float32), ("x", 2, np.int64)]
)
def test_binary_answers_equal_the_uncached_encoder_every_time(rid, rows, dtype):
    answers = codec.BinaryAnswers()
    want = codec.encode_infer_response(response(rid, rows, dtype), True)
    assert answers.encode(response(rid, rows, dtype)) == want  # built
    assert answers.encode(response(rid, rows, dtype)) == want  # reused
    other = response(rid, rows, dtype)
    other.outputs[0].data = other.outputs[0].data + 1  # same header, other bytes
    assert answers.encode(other) == codec.encode_infer_response(other, True)


def test_binary_answers_bytes_outputs_and_bound():
    answers = codec.BinaryAnswers(max_entries=4)
    r = InferResponse(MODEL_NAME, "1", "", [InferOutput("labels", "BYTES", (1, 2), [b"0.9:7:seven", b"0.1:1:one"])])
    assert answers.encode(r) == codec.encode_infer_response(r, True)
    for i in range(10):  # a fresh id per request: a new header each time, the cache stays bounded
        r = response(f"id-{i}")
        body, headers = answers.encode(r)
        assert (body, headers) == codec.encode_infer_response(r, True)
        assert json.loads(body[: int(headers[codec.BINARY_HEADER])])["id"] == f"id-{i}"
        assert len(answers._heads) <= 4


def test_common_headers_match_the_uncached_check_and_stay_bounded():
    cache = v2.CommonHeaders(max_entries=3, max_header_bytes=400)
    assert cache.common(HEADER) == v2._common(json.loads(HEADER)) == ("input", "FP32", (1, 1, 28, 28), "", 3136, True)
    assert cache.common(HEADER) == cache.common(bytes(HEADER))
    not_common = json.dumps(
        {
            "inputs": [
                {"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "parameters": {"binary_data_size": 3136}}
            ],
            "outputs": [{"name": "logits"}],
        }
    ).encode()
    assert cache.common(not_common) is None
    flag = json.loads(HEADER)
    flag["inputs"][0]["parameters"]["binary_data_size"] = True  # a bool is no size
    assert cache.common(json.dumps(flag).encode()) is None
    for i in range(8):
        doc = json.loads(HEADER)
        doc["id"] = f"r{i}"
        assert cache.common(json.dumps(doc).encode())[3] == f"r{i}"
        assert len(cache._seen) <= 3
    big = json.loads(HEADER)
    big["id"] = "x" * 500
    assert cache.common(json.dumps(big).encode())[3] == "x" * 500
    assert json.dumps(big).encode() not in cache._seen  # above max_header_bytes: answered, not kept
    for _ in range(2):  # a refusal is raised every time, never cached
        with pytest.raises(InvalidInput, match="not valid JSON"):
            cache.common(b"{not json")
    assert b"{not json" not in cache._seen


def test_a_cached_header_does_not_skip_the_body_check(http_server):
    url = f"{http_server.url}/v2/models/{MODEL_NAME}/infer"
    headers = {codec.BINARY_HEADER: str(len(HEADER)), "Content-Type": "application/octet-stream"}
    good = call(url, "POST", HEADER + bytes(3136), headers)
    assert good.status == 200, good.body
    for body in (HEADER + bytes(3132), HEADER + bytes(3140)):  # the same (cached) header, a body of the wrong size
        a = call(url, "POST", body, headers)
        assert a.status == 400, a.body
        assert "binary_data_size" in a.json()["error"] or "not claimed" in a.json()["error"], a.json()
    again = call(url, "POST", HEADER + np.ones(784, np.float32).tobytes(), headers)
    assert again.status == 200
    n = int(again.headers[codec.BINARY_HEADER])
    head = json.loads(again.body[:n])
    assert [o["parameters"]["binary_data_size"] for o in head["outputs"]] == [40, 40]
    probs = np.frombuffer(again.body[n + 40 :], np.float32)
    assert abs(probs.sum() - 1) < 1e-4
