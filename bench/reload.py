"""Scenario 9: the cost of a reload under load (issue 21; Triton 8117/2076, TF Serving 881: latency spikes
and failures while a new version loads).

LeNet-5 (batching on) in a private copy of its repository, the server polling it every 0.5 s. Open-loop
Poisson load at 80 % of the maximum sustainable rate (scenario 7's, when it ran in the same `bench run`;
otherwise found here the same way). During the run:

1. publish version 2: the version folder is copied to a dot-folder and renamed into place (atomically, as
   `cnn export` does); the moment ModelReady(version 2) first answers true is the swap;
2. change config.yaml (warmup_batch_sizes [1] -> [1, 2]: the server reloads the served version with the new
   settings), written to a temporary file and renamed over the old one.

Reported: p99 of the requests scheduled in the 5 s around each swap (publish: swap +- 2.5 s; config: the
5 s from the rename, as the poll, load and warm-up follow it) against the steady p99 (requests scheduled
before the first publish), and requests not answered OK over the whole run. Targets: 0 failed; p99 around
the swap <= 3 x steady p99. Writes s9_reload.json / .md / .png (latency over time, events marked).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import yaml

from bench import models, procs, report
from bench.loadgen import model_infer_request
from bench.openloop import OpenLoopResult, OpenLoopRun
from bench.scenario_kit import finish, target_check
from bench.tail import TAIL_MODES, find_max_rate


@dataclass(frozen=True)
class ReloadMode:
    duration_s: float  # measured window (after warm-up)
    warmup_s: float
    publish_at_s: float  # seconds into the measured window
    config_at_s: float
    poll_interval_s: float


RELOAD_MODES = {
    "full": ReloadMode(40.0, 2.0, 12.0, 26.0, 0.5),
    "quick": ReloadMode(20.0, 1.0, 6.0, 13.0, 0.5),
    "smoke": ReloadMode(5.0, 0.2, 1.0, 4.0, 0.2),
}
AROUND_S = 5.0


def publish_version(model_dir: Path, src_version: int, new_version: int) -> float:
    """Copy version `src_version` to a dot-folder, rename it to `new_version`; returns the rename's time."""
    tmp = model_dir / f".tmp-{new_version}-{os.getpid()}"
    shutil.copytree(model_dir / str(src_version), tmp)
    t = time.monotonic()
    os.rename(tmp, model_dir / str(new_version))
    return t


def rewrite_config(model_dir: Path, **changes) -> float:
    """config.yaml with `changes`, written to a temporary file and renamed over; returns the rename's time."""
    path = model_dir / "config.yaml"
    cfg = yaml.safe_load(path.read_text()) or {}
    cfg.update(changes)
    tmp = model_dir / ".config.yaml.tmp"
    tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
    t = time.monotonic()
    os.replace(tmp, path)
    return t


def wait_version_ready(address: str, model: str, version: int, timeout_s: float = 60.0) -> float | None:
    """Poll ModelReady(version) every 20 ms; the first time it answers true, or None."""
    import grpc

    from protos.inference import grpc_service_pb2 as pb

    ch, stub = procs.stub(address)
    try:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            try:
                if stub.ModelReady(pb.ModelReadyRequest(name=model, version=str(version)), timeout=2).ready:
                    return time.monotonic()
            except grpc.RpcError:
                pass
            time.sleep(0.02)
        return None
    finally:
        ch.close()


def window_stats(r: OpenLoopResult, start_s: float, end_s: float) -> dict:
    """p50/p99/p99.9 and outcomes of the requests scheduled in [start_s, end_s) (seconds from t0)."""
    m = r.window_mask(start_s, end_s)
    h = r.histogram(m)
    return {
        "from_s": round(start_s, 3),
        "to_s": round(end_s, 3),
        "scheduled": int(m.sum()),
        "failed": int(m.sum()) - h.count,
        "outcomes": r.outcomes(m),
        **h.summary(),
    }


def _plot(r: OpenLoopResult, events: dict[str, float], windows: dict[str, dict], path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.8), dpi=110)
    ok = r.code == 0
    ax.plot(r.sched[ok], r.latency[ok] * 1e3, ".", ms=1.5, alpha=0.35, color="C0", label="each request (OK)")
    bad = (~ok) & (r.sched >= r.warmup_s)
    if bad.any():
        ax.plot(r.sched[bad], np.full(bad.sum(), 1.0), "x", color="C3", label="not OK")
    edges = np.arange(r.warmup_s, r.warmup_s + r.duration_s + 1e-9, 0.5)
    p99 = [r.histogram(r.window_mask(a, b)).percentile_ms(99) for a, b in zip(edges[:-1], edges[1:])]
    ax.step(edges[:-1], p99, where="post", color="C1", label="p99 per 0.5 s")
    for i, (name, t) in enumerate(events.items()):
        ax.axvline(t, color=f"C{i + 2}", ls="--", label=name)
    for name, w in windows.items():
        ax.axvspan(w["from_s"], w["to_s"], alpha=0.08, color="C2" if "publish" in name else "C4")
    ax.set_xlim(0, r.warmup_s + r.duration_s)
    ax.set_yscale("log")
    ax.set_xlabel("scheduled send time, s")
    ax.set_ylabel("latency, ms (log)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def s9_reload(ctx) -> dict:
    from bench.env import markdown as env_markdown

    rm = RELOAD_MODES[ctx.mode.name]
    tm = TAIL_MODES[ctx.mode.name]
    repo = ctx.out / "repos" / "s9-reload"
    if repo.exists():
        shutil.rmtree(repo)
    shutil.copytree(ctx.lenet_repo, repo)
    name = models.model_name(repo)
    mdir = models.model_dir(repo)
    src = int(models.latest_version_dir(repo).name)
    new = src + 1
    payload = model_infer_request(name, 1)
    processes = ctx.processes or 1
    s7 = ctx.results.get("s7_open_loop")
    server = None
    try:
        server = procs.start_server(
            repo, ctx.logs, server_root=ctx.server_root, name="s9", args=("--poll-interval-s", str(rm.poll_interval_s))
        )
        if s7 and s7["configs"] and s7["configs"][0]["max_rps"] > 0:
            max_rps, probes, source = s7["configs"][0]["max_rps"], [], "scenario 7 of this run"
        else:
            max_rps, probes = find_max_rate(server.address, payload, tm, processes=processes, log=ctx.log, tag="s9")
            source = "searched here (scenario 7 did not run)"
        if max_rps <= 0:
            raise RuntimeError(f"no sustainable rate found for {name}: {probes[-1] if probes else ''}")
        rate = 0.8 * max_rps
        ctx.log(
            f"  s9: {rate:.0f}/s (80 % of {max_rps:.0f}/s, {source}); publish at {rm.publish_at_s:g} s, "
            f"config change at {rm.config_at_s:g} s of {rm.duration_s:g} s"
        )
        run = OpenLoopRun(
            server.address, payload, rate, duration_s=rm.duration_s, warmup_s=rm.warmup_s, processes=processes, seed=7
        )
        t0 = run.start()
        time.sleep(max(0.0, t0 + rm.warmup_s + rm.publish_at_s - time.monotonic()))
        t_pub = publish_version(mdir, src, new)
        t_ready = wait_version_ready(server.address, name, new, timeout_s=rm.config_at_s - rm.publish_at_s)
        time.sleep(max(0.0, t0 + rm.warmup_s + rm.config_at_s - time.monotonic()))
        t_cfg = rewrite_config(mdir, warmup_batch_sizes=[1, 2])
        result = run.wait()
        rss = server.rss_bytes()
    finally:
        if server is not None:
            server.stop()
    rel = lambda t: t - result.t0  # noqa: E731 - seconds on the schedule's clock
    events = {"version published (rename)": rel(t_pub), "config.yaml replaced": rel(t_cfg)}
    if t_ready is not None:
        events["new version READY (swap)"] = rel(t_ready)
    swap = rel(t_ready) if t_ready is not None else rel(t_pub) + AROUND_S / 2
    windows = {
        "steady (before the publish)": window_stats(result, rm.warmup_s, rel(t_pub)),
        "5 s around the version swap": window_stats(result, swap - AROUND_S / 2, swap + AROUND_S / 2),
        "5 s from the config change": window_stats(result, rel(t_cfg), rel(t_cfg) + AROUND_S),
        "whole run": window_stats(result, rm.warmup_s, rm.warmup_s + rm.duration_s),
    }
    steady = windows["steady (before the publish)"]["p99_ms"] or float("nan")
    whole = windows["whole run"]
    targets = [
        target_check(
            f"{name} at {rate:.0f}/s: requests not answered OK over the run ({whole['scheduled']:,} scheduled, "
            f"a publish and a config change)",
            float(whole["failed"]),
            0.0,
            higher_is_better=False,
            fmt="{:.0f}",
        )
    ]
    for key in ("5 s around the version swap", "5 s from the config change"):
        w = windows[key]
        targets.append(
            target_check(
                f"p99 in the {key} / steady p99 ({w['p99_ms']} / {steady} ms)",
                (w["p99_ms"] or float("nan")) / steady,
                3.0,
                higher_is_better=False,
                unit="x",
                fmt="{:.2f}",
            )
        )
    png = ctx.out / "s9_reload.png"
    _plot(
        result,
        events,
        {k: v for k, v in windows.items() if "5 s" in k},
        png,
        f"S9 {name}: open-loop {rate:.0f}/s during a version publish and a config.yaml change",
    )
    load = os.getloadavg()
    rows = [
        {"window": k, **v, "outcomes": ", ".join(f"{c} {n}" for c, n in v["outcomes"].items())}
        for k, v in windows.items()
    ]
    md = (
        f"# Scenario 9: the cost of a reload under open-loop load ({name})\n\n"
        f"Open-loop Poisson load at {rate:.0f} requests/s (80 % of the maximum sustainable {max_rps:.0f}/s, {source}), "
        f"{rm.warmup_s:g} s warm-up then {rm.duration_s:g} s measured; the server polls the repository every "
        f"{rm.poll_interval_s:g} s. At {rm.publish_at_s:g} s version {new} is published (copy to a dot-folder, "
        f"rename); at {rm.config_at_s:g} s config.yaml is replaced (warmup_batch_sizes [1] -> [1, 2]). "
        f"Version {new} READY (ModelReady polled every 20 ms): "
        + (f"{rel(t_ready) - rel(t_pub):.2f} s after the rename." if t_ready is not None else "**never seen**.")
        + f" Mode `{ctx.mode.name}`; load average at the end {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} (a shared "
        f"machine).\n\n{env_markdown(ctx.env)}\n\n"
        + report.table(
            rows,
            [
                ("window", "requests scheduled in"),
                ("from_s", "from s"),
                ("to_s", "to s"),
                ("scheduled", "scheduled"),
                ("failed", "not OK"),
                ("p50_ms", "p50 ms"),
                ("p99_ms", "p99 ms"),
                ("p99.9_ms", "p99.9 ms"),
                ("max_ms", "max ms"),
                ("outcomes", "outcomes"),
            ],
        )
        + "\n\n## Targets\n\n"
        + report.targets_table(targets)
        + "\n\n![latency over time](s9_reload.png)\n"
    )
    return finish(
        ctx,
        "s9_reload",
        {
            "scenario": 9,
            "title": "reload under load",
            "model": name,
            "rate": rate,
            "max_rps": max_rps,
            "max_rps_source": source,
            "probes": probes,
            "reload_mode": asdict(rm),
            "events_s": events,
            "windows": windows,
            "version_ready_after_s": (t_ready - t_pub) if t_ready is not None else None,
            "summary": result.summary(),
            "targets": targets,
            "rss_bytes": rss,
            "loadavg_at_end": list(load),
        },
        md,
    )
