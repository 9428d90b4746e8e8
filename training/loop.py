"""The training loop: train_one_epoch, evaluate, and fit (data -> model -> epochs -> checkpoints -> report).

The hot path is whole-minibatch tensor work: index the in-memory uint8 tensor with a slice of a seeded
permutation, augment + normalise the batch in torch, forward, backward, step. Metrics are accumulated
as tensors and read once per epoch.

Started by ``torchrun`` the same code trains data-parallel (DistributedDataParallel); everything that
differs is in training/distributed.py and the few ``ctx`` branches below.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from training import checkpoint as ckpt_io
from training import distributed
from training.allocator import keep_freed_memory
from training.augment import Augment, Normalize
from training.config import TrainConfig, config_from_dict, recipe_sha256
from training.data import Dataset, load_dataset
from training.distributed import DistContext
from training.errors import ConfigError, DataError
from training.models import create_model, resolved_arguments
from training.optim import lr_factor, make_optimizer, make_scheduler
from training.progress import Progress


def default_threads() -> int:
    """All CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def setup_torch(cfg: TrainConfig, processes_per_node: int = 1, distributed: bool = False) -> None:
    """Threads (``threads = 0``: this process's share of the cores), determinism and every global seed."""
    torch.set_num_threads(cfg.threads or max(1, default_threads() // processes_per_node))
    torch.use_deterministic_algorithms(cfg.deterministic)
    # Deterministic mode also fills every new tensor with NaN by default (a debugging aid that catches reads
    # of uninitialised memory). Kernels that are deterministic write their outputs in full, so the fill
    # changes no result, but it costs a pass over memory per allocation: MobileNetV2 on 2 CPU cores trained
    # ~15 % faster without it, with bit-identical weights (docs/training.md).
    torch.utils.deterministic.fill_uninitialized_memory = False
    if cfg.keep_freed_memory and not distributed:  # not in a process group: DDP runs on gloo aborted at exit
        keep_freed_memory()  # in 2 of 7 CI runs with it (docs/training.md)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)


def steps_per_epoch(n: int, batch_size: int, world_size: int = 1) -> int:
    """Full batches plus the remainder, unless the remainder is a single image (batch norm needs 2);
    split over ``world_size`` processes, the remainder is kept when every process gets 2 images of it."""
    return n // batch_size + (1 if n % batch_size >= 2 * world_size else 0)


def train_one_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched,
    x: torch.Tensor,
    y: torch.Tensor,
    transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    g: torch.Generator,
    batch_size: int,
    label_smoothing: float = 0.0,
    grad_clip: float = 0.0,
    *,
    ctx: DistContext | None = None,
    aug_generator: torch.Generator | None = None,
    amp: str = "off",
    progress: str | None = None,
) -> dict[str, float]:
    """One pass over (x uint8 (N, C, H, W), y (N,)) in a seeded random order. Returns loss/accuracy/speed.

    ``g`` draws the permutation (and the augmentation, unless ``aug_generator`` is given). Under DDP
    (``ctx.enabled``) every rank draws the same permutation from ``g``, takes its part of each global
    batch of ``batch_size`` and augments it with its own ``aug_generator``; the returned numbers are
    reduced over the ranks. ``amp="bf16"`` runs the forward pass and the loss under bfloat16 autocast
    (the parameters, their gradients and the optimiser state stay float32). ``progress``: a label such as
    "epoch 3/15" shows progress within the epoch (training/progress.py: a bar on a terminal, a line per
    quarter otherwise); None shows nothing."""
    model.train()
    dev_type = y.device.type
    ctx = ctx or DistContext()
    n = x.shape[0]
    perm = torch.randperm(n, generator=g)  # (N,)
    ag = g if aug_generator is None else aug_generator
    loss_sum = torch.zeros((), dtype=torch.float64, device=y.device)
    correct = torch.zeros((), dtype=torch.int64, device=y.device)
    seen = 0
    steps = steps_per_epoch(n, batch_size, ctx.world_size)
    bar = (
        Progress(steps, progress, "batch", unit_scale=batch_size, rate_unit="img", plain_final=False)
        if progress
        else None
    )
    t0 = time.perf_counter()
    for i in range(steps):
        idx = perm[i * batch_size : (i + 1) * batch_size]  # (B,) the global batch
        global_n = len(idx)
        idx = distributed.shard(idx, ctx)  # (B / world_size,) this rank's part
        xb = transform(x[idx], ag)  # (b, C, H, W) float32, normalised
        yb = y[idx]  # (b,)
        with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            logits = model(xb)  # (b, num_classes)
            loss = F.cross_entropy(logits, yb, label_smoothing=label_smoothing)
        opt.zero_grad(set_to_none=True)
        # DDP averages the ranks' gradients; weight uneven parts (a last partial batch) by their size so
        # the average is the mean over the global batch. 1.0 whenever the parts are equal.
        weight = len(idx) * ctx.world_size / global_n
        (loss * weight if weight != 1.0 else loss).backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        sched.step()
        loss_sum += loss.detach() * len(idx)
        correct += (logits.detach().argmax(1) == yb).sum()
        seen += len(idx)
        if bar is not None:  # the running loss every 25 steps: one read of a scalar, no per-step sync
            bar.update(1, **({"loss": float(loss_sum) / seen} if i % 25 == 0 else {}))
    if bar is not None:
        bar.close()
    dt = time.perf_counter() - t0
    if ctx.enabled:
        loss_total, correct_total, seen_total = distributed.all_reduce_sum([loss_sum, correct, seen], ctx)
        return {
            "loss": loss_total / seen_total,
            "accuracy": correct_total / seen_total,
            "images_per_s": seen_total / dt,
            "seconds": dt,
        }
    return {"loss": float(loss_sum) / seen, "accuracy": int(correct) / seen, "images_per_s": seen / dt, "seconds": dt}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 1000,
) -> dict[str, Any]:
    """Loss, accuracy and predictions (N,) of ``model`` on uint8 images x (N, C, H, W)."""
    model.eval()
    preds, loss_sum = [], 0.0
    for i in range(0, x.shape[0], batch_size):
        logits = model(normalize(x[i : i + batch_size]))  # (b, num_classes)
        loss_sum += float(F.cross_entropy(logits, y[i : i + batch_size], reduction="sum"))
        preds.append(logits.argmax(1))
    p = torch.cat(preds)  # (N,)
    return {"loss": loss_sum / len(y), "accuracy": float((p == y).double().mean()), "preds": p}


@torch.no_grad()
def evaluate_sharded(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    ctx: DistContext,
) -> dict[str, float]:
    """Loss and accuracy over all of x, each rank scoring its contiguous share; sums and counts are
    all-reduced, so every rank gets the same numbers. A single process falls back to ``evaluate``."""
    if not ctx.enabled:
        r = evaluate(model, x, y, normalize, batch_size)
        return {"loss": r["loss"], "accuracy": r["accuracy"]}
    model.eval()
    xs, ys = x.tensor_split(ctx.world_size)[ctx.rank], y.tensor_split(ctx.world_size)[ctx.rank]
    loss_sum, correct = 0.0, 0
    for i in range(0, len(ys), batch_size):
        logits = model(normalize(xs[i : i + batch_size]))  # (b, num_classes)
        yb = ys[i : i + batch_size]
        loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    loss_total, correct_total, n = distributed.all_reduce_sum([loss_sum, correct, len(ys)], ctx)
    return {"loss": loss_total / n, "accuracy": correct_total / n}


def confusion_matrix(y: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) counts, rows = true class, columns = predicted class."""
    return torch.bincount(y * num_classes + preds, minlength=num_classes**2).view(num_classes, num_classes)


# ----------------------------------------------------------------------------- fit


def build(model_name: str, data: Dataset, cfg: TrainConfig) -> tuple[nn.Module, dict[str, Any]]:
    C, H, W = data.input_shape
    if H != W:
        raise DataError(f"{data.name}: images are {H}x{W}; the models take square inputs")
    kwargs = {"num_classes": len(data.labels), "in_channels": C, "input_size": H, **cfg.model}
    model = create_model(model_name, **kwargs)  # names a bad argument before anything else
    return model, resolved_arguments(model_name, **kwargs)  # the checkpoint records defaults too


def _same_recipe(recipe: dict[str, Any], saved: dict[str, Any]) -> bool:
    """Equal but for ``epochs``, comparing the saved recipe with its defaults filled in (keys added to
    TrainConfig later, such as ``sync_bn``, keep their default for older checkpoints)."""
    try:
        saved = config_from_dict(dict(saved)).to_dict()
    except ValueError:
        return False
    return {k: v for k, v in recipe.items() if k != "epochs"} == {k: v for k, v in saved.items() if k != "epochs"}


def _to_cpu(obj: Any) -> Any:
    """A copy of a (nested) checkpoint value with every tensor on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def fit(
    model_name: str,
    data_spec: str,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    recipe_name: str = "",
    resume: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train ``model_name`` on ``data_spec`` with ``cfg``; write best.pt, last.pt, metrics.jsonl,
    summary.json, curves.png and confusion.png into ``out_dir``. Returns the summary.

    ``device``: "cpu" (default), "cuda" or "auto". Started by torchrun (WORLD_SIZE > 1), or inside a
    process group the caller initialised, it trains data-parallel: see training/distributed.py. Then
    only rank 0 logs and writes files, and every rank returns rank 0's summary."""
    ctx = distributed.context(device)
    distributed.check_config(cfg, ctx)
    distributed.setup(ctx)
    try:
        return _fit(
            model_name,
            data_spec,
            cfg,
            Path(out_dir),
            ctx,
            recipe_name=recipe_name,
            resume=resume,
            log=log if ctx.is_main else (lambda _msg: None),
        )
    finally:
        distributed.teardown(ctx)


def _fit(
    model_name: str,
    data_spec: str,
    cfg: TrainConfig,
    out: Path,
    ctx: DistContext,
    *,
    recipe_name: str,
    resume: str | os.PathLike | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    wall0 = time.perf_counter()
    dev = ctx.device
    if dev.type == "cuda" and cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    setup_torch(cfg, ctx.local_world_size if ctx.enabled else 1, distributed=ctx.enabled)
    data = load_dataset(
        data_spec, seed=cfg.seed, val_fraction=cfg.val_fraction, image_size=cfg.image_size, color_mode=cfg.color_mode
    )
    model, model_kwargs = build(model_name, data, cfg)
    mean, std = data.mean_std()
    normalize = Normalize(mean, std)
    augment = Augment(cfg.augment, normalize)
    transform = augment if cfg.augment.enabled else (lambda xb, g: normalize(xb))
    if dev.type != "cpu":  # batches are gathered and augmented on the CPU, then moved
        model = model.to(dev)
        cpu_transform, cpu_normalize = transform, normalize
        transform = lambda xb, g: cpu_transform(xb, g).to(dev, non_blocking=True)  # noqa: E731
        normalize = lambda xb: cpu_normalize(xb).to(dev, non_blocking=True)  # noqa: E731
    if cfg.channels_last:  # NHWC: the same maths, laid out the way oneDNN convolutions prefer on CPU
        model = model.to(memory_format=torch.channels_last)
        base_transform, base_normalize = transform, normalize
        transform = lambda xb, g: base_transform(xb, g).contiguous(memory_format=torch.channels_last)  # noqa: E731
        normalize = lambda xb: base_normalize(xb).contiguous(memory_format=torch.channels_last)  # noqa: E731
    if ctx.enabled and cfg.sync_bn:  # same parameters and state_dict keys; statistics over the global batch
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    opt = make_optimizer(model, cfg)
    n_train = len(data.train_y)
    spe = steps_per_epoch(n_train, cfg.batch_size, ctx.world_size)
    sched = make_scheduler(opt, cfg, spe)
    g = torch.Generator().manual_seed(cfg.seed)
    aug_g = torch.Generator() if ctx.enabled else None  # per rank, reseeded every epoch (see the loop)
    train_y, val_y = data.train_y.to(dev), data.val_y.to(dev)
    recipe = cfg.to_dict()
    _, H, W = data.input_shape
    static = {
        "format_version": ckpt_io.FORMAT_VERSION,
        "model_name": model_name,
        "model_kwargs": model_kwargs,
        "labels": list(data.labels),
        "input_shape": data.input_shape,
        "preprocessing": ckpt_io.preprocessing(data.color_mode, H, W, mean, std),
        "dataset": data_spec,
        "recipe": recipe,
        "recipe_name": recipe_name,
        "recipe_sha256": recipe_sha256(recipe),
        "torch_version": str(torch.__version__),
    }
    if ctx.enabled:
        static["distributed"] = {
            "world_size": ctx.world_size,
            "backend": ctx.backend,
            "per_rank_batch_size": cfg.batch_size // ctx.world_size,
        }
    history: list[dict[str, Any]] = []
    best = {"val_accuracy": -1.0, "val_loss": float("inf"), "epoch": 0}
    bad_epochs, start = 0, 1
    if resume is not None:  # every rank reads the file (it must be visible to all of them) and restores it
        ck = ckpt_io.load_checkpoint(resume)
        if (
            ck.get("model_name") != model_name
            or ck.get("dataset") != data_spec
            or not _same_recipe(recipe, ck.get("recipe", {}))
        ):
            raise ConfigError(
                f"{resume} was trained with a different model, data or recipe; "
                f"--resume continues the saved run (only --epochs may change)"
            )
        model.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        saved_lr = opt.param_groups[0]["lr"]  # what the saved run's schedule set for its next step
        for group, base in zip(opt.param_groups, sched.base_lrs):  # this run's schedule at that step: the same
            group["lr"] = base * lr_factor(sched.last_epoch, cfg, spe)  # value unless --epochs changed it
        sched._last_lr = [group["lr"] for group in opt.param_groups]
        ckpt_io.set_rng_state(ck["rng"], g)
        history, best, bad_epochs = list(ck["history"]), dict(ck["best"]), int(ck["bad_epochs"])
        start = int(ck["epoch"]) + 1
        log(f"resuming {resume} at epoch {start}/{cfg.epochs}")
        planned = int(ck.get("recipe", {}).get("epochs", cfg.epochs))
        if planned != cfg.epochs:
            log(
                f"note: the run was planned for {planned} epochs, now {cfg.epochs}: the {cfg.schedule} schedule is "
                f"recomputed over {cfg.epochs} epochs, so the learning rate goes from {saved_lr:.2e} to "
                f"{opt.param_groups[0]['lr']:.2e} at this step"
            )
        saved_world = int(ck.get("distributed", {}).get("world_size", 1))
        if saved_world != ctx.world_size:
            log(
                f"note: {resume} was trained by {saved_world} process(es), this run has {ctx.world_size}: "
                f"same data order and effective batch, but other augmentation/dropout draws, so the result is "
                f"not bit-identical to an uninterrupted run"
            )
    train_model: nn.Module = model
    if ctx.enabled:  # broadcasts rank 0's parameters and buffers; averages gradients during backward
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if resume is not None and not (out / "best.pt").exists() and (Path(resume).parent / "best.pt").is_file():
            shutil.copyfile(Path(resume).parent / "best.pt", out / "best.pt")  # resumed into a new directory
        with open(out / "metrics.jsonl", "w") as f:  # rewritten from history so a resumed log has no duplicates
            f.writelines(json.dumps(h) + "\n" for h in history)

    def snapshot(epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
        snap = {
            **static,
            "state_dict": model.state_dict(),
            "metrics": metrics,
            "created": ckpt_io.utc_now(),
            "epoch": epoch,
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "rng": ckpt_io.rng_state(g),
            "history": history,
            "best": best,
            "bad_epochs": bad_epochs,
        }
        return snap if dev.type == "cpu" else _to_cpu(snap)

    log(
        f"training {model_name} on {data_spec}: {n_train} train / {len(data.val_y)} val / "
        f"{len(data.test_y)} test images {data.input_shape}, recipe {recipe_name or '(custom)'}, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters, {torch.get_num_threads()} threads"
        f"{'' if dev.type == 'cpu' else f', {dev}'}"
    )
    if ctx.enabled:
        rest = n_train % cfg.batch_size
        log(
            f"distributed: {ctx.world_size} processes ({ctx.backend}), {cfg.batch_size // ctx.world_size} images "
            f"per process per step (effective batch {cfg.batch_size}), BatchNorm "
            f"{'synchronised' if cfg.sync_bn else 'per process'}"
            + (
                f"; the last {rest} images of each epoch's order are left out (fewer than 2 per process)"
                if 2 <= rest < 2 * ctx.world_size
                else ""
            )
        )
    stopped_early = False
    for epoch in range(start, cfg.epochs + 1):
        if ctx.enabled:  # per-rank streams, derived from (seed, rank, epoch): an exact resume needs no rank state
            aug_g.manual_seed(distributed.derive_seed(cfg.seed, "augment", ctx.rank, epoch))
            torch.manual_seed(distributed.derive_seed(cfg.seed, "torch", ctx.rank, epoch))  # dropout
        lr = opt.param_groups[0]["lr"]
        tr = train_one_epoch(
            train_model,
            opt,
            sched,
            data.train_x,
            train_y,
            transform,
            g,
            cfg.batch_size,
            cfg.label_smoothing,
            cfg.grad_clip,
            ctx=ctx,
            aug_generator=aug_g,
            amp=cfg.amp,
            progress=f"epoch {epoch}/{cfg.epochs}" if ctx.is_main else None,
        )
        if ctx.enabled:
            distributed.broadcast_buffers(model, ctx)  # every rank evaluates the model rank 0 saves
            va = evaluate_sharded(model, data.val_x, val_y, normalize, cfg.eval_batch_size, ctx)
        else:
            va = evaluate(model, data.val_x, val_y, normalize, cfg.eval_batch_size)
        row = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": tr["loss"],
            "train_accuracy": tr["accuracy"],
            "val_loss": va["loss"],
            "val_accuracy": va["accuracy"],
            "images_per_s": tr["images_per_s"],
            "epoch_seconds": tr["seconds"],
        }
        history.append(row)
        # the metrics are reduced over the ranks, so every rank takes the same decisions here
        improved = (va["accuracy"], -va["loss"]) > (best["val_accuracy"], -best["val_loss"])
        if improved:
            best = {"val_accuracy": va["accuracy"], "val_loss": va["loss"], "epoch": epoch}
            bad_epochs = 0
        else:
            bad_epochs += 1
        if ctx.is_main:
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        log(
            f"epoch {epoch:3d}/{cfg.epochs}  loss {tr['loss']:.4f}  acc {tr['accuracy']:.2%}  |  "
            f"val loss {va['loss']:.4f}  val acc {va['accuracy']:.2%}{' *' if improved else '  '}  |  "
            f"lr {lr:.2e}  {tr['images_per_s']:,.0f} img/s  {tr['seconds']:.1f}s"
        )
        metrics = {"val_accuracy": va["accuracy"], "best_epoch": best["epoch"]}
        snap = snapshot(epoch, metrics) if ctx.is_main else {}
        if improved and ctx.is_main:
            ckpt_io.save_checkpoint(snap, out / "best.pt")
        if cfg.early_stop and bad_epochs >= cfg.early_stop and epoch < cfg.epochs:
            stopped_early = True
            if ctx.is_main:
                snap["early_stopped"] = True
                ckpt_io.save_checkpoint(snap, out / "last.pt")
            log(f"early stop: no better val accuracy for {bad_epochs} epochs")
            break
        if ctx.is_main:
            ckpt_io.save_checkpoint(snap, out / "last.pt")
    summary = None
    if ctx.is_main:  # the test split is scored once, on the saved checkpoints, exactly as in one process
        extra = {"world_size": ctx.world_size, "backend": ctx.backend} if ctx.enabled else {}
        summary = finish(out, data, Normalize(mean, std), cfg, log, wall0, stopped_early, extra)
    return distributed.broadcast_object(summary, ctx)


def finish(
    out: Path,
    data: Dataset,
    normalize: Normalize,
    cfg: TrainConfig,
    log: Callable[[str], None],
    wall0: float,
    stopped_early: bool,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score best.pt and last.pt on the test split, store it in both, write the summary and plots."""
    from training import report

    results = {}
    for name in ("best", "last"):
        ck = ckpt_io.load_checkpoint(out / f"{name}.pt")
        model = ckpt_io.build_model(ck)
        te = evaluate(model, data.test_x, data.test_y, normalize, cfg.eval_batch_size)
        val = (
            ck["history"][ck["best"]["epoch"] - 1]["val_accuracy"]
            if name == "best"
            else ck["history"][-1]["val_accuracy"]
        )
        ck["metrics"] = {
            "test_accuracy": te["accuracy"],
            "test_loss": te["loss"],
            "val_accuracy": val,
            "best_epoch": ck["best"]["epoch"],
            "epoch": ck["epoch"],
        }
        ckpt_io.save_checkpoint(ck, out / f"{name}.pt")
        results[name] = (ck, te)
    ck, te = results["best"]
    cm = confusion_matrix(data.test_y, te["preds"], len(data.labels))
    report.plot_curves(results["last"][0]["history"], out / "curves.png")  # last.pt has the full history
    report.plot_confusion(
        cm,
        data.labels,
        out / "confusion.png",
        title=f"{ck['model_name']} on {data.name}: test accuracy {te['accuracy']:.2%}",
    )
    summary = {
        "model": ck["model_name"],
        "dataset": data.name,
        "recipe": ck["recipe_name"],
        "recipe_sha256": ck["recipe_sha256"],
        **ck["metrics"],
        "last_test_accuracy": results["last"][1]["accuracy"],
        "epochs_run": results["last"][0]["epoch"],
        "early_stopped": stopped_early,
        "wall_seconds": time.perf_counter() - wall0,
        "threads": torch.get_num_threads(),
        **(extra or {}),
        "confusion_matrix": cm.tolist(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(
        f"best epoch {summary['best_epoch']}: val acc {summary['val_accuracy']:.2%}, "
        f"test acc {summary['test_accuracy']:.2%}  ({summary['wall_seconds']:.1f}s) -> {out}/best.pt"
    )
    return summary
