"""What can be trained: the registered models with their arguments (`cnn models zoo`) and the recipes with
what they reach (`cnn recipes`).

Recipes are read as TOML (no torch needed); "what they reach" is the recipe's own stated target (its header
comment) and, when `bench/train_table.py` has measured it, the test accuracy and wall-clock it measured
(bench/results/train_table.json). The model zoo imports torch (the models are torch modules).
"""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TRAIN_TABLE = Path(__file__).resolve().parent.parent / "bench" / "results" / "train_table.json"


@dataclass
class ZooEntry:
    name: str
    arguments: dict[str, Any]  # keyword -> default ("required" when it has none)
    summary: str  # first line of the constructor's docstring


@dataclass
class RecipeEntry:
    name: str
    description: str  # the header comment, minus the boilerplate sentence
    settings: dict[str, Any]  # epochs, batch_size, optimizer, lr, schedule
    measured: list[dict[str, Any]] = field(default_factory=list)  # rows of the training table run with it


def zoo() -> list[ZooEntry]:
    from training.models import _lookup, list_models

    out = []
    for name in list_models():
        fn = _lookup(name)
        args = {
            k: ("required" if p.default is p.empty else p.default) for k, p in inspect.signature(fn).parameters.items()
        }
        doc = (inspect.getdoc(fn) or "").strip().splitlines()
        out.append(ZooEntry(name, args, doc[0] if doc else ""))
    return out


def _header(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    words = " ".join(lines)
    words = re.sub(
        r"\s*Every key is a TrainConfig field(?: \(training/config\.py\))?[.;]"
        r"(?:\s*anything left out keeps its default there\.)?",
        "",
        words,
    )
    return words.strip()


def _measured(train_table: Path) -> dict[str, list[dict[str, Any]]]:
    try:
        rows = json.loads(train_table.read_text()).get("rows", {})
    except (OSError, ValueError):
        return {}
    by_recipe: dict[str, list[dict[str, Any]]] = {}
    for row in rows.values():
        if row.get("smoke"):
            continue
        by_recipe.setdefault(row.get("recipe", ""), []).append(
            {
                k: row.get(k)
                for k in ("model", "dataset", "epochs", "test_accuracy", "target", "met", "wall_seconds", "measured")
            }
        )
    return by_recipe


def recipes(train_table: Path = TRAIN_TABLE) -> list[RecipeEntry]:
    import tomllib

    from training.config import list_recipes, recipe_path

    measured = _measured(train_table)
    out = []
    for name in list_recipes():
        text = recipe_path(name).read_text()
        data = tomllib.loads(text)
        settings: dict[str, Any] = {
            k: data[k] for k in ("epochs", "batch_size", "optimizer", "lr", "schedule") if k in data
        }
        out.append(RecipeEntry(name, _header(text), settings, measured.get(name, [])))
    return out


def format_zoo(entries: list[ZooEntry]) -> str:
    lines = []
    for e in entries:
        args = ", ".join(f"{k}={v!r}" if v != "required" else k for k, v in e.arguments.items())
        lines.append(f"{e.name}: {e.summary}" if e.summary else e.name)
        lines.append(f"    arguments: {args}")
    lines.append(
        "Pass arguments in a recipe's [model] table or with --set model.KEY=VALUE "
        "(num_classes, in_channels and input_size come from the data)."
    )
    return "\n".join(lines)


def format_recipes(entries: list[RecipeEntry]) -> str:
    lines = []
    for e in entries:
        s = e.settings
        lines.append(f"{e.name}: " + ", ".join(f"{k} {v}" for k, v in s.items()))
        if e.description:
            lines.append(f"    {e.description}")
        for m in e.measured:
            lines.append(
                f"    measured: {m['model']} on {m['dataset']}, {m['epochs']} epochs: test accuracy "
                f"{m['test_accuracy']:.2%} (target {m['target']:.1%}, {'met' if m['met'] else 'NOT met'}), "
                f"{m['wall_seconds']:,.0f} s wall-clock, {m['measured']} (bench/train_table.py)"
            )
    lines.append(
        "Without --recipe, `cnn train` picks <model>_<dataset>, <model>_<kind>, default_<dataset> or "
        "default_<kind>, the first that exists."
    )
    return "\n".join(lines)


def to_json(entries: list) -> str:
    return json.dumps([asdict(e) for e in entries], indent=2, default=str)
