"""Open-loop A/B: the same repository served twice with different environments, each driven at a fixed
Poisson rate (bench/openloop.py), servers started in turn and the arms alternating round by round.

    python -m bench.openloop_ab --repo REPO --rate 1880 --env-a CNN_SERVER_GC_FREEZE=false \\
        --env-b CNN_SERVER_GC_FREEZE=true [--rounds 2] [--duration 15] [--json]

Prints p50 / p99 / p99.9 / max (ms, from each request's scheduled send time) and failures per arm and round,
then the medians. For settings that move the tail rather than the mean (a GC pause, a stall), which a
closed-loop A/B (`python -m bench ab`) hides: its clients wait out the stall instead of arriving during it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path


def _env(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or not k:
            raise SystemExit(f"--env-a/--env-b take KEY=VALUE, got {p!r}")
        out[k] = v
    return out


def main(argv: list[str] | None = None) -> int:
    from bench import models, procs
    from bench.loadgen import model_infer_request
    from bench.openloop import run_open_loop

    p = argparse.ArgumentParser(prog="python -m bench.openloop_ab", description=__doc__.split("\n")[0])
    p.add_argument("--repo", type=Path, required=True, help="model repository (its first model is driven)")
    p.add_argument("--rate", type=float, required=True, help="offered requests/s (Poisson)")
    p.add_argument("--env-a", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--env-b", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--duration", type=float, default=15.0, help="seconds measured per run (after 1 s of warm-up)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    arms = {"A": _env(a.env_a), "B": _env(a.env_b)}
    payload = model_infer_request(models.model_name(a.repo), 1)
    logs = Path(tempfile.mkdtemp(prefix="openloop-ab-"))
    runs: dict[str, list[dict]] = {"A": [], "B": []}
    for rnd in range(a.rounds):
        for arm in ("A", "B") if rnd % 2 == 0 else ("B", "A"):
            server = procs.start_server(a.repo, logs, env=arms[arm], name=f"arm-{arm}")
            try:
                r = run_open_loop(server.address, payload, a.rate, duration_s=a.duration, warmup_s=1.0, seed=rnd)
            finally:
                server.stop()
            s = r.summary()
            row = {k: s[k] for k in ("p50_ms", "p99_ms", "p99.9_ms", "max_ms")} | {"failed": r.failed, "round": rnd}
            runs[arm].append(row)
            if not a.json:
                print(
                    f"round {rnd} arm {arm} {arms[arm]}: p50 {row['p50_ms']} p99 {row['p99_ms']} "
                    f"p99.9 {row['p99.9_ms']} max {row['max_ms']} ms, failed {row['failed']}",
                    flush=True,
                )
    medians = {
        arm: {
            k: statistics.median(x[k] for x in rs if x[k] is not None)
            for k in ("p50_ms", "p99_ms", "p99.9_ms", "max_ms")
        }
        for arm, rs in runs.items()
    }
    if a.json:
        print(json.dumps({"rate": a.rate, "env": arms, "runs": runs, "medians": medians}, indent=1))
    else:
        for arm, m in medians.items():
            print(f"median {arm}: " + ", ".join(f"{k} {v:.3g}" for k, v in m.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
