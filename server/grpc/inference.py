"""`inference.GRPCInferenceService` (Open Inference Protocol): protobuf <-> core types, nothing more.

Each RPC converts its request to server/core/types.py values, calls one `InferenceService` method and
converts the answer back; errors become status codes in server/grpc/status.py. Decoding checks only what
protobuf alone can tell (byte counts, typed-content counts, raw vs typed); everything about the model is
checked by the core.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import time
from collections.abc import Callable

import grpc
import numpy as np

from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as pb_grpc
from protos.inference import model_config_pb2 as mc
from server.core.service import InferenceService
from server.core.types import (
    KSERVE_TO_NUMPY,
    InferInput,
    InferRequest,
    InferResponse,
    RawInferRequest,
    RequestedOutput,
    VersionStatistics,
)
from server.drain import DRAIN_MESSAGE
from server.errors import InvalidInput, ServingError
from server.grpc.status import deadline_of, model_label, record, rpc, status_of
from server.metrics import Metrics

# datatype -> the InferTensorContents field that carries it when not sent raw
TYPED_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
CONFIG_DATATYPE = {
    "BOOL": mc.TYPE_BOOL,
    "UINT8": mc.TYPE_UINT8,
    "UINT16": mc.TYPE_UINT16,
    "UINT32": mc.TYPE_UINT32,
    "UINT64": mc.TYPE_UINT64,
    "INT8": mc.TYPE_INT8,
    "INT16": mc.TYPE_INT16,
    "INT32": mc.TYPE_INT32,
    "INT64": mc.TYPE_INT64,
    "FP16": mc.TYPE_FP16,
    "FP32": mc.TYPE_FP32,
    "FP64": mc.TYPE_FP64,
    "BYTES": mc.TYPE_STRING,
}
MAX_DIMS = 8
TYPED_CHECK_FIRST = 65536  # typed values in a request above which the model's checks run before conversion
_LE_DTYPES = {k: np.dtype(v).newbyteorder("<") for k, v in KSERVE_TO_NUMPY.items()}  # wire byte order, built once
# Largest element count a shape may describe (product of its non-zero dims). Far above anything that
# fits max_message_bytes, and small enough that numpy never overflows computing sizes from it.
MAX_ELEMENTS = 2**32
# typed-contents fields wider than some of the datatypes they carry: values are range-checked
_WIDE = {"int_contents": np.int64, "int64_contents": np.int64, "uint_contents": np.uint64, "uint64_contents": np.uint64}
log = logging.getLogger("server.grpc")
_DRAINED = object()  # a stream's queue marker: the server is stopping


def _param(p: pb.InferParameter):
    kind = p.WhichOneof("parameter_choice")
    return None if kind is None else getattr(p, kind)


def _typed_array(where: str, t, fname: str, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    values = getattr(t.contents, fname)
    if fname in _WIDE:  # e.g. int_contents (int32) carrying INT8: refuse what does not fit
        wide = np.asarray(values, dtype=_WIDE[fname])
        info = np.iinfo(dtype)
        if wide.size and (wide.min() < info.min or wide.max() > info.max):
            bad = wide.min() if wide.min() < info.min else wide.max()
            raise InvalidInput(
                f"{where}.contents.{fname}: value {int(bad)} is out of range for {t.datatype} ({info.min}..{info.max})"
            )
        return wide.astype(dtype).reshape(shape)
    return np.asarray(values, dtype=dtype).reshape(shape)


def decode_request(
    req: pb.ModelInferRequest, deadline: float | None, check: Callable[[str, str, list[InferInput]], None] | None = None
) -> InferRequest:
    """The request as core types. Typed contents of more than TYPED_CHECK_FIRST values are converted to
    arrays only after `check(model_name, model_version, inputs without data)` accepted their names,
    datatypes and shapes (the core's `check_inputs`): a million-row `fp32_contents` for a model that takes
    64 rows is refused from its shape before a single value is copied. Smaller ones are converted first
    (at most a few ms), so their value-range errors come before the model's checks, as they always did."""
    tensors = req.inputs  # each access to a repeated field builds a new wrapper: read them once
    raws = req.raw_input_contents
    if raws:
        for t in tensors:
            if t.HasField("contents"):
                raise InvalidInput("'raw_input_contents' and typed 'contents' are both set; use one or the other")
        if len(raws) != len(tensors):
            raise InvalidInput(f"'raw_input_contents' has {len(raws)} entries for {len(tensors)} inputs")
    inputs = []
    typed = []  # (input index, tensor, contents field, dtype) still to convert
    for i, t in enumerate(tensors):
        shape = tuple(t.shape)
        count = math.prod(shape)  # Python ints: no silent int64 wrap-around
        if (
            len(shape) > MAX_DIMS
            or (shape and min(shape) < 0)
            or (count if count else math.prod(d for d in shape if d > 0)) > MAX_ELEMENTS
        ):
            raise InvalidInput(
                f"inputs[{i}].shape: {list(shape)} is not a valid shape (non-negative, at most {MAX_DIMS} dims, "
                f"at most {MAX_ELEMENTS} elements)"
            )
        datatype = t.datatype
        dtype = _LE_DTYPES.get(datatype)
        if dtype is None:
            raise InvalidInput(f"inputs[{i}].datatype: unsupported datatype {datatype!r} for input '{t.name}'")
        if raws:
            raw = raws[i]
            if len(raw) != count * dtype.itemsize:
                raise InvalidInput(
                    f"raw_input_contents[{i}]: {len(raw)} bytes, but input '{t.name}' of shape {list(shape)} "
                    f"and datatype {datatype} needs {count * dtype.itemsize}"
                )
            data = np.frombuffer(raw, dtype=dtype).reshape(shape)  # a view of the message's bytes, no copy
        else:
            where = f"inputs[{i}]"
            fname = TYPED_FIELD.get(t.datatype)
            if fname is None:
                raise InvalidInput(
                    f"{where}.contents: datatype {t.datatype} has no typed contents field; send it in 'raw_input_contents'"
                )
            n = len(getattr(t.contents, fname))
            if n != count:
                raise InvalidInput(f"{where}.contents.{fname}: {n} values, but shape {list(shape)} needs {count}")
            typed.append((i, t, fname, dtype))
            data = None
        inputs.append(InferInput(t.name, datatype, shape, data))  # type: ignore[arg-type]
    if check is not None and sum(math.prod(inputs[i].shape) for i, *_ in typed) > TYPED_CHECK_FIRST:
        check(req.model_name, req.model_version, inputs)
    for i, t, fname, dtype in typed:
        inputs[i].data = _typed_array(f"inputs[{i}]", t, fname, dtype, inputs[i].shape)
    outputs = []
    for i, o in enumerate(req.outputs):
        k = 0
        if "classification" in o.parameters:
            k = _param(o.parameters["classification"])
            if not isinstance(k, int) or isinstance(k, bool) or k < 1:
                raise InvalidInput(f"outputs[{i}].parameters.classification: must be a positive integer, got {k!r}")
        outputs.append(RequestedOutput(o.name, k))
    timeout_s = None
    params = req.parameters
    if params and "timeout" in params:
        t = _param(params["timeout"])
        if not isinstance(t, int) or isinstance(t, bool) or t < 0:
            raise InvalidInput(f"parameters.timeout: must be a non-negative integer of microseconds, got {t!r}")
        timeout_s = t / 1e6 if t > 0 else None
    return InferRequest(req.model_name, req.model_version, req.id, inputs, outputs, timeout_s, deadline)


def _bytes_tensor(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def encode_response(r: InferResponse) -> pb.ModelInferResponse:
    out = pb.ModelInferResponse(model_name=r.model_name, model_version=r.model_version, id=r.id)
    add, raws = out.outputs.add, out.raw_output_contents
    for o in r.outputs:
        add(name=o.name, datatype=o.datatype, shape=o.shape)
        data = o.data
        if isinstance(data, list):  # BYTES
            raws.append(_bytes_tensor(data))
        else:
            if data.dtype.byteorder == ">":  # the wire is little-endian; tobytes() makes the C-order copy
                data = data.astype(data.dtype.newbyteorder("<"))
            raws.append(data.tobytes())
    return out


def common_request(req: pb.ModelInferRequest, deadline: float | None) -> RawInferRequest | None:
    """The common request's wire parts (one raw tensor, no outputs named, no parameters), or None."""
    tensors, raws = req.inputs, req.raw_input_contents
    if len(tensors) != 1 or len(raws) != 1 or req.outputs or req.parameters:
        return None
    t = tensors[0]
    if t.HasField("contents"):
        return None
    return RawInferRequest(
        req.model_name, req.model_version, req.id, t.name, t.datatype, tuple(t.shape), raws[0], deadline
    )


async def infer(service: InferenceService, req: pb.ModelInferRequest, deadline: float | None) -> pb.ModelInferResponse:
    """ModelInfer and each ModelStreamInfer message: the common request takes the core's fast path."""
    raw = common_request(req, deadline)
    if raw is None:
        answer = await service.infer(decode_request(req, deadline, service.check_inputs))
    else:
        answer = await service.infer_raw(raw, lambda: decode_request(req, deadline, service.check_inputs))
    return encode_response(answer)


def _encode_statistics(s: VersionStatistics, m) -> None:
    for fname in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        d = getattr(s, fname)
        getattr(m.inference_stats, fname).count = d.count
        getattr(m.inference_stats, fname).ns = d.ns
    for b in s.batches:
        out = m.batch_stats.add(batch_size=b.batch_size)
        out.compute_input.count, out.compute_input.ns = b.compute_input.count, b.compute_input.ns
        out.compute_infer.count, out.compute_infer.ns = b.compute_infer.count, b.compute_infer.ns
        out.compute_output.count, out.compute_output.ns = b.compute_output.count, b.compute_output.ns


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service: InferenceService, metrics: Metrics) -> None:
        self.service = service
        self.metrics = metrics

    @rpc("ServerLive")
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self.service.live())

    @rpc("ServerReady")
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.service.ready())

    @rpc("ModelReady", lambda r: r.name)
    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self.service.model_ready(request.name, request.version))

    @rpc("ServerMetadata")
    async def ServerMetadata(self, request, context):
        info = self.service.server_metadata()
        return pb.ServerMetadataResponse(name=info.name, version=info.version, extensions=list(info.extensions))

    @rpc("ModelMetadata", lambda r: r.name)
    async def ModelMetadata(self, request, context):
        md = self.service.model_metadata(request.name, request.version)
        resp = pb.ModelMetadataResponse(name=md.name, versions=md.versions, platform=md.platform)
        for t in md.inputs:
            resp.inputs.add(name=t.name, datatype=t.datatype, shape=[-1, *t.shape])
        for t in md.outputs:
            resp.outputs.add(name=t.name, datatype=t.datatype, shape=[-1, *t.shape])
        return resp

    @rpc("ModelConfig", lambda r: r.name)
    async def ModelConfig(self, request, context):
        info = self.service.model_config(request.name, request.version)
        cfg = info.config
        c = mc.ModelConfig(
            name=info.name,
            platform=cfg.platform,
            backend="onnxruntime",
            max_batch_size=cfg.max_batch_size,
            default_model_filename="model.onnx",
        )
        vp = cfg.version_policy
        if vp.kind == "all":
            c.version_policy.all.SetInParent()
        elif vp.kind == "specific":
            c.version_policy.specific.versions.extend(vp.versions)
        else:
            c.version_policy.latest.num_versions = vp.num_versions
        for t in info.inputs:
            c.input.add(
                name=t.name, data_type=CONFIG_DATATYPE[t.datatype], format=mc.ModelInput.FORMAT_NCHW, dims=list(t.shape)
            )
        for t in info.outputs:
            c.output.add(name=t.name, data_type=CONFIG_DATATYPE[t.datatype], dims=list(t.shape))
        kind = (
            mc.ModelInstanceGroup.KIND_GPU
            if info.provider == "CUDAExecutionProvider"
            else mc.ModelInstanceGroup.KIND_CPU
        )
        c.instance_group.add(name=f"{info.name}_0", count=cfg.instances, kind=kind)
        db = cfg.dynamic_batching
        c.dynamic_batching.SetInParent()  # present even when off: delay 0 means "no waiting"
        if db is not None:
            c.dynamic_batching.preferred_batch_size.extend(db.preferred_batch_sizes)
            c.dynamic_batching.max_queue_delay_microseconds = db.max_queue_delay_us
            c.dynamic_batching.default_queue_policy.max_queue_size = db.max_queue_size
            c.dynamic_batching.default_queue_policy.default_timeout_microseconds = db.default_timeout_ms * 1000
            c.dynamic_batching.default_queue_policy.allow_timeout_override = True
        c.parameters["labels"].string_value = ",".join(info.labels)
        c.parameters["provider"].string_value = info.provider
        c.parameters["instance_isolation"].string_value = cfg.instance_isolation
        return pb.ModelConfigResponse(config=c)

    @rpc("ModelInfer", lambda r: r.model_name)
    def ModelInfer(self, request, context):  # returns infer()'s coroutine: one coroutine layer fewer per call
        return infer(self.service, request, deadline_of(context))

    async def ModelStreamInfer(self, request_iterator, context):
        """Requests of one stream run concurrently (so they batch); each answer carries its request id.

        Errors travel in-band (`error_message`) so one bad request does not end the stream. Each message is
        recorded as a ModelInfer call is (requests by code, duration; statistics in the core).

        At most `stream_window` requests of a stream are in flight or answered but not yet taken by the
        client; beyond that the stream stops reading, and HTTP/2 flow control holds the client back. On
        SIGTERM (server/drain.py) a stream stops reading, answers what it has and ends UNAVAILABLE."""
        drain = getattr(self, "drain", None)
        if drain is not None and drain.draining:
            await drain.hold()
            await context.abort(grpc.StatusCode.UNAVAILABLE, DRAIN_MESSAGE)
        answers: asyncio.Queue = asyncio.Queue()
        pending: set[asyncio.Task] = set()
        window = asyncio.Semaphore(getattr(self, "stream_window", 128))
        self.metrics.in_flight_counts["ModelStreamInfer"] += 1

        async def one(req: pb.ModelInferRequest) -> None:
            t0 = time.perf_counter()
            model = model_label(self.service, req.model_name)
            try:
                resp = await infer(self.service, req, deadline_of(context))
                code = "OK"
                await answers.put(pb.ModelStreamInferResponse(infer_response=resp))
            except ServingError as e:
                code = status_of(e).name
                await answers.put(
                    pb.ModelStreamInferResponse(
                        error_message=str(e), infer_response=pb.ModelInferResponse(model_name=req.model_name, id=req.id)
                    )
                )
            except Exception as e:  # keep the stream alive; report in-band, attributed to its request
                code = "INTERNAL"
                log.exception("ModelStreamInfer %s: unexpected error", model or "-")
                await answers.put(
                    pb.ModelStreamInferResponse(
                        error_message=f"internal error: {type(e).__name__}",
                        infer_response=pb.ModelInferResponse(model_name=req.model_name, id=req.id),
                    )
                )
            # version "": stream answers are recorded without it (server/metrics.py init_version)
            record(self.metrics, "ModelStreamInfer", model, "", code, t0)

        async def finish(end) -> None:
            while pending:
                await asyncio.gather(*list(pending), return_exceptions=True)
            await answers.put(end)

        async def reader() -> None:
            async for req in request_iterator:
                await window.acquire()  # released when its answer has been handed to gRPC
                task = asyncio.get_running_loop().create_task(one(req))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await finish(None)

        def drained() -> None:  # the server is stopping: read no more, answer what is in flight, end
            read_task.cancel()
            asyncio.get_running_loop().create_task(finish(_DRAINED))

        read_task = asyncio.get_running_loop().create_task(reader())
        unwatch = drain.watch(drained) if drain is not None else None
        try:
            while True:
                item = await answers.get()
                if item is None:
                    break
                if item is _DRAINED:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, DRAIN_MESSAGE)
                yield item
                window.release()
        finally:
            if unwatch is not None:
                unwatch()
            read_task.cancel()
            for t in list(pending):
                t.cancel()
            self.metrics.in_flight_counts["ModelStreamInfer"] -= 1

    @rpc("ModelStatistics", lambda r: r.name)
    async def ModelStatistics(self, request, context):
        resp = pb.ModelStatisticsResponse()
        for s in self.service.statistics(request.name, request.version):
            m = resp.model_stats.add(
                name=s.name,
                version=s.version,
                last_inference=s.last_inference_ms,
                inference_count=s.inference_count,
                execution_count=s.execution_count,
            )
            _encode_statistics(s, m)
        return resp

    @rpc("RepositoryIndex")
    async def RepositoryIndex(self, request, context):
        resp = pb.RepositoryIndexResponse()
        for e in self.service.index(ready_only=request.ready):
            resp.models.add(name=e.name, version=e.version, state=e.state, reason=e.reason)
        return resp

    @rpc("RepositoryModelLoad", lambda r: r.model_name)
    async def RepositoryModelLoad(self, request, context):
        await self.service.load_model(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @rpc("RepositoryModelUnload", lambda r: r.model_name)
    async def RepositoryModelUnload(self, request, context):
        await self.service.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()
