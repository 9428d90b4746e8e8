"""`cnn serve`: flags over environment over the config file over defaults (see server/config.py)."""

from __future__ import annotations

import sys


def add_serve_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a model repository over gRPC and HTTP (Open Inference Protocol)",
        description="Serve a model repository over gRPC and HTTP on onnxruntime. Precedence: flags > "
        "CNN_SERVER_* environment variables > --config file > defaults.",
    )
    p.add_argument("--repository", help="model repository folder (default: model_repository)")
    p.add_argument("--config", help="YAML file of server settings (keys as in server/config.py)")
    p.add_argument("--grpc-address", help="host:port for gRPC (default 127.0.0.1:8001; port 0 = any free port)")
    p.add_argument("--metrics-address", help="host:port for Prometheus /metrics (default 127.0.0.1:8002; '' = off)")
    p.add_argument("--poll-interval-s", type=float, help="repository polling interval in seconds (0 = off; default 2)")
    p.add_argument(
        "--http-address",
        help="host:port for HTTP: the KServe v2 REST binding, /v1 images and the page at / (default 127.0.0.1:8000; '' = off)",
    )
    p.add_argument(
        "--allow-model-control",
        action="store_true",
        default=None,
        help="enable RepositoryModelLoad/Unload (off by default)",
    )
    p.add_argument("--default-model", help="model used by Classify when the request names none")
    p.add_argument(
        "--drain-grace-s", type=float, help="seconds in-flight requests get to finish on SIGTERM (default 20)"
    )
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    p.add_argument(
        "--workers", type=int, help="server processes sharing the gRPC and HTTP ports via SO_REUSEPORT (default 1)"
    )
    p.add_argument("--tls-cert-file", help="PEM server certificate: serve gRPC and HTTP over TLS")
    p.add_argument("--tls-key-file", help="PEM private key for --tls-cert-file")
    p.add_argument("--tls-client-ca-file", help="PEM CA: require client certificates it signed (mTLS)")
    p.add_argument("--auth-tokens-file", help="YAML of bearer tokens per RPC group (see server/security.py)")
    p.set_defaults(func=run_serve)


def run_serve(args) -> int:
    from server.app import run
    from server.config import ConfigError, load_config
    from server.errors import RepositoryError
    from server.startup import check_addresses

    overrides = {
        k: getattr(args, k)
        for k in (
            "repository",
            "grpc_address",
            "metrics_address",
            "http_address",
            "poll_interval_s",
            "allow_model_control",
            "default_model",
            "drain_grace_s",
            "log_level",
            "workers",
            "tls_cert_file",
            "tls_key_file",
            "tls_client_ca_file",
            "auth_tokens_file",
        )
    }
    try:
        config = load_config(args.config, overrides=overrides)
        check_addresses(config)  # every listen address, before any model loads: one line naming it
        return run(config)
    except (ConfigError, RepositoryError, OSError) as e:
        print(f"cnn serve: {e}", file=sys.stderr)
        return 2
