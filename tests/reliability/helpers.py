"""Shared helpers for the reliability tests: raw protocol stubs, metric reading, crafted images, RSS.

Protocol messages are built with tritonclient's `service_pb2` (never `protos.inference`: the pytest
process must not register the `inference.*` names twice; see tests/conftest.py).
"""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import grpc
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from protos.cnn import classification_pb2 as cpb
from protos.cnn import classification_pb2_grpc as cpb_grpc
from tests.conftest import MODEL_NAME, digit_examples

LENET_SHAPE = (1, 28, 28)
# What a client may see from this server, by the README and server/grpc/status.py (never INTERNAL/UNKNOWN).
DOCUMENTED_CODES = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


class Stubs:
    """One channel to a server, with the inference, classification and raw stubs on it."""

    def __init__(self, address: str, max_message_bytes: int = 64 * 1024 * 1024) -> None:
        opts = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        self.channel = grpc.insecure_channel(address, options=opts)
        self.infer = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.classify = cpb_grpc.ClassificationStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Stubs:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def lenet_request(rows: int = 1, fill: float = 0.0, model: str = MODEL_NAME, version: str = "") -> pb.ModelInferRequest:
    """A valid raw-contents ModelInferRequest for the LeNet-5 test model."""
    req = pb.ModelInferRequest(model_name=model, model_version=version)
    req.inputs.add(name="input", datatype="FP32", shape=[rows, *LENET_SHAPE])
    req.raw_input_contents.append(np.full((rows, *LENET_SHAPE), fill, dtype="<f4").tobytes())
    return req


def classify_request(images: list[bytes] | None = None, **kw) -> cpb.ClassifyRequest:
    images = images if images is not None else [digit_examples()[0].read_bytes()]
    return cpb.ClassifyRequest(images=[cpb.Image(encoded=b) for b in images], **kw)


# --------------------------------------------------------------------------------------------------
# metrics


def metric_sum(text: str, sample: str, **labels: str) -> float:
    """Sum of the samples named `sample` whose labels include `labels` (0.0 if none)."""
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def requests_total(server, rpc: str, code: str, **labels: str) -> float:
    return metric_sum(server.metrics_text(), "cnn_requests_total", rpc=rpc, code=code, **labels)


def wait_for_metric(server, sample: str, at_least: float, timeout_s: float = 3.0, **labels: str) -> float:
    """The adapter records an RPC in a `finally` that may run just after the client has its answer:
    poll briefly until the sample reaches `at_least`, then return its value (asserted by the caller)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = metric_sum(server.metrics_text(), sample, **labels)
        if value >= at_least or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


# --------------------------------------------------------------------------------------------------
# process


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


# --------------------------------------------------------------------------------------------------
# crafted images


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header(width: int, height: int, color_type: int = 0, bit_depth: int = 8, idat: bytes | None = None) -> bytes:
    """A syntactically valid PNG whose IHDR claims width x height, followed by a tiny IDAT.

    With big dimensions this is a decompression bomb in miniature: a few dozen bytes that would need
    width * height bytes once decoded."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    body = idat if idat is not None else zlib.compress(b"\x00" * 64, 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def digit_png() -> bytes:
    return digit_examples()[0].read_bytes()


def digit_jpeg(quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.open(digit_examples()[0]).convert("L").resize((64, 64)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def big_png(side: int = 256) -> bytes:
    """A real PNG with enough pixel data that cutting it leaves the header but not the pixels."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


def jpeg_with_components(n: int) -> bytes:
    """A grayscale JPEG whose SOF0 header is rewritten to declare `n` colour components (Pillow knows
    1, 3 and 4: any other count is a colour layout the server cannot take)."""
    data = digit_jpeg()
    i = 2
    while i < len(data):
        assert data[i] == 0xFF, "malformed JPEG marker walk"
        marker = data[i + 1]
        seglen = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker == 0xC0:  # SOF0: len, precision, height, width, Nf, Nf x (id, sampling, table)
            seg = data[i + 4 : i + 2 + seglen]
            precision, height, width, nf = seg[0], seg[1:3], seg[3:5], seg[5]
            assert nf == 1
            comps = b"".join(bytes([k + 1, 0x11, 0]) for k in range(n))
            new = bytes([precision]) + height + width + bytes([n]) + comps
            return data[: i + 2] + struct.pack(">H", len(new) + 2) + new + data[i + 2 + seglen :]
        i += 2 + seglen
    raise AssertionError("no SOF0 in the JPEG")
