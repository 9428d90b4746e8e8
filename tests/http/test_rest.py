"""The REST binding through a real socket of a real `cnn serve`: every endpoint, JSON and binary tensors,
images, and bad input that gets the right status and leaves the server serving."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
from PIL import Image

from tests.conftest import MODEL_NAME, digit_examples
from tests.http.conftest import MAX_BODY, MAX_PIXELS, SCALE_DATATYPES, call

NP = {"FP32": np.float32, "FP16": np.float16, "UINT8": np.uint8, "INT64": np.int64}


def post_json(url: str, doc) -> tuple[int, dict]:
    a = call(url, "POST", json.dumps(doc).encode(), {"Content-Type": "application/json"})
    return a.status, a.json()


def lenet_json(rows: int = 1, **extra) -> dict:
    x = np.random.default_rng(rows).random((rows, 1, 28, 28), dtype=np.float32)
    return {
        "inputs": [{"name": "input", "shape": [rows, 1, 28, 28], "datatype": "FP32", "data": x.ravel().tolist()}],
        **extra,
    }


def binary_request(x: np.ndarray, **params) -> tuple[bytes, dict]:
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": params,
        }
    ).encode()
    return head + x.tobytes(), {
        "Inference-Header-Content-Length": str(len(head)),
        "Content-Type": "application/octet-stream",
    }


def test_health_metadata_and_repository(http_server):
    u = http_server.url
    assert call(u + "/v2/health/live").json() == {"live": True}
    assert call(u + "/v2/health/ready").status == 200
    md = call(u + "/v2").json()
    assert md["name"] == "cnn-stack" and "classification" in md["extensions"]
    m = call(f"{u}/v2/models/{MODEL_NAME}").json()
    assert m["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert [o["name"] for o in m["outputs"]] == ["logits", "probabilities"] and m["versions"] == ["1"]
    assert call(f"{u}/v2/models/{MODEL_NAME}/versions/1").json() == m
    assert call(f"{u}/v2/models/{MODEL_NAME}/ready").status == 200
    assert call(f"{u}/v2/models/{MODEL_NAME}/versions/1/ready").json() == {"name": MODEL_NAME, "ready": True}
    nr = call(f"{u}/v2/models/{MODEL_NAME}/versions/7/ready")
    assert nr.status == 503 and "version 7" in nr.json()["error"]
    cfg = call(f"{u}/v2/models/{MODEL_NAME}/config").json()
    assert (
        cfg["max_batch_size"] == 64
        and cfg["input"][0]["dims"] == [1, 28, 28]
        and cfg["input"][0]["data_type"] == "TYPE_FP32"
    )
    assert cfg["parameters"]["labels"]["string_value"].split(",") == [str(i) for i in range(10)]
    assert call(f"{u}/v2/models/{MODEL_NAME}/versions/1/config").json() == cfg
    index = call(u + "/v2/repository/index", "POST", b'{"ready": true}').json()
    assert {"name": MODEL_NAME, "version": "1", "state": "READY", "reason": ""} in index
    assert call(u + "/v2/repository/index").json() == call(u + "/v2/repository/index", "POST", b"").json()
    models = call(u + "/v1/models").json()
    assert models["default_model"] == MODEL_NAME
    assert {m["name"] for m in models["models"]} == {MODEL_NAME} | {f"scale-{d.lower()}" for d in SCALE_DATATYPES}


def test_json_infer_with_classification_and_statistics(http_server):
    u = http_server.url
    before = call(f"{u}/v2/models/{MODEL_NAME}/stats").json()["model_stats"][0]
    status, doc = post_json(
        f"{u}/v2/models/{MODEL_NAME}/infer",
        lenet_json(
            3, id="req-1", outputs=[{"name": "probabilities", "parameters": {"classification": 2}}, {"name": "logits"}]
        ),
    )
    assert status == 200, doc
    assert doc["id"] == "req-1" and doc["model_version"] == "1"
    cls, logits = doc["outputs"]
    assert cls["datatype"] == "BYTES" and cls["shape"] == [3, 2]
    assert all(len(s.split(":")) == 3 for s in cls["data"])
    assert logits["shape"] == [3, 10] and len(logits["data"]) == 30
    after = call(f"{u}/v2/models/{MODEL_NAME}/versions/1/stats").json()["model_stats"][0]
    assert after["inference_count"] >= before["inference_count"] + 3
    assert after["inference_stats"]["success"]["count"] > before["inference_stats"]["success"]["count"]
    all_stats = call(u + "/v2/models/stats").json()["model_stats"]
    assert {s["name"] for s in all_stats} >= {MODEL_NAME, "scale-fp32"}


def test_binary_infer_matches_json(http_server):
    u = http_server.url
    x = np.random.default_rng(5).random((2, 1, 28, 28), dtype=np.float32)
    body, headers = binary_request(x, binary_data_output=True)
    a = call(f"{u}/v2/models/{MODEL_NAME}/infer", "POST", body, headers)
    assert a.status == 200, a.body[:300]
    n = int(a.headers["Inference-Header-Content-Length"])
    head = json.loads(a.body[:n])
    sizes = [o["parameters"]["binary_data_size"] for o in head["outputs"]]
    assert sizes == [80, 80] and len(a.body) == n + 160
    probs_bin = np.frombuffer(a.body[n + 80 :], dtype="<f4").reshape(2, 10)
    status, doc = post_json(
        f"{u}/v2/models/{MODEL_NAME}/versions/1/infer",
        {"inputs": [{"name": "input", "shape": [2, 1, 28, 28], "datatype": "FP32", "data": x.tolist()}]},
    )
    assert status == 200, doc
    probs_json = np.array(doc["outputs"][1]["data"], dtype=np.float32).reshape(2, 10)
    np.testing.assert_allclose(probs_bin, probs_json, rtol=1e-6)
    # binary outputs only for the output that asks; JSON for the other
    head2 = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [2, 1, 28, 28],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [
                {"name": "logits", "parameters": {"binary_data": False}},
                {"name": "probabilities", "parameters": {"binary_data": True}},
            ],
        }
    ).encode()
    a = call(
        f"{u}/v2/models/{MODEL_NAME}/infer",
        "POST",
        head2 + x.tobytes(),
        {"Inference-Header-Content-Length": str(len(head2))},
    )
    n = int(a.headers["Inference-Header-Content-Length"])
    outs = json.loads(a.body[:n])["outputs"]
    assert "data" in outs[0] and outs[1]["parameters"] == {"binary_data_size": 80}
    np.testing.assert_allclose(np.frombuffer(a.body[n:], dtype="<f4").reshape(2, 10), probs_json, rtol=1e-6)


@pytest.mark.parametrize("datatype", SCALE_DATATYPES)
@pytest.mark.parametrize("binary", [False, True])
def test_datatypes_json_and_binary(http_server, datatype, binary):
    x = np.array([[0, 1, 2, 3], [10, 20, 30, 40]], dtype=NP[datatype])
    want = (x.astype(np.float32) * 2).astype(NP[datatype])
    url = f"{http_server.url}/v2/models/scale-{datatype.lower()}/infer"
    if binary:
        raw = x.astype(x.dtype.newbyteorder("<")).tobytes()
        head = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [2, 4],
                        "datatype": datatype,
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ],
                "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
            }
        ).encode()
        a = call(url, "POST", head + raw, {"Inference-Header-Content-Length": str(len(head))})
        assert a.status == 200, a.body
        n = int(a.headers["Inference-Header-Content-Length"])
        got = np.frombuffer(a.body[n:], dtype=np.dtype(NP[datatype]).newbyteorder("<")).reshape(2, 4)
    else:
        status, doc = post_json(
            url, {"inputs": [{"name": "input", "shape": [2, 4], "datatype": datatype, "data": x.tolist()}]}
        )
        assert status == 200, doc
        assert doc["outputs"][0]["datatype"] == datatype
        got = np.array(doc["outputs"][0]["data"], dtype=NP[datatype]).reshape(2, 4)
    np.testing.assert_array_equal(got, want)


def test_classify_raw_and_multipart(http_server):
    u = http_server.url
    files = digit_examples()[:3]
    a = call(
        f"{u}/v1/models/{MODEL_NAME}/classify?top_k=3", "POST", files[0].read_bytes(), {"Content-Type": "image/png"}
    )
    assert a.status == 200, a.body
    doc = a.json()
    r = doc["results"][0]
    assert r["image"] == "body" and r["model"] == MODEL_NAME and r["version"] == "1" and len(r["top_k"]) == 3
    assert r["top_k"][0]["label"] == files[0].name.split("_")[0]
    assert set(r["top_k"][0]) == {"label", "index", "probability"} and "model_input" not in r
    a = call(
        f"{u}/v1/models/{MODEL_NAME}/classify?return_input=true",
        "POST",
        files[0].read_bytes(),
        {"Content-Type": "image/png"},
    )
    seen = a.json()["results"][0]["model_input"]
    assert seen["shape"] == [1, 28, 28] and len(seen["data"]) == 784 and max(seen["data"]) > min(seen["data"])
    boundary = "----cnnstack"
    parts = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"; filename="{f.name}"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + f.read_bytes()
        + b"\r\n"
        for i, f in enumerate(files)
    )
    parts += f"--{boundary}--\r\n".encode()
    a = call(f"{u}/v1/classify", "POST", parts, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert a.status == 200, a.body
    results = a.json()["results"]
    assert [x["image"] for x in results] == [f.name for f in files]
    assert [x["top_k"][0]["label"] for x in results] == [f.name.split("_")[0] for f in files]
    assert all(len(x["top_k"]) == 1 for x in results)  # top_k 0 -> 1


def test_explain_answers_or_says_501(http_server):
    a = call(
        f"{http_server.url}/v1/models/{MODEL_NAME}/explain",
        "POST",
        digit_examples()[0].read_bytes(),
        {"Content-Type": "image/png"},
    )
    if a.status == 501:
        assert "explain" in a.json()["error"]
        return
    assert a.status == 200, a.body
    hm = a.json()["results"][0]["heatmaps"][0]
    assert len(hm["values"]) == hm["height"] * hm["width"]


SHORT_HEAD = json.dumps(
    {
        "inputs": [
            {"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "parameters": {"binary_data_size": 3136}}
        ]
    }
).encode()
SHORT_BINARY = SHORT_HEAD + bytes(100)  # the header promises 3,136 bytes; 100 follow


def png_bytes(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (w, h)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "path,method,body,headers,status,words",
    [
        (
            "/v2/models/{m}/infer",
            "POST",
            b"{not json",
            {"Content-Type": "application/json"},
            400,
            "request body: not valid JSON",
        ),
        ("/v2/models/{m}/infer", "POST", b'{"inputs": []}', {}, 400, "'inputs' must be a non-empty list"),
        (
            "/v2/models/{m}/infer",
            "POST",
            json.dumps(
                {"inputs": [{"name": "input", "shape": [1, 1, 28, 27], "datatype": "FP32", "data": [0.0] * 756}]}
            ).encode(),
            {},
            400,
            "inputs[0].shape",
        ),
        (
            "/v2/models/{m}/infer",
            "POST",
            json.dumps(
                {"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP64", "data": [0.0] * 784}]}
            ).encode(),
            {},
            400,
            "inputs[0].datatype",
        ),
        (
            "/v2/models/{m}/infer",
            "POST",
            json.dumps(
                {"inputs": [{"name": "x", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}]}
            ).encode(),
            {},
            400,
            "inputs[0].name",
        ),
        (
            "/v2/models/{m}/infer",
            "POST",
            json.dumps(lenet_json(1, outputs=[{"name": "nope"}])).encode(),
            {},
            400,
            "outputs[0].name",
        ),
        ("/v2/models/{m}/infer", "POST", json.dumps(lenet_json(65)).encode(), {}, 400, "max_batch_size"),
        (
            "/v2/models/{m}/infer",
            "POST",
            SHORT_BINARY,
            {"Inference-Header-Content-Length": str(len(SHORT_HEAD))},
            400,
            "inputs[0].parameters.binary_data_size: 3136 bytes from offset 0, but the binary part of the body has 100 bytes",
        ),
        (
            "/v2/models/{m}/infer",
            "POST",
            b"{}",
            {"Inference-Header-Content-Length": "99"},
            400,
            "Inference-Header-Content-Length",
        ),
        ("/v2/models/{m}/infer", "POST", b"{}", {"Content-Type": "image/png"}, 415, "Content-Type"),
        ("/v2/models/{m}/infer", "POST", bytes(MAX_BODY + 1), {}, 413, ""),
        ("/v2/models/nope/infer", "POST", json.dumps(lenet_json()).encode(), {}, 404, "unknown model 'nope'"),
        ("/v2/models/{m}/versions/9/infer", "POST", json.dumps(lenet_json()).encode(), {}, 404, "9"),
        ("/v2/models/{m}/versions/x/infer", "POST", json.dumps(lenet_json()).encode(), {}, 404, "model_version"),
        ("/v2/models/nope", "GET", None, {}, 404, "nope"),
        ("/v2/models/nope/config", "GET", None, {}, 404, "nope"),
        ("/v2/models/nope/stats", "GET", None, {}, 404, "nope"),
        ("/v2/repository/index", "POST", b'{"ready": "yes"}', {}, 400, "ready"),
        ("/v2/nothing", "GET", None, {}, 404, "no such endpoint"),
        ("/v2/health/live", "DELETE", None, {}, 405, "Method Not Allowed"),
        ("/v1/models/{m}/classify", "POST", b"GIF89a", {"Content-Type": "image/gif"}, 415, "Content-Type"),
        ("/v1/models/{m}/classify", "POST", b"not an image", {"Content-Type": "image/png"}, 400, "images[0].encoded"),
        ("/v1/models/{m}/classify", "POST", b"", {"Content-Type": "image/png"}, 400, "images[0].encoded: empty"),
        (
            "/v1/models/{m}/classify",
            "POST",
            png_bytes(1001, 1000),
            {"Content-Type": "image/png"},
            413,
            f"the limit is {MAX_PIXELS} pixels",
        ),
        ("/v1/models/{m}/classify", "POST", bytes(MAX_BODY + 1), {"Content-Type": "image/png"}, 413, ""),
        ("/v1/models/{m}/classify?top_k=-1", "POST", b"x", {"Content-Type": "image/png"}, 400, "top_k"),
        ("/v1/models/nope/classify", "POST", b"x", {"Content-Type": "image/png"}, 404, "nope"),
        (
            "/v1/models/{m}/classify",
            "POST",
            b"--b--\r\n",
            {"Content-Type": "multipart/form-data; boundary=b"},
            400,
            "no file parts",
        ),
        (
            "/v1/classify",
            "POST",
            b"\xf2",
            {"Content-Type": "multipart/form-data; boundary=x"},
            400,
            "multipart/form-data",
        ),
        ("/v1/classify", "POST", b"--x\r\n", {"Content-Type": "multipart/form-data"}, 400, "multipart/form-data"),
    ],
)
def test_bad_input_gets_its_status_and_the_server_keeps_serving(
    http_server, path, method, body, headers, status, words
):
    a = call(http_server.url + path.format(m=MODEL_NAME), method, body, headers)
    assert a.status == status, a.body[:300]
    assert a.headers["Content-Type"].startswith("application/json")
    assert words in a.json()["error"]
    status2, doc = post_json(f"{http_server.url}/v2/models/{MODEL_NAME}/infer", lenet_json())
    assert status2 == 200 and doc["outputs"][1]["shape"] == [1, 10]


def test_load_and_unload(http_server):
    u = http_server.url
    name = "scale-int64"
    assert call(f"{u}/v2/repository/models/{name}/unload", "POST", b"").status == 200
    assert call(f"{u}/v2/models/{name}/ready").status == 503
    status, doc = post_json(
        f"{u}/v2/models/{name}/infer",
        {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3, 4]}]},
    )
    assert status in (404, 503), doc
    assert call(f"{u}/v2/repository/models/{name}/load", "POST", b"{}").status == 200
    assert call(f"{u}/v2/models/{name}/ready").status == 200
    assert call(f"{u}/v2/repository/models/missing/load", "POST").status in (400, 404)


def test_page_openapi_and_metrics_are_served(http_server):
    u = http_server.url
    page = call(u + "/")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html") and b"<canvas" in page.body
    for asset in ("app.js", "app.css"):
        assert call(f"{u}/static/{asset}").status == 200
    assert call(u + "/static/nope.js").status == 404
    spec = call(u + "/openapi.json").json()
    assert spec["openapi"].startswith("3.") and "/v2/models/{model}/infer" in spec["paths"]
    live = call(u + "/v1/stats/live").json()
    assert set(live) == {"window_s", "requests_per_s", "requests_total", "in_flight", "latency_ms"}
    metrics = call(u + "/metrics").body.decode()
    assert 'protocol="http"' in metrics and "cnn_protocol_requests_total" in metrics


def test_bytes_output_length_prefixed(http_server):
    """Classification outputs over the binary extension: BYTES elements, each with a 4-byte length."""
    x = np.zeros((1, 1, 28, 28), dtype=np.float32)
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 1, 28, 28],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"classification": 2, "binary_data": True}}],
        }
    ).encode()
    a = call(
        f"{http_server.url}/v2/models/{MODEL_NAME}/infer",
        "POST",
        head + x.tobytes(),
        {"Inference-Header-Content-Length": str(len(head))},
    )
    n = int(a.headers["Inference-Header-Content-Length"])
    blob = a.body[n:]
    items = []
    while blob:
        (k,) = struct.unpack_from("<I", blob)
        items.append(blob[4 : 4 + k].decode())
        blob = blob[4 + k :]
    assert len(items) == 2 and all(i.count(":") == 2 for i in items)
