"""The live model set: load what the repository holds, keep it in step, and account for each version.

`ModelManager` turns the repository (server/repository.py) into served `ModelVersion`s: each one an
onnxruntime `ModelRuntime` behind its own `DynamicBatcher`. Polling loads and warms a new version
*before* it is swapped in, so no request fails during a publish; a version that fails to load is
reported (log, metric, RepositoryIndex reason) and the serving version stays; a removed version
leaves the serving map at once and drains its queue. A changed config.yaml (batching, instances,
providers, threads, warm-up) reloads the served versions the same way: the new one is loaded and warmed
beside the old, swapped in, and the old one drains; if the reload fails the old one keeps serving.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from server import repository as repo
from server.batcher import BatchReport, DynamicBatcher
from server.errors import ModelNotFound, ModelNotReady, RepositoryError
from server.instance_process import ProcessRuntime
from server.metrics import Metrics
from server.runtime import ModelRuntime

log = logging.getLogger(__name__)


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, n: int = 1) -> None:
        self.count += n
        self.ns += int(seconds * 1e9) * n


@dataclass
class ModelStats:
    """What ModelStatistics reports for one version (Triton's semantics: per request, per batch size)."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, tuple[Duration, Duration, Duration]] = field(default_factory=dict)
    inference_count: int = 0  # rows
    execution_count: int = 0  # batches
    last_inference_ms: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class _VersionObserver:
    """Batcher -> metrics and ModelStatistics."""

    def __init__(self, name: str, version: int, stats: ModelStats, metrics: Metrics) -> None:
        self.name, self.version, self.stats, self.metrics = name, str(version), stats, metrics
        self._queue_wait = metrics.queue_wait.labels(name)
        self._depth = metrics.queue_depth.labels(name)
        self._batch = metrics.batch_size.labels(name)
        self._compute = metrics.compute_duration.labels(name, self.version)

    def on_queue_depth(self, rows: int) -> None:
        self._depth.set(rows)

    def on_reject(self, reason: str) -> None:
        self.metrics.rejected.labels(self.name, reason).inc()

    def on_batch(self, r: BatchReport) -> None:
        s = self.stats
        with s.lock:
            for w in r.queue_waits_s:
                s.queue.add(w)
            s.compute_input.add(r.compute_input_s, r.requests)
            s.compute_infer.add(r.compute_infer_s, r.requests)
            s.compute_output.add(r.compute_output_s, r.requests)
            if r.ok:
                s.execution_count += 1
                s.inference_count += r.rows
                s.last_inference_ms = int(time.time() * 1000)
                b = s.batches.setdefault(r.rows, (Duration(), Duration(), Duration()))
                b[0].add(r.compute_input_s)
                b[1].add(r.compute_infer_s)
                b[2].add(r.compute_output_s)
        for w in r.queue_waits_s:
            self._queue_wait.observe(w)
        self._batch.observe(r.rows)
        self._compute.observe(r.compute_infer_s)


def _needs_reload(served: repo.ModelConfig, new: repo.ModelConfig) -> bool:
    """A served version must be reloaded when anything but the version policy changed (the policy only
    chooses which versions serve, which sync() handles without touching the others)."""
    return dataclasses.replace(served, version_policy=new.version_policy) != new


@dataclass(frozen=True)
class RequestPlan:
    """What every request to one served version is checked against, computed once (the hot path reads it)."""

    input_name: str
    input_datatype: str
    input_ndim: int  # with the batch axis
    input_tail: tuple[int, ...]  # dims after the batch axis; -1 = free (decoded dims are >= 0, so a free dim
    # never equals it: such models take validate(), which accepts free dims)
    max_rows: int
    default_outputs: tuple  # RequestedOutput for every output (a request that names none)
    output_datatypes: dict  # output name -> datatype
    default_timeout_s: float | None  # dynamic_batching.default_timeout_ms, None if 0 or batching is off
    wire_dtype: np.dtype  # the input's numpy dtype in the wire's (little-endian) byte order
    row_bytes: int  # bytes of one input row when no dim is free, else 0 (then infer_raw declines: raw dims are unchecked)
    version: str  # the version as answers carry it


@dataclass
class ModelVersion:
    name: str
    version: int
    config: repo.ModelConfig
    runtime: ModelRuntime
    batcher: DynamicBatcher
    stats: ModelStats

    @functools.cached_property
    def plan(self) -> RequestPlan:
        from server.service import RequestedOutput  # the service's type; it imports this module

        spec, db = self.runtime.input, self.config.dynamic_batching
        fixed = all(d > 0 for d in spec.shape)
        return RequestPlan(spec.name, spec.datatype, 1 + len(spec.shape), tuple(spec.shape),
                           self.config.max_batch_size, tuple(RequestedOutput(o.name) for o in self.runtime.outputs),
                           {o.name: o.datatype for o in self.runtime.outputs},
                           db.default_timeout_ms / 1000.0 if db is not None and db.default_timeout_ms else None,
                           spec.dtype.newbyteorder("<"), math.prod(spec.shape) * spec.dtype.itemsize if fixed else 0,
                           str(self.version))

    async def retire(self) -> None:
        """Finish every queued and executing request, then release the runtime (sessions or child processes)."""
        await self.batcher.close(drain=True)
        await self.runtime.aclose()


class ModelManager:
    def __init__(self, repository: str | Path, metrics: Metrics, poll_interval_s: float = 2.0,
                 allow_model_control: bool = False) -> None:
        self.repository = Path(repository)
        self.metrics = metrics
        self.poll_interval_s = poll_interval_s
        self.allow_model_control = allow_model_control
        self.serving: dict[str, dict[int, ModelVersion]] = {}  # name -> version -> served
        self.state: dict[tuple[str, int], tuple[str, str]] = {}  # (name, version) -> (state, reason)
        self.model_errors: dict[str, str] = {}  # model-level problems (bad config), by name
        self._failed_files: dict[tuple[str, int], float] = {}  # (name, version) -> mtime that failed
        self._failed_reloads: dict[tuple[str, int], repo.ModelConfig] = {}  # (name, version) -> config that failed
        self._unloaded: set[str] = set()  # unloaded on request: the poller leaves them alone
        self._lock = asyncio.Lock()
        self._poller: asyncio.Task | None = None

    # ---------------------------------------------------------------------------------------------
    # lookups (event loop only)

    def get(self, name: str, version: str = "") -> ModelVersion:
        if not name:
            raise ModelNotFound("'model_name' is empty; name one of: " + ", ".join(sorted(self.serving)) if self.serving
                                else "'model_name' is empty and no model is loaded")
        versions = self.serving.get(name)
        if versions is None:
            known = ", ".join(sorted(self.serving)) or "none loaded"
            raise ModelNotFound(f"model_name: unknown model '{name}' (models: {known})")
        if not versions:
            raise ModelNotReady(f"model '{name}' has no ready version")
        if not version:
            return versions[max(versions)]
        # ASCII digits only: str.isdigit() also accepts '²', which int() refuses; and a bounded length
        if not (version.isascii() and version.isdigit()) or len(version) > 18:
            raise ModelNotFound(f"'model_version' must be a version number, got {version[:40]!r}")
        mv = versions.get(int(version))
        if mv is None:
            state = self.state.get((name, int(version)))
            if state and state[0] != "READY":
                raise ModelNotReady(f"model_version: model '{name}' version {version} is {state[0]}: {state[1]}")
            raise ModelNotFound(f"model_version: model '{name}' has no version {version} "
                                f"(ready: {', '.join(map(str, sorted(versions)))})")
        return mv

    def ready_models(self) -> list[str]:
        return sorted(n for n, v in self.serving.items() if v)

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
                if name in self._unloaded and only is None:
                    continue
                await self._sync_model(name)
            gone = [n for n in self.serving if n not in names and (only is None or n == only)]
            for name in gone:
                await self._unload_model(name, reason="removed from the repository")

    async def _sync_model(self, name: str) -> None:
        model_dir = self.repository / name
        self.metrics.init_model(name)  # its load-failure series exists at 0 even if the first load fails
        try:
            cfg = repo.load_model_config(model_dir)
            self.model_errors.pop(name, None)
        except RepositoryError as e:
            if self.model_errors.get(name) != str(e):
                log.error("model %s not loaded: %s", name, e)
                self.metrics.model_load_failures.labels(name).inc()
            self.model_errors[name] = str(e)
            self.serving.setdefault(name, {})
            return
        available = repo.list_versions(model_dir)
        current = self.serving.setdefault(name, {})
        for v in [v for v, mv in current.items() if _needs_reload(mv.config, cfg) and v in available]:
            await self._reload_version(name, v, cfg, current)
        policy = cfg.version_policy
        if policy.kind == "latest":
            # Newest first, skipping versions that fail to load: a broken publish never takes down the
            # version that serves now.
            wanted = []
            for v in sorted(available, reverse=True):
                if len(wanted) == policy.num_versions:
                    break
                if v in current or await self._ensure_loaded(name, v, cfg, current):
                    wanted.append(v)
        else:
            wanted = [v for v in repo.select_versions(policy, available)
                      if v in current or await self._ensure_loaded(name, v, cfg, current)]
        for v in [v for v in current if v not in wanted]:
            await self._unload_version(name, v, reason="no longer selected by the version policy or removed")
        for (n, v) in [k for k in self.state if k[0] == name and k[1] not in available]:
            self.state.pop((n, v), None)  # deleted from disk: forget its failure too
            self._failed_files.pop((n, v), None)

    async def _ensure_loaded(self, name: str, version: int, cfg: repo.ModelConfig, current: dict) -> bool:
        """Load, warm and swap in one version; False if it fails (remembered until the file changes)."""
        path = repo.model_path(self.repository, name, version)
        mtime = path.stat().st_mtime if path.exists() else 0.0
        if self._failed_files.get((name, version)) == mtime:
            return False  # failed before and unchanged: do not retry (and re-log) every poll
        mv = await self._load_version(name, version, cfg)
        if mv is None:
            self._failed_files[(name, version)] = mtime
            return False
        self._failed_files.pop((name, version), None)
        current[version] = mv  # swapped in only once warm: requests never see a cold version
        self.state[(name, version)] = ("READY", "")
        self.metrics.model_loaded.labels(name, str(version), mv.runtime.provider).set(1)
        self.metrics.preinitialise(name, str(version), queue_capacity_rows=mv.batcher.max_queue_rows)
        log.info("model %s version %d READY on %s (warm-up %.3f s)", name, version, mv.runtime.provider, mv.runtime.warmup_s)
        return True

    async def _reload_version(self, name: str, version: int, cfg: repo.ModelConfig, current: dict) -> None:
        """config.yaml changed under a served version: load it again with the new settings, then swap."""
        if self._failed_reloads.get((name, version)) == cfg:
            return  # this config already failed for this version: do not retry (and re-log) every poll
        old = current[version]
        log.info("model %s version %d: config.yaml changed, reloading", name, version)
        mv = await self._load_version(name, version, cfg)
        if mv is None:  # the old version keeps serving; the failure is logged, counted and shown in the index
            self._failed_reloads[(name, version)] = cfg
            reason = self.state[(name, version)][1]
            self.state[(name, version)] = ("READY", f"serving the previous config; reload failed: {reason}")
            return
        self._failed_reloads.pop((name, version), None)
        current[version] = mv
        self.state[(name, version)] = ("READY", "")
        if old.runtime.provider != mv.runtime.provider:
            self.metrics.model_loaded.remove(name, str(version), old.runtime.provider)
        self.metrics.model_loaded.labels(name, str(version), mv.runtime.provider).set(1)
        self.metrics.preinitialise(name, str(version), queue_capacity_rows=mv.batcher.max_queue_rows)
        log.info("model %s version %d READY with the new config on %s; draining the old one (%d queued rows)",
                 name, version, mv.runtime.provider, old.batcher.queued_rows)
        await old.retire()

    async def _load_version(self, name: str, version: int, cfg: repo.ModelConfig) -> ModelVersion | None:
        self.state[(name, version)] = ("LOADING", "")
        path = repo.model_path(self.repository, name, version)
        t0 = time.perf_counter()
        try:
            make = ProcessRuntime if cfg.instance_isolation == "process" else ModelRuntime
            runtime = await asyncio.get_running_loop().run_in_executor(None, make, path, cfg, version)
        except RepositoryError as e:
            reason = str(e)
        except Exception as e:  # anything else from a bad file is still a load failure, not a crash
            reason = f"{path}: {type(e).__name__}: {e}"
        else:
            self.metrics.model_load_duration.labels(name).observe(time.perf_counter() - t0)
            stats = ModelStats()
            db = cfg.dynamic_batching
            process = runtime.isolation == "process"
            batcher = DynamicBatcher(
                None if process else (lambda inputs, instance, rt=runtime: rt.run(inputs, instance)),
                run_batch_async=runtime.run_async if process else None,
                max_batch_size=cfg.max_batch_size,
                max_queue_delay_s=(db.max_queue_delay_us / 1e6) if db else 0.0,
                max_queue_rows=db.max_queue_size if db else max(cfg.max_batch_size * 16, 1024),
                preferred_batch_sizes=tuple(db.preferred_batch_sizes) if db else (),
                instances=cfg.instances,
                observer=_VersionObserver(name, version, stats, self.metrics),
                name=name,
                merge=db is not None,  # batching off: each request runs alone
            )
            batcher.start()
            return ModelVersion(name, version, cfg, runtime, batcher, stats)
        log.error("model %s version %d failed to load: %s", name, version, reason)
        self.metrics.model_load_failures.labels(name).inc()
        self.state[(name, version)] = ("UNAVAILABLE", reason)
        return None

    async def _unload_version(self, name: str, version: int, reason: str) -> None:
        mv = self.serving.get(name, {}).pop(version, None)
        if mv is None:
            return
        self.state[(name, version)] = ("UNLOADING", reason)
        self.metrics.model_loaded.remove(name, str(version), mv.runtime.provider)
        log.info("model %s version %d unloading (%s); draining %d queued rows", name, version, reason, mv.batcher.queued_rows)
        await mv.retire()
        self.state.pop((name, version), None)

    async def _unload_model(self, name: str, reason: str) -> None:
        for v in list(self.serving.get(name, {})):
            await self._unload_version(name, v, reason)
        self.serving.pop(name, None)
        self.model_errors.pop(name, None)

    # ---------------------------------------------------------------------------------------------
    # model control (RepositoryModelLoad / Unload; off unless allow_model_control)

    async def load(self, name: str) -> None:
        if not (self.repository / name).is_dir():
            raise ModelNotFound(f"no model '{name}' in the repository {self.repository}")
        self._unloaded.discard(name)
        await self.sync(only=name)
        if name in self.model_errors:
            raise RepositoryError(self.model_errors[name])
        if not self.serving.get(name):
            reasons = [r for (n, _), (s, r) in self.state.items() if n == name and s != "READY"]
            raise RepositoryError(f"model '{name}' failed to load: {'; '.join(reasons) or 'no version available'}")

    async def unload(self, name: str) -> None:
        if name not in self.serving:
            raise ModelNotFound(f"model '{name}' is not loaded")
        self._unloaded.add(name)
        async with self._lock:
            await self._unload_model(name, reason="unloaded on request")

    async def close(self) -> None:
        if self._poller:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        for name in list(self.serving):
            for mv in self.serving[name].values():
                await mv.retire()

    def index(self) -> list[tuple[str, str, str, str]]:
        """(name, version, state, reason) for every model and version known."""
        rows: dict[tuple[str, str], tuple[str, str]] = {}
        for (name, v), (state, reason) in self.state.items():
            rows[(name, str(v))] = (state, reason)
        for name, err in self.model_errors.items():
            rows[(name, "")] = ("UNAVAILABLE", err)
        for name in self._unloaded:
            if not any(n == name for n, _ in rows):
                rows[(name, "")] = ("UNAVAILABLE", "unloaded")
        try:
            on_disk = repo.list_models(self.repository)
        except RepositoryError:
            on_disk = []
        for name in on_disk:
            if not any(n == name for n, _ in rows):
                rows[(name, "")] = ("UNAVAILABLE", "not loaded")
        return [(n, v, s, r) for (n, v), (s, r) in sorted(rows.items())]
