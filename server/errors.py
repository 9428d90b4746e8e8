"""The serving error hierarchy.

The transport-free service raises these; `server/grpc/status.py` maps each class to exactly one gRPC
status code, in one table. Messages name the offending field (`inputs[0].shape`, `model_name`, ...)
so that a client can act on them.
"""

from __future__ import annotations


class ServingError(Exception):
    """Base class. `client_error` errors are logged as warnings, the rest as errors."""

    client_error = True


class InvalidInput(ServingError):
    """The request is malformed or does not match the model (INVALID_ARGUMENT)."""


class ModelNotFound(ServingError):
    """No such model, or no such version of it (NOT_FOUND)."""


class ModelNotReady(ServingError):
    """The model exists but is not ready to serve (UNAVAILABLE)."""


class Unavailable(ServingError):
    """The server cannot take the request now: queue full, shutting down (UNAVAILABLE)."""


class DeadlineExceeded(ServingError):
    """The request's deadline passed before it could be computed (DEADLINE_EXCEEDED)."""


class ResourceExhausted(ServingError):
    """The request is larger than a configured limit (RESOURCE_EXHAUSTED)."""


class Cancelled(ServingError):
    """The client went away while the request waited (CANCELLED)."""


class Unimplemented(ServingError):
    """The RPC or feature is switched off or not provided (UNIMPLEMENTED)."""


class RepositoryError(ServingError):
    """A model in the repository cannot be read or loaded; the message names the file."""

    client_error = False


class InternalError(ServingError):
    """Something broke inside the server (INTERNAL)."""

    client_error = False
