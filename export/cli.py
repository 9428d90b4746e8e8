"""`cnn export`, `cnn models list` and `cnn models zoo`.

This module must not import torch or onnx at import time: client/cli.py imports it to register the
subcommands and `cnn serve` / `cnn models list` run on the serving install (onnxruntime, numpy,
pyyaml). Heavy imports happen inside the run functions.

Exit codes: 0 ok; 1 the exported model failed the verification gate (nothing published) or a listed
model is broken; 2 an error the user can act on (bad path, name, option, checkpoint), printed on one
line to stderr without a traceback.

Also runnable on its own: ``python -m export.cli export runs/x/best.pt --repository models``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

DEFAULT_MAX_BATCH_SIZE = 64


def default_repository() -> str:
    """The folder `cnn serve` reads by default: $CNN_SERVER_REPOSITORY, else ServerConfig's model_repository."""
    from server.config import ENV_PREFIX, ServerConfig

    return os.environ.get(ENV_PREFIX + "REPOSITORY") or ServerConfig.repository


def _repository_help() -> str:
    return "model repository folder (default: $CNN_SERVER_REPOSITORY, else model_repository, as for cnn serve)"


def add_export_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a checkpoint to verified ONNX as the next version in a model repository",
        description="Export RUN_DIR/best.pt to ONNX (input 'input' (B,C,H,W) float32; outputs 'logits' and "
        "'probabilities' (B,K)), verify it (onnx checker, onnxruntime vs PyTorch on real test "
        "images, external-data containment) and publish it atomically as "
        "REPO/NAME/<next version>/model.onnx. Writes REPO/NAME/config.yaml if there is none.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a training checkpoint, e.g. runs/lenet5/best.pt")
    p.add_argument("--repository", "-r", default=None, metavar="REPO", help=_repository_help())
    p.add_argument(
        "--name",
        default=None,
        help="model name in the repository (default: <model>-<dataset>, e.g. lenet5-digits; with "
        "--quantize: <model>-<dataset>-int8 / -fp16, so the fp32 model keeps being served)",
    )
    p.add_argument(
        "--quantize",
        choices=("int8", "fp16"),
        default=None,
        help="publish a quantised variant instead of FP32: int8 (static, calibrated on training "
        "images; CPU) or fp16 (for GPU providers; float32 inputs/outputs). Under an existing "
        "--name it becomes that model's newest version, the one a server serves (said on "
        "output); a warning says when it measured slower than fp32",
    )
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18)")
    p.add_argument(
        "--exporter",
        choices=("dynamo", "torchscript"),
        default="dynamo",
        help="torch.onnx exporter (default dynamo; see docs/export.md)",
    )
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=DEFAULT_MAX_BATCH_SIZE,
        help="max_batch_size for a new config.yaml, and the largest batch verified (default 64)",
    )
    p.add_argument(
        "--parity-images",
        type=int,
        default=256,
        help="test images compared between PyTorch and onnxruntime (default 256)",
    )
    p.add_argument(
        "--eval-images", type=int, default=None, help="test images for accuracy (default: the whole test split)"
    )
    p.add_argument(
        "--calibration-images", type=int, default=512, help="training images used to calibrate int8 (default 512)"
    )
    p.add_argument(
        "--int8-format",
        choices=("qoperator", "qdq"),
        default="qoperator",
        help="int8 graph format (default qoperator: the faster one on CPU, see docs/export.md)",
    )
    p.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=0.01,
        help="int8/fp16 gate: largest allowed test-accuracy drop vs fp32 (default 0.01 = 1 point)",
    )
    p.add_argument("--atol", type=float, default=1e-4, help="fp32 gate: max |logits diff| (default 1e-4)")
    p.add_argument(
        "--strict-parity",
        action="store_true",
        help="fp32 gate: no float64 fallback for deep nets, the bare --atol bound (see docs/export.md)",
    )
    p.add_argument(
        "--data",
        default=None,
        metavar="SPEC",
        help="dataset for verification if not the checkpoint's (e.g. idx:DIR after moving it)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines or bars (warnings are still printed)")
    p.set_defaults(func=run_export)


def run_export(args) -> int:
    from export.errors import ExportError
    from server.errors import RepositoryError

    def log(line: str) -> None:
        if not args.quiet and not args.json:
            print(line, file=sys.stderr, flush=True)

    if args.quiet:
        os.environ["CNN_PROGRESS"] = "off"  # training/progress.py: no bars either; warnings still go to stderr
    args.repository = args.repository or default_repository()

    try:
        # Cheap checks first, so a typo is reported before torch takes seconds to import.
        from pathlib import Path

        from export.publish import validate_name

        if not Path(args.checkpoint).is_file():
            raise ExportError(f"{args.checkpoint}: checkpoint not found")
        if Path(args.repository).exists() and not Path(args.repository).is_dir():
            raise ExportError(f"{args.repository}: the repository path exists and is not a folder")
        if args.name is not None:
            validate_name(args.name)

        from export.onnx import DEFAULT_OPSET
        from export.pipeline import export_checkpoint
        from export.served import describe_served, quantized_default_name

        name = args.name
        if args.quantize and name is None:
            name = quantized_default_name(args.checkpoint, args.quantize)
        res = export_checkpoint(
            args.checkpoint,
            args.repository,
            name=name,
            quantize=args.quantize,
            opset=args.opset or DEFAULT_OPSET,
            exporter=args.exporter,
            max_batch_size=args.max_batch_size,
            parity_images=args.parity_images,
            eval_images=args.eval_images,
            calibration_images=args.calibration_images,
            max_accuracy_drop=args.max_accuracy_drop,
            int8_format=args.int8_format,
            atol=args.atol,
            strict_parity=args.strict_parity,
            data=args.data,
            log=log,
        )
    except ExportError as e:
        kind = "verification failed, nothing published" if e.exit_code == 1 else "error"
        print(f"cnn export: {kind}: {e}", file=sys.stderr)
        return e.exit_code
    except RepositoryError as e:
        print(f"cnn export: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cnn export: interrupted; nothing published", file=sys.stderr)
        return 130
    for w in res.warnings:
        print(f"cnn export: warning: {w}", file=sys.stderr)
    served = describe_served(args.repository, res.name, res.version, res.precision)
    if served:
        print(f"cnn export: note: {served}", file=sys.stderr)
    if args.json:
        print(json.dumps(res.to_dict(), indent=2))
        return 0
    acc = res.accuracy
    print(res.path)
    p = res.parity or {}
    print(
        f"  {res.name} version {res.version}, {res.precision}, {res.exporter} exporter, opset {res.opset}, "
        f"{res.size_bytes / 1e6:.2f} MB{' + external data' if res.external_data else ''}"
    )
    print(
        f"  parity (fp32 vs PyTorch, {p.get('images')} test images, batch sizes {p.get('batch_sizes')}): "
        f"max |logits diff| {p.get('max_abs_diff_logits', float('nan')):.2e} (limit {p.get('bound'):.2g}"
        + (
            f" = {p['atol']:g} + 2 x PyTorch's own float32 error {p['torch_fp32_error']:.2g}"
            if p.get("torch_fp32_error") is not None
            else ""
        )
        + f"), argmax mismatches {p.get('argmax_mismatches')}"
    )
    line = f"  test accuracy on {acc['test_images']} images: fp32 {acc['fp32_test_accuracy']:.4f}"
    if res.precision != "fp32":
        line += (
            f", {res.precision} {acc[res.precision + '_test_accuracy']:.4f} "
            f"(argmax agreement {acc[res.precision + '_argmax_agreement']:.4f})"
        )
    if "checkpoint_test_accuracy" in acc:
        line += f"; checkpoint {acc['checkpoint_test_accuracy']:.4f}"
    print(line)
    print(f"  config: {res.config_path} ({'written' if res.config_created else 'kept'})")
    return 0


def add_models_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "models",
        help="inspect a model repository",
        description="Inspect a model repository (works without torch and onnx).",
    )
    sub = p.add_subparsers(dest="models_command", metavar="COMMAND")
    ls = sub.add_parser(
        "list",
        help="each model, its versions, precision, test accuracy, input shape, size",
        description="List each model in REPO with its versions, precision, test accuracy, "
        "input shape and size on disk. Exits 1 if a model or version is broken.",
    )
    ls.add_argument("--repository", "-r", default=None, metavar="REPO", help=_repository_help())
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(func=run_models_list)
    zoo = sub.add_parser(
        "zoo",
        help="the registered model architectures and their arguments (needs torch)",
        description="List every model `cnn train --model` accepts, with its constructor's keyword "
        "arguments and their defaults.",
    )
    zoo.add_argument("--json", action="store_true", help="print JSON")
    zoo.set_defaults(func=run_models_zoo)
    p.set_defaults(func=_models_help(p))


def _models_help(parser):
    def run(args) -> int:
        parser.print_help(sys.stderr)
        return 2

    return run


def run_models_list(args) -> int:
    from export.listing import describe_repository, format_table, to_json
    from server.errors import RepositoryError

    args.repository = args.repository or default_repository()
    try:
        models = describe_repository(args.repository)
    except RepositoryError as e:
        print(f"cnn models list: error: {e}", file=sys.stderr)
        return 2
    print(to_json(models) if args.json else format_table(models) if models else f"no models in {args.repository}")
    broken = [m.config_error for m in models if m.config_error] + [
        v.error for m in models for v in m.versions if v.error
    ]
    for b in broken:
        print(f"cnn models list: {b}", file=sys.stderr)
    return 1 if broken else 0


def run_models_zoo(args) -> int:
    from training.catalog import format_zoo, to_json, zoo

    entries = zoo()
    print(to_json(entries) if args.json else format_zoo(entries))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    add_export_parser(sub)
    add_models_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
