"""Scenarios 5 and 6: one vs two server processes on one port (SO_REUSEPORT), and resident memory after warm-up
and after many requests with the cold start to ServerReady (bench/scenarios.py lists every scenario).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import models, procs, report
from bench.loadgen import auto_processes, model_infer_request, run_load
from bench.scenario_kit import (
    Ctx,
    finish,
    median_points,
    run_point,
    scenario_header,
    stop_all,
    target_check,
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
                    p = run_point(ctx, server, payload, c, processes=nproc, channels=8)
                    spread = sorted((procs.cpu_seconds(q) - cpu0[q] for q in pids), reverse=True)
                    p["cpu_s_by_process"] = [round(s, 2) for s in spread]
                    reps.append(p)
                pts.append(median_points(reps))
                pts[-1]["cpu_s_by_process"] = reps[-1]["cpu_s_by_process"]
                ctx.log(f"  s5 workers={n} c={c}: {pts[-1]['rps']:.0f}/s")
            rss = server.rss_bytes()
        finally:
            stop_all(server)
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
        scenario_header(
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
    return finish(
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
        stop_all(server)
    cold = [_cold_start(ctx, repo) for _ in range(m.s6_cold_trials)]
    n_py = 1 if m.name == "smoke" else 3
    py_start = _time_python(["-c", "pass"], ctx.server_root, n_py)
    py_import = _import_seconds("server.app", ctx.server_root, n_py)
    growth = (rss_end - rss_warm) / rss_warm
    cold_med = statistics.median(c["ready_s"] for c in cold)
    targets = [
        target_check(
            f"RSS after warm-up, {name} loaded",
            rss_warm / 2**20,
            200,
            higher_is_better=False,
            unit=" MiB",
            fmt="{:.1f}",
        ),
        target_check(
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
        scenario_header(
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
    return finish(
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
