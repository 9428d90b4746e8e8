"""The serving path: model repository -> onnxruntime -> dynamic batcher -> gRPC. No torch here."""

__version__ = "0.1.0"
