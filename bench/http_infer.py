"""HTTP benchmarks for the README: the server's REST infer against a bare server of the same library and
against MLServer's REST endpoint, with one load generator (bench/http_wrk.py: wrk, c=64, a separate process).

    python -m bench.http_infer --repo REPO [--mlserver-venv /work/.venv-mlserver] [--rounds 3] [--duration 5]
                               [--floor] [--server-cpus 0 --client-cpus 1]

Targets (issue 19): binary-extension infer of one LeNet-5 image >= 0.80 of the bare aiohttp server answering
fixed bytes; JSON infer >= 2x MLServer 1.7's REST endpoint serving the same ONNX model (its peer set-up:
../shared/peers/mlserver). The arms run interleaved, round by round, so a drifting machine load hits all
alike; the load average is recorded with every run, and the server CPU time per request beside req/s.
`--floor` adds the two floor servers of bench/http_floor.py (aiohttp + onnxruntime doing only what the request
cannot do without): the most any server on this library could reach. `--server-cpus`/`--client-cpus` pin
every server process (all its threads) and wrk to separate cores, so the generator does not take the
server's CPU. Writes bench/results/http/infer.json and infer.md (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.http_bare import lenet_request, measure, start_bare, start_serving
from client import testing

ROOT = Path(__file__).resolve().parent.parent
PEER = ROOT.parent / "shared" / "peers" / "mlserver"
MODEL = "lenet5-digits"


def json_request(model_output: str = "logits") -> tuple[bytes, dict[str, str]]:
    """One LeNet-5 image as JSON `data`, asking for the one output both servers have."""
    body = json.dumps(
        {
            "inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.5] * 784}],
            "outputs": [{"name": model_output}],
        }
    ).encode()
    return body, {"Content-Type": "application/json"}


def start_server(repo: Path, log_dir: Path) -> tuple[testing.ServerProcess, int]:
    s = testing.start_server(
        repo,
        "--poll-interval-s",
        "0",
        "--http-address",
        "127.0.0.1:0",
        python=sys.executable,
        cwd=ROOT,
        log_path=log_dir / "server.log",
    )
    import re

    m = re.search(r"HTTP on \S+:(\d+)", s.log())
    if m is None:
        s.stop()
        raise RuntimeError("the server logged no 'HTTP on' line")
    return s, int(m.group(1))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_mlserver(venv: Path, repo: Path, workdir: Path) -> tuple[subprocess.Popen, int]:
    """MLServer 1.7 with the peer runtime (../shared/peers/mlserver) on the same model.onnx, on free ports."""
    peer = workdir / "mlserver"
    (peer / "lenet5").mkdir(parents=True)
    settings = json.loads((PEER / "settings.json").read_text())
    port = free_port()
    settings.update(http_port=port, grpc_port=free_port(), metrics_port=free_port())
    (peer / "settings.json").write_text(json.dumps(settings))
    shutil.copy(PEER / "runtime.py", peer / "runtime.py")
    shutil.copy(PEER / "model-settings.json", peer / "lenet5" / "model-settings.json")
    shutil.copy(repo / MODEL / "1" / "model.onnx", peer / "lenet5" / "model.onnx")
    log = open(workdir / "mlserver.log", "w")
    p = subprocess.Popen([str(venv / "bin" / "mlserver"), "start", "."], cwd=peer, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"mlserver exited: {(workdir / 'mlserver.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/lenet5/ready", timeout=2) as r:
                if r.status == 200:
                    return p, port
        except OSError:
            pass
        time.sleep(0.5)
    p.kill()
    raise RuntimeError("mlserver did not become ready in 120 s")


def pin(pid: int, cpus: str) -> None:
    """Every thread of a running process onto `cpus` (threads it starts later inherit it)."""
    if cpus:
        subprocess.run(["taskset", "-a", "-cp", cpus, str(pid)], check=True, capture_output=True)


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.http_infer", description=__doc__.split("\n")[0])
    ap.add_argument("--repo", type=Path, required=True, help=f"model repository serving {MODEL} (version 1)")
    ap.add_argument(
        "--mlserver-venv",
        type=Path,
        default=Path("/work/.venv-mlserver"),
        help="a venv with mlserver==1.7.1 (../shared/peers/mlserver/README.md); missing: that arm is skipped",
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--floor", action="store_true", help="add the floor arms (bench/http_floor.py)")
    ap.add_argument("--server-cpus", default="", help="pin every server process here, e.g. 0")
    ap.add_argument("--client-cpus", default="", help="pin wrk here, e.g. 1")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "http")
    args = ap.parse_args(argv)
    if args.client_cpus:
        os.environ["BENCH_CLIENT_CPUS"] = args.client_cpus
    work = Path(tempfile.mkdtemp(prefix="cnn-http-bench-"))
    binary, bh = lenet_request()
    jbody, jh = json_request()
    server, port = start_server(args.repo, work)
    bare, bare_port = start_bare("aiohttp")
    ml = None
    if (args.mlserver_venv / "bin" / "mlserver").exists():
        ml = start_mlserver(args.mlserver_venv, args.repo, work)
    arms = {
        "server binary": (server.pid, f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer", binary, bh),
        "bare aiohttp": (bare.pid, f"http://127.0.0.1:{bare_port}/v2/models/lenet5/infer", binary, bh),
        "server JSON": (server.pid, f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer", jbody, jh),
    }
    if ml is not None:
        arms["MLServer JSON"] = (ml[0].pid, f"http://127.0.0.1:{ml[1]}/v2/models/lenet5/infer", jbody, jh)
    floors = []
    if args.floor:
        model = str(args.repo / MODEL / "1" / "model.onnx")
        for mode in ("inline", "batched"):
            p, fport = start_serving(["-m", "bench.http_floor", "serve", "--model", model, "--mode", mode])
            floors.append(p)
            arms[f"floor {mode}"] = (p.pid, f"http://127.0.0.1:{fport}/v2/models/{MODEL}/infer", binary, bh)
    for pid, *_ in arms.values():
        pin(pid, args.server_cpus)
    runs: dict[str, list[dict]] = {k: [] for k in arms}
    try:
        for pid, url, body, headers in arms.values():  # warm-up
            measure(pid, url, body, headers, args.concurrency, 1.0)
        for _ in range(args.rounds):
            for name, (pid, url, body, headers) in arms.items():
                load = os.getloadavg()[0]
                r = measure(pid, url, body, headers, args.concurrency, args.duration)
                r["load_average_1m"] = load
                runs[name].append(r)
                print(
                    f"{name:14s} {r['rps']:8.1f} req/s  p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
                    f"server CPU {r['server_cpu_us_per_request']:6.0f} us/req  non-2xx {r['non_2xx']}  load {load:.1f}",
                    flush=True,
                )
    finally:
        server.stop()
        for p in (bare, *floors):
            p.send_signal(signal.SIGTERM)
            p.wait(10)
        if ml is not None:
            ml[0].send_signal(signal.SIGTERM)
            try:
                ml[0].wait(30)
            except subprocess.TimeoutExpired:
                ml[0].kill()
    summary = {
        k: {
            "median_rps": median(v, "rps"),
            "median_p50_ms": median(v, "p50_ms"),
            "median_p99_ms": median(v, "p99_ms"),
            "median_server_cpu_us_per_request": median(v, "server_cpu_us_per_request"),
            "non_2xx": sum(r["non_2xx"] for r in v),
        }
        for k, v in runs.items()
    }
    ratios = {
        "binary / bare (target >= 0.80)": summary["server binary"]["median_rps"] / summary["bare aiohttp"]["median_rps"]
    }
    for mode in ("inline", "batched"):
        if f"floor {mode}" in summary:
            ratios[f"floor {mode} / bare"] = (
                summary[f"floor {mode}"]["median_rps"] / summary["bare aiohttp"]["median_rps"]
            )
    if "MLServer JSON" in summary:
        ratios["JSON / MLServer JSON (target >= 2)"] = (
            summary["server JSON"]["median_rps"] / summary["MLServer JSON"]["median_rps"]
        )
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "server_cpus": args.server_cpus,
        "client_cpus": args.client_cpus,
        "git": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip(),
        "summary": summary,
        "ratios": ratios,
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "infer.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "| arm | req/s (median) | p50 ms | p99 ms | server CPU µs/req | runs (req/s, load avg) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for k, s in summary.items():
        each = ", ".join(f"{r['rps']:.0f} @ {r['load_average_1m']:.1f}" for r in runs[k])
        lines.append(
            f"| {k} | {s['median_rps']:,.0f} | {s['median_p50_ms']:.1f} | {s['median_p99_ms']:.1f} | "
            f"{s['median_server_cpu_us_per_request']:.0f} | {each} |"
        )
    lines += ["", *(f"- {k}: **{v:.2f}**" for k, v in ratios.items())]
    (args.out / "infer.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
