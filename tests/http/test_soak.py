"""HTTP soak: a bounded run of keep-alive REST requests through a real `cnn serve` (good binary-extension and JSON
infer, binary requests each with a fresh `id` that churn the adapter's header caches, image uploads, and a 1-in-10
slice of bad requests), from 4 client threads. Every answer must be the expected one, the server's memory must
stay flat after a warm-up, the metrics must have counted every request, and the server must keep serving.

The gRPC soak (bench/soak.py, tests/reliability) is the longer version of the same idea; this one is sized to
run in the HTTP test suite (a few thousand requests).
"""

from __future__ import annotations

import http.client
import json
import threading
from collections import Counter
from pathlib import Path

from tests.conftest import MODEL_NAME
from tests.http.conftest import call

ROOT = Path(__file__).resolve().parents[2]
WARMUP = 600
REQUESTS = 3000  # after the warm-up, in samples of 500
THREADS = 4
MAX_GROWTH = 32 * 2**20  # RSS after the warm-up -> at the end


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def binary_request(rid: str | None = None, size_delta: int = 0) -> tuple[bytes, dict[str, str]]:
    raw = bytes(4 * 28 * 28)
    doc: dict = {
        "inputs": [
            {
                "name": "input",
                "shape": [1, 1, 28, 28],
                "datatype": "FP32",
                "parameters": {"binary_data_size": len(raw) + size_delta},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    if rid is not None:
        doc["id"] = rid
    head = json.dumps(doc).encode()
    return head + raw, {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}


JSON_BODY = json.dumps(
    {
        "inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}],
        "outputs": [{"name": "probabilities"}],
    }
).encode()
INFER = f"/v2/models/{MODEL_NAME}/infer"


def request_for(i: int, png: bytes) -> tuple[str, str, bytes | None, dict[str, str], int, str]:
    """(method, path, body, headers, expected status, what) for request number i: 1 in 10 bad."""
    if i % 10 == 9:
        bad = [
            ("POST", INFER, b"{not json" + bytes(16), {"Inference-Header-Content-Length": "9"}, 400, "header not JSON"),
            ("POST", INFER, *binary_request(size_delta=4), 400, "binary_data_size too large"),
            ("POST", "/v2/models/no-such-model/infer", *binary_request(), 404, "unknown model"),
            ("POST", INFER, b"{}", {"Content-Type": "text/html"}, 415, "content type"),
            ("GET", INFER, None, {}, 405, "wrong method"),
            (
                "POST",
                INFER,
                json.dumps(
                    {"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 783}]}
                ).encode(),
                {"Content-Type": "application/json"},
                400,
                "JSON count",
            ),
            (
                "POST",
                f"/v1/models/{MODEL_NAME}/classify",
                b"\x89PNG\r\n\x1a\nbroken",
                {"Content-Type": "image/png"},
                400,
                "broken PNG",
            ),
        ]
        return bad[(i // 10) % len(bad)]
    kind = i % 5
    if kind == 0:
        return ("POST", INFER, JSON_BODY, {"Content-Type": "application/json"}, 200, "JSON infer")
    if kind == 1:
        return ("POST", INFER, *binary_request(rid=f"soak-{i}"), 200, "binary infer, fresh id")
    if kind == 2:
        return ("POST", f"/v1/models/{MODEL_NAME}/classify", png, {"Content-Type": "image/png"}, 200, "classify")
    return ("POST", INFER, *binary_request(), 200, "binary infer")


def check_answer(what: str, status: int, headers: http.client.HTTPMessage, body: bytes) -> str | None:
    """None when a 200 answer has the expected content; else why not."""
    if what.startswith("binary infer"):
        n = int(headers.get("Inference-Header-Content-Length", "-1"))
        head = json.loads(body[:n])
        sizes = [o["parameters"]["binary_data_size"] for o in head["outputs"]]
        if sorted(o["name"] for o in head["outputs"]) != ["logits", "probabilities"] or sizes != [40, 40]:
            return f"unexpected binary answer header {head}"
        if len(body) != n + 80 or (what.endswith("fresh id") and not head.get("id", "").startswith("soak-")):
            return f"binary answer of {len(body)} bytes, header {head}"
    elif what == "JSON infer":
        out = json.loads(body)["outputs"]
        if [o["name"] for o in out] != ["probabilities"] or abs(sum(out[0]["data"]) - 1) > 1e-3:
            return f"unexpected JSON answer {out}"
    elif what == "classify" and not json.loads(body)["results"][0]["top_k"]:
        return "classify answer without top_k"
    return None


def run(base: str, start: int, count: int, png: bytes) -> tuple[Counter, list[str]]:
    host, port = base.split("://", 1)[1].rsplit(":", 1)
    tally: Counter = Counter()
    wrong: list[str] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            for i in range(start + k, start + count, THREADS):
                method, path, body, headers, expected, what = request_for(i, png)
                conn.request(method, path, body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
                problem = None
                if r.status != expected:
                    problem = f"{what}: status {r.status}, expected {expected}: {data[:200]!r}"
                elif expected == 200:
                    problem = check_answer(what, r.status, r.headers, data)
                elif "error" not in json.loads(data):
                    problem = f"{what}: error answer without 'error': {data[:200]!r}"
                with lock:
                    tally[(what, r.status)] += 1
                    if problem:
                        wrong.append(problem)
                if r.will_close:  # the server may close after some refusals: reconnect, as a client would
                    conn.close()
                    conn = http.client.HTTPConnection(host, int(port), timeout=60)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tally, wrong


def protocol_count(base: str, rpc: str, code: str) -> float:
    text = call(f"{base}/metrics").body.decode()
    want = f'cnn_protocol_requests_total{{code="{code}",protocol="http",rpc="{rpc}"}} '
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(want))


def test_http_soak_answers_every_request_right_and_memory_stays_flat(http_server):
    png = sorted((ROOT / "examples" / "digits").glob("*.png"))[0].read_bytes()
    base, pid = http_server.url, http_server.proc.pid
    tally, wrong = run(base, 0, WARMUP, png)
    assert not wrong, wrong[:5]
    infer_ok_before = protocol_count(base, "ModelInfer", "OK")
    rss = [rss_bytes(pid)]
    total: Counter = Counter()
    for s in range(REQUESTS // 500):
        tally, wrong = run(base, WARMUP + 500 * s, 500, png)
        assert not wrong, wrong[:5]
        total.update(tally)
        rss.append(rss_bytes(pid))
    print(
        f"\nHTTP soak: {sum(total.values())} requests after {WARMUP} warm-up; "
        f"RSS MiB {[round(r / 2**20, 1) for r in rss]}; answers {dict(sorted(total.items()))}"
    )
    assert sum(total.values()) == REQUESTS
    assert sum(n for (_, status), n in total.items() if status >= 400) == REQUESTS // 10
    infer_ok = sum(n for (what, status), n in total.items() if status == 200 and "infer" in what)
    assert protocol_count(base, "ModelInfer", "OK") - infer_ok_before == infer_ok
    assert rss[-1] - rss[0] < MAX_GROWTH, f"RSS grew {(rss[-1] - rss[0]) / 2**20:.1f} MiB over {REQUESTS} requests"
    assert call(f"{base}/v2/health/ready").status == 200
