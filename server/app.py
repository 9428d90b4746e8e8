"""Start, serve, drain: the server process.

SIGTERM (or SIGINT) -> health NOT_SERVING -> new calls get UNAVAILABLE -> in-flight and queued
requests finish (up to `drain_grace_s`) -> exit 0. onnxruntime runs in worker threads; the event loop
only moves bytes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from protos.cnn import classification_pb2, classification_pb2_grpc
from protos.inference import grpc_service_pb2, grpc_service_pb2_grpc
from server.config import ServerConfig
from server.errors import RepositoryError
from server.grpc.classification import ClassificationServicer
from server.grpc.inference import InferenceServicer
from server.imaging import ImageLimits
from server.metrics import Metrics
from server.models import ModelManager
from server.security import BearerTokenInterceptor, load_tokens, server_credentials
from server.service import InferenceService

log = logging.getLogger("server")

INFERENCE_SERVICE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
CLASSIFICATION_SERVICE = classification_pb2.DESCRIPTOR.services_by_name["Classification"].full_name


class Server:
    """The assembled server; `start()` then `wait()`; `stop()` drains. Usable from tests in-process."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = Metrics(max_batch_size=256)
        self.manager = ModelManager(config.repository, self.metrics, config.poll_interval_s, config.allow_model_control)
        limits = ImageLimits(max_pixels=config.max_image_pixels)
        self.service = InferenceService(self.manager, self.metrics, default_model=config.default_model,
                                        image_limits=limits, max_images_per_request=config.max_images_per_request)
        self.health = health.aio.HealthServicer()
        self.grpc_port = 0
        self.metrics_port = 0
        self._grpc: grpc.aio.Server | None = None
        self._metrics_http = None
        self._stopped = asyncio.Event()
        self._health_task: asyncio.Task | None = None

    async def start(self) -> None:
        cfg = self.config
        if not Path(cfg.repository).is_dir():
            raise RepositoryError(f"{cfg.repository}: model repository folder does not exist "
                                  "(create it, or export a model into it with `cnn export`)")
        await self.manager.start()
        opts = [("grpc.max_receive_message_length", cfg.max_message_bytes),
                ("grpc.max_send_message_length", cfg.max_message_bytes),
                ("grpc.so_reuseport", 0)]
        interceptors = []
        if cfg.auth_tokens_file:
            def denied(method: str, code: grpc.StatusCode) -> None:
                self.metrics.requests.labels(method.rpartition("/")[2], "", "", code.name).inc()

            interceptors.append(BearerTokenInterceptor(load_tokens(cfg.auth_tokens_file), on_denied=denied))
        self._grpc = grpc.aio.server(options=opts, interceptors=interceptors)
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(self.service, self.metrics), self._grpc)
        classification_pb2_grpc.add_ClassificationServicer_to_server(ClassificationServicer(self.service, self.metrics), self._grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        reflection.enable_server_reflection(
            (INFERENCE_SERVICE, CLASSIFICATION_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self._grpc)
        if cfg.tls_cert_file:
            creds = server_credentials(cfg.tls_cert_file, cfg.tls_key_file, cfg.tls_client_ca_file)
            self.grpc_port = self._grpc.add_secure_port(cfg.grpc_address, creds)
        else:
            self.grpc_port = self._grpc.add_insecure_port(cfg.grpc_address)
        if self.grpc_port == 0:
            raise OSError(f"cannot bind gRPC address {cfg.grpc_address}")
        if cfg.metrics_address:
            host, _, port = cfg.metrics_address.rpartition(":")
            self._metrics_http, _ = self.metrics.start_http(host, int(port))
            self.metrics_port = self._metrics_http.server_port
        await self._grpc.start()
        await self._update_health()
        self._health_task = asyncio.get_running_loop().create_task(self._health_loop())

    async def _update_health(self) -> None:
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        ready = self.service.ready()
        await self.health.set("", serving if ready else not_serving)
        await self.health.set(INFERENCE_SERVICE, serving if ready else not_serving)
        await self.health.set(CLASSIFICATION_SERVICE, serving if ready else not_serving)
        for name, versions in self.manager.serving.items():
            await self.health.set(name, serving if versions and not self.service.draining else not_serving)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            await self._update_health()

    async def stop(self) -> None:
        """Drain and stop: NOT_SERVING, refuse new work, finish what was accepted, close."""
        if self._stopped.is_set():
            return
        grace = self.config.drain_grace_s
        log.info("draining: health NOT_SERVING, finishing in-flight requests (grace %.1f s)", grace)
        self.service.draining = True
        if self._health_task:
            self._health_task.cancel()
        await self.health.enter_graceful_shutdown()
        if self._grpc is not None:
            await self._grpc.stop(grace)  # stops accepting; waits for running RPCs up to `grace`
        await self.manager.close()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        self._stopped.set()
        log.info("stopped")

    async def wait(self) -> None:
        await self._stopped.wait()


async def main(config: ServerConfig) -> int:
    server = Server(config)
    await server.start()
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    host = config.grpc_address.rpartition(":")[0]
    metrics = f"http://{config.metrics_address.rpartition(':')[0]}:{server.metrics_port}/metrics" if config.metrics_address else "off"
    ready = ", ".join(f"{n} v{','.join(map(str, sorted(v)))}" for n, v in sorted(server.manager.serving.items()) if v) or "none"
    # Tests and scripts parse this line to find the ports (port 0 picks free ones).
    print(f"serving gRPC on {host}:{server.grpc_port} metrics {metrics} models: {ready}", flush=True)
    await stop_requested.wait()
    await server.stop()
    return 0


def run(config: ServerConfig) -> int:
    logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(main(config))
