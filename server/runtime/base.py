"""The Runtime interface, and what every runtime shares: file checks, providers, the session's own
description of the model, warm-up batches.

A runtime owns `instances` onnxruntime sessions of one model version (wherever they run) and offers:

    run_batch(inputs, instance, alone) -> Awaitable[(outputs by name, seconds the model computed)]

awaited by the batcher (server/core/batcher.py) on the event loop, one execution at a time per
instance; `alone` says that no other request is waiting (a runtime may then compute on the loop itself
when that is cheaper than a hand-off). `aclose()` releases it once the batcher has drained.

Adding a runtime: subclass `RuntimeBase` (its __init__ checks the file and chooses the providers; call
`_describe` with the created session's `SessionDescription`), implement `run_batch`, `close`, `aclose`,
and choose it in `server/runtime/__init__.py:open_runtime`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from server.core.types import KSERVE_TO_NUMPY, TensorSpec
from server.errors import RepositoryError
from server.onnx_guard import external_data_locations  # every place ONNX can name external data
from server.repository import METADATA_KEY, ModelConfig, ModelMetadata, check_external_data

log = logging.getLogger("server.runtime")

__all__ = [
    "KSERVE_TO_NUMPY",
    "ORT_TO_KSERVE",
    "PROVIDER_NAMES",
    "BatchRunner",
    "Runtime",
    "RuntimeBase",
    "SessionDescription",
    "TensorSpec",
    "select_providers",
    "warmup_batch",
]

Outputs = dict[str, np.ndarray]

# ONNX tensor element type strings (onnxruntime) -> Open Inference Protocol datatypes
ORT_TO_KSERVE = {
    "tensor(float)": "FP32",
    "tensor(float16)": "FP16",
    "tensor(double)": "FP64",
    "tensor(uint8)": "UINT8",
    "tensor(int8)": "INT8",
    "tensor(uint16)": "UINT16",
    "tensor(int16)": "INT16",
    "tensor(uint32)": "UINT32",
    "tensor(int32)": "INT32",
    "tensor(uint64)": "UINT64",
    "tensor(int64)": "INT64",
    "tensor(bool)": "BOOL",
}
PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
CUDA = PROVIDER_NAMES["cuda"]


class BatchRunner(Protocol):
    """What the batcher needs: one worker per instance, each awaiting `run_batch`."""

    instances: int

    def run_batch(self, inputs: Outputs, instance: int, alone: bool) -> Awaitable[tuple[Outputs, float]]: ...


class Runtime(BatchRunner, Protocol):
    """A loaded, warm model version: what the core reads about it and how it computes."""

    isolation: str  # "thread" | "process" (the config's instance_isolation)
    provider: str  # the execution provider the session really has first, e.g. "CPUExecutionProvider"
    providers_fell_back: bool  # CUDA was asked for and the session came up without it (cuda_fallback: true)
    metadata: ModelMetadata
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    warmup_s: float

    @property
    def input(self) -> TensorSpec: ...

    def close(self) -> None: ...

    async def aclose(self) -> None: ...


def select_providers(
    wanted: list[str], cuda_fallback: bool, available: list[str] | None = None, where: str = "model"
) -> list[str]:
    """Map config provider names to onnxruntime providers, checking what this onnxruntime build lists.

    CUDA asked for but not listed: fall back to the CPU with a warning, or refuse (RepositoryError). A
    listed CUDA can still fail to load (missing CUDA/cuDNN libraries): `RuntimeBase._describe` checks
    the providers the created session really has."""
    if available is None:
        import onnxruntime as ort

        available = list(ort.get_available_providers())
    out = []
    for p in wanted:
        name = PROVIDER_NAMES[p]
        if name in available:
            out.append(name)
        elif p == "cuda":
            msg = (
                f"{where}: CUDA was asked for but this onnxruntime has no CUDAExecutionProvider "
                f"(available: {', '.join(available)}; install onnxruntime-gpu)"
            )
            if not cuda_fallback:
                raise RepositoryError(msg + "; cuda_fallback is false, so the load is refused")
            log.warning("%s; falling back to the CPU", msg)
        else:
            raise RepositoryError(f"{where}: provider {name} is not available (available: {', '.join(available)})")
    if not out or (cuda_fallback and "CPUExecutionProvider" not in out):
        out.append("CPUExecutionProvider")  # the fallback (onnxruntime also places unsupported ops there)
    return out


@dataclass(frozen=True)
class SessionDescription:
    """What a created session says about itself, as plain data (it crosses the pipe from an instance process)."""

    providers: tuple[str, ...]  # session.get_providers(): what it really runs on, in order
    metadata_json: str | None  # the ONNX metadata entry METADATA_KEY, None if absent
    inputs: tuple[tuple[str, str, tuple], ...]  # (name, onnxruntime type string, shape as onnxruntime gives it)
    outputs: tuple[tuple[str, str, tuple], ...]

    @classmethod
    def of(cls, sess: Any) -> SessionDescription:
        return cls(
            tuple(sess.get_providers()),
            sess.get_modelmeta().custom_metadata_map.get(METADATA_KEY),
            tuple((t.name, t.type, tuple(t.shape)) for t in sess.get_inputs()),
            tuple((t.name, t.type, tuple(t.shape)) for t in sess.get_outputs()),
        )


def warmup_batch(rows: int, dims, dtype) -> np.ndarray:
    """Zeros of `rows` x `dims` (dims after the batch axis; free or symbolic dims become 1)."""
    return np.zeros((rows, *[d if isinstance(d, int) and d > 0 else 1 for d in dims]), dtype=dtype)


class RuntimeBase:
    """The checks and description every runtime shares; subclasses create the sessions and compute."""

    isolation = ""
    provider: str
    providers_fell_back: bool
    metadata: ModelMetadata
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    warmup_s: float

    def __init__(self, path: str | Path, config: ModelConfig, version: int) -> None:
        """Checks that need no session: the file, its external data, the providers to ask for."""
        self.path = Path(path)
        self.config = config
        self.version = version
        self.instances = config.instances
        if not self.path.is_file():
            raise RepositoryError(f"{self.path}: model file is missing")
        check_external_data(self.path, external_data_locations(self.path))
        self.providers = select_providers(config.providers, config.cuda_fallback, where=str(self.path))

    def _describe(self, d: SessionDescription) -> None:
        """Tensor specs, labels and preprocessing from the session's own description; refuse what cannot serve.

        CUDA asked for, listed by onnxruntime, but absent from the created session (its libraries did not
        load): refused with cuda_fallback false, else served on the CPU with a warning (and the
        provider label of `model_loaded_info` says CPU)."""
        where = str(self.path)
        self.provider = d.providers[0]
        self.providers_fell_back = CUDA in self.providers and CUDA not in d.providers
        if self.providers_fell_back:
            msg = (
                f"{where}: CUDA was asked for, but the created session has only {', '.join(d.providers)} "
                "(the CUDA or cuDNN libraries could not be loaded)"
            )
            if not self.config.cuda_fallback:
                raise RepositoryError(msg + "; cuda_fallback is false, so the load is refused")
            log.warning("%s; serving on the CPU (cuda_fallback is true)", msg)
        if d.metadata_json is None:
            raise RepositoryError(f"{where}: ONNX metadata lacks '{METADATA_KEY}' (export it with `cnn export`)")
        self.metadata = ModelMetadata.from_json(d.metadata_json, where)
        self.inputs = [self._spec(t, where) for t in d.inputs]
        self.outputs = [self._spec(t, where) for t in d.outputs]
        if len(self.inputs) != 1:
            raise RepositoryError(
                f"{where}: the server serves models with exactly one input, this one has {len(self.inputs)}"
            )
        if self.inputs[0].datatype == "BOOL":
            raise RepositoryError(f"{where}: input '{self.inputs[0].name}' is BOOL; a numeric input is expected")
        if len(self.metadata.labels) not in {s.shape[-1] for s in self.outputs if s.shape}:
            raise RepositoryError(
                f"{where}: metadata has {len(self.metadata.labels)} labels but no output has that many classes"
            )

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
