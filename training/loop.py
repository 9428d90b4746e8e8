"""The training loop: train_one_epoch, evaluate, and fit (data -> model -> epochs -> checkpoints -> report).

The hot path is whole-minibatch tensor work: index the in-memory uint8 tensor with a slice of a seeded
permutation, augment + normalise the batch in torch, forward, backward, step. Metrics are accumulated
as tensors and read once per epoch.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from training import checkpoint as ckpt_io
from training.augment import Augment, Normalize
from training.config import TrainConfig, recipe_sha256
from training.data import Dataset, load_dataset
from training.errors import ConfigError, DataError
from training.models import create_model
from training.optim import make_optimizer, make_scheduler


def default_threads() -> int:
    """All CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def setup_torch(cfg: TrainConfig) -> None:
    torch.set_num_threads(cfg.threads or default_threads())
    torch.use_deterministic_algorithms(cfg.deterministic)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full batches plus the remainder, unless the remainder is a single image (batch norm needs 2)."""
    return n // batch_size + (1 if n % batch_size >= 2 else 0)


def train_one_epoch(model: nn.Module, opt: torch.optim.Optimizer, sched, x: torch.Tensor, y: torch.Tensor,
                    transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor], g: torch.Generator,
                    batch_size: int, label_smoothing: float = 0.0, grad_clip: float = 0.0) -> dict[str, float]:
    """One pass over (x uint8 (N, C, H, W), y (N,)) in a seeded random order. Returns loss/accuracy/speed."""
    model.train()
    n = x.shape[0]
    perm = torch.randperm(n, generator=g)                      # (N,)
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.int64)
    seen = 0
    t0 = time.perf_counter()
    for i in range(steps_per_epoch(n, batch_size)):
        idx = perm[i * batch_size:(i + 1) * batch_size]        # (B,)
        xb = transform(x[idx], g)                              # (B, C, H, W) float32, normalised
        yb = y[idx]                                            # (B,)
        logits = model(xb)                                     # (B, num_classes)
        loss = F.cross_entropy(logits, yb, label_smoothing=label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        sched.step()
        loss_sum += loss.detach() * len(idx)
        correct += (logits.detach().argmax(1) == yb).sum()
        seen += len(idx)
    dt = time.perf_counter() - t0
    return {"loss": float(loss_sum) / seen, "accuracy": int(correct) / seen, "images_per_s": seen / dt,
            "seconds": dt}


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, normalize: Callable[[torch.Tensor], torch.Tensor],
             batch_size: int = 1000) -> dict[str, Any]:
    """Loss, accuracy and predictions (N,) of ``model`` on uint8 images x (N, C, H, W)."""
    model.eval()
    preds, loss_sum = [], 0.0
    for i in range(0, x.shape[0], batch_size):
        logits = model(normalize(x[i:i + batch_size]))        # (b, num_classes)
        loss_sum += float(F.cross_entropy(logits, y[i:i + batch_size], reduction="sum"))
        preds.append(logits.argmax(1))
    p = torch.cat(preds)                                       # (N,)
    return {"loss": loss_sum / len(y), "accuracy": float((p == y).double().mean()), "preds": p}


def confusion_matrix(y: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) counts, rows = true class, columns = predicted class."""
    return torch.bincount(y * num_classes + preds, minlength=num_classes ** 2).view(num_classes, num_classes)


# ----------------------------------------------------------------------------- fit

def build(model_name: str, data: Dataset, cfg: TrainConfig) -> tuple[nn.Module, dict[str, Any]]:
    C, H, W = data.input_shape
    if H != W:
        raise DataError(f"{data.name}: images are {H}x{W}; the models take square inputs")
    kwargs = {"num_classes": len(data.labels), "in_channels": C, "input_size": H, **cfg.model}
    return create_model(model_name, **kwargs), kwargs


def fit(model_name: str, data_spec: str, cfg: TrainConfig, out_dir: str | os.PathLike, *,
        recipe_name: str = "", resume: str | os.PathLike | None = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``model_name`` on ``data_spec`` with ``cfg``; write best.pt, last.pt, metrics.jsonl,
    summary.json, curves.png and confusion.png into ``out_dir``. Returns the summary."""
    wall0 = time.perf_counter()
    out = Path(out_dir)
    setup_torch(cfg)
    data = load_dataset(data_spec, seed=cfg.seed, val_fraction=cfg.val_fraction, image_size=cfg.image_size,
                        color_mode=cfg.color_mode)
    model, model_kwargs = build(model_name, data, cfg)
    mean, std = data.mean_std()
    normalize = Normalize(mean, std)
    augment = Augment(cfg.augment, normalize)
    transform = augment if cfg.augment.enabled else (lambda xb, g: normalize(xb))
    if cfg.channels_last:  # NHWC: the same maths, laid out the way oneDNN convolutions prefer on CPU
        model = model.to(memory_format=torch.channels_last)
        base_transform, base_normalize = transform, normalize
        transform = lambda xb, g: base_transform(xb, g).contiguous(memory_format=torch.channels_last)  # noqa: E731
        normalize = lambda xb: base_normalize(xb).contiguous(memory_format=torch.channels_last)  # noqa: E731
    opt = make_optimizer(model, cfg)
    spe = steps_per_epoch(len(data.train_y), cfg.batch_size)
    sched = make_scheduler(opt, cfg, spe)
    g = torch.Generator().manual_seed(cfg.seed)
    recipe = cfg.to_dict()
    _, H, W = data.input_shape
    static = {
        "format_version": ckpt_io.FORMAT_VERSION, "model_name": model_name, "model_kwargs": model_kwargs,
        "labels": list(data.labels), "input_shape": data.input_shape,
        "preprocessing": ckpt_io.preprocessing(data.color_mode, H, W, mean, std),
        "dataset": data_spec, "recipe": recipe, "recipe_name": recipe_name,
        "recipe_sha256": recipe_sha256(recipe), "torch_version": str(torch.__version__),
    }
    history: list[dict[str, Any]] = []
    best = {"val_accuracy": -1.0, "val_loss": float("inf"), "epoch": 0}
    bad_epochs, start = 0, 1
    if resume is not None:
        ck = ckpt_io.load_checkpoint(resume)
        same = {k: v for k, v in recipe.items() if k != "epochs"} == \
            {k: v for k, v in ck.get("recipe", {}).items() if k != "epochs"}
        if ck.get("model_name") != model_name or ck.get("dataset") != data_spec or not same:
            raise ConfigError(f"{resume} was trained with a different model, data or recipe; "
                              f"--resume continues the saved run (only --epochs may change)")
        model.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        ckpt_io.set_rng_state(ck["rng"], g)
        history, best, bad_epochs = list(ck["history"]), dict(ck["best"]), int(ck["bad_epochs"])
        start = int(ck["epoch"]) + 1
        log(f"resuming {resume} at epoch {start}/{cfg.epochs}")
    out.mkdir(parents=True, exist_ok=True)
    if resume is not None and not (out / "best.pt").exists() and (Path(resume).parent / "best.pt").is_file():
        shutil.copyfile(Path(resume).parent / "best.pt", out / "best.pt")  # resumed into a new directory
    with open(out / "metrics.jsonl", "w") as f:  # rewritten from history so a resumed log has no duplicates
        f.writelines(json.dumps(h) + "\n" for h in history)

    def snapshot(epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
        return {**static, "state_dict": model.state_dict(), "metrics": metrics, "created": ckpt_io.utc_now(),
                "epoch": epoch, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "rng": ckpt_io.rng_state(g), "history": history, "best": best, "bad_epochs": bad_epochs}

    log(f"training {model_name} on {data_spec}: {len(data.train_y)} train / {len(data.val_y)} val / "
        f"{len(data.test_y)} test images {data.input_shape}, recipe {recipe_name or '(custom)'}, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters, {torch.get_num_threads()} threads")
    stopped_early = False
    for epoch in range(start, cfg.epochs + 1):
        lr = opt.param_groups[0]["lr"]
        tr = train_one_epoch(model, opt, sched, data.train_x, data.train_y, transform, g, cfg.batch_size,
                             cfg.label_smoothing, cfg.grad_clip)
        va = evaluate(model, data.val_x, data.val_y, normalize, cfg.eval_batch_size)
        row = {"epoch": epoch, "lr": lr, "train_loss": tr["loss"], "train_accuracy": tr["accuracy"],
               "val_loss": va["loss"], "val_accuracy": va["accuracy"], "images_per_s": tr["images_per_s"],
               "epoch_seconds": tr["seconds"]}
        history.append(row)
        improved = (va["accuracy"], -va["loss"]) > (best["val_accuracy"], -best["val_loss"])
        if improved:
            best = {"val_accuracy": va["accuracy"], "val_loss": va["loss"], "epoch": epoch}
            bad_epochs = 0
        else:
            bad_epochs += 1
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        log(f"epoch {epoch:3d}/{cfg.epochs}  loss {tr['loss']:.4f}  acc {tr['accuracy']:.2%}  |  "
            f"val loss {va['loss']:.4f}  val acc {va['accuracy']:.2%}{' *' if improved else '  '}  |  "
            f"lr {lr:.2e}  {tr['images_per_s']:,.0f} img/s  {tr['seconds']:.1f}s")
        metrics = {"val_accuracy": va["accuracy"], "best_epoch": best["epoch"]}
        snap = snapshot(epoch, metrics)
        if improved:
            ckpt_io.save_checkpoint(snap, out / "best.pt")
        if cfg.early_stop and bad_epochs >= cfg.early_stop and epoch < cfg.epochs:
            stopped_early = True
            snap["early_stopped"] = True
            ckpt_io.save_checkpoint(snap, out / "last.pt")
            log(f"early stop: no better val accuracy for {bad_epochs} epochs")
            break
        ckpt_io.save_checkpoint(snap, out / "last.pt")
    return finish(out, data, Normalize(mean, std), cfg, log, wall0, stopped_early)


def finish(out: Path, data: Dataset, normalize: Normalize, cfg: TrainConfig, log: Callable[[str], None],
           wall0: float, stopped_early: bool) -> dict[str, Any]:
    """Score best.pt and last.pt on the test split, store it in both, write the summary and plots."""
    from training import report

    results = {}
    for name in ("best", "last"):
        ck = ckpt_io.load_checkpoint(out / f"{name}.pt")
        model = ckpt_io.build_model(ck)
        te = evaluate(model, data.test_x, data.test_y, normalize, cfg.eval_batch_size)
        val = ck["history"][ck["best"]["epoch"] - 1]["val_accuracy"] if name == "best" else \
            ck["history"][-1]["val_accuracy"]
        ck["metrics"] = {"test_accuracy": te["accuracy"], "test_loss": te["loss"], "val_accuracy": val,
                         "best_epoch": ck["best"]["epoch"], "epoch": ck["epoch"]}
        ckpt_io.save_checkpoint(ck, out / f"{name}.pt")
        results[name] = (ck, te)
    ck, te = results["best"]
    cm = confusion_matrix(data.test_y, te["preds"], len(data.labels))
    report.plot_curves(results["last"][0]["history"], out / "curves.png")  # last.pt has the full history
    report.plot_confusion(cm, data.labels, out / "confusion.png",
                          title=f"{ck['model_name']} on {data.name}: test accuracy {te['accuracy']:.2%}")
    summary = {"model": ck["model_name"], "dataset": data.name, "recipe": ck["recipe_name"],
               "recipe_sha256": ck["recipe_sha256"], **ck["metrics"],
               "last_test_accuracy": results["last"][1]["accuracy"], "epochs_run": results["last"][0]["epoch"],
               "early_stopped": stopped_early, "wall_seconds": time.perf_counter() - wall0,
               "threads": torch.get_num_threads(), "confusion_matrix": cm.tolist()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"best epoch {summary['best_epoch']}: val acc {summary['val_accuracy']:.2%}, "
        f"test acc {summary['test_accuracy']:.2%}  ({summary['wall_seconds']:.1f}s) -> {out}/best.pt")
    return summary
