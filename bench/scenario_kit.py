"""What every benchmark scenario shares: the run's mode (window lengths, concurrency lists per scenario), its
context (repositories, trees, output folder, environment), one closed-loop load point, medians of repeats, a
target row, the report header, and writing a scenario's result (bench/report.py). The scenarios themselves:
bench/closed_loop.py (1-4), bench/workers_memory.py (5-6), bench/tail.py, bench/memory.py, bench/reload.py (7-9);
bench/scenarios.py lists them."""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from bench import procs, report
from bench.env import markdown as env_markdown
from bench.loadgen import LoadResult, run_load


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


def load_point(r: LoadResult, cpu_s: float | None = None, **extra) -> dict:
    d = r.summary()
    d.pop("error_samples", None)
    if r.error_samples:
        d["error_samples"] = r.error_samples[:3]
    if cpu_s is not None and r.total_ok:
        d["server_cpu_us_per_req"] = round(cpu_s / r.total_ok * 1e6, 1)
    d.update(extra)
    return d


def run_point(
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
    return load_point(r, cpu, **extra)


def median_points(points: list[dict]) -> dict:
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


def target_check(
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


def scenario_header(ctx: Ctx, n: int, title: str, what: str) -> str:
    return (
        f"# Scenario {n}: {title}\n\n{what}\n\nMode `{ctx.mode.name}`: {ctx.mode.duration_s:g} s windows after "
        f"{ctx.mode.warmup_s:g} s warm-up, {ctx.mode.repeats} repeat(s) per point (median). "
        f"Server tree: `{ctx.server_root}`.\n\n{env_markdown(ctx.env)}\n"
    )


def finish(ctx: Ctx, stem: str, result: dict, md: str) -> dict:
    result.setdefault("env", ctx.env)
    result["mode"] = dataclasses.asdict(ctx.mode)
    files = report.write(ctx.out, stem, result, md)
    result["files"] = files
    ctx.results[stem] = result
    return result


def stop_all(*ps: procs.Proc | None) -> None:
    for p in ps:
        if p is not None:
            p.stop()


def server_trees(ctx: Ctx) -> list[tuple[str, Path]]:
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
