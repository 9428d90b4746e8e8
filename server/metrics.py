"""The metric catalog: every Prometheus metric the server exports, in one place, one prefix (`cnn_`).

Base units (`_seconds`), `_total` on counters, histograms (not summaries) so replicas aggregate, and
low-cardinality labels (model, version, code, provider; never request ids). Measured at three points
of the data path: the protocol adapter (requests, duration, in flight), the batcher (queue wait, queue
depth, batch size) and the runtime (compute, model loads).
"""

from __future__ import annotations

import platform

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server
from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

PREFIX = "cnn"

# Latencies on a 2-core CPU range from ~100 us (LeNet-5) to seconds under overload.
LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LOAD_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


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

    def __init__(self, max_batch_size: int = 256, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        p = PREFIX
        # --- adapter
        self.requests = Counter(f"{p}_requests", "RPCs answered, by RPC, model, version and gRPC status code.",
                                ["rpc", "model", "version", "code"], registry=r)
        self.request_duration = Histogram(f"{p}_request_duration_seconds", "Time from RPC start to answer (server side).",
                                          ["rpc", "model"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.in_flight = Gauge(f"{p}_requests_in_flight", "RPCs being handled now.", ["rpc"], registry=r)
        self.inference_rows = Counter(f"{p}_inference_rows", "Rows (images) inferred successfully.",
                                      ["model", "version"], registry=r)
        self.nonfinite_inputs = Counter(f"{p}_nonfinite_inputs", "Requests whose FP inputs held NaN or Inf (served, counted).",
                                        ["model"], registry=r)
        # --- batcher
        self.queue_wait = Histogram(f"{p}_queue_wait_seconds", "Time a request waited in the batch queue.",
                                    ["model"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.queue_depth = Gauge(f"{p}_queue_depth_rows", "Rows waiting in the batch queue.", ["model"], registry=r)
        self.batch_size = Histogram(f"{p}_batch_size_rows", "Rows per model execution.", ["model"],
                                    buckets=batch_size_buckets(max_batch_size), registry=r)
        self.rejected = Counter(f"{p}_queue_rejections", "Requests refused or dropped by the batcher, by reason.",
                                ["model", "reason"], registry=r)
        # --- runtime
        self.compute_duration = Histogram(f"{p}_compute_duration_seconds", "onnxruntime run time per batch.",
                                          ["model", "version"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.model_load_duration = Histogram(f"{p}_model_load_duration_seconds", "Time to load and warm a model version.",
                                             ["model"], buckets=LOAD_BUCKETS_S, registry=r)
        self.model_load_failures = Counter(f"{p}_model_load_failures", "Model versions that failed to load.",
                                           ["model"], registry=r)
        self.model_loaded = Gauge(f"{p}_model_loaded_info", "1 for each model version being served.",
                                  ["model", "version", "provider"], registry=r)
        self.build = Info(f"{p}_build", "Build information.", registry=r)
        from server import __version__

        self.build.info({"version": __version__, "python": platform.python_version()})

    def start_http(self, host: str, port: int):
        """Serve /metrics; returns (server, thread). Port 0 picks a free port (server.server_port)."""
        return start_http_server(port, addr=host, registry=self.registry)
