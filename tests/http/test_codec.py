"""The REST tensor codec (server/http/codec.py) in-process: JSON and binary tensors of every datatype,
nested and flat data, parameters, outputs, and refusals that name the field."""

from __future__ import annotations

import json
import struct
from types import SimpleNamespace

import numpy as np
import pytest

from server.errors import InvalidInput
from server.http import codec

NUMERIC = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


def sample(datatype: str, shape=(2, 3)) -> np.ndarray:
    rng = np.random.default_rng(0)
    if datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(bool)
    dt = np.dtype(NUMERIC[datatype])
    if dt.kind in "iu":
        info = np.iinfo(dt)
        vals = np.array([info.min, info.max, 0, 1, info.max // 3, info.min // 2 if info.min else 7], dtype=dt)
        return vals[: int(np.prod(shape))].reshape(shape)
    return rng.standard_normal(shape).astype(dt)


def body(doc: dict) -> bytes:
    return json.dumps(doc).encode()


def binary_body(doc: dict, *blobs: bytes) -> tuple[bytes, int]:
    head = body(doc)
    return head + b"".join(blobs), len(head)


@pytest.mark.parametrize("datatype", list(NUMERIC))
@pytest.mark.parametrize("nested", [False, True])
def test_json_round_trip_every_numeric_datatype(datatype, nested):
    x = sample(datatype)
    data = x.tolist() if nested else x.reshape(-1).tolist()
    req = codec.decode_infer_request(
        body({"inputs": [{"name": "x", "shape": [2, 3], "datatype": datatype, "data": data}]})
    )
    t = req.inputs[0]
    assert (t.name, t.datatype, t.shape, t.raw) == ("x", datatype, (2, 3), None)
    assert t.data.dtype == np.dtype(NUMERIC[datatype])
    np.testing.assert_array_equal(t.data, x)


@pytest.mark.parametrize("datatype", list(NUMERIC))
def test_binary_round_trip_every_numeric_datatype(datatype):
    x = sample(datatype)
    raw = x.astype(x.dtype.newbyteorder("<")).tobytes()
    b, n = binary_body(
        {
            "inputs": [
                {"name": "x", "shape": [2, 3], "datatype": datatype, "parameters": {"binary_data_size": len(raw)}}
            ]
        },
        raw,
    )
    t = codec.decode_infer_request(b, n).inputs[0]
    np.testing.assert_array_equal(t.data, x)
    assert t.raw == raw


def test_bytes_json_and_binary():
    words = [b"seven", b"", "\u00e9t\u00e9".encode()]
    req = codec.decode_infer_request(
        body({"inputs": [{"name": "s", "shape": [3], "datatype": "BYTES", "data": [w.decode() for w in words]}]})
    )
    assert list(req.inputs[0].data) == words
    raw = codec.bytes_tensor(words)
    b, n = binary_body(
        {"inputs": [{"name": "s", "shape": [1, 3], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}]},
        raw,
    )
    t = codec.decode_infer_request(b, n).inputs[0]
    assert t.shape == (1, 3) and list(t.data.reshape(-1)) == words


def test_two_binary_inputs_in_order_and_mixed_with_json():
    a = np.arange(4, dtype=np.float32)
    c = np.arange(3, dtype=np.int64)
    b, n = binary_body(
        {
            "inputs": [
                {"name": "a", "shape": [4], "datatype": "FP32", "parameters": {"binary_data_size": 16}},
                {"name": "j", "shape": [2], "datatype": "INT8", "data": [1, -2]},
                {"name": "c", "shape": [3], "datatype": "INT64", "parameters": {"binary_data_size": 24}},
            ]
        },
        a.tobytes(),
        c.tobytes(),
    )
    ins = codec.decode_infer_request(b, n).inputs
    np.testing.assert_array_equal(ins[0].data, a)
    np.testing.assert_array_equal(ins[1].data, [1, -2])
    np.testing.assert_array_equal(ins[2].data, c)


def test_parameters_outputs_and_id():
    req = codec.decode_infer_request(
        body(
            {
                "id": "r1",
                "parameters": {"timeout": 2500, "binary_data_output": True, "priority": 3},
                "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.5]}],
                "outputs": [
                    {"name": "probabilities", "parameters": {"classification": 3}},
                    {"name": "logits", "parameters": {"binary_data": False}},
                ],
            }
        )
    )
    assert req.id == "r1" and req.timeout_s == pytest.approx(0.0025) and req.binary_data_output
    assert [(o.name, o.classification, o.binary) for o in req.outputs] == [
        ("probabilities", 3, None),
        ("logits", 0, False),
    ]
    assert codec.binary_outputs(req, ["probabilities", "logits"]) == {"probabilities": True, "logits": False}
    assert req.parameters["priority"] == 3


@pytest.mark.parametrize(
    "doc,header,field",
    [
        (b"{not json", None, "request body: not valid JSON"),
        (b"[1, 2]", None, "request body: must be a JSON object"),
        (body({"inputs": []}), None, "'inputs' must be a non-empty list"),
        (
            body({"inputs": [{"name": "x", "shape": [2], "datatype": "FP8", "data": [1, 2]}]}),
            None,
            "inputs[0].datatype",
        ),
        (
            body({"inputs": [{"name": "x", "shape": [2, -1], "datatype": "FP32", "data": [1, 2]}]}),
            None,
            "inputs[0].shape",
        ),
        (body({"inputs": [{"name": "x", "shape": "2", "datatype": "FP32", "data": [1, 2]}]}), None, "inputs[0].shape"),
        (
            body({"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}]}),
            None,
            "inputs[0].data: 2 values, but shape [3] needs 3",
        ),
        (
            body({"inputs": [{"name": "x", "shape": [2], "datatype": "INT8", "data": [1, 300]}]}),
            None,
            "inputs[0].data: value 300 is out of range for INT8",
        ),
        (
            body({"inputs": [{"name": "x", "shape": [2], "datatype": "UINT8", "data": [1, -1]}]}),
            None,
            "out of range for UINT8",
        ),
        (
            body({"inputs": [{"name": "x", "shape": [2], "datatype": "INT32", "data": [1, 2.5]}]}),
            None,
            "inputs[0].data: INT32 needs integers",
        ),
        (
            body({"inputs": [{"name": "x", "shape": [2], "datatype": "BOOL", "data": [1, 0]}]}),
            None,
            "BOOL values must be true or false",
        ),
        (
            body({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": ["a", "b"]}]}),
            None,
            "inputs[0].data",
        ),
        (
            body({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3]]}]}),
            None,
            "inputs[0].data",
        ),
        (body({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32"}]}), None, "inputs[0].data: missing"),
        (body({"inputs": [{"shape": [2], "datatype": "FP32", "data": [1, 2]}]}), None, "inputs[0].name"),
        (
            body(
                {
                    "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
                    "parameters": {"timeout": -1},
                }
            ),
            None,
            "parameters.timeout",
        ),
        (
            body(
                {
                    "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
                    "parameters": {"binary_data_output": "yes"},
                }
            ),
            None,
            "parameters.binary_data_output",
        ),
        (
            body(
                {
                    "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
                    "outputs": [{"name": "y", "parameters": {"classification": 0}}],
                }
            ),
            None,
            "outputs[0].parameters.classification",
        ),
        (
            body({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], "outputs": [{}]}),
            None,
            "outputs[0].name",
        ),
        (
            body({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]}),
            None,
            "inputs[0].parameters.binary_data_size: is set, but the request has no Inference-Header-Content-Length",
        ),
    ],
)
def test_refusals_name_the_field(doc, header, field):
    with pytest.raises(InvalidInput) as e:
        codec.decode_infer_request(doc, header)
    assert field in str(e.value)


def test_binary_refusals():
    head = {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}
    b, n = binary_body(head, bytes(4))
    with pytest.raises(InvalidInput, match=r"inputs\[0\].parameters.binary_data_size: 8 bytes from offset 0"):
        codec.decode_infer_request(b, n)
    b, n = binary_body(head, bytes(12))
    with pytest.raises(InvalidInput, match="4 bytes after the JSON header are not claimed"):
        codec.decode_infer_request(b, n)
    wrong = {"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}
    b, n = binary_body(wrong, bytes(8))
    with pytest.raises(InvalidInput, match=r"8 bytes, but shape \[3\] and datatype FP32 need 12"):
        codec.decode_infer_request(b, n)
    trunc = {"inputs": [{"name": "s", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 9}}]}
    b, n = binary_body(trunc, struct.pack("<I", 5) + b"hello")
    with pytest.raises(InvalidInput, match="BYTES data ends after 1 of 2 elements"):
        codec.decode_infer_request(b, n)
    with pytest.raises(InvalidInput, match="Inference-Header-Content-Length header"):
        codec.header_length("12x", 100)
    with pytest.raises(InvalidInput, match="Inference-Header-Content-Length header"):
        codec.header_length("101", 100)
    assert codec.header_length(None, 5) is None and codec.header_length(" 7 ", 9) == 7


def _response(*outputs):
    return SimpleNamespace(model_name="m", model_version="2", id="abc", outputs=[SimpleNamespace(**o) for o in outputs])


def test_encode_json_and_binary_outputs():
    probs = np.array([[0.25, 0.75]], dtype=np.float32)
    labels = [b"0.750000:1:one", b"0.250000:0:zero"]
    resp = _response(
        {"name": "probabilities", "datatype": "FP32", "shape": (1, 2), "data": probs},
        {"name": "top", "datatype": "BYTES", "shape": (1, 2), "data": labels},
    )
    text, headers = codec.encode_infer_response(resp)
    assert headers == {"Content-Type": "application/json"}
    doc = json.loads(text)
    assert doc == {
        "model_name": "m",
        "model_version": "2",
        "id": "abc",
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [1, 2], "data": [0.25, 0.75]},
            {"name": "top", "datatype": "BYTES", "shape": [1, 2], "data": ["0.750000:1:one", "0.250000:0:zero"]},
        ],
    }

    blob, headers = codec.encode_infer_response(resp, {"probabilities": True, "top": False})
    n = int(headers[codec.BINARY_HEADER])
    head = json.loads(blob[:n])
    assert head["outputs"][0]["parameters"] == {"binary_data_size": 8} and "data" not in head["outputs"][0]
    np.testing.assert_array_equal(np.frombuffer(blob[n:], dtype="<f4").reshape(1, 2), probs)
    assert head["outputs"][1]["data"] == ["0.750000:1:one", "0.250000:0:zero"]

    blob, headers = codec.encode_infer_response(resp, True)
    n = int(headers[codec.BINARY_HEADER])
    assert blob[n + 8 :] == codec.bytes_tensor(labels)


def test_encode_big_endian_and_fp16():
    x = np.arange(3, dtype=">f4")
    blob, headers = codec.encode_infer_response(
        _response({"name": "y", "datatype": "FP32", "shape": (3,), "data": x}), True
    )
    assert np.frombuffer(blob[int(headers[codec.BINARY_HEADER]) :], dtype="<f4").tolist() == [0.0, 1.0, 2.0]
    h = np.array([0.5, -2.0], dtype=np.float16)
    text, _ = codec.encode_infer_response(_response({"name": "h", "datatype": "FP16", "shape": (2,), "data": h}))
    assert json.loads(text)["outputs"][0]["data"] == [0.5, -2.0]


def test_non_utf8_bytes_output_needs_binary():
    resp = _response({"name": "b", "datatype": "BYTES", "shape": (1,), "data": [b"\xff\xfe"]})
    with pytest.raises(InvalidInput, match="binary_data"):
        codec.encode_infer_response(resp)
    blob, _headers = codec.encode_infer_response(resp, True)
    assert blob.endswith(struct.pack("<I", 2) + b"\xff\xfe")
