"""Property-based fuzzing of the running server with hypothesis (used as a library: its pytest plugin is
off, see pyproject.toml).

Generated protocol messages (ModelInferRequest with arbitrary names, datatypes, shapes, raw bytes,
typed contents, parameters and outputs; ClassifyRequest with random bytes, corrupted real PNG/JPEG
files, crafted headers and raw pixels; the metadata RPCs with arbitrary names and versions) go to one
real server, many at once (grpc futures). The properties:

- no crash: the server process is alive and ServerLive answers true afterwards;
- no hang: every call carries a deadline, and DEADLINE_EXCEEDED only answers a request that asked
  for a short `timeout` itself;
- only documented status codes (never INTERNAL or UNKNOWN), and every error has a message;
- bounded memory: the server's resident set after the run is within a generous bound of before.

Each hypothesis example is a batch of requests sent concurrently; the default run sends well over
10,000 requests (the count and the wall time are printed, `-s` shows them).
"""

from __future__ import annotations

import io
import math
import time

import grpc
import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.conftest import MODEL_NAME, digit_examples
from tests.reliability.helpers import DOCUMENTED_CODES, Stubs, cpb, lenet_request, pb, png_header, rss_bytes

BATCH = 32  # requests per hypothesis example, sent concurrently
CALL_TIMEOUT_S = 60.0  # far above any honest answer: hitting it means a hang
SHORT_TIMEOUT_US = 200_000  # requests asking for less than this may legitimately end DEADLINE_EXCEEDED

MODELS = [MODEL_NAME, "scale-fp32", "scale-uint8", "halfbroken"]
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
]
ITEMSIZE = {
    "BOOL": 1,
    "UINT8": 1,
    "INT8": 1,
    "UINT16": 2,
    "INT16": 2,
    "FP16": 2,
    "UINT32": 4,
    "INT32": 4,
    "FP32": 4,
    "UINT64": 8,
    "INT64": 8,
    "FP64": 8,
    "BYTES": 1,
}
TYPED_FIELDS = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=16),
}
EDGE_DIMS = [0, 1, 2, 4, 8, 28, 64, 65, 2**31 - 1, 2**31, 2**32, 2**32 + 1, 2**62, 2**63 - 1, -1, -(2**63)]


# ---------------------------------------------------------------------------------------------------
# strategies: Open Inference Protocol


# Strategies are built once, at import: building them inside a draw costs more than the draw itself.
names = st.one_of(st.sampled_from(["input", "x", "", "input "]), st.text(max_size=12))
model_names = st.one_of(st.sampled_from(MODELS + ["", "nope"]), st.text(max_size=16))
versions = st.one_of(
    st.sampled_from(["", "1", "2", "3", "0", "01", "-1", "1.0", "\u00b2", "\u0661", "9" * 30]), st.text(max_size=6)
)
datatypes = st.one_of(st.sampled_from(DATATYPES), st.text(max_size=6))
any_dim = st.one_of(st.sampled_from(EDGE_DIMS), st.integers(-(2**63), 2**63 - 1), st.integers(0, 6))
shapes = st.one_of(
    st.tuples(st.integers(0, 70), st.just(1), st.sampled_from([28, 27, 1]), st.just(28)).map(list),  # LeNet-like
    st.tuples(st.integers(0, 10), st.sampled_from([4, 3, 0])).map(list),  # scale-model-like
    st.lists(any_dim, max_size=10),
)
special_floats = st.lists(st.sampled_from([0.0, np.nan, np.inf, -np.inf, 1e38, -0.0, 7e4]), min_size=1, max_size=4)
typed_values = {f: st.lists(v, min_size=1, max_size=8) for f, v in TYPED_FIELDS.items()}
# datatype -> the typed field that carries it (server/grpc/inference.py TYPED_FIELD); a wrong one is tried too
FIELD_OF = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
param_values = st.one_of(
    st.tuples(st.just("bool_param"), st.booleans()),
    st.tuples(st.just("int64_param"), st.integers(-(2**63), 2**63 - 1) | st.integers(-2, 2_000_000)),
    st.tuples(st.just("string_param"), st.text(max_size=8)),
    st.tuples(st.just("double_param"), st.floats()),
    st.tuples(st.just("uint64_param"), st.integers(0, 2**64 - 1)),
)
request_params = st.dictionaries(st.sampled_from(["timeout", "priority", "sequence_id", "x"]), param_values, max_size=3)
input_params = st.dictionaries(
    st.sampled_from(["binary_data_size", "shared_memory_region", "x"]), param_values, max_size=2
)
output_params = st.dictionaries(st.sampled_from(["classification", "binary_data", "x"]), param_values, max_size=2)
output_names = st.one_of(st.sampled_from(["logits", "probabilities", "output", "nope", ""]), st.text(max_size=8))
seeds = st.integers(0, 2**32 - 1)


def _count(shape) -> int | None:
    """Elements of a shape if it is small and valid (then a matching payload can be generated)."""
    if any(d < 0 for d in shape):
        return None
    n = math.prod(shape)
    return n if n <= 70 * 28 * 28 else None


def _set_params(target, params) -> None:
    for key, (kind, value) in params.items():
        setattr(target[key], kind, value)


@st.composite
def infer_requests(draw):
    req = pb.ModelInferRequest(model_name=draw(model_names), model_version=draw(versions), id=draw(st.text(max_size=8)))
    mode = draw(st.sampled_from(["raw", "raw", "typed", "mixed", "none"]))
    for _ in range(draw(st.integers(0, 3))):
        datatype = draw(datatypes)
        shape = draw(shapes)
        t = req.inputs.add(name=draw(names), datatype=datatype, shape=shape)
        count = _count(shape)
        if mode in ("raw", "mixed"):
            if count is not None and draw(st.booleans()):  # the right byte length, random or special values
                dt = {"FP32": "<f4", "FP16": "<f2", "FP64": "<f8"}.get(datatype)
                if dt and draw(st.booleans()):
                    with np.errstate(over="ignore"):
                        data = np.resize(np.array(draw(special_floats)), count).astype(dt).tobytes()
                else:
                    data = np.random.default_rng(draw(seeds)).bytes(count * ITEMSIZE.get(datatype, 4))
            else:
                data = draw(st.binary(max_size=64))
            req.raw_input_contents.append(data)
        if mode in ("typed", "mixed") and draw(st.booleans()):
            field = FIELD_OF.get(datatype) if draw(st.booleans()) else None
            field = field or draw(st.sampled_from(sorted(TYPED_FIELDS)))
            values = draw(typed_values[field])
            if count is not None and count <= 4096 and draw(st.booleans()):  # the right number of values
                values = (values * (count // len(values) + 1))[:count]
            getattr(t.contents, field).extend(values)
        _set_params(t.parameters, draw(input_params))
    if draw(st.integers(0, 9)) == 0:  # stray extra raw entries
        req.raw_input_contents.append(draw(st.binary(max_size=8)))
    for _ in range(draw(st.integers(0, 4))):
        o = req.outputs.add(name=draw(output_names))
        _set_params(o.parameters, draw(output_params))
    _set_params(req.parameters, draw(request_params))
    return req


# ---------------------------------------------------------------------------------------------------
# strategies: cnn.v1.Classification


def _encoded_samples() -> list[bytes]:
    out = [f.read_bytes() for f in digit_examples()[:3]]
    img = Image.open(digit_examples()[0])
    for fmt, mode in (("JPEG", "L"), ("JPEG", "RGB"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "I;16"), ("JPEG", "CMYK")):
        buf = io.BytesIO()
        img.convert(mode).save(buf, fmt)
        out.append(buf.getvalue())
    return out


SAMPLES = _encoded_samples()


edits = st.lists(
    st.tuples(
        st.sampled_from(["flip", "truncate", "insert", "delete"]), st.floats(0, 1), st.binary(min_size=1, max_size=16)
    ),
    max_size=4,
)


@st.composite
def corrupted(draw):
    """A real PNG/JPEG with a few bytes flipped, inserted or deleted, or cut short."""
    data = bytearray(draw(st.sampled_from(SAMPLES)))
    for op, where, blob in draw(edits):
        pos = int(where * max(len(data) - 1, 0))
        if op == "flip" and data:
            data[pos] ^= blob[0] or 0xFF
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = blob
        elif data:
            del data[pos : pos + len(blob) * 4]
    return bytes(data)


crafted_headers = st.builds(
    png_header,
    st.integers(0, 2**31 - 1) | st.integers(0, 5000),
    st.integers(0, 2**31 - 1) | st.integers(0, 5000),
    st.sampled_from([0, 2, 3, 4, 6, 1, 7]),
    st.sampled_from([1, 2, 4, 8, 16, 3]),
)


raw_sides = st.integers(0, 40) | st.sampled_from([2**32 - 1, 8193, 4096])
raw_channels = st.integers(0, 5) | st.sampled_from([2**32 - 1])


@st.composite
def raw_images(draw):
    h, w, c = draw(raw_sides), draw(raw_sides), draw(raw_channels)
    if h * w * c <= 40 * 40 * 4 and draw(st.booleans()):
        pixels = np.random.default_rng(draw(seeds)).bytes(h * w * c)
    else:
        pixels = draw(st.binary(max_size=64))
    return cpb.Image(raw=cpb.RawImage(pixels=pixels, height=h, width=w, channels=c))


images = st.one_of(
    st.builds(lambda b: cpb.Image(encoded=b), st.binary(max_size=128)),
    st.builds(lambda b: cpb.Image(encoded=b), corrupted()),
    st.builds(lambda b: cpb.Image(encoded=b), crafted_headers),
    st.builds(lambda b: cpb.Image(encoded=b), st.sampled_from(SAMPLES)),
    raw_images(),
    st.just(cpb.Image()),
)

classify_requests = st.builds(
    lambda name, version, imgs, k: cpb.ClassifyRequest(model_name=name, model_version=version, images=imgs, top_k=k),
    st.one_of(st.sampled_from(["", "", MODEL_NAME, "scale-fp32", "nope"]), st.text(max_size=8)),
    st.one_of(st.sampled_from(["", "", "1", "2"]), versions),
    st.lists(images, max_size=4),
    st.integers(0, 2**32 - 1) | st.integers(0, 12),
)


# ---------------------------------------------------------------------------------------------------
# strategies: the other RPCs that take a model name and version


metadata_requests = st.one_of(
    st.builds(lambda n, v: ("ModelMetadata", pb.ModelMetadataRequest(name=n, version=v)), model_names, versions),
    st.builds(lambda n, v: ("ModelConfig", pb.ModelConfigRequest(name=n, version=v)), model_names, versions),
    st.builds(lambda n, v: ("ModelReady", pb.ModelReadyRequest(name=n, version=v)), model_names, versions),
    st.builds(lambda n, v: ("ModelStatistics", pb.ModelStatisticsRequest(name=n, version=v)), model_names, versions),
    st.builds(lambda r: ("RepositoryIndex", pb.RepositoryIndexRequest(ready=r)), st.booleans()),
)

calls = st.one_of(
    st.builds(lambda r: ("ModelInfer", r), infer_requests()),
    st.builds(lambda r: ("ModelInfer", r), infer_requests()),
    st.builds(lambda r: ("Classify", r), classify_requests),
    metadata_requests,
)


# ---------------------------------------------------------------------------------------------------
# strategies: hostile sizes (issue 18): typed contents far above max_batch_size, Classify images whose
# few encoded bytes declare many (16-bit) pixels, calls above the per-call pixel budget


def _png(side_w: int, side_h: int, mode: str) -> bytes:
    dtype = np.uint16 if mode == "I;16" else np.uint8
    a = np.zeros((side_h, side_w), dtype)
    a[0, 0] = 40000 if mode == "I;16" else 200
    buf = io.BytesIO()
    (Image.fromarray(a) if mode == "I;16" else Image.fromarray(a, "L")).save(buf, "PNG")
    return buf.getvalue()


HOSTILE_IMAGES = [
    _png(w, h, m)
    for w, h, m in (
        (4096, 4096, "I;16"),
        (4096, 4096, "L"),
        (2048, 4096, "I;16"),
        (8192, 2048, "L"),
        (1, 4096, "I;16"),
        (300, 200, "I;16"),
    )
]


@st.composite
def hostile_typed_requests(draw):
    """Typed contents with a right-sized value list for far more rows than the model takes (or a wrong count)."""
    rows = draw(st.sampled_from([65, 100, 1000, 4000]))
    req = pb.ModelInferRequest(model_name=MODEL_NAME)
    field = draw(st.sampled_from(["fp32_contents", "fp32_contents", "int_contents", "fp64_contents"]))
    datatype = {"fp32_contents": "FP32", "int_contents": "INT32", "fp64_contents": "FP64"}[field]
    count = rows * 28 * 28 + draw(st.sampled_from([0, 0, -1, 1]))
    t = req.inputs.add(name="input", datatype=datatype, shape=[rows, 1, 28, 28])
    getattr(t.contents, field).extend(
        np.zeros(max(count, 0), dtype=np.int32 if field == "int_contents" else np.float64).tolist()
    )
    return req


hostile_classify_requests = st.builds(
    lambda imgs: cpb.ClassifyRequest(model_name=MODEL_NAME, images=[cpb.Image(encoded=b) for b in imgs]),
    st.lists(st.sampled_from(HOSTILE_IMAGES), min_size=1, max_size=8),
)

hostile_calls = st.one_of(
    st.builds(lambda r: ("ModelInfer", r), hostile_typed_requests()),
    st.builds(lambda r: ("Classify", r), hostile_classify_requests),
)


# ---------------------------------------------------------------------------------------------------
# the properties


def _short_timeout(rpc: str, req) -> bool:
    if rpc != "ModelInfer" or "timeout" not in req.parameters:
        return False
    p = req.parameters["timeout"]
    v = getattr(p, p.WhichOneof("parameter_choice")) if p.WhichOneof("parameter_choice") else None
    return isinstance(v, int) and not isinstance(v, bool) and 0 < v < SHORT_TIMEOUT_US


# No shrinking: a crash leaves nothing to shrink against, and every other failure is collected with the
# request that showed it (shrinking against a live server would cost minutes). No example database:
# nothing is written into the working tree.
FUZZ_SETTINGS = dict(
    deadline=None,
    database=None,
    phases=(Phase.explicit, Phase.generate),
    print_blob=True,
    suppress_health_check=list(HealthCheck),
)


class Tally:
    """Outcomes of every generated request; violations are grouped by kind (rpc, code, message start)
    so that one run reports every distinct failure, each with a few of the requests that showed it."""

    def __init__(self) -> None:
        self.sent = 0
        self.codes: dict[str, int] = {}
        self.violations: dict[tuple[str, str, str], list] = {}  # kind -> [count, first examples]

    def record(self, rpc: str, req, code: grpc.StatusCode, details: str) -> None:
        self.sent += 1
        self.codes[code.name] = self.codes.get(code.name, 0) + 1
        bad = None
        if code not in DOCUMENTED_CODES:
            bad = f"undocumented {code.name}"
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED and not _short_timeout(rpc, req):
            bad = "DEADLINE_EXCEEDED without a short timeout (a hang)"
        elif code != grpc.StatusCode.OK and not details:
            bad = f"{code.name} without a message"
        if bad:
            entry = self.violations.setdefault((rpc, bad, details[:40]), [0, []])
            entry[0] += 1
            example = f"{details!r}; request: {str(req)[:400]!r}"
            if len(entry[1]) < 3 and example not in entry[1]:  # one message can stand for several causes
                entry[1].append(example)

    def report(self) -> list[str]:
        return [
            f"{n} x {rpc}: {bad}:\n      " + "\n      ".join(examples)
            for (rpc, bad, _), (n, examples) in sorted(self.violations.items())
        ]


def _start_batch(stubs: Stubs, batch) -> list:
    """Send every request of the batch at once (grpc futures, each with a deadline)."""
    futures = []
    for rpc, req in batch:
        stub = stubs.classify if rpc == "Classify" else stubs.infer
        futures.append((rpc, req, getattr(stub, rpc).future(req, timeout=CALL_TIMEOUT_S)))
    return futures


def _finish_batch(futures: list, tally: Tally) -> None:
    for rpc, req, f in futures:
        try:
            f.result()
            tally.record(rpc, req, grpc.StatusCode.OK, "")
        except grpc.RpcError as e:
            tally.record(rpc, req, e.code(), e.details() or "")


def _send_batch(stubs: Stubs, batch, tally: Tally) -> None:
    _finish_batch(_start_batch(stubs, batch), tally)


def _alive(server, stubs: Stubs) -> None:
    assert server.proc.poll() is None, f"server exited with {server.proc.returncode}:\n{server.log()[-3000:]}"
    assert stubs.infer.ServerLive(pb.ServerLiveRequest(), timeout=10).live
    ok = stubs.infer.ModelInfer(lenet_request(rows=2), timeout=30)
    assert ok.model_name == MODEL_NAME and len(ok.outputs) == 2


def _fuzz(server, strategy, examples: int, label: str) -> Tally:
    tally = Tally()
    with Stubs(server.address) as stubs:
        _alive(server, stubs)

        in_flight: list = []

        @settings(max_examples=examples, **FUZZ_SETTINGS)
        @given(st.lists(strategy, min_size=BATCH, max_size=BATCH))
        def run(batch):
            # pipelined: this batch goes out, then the previous one is collected, so that generating the
            # next batch overlaps with the server answering this one
            previous = in_flight[:]
            in_flight[:] = _start_batch(stubs, batch)
            _finish_batch(previous, tally)
            # a crash stops the run at once; every other violation is collected and asserted at the end
            assert server.proc.poll() is None, f"server died:\n{server.log()[-3000:]}"

        t0 = time.perf_counter()
        try:
            run()
            _finish_batch(in_flight, tally)
        finally:
            elapsed = time.perf_counter() - t0
            print(
                f"\nfuzz {label}: {tally.sent} requests in {elapsed:.1f} s ({tally.sent / max(elapsed, 1e-9):.0f}/s); "
                f"codes {dict(sorted(tally.codes.items()))}"
            )
        _alive(server, stubs)
    return tally


def test_fuzz_every_rpc_answers_with_documented_codes_and_memory_stays_bounded(rel_server):
    with Stubs(rel_server.address) as stubs:  # warm: first decodes, first batches, allocator pools
        for _ in range(3):
            _send_batch(
                stubs,
                [
                    ("ModelInfer", lenet_request(rows=64)),
                    ("Classify", cpb.ClassifyRequest(images=[cpb.Image(encoded=b) for b in SAMPLES])),
                ]
                * 8,
                Tally(),
            )
    rss_before = rss_bytes(rel_server.proc.pid)
    tally = _fuzz(rel_server, calls, examples=330, label="mixed")
    rss_after = rss_bytes(rel_server.proc.pid)
    growth = rss_after - rss_before
    print(f"server RSS {rss_before / 2**20:.0f} MiB -> {rss_after / 2**20:.0f} MiB ({growth / 2**20:+.0f} MiB)")
    assert tally.sent >= 10_000, f"only {tally.sent} requests were generated"
    assert not tally.violations, "\n".join(tally.report())
    # both sides of the contract were exercised, not only refusals
    assert tally.codes.get("OK", 0) > 100 and tally.codes.get("INVALID_ARGUMENT", 0) > 1000
    assert growth < max(256 * 2**20, rss_before), f"server RSS grew by {growth / 2**20:.0f} MiB"


def test_fuzz_stream_answers_every_request_in_band(rel_server):
    """Generated requests over ModelStreamInfer streams: one answer per request, each carrying its
    request id, errors in-band and never internal, and every stream itself ends OK."""
    sent, problems = [], []

    @settings(max_examples=12, **FUZZ_SETTINGS)
    @given(st.lists(infer_requests(), min_size=48, max_size=48))
    def run(batch):
        for i, r in enumerate(batch):
            r.id = f"r{i}"
            if "timeout" in r.parameters:
                del r.parameters["timeout"]
        with Stubs(rel_server.address) as stubs:
            answers = list(stubs.infer.ModelStreamInfer(iter(batch), timeout=CALL_TIMEOUT_S))
        sent.append(len(batch))
        ids = sorted(a.infer_response.id for a in answers)
        if ids != sorted(f"r{i}" for i in range(len(batch))):
            problems.append(
                f"answers {len(answers)} for {len(batch)} requests; unattributed: "
                f"{[a.error_message for a in answers if not a.infer_response.id][:3]}"
            )
        problems.extend(
            f"internal error in-band: {a.error_message}"
            for a in answers
            if a.error_message.startswith("internal error")
        )
        assert rel_server.proc.poll() is None, f"server died:\n{rel_server.log()[-3000:]}"

    run()
    assert sum(sent) >= 500
    assert not problems, "\n".join(sorted(set(problems))[:20])
    with Stubs(rel_server.address) as stubs:
        _alive(rel_server, stubs)


def test_fuzz_hostile_sizes_are_refused_or_served_and_memory_stays_bounded(rel_server):
    """Typed contents for thousands of rows (max_batch_size 64) and Classify calls of 16-bit and
    limit-size images, many at once: documented codes only, a live server, bounded memory."""
    with Stubs(rel_server.address) as stubs:
        _send_batch(
            stubs,
            [("Classify", cpb.ClassifyRequest(model_name=MODEL_NAME, images=[cpb.Image(encoded=HOSTILE_IMAGES[0])]))],
            Tally(),
        )
    rss_before = rss_bytes(rel_server.proc.pid)
    tally = Tally()
    with Stubs(rel_server.address) as stubs:

        @settings(max_examples=12, **FUZZ_SETTINGS)
        @given(st.lists(hostile_calls, min_size=8, max_size=8))
        def run(batch):
            _send_batch(stubs, batch, tally)
            assert rel_server.proc.poll() is None, f"server died:\n{rel_server.log()[-3000:]}"

        run()
        _alive(rel_server, stubs)
    growth = rss_bytes(rel_server.proc.pid) - rss_before
    print(
        f"\nfuzz hostile sizes: {tally.sent} requests; codes {dict(sorted(tally.codes.items()))}; RSS {growth / 2**20:+.0f} MiB"
    )
    assert tally.sent >= 90
    assert not tally.violations, "\n".join(tally.report())
    assert tally.codes.get("INVALID_ARGUMENT", 0) > 10 and tally.codes.get("OK", 0) > 0
    assert growth < 512 * 2**20, f"server RSS grew by {growth / 2**20:.0f} MiB"
