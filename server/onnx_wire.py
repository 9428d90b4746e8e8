"""Read ONNX files without the `onnx` package (the serving install has none): the protobuf wire format.

(Where ONNX can name external data is read by server/onnx_guard.py, which checks its containment.)
- `read_metadata_props`: only the top level of ModelProto, seeking past the graph, so listing a
  repository of large models reads a few hundred bytes per model.
Truncated or corrupted files give a RepositoryError that names the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from server.errors import RepositoryError


# The wire primitives, shared with server/onnx_guard.py.
def varint(buf: memoryview | bytes, i: int) -> tuple[int, int]:
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


def fields(buf: memoryview):
    """Yield (field number, wire type, value): a memoryview for length-delimited fields, an int for varints."""
    i = 0
    while i < len(buf):
        key, i = varint(buf, i)
        field, wt = key >> 3, key & 7
        if wt == 0:
            v, i = varint(buf, i)
            yield field, wt, v
        elif wt == 1:
            i += 8
        elif wt == 2:
            n, i = varint(buf, i)
            if i + n > len(buf):
                raise ValueError("truncated length-delimited field")
            yield field, wt, buf[i : i + n]
            i += n
        elif wt == 5:
            i += 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        if i > len(buf):
            raise ValueError("truncated field")


# ModelProto field numbers (onnx.proto3): ir_version=1, graph=7, metadata_props=14.
_IR_VERSION, _GRAPH, _METADATA_PROPS = 1, 7, 14


class _Corrupt(ValueError):
    pass


def _read_varint(f: BinaryIO) -> int:
    result = shift = 0
    for _ in range(10):
        b = f.read(1)
        if not b:
            raise _Corrupt("ends inside a varint (truncated)")
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
        shift += 7
    raise _Corrupt("varint longer than 10 bytes (corrupted)")


def _string_pair(buf: bytes) -> tuple[str, str]:
    """StringStringEntryProto: key=1, value=2."""
    pos, key, value = 0, "", ""
    while pos < len(buf):
        tag, pos = varint(buf, pos)
        if tag & 7 != 2:
            raise _Corrupt("metadata entry has a non-string field")
        n, pos = varint(buf, pos)
        if pos + n > len(buf):
            raise _Corrupt("metadata entry runs past its end")
        text = buf[pos : pos + n].decode("utf-8", errors="strict")
        pos += n
        if tag >> 3 == 1:
            key = text
        elif tag >> 3 == 2:
            value = text
    return key, value


def read_metadata_props(path: str | os.PathLike) -> dict[str, str]:
    """The ONNX model's metadata_props as a dict, reading only the top-level protobuf fields."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            raise _Corrupt("is empty")
        props: dict[str, str] = {}
        seen_graph = seen_ir = False
        with open(path, "rb") as f:
            while f.tell() < size:
                tag = _read_varint(f)
                number, wire = tag >> 3, tag & 7
                if number == 0:
                    raise _Corrupt(f"field number 0 at byte {f.tell()} (corrupted)")
                if wire == 0:
                    _read_varint(f)
                elif wire == 1:
                    f.seek(8, os.SEEK_CUR)
                elif wire == 5:
                    f.seek(4, os.SEEK_CUR)
                elif wire == 2:
                    n = _read_varint(f)
                    if f.tell() + n > size:
                        raise _Corrupt(
                            f"field {number} needs {n} bytes at byte {f.tell()} but the file has {size} (truncated)"
                        )
                    if number == _METADATA_PROPS:
                        key, value = _string_pair(f.read(n))
                        props[key] = value
                    else:
                        f.seek(n, os.SEEK_CUR)
                else:
                    raise _Corrupt(f"wire type {wire} at byte {f.tell()} (corrupted)")
                seen_graph |= number == _GRAPH and wire == 2
                seen_ir |= number == _IR_VERSION and wire == 0
            if f.tell() != size:
                raise _Corrupt("last field runs past the end of the file (truncated)")
        if not (seen_graph and seen_ir):
            raise _Corrupt("has no graph or ir_version")
    except UnicodeDecodeError:
        raise RepositoryError(f"{path}: not a valid ONNX model: metadata is not UTF-8 (corrupted)") from None
    except ValueError as e:  # _Corrupt, and the buffer parser's own errors
        raise RepositoryError(f"{path}: not a valid ONNX model: {e}") from None
    except OSError as e:
        raise RepositoryError(f"{path}: cannot read: {e.strerror or e}") from None
    return props
