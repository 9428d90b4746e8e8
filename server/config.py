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

import yaml

from server.eventloop import EVENT_LOOPS

ENV_PREFIX = "CNN_SERVER_"


class ConfigError(ValueError):
    pass


@dataclass
class ServerConfig:
    repository: str = "model_repository"  # folder of models (see server/repository.py)
    grpc_address: str = "127.0.0.1:8001"  # host:port; port 0 picks a free one (printed at start)
    metrics_address: str = "127.0.0.1:8002"  # Prometheus /metrics; empty string switches it off
    poll_interval_s: float = 2.0  # repository polling; 0 switches polling off
    allow_model_control: bool = False  # RepositoryModelLoad / Unload
    default_model: str = ""  # for Classify without a model name; empty: the only model, if one
    max_message_bytes: int = 16 * 1024 * 1024  # largest request/response; bigger -> RESOURCE_EXHAUSTED
    drain_grace_s: float = 20.0  # on SIGTERM: how long in-flight and queued requests may take to finish
    max_image_pixels: int = 4096 * 4096  # Classify: larger images are refused before decoding
    max_images_per_request: int = 256  # Classify
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
    event_loop: str = "uvloop"  # uvloop | asyncio: uvloop (libuv) costs the server less CPU per request
    #                             (bench/results/ab/event-loop.md)

    def validate(self, where: Mapping[str, str] | None = None) -> ServerConfig:
        where = where or {}

        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"config '{key}' ({where.get(key, 'default')}): {why}")

        for key in ("grpc_address", "metrics_address"):
            v = getattr(self, key)
            if key == "metrics_address" and v == "":
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
        data = yaml.safe_load(p.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"{what} {p}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {p}: not valid YAML: {e}") from None
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
        raise ConfigError(f"config '{key}' ({source}): expected {typ.__name__}, got {value!r}") from None


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
