"""Images over HTTP (`cnn.v1`): classify and explain PNG/JPEG uploads, list the models, the page's live panel.

    POST /v1/models/{m}[/versions/{v}]/classify?top_k=K    Classify: a raw image body (image/png, image/jpeg)
    POST /v1/classify?top_k=K                                or multipart/form-data with one or more files
    POST /v1/models/{m}[/versions/{v}]/explain?top_k=K     Explain: the same bodies; heatmaps as numbers and PNG
         [&class_index=C ...][&overlay=false]               overlays (docs/explain.md)
    GET  /v1/models                                          ListModels (ready models, labels, input shape)
    GET  /v1/stats/live                                      requests/s and latency from the server's counters

Classify answers what `cnn classify --json` prints, one object per image, in `results`. The body is
limited to max_message_bytes (413 beyond it); each image's pixel count is checked from its header, before
any pixel is decoded, by the core (413 RESOURCE_EXHAUSTED, the message naming `images[i]`).
"""

from __future__ import annotations

import base64

import aiohttp
import numpy as np
from aiohttp import web

from server.core.types import ClassifyRequest, ExplainRequest, ImageInput
from server.errors import InvalidInput, ResourceExhausted
from server.http.body import check_length, expect_continue, read_body, waiting
from server.http.status import HTTP, error_response, json_response, rpc

IMAGE_TYPES = ("image/png", "image/jpeg")
PART_TYPES = (*IMAGE_TYPES, "application/octet-stream", "")  # a file part without a type: the decoder decides
MAX_FORM_FIELDS = 64  # parts of a form that are not files (ignored); more: INVALID_ARGUMENT as the form is read


def _top_k(request: web.Request) -> int:
    v = request.query.get("top_k", "")
    if not v:
        return 0
    if not v.isdigit():
        raise InvalidInput(f"top_k: must be a non-negative integer, got {v!r}")
    return int(v)


async def read_images(request: web.Request, limit: int) -> tuple[list[ImageInput], list[str]]:
    """The request's images and their names: a raw image body, or every file part of a multipart form."""
    ctype = request.content_type
    if ctype in IMAGE_TYPES:
        body = await read_body(request)  # within max_message_bytes (413) and http_read_timeout_s per wait (408)
        return [ImageInput(encoded=body)], ["body"]
    if ctype != "multipart/form-data":
        raise web.HTTPUnsupportedMediaType(
            text=f"Content-Type: send an image (image/png, image/jpeg) or multipart/form-data with image files; got {ctype}"
        )
    check_length(request)
    try:
        images, names = await _read_form(request, limit, request.app[HTTP].service.max_images_per_request)
    except (ValueError, AssertionError, aiohttp.http_exceptions.HttpProcessingError) as e:
        # aiohttp's multipart reader refuses a body that is not the form its header announces
        raise InvalidInput(f"request body: not a valid multipart/form-data body: {e}") from None
    if not images:
        raise InvalidInput("'images' is empty: the form has no file parts")
    return images, names


async def _read_form(request: web.Request, limit: int, max_images: int) -> tuple[list[ImageInput], list[str]]:
    """Every file part, refused as soon as there are too many: a 14 MB form of 150,000 one-byte files took
    35 s of the event loop to read (every other request waiting up to 6 s) before the count was checked."""
    images: list[ImageInput] = []
    names: list[str] = []
    total = fields = 0
    reader = await request.multipart()
    while True:
        async with waiting(request, "request body (multipart form)"):
            part = await reader.next()
        if part is None:
            return images, names
        if not isinstance(part, aiohttp.BodyPartReader) or part.filename is None:
            fields += 1
            if fields > MAX_FORM_FIELDS:
                raise InvalidInput(f"request body: the form has more than {MAX_FORM_FIELDS} parts that are not files")
            async with waiting(request, "request body (multipart form)"):
                await part.release()  # form fields that are not files: ignored
            continue
        if len(images) == max_images:
            raise InvalidInput(f"'images' has more than {max_images} entries; at most {max_images} per request")
        where = f"images[{len(images)}]"
        ptype = part.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ptype not in PART_TYPES:
            raise InvalidInput(f"{where}: part '{part.filename}' is {ptype}; send image/png or image/jpeg")
        chunks = []
        while True:
            async with waiting(request, f"{where} ('{part.filename}')"):
                chunk = await part.read_chunk(65536)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise ResourceExhausted(f"{where}: the form's files exceed max_message_bytes ({limit} bytes)")
            chunks.append(chunk)
        images.append(ImageInput(encoded=b"".join(chunks)))
        names.append(part.filename)


def _prediction(p) -> dict:
    return {"label": p.label, "index": p.index, "probability": round(p.probability, 6)}


@rpc("Classify")
async def classify(request: web.Request) -> web.Response:
    http = request.app[HTTP]
    images, names = await read_images(request, http.max_body_bytes)
    want_inputs = request.query.get("return_input", "").lower() in ("1", "true", "yes")
    model, version = request.match_info.get("model", ""), request.match_info.get("version", "")
    resp = await http.service.classify(
        ClassifyRequest(model, version, images, _top_k(request), return_inputs=want_inputs)
    )
    request["model_name"], request["model_version"] = resp.model_name, resp.model_version
    results = []
    for i, (name, preds) in enumerate(zip(names, resp.results)):
        r = {"image": name, "model": resp.model_name, "version": resp.model_version,
             "top_k": [_prediction(p) for p in preds]}  # fmt: skip
        if resp.inputs is not None:  # ?return_input=true: what the model saw (the page draws it)
            x = resp.inputs[i]
            r["model_input"] = {"shape": list(x.shape), "data": [round(float(v), 5) for v in x.reshape(-1)]}
        results.append(r)
    return json_response({"model_name": resp.model_name, "model_version": resp.model_version, "results": results})


def _class_indices(request: web.Request) -> list[int]:
    out = []
    for v in request.query.getall("class_index", []):
        if not v.isdigit():
            raise InvalidInput(f"class_index: must be a class number (0, 1, ...), got {v!r}")
        out.append(int(v))
    return out


@rpc("Explain")
async def explain(request: web.Request) -> web.Response:
    http = request.app[HTTP]
    images, names = await read_images(request, http.max_body_bytes)
    overlay = request.query.get("overlay", "true").lower() not in ("0", "false", "no")
    resp = await http.service.explain(
        ExplainRequest(
            request.match_info.get("model", ""),
            request.match_info.get("version", ""),
            images,
            _top_k(request),
            _class_indices(request),
            overlay,
        )
    )
    request["model_name"], request["model_version"] = resp.model_name, resp.model_version
    results = []
    for name, r in zip(names, resp.results):
        maps = []
        for h in r.heatmaps:
            values = np.asarray(h.values, dtype=np.float32)
            m = {
                "index": int(h.index),
                "label": h.label,
                "height": int(values.shape[0]),
                "width": int(values.shape[1]),
                "values": [round(float(v), 6) for v in values.reshape(-1)],
            }
            if h.overlay_png:
                m["overlay_png"] = base64.b64encode(h.overlay_png).decode()
            maps.append(m)
        results.append({"image": name, "top_k": [_prediction(p) for p in r.top_k], "heatmaps": maps})
    return json_response(
        {"model_name": resp.model_name, "model_version": resp.model_version, "method": resp.method, "results": results}
    )


@rpc("ListModels")
async def list_models(request: web.Request) -> web.Response:
    service = request.app[HTTP].service
    return json_response(
        {
            "models": [
                {
                    "name": m.name,
                    "versions": m.versions,
                    "labels": m.labels,
                    "input_shape": m.input_shape,
                    "color_mode": m.color_mode,
                }
                for m in service.list_models()
            ],
            "default_model": service.default_model_name(),
        }
    )


async def live_stats(request: web.Request) -> web.Response:
    http = request.app[HTTP]
    if http.tokens is not None:
        denied = http.tokens.check("ModelStatistics", request.headers.get("Authorization"))
        if denied is not None:
            return error_response(denied[0], denied[2])
    return json_response(http.live.summary())


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/v1/classify", classify, expect_handler=expect_continue)
    r.add_post("/v1/explain", explain, expect_handler=expect_continue)
    r.add_get("/v1/models", list_models)
    r.add_get("/v1/stats/live", live_stats)
    for base in ("/v1/models/{model}", "/v1/models/{model}/versions/{version}"):
        r.add_post(base + "/classify", classify, expect_handler=expect_continue)
        r.add_post(base + "/explain", explain, expect_handler=expect_continue)
