"""A/B of the HTTP binary infer path between two checkouts of this repository, with the bare aiohttp server as a
third arm: each checkout runs its own `cnn serve` on the same model repository, `wrk` (bench/http_wrk.py) loads
each in turn at c=64 with the binary-extension LeNet-5 request, the arm order alternating round by round; the
server's CPU time per request (from /proc) is reported beside req/s, which a shared machine disturbs far more.

    git worktree add --detach /tmp/base <commit>
    python -m bench.http_ab --repo REPO --base /tmp/base [--rounds 4] [--duration 5] [--out ab.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import sys
import tempfile
from pathlib import Path

from bench.http_bare import lenet_request, measure, start_bare
from client import testing

ROOT = Path(__file__).resolve().parent.parent
MODEL = "lenet5-digits"


def start(repo: Path, cwd: Path, log: Path) -> tuple[testing.ServerProcess, int]:
    """`cnn serve` from checkout `cwd` (its own code: the working directory comes first on sys.path)."""
    s = testing.start_server(
        repo, "--poll-interval-s", "0", "--http-address", "127.0.0.1:0", python=sys.executable, cwd=cwd, log_path=log
    )
    m = re.search(r"HTTP on \S+:(\d+)", s.log())
    if m is None:
        s.stop()
        raise RuntimeError(f"no 'HTTP on' line in {log}")
    return s, int(m.group(1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.http_ab", description=__doc__.split("\n")[0])
    ap.add_argument("--repo", type=Path, required=True, help=f"model repository serving {MODEL}")
    ap.add_argument(
        "--base", type=Path, required=True, help="the other checkout (e.g. a git worktree of the base commit)"
    )
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--out", type=Path, help="write every run as JSON here")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="cnn-http-ab-"))
    body, headers = lenet_request()
    base, base_port = start(args.repo, args.base.resolve(), work / "base.log")
    new, new_port = start(args.repo, ROOT, work / "new.log")
    bare, bare_port = start_bare("aiohttp")
    arms = {
        "before": (base.pid, f"http://127.0.0.1:{base_port}/v2/models/{MODEL}/infer"),
        "after": (new.pid, f"http://127.0.0.1:{new_port}/v2/models/{MODEL}/infer"),
        "bare": (bare.pid, f"http://127.0.0.1:{bare_port}/v2/models/lenet5/infer"),
    }
    runs: dict[str, list[dict]] = {k: [] for k in arms}
    try:
        for pid, url in arms.values():  # warm-up
            measure(pid, url, body, headers, args.concurrency, 1.0)
        for i in range(args.rounds):
            for name in list(arms) if i % 2 == 0 else list(reversed(arms)):
                pid, url = arms[name]
                load = os.getloadavg()[0]
                r = measure(pid, url, body, headers, args.concurrency, args.duration)
                r["load_average_1m"] = load
                runs[name].append(r)
                print(
                    f"{name:6s} {r['rps']:7.0f} req/s  server CPU {r['server_cpu_us_per_request']:5.0f} us/req  "
                    f"non-2xx {r['non_2xx']}  load {load:.1f}",
                    flush=True,
                )
    finally:
        base.stop()
        new.stop()
        bare.send_signal(signal.SIGTERM)
        bare.wait(10)
    for name, rs in runs.items():
        print(
            f"{name:6s} median {statistics.median(r['rps'] for r in rs):7.0f} req/s  "
            f"{statistics.median(r['server_cpu_us_per_request'] for r in rs):5.0f} us/req"
        )
    if args.out:
        args.out.write_text(json.dumps(runs, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
