"""The models the scenarios serve: LeNet-5 (tiny, overhead-bound) and ResNet-20 (compute-bound).

Accuracy does not matter for speed, so a missing model is trained for one epoch on the bundled digits
and exported with the project's own `cnn train` / `cnn export` (once; cached under runs/bench/models).
`--lenet-repo` / `--resnet-repo` point the bench at existing repositories instead.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = ROOT / "runs" / "bench" / "models"
SPECS = {"lenet5": "lenet5-digits", "resnet20": "resnet20-digits", "vgg11": "vgg11-digits"}


def model_name(repo: Path) -> str:
    """The one model a repository holds (the first by name if several)."""
    names = sorted(p.name for p in Path(repo).iterdir() if (p / "config.yaml").is_file())
    if not names:
        raise RuntimeError(f"{repo}: no model (no */config.yaml) in this repository")
    return names[0]


def model_dir(repo: Path) -> Path:
    return Path(repo) / model_name(repo)


def latest_version_dir(repo: Path) -> Path:
    d = model_dir(repo)
    versions = sorted(int(p.name) for p in d.iterdir() if p.name.isdigit() and (p / "model.onnx").is_file())
    if not versions:
        raise RuntimeError(f"{d}: no version folder with model.onnx")
    return d / str(versions[-1])


def ensure(kind: str, given: Path | None = None, cache: Path = DEFAULT_CACHE, log=print) -> Path:
    """A repository serving `kind` ('lenet5' or 'resnet20'): `given`, the cache, or trained + exported now."""
    if given is not None:
        model_name(Path(given))  # fail early with a clear message
        return Path(given).resolve()  # servers run with the server tree as working directory
    repo = cache / f"repo-{kind}"
    if repo.is_dir() and any(repo.glob("*/1/model.onnx")):
        return repo
    run = cache / f"run-{kind}"
    log(f"bench: preparing {kind}: training 1 epoch and exporting (once; cached in {cache})")
    for args in (
        [
            "train",
            "--model",
            kind,
            "--data",
            "digits",
            "--epochs",
            "1",
            "--seed",
            "0",
            "--out",
            str(run),
            "--overwrite",
        ],
        ["export", str(run / "best.pt"), "--repository", str(repo), "--name", SPECS[kind]],
    ):
        p = subprocess.run([sys.executable, "-m", "client.cli", *args], cwd=ROOT, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"cnn {' '.join(args)} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return repo


def variant(repo: Path, dest: Path, **overrides) -> Path:
    """A copy of `repo` with config.yaml keys replaced (e.g. dynamic_batching=None)."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(repo, dest)
    cfg_path = model_dir(dest) / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text()) or {}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest


def config_of(repo: Path) -> dict:
    return yaml.safe_load((model_dir(repo) / "config.yaml").read_text()) or {}
