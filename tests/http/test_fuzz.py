"""Property-based fuzzing of the HTTP side of a running server (hypothesis as a library, as tests/reliability).

Generated requests: infer bodies built from the protocol's own fields with wrong types, shapes, datatypes,
data, parameters and outputs mixed in; binary-extension bodies with arbitrary header lengths and byte
counts; random bytes with random content types; images (random bytes, truncated real PNGs) to classify;
arbitrary paths and methods. Properties: every answer is a documented status (never 500), every error is
`{"error": "<message>"}`, and the server still answers afterwards with its memory bounded.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.conftest import MODEL_NAME, digit_examples
from tests.http.conftest import call

DOCUMENTED = {200, 400, 401, 403, 404, 405, 413, 415, 501, 503, 504}
DATATYPES = [
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
    "FP8",
    "",
    "fp32",
]
MODELS = [MODEL_NAME, "scale-fp32", "scale-uint8", "nope", "", "..", "a/b"]
BATCH = 24

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=8)
)
json_any = st.recursive(
    json_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4), max_leaves=12
)
shape = st.one_of(st.lists(st.integers(-2, 70), max_size=5), st.just([1, 1, 28, 28]), st.just([2, 4]), json_any)
data = st.one_of(
    st.lists(st.floats(allow_nan=False, width=32), max_size=12),
    st.lists(st.integers(-300, 300), max_size=12),
    st.just([0.0] * 784),
    st.lists(st.booleans(), max_size=8),
    json_any,
)
tensor = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["input", "x", ""]) | st.text(max_size=4),
        "datatype": st.sampled_from(DATATYPES),
        "shape": shape,
    },
    optional={
        "data": data,
        "parameters": st.dictionaries(
            st.sampled_from(["binary_data_size", "other"]), st.integers(-5, 5000) | json_leaf, max_size=2
        ),
    },
)
output = st.fixed_dictionaries(
    {"name": st.sampled_from(["logits", "probabilities", "output", "nope"])},
    optional={
        "parameters": st.dictionaries(
            st.sampled_from(["classification", "binary_data"]),
            st.integers(-2, 20) | st.booleans() | json_leaf,
            max_size=2,
        )
    },
)
infer_doc = st.fixed_dictionaries(
    {"inputs": st.lists(tensor, max_size=3) | json_any},
    optional={
        "outputs": st.lists(output, max_size=3),
        "id": json_leaf,
        "parameters": st.dictionaries(
            st.sampled_from(["timeout", "binary_data_output", "x"]),
            st.integers(-5, 10**7) | st.booleans() | json_leaf,
            max_size=3,
        ),
    },
)


@st.composite
def requests(draw):
    kind = draw(st.sampled_from(["json", "binary", "bytes", "image", "path"]))
    model = draw(st.sampled_from(MODELS))
    if kind == "json":
        return (
            "POST",
            f"/v2/models/{model}/infer",
            json.dumps(draw(infer_doc)).encode(),
            {"Content-Type": "application/json"},
        )
    if kind == "binary":
        head = json.dumps(draw(infer_doc)).encode()
        tail = draw(st.binary(max_size=64)) + bytes(draw(st.sampled_from([0, 16, 3136, 6272])))
        n = draw(st.one_of(st.just(len(head)), st.integers(-3, len(head) + len(tail) + 3)))
        return "POST", f"/v2/models/{model}/infer", head + tail, {"Inference-Header-Content-Length": str(n)}
    if kind == "bytes":
        ctype = draw(
            st.sampled_from(
                [
                    "application/json",
                    "application/octet-stream",
                    "text/plain",
                    "image/png",
                    "multipart/form-data; boundary=x",
                    "multipart/form-data",
                    "image/gif",
                ]
            )
        )
        path = draw(
            st.sampled_from(
                [
                    f"/v2/models/{model}/infer",
                    f"/v1/models/{model}/classify",
                    "/v1/classify",
                    "/v2/repository/index",
                    f"/v2/repository/models/{model}/load",
                ]
            )
        )
        return "POST", path, draw(st.binary(max_size=256)), {"Content-Type": ctype}
    if kind == "image":
        real = draw(st.sampled_from(digit_examples()[:4])).read_bytes()
        body = draw(
            st.one_of(
                st.just(real),
                st.binary(max_size=200).map(lambda b: real[:40] + b),
                st.integers(0, len(real)).map(lambda k: real[:k]),
            )
        )
        top_k = draw(st.sampled_from(["", "?top_k=3", "?top_k=-1", "?top_k=x", "?top_k=99999"]))
        return "POST", f"/v1/models/{model}/classify{top_k}", body, {"Content-Type": "image/png"}
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE"]))
    path = draw(
        st.sampled_from(
            [
                f"/v2/models/{model}",
                f"/v2/models/{model}/versions/{quote(draw(st.text(max_size=3)), safe='')}/ready",
                f"/v2/models/{model}/config",
                f"/v2/models/{model}/stats",
                "/v2",
                "/v2/health/ready",
                "/static/../app.js",
                "/static/%00",
                "/v1/models",
                "/nope",
            ]
        )
    )
    return method, path, None if method in ("GET", "DELETE") else b"", {}


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def test_http_fuzz_keeps_serving(http_server):
    sent = {"n": 0}
    rss_before = rss_bytes(http_server.proc.pid)
    pool = ThreadPoolExecutor(8)

    def one(req) -> tuple:
        method, path, body, headers = req
        a = call(http_server.url + path.replace(" ", "%20"), method, body, headers, timeout=60)
        return req, a

    @settings(max_examples=60, deadline=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(st.lists(requests(), min_size=BATCH, max_size=BATCH))
    def batch(reqs):
        for req, a in pool.map(one, reqs):
            sent["n"] += 1
            assert a.status in DOCUMENTED, (req, a.status, a.body[:200])
            if a.status >= 400:
                doc = json.loads(a.body)
                assert isinstance(doc.get("error"), str) and doc["error"], (req, a.body[:200])

    try:
        batch()
    finally:
        pool.shutdown()
    assert sent["n"] >= 60 * BATCH
    assert call(http_server.url + "/v2/health/live").json() == {"live": True}
    status = call(
        f"{http_server.url}/v2/models/{MODEL_NAME}/infer",
        "POST",
        json.dumps(
            {"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}]}
        ).encode(),
    ).status
    assert status == 200
    rss_after = rss_bytes(http_server.proc.pid)
    assert rss_after < rss_before * 1.5 + 64 * 2**20, f"RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB"
