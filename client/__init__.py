"""The Python client for the classification service, and the `cnn` command line.

`from client import ClassificationClient` needs only grpcio and protobuf (the serving install). The names are
imported on first use, so `client.cli` can set up gRPC's environment (GRPC_VERBOSITY) before grpc loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["ClassificationClient", "Prediction"]

if TYPE_CHECKING:
    from client.classify import ClassificationClient, Prediction


def __getattr__(name: str) -> Any:
    if name in __all__:
        from client import classify

        return getattr(classify, name)
    raise AttributeError(f"module 'client' has no attribute {name!r}")
