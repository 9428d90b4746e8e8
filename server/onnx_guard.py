"""Containment of a served ONNX file: the file, its folders and all the external data it names stay inside
the model repository, whatever onnxruntime version opens it afterwards.

ONNX can point a tensor at an external file (`TensorProto.external_data`, key "location") from more
places than the graph's dense initializers. `external_data_locations` walks all of them, reading the
protobuf wire format (the serving install has no `onnx` package):

    ModelProto   graph(7) GraphProto, training_info(20) {initialization(1), algorithm(2)} GraphProto,
                 functions(25) FunctionProto
    GraphProto   node(1) NodeProto, initializer(5) TensorProto, sparse_initializer(15) SparseTensorProto
    FunctionProto node(7) NodeProto, attribute_proto(11) AttributeProto
    NodeProto    attribute(5) AttributeProto
    AttributeProto t(5) / tensors(10) TensorProto, g(6) / graphs(11) GraphProto (subgraphs, recursively),
                 sparse_tensor(22) / sparse_tensors(23) SparseTensorProto
    SparseTensorProto values(1), indices(2) TensorProto
    TensorProto  external_data(13) {key(1), value(2)}, data_location(14) (1 = EXTERNAL)

`check_model_containment(repository, model_file)` then requires, symlinks resolved at every step:
- the version folder and model.onnx resolve inside the repository (a symlink out of it is refused);
- every location is relative, and resolves to a regular file inside the resolved version folder;
- a tensor marked EXTERNAL names a location.
Errors are RepositoryError naming the file and the location (cut to a bounded length).
"""

from __future__ import annotations

import os
from pathlib import Path

from server.errors import RepositoryError
from server.onnx_wire import fields as _fields

MAX_NESTING = 32  # subgraphs inside subgraphs (If/Loop/Scan bodies); deeper is refused as malformed
_LOCATION_CHARS = 120  # how much of a location a message quotes


class _Walker:
    def __init__(self) -> None:
        self.locations: list[str] = []
        self.unnamed_external = 0  # tensors marked EXTERNAL without a location

    def tensor(self, t: memoryview) -> None:
        external = False
        named = False
        for f, wt, v in _fields(t):
            if f == 13 and wt == 2:  # external_data: StringStringEntryProto
                kv = {ff: bytes(vv).decode("utf-8", "replace") for ff, wwt, vv in _fields(v) if wwt == 2}
                if kv.get(1) == "location":
                    self.locations.append(kv.get(2, ""))
                    named = True
            elif f == 14 and wt == 0 and v == 1:  # data_location = EXTERNAL
                external = True
        if external and not named:
            self.unnamed_external += 1

    def sparse(self, s: memoryview) -> None:
        for f, wt, v in _fields(s):
            if wt == 2 and f in (1, 2):  # values, indices
                self.tensor(v)

    def attribute(self, a: memoryview, depth: int) -> None:
        for f, wt, v in _fields(a):
            if wt != 2:
                continue
            if f in (5, 10):
                self.tensor(v)
            elif f in (6, 11):
                self.graph(v, depth + 1)
            elif f in (22, 23):
                self.sparse(v)

    def node(self, n: memoryview, depth: int) -> None:
        for f, wt, v in _fields(n):
            if f == 5 and wt == 2:
                self.attribute(v, depth)

    def graph(self, g: memoryview, depth: int) -> None:
        if depth > MAX_NESTING:
            raise ValueError(f"subgraphs nested deeper than {MAX_NESTING}")
        for f, wt, v in _fields(g):
            if wt != 2:
                continue
            if f == 1:
                self.node(v, depth)
            elif f == 5:
                self.tensor(v)
            elif f == 15:
                self.sparse(v)

    def function(self, fn: memoryview) -> None:
        for f, wt, v in _fields(fn):
            if wt != 2:
                continue
            if f == 7:
                self.node(v, 1)
            elif f == 11:
                self.attribute(v, 1)

    def model(self, m: memoryview) -> None:
        for f, wt, v in _fields(m):
            if wt != 2:
                continue
            if f == 7:
                self.graph(v, 0)
            elif f == 20:  # TrainingInfoProto: initialization(1), algorithm(2)
                for tf, twt, tv in _fields(v):
                    if twt == 2 and tf in (1, 2):
                        self.graph(tv, 1)
            elif f == 25:
                self.function(v)


def external_data_locations(path: str | os.PathLike) -> list[str]:
    """Every external-data location the ONNX file at `path` names, from every place ONNX allows one.
    A tensor marked EXTERNAL without a location is reported as the location ""."""
    path = Path(path)
    try:
        data = memoryview(path.read_bytes())
    except OSError as e:
        raise RepositoryError(f"{path}: cannot read: {e.strerror}") from None
    w = _Walker()
    try:
        w.model(data)
    except ValueError as e:
        raise RepositoryError(f"{path}: not a valid ONNX file ({e})") from None
    return w.locations + [""] * w.unnamed_external


def _quote(loc: str) -> str:
    return repr(loc if len(loc) <= _LOCATION_CHARS else loc[:_LOCATION_CHARS] + "...")


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_paths(repository: str | os.PathLike, model_file: str | os.PathLike) -> Path:
    """The version folder and model file resolve inside the repository; returns the resolved version folder."""
    root = Path(repository).resolve()
    model_file = Path(model_file)
    folder = model_file.parent.resolve()
    if not _inside(folder, root):
        raise RepositoryError(
            f"{model_file}: the version folder resolves to {folder}, outside the model repository "
            f"{root} (a symlink out of the repository is not served)"
        )
    real = model_file.resolve()
    if not _inside(real, folder):
        raise RepositoryError(
            f"{model_file}: resolves to {real}, outside its version folder (a symlinked model file "
            "is served only when it stays inside the version folder)"
        )
    return folder


def check_locations(model_file: str | os.PathLike, folder: Path, locations: list[str]) -> None:
    """Every location is relative and resolves (symlinks followed) to a regular file inside `folder`."""
    model_file = Path(model_file)
    for loc in locations:
        if not loc:
            raise RepositoryError(f"{model_file}: a tensor is marked as external data but names no location")
        if "\x00" in loc:
            raise RepositoryError(f"{model_file}: external data path {_quote(loc)} contains a NUL byte")
        if os.path.isabs(loc) or loc.startswith(("/", "\\")) or (len(loc) > 1 and loc[1] == ":"):
            raise RepositoryError(
                f"{model_file}: external data path {_quote(loc)} is absolute; it must stay inside {folder}"
            )
        target = (folder / loc).resolve()
        if not _inside(target, folder) or target == folder:
            raise RepositoryError(f"{model_file}: external data path {_quote(loc)} escapes the model folder {folder}")
        if not target.is_file():
            raise RepositoryError(f"{model_file}: external data file {_quote(loc)} is missing or not a regular file")


def check_model_containment(repository: str | os.PathLike, model_file: str | os.PathLike) -> None:
    """All of the above for one model file; raises RepositoryError naming the file."""
    folder = check_paths(repository, model_file)
    check_locations(model_file, folder, external_data_locations(model_file))
