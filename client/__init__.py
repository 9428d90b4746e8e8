"""The Python client for the classification service, and the `cnn` command line.

`from client import ClassificationClient` needs only grpcio and protobuf (the serving install).
"""

from client.classify import ClassificationClient, Prediction

__all__ = ["ClassificationClient", "Prediction"]
