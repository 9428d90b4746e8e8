"""One table from the core's errors to gRPC status codes, and the wrapper every unary RPC goes through.

The wrapper also does the adapter-level metrics (requests by code, duration, in flight) through
`record`, which ModelStreamInfer uses for each of its messages too. Client errors are logged as
warnings; anything unexpected is logged with its traceback and answered INTERNAL.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time

import grpc

from server import errors
from server.drain import DRAIN_MESSAGE
from server.lograte import RateLimitedLog
from server.metrics import Metrics

log = logging.getLogger("server.grpc")
client_errors = RateLimitedLog(log)  # refusals clients cause: at most a few lines per (rpc, code) every 10 s

STATUS = {
    errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ModelNotFound: grpc.StatusCode.NOT_FOUND,
    errors.ModelNotReady: grpc.StatusCode.UNAVAILABLE,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    errors.RepositoryError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.InternalError: grpc.StatusCode.INTERNAL,
}


def status_of(e: errors.ServingError) -> grpc.StatusCode:
    for cls in type(e).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return grpc.StatusCode.INTERNAL


def model_label(service, name: str) -> str:
    """The model label for a request: names the server does not know are recorded as "" to keep label
    cardinality bounded whatever clients send."""
    return name if name and service.is_known(name) else ""


def record(metrics: Metrics, rpc_name: str, model: str, version: str, code: str, t0: float) -> None:
    """One answered call (or stream message): requests by code, and its duration since `t0` (perf_counter)."""
    metrics.child(metrics.requests, rpc_name, model, version, code).inc()
    metrics.child(metrics.protocol_requests, "grpc", rpc_name, code).inc()
    metrics.child(metrics.request_duration, rpc_name, model).observe(time.perf_counter() - t0)


async def _abort(context, code: grpc.StatusCode, details: str) -> None:
    """context.abort, for a call that may have ended already (its deadline passed or its client left while
    it was being answered): then there is nobody to tell, and the call ends as cancelled, quietly (grpc.aio
    logs an ERROR with a traceback for an abort that fails to send)."""
    try:
        await context.abort(code, details)
    except grpc.aio.AbortError:
        raise
    except Exception:  # ExecuteBatchError: the status could not be sent
        raise asyncio.CancelledError() from None


def rpc(name: str, model_of=lambda request: ""):
    """Wrap a unary servicer method: map errors to status codes and record the adapter metrics.

    `model_of(request)` gives the model label; names the server does not serve are recorded as ""
    to keep label cardinality bounded whatever clients send."""

    def wrap(fn):
        @functools.wraps(fn)
        async def handler(self, request, context):
            metrics: Metrics = self.metrics
            t0 = time.perf_counter()
            in_flight = metrics.in_flight_counts
            in_flight[name] += 1
            model = model_label(self.service, model_of(request))
            version = ""
            code = grpc.StatusCode.OK
            try:
                drain = getattr(self, "drain", None)  # server/drain.py, set by server/app.py
                if drain is not None and drain.draining:  # taken out of grpc's queue, answered once it stops
                    await drain.hold()
                    raise errors.Unavailable(DRAIN_MESSAGE)
                response = await fn(self, request, context)
                version = getattr(response, "model_version", "") or ""
                model = getattr(response, "model_name", "") or model  # Classify may resolve a default model
                return response
            except errors.ServingError as e:
                code = status_of(e)
                if e.client_error:  # any client can cause these at any rate: a few lines per kind and interval
                    client_errors.warning((name, code), "%s %s: %s: %s", name, model or "-", code.name, e)
                else:
                    log.error("%s %s: %s: %s", name, model or "-", code.name, e)
                await _abort(context, code, str(e))
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as e:
                if isinstance(e, grpc.aio.AbortError):
                    raise
                code = grpc.StatusCode.INTERNAL
                log.exception("%s %s: unexpected error", name, model or "-")
                await _abort(context, code, f"internal error: {type(e).__name__}")
            finally:
                in_flight[name] -= 1
                record(metrics, name, model, version, code.name, t0)

        return handler

    return wrap


def deadline_of(context) -> float | None:
    """The call's gRPC deadline as event-loop time, or None."""
    remaining = context.time_remaining()
    return None if remaining is None else asyncio.get_running_loop().time() + remaining
