"""The scenarios of the benchmark (issue 8; 7-9 from issue 21). Each measures its own reference in the same run and
writes sN_<name>.json / .md / .png into the run folder.

1 tiny model, one image per request: server vs a bare grpc.aio echo server (bench/echo.py)
2 compute-bound model, one image per request: server vs raw onnxruntime at the batcher's batch mix
3 client-side batches of 64: server vs raw onnxruntime at batch 64
4 dynamic batching on vs off, and max_queue_delay_us vs p99
5 one vs two server processes on one port (SO_REUSEPORT)
6 resident memory after warm-up and after many requests; cold start to ServerReady
7 tail latency under open-loop load: max sustainable rate, p50/p99/p99.9 at 10-95 % of it (bench/tail.py)
8 memory across batch sizes: onnxruntime memory settings compared, mixed-batch server soak (bench/memory.py)
9 the cost of a reload (new version, changed config.yaml) under open-loop load (bench/reload.py)
"""

from __future__ import annotations

import dataclasses
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import models, procs, rawort, report
from bench.env import markdown as env_markdown
from bench.loadgen import LoadResult, auto_processes, model_infer_request, run_load


@dataclass
class Mode:
    name: str
    duration_s: float
    warmup_s: float
    repeats: int
    raw_seconds: float
    s1_conc: list[int]
    s2_conc: list[int]
    s3_conc: list[int]
    s4_conc: list[int]
    s4_delays_us: list[int | None]  # None = dynamic_batching: null
    s5_conc: list[int]
    s6_requests: int
    s6_cold_trials: int


MODES = {
    "full": Mode(
        "full",
        5.0,
        1.0,
        3,
        1.0,
        [1, 2, 4, 8, 16, 32, 64, 128],
        [1, 4, 16, 32, 64, 128],
        [1, 2, 4, 8],
        [1, 4, 16, 64],
        [None, 0, 500, 2000],
        [16, 64, 128],
        100_000,
        5,
    ),
    "quick": Mode(
        "quick", 2.0, 0.5, 1, 0.5, [1, 8, 64, 128], [1, 16, 64], [1, 4], [1, 16, 64], [None, 0, 2000], [64], 10_000, 3
    ),
    "smoke": Mode("smoke", 0.4, 0.1, 1, 0.15, [1, 64], [1, 8], [1, 2], [1, 8], [None, 0], [8], 400, 1),
}


@dataclass
class Ctx:
    out: Path
    mode: Mode
    lenet_repo: Path
    resnet_repo: Path
    server_root: Path
    env: dict
    compare_root: Path | None = None  # scenarios 1 and 2 also measure this tree, interleaved, in the same run
    processes: int | None = None  # client processes (None: auto)
    vgg_repo: Path | None = None  # scenario 8 (VGG-11)
    soak_requests: dict | None = None  # scenario 8: model kind -> server soak requests (None: the mode's)
    log: object = print
    results: dict = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        return self.out / "logs"


# --------------------------------------------------------------------------------------------------
# helpers


def _point(r: LoadResult, cpu_s: float | None = None, **extra) -> dict:
    d = r.summary()
    d.pop("error_samples", None)
    if r.error_samples:
        d["error_samples"] = r.error_samples[:3]
    if cpu_s is not None and r.total_ok:
        d["server_cpu_us_per_req"] = round(cpu_s / r.total_ok * 1e6, 1)
    d.update(extra)
    return d


def _load(
    ctx: Ctx,
    target: procs.Proc,
    payload: bytes,
    conc: int,
    rows: int = 1,
    processes: int | None = None,
    channels: int = 1,
    **extra,
) -> dict:
    c0 = target.cpu_s()
    r = run_load(
        target.address,
        payload,
        conc,
        duration_s=ctx.mode.duration_s,
        warmup_s=ctx.mode.warmup_s,
        processes=processes or ctx.processes,
        channels_per_process=channels,
        rows_per_request=rows,
    )
    cpu = target.cpu_s() - c0
    return _point(r, cpu, **extra)


def _median_points(points: list[dict]) -> dict:
    """Median of repeated measurements of one point (numbers only; the rest from the first)."""
    if len(points) == 1:
        return dict(points[0])
    out = dict(points[0])
    for k, v in points[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            vals = [p[k] for p in points if isinstance(p.get(k), (int, float))]
            out[k] = statistics.median(vals)
    out["repeats"] = len(points)
    out["rps_all"] = [p["rps"] for p in points]
    return out


def _target(
    name: str, value: float, threshold: float, *, higher_is_better: bool = True, unit: str = "", fmt: str = "{:.3f}"
) -> dict:
    met = (value >= threshold) if higher_is_better else (value <= threshold)
    if value != value:  # nan
        met = None
    return {
        "name": name,
        "value": value,
        "threshold_value": threshold,
        "met": met,
        "measured": fmt.format(value) + unit,
        "threshold": ("≥ " if higher_is_better else "≤ ") + fmt.format(threshold) + unit,
    }


def _header(ctx: Ctx, n: int, title: str, what: str) -> str:
    return (
        f"# Scenario {n}: {title}\n\n{what}\n\nMode `{ctx.mode.name}`: {ctx.mode.duration_s:g} s windows after "
        f"{ctx.mode.warmup_s:g} s warm-up, {ctx.mode.repeats} repeat(s) per point (median). "
        f"Server tree: `{ctx.server_root}`.\n\n{env_markdown(ctx.env)}\n"
    )


def _finish(ctx: Ctx, stem: str, result: dict, md: str) -> dict:
    result.setdefault("env", ctx.env)
    result["mode"] = dataclasses.asdict(ctx.mode)
    files = report.write(ctx.out, stem, result, md)
    result["files"] = files
    ctx.results[stem] = result
    return result


def _stop(*ps: procs.Proc | None) -> None:
    for p in ps:
        if p is not None:
            p.stop()


# --------------------------------------------------------------------------------------------------
# 1: LeNet-5 vs echo


def _trees(ctx: Ctx) -> list[tuple[str, Path]]:
    """('server', tree) and, with --compare-root, ('server B', other tree): measured in the same run."""
    out = [("server", ctx.server_root)]
    if ctx.compare_root is not None:
        out.append(("server B", ctx.compare_root))
    return out


def server_event_loop() -> str:
    """The event loop the servers under test run (the server's own config resolution: CNN_SERVER_* over
    defaults): the echo reference runs the same one, so the ratio measures the server's own work."""
    from server.config import load_config

    return load_config(None).event_loop


def s1_tiny_vs_echo(ctx: Ctx) -> dict:
    m = ctx.mode
    repo = ctx.lenet_repo
    name = models.model_name(repo)
    payload = model_infer_request(name, 1)
    targets_procs: list[tuple[str, procs.Proc]] = []
    trees = _trees(ctx)
    event_loop = server_event_loop()  # the echo runs the servers' loop; the report names it
    runs: dict[str, dict[int, list[dict]]] = {"echo": {}, **{label: {} for label, _ in trees}}
    rss = {}
    try:
        targets_procs.append(("echo", procs.start_echo(ctx.logs, event_loop=event_loop)))
        for label, root in trees:
            targets_procs.append(
                (label, procs.start_server(repo, ctx.logs, server_root=root, name=label.replace(" ", "-")))
            )
        for c in m.s1_conc:
            for rep in range(m.repeats):
                order = targets_procs if rep % 2 == 0 else targets_procs[::-1]  # alternate: cancel drift
                for label, target in order:
                    runs[label].setdefault(c, []).append(_load(ctx, target, payload, c))
            ctx.log(
                f"  s1 c={c}: " + ", ".join(f"{label} {runs[label][c][-1]['rps']:.0f}/s" for label, _ in targets_procs)
            )
        rss = {label: p.rss_bytes() for label, p in targets_procs}
    finally:
        _stop(*(p for _, p in targets_procs))
    raw1 = rawort.measure(models.model_dir(repo), 1, seconds=m.raw_seconds, repeats=3)
    series = {k: [_median_points(v[c]) for c in m.s1_conc] for k, v in runs.items()}
    rows, targets = [], []
    for label, root in trees:
        these = []
        for e, s_ in zip(series["echo"], series[label]):
            these.append(
                {
                    "server": label,
                    "concurrency": e["concurrency"],
                    "echo_rps": e["rps"],
                    "server_rps": s_["rps"],
                    "ratio": s_["rps"] / e["rps"] if e["rps"] else float("nan"),
                    "echo_p50_ms": e["p50_ms"],
                    "server_p50_ms": s_["p50_ms"],
                    "echo_p99_ms": e["p99_ms"],
                    "server_p99_ms": s_["p99_ms"],
                    "echo_cpu_us": e.get("server_cpu_us_per_req"),
                    "server_cpu_us": s_.get("server_cpu_us_per_req"),
                    "errors": s_["errors"] + e["errors"],
                }
            )
        rows += these
        by_c = {r["concurrency"]: r for r in these}
        tag = "" if label == "server" else f" [{label}: {root}]"
        c_ratio = 64 if 64 in by_c else max(by_c)
        targets.append(_target(f"server / echo requests/s at concurrency {c_ratio}{tag}", by_c[c_ratio]["ratio"], 0.85))
        if 1 in by_c:
            overhead = by_c[1]["server_p50_ms"] - by_c[1]["echo_p50_ms"] - raw1["run_p50_ms"]
            targets.append(
                _target(
                    f"p50 at concurrency 1 − (echo p50 + raw batch-1 run p50){tag}",
                    overhead,
                    0.3,
                    higher_is_better=False,
                    unit=" ms",
                )
            )
    png = ctx.out / "s1_tiny_vs_echo.png"
    report.plot_latency_throughput(series, png, f"S1 {name}, 1 image/request: server vs grpc.aio echo")
    cols = [
        ("concurrency", "conc"),
        ("echo_rps", "echo req/s"),
        ("server_rps", "server req/s"),
        ("ratio", "server/echo"),
        ("echo_p50_ms", "echo p50 ms"),
        ("server_p50_ms", "server p50 ms"),
        ("echo_p99_ms", "echo p99 ms"),
        ("server_p99_ms", "server p99 ms"),
        ("echo_cpu_us", "echo CPU µs/req"),
        ("server_cpu_us", "server CPU µs/req"),
        ("errors", "errors"),
    ]
    if len(trees) > 1:
        cols.insert(0, ("server", "server"))
    md = (
        _header(
            ctx,
            1,
            f"tiny model ({name}), one image per request, vs a bare grpc.aio echo server",
            "ModelInfer, 1x1x28x28 FP32 raw, closed loop. The echo server (bench/echo.py) parses the same "
            "ModelInferRequest and answers a ModelInferResponse of the same size through the same generated "
            f"gRPC code, server options and event loop ({event_loop}). CPU µs/req is the server process's user+system CPU per answered "
            "request (all threads): it is far less sensitive to a busy machine than requests/s."
            + (f" `server B` is `{ctx.compare_root}`, measured interleaved in the same run." if len(trees) > 1 else ""),
        )
        + "\n"
        + report.table(rows, cols)
        + f"\n\nRaw onnxruntime batch 1 (same session options): run p50 {raw1['run_p50_ms']:.3f} ms, "
        f"{raw1['images_per_s']:.0f} images/s. RSS at the end: "
        + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in rss.items())
        + ".\n\n"
        + "## Targets\n\n"
        + report.targets_table(targets)
        + "\n\n![plot](s1_tiny_vs_echo.png)\n"
    )
    return _finish(
        ctx,
        "s1_tiny_vs_echo",
        {
            "scenario": 1,
            "title": "tiny model vs echo",
            "model": name,
            "rows": rows,
            "series": series,
            "raw_batch1": raw1,
            "targets": targets,
            "rss_bytes": rss,
        },
        md,
    )


# --------------------------------------------------------------------------------------------------
# 2: ResNet-20 vs raw onnxruntime at the batcher's batch sizes


def s2_compute_vs_raw(ctx: Ctx) -> dict:
    m = ctx.mode
    repo = ctx.resnet_repo
    name = models.model_name(repo)
    payload = model_infer_request(name, 1)
    trees = _trees(ctx)
    servers: list[tuple[str, procs.Proc]] = []
    points: dict[str, list[dict]] = {label: [] for label, _ in trees}
    try:
        for label, root in trees:
            servers.append((label, procs.start_server(repo, ctx.logs, server_root=root, name=label.replace(" ", "-"))))
        for c in m.s2_conc:
            reps: dict[str, list[dict]] = {label: [] for label, _ in trees}
            for rep in range(m.repeats):
                for label, server in servers if rep % 2 == 0 else servers[::-1]:
                    before = procs.batch_stats(server.address, name)
                    p = _load(ctx, server, payload, c)
                    p["stats"] = procs.stats_delta(before, procs.batch_stats(server.address, name))
                    reps[label].append(p)
            for label, rs in reps.items():
                merged = _median_points(rs)
                batches: dict[int, list[int]] = {}
                for r in rs:
                    for b, (cnt, ns) in r["stats"]["batches"].items():
                        acc = batches.setdefault(b, [0, 0])
                        acc[0] += cnt
                        acc[1] += ns
                merged["batches"] = {b: tuple(v) for b, v in sorted(batches.items())}
                points[label].append(merged)
            ctx.log(
                f"  s2 c={c}: "
                + ", ".join(f"{label} {points[label][-1]['images_per_s']:.0f} images/s" for label, _ in trees)
            )
    finally:
        _stop(*(p for _, p in servers))
    cache: dict = {}
    rows, targets = [], []
    for label, root in trees:
        these = []
        for p in points[label]:
            mix = rawort.mixture(
                models.model_dir(repo), p["batches"], seconds=m.raw_seconds / 2, repeats=3, cache=cache
            )
            p["raw"] = mix
            these.append(
                {
                    "server": label,
                    "concurrency": p["concurrency"],
                    "server_img_s": p["images_per_s"],
                    "raw_img_s": mix["images_per_s"],
                    "ratio": p["images_per_s"] / mix["images_per_s"] if mix["images_per_s"] else float("nan"),
                    "mean_batch": mix.get("mean_batch"),
                    "mode_batch": mix.get("mode_batch"),
                    "server_infer_img_s": mix.get("server_infer_images_per_s"),
                    "p50_ms": p["p50_ms"],
                    "p99_ms": p["p99_ms"],
                    "cpu_us": p.get("server_cpu_us_per_req"),
                    "errors": p["errors"],
                }
            )
        rows += these
        best = max(these, key=lambda r: r["server_img_s"])
        tag = "" if label == "server" else f" [{label}: {root}]"
        targets.append(
            _target(
                f"server / raw onnxruntime images/s at peak (concurrency {best['concurrency']}, "
                f"mean batch {best['mean_batch']:.1f}){tag}",
                best["ratio"],
                0.80,
            )
        )
    raw_table = [
        {
            "batch": b,
            "raw_img_s": v["images_per_s"],
            "raw_wall": v["images_per_s_wall"],
            "run_p50_ms": v["run_p50_ms"],
            "run_mean_ms": v["run_mean_ms"],
        }
        for b, v in sorted(cache.items())
    ]
    png = ctx.out / "s2_compute_vs_raw.png"
    report.plot_latency_throughput(
        {label: [{**p, "rps": p["images_per_s"]} for p in pts] for label, pts in points.items()},
        png,
        f"S2 {name}, 1 image/request (raw onnxruntime at the same batch mix in the table)",
        xlabel="images/s",
    )
    cols = [
        ("concurrency", "conc"),
        ("server_img_s", "server images/s"),
        ("raw_img_s", "raw ORT images/s (same batch mix)"),
        ("ratio", "server/raw"),
        ("mean_batch", "mean batch"),
        ("mode_batch", "most common batch"),
        ("server_infer_img_s", "images/s inside the server's ORT calls (mean)"),
        ("p50_ms", "p50 ms"),
        ("p99_ms", "p99 ms"),
        ("cpu_us", "server CPU µs/req"),
        ("errors", "errors"),
    ]
    if len(trees) > 1:
        cols.insert(0, ("server", "server"))
    md = (
        _header(
            ctx,
            2,
            f"compute-bound model ({name}), one image per request, vs raw onnxruntime",
            "The batcher's batch sizes over each window come from ModelStatistics batch_stats; raw onnxruntime "
            "(bench/rawort.py: the server's ModelRuntime session, one calling thread) is timed at those sizes "
            "and weighted by the executions at each, so both sides run the same batch mix with the same thread budget. "
            "Raw images/s is batch / median run time (steady state; on a busy machine the stricter reference)."
            + (f" `server B` is `{ctx.compare_root}`, measured interleaved in the same run." if len(trees) > 1 else ""),
        )
        + "\n"
        + report.table(rows, cols)
        + "\n\nRaw onnxruntime per batch size:\n\n"
        + report.table(
            raw_table,
            [
                ("batch", "batch"),
                ("raw_img_s", "images/s (batch / run p50)"),
                ("raw_wall", "images/s (wall clock)"),
                ("run_p50_ms", "run p50 ms"),
                ("run_mean_ms", "run mean ms"),
            ],
        )
        + "\n\n## Targets\n\n"
        + report.targets_table(targets)
        + "\n\n![plot](s2_compute_vs_raw.png)\n"
    )
    return _finish(
        ctx,
        "s2_compute_vs_raw",
        {
            "scenario": 2,
            "title": "compute-bound vs raw onnxruntime",
            "model": name,
            "rows": rows,
            "points": points,
            "raw_by_batch": cache,
            "targets": targets,
        },
        md,
    )


# --------------------------------------------------------------------------------------------------
# 3: 64 images per request vs raw onnxruntime at batch 64


def s3_client_batches(ctx: Ctx) -> dict:
    m = ctx.mode
    repos = [("lenet5", ctx.lenet_repo)]
    if Path(ctx.resnet_repo).resolve() != Path(ctx.lenet_repo).resolve():
        repos.append(("resnet20", ctx.resnet_repo))
    rows, series, targets, raws = [], {}, [], {}
    for _kind, repo in repos:
        name = models.model_name(repo)
        rows_per_req = min(64, int(models.config_of(repo).get("max_batch_size", 64)))
        payload = model_infer_request(name, rows_per_req)
        server = None
        pts = []
        try:
            server = procs.start_server(repo, ctx.logs, server_root=ctx.server_root)
            for c in m.s3_conc:
                reps = [_load(ctx, server, payload, c, rows=rows_per_req) for _ in range(m.repeats)]
                pts.append(_median_points(reps))
                ctx.log(f"  s3 {name} c={c}: {pts[-1]['images_per_s']:.0f} images/s")
        finally:
            _stop(server)
        raw = rawort.measure(models.model_dir(repo), rows_per_req, seconds=m.raw_seconds, repeats=3)
        raws[name] = raw
        for p in pts:
            rows.append(
                {
                    "model": name,
                    "concurrency": p["concurrency"],
                    "server_img_s": p["images_per_s"],
                    "raw_img_s": raw["images_per_s"],
                    "raw_wall": raw["images_per_s_wall"],
                    "ratio": p["images_per_s"] / raw["images_per_s"],
                    "p50_ms": p["p50_ms"],
                    "p99_ms": p["p99_ms"],
                    "raw_run_ms": raw["run_p50_ms"],
                    "cpu_us": p.get("server_cpu_us_per_req"),
                    "errors": p["errors"],
                }
            )
        series[name] = [{**p, "rps": p["images_per_s"]} for p in pts]
        best = max((r for r in rows if r["model"] == name), key=lambda r: r["server_img_s"])
        targets.append(
            _target(
                f"{name}: server / raw onnxruntime images/s at batch {rows_per_req} (peak, concurrency "
                f"{best['concurrency']})",
                best["ratio"],
                0.40,
            )
        )
    png = ctx.out / "s3_client_batches.png"
    report.plot_latency_throughput(
        series, png, "S3 64 images per request: server images/s vs latency", xlabel="images/s"
    )
    cols = [
        ("model", "model"),
        ("concurrency", "conc"),
        ("server_img_s", "server images/s"),
        ("raw_img_s", "raw ORT images/s @64 (run p50)"),
        ("raw_wall", "raw @64 (wall clock)"),
        ("ratio", "server/raw"),
        ("p50_ms", "p50 ms"),
        ("p99_ms", "p99 ms"),
        ("raw_run_ms", "raw run p50 ms"),
        ("cpu_us", "server CPU µs/req"),
        ("errors", "errors"),
    ]
    md = (
        _header(
            ctx,
            3,
            "client-side batches (64 images per request) vs raw onnxruntime at batch 64",
            "ModelInfer with a [64, 1, 28, 28] FP32 raw tensor (200 KiB) per request; the batcher cannot merge "
            "two such requests (max_batch_size 64), so every execution is batch 64. The LeNet-5 row is the "
            "demanding one: its compute is so small that transport and conversions dominate.",
        )
        + "\n"
        + report.table(rows, cols)
        + "\n\n## Targets\n\n"
        + report.targets_table(targets)
        + "\n\n![plot](s3_client_batches.png)\n"
    )
    return _finish(
        ctx,
        "s3_client_batches",
        {
            "scenario": 3,
            "title": "client-side batches of 64",
            "rows": rows,
            "series": series,
            "raw": raws,
            "targets": targets,
        },
        md,
    )


# --------------------------------------------------------------------------------------------------
# 4: batching on / off, queue delay vs p99


def s4_batching(ctx: Ctx) -> dict:
    m = ctx.mode
    base = ctx.resnet_repo
    name = models.model_name(base)
    payload = model_infer_request(name, 1)
    rows, series = [], {}
    base_db = models.config_of(base).get("dynamic_batching") or {}
    for delay in m.s4_delays_us:
        label = "batching off" if delay is None else f"delay {delay} µs"
        db = None if delay is None else {**base_db, "max_queue_delay_us": delay}
        repo = models.variant(base, ctx.out / "repos" / f"s4-{'off' if delay is None else delay}", dynamic_batching=db)
        server = None
        pts = []
        try:
            server = procs.start_server(repo, ctx.logs, server_root=ctx.server_root)
            for c in m.s4_conc:
                reps = []
                for _ in range(m.repeats):
                    before = procs.batch_stats(server.address, name)
                    p = _load(ctx, server, payload, c)
                    d = procs.stats_delta(before, procs.batch_stats(server.address, name))
                    p["mean_batch"] = (
                        d["inference_count"] / d["execution_count"] if d["execution_count"] else float("nan")
                    )
                    p["max_batch"] = max(d["batches"], default=0)
                    reps.append(p)
                pts.append(_median_points(reps))
                ctx.log(f"  s4 {label} c={c}: {pts[-1]['rps']:.0f}/s p99 {pts[-1]['p99_ms']:.2f} ms")
        finally:
            _stop(server)
        series[label] = pts
        for p in pts:
            rows.append(
                {
                    "variant": label,
                    "concurrency": p["concurrency"],
                    "rps": p["rps"],
                    "p50_ms": p["p50_ms"],
                    "p99_ms": p["p99_ms"],
                    "mean_batch": p["mean_batch"],
                    "max_batch": p["max_batch"],
                    "cpu_us": p.get("server_cpu_us_per_req"),
                    "errors": p["errors"],
                }
            )
    off = [r for r in rows if r["variant"] == "batching off"]
    notes = []
    if off and any(r["max_batch"] > 1 for r in off):
        notes.append(
            "**`dynamic_batching: null` still batched** (max batch > 1 above): the README says each request "
            "runs alone, but server/models.py gives the batcher max_batch_size rows either way, so requests that "
            "queue while the instance is busy are merged. See docs/benchmarks.md for the proposed fix."
        )
    png = ctx.out / "s4_batching.png"
    report.plot_latency_throughput(series, png, f"S4 {name}, 1 image/request: batching off / on and max_queue_delay_us")
    cols = [
        ("variant", "variant"),
        ("concurrency", "conc"),
        ("rps", "req/s"),
        ("p50_ms", "p50 ms"),
        ("p99_ms", "p99 ms"),
        ("mean_batch", "mean batch"),
        ("max_batch", "max batch"),
        ("cpu_us", "server CPU µs/req"),
        ("errors", "errors"),
    ]
    md = (
        _header(
            ctx,
            4,
            f"dynamic batching on vs off, and max_queue_delay_us ({name})",
            f"Model config variants of `{name}` (preferred batch sizes kept as exported: "
            f"{base_db.get('preferred_batch_sizes', [])}); `batching off` is `dynamic_batching: null`. "
            "Mean and max batch come from ModelStatistics over each window.",
        )
        + "\n"
        + report.table(rows, cols)
        + ("\n\n" + "\n".join(notes) if notes else "")
        + "\n\n![plot](s4_batching.png)\n"
    )
    return _finish(
        ctx,
        "s4_batching",
        {
            "scenario": 4,
            "title": "batching on/off and queue delay",
            "model": name,
            "rows": rows,
            "series": series,
            "notes": notes,
            "targets": [],
        },
        md,
    )


# --------------------------------------------------------------------------------------------------
# 5: one vs two processes on one port


def _server_has_workers(root: Path) -> bool:
    code = "import dataclasses, server.config as c; print('workers' in {f.name for f in dataclasses.fields(c.ServerConfig)})"
    p = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, env=procs._env(root))
    return p.stdout.strip() == "True"


def s5_workers(ctx: Ctx, workers: tuple[int, ...] = (1, 2)) -> dict:
    m = ctx.mode
    repo = ctx.lenet_repo
    name = models.model_name(repo)
    payload = model_infer_request(name, 1)
    native = _server_has_workers(ctx.server_root)
    how = (
        "the server's own `workers` setting (CNN_SERVER_WORKERS)"
        if native
        else "bench/reuseport.py (N unmodified servers, grpc.so_reuseport forced to 1), as the server has no `workers` setting"
    )
    nproc = max(2, auto_processes(max(m.s5_conc)))
    rows, series = [], {}
    for n in workers:
        server = None
        pts = []
        try:
            port = procs.free_port()
            if n == 1:
                server = procs.start_server(repo, ctx.logs, server_root=ctx.server_root, port=port, name="w1")
            elif native:
                server = procs.start_server(
                    repo,
                    ctx.logs,
                    server_root=ctx.server_root,
                    port=port,
                    env={"CNN_SERVER_WORKERS": str(n)},
                    name=f"w{n}",
                )
            else:
                server = procs.start_server(
                    repo,
                    ctx.logs,
                    server_root=ctx.server_root,
                    port=port,
                    name=f"w{n}",
                    launcher=["-m", "bench.reuseport", "--workers", str(n)],
                )
            time.sleep(0.3)
            for c in m.s5_conc:
                reps = []
                for _ in range(m.repeats):
                    pids = server.pids()
                    cpu0 = {p: procs.cpu_seconds(p) for p in pids}
                    p = _load(ctx, server, payload, c, processes=nproc, channels=8)
                    spread = sorted((procs.cpu_seconds(q) - cpu0[q] for q in pids), reverse=True)
                    p["cpu_s_by_process"] = [round(s, 2) for s in spread]
                    reps.append(p)
                pts.append(_median_points(reps))
                pts[-1]["cpu_s_by_process"] = reps[-1]["cpu_s_by_process"]
                ctx.log(f"  s5 workers={n} c={c}: {pts[-1]['rps']:.0f}/s")
            rss = server.rss_bytes()
        finally:
            _stop(server)
        series[f"{n} worker{'s' if n > 1 else ''}"] = pts
        for p in pts:
            rows.append(
                {
                    "workers": n,
                    "concurrency": p["concurrency"],
                    "rps": p["rps"],
                    "p50_ms": p["p50_ms"],
                    "p99_ms": p["p99_ms"],
                    "cpu_us": p.get("server_cpu_us_per_req"),
                    "cpu_split": " / ".join(f"{s:.1f}" for s in p["cpu_s_by_process"] if s >= 0.05),
                    "rss_mib": rss / 2**20,
                    "errors": p["errors"],
                }
            )
    base = {r["concurrency"]: r["rps"] for r in rows if r["workers"] == workers[0]}
    for r in rows:
        r["speedup"] = r["rps"] / base[r["concurrency"]] if base.get(r["concurrency"]) else float("nan")
    png = ctx.out / "s5_workers.png"
    report.plot_latency_throughput(series, png, f"S5 {name}: 1 vs 2 server processes on one port (SO_REUSEPORT)")
    cols = [
        ("workers", "workers"),
        ("concurrency", "conc"),
        ("rps", "req/s"),
        ("speedup", "vs 1 worker"),
        ("p50_ms", "p50 ms"),
        ("p99_ms", "p99 ms"),
        ("cpu_us", "server CPU µs/req"),
        ("cpu_split", "CPU s by process (busiest first)"),
        ("rss_mib", "RSS MiB (all)"),
        ("errors", "errors"),
    ]
    md = (
        _header(
            ctx,
            5,
            f"worker processes ({name}): 1 vs 2 server processes on one port",
            f"Started through {how}. The kernel spreads connections, so the load generator uses {nproc} "
            f"processes x 8 channels (separate TCP connections). On a machine with few cores the client shares "
            f"them with the server; the CPU split column shows whether both workers took load.",
        )
        + "\n"
        + report.table(rows, cols)
        + "\n\n![plot](s5_workers.png)\n"
    )
    return _finish(
        ctx,
        "s5_workers",
        {
            "scenario": 5,
            "title": "worker processes",
            "model": name,
            "native_workers": native,
            "how": how,
            "rows": rows,
            "series": series,
            "targets": [],
        },
        md,
    )


# --------------------------------------------------------------------------------------------------
# 6: memory and cold start


def _cold_start(ctx: Ctx, repo: Path) -> dict:
    port = procs.free_port()
    address = f"127.0.0.1:{port}"
    log_path = ctx.logs / f"cold-{time.monotonic_ns()}.log"
    ctx.logs.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "client.cli",
        "serve",
        "--repository",
        str(repo),
        "--grpc-address",
        address,
        "--metrics-address",
        "127.0.0.1:0",
        "--poll-interval-s",
        "0",
    ]
    with open(log_path, "w") as log:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            cmd, cwd=ctx.server_root, stdout=log, stderr=subprocess.STDOUT, env=procs._env(ctx.server_root)
        )
    try:
        t_ready = None
        while time.monotonic() - t0 < 120 and proc.poll() is None:
            if procs.server_ready(address, timeout_s=0.25):
                t_ready = time.monotonic()
                break
            time.sleep(0.005)
        if t_ready is None:
            raise RuntimeError(f"server never became ready: {log_path.read_text()[-2000:]}")
        return {"ready_s": t_ready - t0, "rss_at_ready_bytes": procs.rss_bytes(proc.pid)}
    finally:
        p = procs.Proc("cold", proc, address, log_path, t0, 0.0)
        p.stop()


def _time_python(args: list[str], root: Path, n: int = 3) -> float:
    times = []
    for _ in range(n):
        t0 = time.monotonic()
        subprocess.run([sys.executable, *args], cwd=root, capture_output=True, env=procs._env(root))
        times.append(time.monotonic() - t0)
    return statistics.median(times)


def _import_seconds(module: str, root: Path, n: int = 3) -> float:
    """Median time to import `module` in a fresh interpreter, timed inside it (no start-up or teardown)."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    times = []
    for _ in range(n):
        p = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, env=procs._env(root))
        times.append(float(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else float("nan"))
    return statistics.median(times)


def s6_memory_cold_start(ctx: Ctx) -> dict:
    m = ctx.mode
    repo = ctx.lenet_repo
    name = models.model_name(repo)
    payload = model_infer_request(name, 1)
    server = None
    samples = []
    try:
        server = procs.start_server(repo, ctx.logs, server_root=ctx.server_root)
        rss_ready = server.rss_bytes()
        warm_n = min(2000, m.s6_requests)
        run_load(server.address, payload, 8, total_requests=warm_n)  # warm-up
        rss_warm = server.rss_bytes()
        samples.append((0, rss_warm))
        chunks = 10
        done = 0
        t0 = time.monotonic()
        for i in range(chunks):
            n = m.s6_requests // chunks + (1 if i < m.s6_requests % chunks else 0)
            r = run_load(server.address, payload, 16, total_requests=n)
            done += r.requests
            if r.errors:
                ctx.log(f"  s6: {r.errors} errors: {r.error_samples[:1]}")
            samples.append((done, server.rss_bytes()))
        load_s = time.monotonic() - t0
        rss_end = server.rss_bytes()
        peak = max(procs.peak_rss_bytes(p) for p in server.pids())
    finally:
        _stop(server)
    cold = [_cold_start(ctx, repo) for _ in range(m.s6_cold_trials)]
    n_py = 1 if m.name == "smoke" else 3
    py_start = _time_python(["-c", "pass"], ctx.server_root, n_py)
    py_import = _import_seconds("server.app", ctx.server_root, n_py)
    growth = (rss_end - rss_warm) / rss_warm
    cold_med = statistics.median(c["ready_s"] for c in cold)
    targets = [
        _target(
            f"RSS after warm-up, {name} loaded",
            rss_warm / 2**20,
            200,
            higher_is_better=False,
            unit=" MiB",
            fmt="{:.1f}",
        ),
        _target(
            f"RSS growth over {done:,} requests", growth * 100, 10, higher_is_better=False, unit=" %", fmt="{:.2f}"
        ),
    ]
    png = ctx.out / "s6_memory.png"
    report.plot_xy(
        {"server RSS": ([s[0] for s in samples], [s[1] / 2**20 for s in samples])},
        png,
        f"S6 {name}: resident memory vs requests served (concurrency 16)",
        "requests after warm-up",
        "RSS MiB",
    )
    rows = [
        {"what": "RSS at READY", "value": f"{rss_ready / 2**20:.1f} MiB"},
        {"what": f"RSS after warm-up ({warm_n:,} requests)", "value": f"{rss_warm / 2**20:.1f} MiB"},
        {"what": f"RSS after {done:,} more requests ({load_s:.0f} s)", "value": f"{rss_end / 2**20:.1f} MiB"},
        {"what": "peak RSS (VmHWM)", "value": f"{peak / 2**20:.1f} MiB"},
        {"what": f"cold start: process start → ServerReady true (median of {len(cold)})", "value": f"{cold_med:.2f} s"},
        {"what": "  for comparison: `python -c pass` (start + exit)", "value": f"{py_start:.2f} s"},
        {
            "what": "  for comparison: `import server.app` alone (numpy, onnxruntime, grpc, ...)",
            "value": f"{py_import:.2f} s",
        },
    ]
    md = (
        _header(
            ctx,
            6,
            f"resident memory and cold start ({name})",
            "RSS is /proc/PID/statm resident pages of the server process. Cold start is measured from just before "
            "`Popen` of `cnn serve` to the first ServerReady answering ready=true (polled every ~5 ms).",
        )
        + "\n"
        + report.table(rows, [("what", "measure"), ("value", "value")])
        + "\n\n## Targets\n\n"
        + report.targets_table(targets)
        + "\n\n![plot](s6_memory.png)\n"
    )
    return _finish(
        ctx,
        "s6_memory_cold_start",
        {
            "scenario": 6,
            "title": "memory and cold start",
            "model": name,
            "rss_ready_bytes": rss_ready,
            "rss_warm_bytes": rss_warm,
            "rss_end_bytes": rss_end,
            "peak_rss_bytes": peak,
            "requests": done,
            "growth_fraction": growth,
            "rss_samples": samples,
            "cold_start": cold,
            "cold_start_median_s": cold_med,
            "python_start_s": py_start,
            "import_server_app_s": py_import,
            "targets": targets,
        },
        md,
    )


# --------------------------------------------------------------------------------------------------
# 7-9 (issue 21: real traffic), in their own modules; imported when run


def s7_open_loop(ctx: Ctx) -> dict:
    """Tail latency under open-loop load: max sustainable rate, then p50/p99/p99.9 at 10-95 % of it (bench/tail.py)."""
    from bench.tail import s7_open_loop as run

    return run(ctx)


def s8_memory_batches(ctx: Ctx) -> dict:
    """Memory across batch sizes: onnxruntime memory settings side by side, then a mixed-batch server soak (bench/memory.py)."""
    from bench.memory import s8_memory_batches as run

    return run(ctx)


def s9_reload(ctx: Ctx) -> dict:
    """The cost of a reload under open-loop load at 80 % of the max rate (bench/reload.py)."""
    from bench.reload import s9_reload as run

    return run(ctx)


SCENARIOS = {
    1: s1_tiny_vs_echo,
    2: s2_compute_vs_raw,
    3: s3_client_batches,
    4: s4_batching,
    5: s5_workers,
    6: s6_memory_cold_start,
    7: s7_open_loop,
    8: s8_memory_batches,
    9: s9_reload,
}
DEFAULT_SCENARIOS = [1, 2, 3, 4, 5, 6]  # 7-9 on request (--scenarios 7-9): 8 in full mode runs for an hour
