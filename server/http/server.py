"""The HTTP side of the server: an aiohttp application on the gRPC server's event loop, over the same core.

`HttpServer(service, metrics, ...)` builds the routes (server/http/v2.py: the Open Inference Protocol's REST
binding; server/http/images.py: images, the model list, the live panel), the page at `/` with its assets
(server/http/static/), the OpenAPI description at `/openapi.json` and Prometheus text at `/metrics`.
`start(address)` binds (TLS when given an ssl context); `stop()` closes the listener and lets in-flight
requests finish within the drain grace (the core refuses new work once `service.drain()` was called).
Why aiohttp: docs/http.md.
"""

from __future__ import annotations

import logging
import mimetypes
import ssl
from pathlib import Path

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.config import ConfigError
from server.http import codec, images, v2
from server.http.live import LiveStats
from server.http.status import HTTP, Tokens, client_errors, error_response

log = logging.getLogger("server.http")

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
OPENAPI = HERE / "openapi.json"


@web.middleware
async def errors_as_json(request: web.Request, handler) -> web.StreamResponse:
    """aiohttp's own refusals outside the RPC handlers (no such route, wrong method) as `{"error": ...}`."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        message = f"{request.method} {request.path}: " + (
            "no such endpoint (see /openapi.json)" if e.status == 404 else e.text or e.reason
        )
        return error_response(e.status, message, {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None)


class MalformedRequests(logging.Filter):
    """aiohttp logs every request it cannot parse (a request line or header too long, bad framing) as an ERROR
    with a traceback: any client could fill the log at any rate. These are the client's errors: one WARNING
    line without the traceback, rate-limited per kind as the RPCs' refusals are (server/lograte.py)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        kind = type(exc).__name__
        client_errors.warning(("malformed", kind), "HTTP malformed request refused (%d %s): %s",
                              exc.code, kind, str(exc.message)[:200])  # fmt: skip
        return False


MALFORMED = MalformedRequests()


def ssl_context(cert_file: str, key_file: str, client_ca_file: str = "") -> ssl.SSLContext:
    """The gRPC side's TLS settings for HTTP: the server certificate; with a client CA, mutual TLS."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert_file, key_file)
        if client_ca_file:
            ctx.load_verify_locations(client_ca_file)
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(
            f"config 'tls_cert_file'/'tls_key_file'/'tls_client_ca_file': cannot load for HTTP: {e}"
        ) from None
    return ctx


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class HttpServer:
    def __init__(
        self,
        service,
        metrics,
        *,
        max_body_bytes: int = 16 * 1024 * 1024,
        tokens: dict[str, list[str]] | None = None,
        drain_grace_s: float = 20.0,
        read_timeout_s: float = 60.0,
        idle_timeout_s: float = 300.0,
    ) -> None:
        self.service = service
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.tokens = Tokens(tokens) if tokens else None
        self.drain_grace_s = drain_grace_s
        self.read_timeout_s = read_timeout_s  # each wait for more of a request body (server/http/body.py)
        # an idle kept-alive connection, or a new one still sending its first headers, is closed after this
        # (aiohttp's keepalive_timeout, whose own default is an hour); 0: never, as max_connection_idle_s
        self.idle_timeout_s = idle_timeout_s if idle_timeout_s > 0 else 2**31 / 1000
        self.live = LiveStats(metrics)
        self.common_headers = v2.CommonHeaders()  # the binary infer fast path: request headers seen before
        self.binary_answers = codec.BinaryAnswers()  # ... and answer headers built before
        self._series: dict[tuple[str, str, str, str], tuple] = {}  # record(): the metric children per label set
        self.port = 0
        self._runner: web.AppRunner | None = None
        app = web.Application(client_max_size=max_body_bytes, middlewares=[errors_as_json])
        app[HTTP] = self
        v2.add_routes(app)
        images.add_routes(app)
        self._files = {
            p.name: (p.read_bytes(), mimetypes.guess_type(p.name)[0] or "application/octet-stream")
            for p in STATIC.iterdir()
            if p.is_file()
        }
        self._openapi = OPENAPI.read_bytes()
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/openapi.json", self._openapi_json)
        app.router.add_get("/metrics", self._metrics)
        self.app = app

    def record(self, rpc_name: str, model: str, version: str, code: str, seconds: float) -> None:
        """One answered request in the adapter metrics, as the gRPC adapter records its own (same RPC names and
        code names, so dashboards and alerts cover both), and by protocol."""
        key = (rpc_name, model, version, code)
        series = self._series.get(key)
        if series is None:  # labels are bounded: RPC names, known models (else ""), their versions, code names
            m = self.metrics
            series = self._series[key] = (
                m.child(m.requests, rpc_name, model, version, code),
                m.child(m.request_duration, rpc_name, model),
                m.child(m.protocol_requests, "http", rpc_name, code),
            )
        series[0].inc()
        series[1].observe(seconds)
        series[2].inc()

    # ---------------------------------------------------------------------------------------------
    # the page, its assets, the API description, metrics

    async def _index(self, request: web.Request) -> web.Response:
        body, ctype = self._files["index.html"]
        return web.Response(body=body, content_type=ctype, charset="utf-8", headers={"Cache-Control": "no-cache"})

    async def _static(self, request: web.Request) -> web.Response:
        f = self._files.get(request.match_info["name"])
        if f is None:
            return error_response(404, f"/static/{request.match_info['name']}: no such file")
        body, ctype = f
        return web.Response(body=body, content_type=ctype, headers={"Cache-Control": "no-cache"})

    async def _openapi_json(self, request: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type="application/json")

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.tokens is not None:
            denied = self.tokens.check("ModelStatistics", request.headers.get("Authorization"))
            if denied is not None:
                return error_response(denied[0], denied[2])
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    # ---------------------------------------------------------------------------------------------
    # start and drain

    async def start(self, address: str, ssl_ctx: ssl.SSLContext | None = None, reuse_port: bool = False) -> int:
        host, port = split_address(address)
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=self.drain_grace_s,
            keepalive_timeout=self.idle_timeout_s,
        )
        await self._runner.setup()
        logging.getLogger("aiohttp.server").addFilter(MALFORMED)  # once: the same filter object is not added twice
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_ctx, backlog=1024, reuse_port=reuse_port or None)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            raise OSError(
                e.errno,
                f"cannot listen on {address} (http_address, the HTTP port): {e.strerror}; choose another with --http-address HOST:PORT",
            ) from None
        self.port = self._runner.addresses[0][1]
        log.info("HTTP on %s:%d%s", host, self.port, " (TLS)" if ssl_ctx else "")
        return self.port

    async def stop(self) -> None:
        """Close the listener, let running requests finish (up to the drain grace), close the connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
