"""Start, serve, drain: the server process.

SIGTERM (or SIGINT) -> health NOT_SERVING -> new calls get UNAVAILABLE -> in-flight and queued
requests finish (up to `drain_grace_s`) -> exit 0. Wiring only: the core (server/core/) does the
serving, the gRPC adapters (server/grpc/) the protocol; onnxruntime runs in instance threads or
processes (server/runtime/), and the event loop only moves bytes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import multiprocessing as mp
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from protos.cnn import classification_pb2, classification_pb2_grpc
from protos.inference import grpc_service_pb2, grpc_service_pb2_grpc
from server.config import ServerConfig
from server.core.registry import ModelRegistry
from server.core.service import InferenceService
from server.drain import Drain, stop_server
from server.errors import RepositoryError
from server.eventloop import run_loop
from server.grpc.classification import ClassificationServicer
from server.grpc.inference import InferenceServicer
from server.imaging import ImageLimits
from server.metrics import Metrics
from server.security import BearerTokenInterceptor, load_tokens, server_credentials
from server.startup import models_summary, summary_line
from server.transport import certificate_warnings, grpc_options

if TYPE_CHECKING:  # imported when HTTP is on (server/http/ brings aiohttp)
    from server.http.server import HttpServer

log = logging.getLogger("server")

INFERENCE_SERVICE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
CLASSIFICATION_SERVICE = classification_pb2.DESCRIPTOR.services_by_name["Classification"].full_name


class Server:
    """The assembled server; `start()` then `wait()`; `stop()` drains. Usable from tests in-process."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = Metrics(
            max_batch_size=256,
            low_confidence_threshold=config.low_confidence_threshold,
            prediction_max_classes=config.prediction_max_classes,
            prediction_telemetry=config.prediction_telemetry,
        )
        registry = ModelRegistry(config.repository, self.metrics, config.poll_interval_s)
        limits = ImageLimits(max_pixels=config.max_image_pixels)
        self.service = InferenceService(
            registry,
            self.metrics,
            default_model=config.default_model,
            image_limits=limits,
            max_images_per_request=config.max_images_per_request,
            max_request_pixels=config.max_request_pixels,
            allow_model_control=config.allow_model_control,
        )
        self.drain = Drain()  # SIGTERM: hold new calls, stop the transport, then answer them (server/drain.py)
        self.health = health.aio.HealthServicer()
        self.grpc_port = 0
        self.metrics_port = 0
        self.http_port = 0
        self._http: HttpServer | None = None  # when http_address is set
        self._grpc: grpc.aio.Server | None = None
        self._metrics_http = None
        self._stopped = asyncio.Event()
        self._health_task: asyncio.Task | None = None

    async def start(self) -> None:
        cfg = self.config
        if not Path(cfg.repository).is_dir():
            raise RepositoryError(
                f"{cfg.repository}: model repository folder does not exist "
                "(create it, or export a model into it with `cnn export`)"
            )
        await self.service.start()
        opts = [
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.max_send_message_length", cfg.max_message_bytes),
            ("grpc.so_reuseport", 1 if cfg.workers > 1 else 0),
            *grpc_options(cfg),  # streams per connection, idle / age / keepalive (server/transport.py)
        ]  # workers share the port; else one server owns it
        interceptors = []
        if cfg.auth_tokens_file:

            def denied(method: str, code: grpc.StatusCode) -> None:
                self.metrics.requests.labels(method.rpartition("/")[2], "", "", code.name).inc()
                self.metrics.protocol_requests.labels("grpc", method.rpartition("/")[2], code.name).inc()

            interceptors.append(BearerTokenInterceptor(load_tokens(cfg.auth_tokens_file), on_denied=denied))
        self._grpc = grpc.aio.server(options=opts, interceptors=interceptors)
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            self._servicer(InferenceServicer(self.service, self.metrics)), self._grpc
        )
        classification_pb2_grpc.add_ClassificationServicer_to_server(
            self._servicer(ClassificationServicer(self.service, self.metrics)), self._grpc
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        reflection.enable_server_reflection(
            (INFERENCE_SERVICE, CLASSIFICATION_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self._grpc
        )
        if cfg.tls_cert_file:
            for warning in certificate_warnings(cfg.tls_cert_file):
                log.warning("%s", warning)
            creds = server_credentials(cfg.tls_cert_file, cfg.tls_key_file, cfg.tls_client_ca_file)
            self.grpc_port = self._grpc.add_secure_port(cfg.grpc_address, creds)
        else:
            self.grpc_port = self._grpc.add_insecure_port(cfg.grpc_address)
        if self.grpc_port == 0:
            raise OSError(f"cannot bind gRPC address {cfg.grpc_address}")
        if cfg.metrics_address:
            host, _, port = cfg.metrics_address.rpartition(":")
            http_server, _ = self.metrics.start_http(host, int(port))
            self._metrics_http = http_server
            self.metrics_port = http_server.server_port
        await self._grpc.start()
        if cfg.http_address:  # HTTP on the same loop, over the same core (server/http/)
            from server.http.server import HttpServer, ssl_context

            self._http = HttpServer(
                self.service,
                self.metrics,
                max_body_bytes=cfg.max_message_bytes,
                tokens=load_tokens(cfg.auth_tokens_file) if cfg.auth_tokens_file else None,
                drain_grace_s=cfg.drain_grace_s,
                read_timeout_s=cfg.http_read_timeout_s,
                idle_timeout_s=cfg.max_connection_idle_s,
            )
            tls = (
                ssl_context(cfg.tls_cert_file, cfg.tls_key_file, cfg.tls_client_ca_file) if cfg.tls_cert_file else None
            )
            self.http_port = await self._http.start(cfg.http_address, tls, reuse_port=cfg.workers > 1)
        await self._update_health()
        self._health_task = asyncio.get_running_loop().create_task(self._health_loop())

    async def _update_health(self) -> None:
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        ready = self.service.ready()
        await self.health.set("", serving if ready else not_serving)
        await self.health.set(INFERENCE_SERVICE, serving if ready else not_serving)
        await self.health.set(CLASSIFICATION_SERVICE, serving if ready else not_serving)
        for name, ok in self.service.model_health().items():
            await self.health.set(name, serving if ok else not_serving)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            await self._update_health()

    def _servicer(self, servicer):
        """A gRPC servicer wired to this server's drain and stream window (server/grpc/status.py reads them)."""
        servicer.drain = self.drain
        servicer.stream_window = self.config.stream_window
        return servicer

    async def stop(self) -> None:
        """Drain and stop: NOT_SERVING, refuse new work, finish what was accepted, close."""
        if self._stopped.is_set():
            return
        grace = self.config.drain_grace_s
        log.info("draining: health NOT_SERVING, finishing in-flight requests (grace %.1f s)", grace)
        self.service.drain()
        self.drain.begin()
        if self._health_task:
            self._health_task.cancel()
        await self.health.enter_graceful_shutdown()
        # both transports stop accepting and let running requests finish, up to `grace`, at the same time
        await asyncio.gather(
            # gRPC: hold what arrives, stop accepting, answer the held calls UNAVAILABLE, end open streams;
            # running RPCs get up to `grace` (server/drain.py: no call around the signal ends CANCELLED)
            *([stop_server(self._grpc, self.drain, grace)] if self._grpc is not None else []),
            *([self._http.stop()] if self._http is not None else []),
        )
        await self.service.close()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        self._stopped.set()
        log.info("stopped")

    async def wait(self) -> None:
        await self._stopped.wait()


async def main(config: ServerConfig, ready_pipe=None) -> int:
    if config.gil_switch_interval_s:
        sys.setswitchinterval(config.gil_switch_interval_s)
    if config.gc_gen0_threshold:
        gc.set_threshold(config.gc_gen0_threshold, *gc.get_threshold()[1:])
    loop = asyncio.get_running_loop()
    log.info("event loop: %s.%s; gc thresholds %s", type(loop).__module__, type(loop).__name__, gc.get_threshold())
    server = Server(config)
    await server.start()
    if config.gc_freeze:  # after the models loaded: what start-up made stays; later garbage is still collected
        gc.collect()
        gc.freeze()
        log.info("gc: %d start-up objects frozen (out of the collector's generations)", gc.get_freeze_count())
    stop_requested = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    host = config.grpc_address.rpartition(":")[0]
    metrics = (
        f"http://{config.metrics_address.rpartition(':')[0]}:{server.metrics_port}/metrics"
        if config.metrics_address
        else "off"
    )
    ready = models_summary(  # name, versions, provider (server/startup.py)
        (m.name, m.versions, server.service.model_config(m.name).provider) for m in server.service.list_models()
    )
    tokens = load_tokens(config.auth_tokens_file) if config.auth_tokens_file else None
    if ready_pipe is not None:  # a worker: the supervisor prints one line for all of them
        ready_pipe.send((server.grpc_port, metrics, ready))
        ready_pipe.close()
    else:
        # Tests and scripts parse this line to find the ports (port 0 picks free ones).
        http = f"http://{config.http_address.rpartition(':')[0]}:{server.http_port}" if config.http_address else "off"
        print(summary_line(host, server.grpc_port, metrics, ready, config, tokens, http), flush=True)
    await stop_requested.wait()
    await server.stop()
    return 0


def run(config: ServerConfig) -> int:
    logging.basicConfig(
        level=config.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if config.workers > 1:
        return _supervise(config)
    return run_loop(main(config), config.event_loop)


def _worker(config: ServerConfig, index: int, ready_pipe) -> None:
    for h in logging.getLogger().handlers:
        h.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [worker {index}] %(name)s: %(message)s"))
    sys.exit(run_loop(main(config, ready_pipe), config.event_loop))


def _supervise(config: ServerConfig) -> int:
    """`workers` whole servers (models, batchers, metrics each) on one gRPC port with SO_REUSEPORT: the kernel
    spreads connections across them, so one process's event loop stops being the ceiling. The parent forks
    them before any gRPC or onnxruntime state exists, prints one ready line, forwards SIGTERM/SIGINT (each
    worker drains as a single server does) and exits with the worst exit code. Worker i serves /metrics on
    the configured port + i (port 0: any free port each)."""
    host, _, port = config.grpc_address.rpartition(":")
    reserve = None
    if int(port) == 0:  # one port for all of them, held until they have bound it
        reserve = socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET)
        reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reserve.bind((host.strip("[]"), 0))
        port = str(reserve.getsockname()[1])
    ctx = mp.get_context("fork")
    procs, pipes = [], []
    for i in range(config.workers):
        metrics = config.metrics_address
        if metrics:
            mhost, _, mport = metrics.rpartition(":")
            metrics = f"{mhost}:{int(mport) + i if int(mport) else 0}"
        wcfg = dataclasses.replace(config, grpc_address=f"{host}:{port}", metrics_address=metrics)
        parent_end, child_end = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_worker, args=(wcfg, i, child_end), name=f"cnn-serve-worker-{i}")
        p.start()
        child_end.close()
        procs.append(p)
        pipes.append(parent_end)

    def forward(sig, _frame):
        for p in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    answers = []
    for pipe in pipes:
        try:
            answers.append(pipe.recv())
        except EOFError:  # that worker failed to start; its error is in the log
            forward(signal.SIGTERM, None)
            for q in procs:
                q.join()
            return max(q.exitcode or 0 for q in procs) or 2
    if reserve is not None:
        reserve.close()
    grpc_port, metrics, ready = answers[0]
    others = ", ".join(a[1].rpartition(":")[2].split("/")[0] for a in answers[1:]) if metrics != "off" else ""
    tokens = load_tokens(config.auth_tokens_file) if config.auth_tokens_file else None
    print(
        summary_line(host, grpc_port, metrics, ready, config, tokens)
        + f" (workers: {config.workers}"
        + (f"; the others' metrics ports: {others}" if others else "")
        + ")",
        flush=True,
    )
    for p in procs:
        p.join()
    return max(p.exitcode or 0 for p in procs)
