"""Scenario 7: tail latency under open-loop load (issue 21).

For LeNet-5 and ResNet-20, with dynamic batching on (the exported config) and off (`dynamic_batching:
null`), one server each:

1. find the maximum sustainable rate: open-loop Poisson probes, doubling from `start_rps` until a probe is
   not sustainable (or halving until one is, if the first is not), then bisecting between the last good and
   the first bad rate. A probe is sustainable
   when every request scheduled in its window was answered OK, the answers kept up with the offered rate
   (completed/s >= 95 % of the offered requests/s actually drawn), and p99 <= `p99_limit_ms`; the rate found
   must then hold a long probe (`confirm_s`, a minute in full mode: long enough to meet one of the host's slow
   stretches, bench/host_speed.py), or is lowered by 10 % until one does;
2. measure p50 / p99 / p99.9 (and the generator's send lag) at 10, 50, 80 and 95 % of that rate.

Targets (LeNet-5, batching on): p99 at 80 % <= 5 x p50 at 10 %; at 95 %: no request lost, p99.9 reported.
Writes s7_open_loop.json / .md / .png (latency against offered load).

One configuration again and again (the spread between runs is the host's as much as the server's):

    python -m bench.tail repeat --repo REPO --runs 5 --server-cpus 0 --client-cpus 1 --out DIR

`--targets server,echo` measures the bare grpc.aio echo (bench/echo.py) the same way in every run, in turn with
the server: what the host alone does to the ratio.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import models, procs, report
from bench.env import markdown as env_markdown
from bench.loadgen import model_infer_request
from bench.openloop import OpenLoopResult, run_open_loop
from bench.scenario_kit import finish, server_event_loop, target_check

LEVELS = (0.10, 0.50, 0.80, 0.95)
CONFIRM_BACKOFF = 0.9  # a rate that fails its confirmation is retried at 90 % of it


@dataclass(frozen=True)
class TailMode:
    probe_s: float  # window of one search probe
    warmup_s: float  # not counted, before every window
    level_s: float  # window at each fraction of the maximum
    bisect_steps: int
    start_rps: float
    max_probes: int  # doubling probes at most (the search gives up higher)
    p99_limit_ms: float
    confirm_s: float = 0.0  # the rate found must then hold a probe this long; 0: no check
    confirm_steps: int = 0  # ... if not, CONFIRM_BACKOFF lower, at most this many times


TAIL_MODES = {
    # A minute, five tries: this host's CPU speed steps by ~1.4x for seconds at a time (bench/host_speed.py), so
    # a rate that held 15 s of a fast stretch overloads the next slow one; 0.9^4 = 0.66 covers that step.
    "full": TailMode(
        probe_s=4.0,
        warmup_s=1.0,
        level_s=15.0,
        bisect_steps=5,
        start_rps=100.0,
        max_probes=10,
        p99_limit_ms=100.0,
        confirm_s=60.0,
        confirm_steps=5,
    ),
    "quick": TailMode(
        probe_s=2.0,
        warmup_s=0.5,
        level_s=4.0,
        bisect_steps=3,
        start_rps=100.0,
        max_probes=9,
        p99_limit_ms=100.0,
        confirm_s=4.0,
        confirm_steps=2,
    ),
    "smoke": TailMode(
        probe_s=0.3, warmup_s=0.1, level_s=0.3, bisect_steps=0, start_rps=40.0, max_probes=1, p99_limit_ms=1000.0
    ),
}


def sustainable(r: OpenLoopResult, p99_limit_ms: float) -> tuple[bool, str]:
    """(ok, why not): every request answered, answers kept up with the offer, p99 under the limit."""
    s = r.summary()
    offered = r.scheduled / r.duration_s
    if r.failed:
        return False, f"{r.failed} of {r.scheduled} not answered OK ({r.outcomes()})"
    if r.completed_rps < 0.95 * offered:
        return False, f"answers {r.completed_rps:.0f}/s < 95 % of the {offered:.0f}/s offered"
    if s["p99_ms"] is None or s["p99_ms"] > p99_limit_ms:
        return False, f"p99 {s['p99_ms']} ms > {p99_limit_ms:g} ms"
    return True, ""


def _point(r: OpenLoopResult, **extra) -> dict:
    s = r.summary()
    s.update(extra)
    return s


def search_max_rate(probe, tm: TailMode, log=print, tag: str = "") -> tuple[float, bool]:
    """The search alone, over `probe(rate, duration_s, phase) -> sustainable?`: (the highest sustainable rate
    found, 0 if even the first probe failed; whether it held the `confirm_s` probe)."""
    good, bad = 0.0, None
    rate = tm.start_rps
    if probe(rate, tm.probe_s, "search"):  # up: double until a probe fails
        good = rate
        for _ in range(tm.max_probes - 1):
            rate *= 2
            if not probe(rate, tm.probe_s, "search"):
                bad = rate
                break
            good = rate
    else:  # even the first failed (a slow model or a busy machine): halve until one holds
        bad = rate
        for _ in range(tm.max_probes - 1):
            rate /= 2
            if probe(rate, tm.probe_s, "search"):
                good = rate
                break
            bad = rate
    if bad is not None and good > 0:
        for _ in range(tm.bisect_steps):
            mid = (good + bad) / 2
            if probe(mid, tm.probe_s, "search"):
                good = mid
            else:
                bad = mid
    if good <= 0 or tm.confirm_s <= 0:
        return good, False
    # A rate is sustainable only if it holds as long as the windows measured at fractions of it: a short probe
    # passes at the saturation edge while the queue is still filling (found 2026-12-02: 4,200/s held 4 s, and
    # 95 % of it overflowed the queue within 15 s).
    for i in range(tm.confirm_steps):
        if probe(good, tm.confirm_s, "confirm"):
            return good, True
        if i < tm.confirm_steps - 1:
            good *= CONFIRM_BACKOFF
    log(f"  s7 {tag}: no rate held {tm.confirm_s:g} s in {tm.confirm_steps} tries; reporting {good:.0f}/s, unconfirmed")
    return good, False


def find_max_rate(
    address: str,
    payload: bytes,
    tm: TailMode,
    *,
    processes: int = 1,
    log=print,
    tag: str = "",
    headers: dict[str, str] | None = None,
) -> tuple[float, list[dict]]:
    """The highest sustainable rate found (0 if even the first probe failed) and every probe."""
    probes: list[dict] = []

    def probe(rate: float, duration_s: float, phase: str) -> bool:
        r = run_open_loop(
            address,
            payload,
            rate,
            duration_s=duration_s,
            warmup_s=tm.warmup_s,
            processes=processes,
            seed=len(probes),
            headers=headers,
        )
        ok, why = sustainable(r, tm.p99_limit_ms)
        probes.append(_point(r, phase=phase, sustainable=ok, why_not=why))
        log(
            f"  s7 {tag} {phase} {duration_s:g} s at {rate:.0f}/s: {'ok' if ok else 'NOT sustainable: ' + why} "
            f"(p50 {probes[-1]['p50_ms']} p99 {probes[-1]['p99_ms']} ms, send lag p99 {probes[-1]['send_lag_p99_ms']} ms)"
        )
        time.sleep(0.3)  # let any backlog of a failed probe drain before the next
        return ok

    good, _ = search_max_rate(probe, tm, log, tag)
    return good, probes


def _http_port(server) -> int:
    import re

    m = re.search(r"HTTP on \S+:(\d+)", server.log_path.read_text())
    if m is None:
        raise RuntimeError("the server logged no 'HTTP on' line")
    return int(m.group(1))


ECHO_TARGETS = {"echo": "none", "echo-thread": "thread"}  # bench/echo.py's --await-mode for each


def measure_config(
    ctx, label: str, repo: Path, tm: TailMode, protocol: str = "grpc", target_kind: str = "server"
) -> dict:
    """One server, one protocol: the max sustainable rate, then the levels. HTTP sends the binary tensor
    extension (one LeNet-5-shaped FP32 image, binary outputs), as tritonclient.http does.

    target_kind "echo" / "echo-thread" measures the bare grpc.aio reference instead (bench/echo.py: the same
    messages and server options, LeNet-5's reply, no model; "echo-thread" hands each call to a one-thread pool
    as the server hands a batch to onnxruntime), pinned and on the servers' event loop like the server: the
    tail that gRPC on this host shows with no server work at all."""
    name = models.model_name(repo)
    payload, headers = model_infer_request(name, 1), None
    processes = ctx.processes or 1
    server = None
    try:
        if target_kind in ECHO_TARGETS:
            if protocol != "grpc":
                raise ValueError(f"the echo reference is gRPC only, not {protocol}")
            server = procs.start_echo(ctx.logs, await_mode=ECHO_TARGETS[target_kind], event_loop=server_event_loop())
        elif target_kind == "server":
            server = procs.start_server(
                repo,
                ctx.logs,
                server_root=ctx.server_root,
                name=f"s7-{label.replace(' ', '-')}",
                args=("--http-address", "127.0.0.1:0") if protocol == "http" else (),
            )
        else:
            raise ValueError(f"target_kind must be server or one of {', '.join(ECHO_TARGETS)}, got {target_kind!r}")
        target = server.address
        if protocol == "http":
            from bench.http_bare import lenet_request

            payload, headers = lenet_request(1)
            target = f"http://127.0.0.1:{_http_port(server)}/v2/models/{name}/infer"
        max_rps, probes = find_max_rate(
            target, payload, tm, processes=processes, log=ctx.log, tag=label, headers=headers
        )
        levels = []
        if max_rps > 0:
            for frac in LEVELS:
                r = run_open_loop(
                    target,
                    payload,
                    max_rps * frac,
                    duration_s=tm.level_s,
                    warmup_s=tm.warmup_s,
                    processes=processes,
                    seed=100 + len(levels),
                    headers=headers,
                )
                levels.append(_point(r, phase="level", fraction=frac, sustainable=sustainable(r, tm.p99_limit_ms)[0]))
                p = levels[-1]
                ctx.log(
                    f"  s7 {label} {frac:.0%} of max = {p['offered_rps']:.0f}/s: p50 {p['p50_ms']} p99 {p['p99_ms']} "
                    f"p99.9 {p['p99.9_ms']} ms, failed {p['failed']}, send lag p99 {p['send_lag_p99_ms']} ms"
                )
        rss = server.rss_bytes()
    finally:
        if server is not None:
            server.stop()
    return {
        "label": label,
        "model": name,
        "repo": str(repo),
        "max_rps": max_rps,
        "probes": probes,
        "levels": levels,
        "rss_bytes": rss,
        "protocol": protocol,
        "target": target_kind,
    }


def _plot(configs: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    by_model: dict[str, list[dict]] = {}
    for c in configs:
        by_model.setdefault(c["model"], []).append(c)
    fig, axes = plt.subplots(1, len(by_model), figsize=(6.5 * len(by_model), 4.8), dpi=110, squeeze=False)
    for ax, (model, cs) in zip(axes[0], by_model.items()):
        for i, c in enumerate(cs):
            pts = [p for p in c["levels"] if p["p50_ms"] is not None]
            if not pts:
                continue
            xs = [p["offered_rps"] for p in pts]
            for key, style in (("p50_ms", "o-"), ("p99_ms", "s--"), ("p99.9_ms", "^:")):
                ax.plot(
                    xs, [p[key] for p in pts], style, color=f"C{i}", label=f"{c['label'].split(', ')[-1]} {key[:-3]}"
                )
            ax.axvline(c["max_rps"], color=f"C{i}", alpha=0.3)
            for p in pts:
                ax.annotate(
                    f"{p['fraction']:.0%}",
                    (p["offered_rps"], p["p50_ms"]),
                    textcoords="offset points",
                    xytext=(3, -10),
                    fontsize=7,
                    color=f"C{i}",
                )
        ax.set_yscale("log")
        ax.set_xlabel("offered load, requests/s (Poisson; labels: share of the max; line: max sustainable)")
        ax.set_ylabel("latency from scheduled send, ms (log)")
        ax.set_title(f"{model}: open-loop latency vs offered load", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def s7_open_loop(ctx) -> dict:

    tm = TAIL_MODES[ctx.mode.name]
    repos = [("LeNet-5", ctx.lenet_repo)]
    if Path(ctx.resnet_repo).resolve() != Path(ctx.lenet_repo).resolve():
        repos.append(("ResNet-20", ctx.resnet_repo))
    configs = []
    for kind, repo in repos:
        db = models.config_of(repo).get("dynamic_batching")
        off = models.variant(repo, ctx.out / "repos" / f"s7-{kind.lower()}-off", dynamic_batching=None)
        configs.append(measure_config(ctx, f"{kind}, batching on", repo, tm))
        configs.append(measure_config(ctx, f"{kind}, batching off", off, tm))
        configs[-2]["dynamic_batching"], configs[-1]["dynamic_batching"] = db, None
    if getattr(ctx, "s7_http", True):  # HTTP (binary tensor extension), LeNet-5 with batching on
        kind, repo = repos[0]
        configs.append(measure_config(ctx, f"{kind}, batching on, HTTP", repo, tm, protocol="http"))
        configs[-1]["dynamic_batching"] = models.config_of(repo).get("dynamic_batching")
    rows = []
    for c in configs:
        for p in c["levels"]:
            rows.append(
                {
                    "config": c["label"],
                    "max_rps": c["max_rps"],
                    "fraction": f"{p['fraction']:.0%}",
                    "offered": p["offered_rps"],
                    "completed": p["completed_rps"],
                    "p50": p["p50_ms"],
                    "p99": p["p99_ms"],
                    "p999": p["p99.9_ms"],
                    "max": p["max_ms"],
                    "failed": p["failed"],
                    "lag99": p["send_lag_p99_ms"],
                    "lagmax": p["send_lag_max_ms"],
                    "steal": p.get("host_steal_s"),
                }
            )
    targets = []
    lenet_on = configs[0]
    lv = {p["fraction"]: p for p in lenet_on["levels"]}
    if lv:
        targets.append(
            target_check(
                f"{lenet_on['model']}, batching on: p99 at 80 % of max ({lv[0.8]['offered_rps']:.0f}/s) / "
                f"p50 at 10 % ({lv[0.1]['offered_rps']:.0f}/s)",
                (lv[0.8]["p99_ms"] or float("nan")) / (lv[0.1]["p50_ms"] or float("nan")),
                5.0,
                higher_is_better=False,
                unit="x",
                fmt="{:.2f}",
            )
        )
        targets.append(
            target_check(
                f"{lenet_on['model']}, batching on, 95 % of max ({lv[0.95]['offered_rps']:.0f}/s): requests "
                f"not answered OK of {lv[0.95]['scheduled']:,} (p99.9 {lv[0.95]['p99.9_ms']} ms)",
                float(lv[0.95]["failed"]),
                0.0,
                higher_is_better=False,
                fmt="{:.0f}",
            )
        )
    png = ctx.out / "s7_open_loop.png"
    _plot(configs, png)
    load = os.getloadavg()
    cols = [
        ("config", "config"),
        ("max_rps", "max sustainable req/s"),
        ("fraction", "share"),
        ("offered", "offered req/s"),
        ("completed", "answered req/s"),
        ("p50", "p50 ms"),
        ("p99", "p99 ms"),
        ("p999", "p99.9 ms"),
        ("max", "max ms"),
        ("failed", "not OK"),
        ("lag99", "send lag p99 ms"),
        ("lagmax", "send lag max ms"),
        ("steal", "host steal s"),
    ]
    md = (
        f"# Scenario 7: tail latency under open-loop load (LeNet-5, ResNet-20; batching on / off)\n\n"
        f"Open loop (bench/openloop.py): Poisson arrivals at a set rate, each request timed from its *scheduled* "
        f"send time, so neither a slow server nor a late generator can hide latency. Maximum sustainable rate: "
        f"doubling from {tm.start_rps:g}/s (halving if that fails), then {tm.bisect_steps} bisection steps, probes of {tm.probe_s:g} s after "
        f"{tm.warmup_s:g} s warm-up; sustainable = every request answered OK, answers >= 95 % of the offered rate, "
        f"p99 <= {tm.p99_limit_ms:g} ms; the rate found must then hold a {tm.confirm_s:g} s probe by the same rule "
        f"(else {1 - CONFIRM_BACKOFF:.0%} lower, at most {tm.confirm_steps} times; phase `confirm` below). "
        f"Then {tm.level_s:g} s windows at 10/50/80/95 % of it. "
        f"{ctx.processes or 1} generator process(es) (separate from the server), 2 channels each. "
        f"Send lag = actual minus scheduled send time (the generator's own delay, already inside the latencies). "
        f"Host steal = CPU time the hypervisor ran something else while this VM's CPUs were ready (/proc/stat, all "
        f"CPUs, over warm-up + window + drain). "
        f"Mode `{ctx.mode.name}`; load average at the end {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} (a shared "
        f"machine: other work runs beside it).\n\n{env_markdown(ctx.env)}\n\n"
        + report.table(rows, cols)
        + "\n\n## Targets\n\n"
        + report.targets_table(targets)
        + "\n\n## Search probes\n\n"
        + report.table(
            [{"config": c["label"], **p} for c in configs for p in c["probes"]],
            [
                ("config", "config"),
                ("phase", "phase"),
                ("offered_rps", "offered req/s"),
                ("completed_rps", "answered req/s"),
                ("p50_ms", "p50 ms"),
                ("p99_ms", "p99 ms"),
                ("failed", "not OK"),
                ("send_lag_p99_ms", "send lag p99 ms"),
                ("host_steal_s", "host steal s"),
                ("sustainable", "sustainable"),
                ("why_not", "why not"),
            ],
        )
        + "\n\n![latency vs offered load](s7_open_loop.png)\n"
    )
    return finish(
        ctx,
        "s7_open_loop",
        {
            "scenario": 7,
            "title": "tail latency under open-loop load",
            "tail_mode": asdict(tm),
            "configs": configs,
            "rows": rows,
            "targets": targets,
            "loadavg_at_end": list(load),
        },
        md,
    )


def repeat(
    repo: Path,
    runs: int,
    out: Path,
    *,
    mode: str = "full",
    protocol: str = "grpc",
    label: str = "",
    targets: tuple[str, ...] = ("server",),
) -> dict:
    """measure_config `runs` times on one repository (batching as its config says); writes run<N>.json and
    runs.md (per run: the confirmation probes, the maximum, the two target ratios) under `out`.

    With more than one target (`server`, `echo`, `echo-thread`), each run measures every target, in turn and
    in alternating order (run 1 server first, run 2 last, ...), into run<N>-<target>.json: the references meet
    the same stretches of the host as the server."""
    from types import SimpleNamespace

    from bench.env import describe

    tm = TAIL_MODES[mode]
    out.mkdir(parents=True, exist_ok=True)
    ctx = SimpleNamespace(processes=1, logs=out / "logs", server_root=None, log=lambda m: print(m, flush=True))
    label = label or f"{models.model_name(repo)}, {protocol}"
    rows, results = [], []
    for k in range(1, runs + 1):
        for kind in run_order(k, targets):
            t0 = time.strftime("%H:%M", time.gmtime())
            c = measure_config(ctx, label, repo, tm, protocol=protocol, target_kind=kind)
            name = f"run{k}.json" if len(targets) == 1 else f"run{k}-{kind}.json"
            (out / name).write_text(json.dumps(c, indent=1) + "\n")
            results.append(c)
            lv = {p["fraction"]: p for p in c["levels"]}
            confirms = ", ".join(
                f"{p['offered_rps']:.0f}/s {'ok' if p['sustainable'] else 'no'}"
                for p in c["probes"]
                if p["phase"] == "confirm"
            )
            ratio = (lv[0.8]["p99_ms"] / lv[0.1]["p50_ms"]) if lv else float("nan")
            rows.append(
                {
                    "run": k,
                    "target": kind,
                    "at": t0 + " UTC",
                    "confirm": confirms,
                    "max": c["max_rps"],
                    "p50_10": lv[0.1]["p50_ms"] if lv else None,
                    "p50_80": lv[0.8]["p50_ms"] if lv else None,
                    "p99_80": lv[0.8]["p99_ms"] if lv else None,
                    "ratio": f"{ratio:.2f}x",
                    "lost_95": f"{lv[0.95]['failed']} of {lv[0.95]['scheduled']:,}" if lv else "",
                    "p999_95": lv[0.95]["p99.9_ms"] if lv else None,
                    "steal_80": lv[0.8]["host_steal_s"] if lv else None,
                    "_ratio": ratio,
                }
            )
            print(f"run {k} {kind}: max {c['max_rps']:.0f}/s, p99 at 80 % / p50 at 10 % = {ratio:.2f}x", flush=True)
    medians = {kind: statistics.median(r["_ratio"] for r in rows if r["target"] == kind) for kind in targets}
    columns = [("run", "run")] + ([("target", "target")] if len(targets) > 1 else [])
    columns += [
        ("at", "started"),
        ("confirm", f"confirm probes ({tm.confirm_s:g} s)"),
        ("max", "max sustainable req/s"),
        ("p50_10", "p50 at 10 % ms"),
        ("p50_80", "p50 at 80 % ms"),
        ("p99_80", "p99 at 80 % ms"),
        ("ratio", "p99 at 80 % / p50 at 10 %"),
        ("lost_95", "not OK at 95 %"),
        ("p999_95", "p99.9 at 95 % ms"),
        ("steal_80", f"host steal during the 80 % run, CPU-s ({os.cpu_count()} CPUs, ~{tm.level_s + tm.warmup_s:g} s)"),
    ]
    md = (
        f"# Scenario 7, one configuration {runs} times: {label}"
        + (f" (targets: {', '.join(targets)})" if len(targets) > 1 else "")
        + "\n\n"
        f"`python -m bench.tail repeat`, mode `{mode}` (confirmation {tm.confirm_s:g} s, at most {tm.confirm_steps} "
        f"tries, {1 - CONFIRM_BACKOFF:.0%} lower each), level windows {tm.level_s:g} s. Files: "
        + ", ".join(f"run1{'' if len(targets) == 1 else '-' + t}.json" for t in targets)
        + f" ... run{runs}.\n\n"
        f"{env_markdown(describe({'repo': str(repo), 'server_cpus': os.environ.get('BENCH_SERVER_CPUS', 'any'), 'client_cpus': os.environ.get('BENCH_CLIENT_CPUS', 'any')}))}\n\n"
        + report.table(rows, columns)
        + "\n\n"
        + "".join(
            f"Median ratio over the {runs} run{'s' if runs > 1 else ''}{'' if len(targets) == 1 else ', ' + kind}: **{m:.2f}x** (target <= 5x).\n"
            for kind, m in medians.items()
        )
    )
    (out / "runs.md").write_text(md)
    print(md)
    return {"runs": results, "median_ratios": medians}


def run_order(run: int, targets: tuple[str, ...]) -> tuple[str, ...]:
    """The targets of run `run` (from 1) in the order measured: as given in odd runs, reversed in even ones, so
    that no target always meets the host right after the same other one."""
    return targets if run % 2 else targets[::-1]


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m bench.tail", description="scenario 7, one configuration, repeated")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("repeat")
    r.add_argument("--repo", type=Path, required=True, help="a model repository with one model (its config as is)")
    r.add_argument("--runs", type=int, default=3)
    r.add_argument("--mode", choices=sorted(TAIL_MODES), default="full")
    r.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    r.add_argument("--server-cpus", default="", help="pin the server here (e.g. 0)")
    r.add_argument("--client-cpus", default="", help="pin the load generator here (e.g. 1)")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument(
        "--targets",
        default="server",
        help="comma-separated, measured in turn each run: server (the repository's model), echo (bench/echo.py, "
        "bare grpc.aio, no model), echo-thread (the same, each call through a one-thread pool)",
    )
    args = ap.parse_args(argv)
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    for t in targets:
        if t != "server" and t not in ECHO_TARGETS:
            ap.error(f"--targets: unknown target {t!r} (server, {', '.join(ECHO_TARGETS)})")
        if t != "server" and args.protocol != "grpc":
            ap.error(f"--targets: {t} is a gRPC server; --protocol {args.protocol} measures the server only")
    for var, val in (("BENCH_SERVER_CPUS", args.server_cpus), ("BENCH_CLIENT_CPUS", args.client_cpus)):
        if val:
            os.environ[var] = val
    repeat(args.repo, args.runs, args.out, mode=args.mode, protocol=args.protocol, targets=targets)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
