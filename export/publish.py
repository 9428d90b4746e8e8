"""Publish a verified model as the next version of `<repo>/<name>/`, atomically.

Everything is written into a dot-prefixed temp folder inside `<repo>/<name>/` (same file system, and
the server's poller skips dot folders); when the gate has passed, one `os.rename` makes it
`<repo>/<name>/<N>/`. A reader sees either no version N or a complete one. If the export fails at any
point the temp folder is removed and nothing is published.

A new model folder appears with its config.yaml already in it (built as a dot folder at the
repository level, then renamed), so a polling server never sees a model folder without a config
(which it would report as a load failure) while the first export runs. If that first export fails,
the folder is removed again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from export.errors import ExportError
from server.errors import RepositoryError
from server.repository import (
    CONFIG_FILE,
    DynamicBatching,
    ModelConfig,
    load_model_config,
    next_version,
    write_model_config,
)

STAGING_PREFIX = ".staging-"


def sanitize_name(text: str) -> str:
    """A model-folder name from free text: `lenet5-digits`, `resnet20-folder-pets` ..."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-._")
    name = re.sub(r"-{2,}", "-", name)[:128]
    return name or "model"


def validate_name(name: str) -> str:
    try:
        ModelConfig(name=name).validate(where="--name")
    except RepositoryError as e:
        raise ExportError(str(e)) from None
    return name


@contextlib.contextmanager
def staging(model_dir: str | os.PathLike) -> Iterator[Path]:
    """A fresh dot-prefixed folder inside model_dir; removed on exit unless it was published."""
    model_dir = Path(model_dir)
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"{model_dir}: cannot create the model folder: {e.strerror or e}") from None
    tmp = Path(tempfile.mkdtemp(dir=model_dir, prefix=STAGING_PREFIX))
    os.chmod(tmp, 0o755)  # mkdtemp makes it 0700: a server running as another user must read it
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def prepare_model_dir(repository: str | os.PathLike, name: str, max_batch_size: int) -> tuple[Path, Path, bool, str]:
    """`<repository>/<name>/` with a config.yaml in it. Returns (model_dir, config path, created, warning);
    `created` means this call made the folder (and its config)."""
    repository = Path(repository)
    model_dir = repository / name
    if not model_dir.exists():
        try:
            repository.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=repository, prefix=f".new-{name}-"))
            os.chmod(tmp, 0o755)
        except OSError as e:
            raise ExportError(f"{repository}: cannot create the model repository: {e.strerror or e}") from None
        try:
            ensure_config(tmp, name, max_batch_size)
            os.rename(tmp, model_dir)
            return model_dir, model_dir / CONFIG_FILE, True, ""
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):  # else: a concurrent export created it first
                raise ExportError(f"{model_dir}: cannot create the model folder: {e.strerror or e}") from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    if not model_dir.is_dir():
        raise ExportError(f"{model_dir}: exists and is not a folder")
    path, created, warning = ensure_config(model_dir, name, max_batch_size)
    return model_dir, path, created, warning


def remove_if_unused(model_dir: str | os.PathLike) -> None:
    """Undo prepare_model_dir after a failed first export: only a folder holding nothing but its config."""
    model_dir = Path(model_dir)
    with contextlib.suppress(OSError):
        if [p.name for p in model_dir.iterdir()] == [CONFIG_FILE]:
            (model_dir / CONFIG_FILE).unlink()
            model_dir.rmdir()


def ensure_config(model_dir: str | os.PathLike, name: str, max_batch_size: int) -> tuple[Path, bool, str]:
    """Write config.yaml unless the folder has one (an existing config is the operator's: kept as is).

    Returns (path, created, warning). The warning is non-empty if a kept config is invalid or
    disagrees with the requested max batch size."""
    model_dir = Path(model_dir)
    path = model_dir / CONFIG_FILE
    if path.exists() or path.is_symlink():
        try:
            cfg = load_model_config(model_dir)
        except RepositoryError as e:
            return path, False, f"kept the existing config, but the server will refuse it: {e}"
        if cfg.max_batch_size != max_batch_size:
            return (
                path,
                False,
                f"kept the existing {path} (max_batch_size={cfg.max_batch_size}); edit it to use {max_batch_size}",
            )
        return path, False, ""
    # No preferred batch sizes: with max_queue_delay_us 0 a batch takes what has arrived, and a preferred size
    # would cut it short (LeNet-5 at concurrency 64: batches of 8 instead of ~20, docs/benchmarks.md).
    cfg = ModelConfig(
        name=name,
        max_batch_size=max_batch_size,
        dynamic_batching=DynamicBatching(),
        warmup_batch_sizes=sorted({1, max_batch_size}),
    )
    try:
        return write_model_config(model_dir, cfg), True, ""
    except RepositoryError as e:
        raise ExportError(str(e)) from None


def publish(staged: str | os.PathLike, model_dir: str | os.PathLike, attempts: int = 20) -> tuple[int, Path]:
    """Rename the staged folder to the next free version number. Returns (version, folder)."""
    staged, model_dir = Path(staged), Path(model_dir)
    for _ in range(attempts):
        version = next_version(model_dir)
        target = model_dir / str(version)
        if target.exists():  # someone took it between next_version and here
            continue
        try:
            os.rename(staged, target)
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):  # lost a race with a concurrent export
                continue
            raise ExportError(f"{target}: cannot publish: {e.strerror or e}") from None
        _fsync_dir(model_dir)
        return version, target
    raise ExportError(f"{model_dir}: could not claim a version number after {attempts} attempts")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
