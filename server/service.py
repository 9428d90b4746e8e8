"""The transport-free inference service: validate -> batch -> run -> shape the answer.

The gRPC adapters (server/grpc/) translate protobuf <-> these dataclasses and numpy arrays and map
`server.errors` to status codes; everything a request is checked against lives here, and every
message names the field it is about.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Awaitable

import numpy as np

from server import __version__
from server.errors import InvalidInput, ServingError, Unavailable, Unimplemented
from server.imaging import ImageLimits, decode, from_raw, to_model_input
from server.metrics import Metrics
from server.models import ModelManager, ModelVersion

log = logging.getLogger(__name__)

SERVER_NAME = "cnn-stack"
# Exactly the Open Inference Protocol / Triton extensions this server implements.
EXTENSIONS = ("classification", "model_configuration", "statistics", "model_repository", "model_repository(unload_dependents)")
# Classify requests whose images total more than this many bytes are decoded in a worker thread.
INLINE_DECODE_MAX_BYTES = 64 * 1024
_EXTENSIONS_NO_CONTROL = ("classification", "model_configuration", "statistics", "model_repository")


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
    deadline: float | None = None  # loop.time() of the gRPC deadline


@dataclass
class InferOutput:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | list[bytes]


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[InferOutput]


@dataclass
class ImageInput:
    encoded: bytes | None = None
    raw: tuple[bytes, int, int, int] | None = None  # pixels, height, width, channels


@dataclass
class Prediction:
    label: str
    index: int
    probability: float


def _queue_deadline(grpc_deadline: float | None, timeout_s: float | None, mv: ModelVersion) -> float | None:
    """The sooner of the gRPC deadline and the queue timeout (the request's, else the model's default), loop time."""
    if timeout_s is None:
        timeout_s = mv.plan.default_timeout_s
    if not timeout_s or timeout_s <= 0:
        return grpc_deadline
    t = asyncio.get_running_loop().time() + timeout_s
    return t if grpc_deadline is None or t < grpc_deadline else grpc_deadline


class InferenceService:
    def __init__(self, manager: ModelManager, metrics: Metrics, *, default_model: str = "",
                 image_limits: ImageLimits = ImageLimits(), max_images_per_request: int = 256) -> None:
        self.manager = manager
        self.metrics = metrics
        self.default_model = default_model
        self.image_limits = image_limits
        self.max_images_per_request = max_images_per_request
        self.draining = False

    # ---------------------------------------------------------------------------------------------
    # health and metadata

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return not self.draining and bool(self.manager.ready_models())

    def server_metadata(self) -> tuple[str, str, tuple[str, ...]]:
        return SERVER_NAME, __version__, EXTENSIONS if self.manager.allow_model_control else _EXTENSIONS_NO_CONTROL

    def model_ready(self, name: str, version: str) -> bool:
        try:
            self.manager.get(name, version)
        except ServingError:  # not found, not ready, bad version string: all "not ready"
            return False
        return not self.draining

    def model(self, name: str, version: str = "") -> ModelVersion:
        return self.manager.get(name, version)

    def versions(self, name: str) -> list[str]:
        return [str(v) for v in sorted(self.manager.serving.get(name, {}))]

    # ---------------------------------------------------------------------------------------------
    # inference

    def _check_accepting(self) -> None:
        if self.draining:
            raise Unavailable("the server is shutting down; retry on another replica")

    @staticmethod
    def _deadline(req: InferRequest, mv: ModelVersion) -> float | None:
        return _queue_deadline(req.deadline, req.timeout_s, mv)

    def validate(self, req: InferRequest, mv: ModelVersion) -> tuple[str, np.ndarray, int]:
        """Check the inputs against the model; returns (input name, array, rows)."""
        spec = mv.runtime.input
        if not req.inputs:
            raise InvalidInput(f"'inputs' is empty; model '{mv.name}' expects one input '{spec.name}'")
        names = [i.name for i in req.inputs]
        if len(req.inputs) > 1:
            extra = [n for n in names if n != spec.name]
            raise InvalidInput(f"'inputs' has {len(names)} tensors ({', '.join(names)}); model '{mv.name}' expects only "
                               f"'{spec.name}'" + (f"; unexpected: {', '.join(extra)}" if extra else ""))
        x = req.inputs[0]
        if x.name != spec.name:
            raise InvalidInput(f"inputs[0].name: unexpected input '{x.name}'; model '{mv.name}' expects '{spec.name}'")
        if x.datatype != spec.datatype:
            raise InvalidInput(f"inputs[0].datatype: '{x.name}' is {x.datatype}; model '{mv.name}' expects {spec.datatype}")
        want = None  # the message text, built only for an error
        if len(x.shape) != 1 + len(spec.shape):
            want = "[-1, " + ", ".join(map(str, spec.shape)) + "]"
            raise InvalidInput(f"inputs[0].shape: {list(x.shape)} has {len(x.shape)} dims; model '{mv.name}' expects {want}")
        rows = x.shape[0]
        if rows < 1:
            raise InvalidInput(f"inputs[0].shape: batch dimension is {rows}; at least 1 row is needed")
        if rows > mv.config.max_batch_size:
            raise InvalidInput(f"inputs[0].shape: batch of {rows} rows exceeds max_batch_size {mv.config.max_batch_size} of model '{mv.name}'")
        for i, (got, exp) in enumerate(zip(x.shape[1:], spec.shape), start=1):
            if exp > 0 and got != exp:
                want = "[-1, " + ", ".join(map(str, spec.shape)) + "]"
                raise InvalidInput(f"inputs[0].shape: {list(x.shape)} does not match model '{mv.name}' input {want} (dim {i})")
        return spec.name, x.data, rows

    def _check_outputs(self, req: InferRequest, mv: ModelVersion) -> list[RequestedOutput]:
        if not req.outputs:  # the common case: every output, nothing to check
            return [RequestedOutput(o.name) for o in mv.runtime.outputs]
        specs = {o.name: o for o in mv.runtime.outputs}
        if len(req.outputs) > len(specs):
            raise InvalidInput(f"'outputs' asks for {len(req.outputs)} tensors; model '{mv.name}' has {len(specs)} ({', '.join(specs)})")
        seen = set()
        for i, o in enumerate(req.outputs):
            if o.name not in specs:
                raise InvalidInput(f"outputs[{i}].name: model '{mv.name}' has no output '{o.name}' (outputs: {', '.join(specs)})")
            if o.name in seen:
                raise InvalidInput(f"outputs[{i}].name: output '{o.name}' is requested twice")
            seen.add(o.name)
            if o.classification < 0:
                raise InvalidInput(f"outputs[{i}].parameters.classification: must be >= 1, got {o.classification}")
        return req.outputs or [RequestedOutput(n) for n in specs]

    def infer_raw(self, model_name: str, model_version: str, input_name: str, datatype: str, shape: tuple[int, ...],
                  raw: bytes, deadline: float | None) -> tuple[ModelVersion, Awaitable[dict]] | None:
        """The common request straight from its wire parts: one raw tensor that fits the model exactly, every
        output, no parameters. Returns (version, an awaitable of the outputs by name), or None when anything
        about the request is unusual: the caller then takes `infer`, which checks everything and words every
        refusal. (Not a coroutine itself: each coroutine layer costs on every request at this rate.)"""
        if self.draining:
            return None
        try:
            mv = self.manager.get(model_name, model_version)
        except ServingError:  # refused by `infer`, after the checks that come first there
            return None
        p = mv.plan
        if not (p.row_bytes and input_name == p.input_name and datatype == p.input_datatype and len(shape) == p.input_ndim
                and shape[1:] == p.input_tail and 1 <= shape[0] <= p.max_rows and len(raw) == shape[0] * p.row_bytes):
            return None
        data = np.frombuffer(raw, dtype=p.wire_dtype).reshape(shape)
        return mv, self._run(mv, input_name, data, shape[0], _queue_deadline(deadline, None, mv))

    async def _run(self, mv: ModelVersion, name: str, data: np.ndarray, rows: int, deadline: float | None) -> dict:
        """Count non-finite inputs, batch and run, record ModelStatistics and rows: the outputs by name."""
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            self.metrics.child(self.metrics.nonfinite_inputs, mv.name).inc()
        t0 = time.perf_counter()
        try:
            result = await mv.batcher.submit({name: data}, rows, deadline)
        except Exception:
            with mv.stats.lock:
                mv.stats.fail.add(time.perf_counter() - t0)
            raise
        with mv.stats.lock:
            mv.stats.success.add(time.perf_counter() - t0)
        self.metrics.child(self.metrics.inference_rows, mv.name, mv.plan.version).inc(rows)
        return result

    async def infer(self, req: InferRequest) -> InferResponse:
        if self.draining:
            self._check_accepting()
        mv = self.manager.get(req.model_name, req.model_version)
        p = mv.plan
        # The common request (one tensor that fits the model exactly) is recognised with a few comparisons;
        # anything else goes through validate(), which accepts free dims and words every refusal.
        x = req.inputs[0] if len(req.inputs) == 1 else None
        if (x is not None and x.name == p.input_name and x.datatype == p.input_datatype and len(x.shape) == p.input_ndim
                and x.shape[1:] == p.input_tail and 1 <= x.shape[0] <= p.max_rows):
            name, data, rows = p.input_name, x.data, x.shape[0]
        else:
            name, data, rows = self.validate(req, mv)
        wanted = self._check_outputs(req, mv) if req.outputs else p.default_outputs
        result = await self._run(mv, name, data, rows, self._deadline(req, mv))
        outputs = []
        for o in wanted:
            arr = result[o.name]
            if o.classification:
                outputs.append(self._classification_output(o, arr, mv))
            else:
                outputs.append(InferOutput(o.name, p.output_datatypes[o.name], arr.shape, arr))
        return InferResponse(mv.name, p.version, req.id, outputs)

    @staticmethod
    def _classification_output(o: RequestedOutput, arr: np.ndarray, mv: ModelVersion) -> InferOutput:
        """Triton's classification extension: top-k per row as BYTES 'value:index:label'."""
        labels = mv.runtime.metadata.labels
        flat = arr.reshape(arr.shape[0], -1)
        k = min(o.classification, flat.shape[1])
        idx = np.argsort(-flat, axis=1, kind="stable")[:, :k]
        out = []
        for row, ids in zip(flat, idx):
            for j in ids:
                label = labels[j] if j < len(labels) else ""
                out.append(f"{float(row[j]):f}:{int(j)}:{label}".encode())
        return InferOutput(o.name, "BYTES", (flat.shape[0], k), out)

    # ---------------------------------------------------------------------------------------------
    # classification service

    def resolve_model_name(self, name: str) -> str:
        if name:
            return name
        if self.default_model:
            return self.default_model
        ready = self.manager.ready_models()
        if len(ready) == 1:
            return ready[0]
        raise InvalidInput("'model_name' is empty and the server has " +
                           (f"several models ({', '.join(ready)}); name one" if ready else "no ready model"))

    async def classify(self, model_name: str, model_version: str, images: list[ImageInput], top_k: int,
                       deadline: float | None = None) -> tuple[ModelVersion, list[list[Prediction]]]:
        self._check_accepting()
        mv = self.manager.get(self.resolve_model_name(model_name), model_version)
        if not images:
            raise InvalidInput("'images' is empty; send at least one image")
        if len(images) > self.max_images_per_request:
            raise InvalidInput(f"'images' has {len(images)} entries; at most {self.max_images_per_request} per request")
        spec = mv.runtime.input
        if spec.dtype.kind != "f":
            raise InvalidInput(f"model '{mv.name}' takes {spec.datatype} input, not images; use ModelInfer for it")
        # Small images decode on the loop (~30 us for a 28x28 PNG, less than a thread hop); anything bigger
        # goes to a thread so one large photo does not stall every other request on this event loop.
        size = sum(len(im.encoded) if im.encoded is not None else len(im.raw[0]) if im.raw is not None else 0
                   for im in images)
        if size > INLINE_DECODE_MAX_BYTES:
            x = await asyncio.to_thread(self._model_input, images, mv)
        else:
            x = self._model_input(images, mv)  # (N, C, H, W)
        if x.shape[1:] != tuple(d if d > 0 else x.shape[1 + i] for i, d in enumerate(spec.shape)):
            raise InvalidInput(f"model '{mv.name}' input {list(spec.shape)} does not match its preprocessing metadata {list(x.shape[1:])}")
        mb = mv.config.max_batch_size
        req = InferRequest(mv.name, str(mv.version), deadline=deadline)
        chunks = [x[i:i + mb] for i in range(0, len(x), mb)]
        results = await asyncio.gather(*(mv.batcher.submit({spec.name: c}, len(c), self._deadline(req, mv)) for c in chunks))
        probs = np.concatenate([self._probabilities(r, mv) for r in results], axis=0)
        self.metrics.inference_rows.labels(mv.name, str(mv.version)).inc(len(x))
        labels = mv.runtime.metadata.labels
        k = max(1, min(top_k or 1, probs.shape[1]))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return mv, [[Prediction(labels[j] if j < len(labels) else str(j), int(j), float(p[j])) for j in ids]
                    for p, ids in zip(probs, order)]

    def _model_input(self, images: list[ImageInput], mv: ModelVersion) -> np.ndarray:
        """Decode, resize and normalise every image as the model's metadata says: (N, C, H, W)."""
        spec, pre = mv.runtime.input, mv.runtime.metadata.preprocessing
        rows = []
        for i, im in enumerate(images):
            where = f"images[{i}]"
            if im.encoded is not None:
                img = decode(im.encoded, f"{where}.encoded", self.image_limits)
            elif im.raw is not None:
                img = from_raw(*im.raw, field=f"{where}.raw", limits=self.image_limits)
            else:
                raise InvalidInput(f"{where}: set 'encoded' or 'raw'")
            rows.append(to_model_input(img, pre, spec.dtype, where))
        return np.stack(rows)

    @staticmethod
    def _probabilities(result: dict[str, np.ndarray], mv: ModelVersion) -> np.ndarray:
        if "probabilities" in result:
            return result["probabilities"].astype(np.float32).reshape(len(result["probabilities"]), -1)
        logits = next(iter(result.values())).astype(np.float32)
        logits = logits.reshape(len(logits), -1)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    # ---------------------------------------------------------------------------------------------
    # repository

    async def load_model(self, name: str) -> None:
        if not self.manager.allow_model_control:
            raise Unimplemented("model control is off; start the server with allow_model_control: true")
        await self.manager.load(name)

    async def unload_model(self, name: str) -> None:
        if not self.manager.allow_model_control:
            raise Unimplemented("model control is off; start the server with allow_model_control: true")
        await self.manager.unload(name)
