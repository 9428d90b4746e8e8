"""Read what a model repository holds, without torch or onnx (serving install: numpy, pyyaml, onnxruntime).

`read_metadata_props` parses only the top level of the ONNX ModelProto protobuf and seeks past the
graph, so listing a repository of large models reads a few hundred bytes per model. A truncated or
corrupted file gives a RepositoryError that names the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.errors import RepositoryError
from server.onnx_wire import read_metadata_props
from server.repository import (
    METADATA_KEY,
    MODEL_FILE,
    ModelMetadata,
    list_models,
    list_versions,
    load_model_config,
)


def read_model_metadata(path: str | os.PathLike) -> ModelMetadata:
    props = read_metadata_props(path)
    if METADATA_KEY not in props:
        raise RepositoryError(f"{path}: no '{METADATA_KEY}' metadata (not exported by `cnn export`?)")
    return ModelMetadata.from_json(props[METADATA_KEY], where=str(path))


def _size_on_disk(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            p = Path(root) / name
            if not p.is_symlink():
                total += p.stat().st_size
    return total


@dataclass
class VersionInfo:
    version: int
    path: str
    size_bytes: int
    precision: str = ""
    test_accuracy: float | None = None
    input_shape: list[int] = field(default_factory=list)
    labels: int = 0
    created: str = ""
    error: str = ""


@dataclass
class ModelInfo:
    name: str
    config_error: str = ""
    max_batch_size: int | None = None
    versions: list[VersionInfo] = field(default_factory=list)


def describe_repository(repository: str | os.PathLike) -> list[ModelInfo]:
    out = []
    for name in list_models(repository):
        model_dir = Path(repository) / name
        info = ModelInfo(name=name)
        try:
            info.max_batch_size = load_model_config(model_dir).max_batch_size
        except RepositoryError as e:
            info.config_error = str(e)
        for v in list_versions(model_dir):
            p = model_dir / str(v) / MODEL_FILE
            vi = VersionInfo(version=v, path=str(p), size_bytes=_size_on_disk(p.parent))
            try:
                md = read_model_metadata(p)
                acc = md.metrics.get("test_accuracy")
                vi.test_accuracy = float(acc) if isinstance(acc, (int, float)) else None
                vi.input_shape = list(md.input_shape)
                vi.labels = len(md.labels)
                vi.precision = str(md.extra.get("precision", "fp32"))
                vi.created = md.created
            except RepositoryError as e:
                vi.error = str(e)
            info.versions.append(vi)
        out.append(info)
    return out


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def format_table(models: list[ModelInfo]) -> str:
    rows = [("MODEL", "VERSION", "PRECISION", "TEST ACC", "INPUT (C,H,W)", "CLASSES", "SIZE", "STATUS")]
    for m in models:
        if not m.versions:
            rows.append((m.name, "-", "", "", "", "", "", m.config_error or "no versions"))
        for v in m.versions:
            status = v.error or m.config_error or "ok"
            acc = f"{v.test_accuracy:.4f}" if v.test_accuracy is not None else "-"
            shape = "x".join(map(str, v.input_shape)) if v.input_shape else "-"
            rows.append(
                (
                    m.name,
                    str(v.version),
                    v.precision or "-",
                    acc,
                    shape,
                    str(v.labels or "-"),
                    _human(v.size_bytes),
                    status,
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def to_json(models: list[ModelInfo]) -> str:
    import dataclasses

    data: list[dict[str, Any]] = [dataclasses.asdict(m) for m in models]
    return json.dumps({"models": data}, indent=2)
