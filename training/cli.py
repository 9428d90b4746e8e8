"""`cnn train` and `cnn inspect` subcommands.

This module must not import torch at import time: the `cnn` command line (client/cli.py) imports it
to register the subcommands, and `cnn serve` has to run on a torch-free install. Everything heavy is
imported inside the run functions. Errors a user can act on print one line to stderr and return 2.

Also runnable on its own: ``python -m training.cli train --model lenet5 --data digits --out runs/x``.
Under ``torchrun --nproc_per_node N`` the same command trains data-parallel (training/distributed.py);
rank 0 prints and writes, an error on another rank is printed with its rank.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from training.errors import ConfigError, TrainingError


def add_train_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a CNN and write RUN_DIR/best.pt, last.pt, metrics and plots",
        description="Train a model from the zoo. Without --recipe, the recommended recipe for the model "
        "and kind of data is used (training/recipes/). Writes best.pt (best on validation), "
        "last.pt, metrics.jsonl, summary.json, curves.png and confusion.png into --out.",
    )
    p.add_argument("--model", default=None, help="model name, e.g. lenet5, resnet20, mobilenet_v2 (default lenet5)")
    p.add_argument(
        "--data",
        default=None,
        help="digits (default) | mnist (the shipped data/mnist) | fashion-mnist | idx:DIR | folder:DIR",
    )
    p.add_argument("--out", default=None, metavar="RUN_DIR", help="output directory for checkpoints and reports")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    p.add_argument("--seed", type=int, default=None, help="override the recipe's seed")
    p.add_argument(
        "--recipe",
        default=None,
        metavar="NAME_OR_PATH",
        help="recipe name in training/recipes/ or a path to a TOML recipe",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key, e.g. --set lr=0.01 --set augment.rotate=10 (repeatable)",
    )
    p.add_argument(
        "--resume",
        default=None,
        metavar="CKPT",
        help="continue RUN_DIR/last.pt exactly where it stopped (same recipe; --epochs may extend)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run already in RUN_DIR (without it, cnn train refuses to write over one)",
    )
    p.add_argument(
        "--device",
        default=None,
        choices=("cpu", "cuda", "auto"),
        help="train on cpu (default), cuda or auto (cuda when available); under torchrun each process "
        "takes cuda:LOCAL_RANK and the processes talk over NCCL (gloo on cpu)",
    )
    p.set_defaults(func=run_train)


def _prog() -> str:
    """ "cnn train", or "cnn train [rank N]" on a torchrun process other than rank 0."""
    import os

    rank = os.environ.get("RANK", "0")
    return "cnn train" if rank in ("", "0") else f"cnn train [rank {rank}]"


def run_train(args) -> int:
    rc = _run_train(args)
    from training import distributed

    if distributed.ended_own_group():
        _exit_worker(rc)
    return rc


def _run_train(args) -> int:
    try:
        _train(args)
        return 0
    except TrainingError as e:
        print(f"{_prog()}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if _prog() == "cnn train":
            print("cnn train: interrupted; continue with --resume RUN_DIR/last.pt", file=sys.stderr)
        return 130


def _exit_worker(rc: int) -> None:
    """End a torchrun worker now that training is over and its process group is destroyed, without running the
    interpreter's and C++ static teardown: there, rank 0 of a gloo run sometimes aborted ("terminate called without
    an active exception", SIGABRT) after writing every file, failing a finished run (3 of ~10 clean-clone CI runs).
    Everything the run wrote is closed; streams are flushed here."""
    import logging
    import os

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(rc)


def _train(args) -> None:
    from training.config import config_from_dict, recommended_recipe, resolve_config
    from training.data import data_kind, dataset_key
    from training.loop import fit
    from training.models import model_arguments

    if args.resume:
        from training.checkpoint import load_checkpoint

        ck = load_checkpoint(args.resume)
        if args.recipe or args.set:
            raise ConfigError("--resume continues the saved recipe; drop --recipe/--set")
        for flag, given, saved in (
            ("--model", args.model, ck["model_name"]),
            ("--data", args.data, ck["dataset"]),
            ("--seed", args.seed, ck["recipe"].get("seed")),
        ):
            if given is not None and given != saved:
                raise ConfigError(f"{flag} {given} does not match the checkpoint's {saved}")
        model, data, recipe_name = ck["model_name"], ck["dataset"], ck.get("recipe_name", "")
        recipe = dict(ck["recipe"])
        if args.epochs is not None:
            recipe["epochs"] = args.epochs
        cfg = config_from_dict(recipe)
        out = args.out or str(Path(args.resume).parent)
        if finished_run(ck, cfg.epochs, args.resume):
            return
        if args.out and Path(args.out).resolve() != Path(args.resume).resolve().parent:
            refuse_existing_run(args.out, args.overwrite)
    else:
        if not args.out:
            raise ConfigError("--out RUN_DIR is required")
        model, data = args.model or "lenet5", args.data or "digits"
        model_arguments(model)  # unknown model -> ModelError listing the valid ones, before loading data
        recipe_name = args.recipe or recommended_recipe(model, dataset_key(data), data_kind(data))
        overrides = list(args.set)
        if args.epochs is not None:
            overrides.append(f"epochs={args.epochs}")
        if args.seed is not None:
            overrides.append(f"seed={args.seed}")
        cfg = resolve_config(recipe_name, overrides)
        recipe_name = Path(recipe_name).stem
        out = args.out
        refuse_existing_run(out, args.overwrite)
    fit(
        model,
        data,
        cfg,
        out,
        recipe_name=recipe_name,
        resume=args.resume,
        log=lambda s: print(s, flush=True),
        device=getattr(args, "device", None) or "cpu",
    )


RUN_FILES = ("best.pt", "last.pt", "metrics.jsonl", "summary.json")


def refuse_existing_run(out: str, overwrite: bool) -> None:
    """A run already in `out` is not written over without --overwrite (ConfigError naming the folder)."""
    found = [f for f in RUN_FILES if (Path(out) / f).exists()]
    if found and not overwrite:
        raise ConfigError(
            f"{out} already holds a run ({', '.join(found)}); pass --overwrite to replace it, "
            f"--resume {Path(out) / 'last.pt'} to continue it, or choose another --out"
        )


def finished_run(ck: dict, epochs: int, path: str) -> bool:
    """True (and says so) when the checkpoint to resume has nothing left to train: every epoch done, or
    stopped early. Resuming it would only score it again."""
    done = int(ck.get("epoch", 0))
    acc = (ck.get("metrics") or {}).get("test_accuracy")
    scored = f"; test accuracy {acc:.2%}" if isinstance(acc, (int, float)) else ""
    if ck.get("early_stopped"):
        print(
            f"{_prog()}: {path} already finished: it stopped early at epoch {done} of {epochs}{scored}; "
            f"nothing to do (start a new run with --out to train again)",
            file=sys.stderr,
        )
        return True
    if done >= epochs:
        print(
            f"{_prog()}: {path} already finished all {done} epochs{scored}; nothing to do "
            f"(to train further: --resume {path} --epochs N with N > {done})",
            file=sys.stderr,
        )
        return True
    return False


def add_recipes_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "recipes",
        help="list the training recipes and what they reach",
        description="List the recipes in training/recipes/ with their main settings, what each is for, and the "
        "test accuracy bench/train_table.py measured with it (works without torch).",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_recipes)


def run_recipes(args) -> int:
    from training.catalog import format_recipes, recipes, to_json

    entries = recipes()
    print(to_json(entries) if args.json else format_recipes(entries))
    return 0


def add_inspect_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="draw the feature maps of every convolution stage for one image",
        description="Run one image through a checkpoint and write a PNG grid with the feature maps of "
        "each convolution stage (first --channels maps per stage).",
    )
    p.add_argument("checkpoint", metavar="CKPT", help="a checkpoint written by `cnn train` (best.pt)")
    p.add_argument("image", metavar="IMAGE", help="a PNG/JPEG image")
    p.add_argument("--out", required=True, metavar="PNG", help="where to write the grid")
    p.add_argument("--channels", type=int, default=16, help="feature maps shown per stage (default 16)")
    p.set_defaults(func=run_inspect)


def run_inspect(args) -> int:
    try:
        from training.inspect import inspect_image

        r = inspect_image(args.checkpoint, args.image, args.out, max_channels=args.channels)
    except TrainingError as e:
        print(f"cnn inspect: error: {e}", file=sys.stderr)
        return 2
    print(f"{args.image}: {r['label']} ({r['probability']:.1%}); {len(r['stages'])} stages -> {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    add_inspect_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
