"""The model repository format: the one contract between `cnn export` (writer) and the server (reader).

    <repository>/
      <model name>/
        config.yaml        ModelConfig below (batching, instances, providers, version policy, warm-up)
        1/model.onnx       version 1: an ONNX model whose metadata_props carry METADATA_KEY (JSON)
        2/model.onnx       ...
        2/model.onnx.data  optional external weights; must stay inside the version folder

This module has no onnxruntime, torch or gRPC imports: it reads and writes files and validates them.
Every error names the file and the key.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from preprocessing.spec import (  # the one definition, re-exported here (no torch there)
    Preprocessing,
    PreprocessingError,
)
from server import yaml_safe
from server.errors import RepositoryError
from server.yaml_safe import brief

CONFIG_FILE = "config.yaml"
MAX_CONFIG_BYTES = yaml_safe.MAX_CONFIG_BYTES  # a config.yaml written by `cnn export` is < 1 KiB
MODEL_FILE = "model.onnx"
METADATA_KEY = "cnn.metadata"  # ONNX metadata_props key holding ModelMetadata as JSON
_MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


# --------------------------------------------------------------------------------------------------
# config.yaml


@dataclass
class DynamicBatching:
    max_queue_delay_us: int = 0  # how long the first request of a batch may wait for company; 0: dispatch as soon
    # as an instance is free (batches still form from what queued while it was busy: lowest latency, see bench/)
    preferred_batch_sizes: list[int] = field(default_factory=list)  # dispatch early at these row counts
    max_queue_size: int = 1024  # rows waiting; beyond it requests get UNAVAILABLE at once
    default_timeout_ms: int = 0  # queue timeout when the request sets none; 0 = only the gRPC deadline


@dataclass
class VersionPolicy:
    kind: str = "latest"  # "latest" (newest num_versions), "all", or "specific" (versions)
    num_versions: int = 1  # for kind=latest
    versions: list[int] = field(default_factory=list)  # for kind=specific


INSTANCE_ISOLATIONS = ("thread", "process")
ARENA_EXTEND_STRATEGIES = ("next_power_of_two", "same_as_requested")  # onnxruntime's kNextPowerOfTwo, kSameAsRequested


@dataclass
class ModelConfig:
    name: str  # must equal the folder name
    platform: str = "onnxruntime_onnx"  # as Triton names it; the only one served
    max_batch_size: int = 64  # rows per model call; 0 would mean "no batch axis" (not supported)
    dynamic_batching: DynamicBatching | None = field(default_factory=DynamicBatching)  # None: batching off
    instances: int = 1  # parallel onnxruntime sessions per version
    providers: list[str] = field(default_factory=lambda: ["cpu"])  # in order of preference: "cuda", "cpu"
    cuda_fallback: bool = True  # if "cuda" is asked for but absent: fall back to CPU (True) or refuse the load
    intra_op_threads: int = 1  # per session; 1 is best with client + server sharing 2 cores (see bench/)
    inter_op_threads: int = 1
    # Where each instance's onnxruntime session runs: "thread" (a thread of the server process) or "process"
    # (a child process per instance, tensors through shared memory: onnxruntime never waits for the event
    # loop's GIL, and a crashing model does not take the server down; each instance holds an interpreter and
    # an onnxruntime of its own in memory, measured in docs/benchmarks.md).
    instance_isolation: str = "thread"
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    warmup_batch_sizes: list[int] = field(default_factory=lambda: [1])  # run at load, before READY
    # onnxruntime memory (chosen from the batch-size measurement in docs/benchmarks.md, "Real traffic"):
    cpu_arena: bool = True  # onnxruntime's CPU memory arena (enable_cpu_mem_arena)
    arena_extend_strategy: str = "next_power_of_two"  # or same_as_requested: measured worse with batch sizes 1..64
    # (more memory, still growing); same_as_requested uses one arena shared by every session of the process
    memory_pattern: bool = False  # enable_mem_pattern: plans kept per input shape; off saved 12-14 MiB

    def validate(self, where: str = CONFIG_FILE) -> ModelConfig:
        def bad(key: str, why: str) -> RepositoryError:
            return RepositoryError(f"{where}: '{key}' {why}")

        if not isinstance(self.name, str) or not _MODEL_NAME_RE.match(self.name):
            raise bad("name", f"must match {_MODEL_NAME_RE.pattern}, got {brief(self.name)}")
        if self.platform != "onnxruntime_onnx":
            raise bad("platform", f"must be 'onnxruntime_onnx', got {brief(self.platform)}")
        if not isinstance(self.max_batch_size, int) or not 1 <= self.max_batch_size <= 65536:
            raise bad("max_batch_size", f"must be an integer in 1..65536, got {brief(self.max_batch_size)}")
        if not isinstance(self.instances, int) or not 1 <= self.instances <= 64:
            raise bad("instances", f"must be an integer in 1..64, got {brief(self.instances)}")
        for key in ("intra_op_threads", "inter_op_threads"):
            v = getattr(self, key)
            if not isinstance(v, int) or not 0 <= v <= 256:
                raise bad(key, f"must be an integer in 0..256 (0 = onnxruntime's default), got {brief(v)}")
        if self.instance_isolation not in INSTANCE_ISOLATIONS:
            raise bad(
                "instance_isolation",
                f"must be one of {', '.join(INSTANCE_ISOLATIONS)}, got {brief(self.instance_isolation)}",
            )
        for key in ("cpu_arena", "memory_pattern"):
            if not isinstance(getattr(self, key), bool):
                raise bad(key, f"must be true or false, got {brief(getattr(self, key))}")
        if self.arena_extend_strategy not in ARENA_EXTEND_STRATEGIES:
            raise bad(
                "arena_extend_strategy",
                f"must be one of {', '.join(ARENA_EXTEND_STRATEGIES)}, got {brief(self.arena_extend_strategy)}",
            )
        if not self.providers or any(p not in ("cpu", "cuda") for p in self.providers):
            raise bad("providers", f"must be a non-empty list of 'cuda' / 'cpu', got {brief(self.providers)}")
        if not isinstance(self.cuda_fallback, bool):
            raise bad("cuda_fallback", f"must be true or false, got {brief(self.cuda_fallback)}")
        db = self.dynamic_batching
        if db is not None:
            if not isinstance(db.max_queue_delay_us, int) or not 0 <= db.max_queue_delay_us <= 10_000_000:
                raise bad(
                    "dynamic_batching.max_queue_delay_us", f"must be in 0..10000000, got {brief(db.max_queue_delay_us)}"
                )
            if not isinstance(db.max_queue_size, int) or db.max_queue_size < 1:
                raise bad(
                    "dynamic_batching.max_queue_size", f"must be a positive integer, got {brief(db.max_queue_size)}"
                )
            if not isinstance(db.default_timeout_ms, int) or db.default_timeout_ms < 0:
                raise bad("dynamic_batching.default_timeout_ms", f"must be >= 0, got {brief(db.default_timeout_ms)}")
            for b in db.preferred_batch_sizes:
                if not isinstance(b, int) or not 1 <= b <= self.max_batch_size:
                    raise bad(
                        "dynamic_batching.preferred_batch_sizes",
                        f"entries must be in 1..max_batch_size, got {brief(b)}",
                    )
        vp = self.version_policy
        if vp.kind not in ("latest", "all", "specific"):
            raise bad("version_policy.kind", f"must be latest, all or specific, got {brief(vp.kind)}")
        if vp.kind == "latest" and (not isinstance(vp.num_versions, int) or vp.num_versions < 1):
            raise bad("version_policy.num_versions", f"must be a positive integer, got {brief(vp.num_versions)}")
        if vp.kind == "specific" and (not vp.versions or any(not isinstance(v, int) or v < 1 for v in vp.versions)):
            raise bad("version_policy.versions", f"must list positive integers, got {brief(vp.versions)}")
        for b in self.warmup_batch_sizes:
            if not isinstance(b, int) or not 1 <= b <= self.max_batch_size:
                raise bad("warmup_batch_sizes", f"entries must be in 1..max_batch_size, got {brief(b)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_config_cache: dict[Path, tuple[tuple[int, int, int], ModelConfig | str]] = {}  # path -> (stat key, config or error)


def _from_dict(cls, data: Any, where: str, prefix: str = ""):
    """Build dataclass `cls` from a mapping; unknown keys are errors that name the key."""
    if not isinstance(data, dict):
        raise RepositoryError(f"{where}: '{prefix.rstrip('.') or 'top level'}' must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise RepositoryError(f"{where}: unknown key {brief(prefix + str(unknown[0]))} (valid: {', '.join(fields)})")
    kwargs = {}
    for name, value in data.items():
        if name == "dynamic_batching" and cls is ModelConfig:
            kwargs[name] = (
                None
                if value is None or value is False
                else _from_dict(DynamicBatching, value or {}, where, "dynamic_batching.")
            )
        elif name == "version_policy" and cls is ModelConfig:
            kwargs[name] = _from_dict(VersionPolicy, value, where, "version_policy.")
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required key is missing
        raise RepositoryError(f"{where}: {e}") from None


def load_model_config(model_dir: str | os.PathLike) -> ModelConfig:
    """config.yaml of one model, validated. Read with server/yaml_safe.py (at most MAX_CONFIG_BYTES, no
    anchors or aliases); parsed again only when the file changed (mtime, size, inode), so polling an
    unchanged repository costs a stat per model. Call it off the event loop: parsing takes the GIL."""
    model_dir = Path(model_dir)
    path = model_dir / CONFIG_FILE
    try:
        st = path.stat()
    except OSError:
        st = None
    if st is None or not path.is_file():
        raise RepositoryError(f"{path}: missing model config (every model folder needs {CONFIG_FILE})")
    key = (st.st_mtime_ns, st.st_size, st.st_ino)
    cached = _config_cache.get(path)
    if cached is not None and cached[0] == key:  # unchanged since the last poll: not parsed again
        if isinstance(cached[1], str):
            raise RepositoryError(cached[1])
        return copy.deepcopy(cached[1])
    try:
        cfg = _parse_model_config(model_dir, path)
    except RepositoryError as e:
        _config_cache[path] = (key, str(e))
        raise
    _config_cache[path] = (key, copy.deepcopy(cfg))
    return cfg


def _parse_model_config(model_dir: Path, path: Path) -> ModelConfig:
    try:
        data = yaml_safe.load_file(path, max_bytes=MAX_CONFIG_BYTES) or {}
    except yaml_safe.YamlRefused as e:
        raise RepositoryError(str(e)) from None
    except OSError as e:
        raise RepositoryError(f"{path}: cannot read: {e.strerror}") from None
    data.setdefault("name", model_dir.name) if isinstance(data, dict) else None
    cfg = _from_dict(ModelConfig, data, str(path)).validate(str(path))
    if cfg.name != model_dir.name:
        raise RepositoryError(f"{path}: 'name' is {brief(cfg.name)} but the folder is {brief(model_dir.name)}")
    return cfg


def write_model_config(model_dir: str | os.PathLike, cfg: ModelConfig) -> Path:
    """Write config.yaml atomically (temp file + rename)."""
    cfg.validate()
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    text = "# Model config: see server/repository.py (ModelConfig) for every key.\n"
    text += yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    fd, tmp = tempfile.mkstemp(dir=model_dir, prefix=".config.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the server may run as another user (containers)
    os.replace(tmp, model_dir / CONFIG_FILE)
    return model_dir / CONFIG_FILE


# --------------------------------------------------------------------------------------------------
# versions


def list_models(repository: str | os.PathLike) -> list[str]:
    root = Path(repository)
    if not root.is_dir():
        raise RepositoryError(f"{root}: model repository folder does not exist")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_versions(model_dir: str | os.PathLike) -> list[int]:
    """Numbered sub-folders that hold a model file, ascending. Half-written (dot-prefixed) folders are skipped."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    out = []
    for p in model_dir.iterdir():
        if p.is_dir() and p.name.isdigit() and int(p.name) > 0 and (p / MODEL_FILE).exists():
            out.append(int(p.name))
    return sorted(out)


def next_version(model_dir: str | os.PathLike) -> int:
    model_dir = Path(model_dir)
    taken = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()] if model_dir.is_dir() else []
    return max(taken, default=0) + 1


def select_versions(policy: VersionPolicy, available: list[int]) -> list[int]:
    """The versions the policy serves, ascending."""
    if policy.kind == "all":
        return sorted(available)
    if policy.kind == "specific":
        return sorted(v for v in available if v in set(policy.versions))
    return sorted(available)[-policy.num_versions :]


def model_path(repository: str | os.PathLike, name: str, version: int) -> Path:
    return Path(repository) / name / str(version) / MODEL_FILE


def check_external_data(model_file: str | os.PathLike, locations: list[str]) -> None:
    """Every external-data location must resolve to a regular file inside the version folder.

    Refuses absolute paths, `..` escapes and symlinks that point outside (CVE-2024-27318 class)."""
    model_file = Path(model_file)
    folder = model_file.parent.resolve()
    for loc in locations:
        if os.path.isabs(loc) or loc.startswith(("/", "\\")):
            raise RepositoryError(f"{model_file}: external data path {loc!r} is absolute; it must stay inside {folder}")
        target = (model_file.parent / loc).resolve()
        if folder != target and folder not in target.parents:
            raise RepositoryError(f"{model_file}: external data path {loc!r} escapes the model folder {folder}")
        if not target.is_file():
            raise RepositoryError(f"{model_file}: external data file {loc!r} is missing")


# --------------------------------------------------------------------------------------------------
# metadata carried inside the ONNX file


@dataclass
class ModelMetadata:
    labels: list[str]  # class names in output index order
    input_name: str = "input"
    input_shape: list[int] = field(default_factory=lambda: [1, 28, 28])  # C, H, W (batch axis not included)
    layout: str = "NCHW"
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    model_name: str = ""  # architecture, e.g. "lenet5"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)  # test_accuracy, ...
    recipe_sha256: str = ""
    created: str = ""
    project_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # anything else the exporter records
    # What the model answered on the test split (export/reference.py; empty for models exported before it):
    # {"split", "images", "class_share": {label: share of top-1 answers}, "confidence_quantiles": {"0.01": ...},
    #  "confidence_histogram": [share per 0.01-wide bin of the top-1 probability over 0..1]}; the server
    # exposes it beside the live answers (server/predictions.py) for the drift alerts.
    reference: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "model") -> ModelMetadata:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise RepositoryError(f"{where}: metadata '{METADATA_KEY}' is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise RepositoryError(f"{where}: metadata '{METADATA_KEY}' must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        extra = {k: v for k, v in data.items() if k not in known}
        data = {k: v for k, v in data.items() if k in known}
        if "labels" not in data or not isinstance(data["labels"], list):
            raise RepositoryError(f"{where}: metadata '{METADATA_KEY}' lacks 'labels'")
        pre = data.get("preprocessing") or {}
        try:
            data["preprocessing"] = Preprocessing.from_dict(pre, where=f"{where}: metadata preprocessing")
            md = cls(**data)
        except PreprocessingError as e:
            raise RepositoryError(str(e)) from None
        except TypeError as e:
            raise RepositoryError(f"{where}: metadata '{METADATA_KEY}': {e}") from None
        md.extra.update(extra)
        if md.preprocessing.color_mode not in ("L", "RGB"):
            raise RepositoryError(f"{where}: metadata preprocessing.color_mode must be 'L' or 'RGB'")
        return md
