"""What a new export means for serving: the default name of a quantised export, and one sentence saying which
versions of the model a server on the repository will now serve.

A quantised export (`--quantize int8|fp16`) without `--name` goes under `<model>-<dataset>-int8` (or `-fp16`),
its own model: the fp32 model keeps being served and clients choose with `--model`. Given the fp32 model's
name, it becomes that model's newest version, and with the default version policy (latest, 1) the only one
a server serves: `describe_served` says so plainly.
"""

from __future__ import annotations

import os
from pathlib import Path

from server.errors import RepositoryError
from server.repository import (
    MODEL_FILE,
    list_versions,
    load_model_config,
    select_versions,
)


def quantized_default_name(checkpoint: str | os.PathLike, quantize: str) -> str:
    """`<model>-<dataset>-<precision>` for the checkpoint (loads it: raises ExportError naming the file)."""
    from export.pipeline import default_name, load_checkpoint

    return f"{default_name(load_checkpoint(checkpoint))}-{quantize}"


def _precision(model_dir: Path, version: int) -> str:
    from export.listing import read_model_metadata

    try:
        return str(read_model_metadata(model_dir / str(version) / MODEL_FILE).extra.get("precision", "fp32"))
    except RepositoryError:
        return "unreadable"


def describe_served(repository: str | os.PathLike, name: str, version: int, precision: str) -> str:
    """'' when the model holds only this version; else which versions a server serves now, and what the
    newly published one replaced (naming precisions when they differ)."""
    model_dir = Path(repository) / name
    try:
        versions = list_versions(model_dir)
        policy = load_model_config(model_dir).version_policy
    except (RepositoryError, OSError):
        return ""
    others = [v for v in versions if v != version]
    if not others:
        return ""
    served = select_versions(policy, versions)
    rule = f"version_policy {policy.kind}" + (f" {policy.num_versions}" if policy.kind == "latest" else "")
    if version not in served:
        return f"{name} version {version} ({precision}) is published but not served ({rule} serves {served})"
    replaced = [v for v in others if v not in served]
    kept = [v for v in served if v != version]
    text = f"{name} version {version} ({precision}) is now served by a server on {repository} ({rule})"
    if replaced:
        prev = max(replaced)
        text += (
            f"; it replaces version {prev} ({_precision(model_dir, prev)}), which stays on disk but is no longer served"
        )
    if kept:
        text += f"; also served: version(s) {', '.join(map(str, kept))}"
    if precision != "fp32":
        text += f" (to keep fp32 serving, export the {precision} variant under its own --name, the default)"
    return text
