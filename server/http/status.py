"""One table from the core's errors to HTTP statuses, the JSON error body, bearer tokens, and the wrapper
every REST handler goes through (errors -> `{"error": "..."}`, metrics by RPC, model, version and code).

The statuses follow the gRPC codes the gRPC adapter answers for the same error (server/grpc/status.py),
as Google's HTTP mapping of gRPC codes has them; the metrics' `code` label carries the gRPC code name for
both protocols, so one error ratio and one alert cover every request.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from server import errors
from server.lograte import RateLimitedLog
from server.security import group_of

log = logging.getLogger("server.http")
client_errors = RateLimitedLog(log)  # refusals clients cause: a few lines per (rpc, code) every 10 s, as gRPC


class RequestTimeout(errors.InvalidInput):
    """The client stopped sending its request body (408; server/http/body.py)."""


HTTP: web.AppKey[Any] = web.AppKey("http")  # the application's HttpServer (service, metrics, tokens, limits)

# error class -> (HTTP status, gRPC code name for the metrics); the first class in an error's MRO decides
STATUS: dict[type, tuple[int, str]] = {
    RequestTimeout: (408, "DEADLINE_EXCEEDED"),
    errors.InvalidInput: (400, "INVALID_ARGUMENT"),
    errors.ModelNotFound: (404, "NOT_FOUND"),
    errors.ModelNotReady: (503, "UNAVAILABLE"),
    errors.Unavailable: (503, "UNAVAILABLE"),
    errors.DeadlineExceeded: (504, "DEADLINE_EXCEEDED"),
    errors.ResourceExhausted: (413, "RESOURCE_EXHAUSTED"),
    errors.Cancelled: (499, "CANCELLED"),  # the client went away; nobody reads the answer
    errors.Unimplemented: (501, "UNIMPLEMENTED"),
    errors.RepositoryError: (400, "FAILED_PRECONDITION"),
    errors.InternalError: (500, "INTERNAL"),
}
# HTTP statuses aiohttp raises itself (routing, body size, methods) -> gRPC code names for the metrics
HTTP_CODE_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    408: "DEADLINE_EXCEEDED",
    413: "RESOURCE_EXHAUSTED",
    415: "INVALID_ARGUMENT",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def status_of(e: errors.ServingError) -> tuple[int, str]:
    for cls in type(e).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500, "INTERNAL"


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=json.dumps({"error": message}).encode(), content_type="application/json", headers=headers
    )


def _finite(doc: Any) -> Any:
    """`doc` with every NaN or infinite float replaced by None (JSON has no literal for them)."""
    if isinstance(doc, float):
        return doc if math.isfinite(doc) else None
    if isinstance(doc, dict):
        return {k: _finite(v) for k, v in doc.items()}
    if isinstance(doc, list | tuple):
        return [_finite(v) for v in doc]
    return doc


def json_response(doc: Any, status: int = 200) -> web.Response:
    """`doc` as strict JSON: a NaN or infinite number (a broken model's probabilities) is written as null."""
    try:
        body = json.dumps(doc, separators=(",", ":"), allow_nan=False)
    except ValueError:
        body = json.dumps(_finite(doc), separators=(",", ":"), allow_nan=False)
    return web.Response(status=status, body=body.encode(), content_type="application/json")


class Tokens:
    """Bearer tokens per RPC group (server/security.py's tokens file), checked in constant time per token."""

    def __init__(self, tokens: dict[str, list[str]]) -> None:
        self.tokens = {g: [t.encode() for t in ts] for g, ts in tokens.items()}
        self.known = [t for ts in self.tokens.values() for t in ts]

    @staticmethod
    def _match(token: bytes, candidates: list[bytes]) -> bool:
        found = False
        for c in candidates:
            found |= hmac.compare_digest(token, c)
        return found

    def check(self, rpc: str, header: str | None) -> tuple[int, str, str] | None:
        """None if `rpc` may be called with this Authorization header; else (status, code name, message)."""
        group = group_of(f"/http/{rpc}")
        accepted = self.tokens.get(group)
        if accepted is None:
            return None
        if not header or not header.startswith("Bearer ") or not header[7:].strip():
            return 401, "UNAUTHENTICATED", f"{group} calls need an 'Authorization: Bearer <token>' header"
        token = header[7:].strip().encode()
        if self._match(token, accepted):
            return None
        if self._match(token, self.known):
            return 403, "PERMISSION_DENIED", f"this token may not make {group} calls"
        return 401, "UNAUTHENTICATED", "unknown token"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
R = TypeVar("R", bound=web.StreamResponse)


def _close_if_unread(request: web.Request, response: R) -> R:
    """An error answer sent before the body was read to its end (refused from its headers, or the client stopped
    sending): the connection is closed after it rather than kept for a next request."""
    if not request.content.is_eof():
        response.force_close()
    return response


def rpc(name: str, model_param: str = "model"):
    """Wrap a REST handler as one RPC: the token check, the error table, and the adapter metrics (requests by
    code, duration, in flight) with protocol="http". The handler may set request["model_version"] for the label."""

    def wrap(fn: Handler) -> Handler:
        @functools.wraps(fn)
        async def handler(request: web.Request) -> web.StreamResponse:
            http = request.app[HTTP]
            metrics, service = http.metrics, http.service
            t0 = time.perf_counter()
            in_flight = metrics.in_flight_counts
            tracked = name in in_flight
            if tracked:
                in_flight[name] += 1
            model = request.match_info.get(model_param, "")
            model = model if model and service.is_known(model) else ""
            code = "OK"
            try:
                if http.tokens is not None:
                    denied = http.tokens.check(name, request.headers.get("Authorization"))
                    if denied is not None:
                        status, code, message = denied
                        client_errors.warning((name, code), "HTTP %s denied: %s", name, code)
                        return error_response(
                            status, message, {"WWW-Authenticate": "Bearer"} if status == 401 else None
                        )
                response = await fn(request)
                if response.status >= 400:
                    code = HTTP_CODE_NAMES.get(response.status, "UNKNOWN")
                    _close_if_unread(request, response)
                return response
            except errors.ServingError as e:
                status, code = status_of(e)
                if e.client_error:  # any client can cause these at any rate: a few lines per kind and interval
                    client_errors.warning((name, code), "HTTP %s %s: %s: %s", name, model or "-", code, e)
                else:
                    log.error("HTTP %s %s: %s: %s", name, model or "-", code, e)
                return _close_if_unread(request, error_response(status, str(e)))
            except web.HTTPException as e:  # aiohttp's own refusals (body too large, ...) as JSON errors
                code = HTTP_CODE_NAMES.get(e.status, "UNKNOWN")
                return _close_if_unread(request, error_response(e.status, e.text or e.reason))
            except ConnectionResetError:  # the client left while its request was read or answered
                code = "CANCELLED"
                return _close_if_unread(request, error_response(499, "the client closed the connection"))
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except Exception as e:
                code = "INTERNAL"
                log.exception("HTTP %s %s: unexpected error", name, model or "-")
                return error_response(500, f"internal error: {type(e).__name__}")
            finally:
                if tracked:
                    in_flight[name] -= 1
                model = request.get("model_name", model)
                http.record(
                    name,
                    model,
                    request.get("model_version", "") if code == "OK" else "",
                    code,
                    time.perf_counter() - t0,
                )

        return handler

    return wrap
