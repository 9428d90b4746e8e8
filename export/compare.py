"""Compare the two torch.onnx exporters on every registered model (the evidence behind docs/export.md).

    python -m export.compare [--opset 18 20] [--input-size 32] [--json out.json]
    python -m export.compare --offline-opt [--models resnet20 vgg16_bn]


For each model x exporter x opset: does it export, pass `onnx.checker(full_check=True)`, keep a
dynamic batch axis (batch 1 and 7 run), how far it is from PyTorch float32 (and PyTorch float32 from
float64) on real digits test images, how long the export takes, the file size, and onnxruntime
session-creation time.

Models are randomly initialised and then conditioned on real images (`condition_model`: unit-variance
layers, recalibrated BatchNorm, logits spread like a trained head), so parity is measured on logits of
realistic size that actually depend on the image. The export tests use the same conditioning.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

INPUT_SIZE = {"googlenet": 16}  # keeps full resolution through its first stages: 28x28 is slow on CPU


def calibrate_batchnorm(model, x, batch_size: int = 128) -> None:
    """Recompute BatchNorm running statistics on x (cumulative average), then eval mode."""
    import torch
    import torch.nn as nn

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            model(x[i : i + batch_size])
    for m in bns:
        m.momentum = 0.1
    model.eval()


def unit_variance_init(model, x, logit_std: float = 4.0, only_last: bool = False) -> None:
    """One forward pass (LSUV-style): each conv/linear, in execution order, rescales its weights so its
    output has unit std on x (later layers see the rescaled outputs). The last layer's outputs are
    centred per class and scaled to logit_std, like a trained classifier head."""
    import torch
    import torch.nn as nn

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    last = layers[-1]
    if only_last:
        layers = [last]

    def hook(module, _inp, out):
        if module is last:
            mu, sd = out.mean(0), float(out.std(0).mean()) / logit_std
            module.weight.div_(sd)
            if module.bias is not None:
                module.bias.sub_(mu).div_(sd)
            return (out - mu) / sd if module.bias is not None else out / sd
        s = float(out.std())
        if s > 0:
            module.weight.div_(s)
            if module.bias is not None:
                module.bias.div_(s)
            return out / s
        return out

    handles = [m.register_forward_hook(hook) for m in layers]
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()


def condition_model(model, x) -> None:
    """Random init -> well-conditioned on real images x (normalised, the model's input size)."""
    calibrate_batchnorm(model, x)
    unit_variance_init(model, x[:64])
    calibrate_batchnorm(model, x)
    unit_variance_init(model, x, only_last=True)


def digits_inputs(input_size: int, n: int, split: str = "train"):
    """n normalised digits images (1 channel) at input_size, as a float32 torch tensor."""
    import torch.nn.functional as F

    from training.augment import Normalize
    from training.data import load_digits

    d = load_digits()
    mean, std = d.mean_std()
    x = Normalize(mean, std)((d.train_x if split == "train" else d.test_x)[:n])
    if x.shape[-1] != input_size:
        x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", antialias=True)
    return x


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.compare", description=__doc__.splitlines()[0])
    ap.add_argument("--opset", type=int, nargs="+", default=[18, 20])
    ap.add_argument("--input-size", type=int, default=None, help="default 28 (digits), googlenet 16")
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--offline-opt",
        action="store_true",
        help="instead: does saving an onnxruntime-optimised model (optimized_model_filepath) shorten session creation?",
    )
    args = ap.parse_args(argv)
    if args.offline_opt:
        return offline_optimisation(
            args.models or ["resnet20", "mobilenet_v2", "googlenet", "vgg16_bn", "resnet18"],
            args.input_size or 32,
            args.json,
        )

    import onnx
    import onnxruntime as ort
    import torch

    from export.onnx import EXPORTERS, export_onnx
    from export.verify import check_file, ort_session, run_batched, torch_outputs
    from training.models import create_model, list_models

    torch.manual_seed(0)
    torch.set_num_threads(1)
    rows = []
    for name in args.models or list_models():
        size = args.input_size or INPUT_SIZE.get(name, 28)
        model = create_model(name, num_classes=10, in_channels=1, input_size=size).eval()
        condition_model(model, digits_inputs(size, 128))
        images = digits_inputs(size, 64, "test").numpy()
        ref = torch_outputs(model, images)
        ref64 = torch_outputs(model, images, dtype=torch.float64)
        fp32_err = float(np.abs(ref - ref64).max())
        for exporter in EXPORTERS:
            for opset in args.opset:
                row = {"model": name, "exporter": exporter, "opset": opset}
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / "model.onnx"
                    try:
                        info = export_onnx(model, [1, size, size], path, opset=opset, exporter=exporter)
                        row["export_s"] = round(info.seconds, 2)
                        row["size_bytes"] = path.stat().st_size
                        check_file(path)
                        row["checker"] = True
                        t0 = time.perf_counter()
                        sess = ort_session(path)
                        row["ort_load_ms"] = round((time.perf_counter() - t0) * 1000, 1)
                        diffs, mism = [], 0
                        for bs in (1, 7):
                            logits, _ = run_batched(sess, images, bs)
                            diffs.append(float(np.abs(logits - ref).max()))
                            mism += int((logits.argmax(1) != ref.argmax(1)).sum())
                        row["max_abs_diff"] = max(diffs)
                        row["torch_fp32_vs_fp64"] = fp32_err
                        row["max_abs_logit"] = float(np.abs(ref).max())
                        row["argmax_mismatches"] = mism
                        row["ok"] = mism == 0 and row["max_abs_diff"] <= 1e-4 + 2 * fp32_err
                        ops = sorted({n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node})
                        row["nodes"] = len(onnx.load(str(path), load_external_data=False).graph.node)
                        row["op_types"] = ops
                    except Exception as e:  # record, keep going
                        row["ok"] = False
                        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "op_types"}), flush=True)
    env = {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
    }
    if args.json:
        args.json.write_text(json.dumps({"env": env, "rows": rows}, indent=2))
    return 0 if all(r.get("ok") for r in rows) else 1


def offline_optimisation(models: list[str], input_size: int, json_path: Path | None) -> int:
    """Session-creation time and batch-64 run time of the exported model vs its onnxruntime-optimised
    copies (basic, extended), loaded with all optimisations (what the server does) and with none."""
    import statistics

    import onnx
    import onnxruntime as ort
    import torch

    from export.onnx import export_onnx
    from training.models import create_model

    torch.set_num_threads(1)
    L = ort.GraphOptimizationLevel
    rows = []

    def session(path: str, level):
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = 1, 1, 3
        so.graph_optimization_level = level
        t0 = time.perf_counter()
        s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        return time.perf_counter() - t0, s

    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            model = create_model(name, num_classes=10, in_channels=3, input_size=input_size)
            raw = f"{tmp}/{name}.onnx"
            export_onnx(model, [3, input_size, input_size], raw)
            files = {"exported": raw}
            for label, level in (("basic", L.ORT_ENABLE_BASIC), ("extended", L.ORT_ENABLE_EXTENDED)):
                so = ort.SessionOptions()
                so.graph_optimization_level = level
                so.optimized_model_filepath = f"{tmp}/{name}.{label}.onnx"
                so.log_severity_level = 3
                ort.InferenceSession(raw, so, providers=["CPUExecutionProvider"])
                files[label] = so.optimized_model_filepath
            x = np.random.default_rng(0).standard_normal((64, 3, input_size, input_size)).astype(np.float32)
            for label, path in files.items():
                for load_level, level in (("all", L.ORT_ENABLE_ALL), ("disabled", L.ORT_DISABLE_ALL)):
                    load_ms = statistics.median(session(path, level)[0] for _ in range(5)) * 1000
                    _, s = session(path, level)
                    s.run(None, {"input": x})
                    t0 = time.perf_counter()
                    for _ in range(3):
                        s.run(None, {"input": x})
                    row = {
                        "model": name,
                        "file": label,
                        "load_with": load_level,
                        "load_ms": round(load_ms, 1),
                        "batch64_ms": round((time.perf_counter() - t0) / 3 * 1000, 1),
                        "nodes": len(onnx.load(path, load_external_data=False).graph.node),
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    if json_path:
        json_path.write_text(json.dumps({"rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
