"""onnxruntime sessions for one model version: providers, threads, instances, warm-up.

A `ModelRuntime` owns `instances` sessions of one ONNX file. `run(inputs, instance)` is blocking and is
called from a worker thread (never on the event loop). Everything the server needs to describe the
model (tensor names, dtypes, shapes, labels, preprocessing) is read here from the file itself.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from server.onnx_wire import external_data_locations
from server.errors import RepositoryError
from server.repository import METADATA_KEY, ModelConfig, ModelMetadata, check_external_data

log = logging.getLogger(__name__)

# ONNX tensor element type strings (onnxruntime) -> Open Inference Protocol datatypes and numpy dtypes
ORT_TO_KSERVE = {
    "tensor(float)": "FP32", "tensor(float16)": "FP16", "tensor(double)": "FP64",
    "tensor(uint8)": "UINT8", "tensor(int8)": "INT8", "tensor(uint16)": "UINT16", "tensor(int16)": "INT16",
    "tensor(uint32)": "UINT32", "tensor(int32)": "INT32", "tensor(uint64)": "UINT64", "tensor(int64)": "INT64",
    "tensor(bool)": "BOOL",
}
KSERVE_TO_NUMPY = {
    "FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "UINT8": np.uint8, "INT8": np.int8,
    "UINT16": np.uint16, "INT16": np.int16, "UINT32": np.uint32, "INT32": np.int32, "UINT64": np.uint64,
    "INT64": np.int64, "BOOL": np.bool_,
}
PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # KServe datatype, e.g. "FP32"
    shape: tuple[int, ...]  # without the batch axis; -1 for a free dimension

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(KSERVE_TO_NUMPY[self.datatype])


def select_providers(wanted: list[str], cuda_fallback: bool, available: list[str] | None = None,
                     where: str = "model") -> list[str]:
    """Map config provider names to onnxruntime providers, checking what this onnxruntime build has.

    CUDA asked for but absent: fall back to the CPU with a warning, or refuse (RepositoryError)."""
    available = list(ort.get_available_providers()) if available is None else available
    out = []
    for p in wanted:
        name = PROVIDER_NAMES[p]
        if name in available:
            out.append(name)
        elif p == "cuda":
            msg = (f"{where}: CUDA was asked for but this onnxruntime has no CUDAExecutionProvider "
                   f"(available: {', '.join(available)}; install onnxruntime-gpu)")
            if not cuda_fallback:
                raise RepositoryError(msg + "; cuda_fallback is false, so the load is refused")
            log.warning("%s; falling back to the CPU", msg)
        else:
            raise RepositoryError(f"{where}: provider {name} is not available (available: {', '.join(available)})")
    if not out or (cuda_fallback and "CPUExecutionProvider" not in out):
        out.append("CPUExecutionProvider")  # the fallback (onnxruntime also places unsupported ops there)
    return out


def session_options(config: ModelConfig) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = config.intra_op_threads
    opts.inter_op_num_threads = config.inter_op_threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning worker threads burn the cores that the gRPC front needs (measured: bench/).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts


def open_sessions(path: Path, config: ModelConfig, providers: list[str], count: int) -> list[ort.InferenceSession]:
    opts = session_options(config)
    try:
        return [ort.InferenceSession(str(path), sess_options=opts, providers=providers) for _ in range(count)]
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... classes
        raise RepositoryError(f"{path}: onnxruntime cannot load the model: {str(e).strip()[:500]}") from None


@dataclass(frozen=True)
class SessionDescription:
    """What a session says about itself, as plain data (it crosses the pipe from an instance process)."""

    provider: str
    metadata_json: str | None  # the ONNX metadata entry METADATA_KEY, None if absent
    inputs: tuple[tuple[str, str, tuple], ...]  # (name, onnxruntime type string, shape as onnxruntime gives it)
    outputs: tuple[tuple[str, str, tuple], ...]

    @classmethod
    def of(cls, sess: ort.InferenceSession) -> "SessionDescription":
        return cls(sess.get_providers()[0], sess.get_modelmeta().custom_metadata_map.get(METADATA_KEY),
                   tuple((t.name, t.type, tuple(t.shape)) for t in sess.get_inputs()),
                   tuple((t.name, t.type, tuple(t.shape)) for t in sess.get_outputs()))


def warmup_batch(rows: int, dims, dtype) -> np.ndarray:
    """Zeros of `rows` x `dims` (dims after the batch axis; free or symbolic dims become 1)."""
    return np.zeros((rows, *[d if isinstance(d, int) and d > 0 else 1 for d in dims]), dtype=dtype)


class ModelRuntime:
    """`instances` onnxruntime sessions of one model version, warmed up and ready to run (in this process)."""

    isolation = "thread"

    def __init__(self, path: str | Path, config: ModelConfig, version: int) -> None:
        self._prepare(path, config, version)
        self.sessions: list[ort.InferenceSession] = open_sessions(self.path, config, self.providers, config.instances)
        self._describe(SessionDescription.of(self.sessions[0]))
        self.warmup_s = self.warm_up()

    def _prepare(self, path: str | Path, config: ModelConfig, version: int) -> None:
        """Checks that need no session: the file, its external data, the providers."""
        self.path = Path(path)
        self.config = config
        self.version = version
        if not self.path.is_file():
            raise RepositoryError(f"{self.path}: model file is missing")
        self._check_external_data()
        self.providers = select_providers(config.providers, config.cuda_fallback, where=str(self.path))

    def _describe(self, d: SessionDescription) -> None:
        """Tensor specs, labels and preprocessing from the session's own description; refuse what cannot serve."""
        where = str(self.path)
        self.provider = d.provider
        if d.metadata_json is None:
            raise RepositoryError(f"{where}: ONNX metadata lacks '{METADATA_KEY}' (export it with `cnn export`)")
        self.metadata = ModelMetadata.from_json(d.metadata_json, where)
        self.inputs = [self._spec(t, where) for t in d.inputs]
        self.outputs = [self._spec(t, where) for t in d.outputs]
        if len(self.inputs) != 1:
            raise RepositoryError(f"{where}: the server serves models with exactly one input, this one has {len(self.inputs)}")
        if self.inputs[0].datatype == "BOOL":
            raise RepositoryError(f"{where}: input '{self.inputs[0].name}' is BOOL; a numeric input is expected")
        if len(self.metadata.labels) not in {s.shape[-1] for s in self.outputs if s.shape}:
            raise RepositoryError(f"{where}: metadata has {len(self.metadata.labels)} labels but no output has that many classes")

    def _check_external_data(self) -> None:
        """Refuse external-data references outside the version folder before onnxruntime opens anything."""
        check_external_data(self.path, external_data_locations(self.path))

    @staticmethod
    def _spec(t: tuple[str, str, tuple], where: str) -> TensorSpec:
        name, type_, shape = t
        if type_ not in ORT_TO_KSERVE:
            raise RepositoryError(f"{where}: tensor '{name}' has unsupported type {type_}")
        if not shape:
            raise RepositoryError(f"{where}: tensor '{name}' is a scalar; a batch axis is required")
        dims = tuple(d if isinstance(d, int) and d > 0 else -1 for d in shape[1:])
        return TensorSpec(name, ORT_TO_KSERVE[type_], dims)

    @property
    def input(self) -> TensorSpec:
        return self.inputs[0]

    def output_spec(self, name: str) -> TensorSpec | None:
        return next((o for o in self.outputs if o.name == name), None)

    def run(self, inputs: dict[str, np.ndarray], instance: int = 0, output_names: list[str] | None = None) -> dict[str, np.ndarray]:
        """Blocking: run one batch on session `instance`. Call from a worker thread."""
        names = output_names or [o.name for o in self.outputs]
        values = self.sessions[instance].run(names, inputs)
        return dict(zip(names, values))

    def warm_up(self) -> float:
        """Run each configured warm-up batch size on every instance; returns seconds spent."""
        t0 = time.perf_counter()
        spec = self.input
        for b in self.config.warmup_batch_sizes:
            x = warmup_batch(b, spec.shape, spec.dtype)
            for i in range(len(self.sessions)):
                self.run({spec.name: x}, i)
        return time.perf_counter() - t0

    def close(self) -> None:
        """Release the sessions (the batcher has drained)."""
        self.sessions = []

    async def aclose(self) -> None:
        self.close()
