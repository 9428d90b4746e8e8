"""The core's request and response types, and the tensor datatype tables: plain dataclasses and numpy.

Every protocol adapter converts its wire format to these and back; nothing here knows protobuf, JSON
or onnxruntime. This module imports nothing from the server, so anyone may import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Open Inference Protocol datatype -> numpy dtype (native byte order)
KSERVE_TO_NUMPY: dict[str, Any] = {
    "FP32": np.float32,
    "FP16": np.float16,
    "FP64": np.float64,
    "UINT8": np.uint8,
    "INT8": np.int8,
    "UINT16": np.uint16,
    "INT16": np.int16,
    "UINT32": np.uint32,
    "INT32": np.int32,
    "UINT64": np.uint64,
    "INT64": np.int64,
    "BOOL": np.bool_,
}

# lifecycle states of a model version (Triton's names; RepositoryIndex reports them)
UNKNOWN, LOADING, READY, UNLOADING, UNAVAILABLE = "UNKNOWN", "LOADING", "READY", "UNLOADING", "UNAVAILABLE"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # Open Inference Protocol datatype, e.g. "FP32"
    shape: tuple[int, ...]  # without the batch axis; -1 for a free dimension

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(KSERVE_TO_NUMPY[self.datatype])


# --------------------------------------------------------------------------------------------------
# inference


@dataclass
class InferInput:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray  # already shaped `shape`, dtype of `datatype`


@dataclass
class RequestedOutput:
    name: str
    classification: int = 0  # > 0: answer the top-k as BYTES "value:index:label"


@dataclass
class InferRequest:
    model_name: str
    model_version: str = ""
    id: str = ""
    inputs: list[InferInput] = field(default_factory=list)
    outputs: list[RequestedOutput] = field(default_factory=list)
    timeout_s: float | None = None  # the request's `timeout` parameter
    deadline: float | None = None  # loop.time() of the transport's deadline


@dataclass(slots=True)  # built on every common request: slots, not frozen (a frozen __init__ costs more)
class RawInferRequest:
    """The common request as it arrives: one raw little-endian tensor, every output, no parameters.

    `InferenceService.infer_raw` serves it without building numpy inputs first when it fits the model
    exactly; otherwise the adapter decodes the full `InferRequest` and calls `infer`."""

    model_name: str
    model_version: str
    id: str
    input_name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes
    deadline: float | None


@dataclass(slots=True)
class InferOutput:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | list[bytes]  # BYTES outputs are lists of bytes


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[InferOutput]


# --------------------------------------------------------------------------------------------------
# classification


@dataclass
class ImageInput:
    encoded: bytes | None = None
    raw: tuple[bytes, int, int, int] | None = None  # pixels, height, width, channels


@dataclass
class ClassifyRequest:
    model_name: str = ""  # empty: the default model, or the only one
    model_version: str = ""
    images: list[ImageInput] = field(default_factory=list)
    top_k: int = 0  # 0: 1
    deadline: float | None = None
    return_inputs: bool = False  # True: the response carries the preprocessed model inputs (the page shows them)


@dataclass
class Prediction:
    label: str
    index: int
    probability: float


@dataclass
class ClassifyResponse:
    model_name: str
    model_version: str
    results: list[list[Prediction]]  # one list per image, best first
    inputs: np.ndarray | None = None  # (N, C, H, W) as the model received them, when return_inputs was set


@dataclass
class ExplainRequest:
    model_name: str = ""  # empty: the default model, or the only one
    model_version: str = ""
    images: list[ImageInput] = field(default_factory=list)
    top_k: int = 0  # 0: 1
    class_indices: list[int] = field(default_factory=list)  # classes to explain per image; empty: its top-1
    overlay: bool = True  # False: the numbers only, no PNG
    overlay_size: int = 0  # longer side of the PNG in pixels; 0: the model input's own size
    deadline: float | None = None


@dataclass
class Heatmap:
    """Where the evidence for one class lies in one image (server/explain.py computes it)."""

    index: int  # the class explained
    label: str
    values: np.ndarray  # (H, W) float32 over the preprocessed model input; larger = more evidence
    overlay_png: bytes  # RGB PNG of the input with the normalised map over it; b"" when not asked for


@dataclass
class ImageExplanation:
    top_k: list[Prediction]  # best first
    heatmaps: list[Heatmap]  # one per explained class, in class_indices order (or the top-1)


@dataclass
class ExplainResponse:
    model_name: str
    model_version: str
    method: str  # "cam" (class activation maps) or "occlusion"
    results: list[ImageExplanation]  # one per image, in request order


# --------------------------------------------------------------------------------------------------
# descriptions


@dataclass(frozen=True)
class ModelMetadataInfo:
    """ModelMetadata: what a client needs to call the model."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


@dataclass(frozen=True)
class ModelSummary:
    """ListModels: one ready model."""

    name: str
    versions: list[str]
    labels: list[str]
    input_shape: list[int]
    color_mode: str


@dataclass(frozen=True)
class ModelConfigInfo:
    """ModelConfig: the served version's configuration (server/repository.py ModelConfig) and what its
    runtime reports (tensors, provider, labels)."""

    name: str
    version: str
    config: Any  # server.repository.ModelConfig
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    provider: str
    labels: list[str]


@dataclass(frozen=True)
class Duration:
    count: int
    ns: int


@dataclass(frozen=True)
class BatchStatistics:
    batch_size: int
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration


@dataclass(frozen=True)
class VersionStatistics:
    """ModelStatistics for one version (Triton's semantics), a consistent snapshot."""

    name: str
    version: str
    last_inference_ms: int
    inference_count: int  # rows
    execution_count: int  # batches
    success: Duration
    fail: Duration
    queue: Duration
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration
    batches: list[BatchStatistics]


@dataclass(frozen=True)
class IndexEntry:
    """RepositoryIndex: one model (version "") or model version, its state and why."""

    name: str
    version: str
    state: str
    reason: str


@dataclass(frozen=True)
class ServerInfo:
    name: str
    version: str
    extensions: tuple[str, ...]
