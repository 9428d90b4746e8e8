"""`python -m bench run [--quick | --smoke] [--scenarios 1,2,...]`: run the scenarios, write a run folder.

Run folder (default runs/bench/<UTC time>): sN_<name>.json/.md/.png per scenario, summary.json and
summary.md (environment, every target met or missed), logs/ (server and echo logs).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _parse_scenarios(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-")
            out += list(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    bad = [n for n in out if n not in range(1, 10)]
    if bad:
        raise argparse.ArgumentTypeError(f"scenarios are 1..9, got {bad}")
    return out


def _parse_soak(text: str) -> dict[str, int]:
    """ "resnet20=100000,vgg11=5000" -> {"resnet20": 100000, "vgg11": 5000}."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, n = part.partition("=")
        if kind not in ("resnet20", "vgg11") or not n.isdigit() or int(n) < 3:
            raise argparse.ArgumentTypeError(f"--soak-requests takes resnet20=N and/or vgg11=N (N >= 3), got {part!r}")
        out[kind] = int(n)
    return out


def _env_pairs(items: list[str], flag: str) -> dict[str, str]:
    bad = [i for i in items if "=" not in i]
    if bad:
        raise SystemExit(f"python -m bench ab: {flag} takes KEY=VALUE, got {bad[0]!r}")
    return dict(i.split("=", 1) for i in items)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description="Serving benchmarks (docs/benchmarks.md).")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    r = sub.add_parser("run", help="run scenarios and write JSON, Markdown and PNG results")
    speed = r.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true", help="fewer points, 2 s windows, one repeat (a few minutes)")
    speed.add_argument("--smoke", action="store_true", help="seconds per scenario, numbers meaningless (tests)")
    r.add_argument(
        "--scenarios",
        type=_parse_scenarios,
        default=None,
        help="e.g. 1,2 or 1-3 (default 1-6; 7 open-loop tail latency, 8 memory across batch sizes, "
        "9 reload under load)",
    )
    r.add_argument("--out", type=Path, help="run folder (default runs/bench/<UTC time>)")
    r.add_argument("--lenet-repo", type=Path, help="repository serving LeNet-5 (default: trained once, cached)")
    r.add_argument("--resnet-repo", type=Path, help="repository serving ResNet-20 (default: trained once, cached)")
    r.add_argument(
        "--vgg-repo", type=Path, help="repository serving VGG-11, scenario 8 (default: trained once, cached)"
    )
    r.add_argument(
        "--server-root",
        type=Path,
        default=ROOT,
        help="source tree whose server is measured (a scratch copy with a proposed change; default this one)",
    )
    r.add_argument(
        "--compare-root",
        type=Path,
        help="scenarios 1 and 2 also measure this tree (e.g. a scratch copy with a change), interleaved, same run",
    )
    r.add_argument(
        "--clients",
        type=int,
        help="load-generator processes (default: one per 64 concurrent requests, at most half the cores)",
    )
    r.add_argument(
        "--server-cpus",
        help="pin server, echo and raw onnxruntime to these CPUs (e.g. 0-3), so the load generator does not share them",
    )
    r.add_argument("--client-cpus", help="pin the load-generator processes to these CPUs (e.g. 4-7)")
    r.add_argument("--duration", type=float, help="measurement window per point, seconds (overrides the mode)")
    r.add_argument("--repeats", type=int, help="repeats per point, median reported (overrides the mode)")
    r.add_argument(
        "--soak-requests",
        type=_parse_soak,
        default=None,
        metavar="KIND=N[,KIND=N]",
        help="scenario 8: server soak requests per model kind, e.g. resnet20=100000,vgg11=5000 "
        "(overrides the mode; full VGG-11 at 100,000 takes hours on 2 cores)",
    )
    r.add_argument("--requests", type=int, help="scenario 6: requests after warm-up (overrides the mode)")
    ab = sub.add_parser("ab", help="the same load against two server trees, interleaved (before/after a change)")
    ab.add_argument("--a", type=Path, default=ROOT, help="server tree A (default this checkout)")
    ab.add_argument(
        "--b", type=Path, default=ROOT, help="server tree B (e.g. a scratch copy with a change; default this checkout)"
    )
    for side in ("a", "b"):
        ab.add_argument(
            f"--env-{side}",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help=f"environment for server {side.upper()} (repeatable), e.g. CNN_SERVER_GIL_SWITCH_INTERVAL_S=0",
        )
    ab.add_argument("--repo", type=Path, help="model repository (default: the cached LeNet-5)")
    ab.add_argument("--rows", type=int, default=1, help="images per request")
    ab.add_argument("--concurrency", default="1,64", help="comma-separated (default 1,64)")
    ab.add_argument("--rounds", type=int, default=5)
    ab.add_argument("--duration", type=float, default=3.0)
    ab.add_argument("--clients", type=int)
    ab.add_argument("--out", type=Path, help="folder for ab.json / ab.md (default runs/bench/ab-<UTC time>)")
    m = sub.add_parser("models", help="prepare (train 1 epoch + export) the cached LeNet-5 and ResNet-20 repositories")
    m.add_argument("--lenet-repo", type=Path)
    m.add_argument("--resnet-repo", type=Path)
    return p


def _log(msg: str) -> None:
    print(msg, flush=True)


def run(args) -> int:
    import dataclasses
    import os

    from bench import env as envmod
    from bench import models, report
    from bench.scenarios import DEFAULT_SCENARIOS, MODES, SCENARIOS, Ctx

    for var, val in (("BENCH_SERVER_CPUS", args.server_cpus), ("BENCH_CLIENT_CPUS", args.client_cpus)):
        if val:
            os.environ[var] = val  # read by bench/procs.py, bench/loadgen.py and bench/rawort.py
    mode = MODES["smoke" if args.smoke else "quick" if args.quick else "full"]
    mode = dataclasses.replace(
        mode,
        **{
            k: v
            for k, v in (("duration_s", args.duration), ("repeats", args.repeats), ("s6_requests", args.requests))
            if v is not None
        },
    )
    out = (args.out or ROOT / "runs" / "bench" / dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.scenarios is None:
        args.scenarios = list(DEFAULT_SCENARIOS)
    need_resnet = any(n in args.scenarios for n in (2, 3, 4, 7, 8))
    lenet = models.ensure("lenet5", args.lenet_repo, log=_log)
    resnet = models.ensure("resnet20", args.resnet_repo, log=_log) if need_resnet else (args.resnet_repo or lenet)
    vgg = models.ensure("vgg11", args.vgg_repo, log=_log) if 8 in args.scenarios else args.vgg_repo
    settings = {
        "mode": mode.name,
        "scenarios": ",".join(map(str, args.scenarios)),
        "duration_s": mode.duration_s,
        "warmup_s": mode.warmup_s,
        "repeats": mode.repeats,
        "clients": args.clients or "auto",
        "server_cpus": args.server_cpus or "any",
        "client_cpus": args.client_cpus or "any",
        "lenet_repo": str(lenet),
        "resnet_repo": str(resnet),
        "server_root": str(args.server_root.resolve()),
        "compare_root": str(args.compare_root.resolve()) if args.compare_root else "",
        "lenet_config": models.config_of(lenet),
        "resnet_config": models.config_of(resnet),
    }
    env = envmod.describe(settings)
    ctx = Ctx(
        out=out,
        mode=mode,
        lenet_repo=lenet,
        resnet_repo=resnet,
        server_root=args.server_root.resolve(),
        env=env,
        processes=args.clients,
        log=_log,
        compare_root=args.compare_root.resolve() if args.compare_root else None,
        vgg_repo=vgg,
        soak_requests=args.soak_requests,
    )
    _log(f"bench: mode {mode.name}, scenarios {settings['scenarios']}, writing {out}")
    errors, timings = {}, {}
    for n in args.scenarios:
        fn = SCENARIOS[n]
        _log(f"bench: scenario {n} ({fn.__name__})")
        t0 = time.monotonic()
        try:
            fn(ctx)
        except Exception as e:  # noqa: BLE001 - one failing scenario must not hide the others' results
            errors[n] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        timings[n] = round(time.monotonic() - t0, 1)
        _log(f"bench: scenario {n} {'FAILED' if n in errors else 'done'} in {timings[n]} s")
    env["loadavg_at_end"] = list(__import__("os").getloadavg())
    targets = [dict(t, scenario=r["scenario"]) for r in ctx.results.values() for t in r.get("targets", [])]
    summary = {
        "env": env,
        "mode": dataclasses.asdict(mode),
        "scenarios": {r["scenario"]: r["files"] for r in ctx.results.values()},
        "targets": targets,
        "errors": errors,
        "seconds": timings,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=report._default) + "\n")
    md = [
        f"# Benchmark run ({mode.name})\n",
        envmod.markdown(env),
        f"- Load average at end: {', '.join(f'{x:.2f}' for x in env['loadavg_at_end'])}\n",
        "## Targets\n",
        report.targets_table(targets),
        "\n## Scenarios\n",
    ]
    for r in sorted(ctx.results.values(), key=lambda r: r["scenario"]):
        md.append(
            f"- {r['scenario']}: {r['title']} — [{r['files']['md']}]({r['files']['md']}), "
            f"[{r['files']['json']}]({r['files']['json']}), [{r['files']['png']}]({r['files']['png']}) "
            f"({timings[r['scenario']]} s)"
        )
    for n, e in errors.items():
        md.append(f"- {n}: **FAILED**: {e}")
    (out / "summary.md").write_text("\n".join(md) + "\n")
    _log((out / "summary.md").read_text())
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return run(args)
    if args.command == "ab":
        from bench import models
        from bench.ab import run_ab

        repo = models.ensure("lenet5", args.repo, log=_log)
        out = (
            args.out or ROOT / "runs" / "bench" / ("ab-" + dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S"))
        ).resolve()
        run_ab(
            args.a.resolve(),
            args.b.resolve(),
            repo,
            out,
            concurrency=[int(c) for c in args.concurrency.split(",")],
            rounds=args.rounds,
            duration_s=args.duration,
            rows=args.rows,
            processes=args.clients,
            log=_log,
            env_a=_env_pairs(args.env_a, "--env-a"),
            env_b=_env_pairs(args.env_b, "--env-b"),
        )
        print((out / "ab.md").read_text())
        return 0
    if args.command == "models":
        from bench import models

        print(models.ensure("lenet5", args.lenet_repo, log=_log))
        print(models.ensure("resnet20", args.resnet_repo, log=_log))
        return 0
    build_parser().print_help()
    return 2
