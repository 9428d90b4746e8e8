"""The metric catalog: every Prometheus metric the server exports, in one place, one prefix (`cnn_`).

Base units (`_seconds`), `_total` on counters, histograms (not summaries) so replicas aggregate, and
low-cardinality labels (model, version, code, provider; never request ids). Measured at three points
of the data path: the protocol adapter (requests, duration, in flight), the batcher (queue wait, queue
depth, batch size) and the runtime (compute, model loads); and what the models answer (server/predictions.py:
top-1 class and confidence per model beside the test-split reference).

The catalog is documented in docs/operations.md (tests/deploy/test_catalog.py keeps the two in step);
the dashboard (deploy/grafana) and alerts (deploy/prometheus) read these names. Label values are
pre-initialised (`init_model`, `preinitialise`) so every series exists, at 0, before its first event.
"""

from __future__ import annotations

import functools
import platform
import threading
import weakref
from collections.abc import Iterable, Sequence
from importlib import metadata as _metadata
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)

from server.predictions import PredictionTelemetry

PREFIX = "cnn"

# No `<counter>_created` / `<histogram>_created` series: Prometheus does not use them, and they would
# double the series count of every labelled counter and histogram (process-wide setting).
disable_created_metrics()

# Latencies on a 2-core CPU range from ~100 us (LeNet-5) to seconds under overload.
LATENCY_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
LOAD_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


# RPCs the adapters record (server/grpc/*.py `@rpc(NAME)` plus the streaming one); in-flight gauges for all
# of them, and per-model request series for the inference ones, exist from the start (see init_model).
INFERENCE_RPCS = ("ModelInfer", "ModelStreamInfer", "Classify", "Explain")
OTHER_RPCS = (
    "ServerLive",
    "ServerReady",
    "ServerMetadata",
    "ModelReady",
    "ModelMetadata",
    "ModelConfig",
    "ModelStatistics",
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
    "ListModels",
)
# Codes an inference RPC can end with (server/grpc/status.py STATUS); error ratios and alerts read them.
PREINIT_ERROR_CODES = (
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "RESOURCE_EXHAUSTED",
    "CANCELLED",
    "INTERNAL",
)
# The transports every request arrives on (cnn_protocol_requests_total).
PROTOCOLS = ("grpc", "http")
# The batcher's rejection reasons (server/core/batcher.py BatchObserver.on_reject).
REJECT_REASONS = ("queue_full", "deadline", "cancelled", "shutdown")


def _dist_version(name: str) -> str:
    try:
        return _metadata.version(name)
    except _metadata.PackageNotFoundError:
        return ""


def batch_size_buckets(max_batch_size: int) -> tuple[float, ...]:
    """Powers of two up to the largest max_batch_size in the repository (the issue: 'buckets up to max batch')."""
    out, b = [], 1
    while b < max_batch_size:
        out.append(float(b))
        b *= 2
    out.append(float(max_batch_size))
    return tuple(out)


class Metrics:
    """All server metrics on a private registry (tests create several servers in one process)."""

    def __init__(
        self,
        max_batch_size: int = 256,
        registry: CollectorRegistry | None = None,
        low_confidence_threshold: float = 0.5,
        prediction_max_classes: int = 32,
        prediction_telemetry: bool = True,
    ) -> None:
        self.prediction_telemetry = prediction_telemetry  # off: no prediction series, nothing counted
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        p = PREFIX
        # --- adapter
        self.requests = Counter(
            f"{p}_requests",
            "RPCs answered, by RPC, model, version and gRPC status code.",
            ["rpc", "model", "version", "code"],
            registry=r,
        )
        self.request_duration = Histogram(
            f"{p}_request_duration_seconds",
            "Time from RPC start to answer (server side).",
            ["rpc", "model"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.in_flight = Gauge(f"{p}_requests_in_flight", "RPCs being handled now.", ["rpc"], registry=r)
        self.protocol_requests = Counter(
            f"{p}_protocol_requests",
            "Requests answered, by protocol (grpc, http), RPC and gRPC status code name.",
            ["protocol", "rpc", "code"],
            registry=r,
        )
        for proto in PROTOCOLS:  # the inference RPCs' series exist, at 0, from the start
            for rpc in INFERENCE_RPCS:
                for code in ("OK", *PREINIT_ERROR_CODES):
                    self.protocol_requests.labels(proto, rpc, code)
        self.inference_rows = Counter(
            f"{p}_inference_rows", "Rows (images) inferred successfully.", ["model", "version"], registry=r
        )
        self.nonfinite_inputs = Counter(
            f"{p}_nonfinite_inputs",
            "Requests whose FP inputs held NaN or Inf (served, counted).",
            ["model"],
            registry=r,
        )
        # --- batcher
        self.queue_wait = Histogram(
            f"{p}_queue_wait_seconds",
            "Time a request waited in the batch queue.",
            ["model"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue_depth = Gauge(
            f"{p}_queue_depth_rows",
            "Rows waiting in the model's batch queues (every served version's and Explain's, summed).",
            ["model"],
            registry=r,
        )
        # model -> the live batchers' observers; each keeps its queue's rows in `.rows` (a plain attribute
        # store on the hot path), the gauge sums them when scraped; a retired batcher drops out with its observer
        self._queues: dict[str, weakref.WeakSet] = {}
        self._queues_lock = threading.Lock()  # adds (loop thread, at a load) against sums (the scrape thread)
        self.queue_capacity = Gauge(
            f"{p}_queue_capacity_rows",
            "Rows the batch queue holds before refusing (queue saturation = depth / capacity).",
            ["model"],
            registry=r,
        )
        self.batch_size = Histogram(
            f"{p}_batch_size_rows",
            "Rows per model execution.",
            ["model"],
            buckets=batch_size_buckets(max_batch_size),
            registry=r,
        )
        self.rejected = Counter(
            f"{p}_queue_rejections",
            "Requests refused or dropped by the batcher, by reason.",
            ["model", "reason"],
            registry=r,
        )
        # --- runtime
        self.compute_duration = Histogram(
            f"{p}_compute_duration_seconds",
            "onnxruntime run time per batch.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.model_load_duration = Histogram(
            f"{p}_model_load_duration_seconds",
            "Time to load and warm a model version.",
            ["model"],
            buckets=LOAD_BUCKETS_S,
            registry=r,
        )
        self.model_load_failures = Counter(
            f"{p}_model_load_failures", "Model versions that failed to load.", ["model"], registry=r
        )
        self.model_loaded = Gauge(
            f"{p}_model_loaded_info",
            "1 for each model version being served.",
            ["model", "version", "provider"],
            registry=r,
        )
        self.build = Info(f"{p}_build", "Build information.", registry=r)
        from server import __version__

        ort = _dist_version("onnxruntime") or _dist_version("onnxruntime-gpu")
        self.build.info(
            {
                "version": __version__,
                "python": platform.python_version(),
                "onnxruntime": ort,
                "grpcio": _dist_version("grpcio"),
            }
        )
        # RPCs in flight, by name: plain counters that the adapters bump on the event loop (no lock per request);
        # the gauge reads them when scraped. Every RPC's series exists, at 0, from the start.
        self.in_flight_counts: dict[str, int] = {}
        for rpc in INFERENCE_RPCS + OTHER_RPCS:
            self.in_flight_counts[rpc] = 0
            self.in_flight.labels(rpc).set_function(functools.partial(self.in_flight_counts.__getitem__, rpc))
        self._children: dict = {}
        # --- answers: top-1 class and confidence per model, and the test-split reference (server/predictions.py)
        self.predictions = PredictionTelemetry(r, low_confidence_threshold, prediction_max_classes)

    def child(self, metric, *labels: str):
        """`metric.labels(*labels)`, cached: the hot path asks for the same few series on every request, and
        `labels()` validates, stringifies and locks each time. Only for series that are never removed."""
        key = (id(metric), labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    # ---------------------------------------------------------------------------------------------
    # label pre-initialisation: series exist at 0 before the first event, so rate(), increase() and
    # the error ratio see the first error instead of a series that appears already at 1.

    def init_model(self, name: str) -> None:
        """A model seen in the repository (before loading it): load duration/failure series at 0."""
        self.model_load_duration.labels(name)
        self.model_load_failures.labels(name)

    def init_version(self, name: str, version: str) -> None:
        """A version about to serve: its request, latency, batcher and compute series at 0.

        Label values as the adapters record them: a successful unary call carries the served version;
        a failed one, and every ModelStreamInfer answer, carries version ""."""
        self.init_model(name)
        for rpc in INFERENCE_RPCS:
            self.request_duration.labels(rpc, name)
            self.requests.labels(rpc, name, "" if rpc == "ModelStreamInfer" else version, "OK")
            for code in PREINIT_ERROR_CODES:
                self.requests.labels(rpc, name, "", code)
        self.inference_rows.labels(name, version)
        self.nonfinite_inputs.labels(name)
        self.queue_wait.labels(name)
        self.queue_depth.labels(name)
        self.batch_size.labels(name)
        self.compute_duration.labels(name, version)
        for reason in REJECT_REASONS:
            self.rejected.labels(name, reason)

    def track_queue(self, model: str, observer: Any) -> None:
        """`observer.rows` (a batcher's queued rows) counts into cnn_queue_depth_rows{model} while it lives."""
        with self._queues_lock:
            observers = self._queues.get(model)
            if observers is None:
                observers = self._queues[model] = weakref.WeakSet()
                self.queue_depth.labels(model).set_function(functools.partial(self._queued_rows, observers))
            observers.add(observer)

    def _queued_rows(self, observers: weakref.WeakSet) -> float:
        with self._queues_lock:
            return float(sum(o.rows for o in list(observers)))

    def preinitialise(self, model: str, version: str, queue_capacity_rows: int | None = None) -> None:
        """A version is (about to be) served: every series the dashboard and alerts read for it, at 0.

        server/core/registry.py calls this when a version is swapped in; `queue_capacity_rows` (the batcher's
        max_queue_rows) feeds the queue-saturation panel and alert."""
        self.init_version(model, version)
        if queue_capacity_rows is not None:
            self.queue_capacity.labels(model).set(queue_capacity_rows)

    def init_predictions(
        self,
        model: str,
        labels: Sequence[str],
        output_names: Iterable[str],
        reference: dict[str, Any] | None,
        version: str = "",
    ) -> None:
        """A version is swapped in: its prediction series (every class, at 0) and its test-split reference.
        With the telemetry off the model gets no series, so the core finds no tap and counts nothing."""
        if not self.prediction_telemetry:
            return
        self.predictions.configure(model, labels, output_names, reference, version)

    def start_http(self, host: str, port: int):
        """Serve /metrics; returns (server, thread). Port 0 picks a free port (server.server_port)."""
        return start_http_server(port, addr=host, registry=self.registry)
