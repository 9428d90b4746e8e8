"""Checkpoint -> verified ONNX -> model repository (`cnn export`, `cnn models list`).

    onnx.py       PyTorch -> ONNX: named tensors, dynamic batch, softmax in the graph, metadata
    verify.py     the gate: external-data containment, onnx.checker, onnxruntime vs PyTorch parity
    quantize.py   INT8 (static, calibrated on training images) and FP16 variants
    publish.py    <repo>/<name>/<N>/ written atomically (dot folder + rename), config.yaml
    pipeline.py   the whole export, in order
    data.py       real test / calibration images from the checkpoint's dataset
    listing.py    `models list`: reads metadata without torch or onnx
    cli.py        the subcommands (no torch/onnx import at module load)
    compare.py    exporter and offline-optimisation measurements behind docs/export.md

Importing this package imports nothing heavy; torch and onnx are imported by the modules that need them.
"""
