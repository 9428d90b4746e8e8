"""Finding 4: the server itself keeps every byte a model reads inside the repository.

On 0e6d6fb the external-data guard looked only at dense initializers and node tensor attributes: a
sparse initializer, a sparse tensor attribute or a function's constant could point at `..`, an absolute
path or a symlink and the server let onnxruntime open it (onnxruntime 1.20.1, allowed by the
dependency floor, then served the outside file's bytes; 1.32 happens to refuse some of it itself).
And a model.onnx or version folder symlinked outside the repository was served. Each case below must
be refused by the server's own check (its message says "escapes" / "absolute" / "outside"), and the
good model beside it keeps serving.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from server.repository import (
    METADATA_KEY,
    ModelConfig,
    ModelMetadata,
    Preprocessing,
    write_model_config,
)
from tests.hardening.conftest import serve
from tests.reliability.helpers import Stubs, pb
from tests.server.onnx_models import scale_model

SECRET = np.arange(4, dtype=np.float32) + 100.0  # what a leaking model would answer with


def _external(t: onnx.TensorProto, location: str) -> onnx.TensorProto:
    t.ClearField("float_data")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(4 * 4))):
        t.external_data.add(key=key, value=value)
    return t


def _with_metadata(graph: onnx.GraphProto, functions=()) -> onnx.ModelProto:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)], functions=list(functions)
    )
    model.ir_version = 8
    md = ModelMetadata(
        labels=[f"c{i}" for i in range(4)],
        input_shape=[4],
        layout="NC",
        preprocessing=Preprocessing(color_mode="L", height=1, width=4),
    )
    model.metadata_props.add(key=METADATA_KEY, value=md.to_json())
    return model


def _io():
    return (
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4])],
    )


def sparse_initializer_model(location: str) -> onnx.ModelProto:
    values = _external(helper.make_tensor("k_values", TensorProto.FLOAT, [4], [0.0] * 4), location)
    indices = helper.make_tensor("k_indices", TensorProto.INT64, [4], [0, 1, 2, 3])
    sparse = helper.make_sparse_tensor(values, indices, [4])
    values.name = "k"
    graph = helper.make_graph([helper.make_node("Add", ["input", "k"], ["output"])], "sparse_init", *_io())
    graph.sparse_initializer.append(sparse)
    return _with_metadata(graph)


def sparse_attribute_model(location: str) -> onnx.ModelProto:
    values = _external(helper.make_tensor("k", TensorProto.FLOAT, [4], [0.0] * 4), location)
    indices = helper.make_tensor("k_indices", TensorProto.INT64, [4], [0, 1, 2, 3])
    const = helper.make_node("Constant", [], ["k"], sparse_value=helper.make_sparse_tensor(values, indices, [4]))
    graph = helper.make_graph([const, helper.make_node("Add", ["input", "k"], ["output"])], "sparse_attr", *_io())
    return _with_metadata(graph)


def function_model(location: str) -> onnx.ModelProto:
    k = _external(helper.make_tensor("k", TensorProto.FLOAT, [4], [0.0] * 4), location)
    body = [helper.make_node("Constant", [], ["k"], value=k), helper.make_node("Add", ["x", "k"], ["y"])]
    fn = helper.make_function("local", "AddSecret", ["x"], ["y"], body, [helper.make_opsetid("", 17)])
    graph = helper.make_graph([helper.make_node("AddSecret", ["input"], ["output"], domain="local")], "fn", *_io())
    return _with_metadata(graph, [fn])


def subgraph_model(location: str) -> onnx.ModelProto:
    k = _external(helper.make_tensor("k", TensorProto.FLOAT, [4], [0.0] * 4), location)
    out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])]
    then_g = helper.make_graph([helper.make_node("Constant", [], ["y"], value=k)], "then", [], out)
    else_g = helper.make_graph(
        [helper.make_node("Constant", [], ["y"], value=helper.make_tensor("z", TensorProto.FLOAT, [4], [0.0] * 4))],
        "else",
        [],
        out,
    )
    cond = helper.make_tensor("c", TensorProto.BOOL, [], [True])
    nodes = [
        helper.make_node("If", ["c"], ["k"], then_branch=then_g, else_branch=else_g),
        helper.make_node("Add", ["input", "k"], ["output"]),
    ]
    return _with_metadata(helper.make_graph(nodes, "sub", *_io(), [cond]))


BUILDERS = {
    "sparse_initializer": sparse_initializer_model,
    "sparse_attribute": sparse_attribute_model,
    "function": function_model,
    "subgraph": subgraph_model,
}


def _publish(repo, name: str, model: onnx.ModelProto | bytes) -> None:
    folder = repo / name / "1"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
    write_model_config(repo / name, ModelConfig(name=name, max_batch_size=8))


def _states(address: str) -> dict[str, tuple[str, str]]:
    with Stubs(address) as s:
        r = s.infer.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=30)
    return {m.name: (m.state, m.reason) for m in r.models if m.version == "1"}


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "secret.bin"  # outside the repository
    path.write_bytes(SECRET.tobytes())
    return path


def test_external_data_anywhere_in_the_model_is_contained(repo, secret):
    names = {}
    for kind, build in BUILDERS.items():
        for how, location in (("dotdot", "../../../secret.bin"), ("absolute", str(secret)), ("symlink", "link.bin")):
            name = f"{kind}-{how}"
            _publish(repo, name, build(location))
            if how == "symlink":
                os.symlink(secret, repo / name / "1" / "link.bin")
            names[name] = how
    s = serve(repo)
    try:
        states = _states(s.address)
        assert states["scale"][0] == "READY"
        for name, how in names.items():
            state, reason = states[name]
            assert state == "UNAVAILABLE", (name, state, reason)
            word = "absolute" if how == "absolute" else "escapes"
            assert word in reason and "external data" in reason, (name, reason)
    finally:
        assert s.stop() == 0


def test_symlinks_out_of_the_repository_are_not_served(repo, tmp_path):
    outside = tmp_path / "outside"
    (outside / "v").mkdir(parents=True)
    (outside / "v" / "model.onnx").write_bytes(scale_model("FP32").SerializeToString())
    # model.onnx itself is a symlink to a file outside
    (repo / "linkfile" / "1").mkdir(parents=True)
    os.symlink(outside / "v" / "model.onnx", repo / "linkfile" / "1" / "model.onnx")
    write_model_config(repo / "linkfile", ModelConfig(name="linkfile", max_batch_size=8))
    # the version folder is a symlink to a folder outside
    (repo / "linkdir").mkdir()
    os.symlink(outside / "v", repo / "linkdir" / "1")
    write_model_config(repo / "linkdir", ModelConfig(name="linkdir", max_batch_size=8))
    # a symlink that stays inside the repository is fine (a version published by linking another)
    (repo / "inside").mkdir()
    os.symlink(repo / "scale" / "1", repo / "inside" / "1")
    write_model_config(repo / "inside", ModelConfig(name="inside", max_batch_size=8))
    s = serve(repo)
    try:
        states = _states(s.address)
        for name in ("linkfile", "linkdir"):
            state, reason = states.get(name, ("MISSING", ""))
            assert state == "UNAVAILABLE" and "outside" in reason, (name, state, reason)
        assert states["inside"][0] == "READY", states["inside"]
        assert states["scale"][0] == "READY"
    finally:
        assert s.stop() == 0


def test_every_location_is_found_by_the_wire_reader(tmp_path):
    """The wire reader finds the location wherever each kind of model puts it."""
    from server.onnx_guard import external_data_locations

    for kind, build in BUILDERS.items():
        path = tmp_path / f"{kind}.onnx"
        path.write_bytes(build(f"{kind}.bin").SerializeToString())
        assert external_data_locations(path) == [f"{kind}.bin"], kind
