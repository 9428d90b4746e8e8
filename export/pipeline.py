"""checkpoint -> verified ONNX -> `<repository>/<name>/<N>/model.onnx`: the whole `cnn export`.

Order (nothing is visible to the server until the last step):
    load checkpoint, build the model (eval)          training.checkpoint
    stage a dot folder inside <repository>/<name>/   export.publish.staging
    export FP32 with metadata                         export.onnx
    gate: containment + checker + parity on real test images (<= atol, identical argmax)
    [int8 | fp16]: derive the variant from the verified FP32 file, gate it on test accuracy
    write config.yaml if the model folder has none
    os.rename(staging, <N>)                           export.publish.publish
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from export.errors import ExportError
from export.explain import EXPLAIN_FILE, add_explanation
from export.onnx import DEFAULT_EXPORTER, DEFAULT_OPSET, export_onnx, metadata_from_checkpoint, rewrite_metadata
from export.publish import prepare_model_dir, publish, remove_if_unused, sanitize_name, staging, validate_name
from export.quantize import DEFAULT_INT8_FORMAT, DEFAULT_MAX_ACCURACY_DROP
from export.reference import reference
from export.verify import DEFAULT_ATOL
from server.repository import MODEL_FILE

QUANTIZE_CHOICES = ("int8", "fp16")


@dataclass
class ExportResult:
    name: str
    version: int
    path: str
    precision: str
    exporter: str
    opset: int
    size_bytes: int
    external_data: bool
    config_path: str
    config_created: bool
    parity: dict[str, Any] | None = None
    accuracy: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_name(ckpt: dict[str, Any]) -> str:
    """`<model>-<dataset>`: lenet5-digits, lenet5-fashion-mnist, resnet20-pets (folder:/data/pets)."""
    spec = str(ckpt.get("dataset") or "data")
    if ":" in spec:
        spec = os.path.basename(os.path.normpath(spec.split(":", 1)[1])) or spec.split(":", 1)[0]
    return sanitize_name(f"{ckpt.get('model_name', 'model')}-{spec}")


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """training.checkpoint's loader (validates the schema); its one-line errors as ExportError."""
    from training.checkpoint import CheckpointError
    from training.checkpoint import load_checkpoint as _load

    try:
        return _load(path)
    except CheckpointError as e:
        raise ExportError(str(e)) from None


def build_model(ckpt: dict[str, Any], where: str):
    from training.checkpoint import build_model as _build

    try:
        return _build(ckpt).eval()
    except Exception as e:
        raise ExportError(f"{where}: cannot rebuild {ckpt.get('model_name')!r} from the checkpoint: {e}") from None


def export_checkpoint(
    checkpoint: str | os.PathLike,
    repository: str | os.PathLike,
    *,
    name: str | None = None,
    quantize: str | None = None,
    opset: int = DEFAULT_OPSET,
    exporter: str = DEFAULT_EXPORTER,
    max_batch_size: int = 64,
    parity_images: int = 256,
    eval_images: int | None = None,
    calibration_images: int = 512,
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP,
    int8_format: str = DEFAULT_INT8_FORMAT,
    atol: float = DEFAULT_ATOL,
    strict_parity: bool = False,
    data: str | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> ExportResult:
    from export import data as datamod
    from export import quantize as q
    from export import verify

    t0 = time.perf_counter()
    if quantize not in (None, *QUANTIZE_CHOICES):
        raise ExportError(f"--quantize must be one of {', '.join(QUANTIZE_CHOICES)}, got {quantize!r}")
    if not 1 <= max_batch_size <= 65536:
        raise ExportError(f"--max-batch-size must be in 1..65536, got {max_batch_size}")
    if parity_images < 1:
        raise ExportError("--parity-images must be >= 1")
    ckpt = load_checkpoint(checkpoint)
    name = validate_name(name or default_name(ckpt))
    repository = Path(repository)
    if repository.exists() and not repository.is_dir():
        raise ExportError(f"{repository}: the repository path exists and is not a folder")
    model = build_model(ckpt, str(checkpoint))
    input_shape = [int(d) for d in ckpt["input_shape"]]
    log(
        f"loaded {checkpoint}: {ckpt['model_name']} {input_shape}, {len(ckpt['labels'])} classes, data {ckpt.get('dataset')!r}"
    )

    dataset = datamod.dataset_for(ckpt, data)
    test = datamod.load_images(ckpt, "test", eval_images, dataset=dataset)
    parity_set = test.normalised(0, min(parity_images, len(test)))
    result_warnings: list[str] = []
    model_dir, config_path, created, warning = prepare_model_dir(repository, name, max_batch_size)
    if warning:
        result_warnings.append(warning)
    try:
        with staging(model_dir) as tmp:
            work = tmp / ".work"
            work.mkdir()
            fp32_path = (tmp if quantize is None else work) / MODEL_FILE
            metadata = metadata_from_checkpoint(ckpt)
            metadata.extra.update({"exporter": exporter, "opset": opset})
            info = export_onnx(model, input_shape, fp32_path, opset=opset, exporter=exporter, metadata=metadata)
            log(
                f"exported with the {exporter} exporter at opset {opset} in {info.seconds:.1f}s "
                f"({'external data' if info.external_data else 'weights embedded'})"
            )

            # Gate, FP32: containment + checker, then parity with PyTorch on real test images.
            verify.check_file(fp32_path)
            report = verify.parity(
                model,
                fp32_path,
                parity_set,
                atol=atol,
                strict=strict_parity,
                batch_sizes=tuple(sorted({1, 7, max_batch_size})),
            )
            verify.require_parity(report, fp32_path)
            log(
                f"parity on {report.images} {test.spec} test images: max |logits diff| {report.max_abs_diff_logits:.2e}, "
                f"argmax identical"
            )
            # CAM models: explain.onnx (verified) beside model.onnx; every model: the method in its metadata
            add_explanation(
                model,
                input_shape,
                tmp,
                metadata,
                parity_set[:16],
                opset=opset,
                exporter=exporter,
                source=fp32_path,
                log=log,
            )
            fp32_pred, labels = verify.predictions(fp32_path, test.batches())
            fp32_acc = float((fp32_pred == labels).mean())
            ckpt_acc = (ckpt.get("metrics") or {}).get("test_accuracy")
            acc: dict[str, Any] = {"test_images": len(test), "fp32_test_accuracy": fp32_acc}
            if isinstance(ckpt_acc, (int, float)):
                acc["checkpoint_test_accuracy"] = float(ckpt_acc)
                if abs(fp32_acc - ckpt_acc) > 0.02 and eval_images is None:
                    result_warnings.append(
                        f"ONNX test accuracy {fp32_acc:.4f} differs from the checkpoint's "
                        f"{ckpt_acc:.4f}: is the preprocessing in the checkpoint the one training used?"
                    )
            quant: dict[str, Any] = {}
            final = fp32_path
            precision = "fp32"
            if quantize == "int8":
                calib = datamod.load_images(ckpt, "train", calibration_images, dataset=dataset, seed=1)
                qi = q.quantize_int8(fp32_path, tmp / MODEL_FILE, calib, fmt=int8_format)
                final, precision = tmp / MODEL_FILE, "int8"
                quant = {
                    "format": qi.format,
                    "per_channel": qi.per_channel,
                    "calibration_images": qi.calibration_images,
                    "calibration_split": "train",
                    "activation_type": "uint8",
                    "weight_type": "int8",
                    "calibrate_method": "minmax",
                    "max_accuracy_drop": max_accuracy_drop,
                    "seconds": round(qi.seconds, 2),
                }
                log(
                    f"quantised to int8 ({qi.format}, per-channel) on {qi.calibration_images} training images "
                    f"in {qi.seconds:.1f}s"
                )
            elif quantize == "fp16":
                q.convert_fp16(fp32_path, tmp / MODEL_FILE)
                final, precision = tmp / MODEL_FILE, "fp16"
                quant = {"keep_io_types": True, "max_accuracy_drop": max_accuracy_drop}
            if quantize:
                verify.check_file(final)
                var_pred, _ = verify.predictions(final, test.batches())
                var_acc = float((var_pred == labels).mean())
                acc[f"{precision}_test_accuracy"] = var_acc
                acc[f"{precision}_argmax_agreement"] = float((fp32_pred == var_pred).mean())
                q.require_accuracy(fp32_acc, var_acc, max_accuracy_drop, final)
                log(
                    f"{precision} test accuracy {var_acc:.4f} vs fp32 {fp32_acc:.4f} on {len(test)} images "
                    f"(gate: drop <= {max_accuracy_drop:g})"
                )
                from export.speed import compare_speed, slower_warning  # warn when the variant is slower here

                quant["speed"] = compare_speed(fp32_path, final, input_shape, max_batch_size)
                if slower_warning(precision, quant["speed"]):
                    result_warnings.append(slower_warning(precision, quant["speed"]))
            metadata.metrics.update({k: v for k, v in acc.items()})
            metadata.metrics["test_accuracy"] = acc[f"{precision}_test_accuracy"]
            metadata.extra.update(
                {"precision": precision, "parity": report.to_dict(), "quantization": quant, "test_split": test.spec}
            )
            # what the model answers on the test split: the server's reference for drift (export/reference.py)
            metadata.reference = reference(final, test.batches(), list(metadata.labels), test.spec)
            rewrite_metadata(final, metadata)
            verify.check_file(final)  # the bytes that get published, after the metadata rewrite
            shutil.rmtree(work)
            external = any(p.name not in (MODEL_FILE, EXPLAIN_FILE) for p in tmp.iterdir())
            size = sum(p.stat().st_size for p in tmp.iterdir() if p.is_file())
            version, target = publish(tmp, model_dir)
    except BaseException:
        if created:  # a first export that failed leaves no empty model behind
            remove_if_unused(model_dir)
        raise

    return ExportResult(
        name=name,
        version=version,
        path=str(target / MODEL_FILE),
        precision=precision,
        exporter=exporter,
        opset=opset,
        size_bytes=size,
        external_data=external,
        config_path=str(config_path),
        config_created=created,
        parity=report.to_dict(),
        accuracy=acc,
        quantization=quant,
        warnings=result_warnings,
        seconds=round(time.perf_counter() - t0, 2),
    )
