"""Find the external-data file locations an ONNX file refers to, without the `onnx` package.

The serving install has no `onnx`, so this walks the protobuf wire format of ModelProto directly:
ModelProto.graph(7) -> GraphProto.initializer(5) / node(1).attribute(5).{t(5), g(6), tensors(10),
graphs(11)} -> TensorProto.external_data(13) entries {key(1), value(2)} with key == "location".
"""

from __future__ import annotations

from pathlib import Path

from server.errors import RepositoryError


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: memoryview):
    """Yield (field_number, wire_type, value) where value is a memoryview for length-delimited fields."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(buf, i)
            yield field, wt, v
        elif wt == 1:
            i += 8
        elif wt == 2:
            n, i = _varint(buf, i)
            if i + n > len(buf):
                raise ValueError("truncated length-delimited field")
            yield field, wt, buf[i:i + n]
            i += n
        elif wt == 5:
            i += 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        if i > len(buf):
            raise ValueError("truncated field")


def _tensor_locations(t: memoryview, out: list[str]) -> None:
    for f, wt, v in _fields(t):
        if f == 13 and wt == 2:  # external_data: StringStringEntryProto
            kv = {ff: bytes(vv).decode("utf-8", "replace") for ff, wwt, vv in _fields(v) if wwt == 2}
            if kv.get(1) == "location":
                out.append(kv.get(2, ""))


def _graph_locations(g: memoryview, out: list[str], depth: int = 0) -> None:
    if depth > 32:
        raise ValueError("subgraphs nested too deeply")
    for f, wt, v in _fields(g):
        if wt != 2:
            continue
        if f == 5:  # initializer
            _tensor_locations(v, out)
        elif f == 1:  # node
            for nf, nwt, nv in _fields(v):
                if nf == 5 and nwt == 2:  # attribute
                    for af, awt, av in _fields(nv):
                        if awt != 2:
                            continue
                        if af in (5, 10):
                            _tensor_locations(av, out)
                        elif af in (6, 11):
                            _graph_locations(av, out, depth + 1)


def external_data_locations(path: str | Path) -> list[str]:
    path = Path(path)
    try:
        data = memoryview(path.read_bytes())
    except OSError as e:
        raise RepositoryError(f"{path}: cannot read: {e.strerror}") from None
    out: list[str] = []
    try:
        for f, wt, v in _fields(data):
            if f == 7 and wt == 2:
                _graph_locations(v, out)
    except ValueError as e:
        raise RepositoryError(f"{path}: not a valid ONNX file ({e})") from None
    return out
