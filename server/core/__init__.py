"""The serving core: no transport in it. Adapters (server/grpc/, later server/http/) call
`core.service.InferenceService` with `core.types` values and map `server.errors` to their statuses.

    types.py     request/response dataclasses and the datatype tables (no protobuf, no onnxruntime)
    service.py   the one entry point: infer, classify, metadata, model_config, statistics, index, load, ...
    registry.py  one VersionRecord per (model, version); polling, load-then-swap, lifecycle states
    stats.py     per-version statistics (Triton's ModelStatistics semantics) and the batcher observer
    batcher.py   dynamic batching; awaits `Runtime.run_batch` (server/runtime/base.py) only
"""
