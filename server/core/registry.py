"""The live model set: one record per model and per (model, version), kept in step with the repository.

`ModelRegistry` turns the repository (server/repository.py) into served versions. Each model has a
`ModelRecord` (its config error, whether it was unloaded on request) holding one `VersionRecord` per
version it knows: the config, the file and its mtime, the lifecycle state (Triton's names: LOADING,
READY, UNLOADING, UNAVAILABLE) and why, the `ServedVersion` requests use (runtime + batcher + plan),
and its statistics. A record exists while its version is loading, served, or failed and still on disk.

Polling loads and warms a new version *before* it is swapped in, so no request fails during a publish;
a version that fails to load is reported (log, metric, RepositoryIndex reason), not retried until its
file changes, and the serving version stays; a removed version stops serving at once and drains its
queue. A changed config.yaml (batching, instances, providers, threads, warm-up) reloads the served
versions the same way: the new one loads beside the old, is swapped in, and the old one drains; if the
reload fails the old one keeps serving (READY, with the failure as its reason).

Only the core (server/core/service.py) uses this module; protocol adapters never do.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from server import repository as repo
from server.core.batcher import DynamicBatcher
from server.core.explain import CamHead, CamRunner, open_with_cam
from server.core.stats import BatchStatsObserver, VersionStats
from server.core.types import LOADING, READY, UNAVAILABLE, UNLOADING, IndexEntry, RequestedOutput
from server.errors import ModelNotFound, ModelNotReady, RepositoryError
from server.metrics import Metrics
from server.names import check_model_name
from server.onnx_guard import check_paths
from server.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RequestPlan:
    """What every request to one served version is checked against, computed once (the hot path reads it)."""

    input_name: str
    input_datatype: str
    input_ndim: int  # with the batch axis
    input_tail: tuple[int, ...]  # dims after the batch axis; -1 = free (decoded dims are >= 0, so a free dim
    # never equals it: such models take the full validation, which accepts free dims)
    max_rows: int
    default_outputs: tuple[RequestedOutput, ...]  # every output (a request that names none)
    output_datatypes: dict[str, str]  # output name -> datatype
    default_timeout_s: float | None  # dynamic_batching.default_timeout_ms, None if 0 or batching is off
    wire_dtype: np.dtype  # the input's numpy dtype in the wire's (little-endian) byte order
    row_bytes: int  # bytes of one input row when no dim is free, else 0 (raw requests then take the full path)
    version: str  # the version as answers carry it


@dataclass
class ServedVersion:
    """A loaded, warm version as requests use it."""

    name: str
    version: int
    config: repo.ModelConfig
    runtime: Runtime
    batcher: DynamicBatcher
    stats: VersionStats
    cam: CamRunner | None = None  # the CAM graph (explain.onnx) of a model explained by "cam"; Explain uses it

    @functools.cached_property
    def plan(self) -> RequestPlan:
        spec, db = self.runtime.input, self.config.dynamic_batching
        fixed = all(d > 0 for d in spec.shape)
        return RequestPlan(
            spec.name,
            spec.datatype,
            1 + len(spec.shape),
            tuple(spec.shape),
            self.config.max_batch_size,
            tuple(RequestedOutput(o.name) for o in self.runtime.outputs),
            {o.name: o.datatype for o in self.runtime.outputs},
            db.default_timeout_ms / 1000.0 if db is not None and db.default_timeout_ms else None,
            spec.dtype.newbyteorder("<"),
            math.prod(spec.shape) * spec.dtype.itemsize if fixed else 0,
            str(self.version),
        )

    async def retire(self) -> None:
        """Finish every queued and executing request, then release the runtime (sessions or child processes)."""
        await self.batcher.close(drain=True)
        await self.runtime.aclose()
        if self.cam is not None:
            await self.cam.close()


@dataclass
class VersionRecord:
    """One (model, version): the single place its state lives."""

    name: str
    version: int
    path: Path
    state: str = LOADING
    reason: str = ""
    served: ServedVersion | None = None  # what requests use; kept while a reload loads its successor
    stats: VersionStats = field(default_factory=VersionStats)
    failed_mtime: float | None = None  # the file's mtime when its load failed: not retried until it changes
    failed_config: repo.ModelConfig | None = None  # a config whose reload failed: not retried until it changes


@dataclass
class ModelRecord:
    name: str
    config_error: str = ""  # config.yaml cannot be read: the model serves nothing
    unloaded: bool = False  # unloaded on request: absent for requests; the poller leaves it alone
    versions: dict[int, VersionRecord] = field(default_factory=dict)
    # derived from `versions` by _refresh(): the served versions by number and the newest (the hot path)
    ready: dict[int, ServedVersion] = field(default_factory=dict)
    latest: ServedVersion | None = None

    def _refresh(self) -> None:
        self.ready = {v: r.served for v, r in sorted(self.versions.items()) if r.served is not None}
        self.latest = self.ready[max(self.ready)] if self.ready else None


def _needs_reload(served: repo.ModelConfig, new: repo.ModelConfig) -> bool:
    """A served version must be reloaded when anything but the version policy changed (the policy only
    chooses which versions serve, which sync() handles without touching the others)."""
    return dataclasses.replace(served, version_policy=new.version_policy) != new


def _open_contained(
    repository: Path, path: Path, cfg: repo.ModelConfig, version: int
) -> tuple[Runtime, tuple[Runtime, CamHead] | None]:
    """open_with_cam, once the version folder and model file are known to resolve inside the repository
    (a symlink out of it is refused; the runtime checks every external-data location itself)."""
    check_paths(repository, path)
    return open_with_cam(path, cfg, version)


class ModelRegistry:
    def __init__(self, repository: str | Path, metrics: Metrics, poll_interval_s: float = 2.0) -> None:
        self.repository = Path(repository)
        self.metrics = metrics
        self.poll_interval_s = poll_interval_s
        self._models: dict[str, ModelRecord] = {}
        self._lock = asyncio.Lock()
        self._poller: asyncio.Task | None = None

    # ---------------------------------------------------------------------------------------------
    # lookups (event loop only)

    def _known(self) -> list[str]:
        return sorted(n for n, m in self._models.items() if not m.unloaded)

    def is_known(self, name: str) -> bool:
        """A model the server knows (served or failed), not unloaded: metric labels may name it."""
        m = self._models.get(name)
        return m is not None and not m.unloaded

    def get(self, name: str, version: str = "") -> ServedVersion:
        """The served version that answers a request for (`name`, `version`; "" = the newest)."""
        m = self._models.get(name)
        if m is not None and not m.unloaded:
            if not version and m.latest is not None:
                return m.latest
        elif not name:
            known = self._known()
            raise ModelNotFound(
                "'model_name' is empty; name one of: " + ", ".join(known)
                if known
                else "'model_name' is empty and no model is loaded"
            )
        else:
            raise ModelNotFound(
                f"model_name: unknown model '{name}' (models: {', '.join(self._known()) or 'none loaded'})"
            )
        if not m.ready:
            raise ModelNotReady(f"model '{name}' has no ready version")
        # ASCII digits only: str.isdigit() also accepts '²', which int() refuses; and a bounded length
        if not (version.isascii() and version.isdigit()) or len(version) > 18:
            raise ModelNotFound(f"'model_version' must be a version number, got {version[:40]!r}")
        served = m.ready.get(int(version))
        if served is None:
            rec = m.versions.get(int(version))
            if rec is not None and rec.state != READY:
                raise ModelNotReady(f"model_version: model '{name}' version {version} is {rec.state}: {rec.reason}")
            raise ModelNotFound(
                f"model_version: model '{name}' has no version {version} (ready: {', '.join(map(str, m.ready))})"
            )
        return served

    def ready_models(self) -> list[str]:
        return sorted(n for n, m in self._models.items() if m.ready and not m.unloaded)

    def served_versions(self, name: str) -> list[ServedVersion]:
        """Every served version of `name`, oldest first ([] for an unknown or unloaded model)."""
        m = self._models.get(name)
        return [] if m is None or m.unloaded else list(m.ready.values())

    def served(self) -> dict[str, list[ServedVersion]]:
        """{model: served versions, oldest first} for every known model (a model with none maps to [])."""
        return {n: list(self._models[n].ready.values()) for n in self._known()}

    def index(self) -> list[IndexEntry]:
        """Every model and version known, with its state and reason (RepositoryIndex)."""
        rows: dict[tuple[str, str], tuple[str, str]] = {}
        for name, m in self._models.items():
            for v, r in m.versions.items():
                rows[(name, str(v))] = (r.state, r.reason)
            if m.config_error:
                rows[(name, "")] = (UNAVAILABLE, m.config_error)
            elif m.unloaded and not m.versions:
                rows[(name, "")] = (UNAVAILABLE, "unloaded")
        try:
            on_disk = repo.list_models(self.repository)
        except RepositoryError:
            on_disk = []
        for name in on_disk:
            if not any(n == name for n, _ in rows):
                rows[(name, "")] = (UNAVAILABLE, "not loaded")
        return [IndexEntry(n, v, s, r) for (n, v), (s, r) in sorted(rows.items())]

    # ---------------------------------------------------------------------------------------------
    # loading

    async def start(self) -> None:
        await self.sync()
        if self.poll_interval_s > 0:
            self._poller = asyncio.get_running_loop().create_task(self._poll_forever(), name="repository-poller")

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                await self.sync()
            except Exception:  # the poller must survive anything the filesystem throws at it
                log.exception("repository poll failed")

    async def sync(self, only: str | None = None) -> None:
        """Bring the served set in line with the repository (all models, or `only`)."""
        async with self._lock:
            try:
                names = repo.list_models(self.repository)
            except RepositoryError as e:
                log.error("%s", e)
                return
            if only is not None:
                names = [only] if only in names else []
            for name in names:
                m = self._models.get(name)
                if m is not None and m.unloaded and only is None:
                    continue
                await self._sync_model(name)
            gone = [
                n for n, m in self._models.items() if n not in names and not m.unloaded and (only is None or n == only)
            ]
            for name in gone:
                await self._unload_model(name, reason="removed from the repository")
                self._models.pop(name, None)

    async def _sync_model(self, name: str) -> None:
        model_dir = self.repository / name
        self.metrics.init_model(name)  # its load-failure series exists at 0 even if the first load fails
        m = self._models.setdefault(name, ModelRecord(name))
        m.unloaded = False
        try:
            cfg = await asyncio.to_thread(repo.load_model_config, model_dir)  # off the loop: parsing takes time
            m.config_error = ""
        except RepositoryError as e:
            if m.config_error != str(e):
                log.error("model %s not loaded: %s", name, e)
                self.metrics.model_load_failures.labels(name).inc()
            m.config_error = str(e)
            return
        available = repo.list_versions(model_dir)
        for v in [v for v, s in m.ready.items() if _needs_reload(s.config, cfg) and v in available]:
            await self._reload_version(m, v, cfg)
        policy = cfg.version_policy
        if policy.kind == "latest":
            # Newest first, skipping versions that fail to load: a broken publish never takes down the
            # version that serves now.
            wanted: list[int] = []
            for v in sorted(available, reverse=True):
                if len(wanted) == policy.num_versions:
                    break
                if v in m.ready or await self._ensure_loaded(m, v, cfg):
                    wanted.append(v)
        else:
            wanted = [
                v
                for v in repo.select_versions(policy, available)
                if v in m.ready or await self._ensure_loaded(m, v, cfg)
            ]
        for v in [v for v in m.ready if v not in wanted]:
            await self._unload_version(m, v, reason="no longer selected by the version policy or removed")
        for v in [v for v in m.versions if v not in available]:
            m.versions.pop(v)  # deleted from disk: forget its failure too
        m._refresh()

    async def _ensure_loaded(self, m: ModelRecord, version: int, cfg: repo.ModelConfig) -> bool:
        """Load, warm and swap in one version; False if it fails (remembered until the file changes)."""
        path = repo.model_path(self.repository, m.name, version)
        mtime = path.stat().st_mtime if path.exists() else 0.0
        rec = m.versions.get(version)
        if rec is not None and rec.failed_mtime == mtime:
            return False  # failed before and unchanged: do not retry (and re-log) every poll
        rec = m.versions[version] = VersionRecord(m.name, version, path)
        served = await self._load_version(rec, cfg)
        if served is None:
            rec.failed_mtime = mtime
            return False
        rec.served, rec.state, rec.reason = served, READY, ""  # swapped in only once warm: never a cold version
        m._refresh()
        self.metrics.model_loaded.labels(m.name, str(version), served.runtime.provider).set(1)
        self.metrics.preinitialise(m.name, str(version), queue_capacity_rows=served.batcher.max_queue_rows)
        self._init_predictions(m, served)
        log.info(
            "model %s version %d READY on %s (warm-up %.3f s)",
            m.name,
            version,
            served.runtime.provider,
            served.runtime.warmup_s,
        )
        return True

    async def _reload_version(self, m: ModelRecord, version: int, cfg: repo.ModelConfig) -> None:
        """config.yaml changed under a served version: load it again with the new settings, then swap."""
        rec = m.versions[version]
        if rec.failed_config == cfg:
            return  # this config already failed for this version: do not retry (and re-log) every poll
        old = rec.served
        assert old is not None
        log.info("model %s version %d: config.yaml changed, reloading", m.name, version)
        served = await self._load_version(rec, cfg)
        if served is None:  # the old version keeps serving; the failure is logged, counted and shown in the index
            rec.failed_config = cfg
            rec.state, rec.reason = READY, f"serving the previous config; reload failed: {rec.reason}"
            return
        rec.failed_config = None
        rec.served, rec.state, rec.reason = served, READY, ""
        m._refresh()
        if old.runtime.provider != served.runtime.provider:
            self.metrics.model_loaded.remove(m.name, str(version), old.runtime.provider)
        self.metrics.model_loaded.labels(m.name, str(version), served.runtime.provider).set(1)
        self.metrics.preinitialise(m.name, str(version), queue_capacity_rows=served.batcher.max_queue_rows)
        self._init_predictions(m, served)
        log.info(
            "model %s version %d READY with the new config on %s; draining the old one (%d queued rows)",
            m.name,
            version,
            served.runtime.provider,
            old.batcher.queued_rows,
        )
        await old.retire()

    def _init_predictions(self, m: ModelRecord, served: ServedVersion) -> None:
        """The model's prediction series follow its newest served version (labels and test-split reference)."""
        newest = max((r.version for r in m.versions.values() if r.served), default=0)
        if served.version >= newest:
            md = served.runtime.metadata
            self.metrics.init_predictions(
                served.name, md.labels, [o.name for o in served.runtime.outputs], md.reference, str(served.version)
            )

    async def _load_version(self, rec: VersionRecord, cfg: repo.ModelConfig) -> ServedVersion | None:
        """LOADING -> a warm ServedVersion (not yet swapped in), or None with the record UNAVAILABLE and why."""
        name, version = rec.name, rec.version
        rec.state, rec.reason = LOADING, ""
        t0 = time.perf_counter()
        try:
            runtime, cam = await asyncio.get_running_loop().run_in_executor(
                None, _open_contained, self.repository, rec.path, cfg, version
            )
        except RepositoryError as e:
            reason = str(e)
        except Exception as e:  # anything else from a bad file is still a load failure, not a crash
            reason = f"{rec.path}: {type(e).__name__}: {e}"
        else:
            self.metrics.model_load_duration.labels(name).observe(time.perf_counter() - t0)
            db = cfg.dynamic_batching

            def make_batcher(rt: Runtime, label: str) -> DynamicBatcher:
                b = DynamicBatcher(
                    rt,
                    max_batch_size=cfg.max_batch_size,
                    max_queue_delay_s=(db.max_queue_delay_us / 1e6) if db else 0.0,
                    max_queue_rows=db.max_queue_size if db else max(cfg.max_batch_size * 16, 1024),
                    preferred_batch_sizes=tuple(db.preferred_batch_sizes) if db else (),
                    observer=BatchStatsObserver(name, version, rec.stats, self.metrics),
                    name=label,
                    merge=db is not None,  # batching off: each request runs alone
                )
                b.start()
                return b

            batcher = make_batcher(runtime, name)
            explainer = None if cam is None else CamRunner(cam[0], make_batcher(cam[0], f"{name}-cam"), cam[1])
            return ServedVersion(name, version, cfg, runtime, batcher, rec.stats, explainer)
        log.error("model %s version %d failed to load: %s", name, version, reason)
        self.metrics.model_load_failures.labels(name).inc()
        rec.state, rec.reason = UNAVAILABLE, reason
        return None

    async def _unload_version(self, m: ModelRecord, version: int, reason: str) -> None:
        rec = m.versions.get(version)
        if rec is None or rec.served is None:
            return
        served, rec.served = rec.served, None
        m._refresh()  # requests stop reaching it at once
        rec.state, rec.reason = UNLOADING, reason
        self.metrics.model_loaded.remove(m.name, str(version), served.runtime.provider)
        log.info(
            "model %s version %d unloading (%s); draining %d queued rows",
            m.name,
            version,
            reason,
            served.batcher.queued_rows,
        )
        await served.retire()
        if m.versions.get(version) is rec:
            m.versions.pop(version)

    async def _unload_model(self, name: str, reason: str) -> None:
        m = self._models[name]
        for v in list(m.ready):
            await self._unload_version(m, v, reason)
        m.config_error = ""

    # ---------------------------------------------------------------------------------------------
    # model control (RepositoryModelLoad / Unload)

    async def load(self, name: str) -> None:
        check_model_name(name)  # before any file access: a name, never a path
        if not (self.repository / name).is_dir():
            raise ModelNotFound(f"no model '{name}' in the repository {self.repository}")
        await self.sync(only=name)
        m = self._models.get(name)
        if m is not None and m.config_error:
            raise RepositoryError(m.config_error)
        if m is None or not m.ready:
            reasons = [r.reason for r in (m.versions.values() if m else ()) if r.state != READY]
            raise RepositoryError(f"model '{name}' failed to load: {'; '.join(reasons) or 'no version available'}")

    async def unload(self, name: str) -> None:
        check_model_name(name)
        if not self.is_known(name):
            raise ModelNotFound(f"model '{name}' is not loaded")
        self._models[name].unloaded = True
        async with self._lock:
            await self._unload_model(name, reason="unloaded on request")

    async def close(self) -> None:
        if self._poller:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        for m in self._models.values():
            for served in m.ready.values():
                await served.retire()
