"""Container health probe: grpc.health.v1 Check against the server's own gRPC port; exit 0 when SERVING.

    python healthcheck.py [ADDRESS]     (default: $CNN_HEALTH_ADDRESS or 127.0.0.1:8001)

$CNN_HEALTH_SERVICE names the service to check ("" = the whole server: SERVING once a model is ready,
NOT_SERVING while draining). The address is an IP literal: no name lookup, no proxy.
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str]) -> int:
    address = argv[1] if len(argv) > 1 else os.environ.get("CNN_HEALTH_ADDRESS", "127.0.0.1:8001")
    service = os.environ.get("CNN_HEALTH_SERVICE", "")
    timeout = float(os.environ.get("CNN_HEALTH_TIMEOUT_S", "3"))
    try:
        with grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)]) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.RpcError as e:
        print(f"health {address}: {e.code().name}: {e.details()}")
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"health {address} {service or '(server)'}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
