"""The serving core's one entry point: everything a protocol offers, as methods on `InferenceService`.

Adapters (server/grpc/, and any later protocol) convert their wire format to the core types of
server/core/types.py, call one method here, convert the answer back, and map `server.errors` to their
status codes in one table. They never touch the registry, a runtime, a batcher or statistics.

    live() / ready() / drain()                        health; drain() refuses new work (SIGTERM)
    server_metadata() -> ServerInfo
    model_ready(name, version) -> bool
    is_known(name) -> bool                            may a metric label name this model?
    model_metadata(name, version) -> ModelMetadataInfo
    model_config(name, version) -> ModelConfigInfo
    list_models() -> list[ModelSummary];  default_model_name() -> str
    statistics(name, version) -> list[VersionStatistics]
    index(ready_only) -> list[IndexEntry];  await load_model(name);  await unload_model(name)
    await infer(InferRequest) -> InferResponse
    infer_raw(RawInferRequest, decode) -> Awaitable[InferResponse]   the common request, fast
    await classify(ClassifyRequest) -> ClassifyResponse
    await explain(ExplainRequest) -> ExplainResponse   classify + heatmaps (server/core/explain.py)
    model_health() -> dict[model, serving?]           per-model health for the health service

Every inference request (infer, infer_raw, classify, explain) records one success or failure with its duration
in the version's statistics, and its rows in `inference_rows`, in the same place (`_request_done`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import numpy as np

from server import __version__
from server.core.explain import check_request, render, run_maps, top_k
from server.core.registry import ModelRegistry, ServedVersion
from server.core.types import (
    ClassifyRequest,
    ClassifyResponse,
    ExplainRequest,
    ExplainResponse,
    ImageExplanation,
    ImageInput,
    IndexEntry,
    InferInput,
    InferOutput,
    InferRequest,
    InferResponse,
    ModelConfigInfo,
    ModelMetadataInfo,
    ModelSummary,
    Prediction,
    RawInferRequest,
    RequestedOutput,
    ServerInfo,
    VersionStatistics,
)
from server.decode_policy import DecodePolicy, DecodePool, plan_images
from server.errors import InvalidInput, ServingError, Unavailable, Unimplemented
from server.imaging import ImageLimits, decode, from_raw, to_model_input
from server.metrics import Metrics
from server.predictions import ModelPredictions

log = logging.getLogger(__name__)

SERVER_NAME = "cnn-stack"
# Exactly the Open Inference Protocol / Triton extensions this server implements.
EXTENSIONS = (
    "classification",
    "model_configuration",
    "statistics",
    "model_repository",
    "model_repository(unload_dependents)",
)
_EXTENSIONS_NO_CONTROL = ("classification", "model_configuration", "statistics", "model_repository")
# Classify calls whose images decode to more than this many bytes (from their headers) are decoded in the
# decode pool (server/decode_policy.py); smaller ones on the event loop.
INLINE_DECODE_MAX_BYTES = DecodePolicy.inline_max_bytes


def _queue_deadline(deadline: float | None, timeout_s: float | None, sv: ServedVersion) -> float | None:
    """The sooner of the transport deadline and the queue timeout (the request's, else the model's default), loop time."""
    if timeout_s is None:
        timeout_s = sv.plan.default_timeout_s
    if not timeout_s or timeout_s <= 0:
        return deadline
    t = asyncio.get_running_loop().time() + timeout_s
    return t if deadline is None or t < deadline else deadline


def _fits(sv: ServedVersion, name: str, datatype: str, shape: tuple[int, ...]) -> bool:
    """The one fast-path predicate: one tensor that fits the model exactly (no free dim to check)."""
    p = sv.plan
    return (
        name == p.input_name
        and datatype == p.input_datatype
        and len(shape) == p.input_ndim
        and shape[1:] == p.input_tail
        and 1 <= shape[0] <= p.max_rows
    )


class InferenceService:
    def __init__(
        self,
        registry: ModelRegistry,
        metrics: Metrics,
        *,
        default_model: str = "",
        image_limits: ImageLimits = ImageLimits(),
        max_images_per_request: int = 256,
        max_request_pixels: int = DecodePolicy.max_request_pixels,
        allow_model_control: bool = False,
    ) -> None:
        self._registry = registry
        self.metrics = metrics
        self.default_model = default_model
        self.image_limits = image_limits
        self.max_images_per_request = max_images_per_request
        self.decode_policy = DecodePolicy(
            image_limits.max_pixels, image_limits.max_side, max(max_request_pixels, image_limits.max_pixels)
        )
        self._decode_pool = DecodePool()  # threads start on first use
        self.allow_model_control = allow_model_control
        self._draining = False
        self._predictions = metrics.predictions.models  # model -> its prediction counts (server/predictions.py)

    # ---------------------------------------------------------------------------------------------
    # lifecycle and health

    async def start(self) -> None:
        """Load the repository and start polling it."""
        await self._registry.start()

    def drain(self) -> None:
        """Refuse new requests from now on (UNAVAILABLE); queued and executing ones still finish."""
        self._draining = True

    @property
    def draining(self) -> bool:
        return self._draining

    async def close(self) -> None:
        """Finish every queued request and release every model (after drain() and the transports stopped)."""
        await self._registry.close()
        self._decode_pool.close()

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return not self._draining and bool(self._registry.ready_models())

    def model_ready(self, name: str, version: str) -> bool:
        try:
            self._registry.get(name, version)
        except ServingError:  # not found, not ready, bad version string: all "not ready"
            return False
        return not self._draining

    def model_health(self) -> dict[str, bool]:
        """{model: serving} for every known model (the per-model health status)."""
        return {n: bool(v) and not self._draining for n, v in self._registry.served().items()}

    def is_known(self, name: str) -> bool:
        """True for a model the server knows: adapters label metrics with it (others as "", bounded)."""
        return self._registry.is_known(name)

    # ---------------------------------------------------------------------------------------------
    # metadata

    def server_metadata(self) -> ServerInfo:
        return ServerInfo(SERVER_NAME, __version__, EXTENSIONS if self.allow_model_control else _EXTENSIONS_NO_CONTROL)

    def _versions(self, name: str) -> list[str]:
        return [str(s.version) for s in self._registry.served_versions(name)]

    def model_metadata(self, name: str, version: str = "") -> ModelMetadataInfo:
        sv = self._registry.get(name, version)
        return ModelMetadataInfo(
            sv.name, self._versions(sv.name), sv.config.platform, list(sv.runtime.inputs), list(sv.runtime.outputs)
        )

    def model_config(self, name: str, version: str = "") -> ModelConfigInfo:
        sv = self._registry.get(name, version)
        rt = sv.runtime
        return ModelConfigInfo(
            sv.name,
            str(sv.version),
            sv.config,
            list(rt.inputs),
            list(rt.outputs),
            rt.provider,
            list(rt.metadata.labels),
        )

    def list_models(self) -> list[ModelSummary]:
        out = []
        for name in self._registry.ready_models():
            rt = self._registry.get(name).runtime
            out.append(
                ModelSummary(
                    name,
                    self._versions(name),
                    list(rt.metadata.labels),
                    list(rt.input.shape),
                    rt.metadata.preprocessing.color_mode,
                )
            )
        return out

    def default_model_name(self) -> str:
        """The model Classify uses when the request names none; "" if there is no single one."""
        try:
            return self._resolve_model_name("")
        except ServingError:
            return ""

    def statistics(self, name: str = "", version: str = "") -> list[VersionStatistics]:
        """ModelStatistics: every served version (of `name`; of `version`), by name then version."""
        if name and not self._registry.is_known(name):
            self._registry.get(name)  # raises ModelNotFound naming the models there are
        out = []
        for model, versions in sorted(self._registry.served().items()):
            if name and model != name:
                continue
            for sv in versions:
                if version and version != str(sv.version):
                    continue
                out.append(sv.stats.snapshot(model, str(sv.version)))
        if version and not out:
            self._registry.get(name, version)  # raises the precise NOT_FOUND / UNAVAILABLE
        return out

    # ---------------------------------------------------------------------------------------------
    # repository

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        return [e for e in self._registry.index() if not ready_only or e.state == "READY"]

    async def load_model(self, name: str) -> None:
        if not self.allow_model_control:
            raise Unimplemented("model control is off; start the server with allow_model_control: true")
        await self._registry.load(name)

    async def unload_model(self, name: str) -> None:
        if not self.allow_model_control:
            raise Unimplemented("model control is off; start the server with allow_model_control: true")
        await self._registry.unload(name)

    # ---------------------------------------------------------------------------------------------
    # inference

    def _request_done(self, sv: ServedVersion, t0: float, ok: bool, rows: int) -> None:
        """The one place a request's outcome is recorded: statistics (success/fail) and inference_rows."""
        sv.stats.request_done(time.perf_counter() - t0, ok)
        if ok:
            self.metrics.child(self.metrics.inference_rows, sv.name, sv.plan.version).inc(rows)

    def infer_raw(self, raw: RawInferRequest, decode: Callable[[], InferRequest]) -> Awaitable[InferResponse]:
        """The common request straight from its wire parts. When the raw tensor fits the served version
        exactly it is computed without building inputs; otherwise `decode()` builds the full request (its
        errors come first, as for any request) and `infer` checks everything and words every refusal.
        Not a coroutine itself: each coroutine layer costs on every request at this rate."""
        if not self._draining:
            try:
                sv = self._registry.get(raw.model_name, raw.model_version)
            except ServingError:  # refused by `infer`, after the decoding checks that come first there
                sv = None
            if (
                sv is not None
                and sv.plan.row_bytes
                and _fits(sv, raw.input_name, raw.datatype, raw.shape)
                and len(raw.raw) == raw.shape[0] * sv.plan.row_bytes
            ):
                data = np.frombuffer(raw.raw, dtype=sv.plan.wire_dtype).reshape(raw.shape)
                return self._execute(
                    sv, raw.id, data, raw.shape[0], _queue_deadline(raw.deadline, None, sv), sv.plan.default_outputs
                )
        return self.infer(decode())

    def check_inputs(self, model_name: str, model_version: str, inputs: list[InferInput]) -> None:
        """What `infer` checks about the inputs, from their names, datatypes and shapes alone (`data` may be
        None): adapters call it before they turn large typed contents into arrays. Raises as `infer` would."""
        if self._draining:
            raise Unavailable("the server is shutting down; retry on another replica")
        sv = self._registry.get(model_name, model_version)
        x = inputs[0] if len(inputs) == 1 else None
        if x is None or not _fits(sv, x.name, x.datatype, x.shape):
            self._validate(InferRequest(model_name, model_version, inputs=inputs), sv)

    async def infer(self, req: InferRequest) -> InferResponse:
        if self._draining:
            raise Unavailable("the server is shutting down; retry on another replica")
        sv = self._registry.get(req.model_name, req.model_version)
        x = req.inputs[0] if len(req.inputs) == 1 else None
        if x is not None and _fits(sv, x.name, x.datatype, x.shape):
            data, rows = x.data, x.shape[0]
        else:
            data, rows = self._validate(req, sv)
        wanted = self._check_outputs(req, sv) if req.outputs else sv.plan.default_outputs
        return await self._execute(sv, req.id, data, rows, _queue_deadline(req.deadline, req.timeout_s, sv), wanted)

    async def _execute(
        self,
        sv: ServedVersion,
        request_id: str,
        data: np.ndarray,
        rows: int,
        deadline: float | None,
        wanted: tuple[RequestedOutput, ...] | list[RequestedOutput],
    ) -> InferResponse:
        """Count non-finite inputs, batch and run, record the outcome, shape the answer."""
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            self.metrics.child(self.metrics.nonfinite_inputs, sv.name).inc()
        p = sv.plan
        t0 = time.perf_counter()
        try:
            result = await sv.batcher.submit({p.input_name: data}, rows, deadline)
        except Exception:
            self._request_done(sv, t0, False, rows)
            raise
        self._request_done(sv, t0, True, rows)
        tap = self._predictions.get(sv.name)
        if tap is not None and tap.output is not None:
            self._record_predictions(tap, result, None)
        outputs = []
        for o in wanted:
            arr = result[o.name]
            if o.classification:
                outputs.append(self._classification_output(o, arr, sv))
            else:
                outputs.append(InferOutput(o.name, p.output_datatypes[o.name], arr.shape, arr))
        return InferResponse(sv.name, p.version, request_id, outputs)

    @staticmethod
    def _record_predictions(
        tap: ModelPredictions, outputs: dict[str, np.ndarray] | None, probs: np.ndarray | None
    ) -> None:
        """The one place answers are counted for the prediction telemetry (every RPC, every protocol): from a
        classifier's output of an inference answer, or from Classify's and Explain's probabilities. A failure
        here never fails the request it describes."""
        try:
            if probs is not None:
                tap.record(probs)
            elif outputs is not None:
                tap.record_outputs(outputs)
        except Exception:  # pragma: no cover - telemetry must not turn an answer into an error
            log.exception("prediction telemetry failed")

    def _validate(self, req: InferRequest, sv: ServedVersion) -> tuple[np.ndarray, int]:
        """Check the inputs against the model, wording every refusal; returns (array, rows)."""
        spec, name = sv.runtime.input, sv.name
        if not req.inputs:
            raise InvalidInput(f"'inputs' is empty; model '{name}' expects one input '{spec.name}'")
        names = [i.name for i in req.inputs]
        if len(req.inputs) > 1:
            extra = [n for n in names if n != spec.name]
            raise InvalidInput(
                f"'inputs' has {len(names)} tensors ({', '.join(names)}); model '{name}' expects only "
                f"'{spec.name}'" + (f"; unexpected: {', '.join(extra)}" if extra else "")
            )
        x = req.inputs[0]
        if x.name != spec.name:
            raise InvalidInput(f"inputs[0].name: unexpected input '{x.name}'; model '{name}' expects '{spec.name}'")
        if x.datatype != spec.datatype:
            raise InvalidInput(
                f"inputs[0].datatype: '{x.name}' is {x.datatype}; model '{name}' expects {spec.datatype}"
            )
        want = "[-1, " + ", ".join(map(str, spec.shape)) + "]"
        if len(x.shape) != 1 + len(spec.shape):
            raise InvalidInput(
                f"inputs[0].shape: {list(x.shape)} has {len(x.shape)} dims; model '{name}' expects {want}"
            )
        rows = x.shape[0]
        if rows < 1:
            raise InvalidInput(f"inputs[0].shape: batch dimension is {rows}; at least 1 row is needed")
        if rows > sv.config.max_batch_size:
            raise InvalidInput(
                f"inputs[0].shape: batch of {rows} rows exceeds max_batch_size {sv.config.max_batch_size} of model '{name}'"
            )
        for i, (got, exp) in enumerate(zip(x.shape[1:], spec.shape), start=1):
            if exp > 0 and got != exp:
                raise InvalidInput(
                    f"inputs[0].shape: {list(x.shape)} does not match model '{name}' input {want} (dim {i})"
                )
        return x.data, rows

    @staticmethod
    def _check_outputs(req: InferRequest, sv: ServedVersion) -> list[RequestedOutput]:
        specs = {o.name: o for o in sv.runtime.outputs}
        if len(req.outputs) > len(specs):
            raise InvalidInput(
                f"'outputs' asks for {len(req.outputs)} tensors; model '{sv.name}' has {len(specs)} ({', '.join(specs)})"
            )
        seen = set()
        for i, o in enumerate(req.outputs):
            if o.name not in specs:
                raise InvalidInput(
                    f"outputs[{i}].name: model '{sv.name}' has no output '{o.name}' (outputs: {', '.join(specs)})"
                )
            if o.name in seen:
                raise InvalidInput(f"outputs[{i}].name: output '{o.name}' is requested twice")
            seen.add(o.name)
            if o.classification < 0:
                raise InvalidInput(f"outputs[{i}].parameters.classification: must be >= 1, got {o.classification}")
        return req.outputs

    @staticmethod
    def _classification_output(o: RequestedOutput, arr: np.ndarray, sv: ServedVersion) -> InferOutput:
        """Triton's classification extension: top-k per row as BYTES 'value:index:label'."""
        labels = sv.runtime.metadata.labels
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
    # classification

    def _resolve_model_name(self, name: str) -> str:
        if name:
            return name
        if self.default_model:
            return self.default_model
        ready = self._registry.ready_models()
        if len(ready) == 1:
            return ready[0]
        raise InvalidInput(
            "'model_name' is empty and the server has "
            + (f"several models ({', '.join(ready)}); name one" if ready else "no ready model")
        )

    async def classify(self, req: ClassifyRequest) -> ClassifyResponse:
        sv, x = await self._image_batch(req.model_name, req.model_version, req.images)
        spec = sv.runtime.input
        mb = sv.config.max_batch_size
        deadline = _queue_deadline(req.deadline, None, sv)
        t0 = time.perf_counter()
        try:
            results = await asyncio.gather(
                *(
                    sv.batcher.submit({spec.name: x[i : i + mb]}, len(x[i : i + mb]), deadline)
                    for i in range(0, len(x), mb)
                )
            )
        except Exception:
            self._request_done(sv, t0, False, len(x))
            raise
        self._request_done(sv, t0, True, len(x))
        probs = np.concatenate([self._probabilities(r) for r in results], axis=0)
        tap = self._predictions.get(sv.name)
        if tap is not None:
            self._record_predictions(tap, None, probs)
        labels = sv.runtime.metadata.labels
        k = max(1, min(req.top_k or 1, probs.shape[1]))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return ClassifyResponse(
            sv.name,
            str(sv.version),
            [
                [Prediction(labels[j] if j < len(labels) else str(j), int(j), float(p[j])) for j in ids]
                for p, ids in zip(probs, order)
            ],
            x if req.return_inputs else None,
        )

    async def _image_batch(
        self, model_name: str, model_version: str, images: list[ImageInput]
    ) -> tuple[ServedVersion, np.ndarray]:
        """Classify's and Explain's common start: the version, and its images decoded and preprocessed (N, C, H, W)."""
        if self._draining:
            raise Unavailable("the server is shutting down; retry on another replica")
        sv = self._registry.get(self._resolve_model_name(model_name), model_version)
        if not images:
            raise InvalidInput("'images' is empty; send at least one image")
        if len(images) > self.max_images_per_request:
            raise InvalidInput(f"'images' has {len(images)} entries; at most {self.max_images_per_request} per request")
        spec = sv.runtime.input
        if spec.dtype.kind != "f":
            raise InvalidInput(f"model '{sv.name}' takes {spec.datatype} input, not images; use ModelInfer for it")
        x = await self._decoded(images, sv)  # (N, C, H, W)
        if x.shape[1:] != tuple(d if d > 0 else x.shape[1 + i] for i, d in enumerate(spec.shape)):
            raise InvalidInput(
                f"model '{sv.name}' input {list(spec.shape)} does not match its preprocessing metadata {list(x.shape[1:])}"
            )
        return sv, x

    async def explain(self, req: ExplainRequest) -> ExplainResponse:
        """Classify plus, per image, a heatmap per explained class (server/core/explain.py)."""
        sv, x = await self._image_batch(req.model_name, req.model_version, req.images)
        md = sv.runtime.metadata
        labels = list(md.labels)
        check_request(req, len(labels), x.shape[2], x.shape[3])
        t0 = time.perf_counter()
        try:
            method, probs, classes, maps, rows = await run_maps(
                x,
                req,
                batcher=sv.batcher,
                input_name=sv.plan.input_name,
                max_batch_size=sv.config.max_batch_size,
                cam=sv.cam,
                num_classes=len(labels),
                deadline=_queue_deadline(req.deadline, None, sv),
            )
        except Exception:
            self._request_done(sv, t0, False, len(x))
            raise
        self._request_done(sv, t0, True, rows)
        tap = self._predictions.get(sv.name)
        if tap is not None:
            self._record_predictions(tap, None, probs)
        heatmaps = await render(x, classes, maps, labels, md, req)
        return ExplainResponse(
            sv.name,
            str(sv.version),
            method,
            [ImageExplanation(t, h) for t, h in zip(top_k(probs, labels, req.top_k), heatmaps)],
        )

    async def _decoded(self, images: list[ImageInput], sv: ServedVersion) -> np.ndarray:
        """The images as the model's input, decoded where server/decode_policy.py says: refused from their
        headers above the per-image or per-call pixel limits; on the event loop when the call decodes to
        little (a few digits: cheaper than a thread hop); otherwise in the bounded decode pool, so the loop
        never waits on pixels."""
        if plan_images(images, self.decode_policy) == "inline":
            return self._model_input(images, sv)
        return await self._decode_pool.run(self._model_input, images, sv)

    def _model_input(self, images: list[ImageInput], sv: ServedVersion) -> np.ndarray:
        """Decode, resize and normalise every image as the model's metadata says: (N, C, H, W)."""
        spec, pre = sv.runtime.input, sv.runtime.metadata.preprocessing
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
    def _probabilities(result: dict[str, np.ndarray]) -> np.ndarray:
        if "probabilities" in result:
            return result["probabilities"].astype(np.float32).reshape(len(result["probabilities"]), -1)
        logits = next(iter(result.values())).astype(np.float32)
        logits = logits.reshape(len(logits), -1)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
