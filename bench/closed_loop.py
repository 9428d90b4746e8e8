"""Scenarios 1-4: closed-loop load (a fixed number of clients, each waiting for its answer), each against its own
reference measured in the same run (bench/scenarios.py lists every scenario).

1 tiny model, one image per request: server vs a bare grpc.aio echo server (bench/echo.py)
2 compute-bound model, one image per request: server vs raw onnxruntime at the batcher's batch mix
3 client-side batches of 64: server vs raw onnxruntime at batch 64
4 dynamic batching on vs off, and max_queue_delay_us vs p99
"""

from __future__ import annotations

from pathlib import Path

from bench import models, procs, rawort, report
from bench.loadgen import model_infer_request
from bench.scenario_kit import (
    Ctx,
    finish,
    median_points,
    run_point,
    scenario_header,
    server_event_loop,
    server_trees,
    stop_all,
    target_check,
)

# --------------------------------------------------------------------------------------------------
# 1: LeNet-5 vs echo


def s1_tiny_vs_echo(ctx: Ctx) -> dict:
    m = ctx.mode
    repo = ctx.lenet_repo
    name = models.model_name(repo)
    payload = model_infer_request(name, 1)
    targets_procs: list[tuple[str, procs.Proc]] = []
    trees = server_trees(ctx)
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
                    runs[label].setdefault(c, []).append(run_point(ctx, target, payload, c))
            ctx.log(
                f"  s1 c={c}: " + ", ".join(f"{label} {runs[label][c][-1]['rps']:.0f}/s" for label, _ in targets_procs)
            )
        rss = {label: p.rss_bytes() for label, p in targets_procs}
    finally:
        stop_all(*(p for _, p in targets_procs))
    raw1 = rawort.measure(models.model_dir(repo), 1, seconds=m.raw_seconds, repeats=3)
    series = {k: [median_points(v[c]) for c in m.s1_conc] for k, v in runs.items()}
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
        targets.append(
            target_check(f"server / echo requests/s at concurrency {c_ratio}{tag}", by_c[c_ratio]["ratio"], 0.85)
        )
        if 1 in by_c:
            overhead = by_c[1]["server_p50_ms"] - by_c[1]["echo_p50_ms"] - raw1["run_p50_ms"]
            targets.append(
                target_check(
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
        scenario_header(
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
    return finish(
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
    trees = server_trees(ctx)
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
                    p = run_point(ctx, server, payload, c)
                    p["stats"] = procs.stats_delta(before, procs.batch_stats(server.address, name))
                    reps[label].append(p)
            for label, rs in reps.items():
                merged = median_points(rs)
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
        stop_all(*(p for _, p in servers))
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
            target_check(
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
        scenario_header(
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
    return finish(
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
                reps = [run_point(ctx, server, payload, c, rows=rows_per_req) for _ in range(m.repeats)]
                pts.append(median_points(reps))
                ctx.log(f"  s3 {name} c={c}: {pts[-1]['images_per_s']:.0f} images/s")
        finally:
            stop_all(server)
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
            target_check(
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
        scenario_header(
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
    return finish(
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
                    p = run_point(ctx, server, payload, c)
                    d = procs.stats_delta(before, procs.batch_stats(server.address, name))
                    p["mean_batch"] = (
                        d["inference_count"] / d["execution_count"] if d["execution_count"] else float("nan")
                    )
                    p["max_batch"] = max(d["batches"], default=0)
                    reps.append(p)
                pts.append(median_points(reps))
                ctx.log(f"  s4 {label} c={c}: {pts[-1]['rps']:.0f}/s p99 {pts[-1]['p99_ms']:.2f} ms")
        finally:
            stop_all(server)
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
        scenario_header(
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
    return finish(
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
