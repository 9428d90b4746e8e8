"""The training table: model x dataset x recipe -> held-out test accuracy and wall-clock, plus the
training-loop overhead against a bare PyTorch loop.

    python bench/train_table.py                       # the digits row only (well under a minute)
    python bench/train_table.py --rows all            # + the Fashion-MNIST rows (up to 30 min each)
    python bench/train_table.py --rows resnet20-fashion --epochs 1   # a smoke run (marked as such)
    python bench/train_table.py --overhead            # loop overhead vs a bare loop
    python bench/train_table.py --rows lenet5-mnist   # LeNet-5 on the shipped MNIST (~4 min on 2 cores)
    python bench/train_table.py --record resnet20-mnist runs/resnet20-mnist --cpu-seconds 2400
                                                      # a row from a run made by `cnn train` itself

Each row runs the real command line in a subprocess (`python -m training.cli train ...`, the same
code as `cnn train ...`) and reads its summary.json. Results are merged into
bench/results/train_table.json and rendered as bench/results/train_table.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name: (model, data, recipe, target test accuracy, wall-clock budget in seconds on 2 cores)
ROWS = {
    "lenet5-digits": ("lenet5", "digits", "lenet5_digits", 0.985, 60),
    "lenet5-mnist": ("lenet5", "mnist", "lenet5_mnist", 0.993, 300),
    "resnet20-mnist": ("resnet20", "mnist", "resnet20_mnist", 0.996, 1200),
    "lenet5-fashion": ("lenet5", "fashion-mnist", "lenet5_fashion_mnist", 0.91, 1800),
    "resnet20-fashion": ("resnet20", "fashion-mnist", "resnet20_fashion_mnist", 0.94, 1800),
    "mobilenet_v2-fashion": ("mobilenet_v2", "fashion-mnist", "mobilenet_v2_fashion_mnist", 0.93, 1800),
}


def host() -> dict:
    import torch

    cpu = platform.processor() or ""
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def _child_cpu() -> float:
    """User + system CPU seconds of finished child processes. On a shared machine wall-clock depends on
    the neighbours; CPU seconds do not (and equal wall-clock for a 1-thread run on a quiet machine)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_row(name: str, runs_dir: Path, epochs: int | None) -> dict:
    model, data, recipe, target, budget = ROWS[name]
    out = runs_dir / name
    shown = os.path.relpath(out, ROOT) if out.is_relative_to(ROOT) else str(out)
    args = ["train", "--model", model, "--data", data, "--recipe", recipe, "--out", shown, "--overwrite"]
    if epochs is not None:
        args += ["--epochs", str(epochs)]
    print(f"== {name}: cnn {' '.join(args)}", flush=True)
    t0, c0 = time.perf_counter(), _child_cpu()
    r = subprocess.run([sys.executable, "-m", "training.cli", *args], cwd=ROOT)
    wall, cpu = time.perf_counter() - t0, _child_cpu() - c0
    if r.returncode != 0:
        return {
            "row": name,
            "model": model,
            "dataset": data,
            "recipe": recipe,
            "error": f"exit {r.returncode}",
            "command": "cnn " + " ".join(args),
        }
    s = json.loads((out / "summary.json").read_text())
    return {
        "row": name,
        "model": model,
        "dataset": data,
        "recipe": recipe,
        "epochs": s["epochs_run"],
        "test_accuracy": s["test_accuracy"],
        "val_accuracy": s["val_accuracy"],
        "best_epoch": s["best_epoch"],
        "target": target,
        "met": None if epochs is not None else s["test_accuracy"] >= target and wall <= budget,
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "budget_seconds": budget,
        "threads": s["threads"],
        "smoke": epochs is not None,
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host": host(),
        "command": "cnn " + " ".join(args),
    }


def record_row(name: str, run_dir: Path, cpu_seconds: float | None, command: str | None) -> dict:
    """A row from a finished run made outside this script (its summary.json): wall-clock is the run's own
    (fit() from data loading to the test scores, without the process start), CPU seconds as measured by
    whoever ran it (e.g. utime + stime from /proc/PID/stat), None if not given."""
    model, data, recipe, target, budget = ROWS[name]
    s = json.loads((run_dir / "summary.json").read_text())
    if (s["model"], s["dataset"], s["recipe"]) != (model, data, recipe):
        raise SystemExit(f"{run_dir}: {s['model']} / {s['dataset']} / {s['recipe']} is not row {name}")
    wall = s["wall_seconds"]
    shown = os.path.relpath(run_dir, ROOT) if run_dir.resolve().is_relative_to(ROOT) else str(run_dir)
    return {
        "row": name,
        "model": model,
        "dataset": data,
        "recipe": recipe,
        "epochs": s["epochs_run"],
        "test_accuracy": s["test_accuracy"],
        "val_accuracy": s["val_accuracy"],
        "best_epoch": s["best_epoch"],
        "target": target,
        "met": s["test_accuracy"] >= target and wall <= budget,
        "wall_seconds": round(wall, 1),
        "cpu_seconds": None if cpu_seconds is None else round(cpu_seconds, 1),
        "budget_seconds": budget,
        "threads": s["threads"],
        "smoke": False,
        "recorded_from": shown,
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host": host(),
        "command": command or f"cnn train --model {model} --data {data} --out {shown}",
    }


# ----------------------------------------------------------------------------- overhead


def overhead(
    model_name: str = "lenet5", batch_size: int = 64, epochs: int = 1, rounds: int = 12, threads: int = 1
) -> dict:
    """Seconds per epoch of training.loop.train_one_epoch vs a bare loop doing the same work (seeded
    permutation, uint8 gather, normalise, forward, cross-entropy, backward, SGD step), alternating.
    Timed in process CPU seconds with one thread, so neighbours on a shared machine do not skew it."""
    import torch
    import torch.nn.functional as F

    from training.augment import Normalize
    from training.config import resolve_config
    from training.data import load_dataset
    from training.loop import steps_per_epoch, train_one_epoch
    from training.models import create_model
    from training.optim import make_optimizer, make_scheduler

    torch.set_num_threads(threads)
    d = load_dataset("digits")
    x, y = torch.cat([d.train_x] * 4), torch.cat([d.train_y] * 4)  # ~5k images per epoch
    mean, std = d.mean_std()
    norm = Normalize(mean, std)
    cfg = resolve_config("lenet5_digits", [f"batch_size={batch_size}", "schedule=constant", "label_smoothing=0"])

    def fresh():
        torch.manual_seed(0)
        m = create_model(model_name, num_classes=10, in_channels=1, input_size=28)
        opt = make_optimizer(m, cfg)
        return m, opt

    def bare(m, opt, g):
        m.train()
        n = x.shape[0]
        perm = torch.randperm(n, generator=g)
        for i in range(steps_per_epoch(n, batch_size)):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            loss = F.cross_entropy(m(norm(x[idx])), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def ours(m, opt, g, sched):
        train_one_epoch(m, opt, sched, x, y, lambda xb, _g: norm(xb), g, batch_size)

    times = {"bare": [], "train_one_epoch": []}
    for r in range(rounds):
        order = ("bare", "train_one_epoch") if r % 2 == 0 else ("train_one_epoch", "bare")  # ABBA: cancels drift
        for kind in order:
            m, opt = fresh()
            sched = make_scheduler(opt, cfg, steps_per_epoch(len(y), batch_size))
            g = torch.Generator().manual_seed(0)
            t0 = time.process_time()
            for _ in range(epochs):
                bare(m, opt, g) if kind == "bare" else ours(m, opt, g, sched)
            times[kind].append((time.process_time() - t0) / epochs)
    # min is the least disturbed run; the median shows how noisy the machine was
    b, o = min(times["bare"]), min(times["train_one_epoch"])
    bm, om = statistics.median(times["bare"]), statistics.median(times["train_one_epoch"])
    book = bookkeeping_us(create_model(model_name, num_classes=10, in_channels=1, input_size=28), batch_size, cfg)
    return {
        "model": model_name,
        "batch_size": batch_size,
        "images_per_epoch": len(y),
        "threads": threads,
        "clock": "process CPU time",
        "bare_s_per_epoch": round(b, 4),
        "train_one_epoch_s_per_epoch": round(o, 4),
        "overhead_percent": round(100 * (o / b - 1), 1),
        "median_overhead_percent": round(100 * (om / bm - 1), 1),
        "rounds": rounds,
        "bookkeeping_us_per_step": round(book["bookkeeping_us"], 1),
        "step_us": round(book["step_us"], 1),
        "bookkeeping_percent": round(100 * book["bookkeeping_us"] / book["step_us"], 2),
        "host": host(),
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def bookkeeping_us(model, batch_size: int, cfg) -> dict:
    """CPU microseconds of what train_one_epoch adds per step to a bare step (scheduler step, loss and
    accuracy accumulation), next to one full training step of the model."""
    import torch
    import torch.nn.functional as F

    from training.optim import make_optimizer, make_scheduler

    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, 100)
    x, y = torch.randn(batch_size, 1, 28, 28), torch.randint(0, 10, (batch_size,))
    loss_sum, correct = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.int64)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    logits = model(x).detach()
    loss = F.cross_entropy(logits, y)
    n = 2000
    t0 = time.process_time()
    for _ in range(n):
        sched.step()
        loss_sum += loss.detach() * batch_size
        correct += (logits.argmax(1) == y).sum()
    book = (time.process_time() - t0) / n * 1e6
    t0 = time.process_time()
    for _ in range(50):
        step()
    return {"bookkeeping_us": book, "step_us": (time.process_time() - t0) / 50 * 1e6}


# ----------------------------------------------------------------------------- output


def markdown(results: dict) -> str:
    lines = [
        "# Training table",
        "",
        "Generated by `python bench/train_table.py`. Held-out test accuracy of best.pt (selected on",
        "validation). Wall-clock is the whole command: data loading, training, evaluation, plots; CPU is",
        "its user + system CPU seconds (on a busy shared machine wall-clock overstates what a quiet",
        "machine takes; a 1-thread run takes about its CPU seconds there). `met` compares the test",
        "accuracy with the target and the wall-clock with the budget.",
        "",
        "| row | model | dataset | recipe | epochs | test acc | target | wall-clock | CPU | budget | met | command |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ROWS:
        r = results.get("rows", {}).get(name)
        model, data, recipe, target, budget = ROWS[name]
        if r is None or "error" in r:
            why = "not yet measured" if r is None else r["error"]
            lines.append(
                f"| {name} | {model} | {data} | {recipe} | - | {why} | {target:.1%} | - | - | {budget} s | - | "
                f"`cnn train --model {model} --data {data} --recipe {recipe} --out runs/{name}` |"
            )
            continue
        smoke = " (smoke)" if r["smoke"] else ""
        lines.append(
            f"| {name} | {model} | {data} | {recipe} | {r['epochs']}{smoke} | {r['test_accuracy']:.2%} | "
            f"{target:.1%} | {r['wall_seconds']:.1f} s | {r.get('cpu_seconds') or float('nan'):.1f} s | "
            f"{budget} s | {'smoke run' if r['met'] is None else 'yes' if r['met'] else 'no'} | "
            f"`{r['command']}` |"
        )
    ov = results.get("overhead")
    if ov:
        lines += [
            "",
            "## Training-loop overhead",
            "",
            f"`train_one_epoch` vs a bare PyTorch loop, {ov['model']}, batch {ov['batch_size']}, "
            f"{ov['images_per_epoch']} images/epoch, {ov['threads']} thread(s), {ov.get('clock', 'wall')}, "
            f"best of {ov['rounds']} alternating runs: "
            f"{ov['train_one_epoch_s_per_epoch']:.3f} s vs {ov['bare_s_per_epoch']:.3f} s per epoch "
            f"= **{ov['overhead_percent']:+.1f} %** (target <= +10 %; the median is "
            f"{ov.get('median_overhead_percent', float('nan')):+.1f} %). What the loop adds per step "
            f"(scheduler step, loss and accuracy accumulation) costs "
            f"{ov.get('bookkeeping_us_per_step', float('nan')):.0f} us against a "
            f"{ov.get('step_us', float('nan')) / 1000:.1f} ms step "
            f"({ov.get('bookkeeping_percent', float('nan')):.2f} %).",
        ]
    for name, r in results.get("rows", {}).items():
        if "host" in r:
            h = r["host"]
            lines.append(
                f"\n{name}: measured {r['measured']} on {h['cpu']}, {h['cores']} cores, torch {h['torch']}, "
                f"1-min load average {h['load_avg_1m']} at the end"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the training table.")
    p.add_argument(
        "--rows",
        nargs="*",
        default=["lenet5-digits"],
        help=f"rows to run: 'all' or names from {', '.join(ROWS)} (default: lenet5-digits)",
    )
    p.add_argument("--epochs", type=int, default=None, help="override epochs: a smoke run, marked as such")
    p.add_argument("--overhead", action="store_true", help="also measure loop overhead vs a bare loop")
    p.add_argument("--no-train", action="store_true", help="skip the table rows (with --overhead)")
    p.add_argument(
        "--record",
        nargs=2,
        metavar=("ROW", "RUN_DIR"),
        default=None,
        help="record ROW from a finished run in RUN_DIR (its summary.json) instead of training",
    )
    p.add_argument("--cpu-seconds", type=float, default=None, help="with --record: the run's CPU seconds")
    p.add_argument("--command", default=None, help="with --record: the command that made the run")
    p.add_argument("--runs", default=str(ROOT / "runs" / "bench"), help="where the runs go")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="where the JSON and Markdown go")
    args = p.parse_args(argv)
    rows = list(ROWS) if args.rows == ["all"] else args.rows
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        print(f"unknown rows {unknown}; valid: {', '.join(ROWS)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "train_table.json"
    results = json.loads(path.read_text()) if path.is_file() else {"rows": {}}
    if args.record:
        name, run_dir = args.record
        if name not in ROWS:
            print(f"unknown row {name!r}; valid: {', '.join(ROWS)}", file=sys.stderr)
            return 2
        results["rows"][name] = r = record_row(name, Path(run_dir), args.cpu_seconds, args.command)
        print(json.dumps({k: v for k, v in r.items() if k != "host"}), flush=True)
    elif not args.no_train:
        for name in rows:
            results["rows"][name] = r = run_row(name, Path(args.runs), args.epochs)
            print(json.dumps({k: v for k, v in r.items() if k != "host"}), flush=True)
    if args.overhead:
        results["overhead"] = ov = overhead()
        print(json.dumps({k: v for k, v in ov.items() if k != "host"}), flush=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    (out / "train_table.md").write_text(markdown(results))
    print(f"wrote {path} and {out / 'train_table.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
