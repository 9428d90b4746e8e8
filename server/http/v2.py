"""The Open Inference Protocol's REST binding (KServe v2, Triton's extensions): REST <-> core types, nothing more.

    GET  /v2/health/live | /v2/health/ready                 ServerLive | ServerReady
    GET  /v2                                                ServerMetadata
    GET  /v2/models/{m}[/versions/{v}]                      ModelMetadata
    GET  /v2/models/{m}[/versions/{v}]/ready                ModelReady
    POST /v2/models/{m}[/versions/{v}]/infer                ModelInfer (JSON, or the binary tensor extension)
    GET  /v2/models/{m}[/versions/{v}]/config               ModelConfig (Triton's model configuration extension)
    GET  /v2/models/stats, /v2/models/{m}[/versions/{v}]/stats   ModelStatistics (Triton's statistics extension)
    POST /v2/repository/index                               RepositoryIndex (body {"ready": bool}, optional)
    POST /v2/repository/models/{m}/load | unload            RepositoryModelLoad | Unload

JSON field names and shapes follow Triton's HTTP server, so tritonclient.http and perf_analyzer -i http work.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server.core.types import InferInput, InferRequest, RawInferRequest, RequestedOutput
from server.errors import InvalidInput
from server.http import codec
from server.http.body import expect_continue, read_body
from server.http.status import HTTP, error_response, json_response, rpc

CONFIG_DATATYPE = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
}
# Content types an infer body may declare (curl's default form type included); anything else is refused.
INFER_CONTENT_TYPES = (
    "application/json",
    "application/octet-stream",
    "application/x-www-form-urlencoded",
    "text/plain",
    "",
)


def _version(request: web.Request) -> str:
    return request.match_info.get("version", "")


@rpc("ServerLive")
async def server_live(request: web.Request) -> web.Response:
    return json_response({"live": request.app[HTTP].service.live()})


@rpc("ServerReady")
async def server_ready(request: web.Request) -> web.Response:
    if request.app[HTTP].service.ready():
        return json_response({"ready": True})
    return error_response(503, "the server is not ready (no model is ready, or it is shutting down)")


@rpc("ServerMetadata")
async def server_metadata(request: web.Request) -> web.Response:
    info = request.app[HTTP].service.server_metadata()
    return json_response({"name": info.name, "version": info.version, "extensions": list(info.extensions)})


@rpc("ModelMetadata")
async def model_metadata(request: web.Request) -> web.Response:
    md = request.app[HTTP].service.model_metadata(request.match_info["model"], _version(request))

    def tensors(specs) -> list[dict]:
        return [{"name": t.name, "datatype": t.datatype, "shape": [-1, *t.shape]} for t in specs]

    return json_response(
        {
            "name": md.name,
            "versions": md.versions,
            "platform": md.platform,
            "inputs": tensors(md.inputs),
            "outputs": tensors(md.outputs),
        }
    )


@rpc("ModelReady")
async def model_ready(request: web.Request) -> web.Response:
    name, version = request.match_info["model"], _version(request)
    if request.app[HTTP].service.model_ready(name, version):
        return json_response({"name": name, "ready": True})
    what = f"version {version} of model '{name}'" if version else f"model '{name}'"
    return error_response(503, f"{what} is not ready (unknown, loading, unloaded, or the server is shutting down)")


@rpc("ModelConfig")
async def model_config(request: web.Request) -> web.Response:
    info = request.app[HTTP].service.model_config(request.match_info["model"], _version(request))
    cfg = info.config
    vp = cfg.version_policy
    policy: dict[str, Any] = (
        {"all": {}}
        if vp.kind == "all"
        else {"specific": {"versions": list(vp.versions)}}
        if vp.kind == "specific"
        else {"latest": {"num_versions": vp.num_versions}}
    )
    db = cfg.dynamic_batching
    batching: dict[str, Any] = {}
    if db is not None:
        batching = {
            "preferred_batch_size": list(db.preferred_batch_sizes),
            "max_queue_delay_microseconds": db.max_queue_delay_us,
            "default_queue_policy": {
                "max_queue_size": db.max_queue_size,
                "default_timeout_microseconds": db.default_timeout_ms * 1000,
                "allow_timeout_override": True,
            },
        }
    kind = "KIND_GPU" if info.provider == "CUDAExecutionProvider" else "KIND_CPU"
    return json_response(
        {
            "name": info.name,
            "platform": cfg.platform,
            "backend": "onnxruntime",
            "max_batch_size": cfg.max_batch_size,
            "default_model_filename": "model.onnx",
            "version_policy": policy,
            "input": [
                {
                    "name": t.name,
                    "data_type": CONFIG_DATATYPE[t.datatype],
                    "format": "FORMAT_NCHW",
                    "dims": list(t.shape),
                }
                for t in info.inputs
            ],
            "output": [
                {"name": t.name, "data_type": CONFIG_DATATYPE[t.datatype], "dims": list(t.shape)} for t in info.outputs
            ],
            "instance_group": [{"name": f"{info.name}_0", "count": cfg.instances, "kind": kind}],
            "dynamic_batching": batching,
            "parameters": {
                "labels": {"string_value": ",".join(info.labels)},
                "provider": {"string_value": info.provider},
                "instance_isolation": {"string_value": cfg.instance_isolation},
            },
        }
    )


def _duration(d) -> dict:
    return {"count": d.count, "ns": d.ns}


@rpc("ModelStatistics")
async def model_statistics(request: web.Request) -> web.Response:
    stats = request.app[HTTP].service.statistics(request.match_info.get("model", ""), _version(request))
    out = []
    for s in stats:
        out.append(
            {
                "name": s.name,
                "version": s.version,
                "last_inference": s.last_inference_ms,
                "inference_count": s.inference_count,
                "execution_count": s.execution_count,
                "inference_stats": {
                    k: _duration(getattr(s, k))
                    for k in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
                },
                "batch_stats": [
                    {
                        "batch_size": b.batch_size,
                        "compute_input": _duration(b.compute_input),
                        "compute_infer": _duration(b.compute_infer),
                        "compute_output": _duration(b.compute_output),
                    }
                    for b in s.batches
                ],
            }
        )
    return json_response({"model_stats": out})


@rpc("RepositoryIndex")
async def repository_index(request: web.Request) -> web.Response:
    ready = False
    body = await read_body(request)
    if body.strip():
        doc = codec.parse_json(body)
        ready = doc.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidInput(f"ready: must be true or false, got {ready!r}")
    return json_response(
        [
            {"name": e.name, "version": e.version, "state": e.state, "reason": e.reason}
            for e in request.app[HTTP].service.index(ready_only=ready)
        ]
    )


@rpc("RepositoryModelLoad")
async def repository_load(request: web.Request) -> web.Response:
    await read_body(request)  # Triton's optional body (parameters) is accepted and not used
    await request.app[HTTP].service.load_model(request.match_info["model"])
    return json_response({})


@rpc("RepositoryModelUnload")
async def repository_unload(request: web.Request) -> web.Response:
    await read_body(request)
    await request.app[HTTP].service.unload_model(request.match_info["model"])
    return json_response({})


# --------------------------------------------------------------------------------------------------
# inference


def to_core(req: codec.Request, model: str, version: str) -> InferRequest:
    return InferRequest(
        model,
        version,
        req.id,
        [InferInput(t.name, t.datatype, t.shape, t.data) for t in req.inputs],
        [RequestedOutput(o.name, o.classification) for o in req.outputs],
        req.timeout_s,
        None,
    )


def _common(doc: dict) -> tuple[str, str, tuple[int, ...], str, int, bool] | None:
    """The common binary request, from its JSON header alone (one input, all of it binary, every output, only
    binary_data_output set): (input name, datatype, shape, id, binary_data_size, binary_data_output), or None."""
    if len(doc) > 3 or "outputs" in doc:
        return None
    params = doc.get("parameters")
    if params is not None and (
        not isinstance(params, dict)
        or any(k != "binary_data_output" for k in params)
        or not isinstance(params.get("binary_data_output", False), bool)
    ):
        return None
    ins = doc.get("inputs")
    if not isinstance(ins, list) or len(ins) != 1 or not isinstance(ins[0], dict):
        return None
    t = ins[0]
    p, shape, name, datatype, rid = (
        t.get("parameters"),
        t.get("shape"),
        t.get("name"),
        t.get("datatype"),
        doc.get("id", ""),
    )
    size = p.get("binary_data_size") if isinstance(p, dict) else None
    if (
        not isinstance(p, dict)
        or len(p) != 1
        or type(size) is not int
        or "data" in t
        or not isinstance(shape, list)
        or not all(type(d) is int and d >= 0 for d in shape)
        or len(shape) > codec.MAX_DIMS
        or not isinstance(name, str)
        or not isinstance(datatype, str)
        or datatype not in codec.WIRE_DTYPES
        or not isinstance(rid, str)
    ):
        return None
    return name, datatype, tuple(shape), rid, size, (params or {}).get("binary_data_output", False) is True


class CommonHeaders:
    """JSON headers of binary requests seen before -> `_common`'s verdict on them. A client sends the same header
    bytes for every request of one shape (tritonclient.http, perf_analyzer), so each is parsed and checked once.
    Bounded: at most `max_entries` headers of at most `max_header_bytes`; when full, it starts over."""

    def __init__(self, max_entries: int = 256, max_header_bytes: int = 2048) -> None:
        self.max_entries, self.max_header_bytes = max_entries, max_header_bytes
        self._seen: dict[bytes, tuple | None] = {}

    def common(self, head: bytes) -> tuple[str, str, tuple[int, ...], str, int, bool] | None:
        """`_common` of the parsed header; a header that is not valid JSON raises as `codec.parse_json` does."""
        try:
            return self._seen[head]
        except KeyError:
            pass
        verdict = _common(codec.parse_json(head, f"request JSON header ({codec.BINARY_HEADER} bytes)"))
        if len(head) <= self.max_header_bytes:
            if len(self._seen) >= self.max_entries:
                self._seen.clear()
            self._seen[head] = verdict
        return verdict


def _content_type(request: web.Request) -> str:
    raw = request.headers.get("Content-Type")
    if raw is None:
        return ""
    if raw == "application/octet-stream" or raw == "application/json":  # the common ones, without parsing
        return raw
    return request.content_type


@rpc("ModelInfer")
async def infer(request: web.Request) -> web.Response:
    http = request.app[HTTP]
    ctype = _content_type(request)
    if ctype not in INFER_CONTENT_TYPES:
        return error_response(
            415,
            f"Content-Type: infer takes application/json, or the binary tensor extension "
            f"(application/octet-stream with {codec.BINARY_HEADER}); got {ctype}",
        )
    match = request.match_info
    model, version = match["model"], match.get("version", "")
    body = await read_body(request)
    header_len = codec.header_length(request.headers.get(codec.BINARY_HEADER), len(body))
    if header_len is not None:
        common = http.common_headers.common(body[:header_len])
        if common is not None and common[4] == len(body) - header_len:
            name, datatype, shape, rid, _, binary_out = common
            raw = RawInferRequest(model, version, rid, name, datatype, shape, body[header_len:], None)
            resp = await http.service.infer_raw(
                raw, lambda: to_core(codec.decode_infer_request(body, header_len), model, version)
            )
            request["model_version"] = resp.model_version
            out, headers = http.binary_answers.encode(resp) if binary_out else codec.encode_infer_response(resp, False)
            return web.Response(body=out, headers=headers)
    req = codec.decode_infer_request(body, header_len)
    resp = await http.service.infer(to_core(req, model, version))
    request["model_version"] = resp.model_version
    out, headers = codec.encode_infer_response(resp, codec.binary_outputs(req, [o.name for o in resp.outputs]))
    return web.Response(body=out, headers=headers)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/v2/health/live", server_live)
    r.add_get("/v2/health/ready", server_ready)
    r.add_get("/v2", server_metadata)
    r.add_get("/v2/models/stats", model_statistics)
    # infer first: aiohttp tries the dynamic routes under one prefix in the order they were added
    r.add_post("/v2/models/{model}/infer", infer, expect_handler=expect_continue)
    r.add_post("/v2/models/{model}/versions/{version}/infer", infer, expect_handler=expect_continue)
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        r.add_get(base, model_metadata)
        r.add_get(base + "/ready", model_ready)
        r.add_get(base + "/config", model_config)
        r.add_get(base + "/stats", model_statistics)
    r.add_post("/v2/repository/index", repository_index, expect_handler=expect_continue)
    r.add_get("/v2/repository/index", repository_index)
    r.add_post("/v2/repository/models/{model}/load", repository_load, expect_handler=expect_continue)
    r.add_post("/v2/repository/models/{model}/unload", repository_unload, expect_handler=expect_continue)
