"""Open Inference Protocol REST tensors <-> numpy: JSON `data` and Triton's binary tensor extension.

Pure functions, no I/O, no model: the HTTP adapter calls `decode_infer_request` on a request body and
`encode_infer_response` on the core's answer. What is checked here is only what the wire alone can tell
(JSON shapes and types, byte counts, value ranges); everything about the model is checked by the core.
Error messages name the field as the gRPC decoder does (`inputs[0].shape`, `outputs[1].parameters.classification`,
`parameters.timeout`); where HTTP has its own field the name is HTTP's (`inputs[0].data`,
`inputs[0].parameters.binary_data_size`, the `Inference-Header-Content-Length` header).

The binary extension (Triton, docs/protocol/extension_binary_data.md): the body is a JSON header of
`Inference-Header-Content-Length` bytes followed by the inputs that carry `parameters.binary_data_size`, in
input order, little-endian, BYTES elements each prefixed by a 4-byte little-endian length. Outputs are sent
the same way when asked: an output's `parameters.binary_data: true`, or the request's
`parameters.binary_data_output: true` for every output that does not say otherwise.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from server.errors import InvalidInput

BINARY_HEADER = "Inference-Header-Content-Length"
# Open Inference Protocol datatype -> numpy dtype on the wire (little-endian); BYTES is handled apart.
WIRE_DTYPES: dict[str, np.dtype] = {
    k: np.dtype(v).newbyteorder("<")
    for k, v in {
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
    }.items()
}
DATATYPES = (*WIRE_DTYPES, "BYTES")
MAX_DIMS = 8  # as the gRPC decoder
MAX_ELEMENTS = 2**32  # as the gRPC decoder: far above anything that fits the body limit


@dataclass
class Tensor:
    """One decoded input: `data` is shaped `shape`; BYTES data is an object array of bytes."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    raw: bytes | None = None  # the little-endian bytes, when the tensor came through the binary extension


@dataclass
class Output:
    name: str
    classification: int = 0  # > 0: top-k as BYTES "value:index:label"
    binary: bool | None = None  # None: follow the request's binary_data_output


@dataclass
class Request:
    id: str = ""
    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    timeout_s: float | None = None  # parameters.timeout (us) as seconds; None: not set (or 0)
    binary_data_output: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)  # the request's parameters as sent


# --------------------------------------------------------------------------------------------------
# small checks that word their refusals


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _mapping(v: Any, where: str) -> dict:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise InvalidInput(f"{where}: must be a JSON object, got {type(v).__name__}")
    return v


def _shape(v: Any, where: str) -> tuple[int, ...]:
    if not isinstance(v, list) or not all(_is_int(d) for d in v):
        raise InvalidInput(f"{where}: must be a list of integers, got {json.dumps(v)[:80]}")
    shape = tuple(v)
    count = math.prod(shape)
    if (
        len(shape) > MAX_DIMS
        or (shape and min(shape) < 0)
        or (count if count else math.prod(d for d in shape if d > 0)) > MAX_ELEMENTS
    ):
        raise InvalidInput(
            f"{where}: {list(shape)} is not a valid shape (non-negative, at most {MAX_DIMS} dims, "
            f"at most {MAX_ELEMENTS} elements)"
        )
    return shape


def header_length(value: str | None, body_size: int) -> int | None:
    """The `Inference-Header-Content-Length` header as a JSON prefix length, or None when absent."""
    if value is None:
        return None
    v = value.strip()
    if not v.isdigit() or int(v) > body_size:
        raise InvalidInput(
            f"{BINARY_HEADER} header: must be an integer in 0..{body_size} (the body's size), got {value!r}"
        )
    return int(v)


# --------------------------------------------------------------------------------------------------
# tensors


def _from_json(values: Any, datatype: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    """`data` (flat or nested, row-major) -> an array of `shape`."""
    count = math.prod(shape)
    if not isinstance(values, list):
        raise InvalidInput(
            f"{where}: must be a list of values (flat or nested, row-major), got {type(values).__name__}"
        )
    if datatype == "BYTES":
        flat = _flatten(values, where)
        if not all(isinstance(s, str) for s in flat):
            raise InvalidInput(f"{where}: BYTES values must be strings")
        if len(flat) != count:
            raise InvalidInput(f"{where}: {len(flat)} values, but shape {list(shape)} needs {count}")
        out = np.empty(count, dtype=object)
        out[:] = [s.encode() for s in flat]
        return out.reshape(shape)
    try:
        arr = np.asarray(values)
    except ValueError:
        arr = None
    if arr is None or arr.dtype == object and arr.size:  # ragged nesting, or integers beyond 64 bits
        flat = _flatten(values, where)
        try:
            arr = np.asarray(flat)
        except ValueError:
            raise InvalidInput(f"{where}: values must be numbers (or booleans for BOOL)") from None
    if arr.size != count:
        raise InvalidInput(f"{where}: {arr.size} values, but shape {list(shape)} needs {count}")
    dtype = WIRE_DTYPES[datatype]
    kind = arr.dtype.kind if arr.size else dtype.kind
    if datatype == "BOOL":
        if kind != "b":
            raise InvalidInput(f"{where}: BOOL values must be true or false")
    elif dtype.kind in "iu":
        if kind in "fO":  # numpy turns a mix of int64 and uint64 values into float64: look at the values themselves
            flat = _flatten(values, where)
            if all(_is_int(v) for v in flat):
                lo, hi = min(flat, default=0), max(flat, default=0)
                info = np.iinfo(dtype)
                if lo < info.min or hi > info.max:
                    raise InvalidInput(
                        f"{where}: value {lo if lo < info.min else hi} is out of range for {datatype} "
                        f"({info.min}..{info.max})"
                    )
                return np.array(flat, dtype=dtype.newbyteorder("=")).reshape(shape)
        if kind not in "iu":
            bad = "booleans" if kind == "b" else "non-integer values" if kind == "f" else "values that are not numbers"
            raise InvalidInput(f"{where}: {datatype} needs integers, got {bad}")
        info = np.iinfo(dtype)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            bad = arr.min() if arr.min() < info.min else arr.max()
            raise InvalidInput(f"{where}: value {int(bad)} is out of range for {datatype} ({info.min}..{info.max})")
    elif kind not in "iuf":
        raise InvalidInput(
            f"{where}: {datatype} needs numbers, got {'booleans' if kind == 'b' else 'values that are not numbers'}"
        )
    return arr.astype(dtype.newbyteorder("="), copy=False).reshape(shape)


def _flatten(values: list, where: str) -> list:
    out: list = []
    stack = [iter(values)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                if len(stack) > MAX_DIMS:
                    raise InvalidInput(f"{where}: nested deeper than {MAX_DIMS} levels")
                stack.append(iter(v))
                break
            if isinstance(v, dict):
                raise InvalidInput(f"{where}: values must be numbers, booleans or strings, not objects")
            out.append(v)
        else:
            stack.pop()
    return out


def _bytes_elements(raw: bytes | memoryview, count: int, where: str) -> np.ndarray:
    """BYTES on the wire: each element a 4-byte little-endian length, then that many bytes."""
    out = np.empty(count, dtype=object)
    pos, n = 0, len(raw)
    for i in range(count):
        if pos + 4 > n:
            raise InvalidInput(f"{where}: BYTES data ends after {i} of {count} elements")
        (size,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + size > n:
            raise InvalidInput(f"{where}: BYTES element {i} says {size} bytes; only {n - pos} are left")
        out[i] = bytes(raw[pos : pos + size])
        pos += size
    if pos != n:
        raise InvalidInput(f"{where}: {n - pos} bytes left over after {count} BYTES elements")
    return out


def _from_binary(raw: bytes | memoryview, datatype: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        return _bytes_elements(raw, count, where).reshape(shape)
    dtype = WIRE_DTYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(
            f"{where}: {len(raw)} bytes, but shape {list(shape)} and datatype {datatype} need {count * dtype.itemsize}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


# --------------------------------------------------------------------------------------------------
# requests


def parse_json(text: bytes | memoryview, where: str = "request body") -> dict:
    try:
        doc = json.loads(bytes(text))
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidInput(f"{where}: not valid JSON: {e}") from None
    except RecursionError:  # json.loads recurses once per nested array or object
        raise InvalidInput(f"{where}: arrays or objects nested too deeply to parse") from None
    if not isinstance(doc, dict):
        raise InvalidInput(f"{where}: must be a JSON object, got {type(doc).__name__}")
    return doc


def decode_infer_request(body: bytes, header_len: int | None = None) -> Request:
    """An infer request body -> Request. `header_len`: the Inference-Header-Content-Length value (None: all JSON)."""
    view = memoryview(body)
    doc = parse_json(
        view if header_len is None else view[:header_len],
        "request body" if header_len is None else f"request JSON header ({BINARY_HEADER} bytes)",
    )
    binary = view[header_len:] if header_len is not None else view[:0]
    rid = doc.get("id", "")
    if not isinstance(rid, str):
        raise InvalidInput(f"id: must be a string, got {type(rid).__name__}")
    tensors = doc.get("inputs")
    if not isinstance(tensors, list) or not tensors:
        raise InvalidInput("'inputs' must be a non-empty list of tensors")
    inputs = []
    offset = 0
    for i, t in enumerate(tensors):
        where = f"inputs[{i}]"
        if not isinstance(t, dict):
            raise InvalidInput(f"{where}: must be a JSON object with name, shape, datatype and data")
        name, datatype = t.get("name"), t.get("datatype")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"{where}.name: must be a non-empty string")
        if datatype not in DATATYPES:
            raise InvalidInput(f"{where}.datatype: unsupported datatype {datatype!r} for input '{name}'")
        shape = _shape(t.get("shape"), f"{where}.shape")
        params = _mapping(t.get("parameters"), f"{where}.parameters")
        size = params.get("binary_data_size")
        raw = None
        if size is not None:
            if not _is_int(size) or size < 0:
                raise InvalidInput(f"{where}.parameters.binary_data_size: must be a non-negative integer, got {size!r}")
            if header_len is None:
                raise InvalidInput(
                    f"{where}.parameters.binary_data_size: is set, but the request has no {BINARY_HEADER} "
                    "header to say where the JSON ends"
                )
            if "data" in t:
                raise InvalidInput(
                    f"{where}: both 'data' and parameters.binary_data_size are set; use one or the other"
                )
            if offset + size > len(binary):
                raise InvalidInput(
                    f"{where}.parameters.binary_data_size: {size} bytes from offset {offset}, but the binary "
                    f"part of the body has {len(binary)} bytes"
                )
            raw = binary[offset : offset + size]
            offset += size
            data = _from_binary(raw, datatype, shape, f"{where}.parameters.binary_data_size")
        else:
            if "data" not in t:
                raise InvalidInput(
                    f"{where}.data: missing (or set parameters.binary_data_size and send the tensor as binary)"
                )
            data = _from_json(t["data"], datatype, shape, f"{where}.data")
        inputs.append(
            Tensor(name, datatype, shape, data, bytes(raw) if raw is not None and datatype != "BYTES" else None)
        )
    if offset != len(binary):
        raise InvalidInput(
            f"request body: {len(binary) - offset} bytes after the JSON header are not claimed by any "
            "input's parameters.binary_data_size"
        )
    params = _mapping(doc.get("parameters"), "parameters")
    timeout_s = None
    if "timeout" in params:
        t = params["timeout"]
        if not _is_int(t) or t < 0:
            raise InvalidInput(f"parameters.timeout: must be a non-negative integer of microseconds, got {t!r}")
        timeout_s = t / 1e6 if t > 0 else None
    bdo = params.get("binary_data_output", False)
    if not isinstance(bdo, bool):
        raise InvalidInput(f"parameters.binary_data_output: must be true or false, got {bdo!r}")
    outputs = []
    wanted = doc.get("outputs", [])
    if not isinstance(wanted, list):
        raise InvalidInput(f"'outputs' must be a list, got {type(wanted).__name__}")
    for i, o in enumerate(wanted):
        where = f"outputs[{i}]"
        if not isinstance(o, dict) or not isinstance(o.get("name"), str) or not o["name"]:
            raise InvalidInput(f"{where}.name: must be a non-empty string")
        p = _mapping(o.get("parameters"), f"{where}.parameters")
        k = p.get("classification", 0)
        if "classification" in p and (not _is_int(k) or k < 1):
            raise InvalidInput(f"{where}.parameters.classification: must be a positive integer, got {k!r}")
        b = p.get("binary_data")
        if b is not None and not isinstance(b, bool):
            raise InvalidInput(f"{where}.parameters.binary_data: must be true or false, got {b!r}")
        outputs.append(Output(o["name"], k, b))
    return Request(rid, inputs, outputs, timeout_s, bdo, params)


# --------------------------------------------------------------------------------------------------
# responses


def _le_bytes(data: np.ndarray) -> bytes:
    if data.dtype.byteorder == ">":
        data = data.astype(data.dtype.newbyteorder("<"))
    return np.ascontiguousarray(data).tobytes()


def bytes_tensor(items) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def _json_values(datatype: str, data: Any, name: str) -> list:
    if datatype == "BYTES":
        try:
            return [b.decode() if isinstance(b, bytes) else str(b) for b in np.asarray(data, dtype=object).reshape(-1)]
        except UnicodeDecodeError:
            raise InvalidInput(
                f"outputs '{name}': BYTES output is not UTF-8 text; ask for it with parameters.binary_data: true"
            ) from None
    flat = np.asarray(data).reshape(-1)
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        # JSON has no NaN or Infinity (a strict parser, a browser's JSON.parse, refuses the whole answer):
        # they are written as null, as JSON.stringify and MLServer do; binary_data carries them exactly
        return [v if math.isfinite(v) else None for v in flat.tolist()]
    return flat.tolist()


def encode_infer_response(resp: Any, binary: dict[str, bool] | bool = False) -> tuple[bytes, dict[str, str]]:
    """A core InferResponse (model_name, model_version, id, outputs of name/datatype/shape/data) -> (body, headers).

    `binary`: True for every output, or output name -> True for those to send as binary."""
    outs, blobs = [], []
    for o in resp.outputs:
        entry: dict[str, Any] = {"name": o.name, "datatype": o.datatype, "shape": list(o.shape)}
        if binary is True or (binary and binary.get(o.name)):
            blob = bytes_tensor(o.data) if o.datatype == "BYTES" else _le_bytes(o.data)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_values(o.datatype, o.data, o.name)
        outs.append(entry)
    doc: dict[str, Any] = {"model_name": resp.model_name, "model_version": resp.model_version}
    if resp.id:
        doc["id"] = resp.id
    doc["outputs"] = outs
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return head, {"Content-Type": "application/json"}
    return b"".join([head, *blobs]), {"Content-Type": "application/octet-stream", BINARY_HEADER: str(len(head))}


class BinaryAnswers:
    """`encode_infer_response(resp, True)` for the common answer (numeric outputs, all binary), with the JSON
    header and the HTTP headers built once per (model, version, id, outputs' names, datatypes and shapes)
    and reused: on the hot path only the output bytes change from one request to the next. Bounded: when
    `max_entries` distinct headers were seen (say, clients sending a fresh `id` each time), it starts over."""

    def __init__(self, max_entries: int = 256) -> None:
        self.max_entries = max_entries
        self._heads: dict[tuple, tuple[bytes, dict[str, str]]] = {}

    def encode(self, resp: Any) -> tuple[bytes, dict[str, str]]:
        outs = resp.outputs
        if not outs:
            return encode_infer_response(resp, True)
        key = (resp.model_name, resp.model_version, resp.id, *[(o.name, o.datatype, tuple(o.shape)) for o in outs])
        blobs = []
        for o in outs:
            data = o.data
            if o.datatype == "BYTES" or not isinstance(data, np.ndarray):
                return encode_infer_response(resp, True)
            blobs.append(_le_bytes(data))
        cached = self._heads.get(key)
        if cached is None:
            head, headers = encode_infer_response(resp, True)
            cached = (head[: int(headers[BINARY_HEADER])], headers)
            if len(self._heads) >= self.max_entries:
                self._heads.clear()
            self._heads[key] = cached
        return b"".join([cached[0], *blobs]), cached[1]


def binary_outputs(req: Request, names: list[str]) -> dict[str, bool] | bool:
    """Which of the answer's outputs (by name, in answer order) go as binary."""
    if not req.outputs:
        return req.binary_data_output
    asked = {o.name: o.binary for o in req.outputs}
    return {n: bool(asked[n]) if asked.get(n) is not None else req.binary_data_output for n in names}
