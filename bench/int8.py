"""INT8 vs FP32 on CPU: images/s at batch 64 and test accuracy, for ResNet-20 and a VGG, in one run.

    python -m bench.int8                                  # train each model briefly on digits, then measure
    python -m bench.int8 --checkpoint runs/r20/best.pt --checkpoint runs/vgg/best.pt   # your own models
    python -m bench.int8 --models resnet20 vgg11_bn --epochs 3 --threads 1 2 --out runs/bench/int8

For each model: one checkpoint (given, or trained here for --epochs with a smoke recipe: Adam,
constant lr, no augmentation; not a finished model), then `cnn export` three times into a scratch repository: FP32, INT8
QOperator and INT8 QDQ (all through the same verification gate). Each variant is timed with
onnxruntime on CPU (batch --batch of real test images, --threads intra-op threads, warm-up, then the
median of --repeats timed runs of at least --min-seconds; the variants take turns run by run, so a
change in background load hits all of them alike) and its test accuracy is read from the metadata the
exporter wrote (the whole test split). Writes int8.json (everything, with hardware and
versions) and int8.md (the table) into --out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = (("fp32", None, None), ("int8-qoperator", "int8", "qoperator"), ("int8-qdq", "int8", "qdq"))


SMOKE_RECIPE = {
    "optimizer": "adam",
    "lr": 3e-3,
    "schedule": "constant",
    "weight_decay": 0.0,
    "batch_size": 64,
    "deterministic": False,
    "threads": 0,
}


def train_briefly(model: str, data: str, epochs: int, out: Path) -> Path:
    """A real training run (training.loop.fit, the checkpoint `cnn train` writes) with a smoke recipe:
    Adam 3e-3, constant lr, no augmentation, a few epochs. Enough for accuracy to mean something."""
    from training.config import config_from_dict
    from training.loop import fit

    cfg = config_from_dict({**SMOKE_RECIPE, "epochs": epochs})
    fit(model, data, cfg, out, recipe_name="bench-int8-smoke", log=lambda line: print(f"  {line}", file=sys.stderr))
    return out / "best.pt"


def timed_sessions(
    paths: dict[str, str], images: np.ndarray, batch: int, threads: int, repeats: int, min_seconds: float
) -> dict[str, list[float]]:
    """images/s per variant; the variants alternate within each repeat (interleaved)."""
    import onnxruntime as ort

    sessions = {}
    for label, path in paths.items():
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        sessions[label] = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
    reps = int(np.ceil(batch / len(images)))
    feed = {"input": np.ascontiguousarray(np.concatenate([images] * reps)[:batch])}
    for sess in sessions.values():
        for _ in range(3):
            sess.run(["logits"], feed)
    rates: dict[str, list[float]] = {label: [] for label in sessions}
    for _ in range(repeats):
        for label, sess in sessions.items():
            n, t0 = 0, time.perf_counter()
            while True:
                sess.run(["logits"], feed)
                n += 1
                el = time.perf_counter() - t0
                if el >= min_seconds:
                    break
            rates[label].append(n * batch / el)
    return rates


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.int8", description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet20", "vgg11_bn"], help="models to train briefly")
    ap.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        type=Path,
        help="use this checkpoint instead of training (repeatable; replaces --models)",
    )
    ap.add_argument("--data", default="digits", help="dataset spec for the brief training (default digits)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs of the brief training (default 3)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, nargs="+", default=[1], help="intra-op thread counts to time")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--calibration-images", type=int, default=512)
    ap.add_argument("--out", type=Path, default=None, help="default runs/bench/int8-<UTC time>")
    ap.add_argument(
        "--work",
        type=Path,
        default=None,
        help="keep the brief trainings here and reuse them on the next run (default: a temp folder)",
    )
    args = ap.parse_args(argv)

    import onnxruntime as ort
    import torch

    from export.data import load_images
    from export.pipeline import export_checkpoint
    from training.checkpoint import load_checkpoint

    try:
        from bench.env import describe, markdown
    except Exception:  # bench/env.py is optional for this script
        describe, markdown = None, None

    out = args.out or ROOT / "runs" / "bench" / ("int8-" + dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench-int8-"))
    settings = {
        "batch": args.batch,
        "threads": args.threads,
        "repeats": args.repeats,
        "min_seconds": args.min_seconds,
        "calibration_images": args.calibration_images,
        **({} if args.checkpoint else {"epochs": args.epochs, "data": args.data}),  # the brief training's
        "torch": str(torch.__version__),
        "onnxruntime": ort.__version__,
    }
    env = describe(settings) if describe else {"settings": settings}
    env.setdefault("hardware", {})["loadavg_at_start"] = list(os.getloadavg())

    ckpts = [(p.stem, p) for p in args.checkpoint] or []
    if not ckpts:
        for model in args.models:
            print(
                f"training {model} on {args.data} for {args.epochs} epochs (a smoke, not a finished model)",
                file=sys.stderr,
            )
            run_dir = (args.work or scratch / "runs") / f"{model}-{args.epochs}ep"
            if (run_dir / "best.pt").is_file() and (run_dir / "summary.json").is_file():
                print(f"reusing {run_dir / 'best.pt'}", file=sys.stderr)
                ckpts.append((model, run_dir / "best.pt"))
            else:
                ckpts.append((model, train_briefly(model, args.data, args.epochs, run_dir)))

    rows = []
    for _label, ckpt_path in ckpts:
        ckpt = load_checkpoint(ckpt_path)
        test = load_images(ckpt, "test")
        repo = scratch / "repo"
        results = {}
        for variant, quantize, fmt in VARIANTS:
            print(f"exporting {ckpt['model_name']} {variant}", file=sys.stderr)
            results[variant] = export_checkpoint(
                ckpt_path,
                repo,
                name=f"{ckpt['model_name']}-bench",
                quantize=quantize,
                int8_format=fmt or "qoperator",
                calibration_images=args.calibration_images,
                parity_images=64,
            )
        for threads in args.threads:
            print(f"timing {ckpt['model_name']} at batch {args.batch}, {threads} thread(s)", file=sys.stderr)
            rates = timed_sessions(
                {v: r.path for v, r in results.items()},
                test.normalised(0, args.batch),
                args.batch,
                threads,
                args.repeats,
                args.min_seconds,
            )
            for (variant, quantize, _), res in zip(VARIANTS, results.values()):
                acc_key = "int8_test_accuracy" if quantize else "fp32_test_accuracy"
                row = {
                    "model": ckpt["model_name"],
                    "variant": variant,
                    "threads": threads,
                    "images_per_s": statistics.median(rates[variant]),
                    "runs_images_per_s": rates[variant],
                    "test_accuracy": res.accuracy[acc_key],
                    "test_images": res.accuracy["test_images"],
                    "fp32_test_accuracy": res.accuracy["fp32_test_accuracy"],
                    "size_bytes": res.size_bytes,
                    "input_shape": ckpt["input_shape"],
                    "dataset": ckpt.get("dataset"),
                    "trained_epochs": (ckpt.get("metrics") or {}).get("epoch"),
                    "checkpoint_test_accuracy": (ckpt.get("metrics") or {}).get("test_accuracy"),
                }
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "runs_images_per_s"}), file=sys.stderr)
    for r in rows:
        base = next(
            b for b in rows if b["model"] == r["model"] and b["variant"] == "fp32" and b["threads"] == r["threads"]
        )
        r["speedup_vs_fp32"] = r["images_per_s"] / base["images_per_s"]
        r["accuracy_change_vs_fp32"] = r["test_accuracy"] - base["test_accuracy"]

    env["hardware"]["loadavg_at_end"] = list(os.getloadavg())
    result = {"env": env, "rows": rows, "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    (out / "int8.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# INT8 vs FP32 on CPU (batch {args.batch})", ""]
    if markdown:
        lines += [markdown(env), ""]
    lines += [
        "| model | input | variant | threads | images/s | vs fp32 | test accuracy | vs fp32 | size |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {'x'.join(map(str, r['input_shape']))} | {r['variant']} | {r['threads']} | "
            f"{r['images_per_s']:,.0f} | {r['speedup_vs_fp32']:.2f}x | {r['test_accuracy']:.4f} "
            f"({r['test_images']} images) | {r['accuracy_change_vs_fp32']:+.4f} | {r['size_bytes'] / 1e6:.2f} MB |"
        )
    if args.checkpoint:
        models = "; ".join(
            f"{r['model']}: {r['dataset']}, {r['trained_epochs']} epochs, checkpoint test accuracy "
            f"{r['checkpoint_test_accuracy'] if r['checkpoint_test_accuracy'] is not None else 'unknown'}"
            for r in rows
            if r["variant"] == "fp32" and r["threads"] == args.threads[0]
        )
        lines += ["", f"Models: the checkpoints given ({models})."]
    else:
        lines += [
            "",
            f"Models: trained here for {args.epochs} epochs on {args.data} (a smoke test of the pipeline, "
            "not finished models).",
        ]
    lines += [
        "Accuracy: the whole test split, measured by "
        "`cnn export` with onnxruntime. images/s: median of the timed runs, variants interleaved. "
        "Load average at start / end: "
        f"{', '.join(f'{x:.1f}' for x in env['hardware']['loadavg_at_start'])} / "
        f"{', '.join(f'{x:.1f}' for x in env['hardware']['loadavg_at_end'])}."
    ]
    (out / "int8.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {out / 'int8.json'} and {out / 'int8.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
