"""Our `inference` protos against tritonclient's: every field we define has Triton's number and type.

Both sides are loaded into private descriptor pools from their serialized descriptors, so this test
imports neither module (they cannot share protobuf's default pool).
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool

ROOT = Path(__file__).resolve().parents[2]


def _serialized(py_file: Path) -> bytes:
    tree = ast.parse(py_file.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "AddSerializedFile":
            return ast.literal_eval(node.args[0])
    raise AssertionError(f"no serialized descriptor in {py_file}")


def _pool(files: list[Path]) -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    for f in files:
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(_serialized(f)))
    return pool


def _triton_dir() -> Path:
    spec = importlib.util.find_spec("tritonclient")
    assert spec and spec.submodule_search_locations, "tritonclient must be installed (dev extra)"
    return Path(list(spec.submodule_search_locations)[0]) / "grpc"


OURS = _pool([ROOT / "protos/inference/model_config_pb2.py", ROOT / "protos/inference/grpc_service_pb2.py"])
THEIRS = _pool([_triton_dir() / "model_config_pb2.py", _triton_dir() / "service_pb2.py"])
OUR_FILES = [
    OURS.FindFileByName("protos/inference/model_config.proto"),
    OURS.FindFileByName("protos/inference/grpc_service.proto"),
]


def _messages(desc):
    yield desc
    for n in desc.nested_types:
        yield from _messages(n)


ALL = [m for f in OUR_FILES for top in f.message_types_by_name.values() for m in _messages(top)]


@pytest.mark.parametrize("msg", ALL, ids=lambda m: m.full_name)
def test_message_fields_match_triton(msg):
    theirs = THEIRS.FindMessageTypeByName(msg.full_name)
    assert len(msg.fields) <= len(theirs.fields)
    for f in msg.fields:
        t = theirs.fields_by_name.get(f.name)
        assert t is not None, f"{msg.full_name}.{f.name} is not in Triton's protocol"
        assert (f.number, f.type, f.is_repeated) == (t.number, t.type, t.is_repeated), f"{msg.full_name}.{f.name}"
        if f.message_type:
            assert f.message_type.full_name == t.message_type.full_name
        if f.enum_type:
            assert f.enum_type.full_name == t.enum_type.full_name
            assert {v.name: v.number for v in f.enum_type.values}.items() <= {
                v.name: v.number for v in t.enum_type.values
            }.items()


def test_service_methods_match_triton():
    ours = OURS.FindServiceByName("inference.GRPCInferenceService")
    theirs = THEIRS.FindServiceByName("inference.GRPCInferenceService")
    assert len(ours.methods) >= 12
    for m in ours.methods:
        t = theirs.methods_by_name[m.name]
        assert (m.input_type.full_name, m.output_type.full_name) == (t.input_type.full_name, t.output_type.full_name)
        assert (m.client_streaming, m.server_streaming) == (t.client_streaming, t.server_streaming)


def test_stubs_in_sync_with_protos():
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "protos.generate", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
