"""Server configuration: one typed object, from defaults < YAML file < environment < command-line flags.

Environment variables are `CNN_SERVER_<KEY>` in upper case (`CNN_SERVER_GRPC_ADDRESS=127.0.0.1:9001`).
Every value is validated at start; an error names the key and where it came from.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server import yaml_safe
from server.eventloop import EVENT_LOOPS

ENV_PREFIX = "CNN_SERVER_"


class ConfigError(ValueError):
    pass


@dataclass
class ServerConfig:
    repository: str = "model_repository"  # folder of models (see server/repository.py)
    grpc_address: str = "127.0.0.1:8001"  # host:port; port 0 picks a free one (printed at start)
    metrics_address: str = "127.0.0.1:8002"  # Prometheus /metrics; empty string switches it off
    http_address: str = "127.0.0.1:8000"  # HTTP: the KServe v2 REST binding, /v1 images, the page at /; "" = off
    poll_interval_s: float = 2.0  # repository polling; 0 switches polling off
    allow_model_control: bool = False  # RepositoryModelLoad / Unload
    default_model: str = ""  # for Classify without a model name; empty: the only model, if one
    max_message_bytes: int = 16 * 1024 * 1024  # largest request/response; bigger -> RESOURCE_EXHAUSTED
    drain_grace_s: float = 20.0  # on SIGTERM: how long in-flight and queued requests may take to finish
    max_image_pixels: int = 4096 * 4096  # Classify: larger images are refused before decoding
    max_images_per_request: int = 256  # Classify
    max_request_pixels: int = 4 * 4096 * 4096  # Classify: all images of one call together (4 limit-size images);
    #                                            above -> RESOURCE_EXHAUSTED from the headers, before decoding
    max_concurrent_streams: int = 256  # calls open at once on one HTTP/2 connection; a client that opens more
    #                                    waits for one to end (an idle stream costs ~36 KB: 256 of them ~9 MiB)
    max_connection_idle_s: float = 300.0  # a connection with no call for this long is closed (GOAWAY); 0: never.
    #                                       HTTP: also the longest a new connection may take to send its first headers
    http_read_timeout_s: float = 60.0  # HTTP: the longest wait for the next bytes of a request body; then 408 and
    #                                    the connection is closed (a client cannot hold one open with a body it never sends)
    max_connection_age_s: float = 0.0  # every connection is retired after this long (clients re-balance); 0: never
    keepalive_time_s: float = 60.0  # ping a connection after this long without traffic; 0: no pings
    keepalive_timeout_s: float = 20.0  # ... and close it if the ping is not answered within this (dead peers)
    stream_window: int = 128  # ModelStreamInfer: requests of one stream in flight or answered but not yet read by
    #                           the client; beyond it the stream stops reading (HTTP/2 flow control holds the client)
    log_level: str = "INFO"
    workers: int = 1  # server processes sharing grpc_address via SO_REUSEPORT; each loads every model (memory x N)
    tls_cert_file: str = ""  # PEM server certificate (chain); with tls_key_file switches gRPC to TLS
    tls_key_file: str = ""  # PEM private key of the certificate
    tls_client_ca_file: str = ""  # PEM CA bundle; set: clients must present a certificate it signed (mTLS)
    auth_tokens_file: str = ""  # YAML: RPC group -> accepted bearer tokens (server/security.py); empty: no auth
    gil_switch_interval_s: float = 0.0005  # sys.setswitchinterval: how long a finished onnxruntime thread may wait
    #                                      for the GIL the busy event loop holds (Python's default, 5 ms, leaves a
    #                                      compute-bound model idle between batches; measurements in
    #                                      docs/benchmarks.md); 0: keep Python's default
    gc_gen0_threshold: int = 0  # gc.set_threshold(N, 10, 10); 0 keeps Python's 700. A large value trims the tail
    #                             latency under load but lets memory grow (docs/benchmarks.md): an option, not the default
    gc_freeze: bool = True  # gc.freeze() once the models are loaded: the start-up objects (modules, sessions,
    #                         protobuf and HTTP machinery) leave the collector's view, so an oldest-generation
    #                         collection no longer stops the loop for ~25 ms (docs/benchmarks.md, open-loop tail)
    event_loop: str = "uvloop"  # uvloop | asyncio: uvloop (libuv) costs the server less CPU per request
    #                             (bench/results/ab/event-loop.md)
    low_confidence_threshold: float = 0.5  # answers whose top-1 probability is under this count as low-confidence
    #                                        (cnn_low_confidence_predictions_total; server/predictions.py)
    prediction_telemetry: bool = True  # count every answer's top-1 class and confidence (cnn_predictions_total
    #                                   and the other series of server/predictions.py); false: none of them
    prediction_max_classes: int = 32  # class label values per model in the prediction series; a model with more
    #                                   classes reports the rest (by its test-split share) as class "other"

    def validate(self, where: Mapping[str, str] | None = None) -> ServerConfig:
        where = where or {}

        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"config '{key}' ({where.get(key, 'default')}): {why}")

        for key in ("grpc_address", "metrics_address", "http_address"):
            v = getattr(self, key)
            if key in ("metrics_address", "http_address") and v == "":
                continue
            host, sep, port = str(v).rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
                raise bad(key, f"must be host:port, got {v!r}")
        if self.poll_interval_s < 0:
            raise bad("poll_interval_s", f"must be >= 0, got {self.poll_interval_s}")
        if not 1024 <= self.max_message_bytes <= 2**31 - 1:
            raise bad("max_message_bytes", f"must be in 1024..2147483647, got {self.max_message_bytes}")
        if self.drain_grace_s < 0:
            raise bad("drain_grace_s", f"must be >= 0, got {self.drain_grace_s}")
        if self.max_image_pixels < 1:
            raise bad("max_image_pixels", f"must be positive, got {self.max_image_pixels}")
        if self.max_images_per_request < 1:
            raise bad("max_images_per_request", f"must be positive, got {self.max_images_per_request}")
        if self.max_request_pixels < self.max_image_pixels:
            raise bad(
                "max_request_pixels",
                f"must be >= max_image_pixels ({self.max_image_pixels}), got {self.max_request_pixels}",
            )
        if not 1 <= self.max_concurrent_streams <= 2**31 - 1:
            raise bad("max_concurrent_streams", f"must be a positive integer, got {self.max_concurrent_streams}")
        for key in ("max_connection_idle_s", "max_connection_age_s", "keepalive_time_s", "keepalive_timeout_s"):
            if not 0 <= getattr(self, key) <= 2**31 / 1000:
                raise bad(key, f"must be in 0..{2**31 // 1000} seconds, got {getattr(self, key)}")
        if not 0 < self.http_read_timeout_s <= 3600:
            raise bad("http_read_timeout_s", f"must be in (0, 3600] seconds, got {self.http_read_timeout_s}")
        if not 1 <= self.stream_window <= 65536:
            raise bad("stream_window", f"must be in 1..65536, got {self.stream_window}")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise bad(
                "tls_key_file" if self.tls_cert_file else "tls_cert_file",
                "tls_cert_file and tls_key_file must be set together",
            )
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise bad("tls_client_ca_file", "client certificates need TLS: set tls_cert_file and tls_key_file too")
        if self.gil_switch_interval_s != 0 and not 1e-5 <= self.gil_switch_interval_s <= 0.1:
            raise bad(
                "gil_switch_interval_s",
                f"must be 0 (Python's default) or in 1e-05..0.1, got {self.gil_switch_interval_s}",
            )
        if self.gc_gen0_threshold != 0 and not 100 <= self.gc_gen0_threshold <= 10_000_000:
            raise bad(
                "gc_gen0_threshold", f"must be 0 (Python's default) or in 100..10000000, got {self.gc_gen0_threshold}"
            )
        if not 0.0 < self.low_confidence_threshold < 1.0:
            raise bad("low_confidence_threshold", f"must be between 0 and 1, got {self.low_confidence_threshold}")
        if not 1 <= self.prediction_max_classes <= 1000:
            raise bad("prediction_max_classes", f"must be in 1..1000, got {self.prediction_max_classes}")
        if self.event_loop not in EVENT_LOOPS:
            raise bad("event_loop", f"must be one of {', '.join(EVENT_LOOPS)}, got {self.event_loop!r}")
        if self.event_loop == "uvloop":
            try:
                import uvloop  # noqa: F401
            except ImportError:
                raise bad(
                    "event_loop", "uvloop is not installed (pip install uvloop), or set event_loop: asyncio"
                ) from None
        if not 1 <= self.workers <= 64:
            raise bad("workers", f"must be in 1..64, got {self.workers}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise bad("log_level", f"must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")
        return self


def read_yaml_mapping(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping; errors start with `what` and the path."""
    p = Path(path)
    try:
        data = yaml_safe.load_file(p) or {}  # size-limited, no anchors/aliases, bounded messages
    except OSError as e:
        raise ConfigError(f"{what} {p}: {e.strerror}") from None
    except yaml_safe.YamlRefused as e:
        raise ConfigError(f"{what} {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {p}: must be a mapping of keys to values")
    return data


def _coerce(key: str, value: Any, typ: type, source: str) -> Any:
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            s = str(value).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return typ(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config '{key}' ({source}): expected {typ.__name__}, got {yaml_safe.brief(value)}") from None


def load_config(
    path: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ServerConfig:
    """defaults < file < env < overrides (flags; None values are ignored)."""
    env = os.environ if env is None else env
    fields = {f.name: f for f in dataclasses.fields(ServerConfig)}
    types = {name: type(f.default) for name, f in fields.items()}
    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    if path:
        p = Path(path)
        data = read_yaml_mapping(p, "config file")
        for k, v in data.items():
            if k not in fields:
                raise ConfigError(f"config file {p}: unknown key '{k}' (valid: {', '.join(fields)})")
            values[k], where[k] = _coerce(k, v, types[k], str(p)), str(p)
    for k in fields:
        name = ENV_PREFIX + k.upper()
        if name in env:
            values[k], where[k] = _coerce(k, env[name], types[k], name), name
    unknown_env = [n for n in env if n.startswith(ENV_PREFIX) and n[len(ENV_PREFIX) :].lower() not in fields]
    if unknown_env:
        raise ConfigError(
            f"environment variable {unknown_env[0]} is not a server setting (valid keys: {', '.join(fields)})"
        )
    for k, v in (overrides or {}).items():
        if v is not None:
            values[k], where[k] = _coerce(k, v, types[k], "command line"), "command line"
    return ServerConfig(**values).validate(where)
